"""Callbacks: hooks, stopping, early stopping, checkpoints, NaN never best."""

import math

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.callbacks import Callback, CSVLogger, EarlyStopping, LambdaCallback, ModelCheckpoint


def model_for(**kwargs):
    return th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", **kwargs)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, logs):
        self.calls.append("fit_start")

    def on_epoch_start(self, epoch, logs):
        self.calls.append(f"epoch_start{epoch}")

    def on_train_batch_end(self, batch, logs):
        assert isinstance(logs["loss"], torch.Tensor)
        self.calls.append(f"batch{batch}")

    def on_validation_end(self, logs):
        assert set(logs) == {"val_loss"}
        self.calls.append("val_end")

    def on_epoch_end(self, epoch, logs):
        assert isinstance(self.model, th.Model)
        self.calls.append(f"epoch_end{epoch}")

    def on_fit_end(self, logs):
        self.calls.append("fit_end")


def test_hooks_are_called_in_order():
    x, y = make_classification(n=20)
    recorder = Recorder()
    model_for().fit(
        x, y, validation_data=(x, y), epochs=2, batch_size=10, callbacks=[recorder], progress="none"
    )
    assert recorder.calls == [
        "fit_start",
        "epoch_start0",
        "batch0",
        "batch1",
        "val_end",
        "epoch_end0",
        "epoch_start1",
        "batch0",
        "batch1",
        "val_end",
        "epoch_end1",
        "fit_end",
    ]


def test_a_callback_stops_training():
    class StopAfterTwo(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                self.model.stop_training = True

    x, y = make_classification(n=20)
    history = model_for().fit(x, y, epochs=10, callbacks=[StopAfterTwo()], progress="none")
    assert history.epoch == [0, 1]


def test_early_stopping_stops_and_restores_best_weights():
    x, y = make_classification(n=60)
    seen = {}

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs):
            seen[epoch] = {k: v.clone() for k, v in self.model.net.state_dict().items()}

    # A huge learning rate makes validation loss get worse after the first epochs.
    model = model_for(optimizer=lambda p: torch.optim.SGD(p, lr=5.0))
    stop = EarlyStopping(monitor="val_loss", patience=2, verbose=False)
    history = model.fit(
        x, y, validation_data=(x, y), epochs=30, callbacks=[stop, Snapshot()], progress="none"
    )
    assert len(history.epoch) < 30
    best_epoch, best_value = history.best("val_loss")
    assert stop.best_epoch == best_epoch and stop.best == best_value
    assert stop.stopped_epoch == best_epoch + 2
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, seen[best_epoch][key])


def test_early_stopping_never_takes_nan_as_best():
    stop = EarlyStopping(monitor="val_loss", patience=2, verbose=False)
    model = model_for()
    model.fit_state.log_names = ["loss", "val_loss"]
    stop.set_model(model)
    stop.on_fit_start({})
    stop.on_epoch_end(0, {"val_loss": float("nan")})
    assert stop.best is None and stop.wait == 1
    stop.on_epoch_end(1, {"val_loss": 0.5})
    assert stop.best == 0.5 and stop.wait == 0
    stop.on_epoch_end(2, {"val_loss": float("nan")})
    stop.on_epoch_end(3, {"val_loss": float("inf")})
    assert stop.best == 0.5 and model.stop_training


def test_early_stopping_mode_auto_for_accuracy_is_max():
    stop = EarlyStopping(monitor="val_acc", patience=1, verbose=False)
    model = model_for(metrics={"acc": th.metrics.accuracy})
    model.fit_state.log_names = ["loss", "acc", "val_loss", "val_acc"]
    stop.set_model(model)
    stop.on_fit_start({})
    stop.on_epoch_end(0, {"val_acc": 0.5})
    stop.on_epoch_end(1, {"val_acc": 0.7})
    assert stop.best == 0.7


def test_unknown_monitor_fails_before_training():
    x, y = make_classification(n=20)
    model = model_for()
    with pytest.raises(th.ConfigError, match="monitor='val_los'.*fit logs: loss, val_loss"):
        model.fit(x, y, validation_data=(x, y), callbacks=[EarlyStopping(monitor="val_los")], progress="none")
    assert len(model.history) == 0


def test_val_monitor_without_validation_data_says_so():
    x, y = make_classification(n=20)
    with pytest.raises(th.ConfigError, match="no validation data"):
        model_for().fit(x, y, callbacks=[EarlyStopping(monitor="val_loss")], progress="none")


def test_model_checkpoint_saves_only_improvements(tmp_path):
    x, y = make_classification(n=40)
    ckpt = ModelCheckpoint(tmp_path / "ep{epoch:02d}-{val_loss:.4f}.safetensors", monitor="val_loss")
    model = model_for(optimizer=lambda p: torch.optim.SGD(p, lr=5.0))
    history = model.fit(x, y, validation_data=(x, y), epochs=6, callbacks=[ckpt], progress="none")
    saved = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    best = math.inf
    expected = []
    for epoch, value in enumerate(history.history["val_loss"]):
        if value < best:
            best = value
            expected.append(f"ep{epoch + 1:02d}-{value:.4f}.safetensors")  # {epoch} counts from 1
    assert saved == sorted(expected)
    # the last file holds the best weights
    fresh = model_for()
    fresh.load_weights(ckpt.last_saved)
    assert fresh.evaluate(x, y)["loss"] == pytest.approx(ckpt.best, rel=1e-6)


def test_csv_logger_writes_history(tmp_path):
    x, y = make_classification(n=20)
    model = model_for()
    history = model.fit(x, y, epochs=3, callbacks=[CSVLogger(tmp_path / "h.csv")], progress="none")
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0] == "epoch,loss"
    assert len(lines) == 4
    assert float(lines[3].split(",")[1]) == history.history["loss"][2]


def test_lambda_callback():
    x, y = make_classification(n=20)
    seen = []
    model_for().fit(
        x,
        y,
        epochs=2,
        callbacks=[LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e))],
        progress="none",
    )
    assert seen == [0, 1]


def test_a_bare_callback_changes_nothing_in_a_fit():
    """The base class takes no arguments, and every hook of it is a no-op."""
    x, y = make_classification(n=32)
    plain = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    with_base = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    a = plain.fit(x, y, epochs=2, seed=0, progress="none")
    b = with_base.fit(x, y, epochs=2, seed=0, progress="none", callbacks=[Callback()])
    assert a.history == b.history
