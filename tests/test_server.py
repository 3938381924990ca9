"""torchhouse serve: a real server on a free local port, talked to over HTTP."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import torchhouse as th

uvicorn = pytest.importorskip("uvicorn", reason="the serve extra: pip install 'torchhouse[serve]'")
from torchhouse.frontends.server import build_app  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "r"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(0)
    model = th.Model(
        nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)), loss=nn.CrossEntropyLoss(), device="cpu"
    )
    model.fit(x, y, epochs=3, progress="none", run_dir=folder)
    return folder, x


class Server:
    def __init__(self, app):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def call(self, path, body=None, raw=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def test_predictions_equal_the_exported_program_and_info_describes_the_run(run_folder):
    folder, x = run_folder
    program = th.load_exported(folder / "model.pt2")
    with Server(build_app(folder)) as server:
        assert server.call("/health") == (200, {"status": "ok"})
        status, info = server.call("/info")
        assert status == 200 and info["task"] == "classification" and info["inputs"]["shape"] == [4]
        status, out = server.call("/predict", {"inputs": x[:5].tolist()})
        assert status == 200
        expected = program.predict(x[:5]).softmax(1)
        assert out["predictions"] == expected.argmax(1).tolist()
        assert torch.allclose(torch.tensor(out["probabilities"]), expected, atol=1e-6)
        status, docs = server.call("/openapi.json")
        assert status == 200 and "/predict" in docs["paths"]


def test_concurrent_clients_each_get_their_own_rows_from_shared_batches(run_folder):
    folder, x = run_folder
    program = th.load_exported(folder / "model.pt2")
    app = build_app(folder, max_batch_size=64, max_wait_ms=50)
    with Server(app) as server:

        def ask(i):
            rows = x[i * 3 : i * 3 + 3]
            return i, server.call("/predict", {"inputs": rows.tolist()})

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(16)))
    for i, (status, out) in answers:
        assert status == 200
        assert out["predictions"] == program.predict(x[i * 3 : i * 3 + 3]).argmax(1).tolist()
    assert app.state.batcher.batches_run < 16  # requests that arrived together shared a net call


def test_bad_inputs_get_their_codes_and_the_server_survives_them(run_folder):
    folder, x = run_folder
    with Server(build_app(folder, max_body_bytes=4096)) as server:
        status, out = server.call("/predict", {"inputs": [[1.0, 2.0]]})
        assert status == 422 and "expected [rows, 4]" in out["detail"]
        status, out = server.call("/predict", raw=b'{"inputs": [[NaN, 1, 2, 3]]}')
        assert status == 422 and "NaN" in out["detail"]
        status, out = server.call("/predict", {"rows": [[1, 2, 3, 4]]})
        assert status == 422 and '{"inputs"' in out["detail"]
        status, out = server.call("/predict", raw=b"not json")
        assert status == 422 and "not JSON" in out["detail"]
        status, out = server.call("/predict", {"inputs": [[0.5] * 4] * 400})
        assert status == 413 and "4096 bytes" in out["detail"]
        status, out = server.call("/predict", {"inputs": [["a", "b", "c", "d"]]})
        assert status == 422
        assert server.call("/predict", {"inputs": x[:1].tolist()})[0] == 200  # still serving


def test_a_folder_without_a_program_is_refused_and_import_torchhouse_loads_no_server(tmp_path):
    import subprocess
    import sys

    with pytest.raises(th.ConfigError, match="model.pt2"):
        build_app(tmp_path)
    code = "import sys, torchhouse; print(sorted(m for m in ('fastapi', 'uvicorn', 'sklearn', 'gradio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_a_config_trained_text_run_is_served_from_texts_and_a_scaled_tabular_run_from_raw_rows(tmp_path):
    from pathlib import Path

    import numpy as np

    from torchhouse.frontends.cli import main
    from torchhouse.frontends.config import prepare_inputs
    from torchhouse.runs.serve_files import read_serve_file

    configs = Path(__file__).resolve().parent.parent / "examples" / "configs"
    text = tmp_path / "text"
    assert (
        main(
            [
                "fit",
                str(configs / "sentiment_words.yaml"),
                "--run-dir",
                str(text),
                "--set",
                "fit.epochs=6",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    with Server(build_app(text)) as server:
        status, out = server.call("/predict", {"inputs": ["marvelous", "horrible"]})
        assert status == 200 and out["predictions"] == [1, 0]  # as `torchhouse predict` answers
        assert server.call("/info")[1]["inputs"] == "texts"
        assert server.call("/predict", {"inputs": [[1.0, 2.0]]})[0] == 422
    x, _, _ = th.datasets.load_breast_cancer()
    tabular = tmp_path / "bc"
    config = {
        "model": {"factory": "torchhouse.models:mlp", "kwargs": {"in_features": 30, "hidden": [8], "out_features": 2}},
        "data": {"dataset": "breast_cancer", "standardize": True}, "loss": "CrossEntropyLoss",
        "fit": {"epochs": 2, "progress": "none"},
    }  # fmt: skip
    (tmp_path / "bc.json").write_text(json.dumps(config))
    assert main(["fit", str(tmp_path / "bc.json"), "--run-dir", str(tabular)]) == 0
    info = read_serve_file(tabular)["data"]
    program = th.load_exported(tabular / "model.pt2")
    expected = program.predict(torch.as_tensor(prepare_inputs(np.asarray(x[:4]), info))).argmax(1).tolist()
    with Server(build_app(tabular)) as server:  # raw feature values in, scaled as training scaled them
        assert server.call("/predict", {"inputs": x[:4].tolist()})[1]["predictions"] == expected
