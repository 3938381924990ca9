"""Experiment trackers against the real thing: an MLflow server (SQLite) and W&B offline files."""

import glob
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import torchhouse as th

pytestmark = pytest.mark.slow


def fit(run_dir, callbacks, epochs=3):
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = th.Model(nn.Linear(3, 2), loss=nn.CrossEntropyLoss(), metrics=["acc"], device="cpu")
    history = model.fit(
        x,
        y,
        validation_split=0.25,
        epochs=epochs,
        batch_size=16,
        seed=0,
        progress="none",
        run_dir=run_dir,
        callbacks=callbacks,
    )
    return history.history


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the MLflow server did not start")
            time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)


def test_mlflow_logger_writes_params_every_epochs_values_and_the_run_folder_to_a_server(
    mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    logger = th.callbacks.MLflowLogger(tracking_uri=mlflow_server, experiment_name="tests", run_name="first")
    history = fit(tmp_path / "run", [logger])
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.tags["torchhouse.status"] == "finished"
    assert run.data.params["optimizer"] == "AdamW" and run.data.params["epochs"] == "3"
    assert run.data.params["loss"] == "CrossEntropyLoss" and run.data.params["batch_size"] == "16"
    for name in ("loss", "acc", "val_loss", "val_acc"):
        logged = client.get_metric_history(logger.run_id, name)
        assert [m.step for m in sorted(logged, key=lambda m: m.step)] == [0, 1, 2]
        assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(history[name])
    artifacts = {a.path for a in client.list_artifacts(logger.run_id)}
    assert {"config.json", "history.csv", "model.safetensors", "run.json"} <= artifacts
    local = client.download_artifacts(logger.run_id, "history.csv", str(tmp_path / "back"))
    assert Path(local).read_text() == (tmp_path / "run" / "history.csv").read_text()


def test_a_tracker_that_is_down_costs_a_warning_not_the_run(tmp_path):
    pytest.importorskip("mlflow")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.warns(UserWarning, match="MLflowLogger: MLflow failed.*training goes on"):
        history = fit(tmp_path / "run", [th.callbacks.MLflowLogger(tracking_uri=down)])
    assert len(history["loss"]) == 3 and time.monotonic() - started < 30
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"

    class Broken(th.callbacks.MLflowLogger):
        def log(self, epoch, values):
            raise ConnectionError("the tracker went away")

    with pytest.warns(UserWarning, match="went away"):
        history = fit(None, [Broken(tracking_uri=f"sqlite:///{tmp_path / 'local.db'}")])
    assert len(history["loss"]) == 3


def read_wandb_file(path):
    """The history rows and summary of an offline W&B run, read from its .wandb file
    (LevelDB-log framing of wandb's protobuf Records)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        elif kind == 4:
            records.append(parts + chunk)
    rows, summary, config = [], {}, {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "summary":
            summary.update(
                {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update}
            )
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    return rows, summary, config


def test_wandb_logger_offline_writes_every_epochs_values_the_config_and_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = th.callbacks.WandbLogger(project="tests", name="first", mode="offline", dir=str(tmp_path / "wb"))
    history = fit(tmp_path / "run", [logger])
    (run_file,) = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows, summary, config = read_wandb_file(run_file)
    rows = [r for r in rows if "loss" in r]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for name in ("loss", "acc", "val_loss", "val_acc"):
        assert [r[name] for r in rows] == pytest.approx(history[name])
    assert summary["torchhouse.status"] == "finished"
    assert config["optimizer"] == "AdamW" and config["epochs"] == 3 and config["batch_size"] == 16
    files = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "files" / "*"))
    assert {"history.csv", "model.safetensors"} <= {f.rsplit("/", 1)[1] for f in files}
    assert not (tmp_path / "run" / "wandb").exists()  # W&B's files stay out of the run folder


def test_trackers_log_on_rank_zero_only(monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    logger = th.callbacks.MLflowLogger(tracking_uri=f"sqlite:///{tmp_path / 'local.db'}")
    logger.set_model(th.Model(nn.Linear(3, 2), loss=nn.CrossEntropyLoss(), device="cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.on_fit_start({})
        logger.on_epoch_end(0, {"loss": 1.0})
        logger.on_fit_exit("finished", {})
    assert logger.run_id is None and not (tmp_path / "local.db").exists()


def test_a_tracker_that_answers_its_health_check_and_then_stalls_costs_a_warning_in_bounded_time(tmp_path):
    """The server says it is healthy, then never answers: the fit waits at most `timeout` per call."""
    pytest.importorskip("mlflow")
    import http.server
    import threading

    release = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.endswith("/health"):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")
            else:
                release.wait(120)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        started = time.monotonic()
        with pytest.warns(
            UserWarning, match="MLflowLogger: MLflow failed \\(TimeoutError: no answer within 2 s"
        ):
            history = fit(tmp_path / "run", [th.callbacks.MLflowLogger(tracking_uri=uri, timeout=2)])
        assert len(history["loss"]) == 3 and time.monotonic() - started < 20
        assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"
    finally:
        release.set()
        server.shutdown()
    with pytest.raises(th.ConfigError, match="timeout must be a number of seconds > 0"):
        th.callbacks.MLflowLogger(timeout=0)


def test_wandb_holds_copies_of_the_run_folders_files_not_links(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = th.callbacks.WandbLogger(project="tests", mode="offline", dir=str(tmp_path / "wb"))
    fit(tmp_path / "run", [logger])
    (files,) = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "files"))
    kept = {p.name: p for p in Path(files).iterdir() if p.name in ("history.csv", "model.safetensors")}
    assert set(kept) == {"history.csv", "model.safetensors"}
    assert not any(p.is_symlink() for p in kept.values())
    before = {name: p.read_bytes() for name, p in kept.items()}
    x = torch.randn(64, 3)
    model = th.Model(nn.Linear(3, 2), loss=nn.CrossEntropyLoss(), device="cpu")
    model.fit(x, (x[:, 1] > 0).long(), epochs=1, run_dir=tmp_path / "run", overwrite=True, progress="none")
    assert {name: p.read_bytes() for name, p in kept.items()} == before  # the first W&B run is unchanged
