"""TensorBoard events read back with TensorBoard's own reader, plots, CSV, run lists."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.callbacks import LivePlot, TensorBoard
from torchhouse.frontends.cli import main

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def model_for(**kwargs):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return th.Model(
        net,
        loss=nn.CrossEntropyLoss(),
        optimizer=opt,
        device="cpu",
        metrics={"acc": th.metrics.accuracy},
        lr_scheduler=torch.optim.lr_scheduler.StepLR(opt, 1, 0.5),
        **kwargs,
    )


def test_tensorboard_scalars_train_and_validation_in_one_chart(tmp_path):
    x, y = make_classification(n=64)
    model = model_for()
    tb = TensorBoard(tmp_path / "tb", log_every_n_steps=2, histograms=True, graph=True)
    history = model.fit(
        x, y, validation_data=(x, y), epochs=3, batch_size=16, callbacks=[tb], progress="none"
    )
    train = read_events(tmp_path / "tb" / "train")
    validation = read_events(tmp_path / "tb" / "validation")
    tags = train.Tags()
    assert {"epoch/loss", "epoch/acc", "epoch/lr", "step/loss"} <= set(tags["scalars"])
    assert set(validation.Tags()["scalars"]) == {"epoch/loss", "epoch/acc"}
    assert [e.value for e in train.Scalars("epoch/loss")] == pytest.approx(history.history["loss"])
    assert [e.step for e in train.Scalars("epoch/loss")] == [1, 2, 3]
    assert [e.value for e in validation.Scalars("epoch/loss")] == pytest.approx(history.history["val_loss"])
    assert [e.value for e in train.Scalars("epoch/lr")] == pytest.approx([0.1, 0.05, 0.025])
    # 4 steps per epoch, every 2nd step: steps 2, 4, ..., 12
    assert [e.step for e in train.Scalars("step/loss")] == [2, 4, 6, 8, 10, 12]
    assert any(tag.startswith("weights/") for tag in tags["histograms"])
    assert any(tag.startswith("gradients/") for tag in tags["histograms"])
    assert tags["graph"]


def test_step_losses_match_the_per_step_losses(tmp_path):
    x, y = make_classification(n=32)
    seen = []

    class Spy(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(logs["loss"].item())

    model_for().fit(
        x,
        y,
        epochs=2,
        batch_size=8,
        progress="none",
        callbacks=[Spy(), TensorBoard(tmp_path / "tb", log_every_n_steps=1)],
    )
    values = [e.value for e in read_events(tmp_path / "tb" / "train").Scalars("step/loss")]
    assert values == pytest.approx(seen)


def test_hparams_are_written_with_final_metrics(tmp_path):
    x, y = make_classification(n=32)
    model_for().fit(
        x,
        y,
        epochs=1,
        progress="none",
        callbacks=[TensorBoard(tmp_path / "tb", hparams={"lr": 0.1, "width": 16})],
    )
    hparam_dir = tmp_path / "tb" / "train" / "hparams"
    assert hparam_dir.is_dir()
    acc = read_events(hparam_dir)
    assert "hparam/loss" in acc.Tags()["scalars"]


def test_run_dir_writes_tensorboard_history_csv_and_the_png_on_demand(tmp_path, capsys):
    x, y = make_classification(n=64)
    history = model_for().fit(x, y, validation_split=0.25, epochs=3, run_dir=tmp_path / "r", progress="none")
    run = tmp_path / "r"
    # a fit alone draws no figure (0.1-0.3 s each, every tuning trial would pay it) ...
    assert (run / "history.csv").exists() and not (run / "history.png").exists()
    # ... `torchhouse show RUN --plot` draws it from history.csv
    assert main(["show", str(run), "--plot"]) == 0
    assert f"wrote {run / 'history.png'}" in capsys.readouterr().out
    assert (run / "history.png").stat().st_size > 10_000
    assert (run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["show", str(run), "--plot", str(tmp_path / "elsewhere.png")]) == 0
    assert (tmp_path / "elsewhere.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = th.runs.plot_run(run)  # the best epoch comes from run.json's monitor (val_loss)
    best = 1 + history.best("val_loss")[0]
    assert any(f"(epoch {best})" in text.get_text() for ax in figure.axes for text in ax.get_legend().texts)
    events = read_events(run / "tensorboard" / "validation")
    assert [e.value for e in events.Scalars("epoch/loss")] == pytest.approx(history.history["val_loss"])


def test_history_plot_marks_the_best_epoch(tmp_path):
    h = th.History()
    for epoch, (loss, val) in enumerate([(1.0, 0.9), (0.5, 0.4), (0.3, 0.6)]):
        h.append(epoch, {"loss": loss, "acc": 1 - loss, "val_loss": val, "val_acc": 1 - val})
    figure = h.plot(tmp_path / "h.png")
    assert [ax.get_title() for ax in figure.axes] == ["loss", "acc"]
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["train", "validation", "best val_loss (epoch 2)"]
    assert figure.axes[0].get_lines()[2].get_xdata()[0] == 2
    assert (tmp_path / "h.png").exists()


def test_live_plot_updates_one_display_in_place():
    shown = []

    class Handle:
        def update(self, figure):
            shown.append(("update", figure))

    def display(figure, display_id):
        shown.append(("display", figure))
        return Handle()

    x, y = make_classification(n=32)
    model_for().fit(x, y, epochs=3, progress="none", callbacks=[LivePlot(display=display)])
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    assert len({id(figure) for _, figure in shown}) == 1


def test_live_plot_outside_jupyter_warns():
    x, y = make_classification(n=16)
    with pytest.warns(UserWarning, match="Jupyter only"):
        model_for().fit(x, y, epochs=1, progress="none", plot="live")


def test_runs_lists_status_of_finished_stopped_crashed_and_running(tmp_path, capsys):
    x, y = make_classification(n=32)
    model_for().fit(x, y, epochs=2, run_dir=tmp_path / "finished", progress="none", tensorboard=False)
    stop = th.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: setattr(stop.model, "stop_training", True)
    )
    model_for().fit(
        x, y, epochs=5, run_dir=tmp_path / "stopped", progress="none", callbacks=[stop], tensorboard=False
    )

    class Boom(th.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        model_for().fit(
            x,
            y,
            epochs=2,
            run_dir=tmp_path / "crashed",
            callbacks=[Boom()],
            progress="none",
            tensorboard=False,
        )
    # a run killed by SIGKILL says "running" in run.json with a dead pid
    killed = tmp_path / "killed"
    killed.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (killed / "run.json").write_text(json.dumps({"status": "running", "pid": dead.pid, "started": "x"}))
    live = tmp_path / "live"
    live.mkdir()
    (live / "run.json").write_text(json.dumps({"status": "running", "pid": os.getpid(), "started": "y"}))
    # the lock decides when there is one: held by a live process (this one) whatever the pid says
    from torchhouse.runs.lock import acquire_lock, release_lock

    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "run.json").write_text(json.dumps({"status": "running", "pid": dead.pid, "started": "z"}))
    lock = acquire_lock(locked / ".lock")
    assert main(["runs", str(tmp_path)]) == 0
    release_lock(lock)
    out = capsys.readouterr().out
    status = {line.split()[0]: line.split()[-1] for line in out.splitlines()[2:]}
    assert status["locked"] == "running"
    assert status["finished"] == "finished"
    assert "early" in out and status["stopped"] == "early"
    assert status["crashed"] == "crashed"
    assert status["killed"] == "crashed"
    assert status["live"] == "running"


def test_show_prints_config_model_and_history(tmp_path, capsys):
    x, y = make_classification(n=32)
    model_for().fit(x, y, epochs=2, run_dir=tmp_path / "r", progress="none", tensorboard=False)
    assert main(["show", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "CrossEntropyLoss()" in out and "Sequential" in out and "history:" in out
    assert out.strip().splitlines()[-1].split()[0] == "2"
    assert main(["show", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_tensorboard_command_serves_on_loopback(tmp_path):
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "torchhouse", "tensorboard", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert f"http://127.0.0.1:{port}/" in process.stdout.readline()
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "TensorBoard did not answer within 90 s"
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_step_losses_are_flushed_during_the_epoch(tmp_path):
    x, y = make_classification(n=64)
    seen_during_epoch = []

    class Reader(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.global_step == 4:  # mid-epoch: 8 steps per epoch
                events = read_events(tmp_path / "tb" / "train")
                seen_during_epoch.extend(e.step for e in events.Scalars("step/loss"))

    tb = TensorBoard(tmp_path / "tb", log_every_n_steps=1, flush_seconds=0.0)
    model_for().fit(x, y, epochs=2, batch_size=8, progress="none", callbacks=[tb, Reader()])
    values = read_events(tmp_path / "tb" / "train").Scalars("step/loss")
    assert [e.step for e in values] == list(range(1, 17))  # each step once, none twice
    assert seen_during_epoch == [1, 2, 3, 4]


def test_tensorboard_without_step_logging_adds_no_per_step_call(tmp_path):
    from torchhouse.callbacks.dispatch import CallbackList

    model = model_for()
    assert not CallbackList([TensorBoard(tmp_path / "a")], model).wants("on_train_batch_end")
    assert CallbackList([TensorBoard(tmp_path / "b", log_every_n_steps=5)], model).wants("on_train_batch_end")


def test_training_and_plots_never_switch_the_users_matplotlib_backend(tmp_path):
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg'); import torch, torchhouse as th; from torch import nn; "
        "m = th.Model(nn.Linear(3, 2), loss=nn.CrossEntropyLoss(), device='cpu'); "
        f"h = m.fit(torch.randn(16, 3), torch.randint(0, 2, (16,)), epochs=2, progress='none', run_dir={str(tmp_path / 'r')!r}); "
        f"th.runs.plot_run({str(tmp_path / 'r')!r}, {str(tmp_path / 'r' / 'history.png')!r}); "
        "f = h.plot(); import matplotlib.pyplot as plt; "
        "from matplotlib.figure import Figure; "
        "print(matplotlib.get_backend(), len(plt.get_fignums()), isinstance(f, Figure), len(f._repr_png_()) > 1000)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # backend kept; no figure left in pyplot's state; the figure shows itself as a cell's value
    assert done.stdout.split() == ["svg", "0", "True", "True"]
    assert (tmp_path / "r" / "history.png").stat().st_size > 1000
