"""A run trained through the Python API is served from its folder alone, without its code."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import torchhouse as th
from torchhouse.frontends.cli import main
from torchhouse.frontends.serving import load_run
from torchhouse.runs.serve_files import read_serve_file

# The net class lives only in this script: the serving side never sees its code.
TRAIN = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    import torchhouse as th

    class Scorer(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
        def forward(self, x):
            return self.body(x * 2.0)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    torch.manual_seed(0)
    model = th.Model(Scorer(), loss=nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy}, device="cpu")
    model.fit(x, y, epochs=3, batch_size=16, seed=0, run_dir=sys.argv[1], progress="none")
    torch.save({"x": x[:5], "y": y[:5], "out": model.predict(x[:5])}, sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, str(folder / "run"), str(folder / "expected.pt")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return folder / "run", torch.load(folder / "expected.pt")


def test_fit_writes_a_program_and_a_serving_description(api_run):
    run, _ = api_run
    info = read_serve_file(run)
    assert info["program"] == "model.pt2" and info["task"] == "classification"
    assert info["loss"] == "CrossEntropyLoss" and info["metrics"] == {"acc": "accuracy"}
    assert info["data"]["input_shape"] == [4]


def test_the_python_loader_predicts_like_the_trained_model(api_run):
    run, expected = api_run
    config, model = load_run(run)
    assert config["served_from"] == "model.pt2"
    torch.testing.assert_close(model.predict(expected["x"]), expected["out"], rtol=1e-6, atol=1e-6)
    result = model.evaluate(expected["x"], expected["y"])
    assert set(result) == {"loss", "acc"}


def test_predict_and_evaluate_commands_serve_the_api_run(api_run, tmp_path, capsys):
    run, expected = api_run
    rows = tmp_path / "rows.csv"
    lines = ["a,b,c,d"] + [",".join(repr(float(v)) for v in row) for row in expected["x"].tolist()]
    rows.write_text("\n".join(lines) + "\n")
    assert main(["predict", str(run), str(rows)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "prediction,p0,p1,p2" and len(out) == 6
    predicted = [int(line.split(",")[0]) for line in out[1:]]
    assert predicted == expected["out"].argmax(1).tolist()
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(
        "\n".join(
            ["a,b,c,d,label"] + [f"{line},{label}" for line, label in zip(lines[1:], expected["y"].tolist())]
        )
        + "\n"
    )
    assert main(["evaluate", str(run)]) == 2
    assert "give --csv" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--csv", str(labelled), "--target", "label"]) == 0
    assert capsys.readouterr().out.startswith("loss ")


def test_the_app_serves_the_api_run(api_run, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from torchhouse.app import APP_SCRIPT

    run, _ = api_run
    monkeypatch.setenv("TORCHHOUSE_RUN_DIR", str(run))
    monkeypatch.setenv("TORCHHOUSE_TRUST_CODE", "0")
    page = AppTest.from_file(str(APP_SCRIPT), default_timeout=60).run()
    assert not page.exception and not page.error
    page.text_area(key="pasted").set_value("x0,x1,x2,x3\n0.5,1.5,0,0\n").run()
    page.button[0].click().run()
    assert not page.exception and not page.error
    assert any("Predicted class" in item.value for item in page.markdown)
    assert page.dataframe[0].value.shape[0] == 1


def test_a_net_that_cannot_be_exported_records_why(tmp_path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 2)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else -self.a(x)

    model = th.Model(Branchy(), loss=nn.CrossEntropyLoss(), device="cpu")
    model.fit(
        torch.randn(20, 4), torch.randint(0, 2, (20,)), epochs=1, run_dir=tmp_path / "r", progress="none"
    )
    info = json.loads((tmp_path / "r" / "serve.json").read_text())
    assert info["program"] is None and "control flow" in info["reason"]
    assert not (tmp_path / "r" / "model.pt2").exists()
    with pytest.raises(th.ConfigError, match="could not be exported"):
        load_run(tmp_path / "r")
