"""The examples run (on a reduced budget) and do better than chance."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_end_to_end(tmp_path):
    env = {**os.environ, "EPOCHS": "4"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    accuracy = float(done.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.5  # chance is 0.1
    assert "identical predictions" in done.stdout
    assert (tmp_path / "runs" / "quickstart.safetensors").exists()


@pytest.mark.parametrize("name", ["build_three_ways", "train_three_ways"])
def test_three_ways_examples(name, monkeypatch, capsys):
    monkeypatch.setenv("EPOCHS", "3")
    module = runpy.run_path(str(EXAMPLES / f"{name}.py"))
    results = module["main"]()
    assert len(results) == 3
    assert all(acc > 0.3 for acc in results.values()), results
    if name == "train_three_ways":
        assert "identical weights for the script loop and th.Model: True" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name,epochs",
    [("tabular_breast_cancer", "30"), ("timeseries_sunspots", "40"), ("text_sentiment_words", "8")],
)
def test_gallery_examples_beat_a_trivial_baseline(name, epochs, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EPOCHS", epochs)
    monkeypatch.chdir(tmp_path)
    result = runpy.run_path(str(EXAMPLES / f"{name}.py"))["main"]()
    out = capsys.readouterr().out
    assert "identical" in out
    if name == "tabular_breast_cancer":
        assert result["accuracy"] >= result["baseline"] + 0.2  # majority class is 0.67
    elif name == "text_sentiment_words":
        assert result["accuracy"] >= result["baseline"] + 0.15  # majority class is 0.55
    else:
        assert result["mae"] <= 0.75 * result["baseline"]  # repeating last year's value
        assert (tmp_path / "runs" / "sunspots_forecast.png").exists()


def test_api_reference_is_up_to_date():
    generator = runpy.run_path(str(EXAMPLES.parent / "scripts" / "gen_api_docs.py"))
    current = (EXAMPLES.parent / "docs" / "api.md").read_text()
    assert current == generator["render"](), "run: python scripts/gen_api_docs.py"


@pytest.mark.parametrize(
    "name,needs",
    [
        ("hf_sentiment_words", ("transformers", "tokenizers")),
        ("hf_datasets_words", ("transformers", "datasets")),
        ("hf_dynamic_padding", ("transformers", "datasets")),
    ],
)
def test_the_hugging_face_examples_beat_the_majority_class(name, needs, monkeypatch, capsys):
    for package in needs:
        pytest.importorskip(package)
    monkeypatch.setenv("EPOCHS", "3")
    result = runpy.run_path(str(EXAMPLES / f"{name}.py"))["main"]()
    assert result["accuracy"] >= result["baseline"] + 0.15  # majority class is 0.55-0.57
    assert "test accuracy" in capsys.readouterr().out


def test_a_lightning_datamodule_trains_unchanged_and_both_trainers_agree(monkeypatch, capsys):
    pytest.importorskip("lightning")
    monkeypatch.setenv("EPOCHS", "3")
    result = runpy.run_path(str(EXAMPLES / "lightning_datamodule.py"))["main"]()
    assert result["accuracy"] >= 0.8  # chance is 0.10
    assert result["same_weights"] == 1.0
    assert "identical weights: True" in capsys.readouterr().out
