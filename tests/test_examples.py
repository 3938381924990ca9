"""The examples run (on a reduced budget) and do better than chance."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

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
