import json
import subprocess
import sys

import pytest
import torch

import torchhouse as th
from torchhouse.frontends.cli import main


def test_demo_writes_a_run_folder_and_reaches_high_accuracy(tmp_path, capsys):
    code = main(["demo", "--epochs", "15", "--run-dir", str(tmp_path / "demo"), "--progress", "epoch"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("Epoch ") >= 6
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy >= 0.97
    run = tmp_path / "demo"
    for name in ("config.json", "history.csv", "model.safetensors", "model.json", "run.json"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["fit"]["batch_size"] == 64 and config["loss"] == "CrossEntropyLoss()"
    assert (
        config["fit"]["validation_split"] == 0.2
    )  # the epoch is picked on the training part, not the test split
    header = (run / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,loss,acc,val_loss,val_acc"
    # the saved weights reproduce the reported accuracy
    from torchhouse.datasets import load_digits, train_test_split
    from torchhouse.frontends.demo import digits_cnn

    x, y = load_digits()
    _, x_test, _, y_test = train_test_split(x, y, 0.2, seed=0)
    model = th.Model(
        digits_cnn(), loss=torch.nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy}, device="cpu"
    )
    model.load_weights(run / "model.safetensors")
    assert abs(model.evaluate(x_test, y_test)["acc"] - accuracy) < 1e-4


def test_help_lists_commands():
    done = subprocess.run([sys.executable, "-m", "torchhouse", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout
    done = subprocess.run([sys.executable, "-m", "torchhouse"], capture_output=True, text=True)
    assert done.returncode == 2


def test_import_torchhouse_pulls_no_heavy_package():
    code = (
        "import sys, torchhouse; "
        "heavy = [m for m in ('torchmetrics', 'pandas', 'matplotlib', 'tensorboard', 'optuna', "
        "'streamlit', 'tqdm.notebook', 'IPython', 'sklearn', 'lightning') if m in sys.modules]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_ctrl_c_prints_two_lines_exits_130_and_the_run_can_resume(tmp_path):
    import signal
    import time

    run = tmp_path / "demo"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torchhouse",
            "demo",
            "--epochs",
            "200",
            "--run-dir",
            str(run),
            "--progress",
            "epoch",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(run.glob("checkpoints/ckpt-*")) and time.monotonic() < deadline:
        time.sleep(0.1)  # wait for the first saved epoch
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert (
        lines[0].startswith("torchhouse demo: interrupted (Ctrl-C) at epoch ")
        and "state saved in" in lines[0]
    )
    assert (
        lines[1] == f"Continue with: torchhouse demo --epochs 200 --run-dir {run} --progress epoch --resume"
    )
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


def test_cli_failures_are_one_clear_line_with_a_meaningful_exit_code(tmp_path, capsys):
    run = tmp_path / "r"
    th.Model(torch.nn.Linear(3, 2), loss=torch.nn.CrossEntropyLoss(), device="cpu").fit(
        torch.randn(8, 3), torch.randint(0, 2, (8,)), epochs=1, run_dir=run, progress="none"
    )
    (tmp_path / "c.yaml").write_text("name: x\n")
    (tmp_path / "ok.yaml").write_text(
        "model: {factory: torchhouse.models:mlp, kwargs: {in_features: 30, out_features: 1}}\n"
        "data: {dataset: breast_cancer}\nloss: BCEWithLogitsLoss\nfit: {epochs: 1}\n"
    )
    cases = [
        (["app", str(run), "--max-upload-mb", "nan"], "--max-upload-mb must be a number > 0"),
        (["app", str(run), "--port", "99999"], "--port must be in 1..65535"),
        (["tune", str(tmp_path / "c.yaml"), "--timeout", "-5"], "--timeout must be a number of seconds > 0"),
        (["predict", str(run), str(tmp_path)], "is a folder; expected a CSV file"),
        (["evaluate", str(run), "--csv", str(tmp_path / "missing.csv")], "No such file"),
        (["fit", str(tmp_path / "ok.yaml"), "--run-dir", str(run / "run.json")], "is a file, not a folder"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    (run / "history.csv").write_text("epoch,loss\n0,not-a-number\n")
    (run / "config.json").write_text("{broken")
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "damaged files" in out and "config.json" in out and "history.csv" in out
    (run / "run.json").write_text('{"status": "finished", "best_epoch": "three", "started": 5}')
    assert main(["runs", str(tmp_path)]) == 0


def test_devices_that_are_not_here_are_refused_clearly():
    if not torch.cuda.is_available():
        with pytest.raises(th.ConfigError, match="sees no CUDA GPU"):
            th.Model(torch.nn.Linear(3, 2), device="cuda")
    with pytest.raises(th.ConfigError, match="meta tensors hold no data"):
        th.Model(torch.nn.Linear(3, 2), device="meta")


@pytest.mark.slow
def test_the_continue_command_printed_after_ctrl_c_continues_that_run_when_run_as_printed(tmp_path):
    """`fit CFG --run-dir R --set fit.epochs=N`: the printed command keeps --run-dir and --set."""
    import shlex
    import signal
    import time

    config = tmp_path / "digits.yaml"
    config.write_text(
        "name: digits\n"
        "model: {factory: 'torchhouse.demo:digits_cnn', kwargs: {channels: 16, hidden: 64}}\n"
        "data: {dataset: digits}\nloss: CrossEntropyLoss\n"
        "fit: {epochs: 2, batch_size: 64, seed: 0, progress: epoch}\n"
    )
    run = tmp_path / "elsewhere" / "my-run"
    command = ["fit", str(config), "--run-dir", str(run), "--set", "fit.epochs=8"]
    process = subprocess.Popen(
        [sys.executable, "-m", "torchhouse", *command],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(run.glob("checkpoints/ckpt-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    printed = err.strip().splitlines()[-1]
    assert printed.startswith("Continue with: torchhouse fit ")
    continued = shlex.split(printed.removeprefix("Continue with: "))
    assert continued[:2] == ["torchhouse", "fit"] and "--resume" in continued
    done = subprocess.run(
        [sys.executable, "-m", "torchhouse", *continued[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == 8 and info["resumed"] == 1
    assert not (tmp_path / "runs").exists()  # no fresh run elsewhere


def test_the_continue_command_drops_overwrite_and_keeps_everything_else():
    from torchhouse.frontends.cli import continue_command

    typed = [
        "fit",
        "my config.yaml",
        "--overwrite",
        "--set",
        "fit.epochs=6",
        "--run-dir",
        "R",
        "--trust-code",
    ]
    assert continue_command("fit", typed) == (
        "torchhouse fit 'my config.yaml' --set fit.epochs=6 --run-dir R --trust-code --resume"
    )
    tune = ["tune", "c.yaml", "--trials", "30", "--storage", "sqlite:///s.db"]
    assert continue_command("tune", tune) == "torchhouse tune c.yaml --trials 30 --storage sqlite:///s.db"
