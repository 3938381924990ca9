"""The loop's shape: one training state object, built-in callbacks in order, on_fit_exit."""

import json
import warnings

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.errors import CheckpointError
from torchhouse.files.checkpoint import seal_state_json
from torchhouse.runs import RunFolder
from torchhouse.runs.state import SCHEMA_VERSION, TrainingState


def model():
    return th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")


def fit(m, run=None, **kwargs):
    x, y = make_classification(n=40)
    options = dict(epochs=2, progress="none", seed=0, batch_size=8, run_dir=run)
    options.update(kwargs)
    return m.fit(x, y, **options)


class Exits(th.callbacks.Callback):
    def __init__(self):
        self.statuses = []

    def on_fit_exit(self, status, logs):
        self.statuses.append((status, dict(logs)))


# --------------------------------------------------------------------------- TrainingState


def test_a_saved_state_reads_back_as_a_training_state_with_its_version(tmp_path):
    m = model()
    fit(m, tmp_path / "r", checkpoint_every=3)
    run = RunFolder(tmp_path / "r")
    _, saved = run.load_latest_state()
    state = TrainingState.from_state_dict(saved)
    assert saved["version"] == SCHEMA_VERSION
    assert (state.epoch, state.batch, state.global_step, state.finished) == (2, 0, 10, True)
    assert set(state.model) == set(m.net.state_dict())
    assert all(torch.equal(state.model[k], v) for k, v in m.net.state_dict().items())
    assert state.history["history"]["loss"] == m.history.history["loss"]
    # 5 steps an epoch, a state every 3 steps and at each epoch's end; the newest 3 are kept
    assert run.state_names() == ["ckpt-00001-0000001", "ckpt-00001-0000004", "ckpt-00002-0000000"]


def test_from_state_dict_refuses_a_newer_version_missing_fields_and_wrong_types():
    good = TrainingState(epoch=1, global_step=5).state_dict()
    assert TrainingState.from_state_dict(good).global_step == 5
    with pytest.raises(CheckpointError, match="schema version 99.*newer torchhouse"):
        TrainingState.from_state_dict({**good, "version": 99})
    with pytest.raises(CheckpointError, match="lacks model"):
        TrainingState.from_state_dict({k: v for k, v in good.items() if k != "model"})
    with pytest.raises(CheckpointError, match="'epoch' is str"):
        TrainingState.from_state_dict({**good, "epoch": "1"})
    with pytest.raises(CheckpointError, match="mid-epoch state without 'rng_epoch_start'"):
        TrainingState.from_state_dict({**good, "batch": 3})
    with pytest.raises(CheckpointError, match="negative"):
        TrainingState.from_state_dict({**good, "global_step": -1})
    legacy = {k: v for k, v in good.items() if k != "version"}  # written before the version field
    assert TrainingState.from_state_dict(legacy).version == 1


def test_a_state_from_a_newer_torchhouse_falls_back_to_an_older_one_with_a_warning(tmp_path):
    fit(model(), tmp_path / "r", epochs=2)
    run = RunFolder(tmp_path / "r")
    newest = run.checkpoints / run.state_names()[-1] / "state.json"
    meta = json.loads(newest.read_text())
    meta["state"]["version"] = SCHEMA_VERSION + 1
    meta["state"]["finished"] = False
    newest.write_text(json.dumps(seal_state_json(meta["sha256"], meta["state"])))
    resumed = model()
    with pytest.warns(UserWarning, match="schema version 2"):
        history = fit(resumed, tmp_path / "r", epochs=3, resume=True)
    assert history.epoch == [0, 1, 2]  # continued from the end of epoch 1, not epoch 2
    plain = model()
    fit(plain, epochs=3)
    assert all(torch.equal(a, b) for a, b in zip(resumed.net.parameters(), plain.net.parameters()))


# --------------------------------------------------------------------------- on_fit_exit


def test_on_fit_exit_reports_how_the_fit_ended(tmp_path):
    exits = Exits()
    fit(model(), callbacks=[exits])
    fit(model(), callbacks=[exits, th.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10)])

    class Boom(th.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(model(), callbacks=[exits, Boom()])

    class CtrlC(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model(), tmp_path / "i", callbacks=[exits, CtrlC()])

    class Pruned(Exception):
        run_status = "pruned"

    class Prune(th.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            raise Pruned

    with pytest.raises(Pruned):
        fit(model(), tmp_path / "p", callbacks=[exits, Prune()])
    x, y = make_classification(n=40)
    x[3] = float("nan")
    model().fit(x, y, epochs=2, progress="none", callbacks=[exits, th.callbacks.TerminateOnNaN()])
    statuses = [s for s, _ in exits.statuses]
    assert statuses == ["finished", "stopped_early", "crashed", "interrupted", "pruned", "stopped_nonfinite"]
    assert set(exits.statuses[0][1]) == {"loss"}  # the last epoch's values
    assert json.loads((tmp_path / "i" / "run.json").read_text())["status"] == "interrupted"
    assert json.loads((tmp_path / "p" / "run.json").read_text())["status"] == "pruned"


def test_terminate_on_nan_and_a_contradicting_on_nonfinite_are_refused():
    with pytest.raises(th.ConfigError, match=r"ask for on_nonfinite=\['stop'\].*'skip'"):
        fit(model(), on_nonfinite="skip", callbacks=[th.callbacks.TerminateOnNaN()])


# --------------------------------------------------------------------------- built-in callbacks


def test_built_in_callbacks_run_in_their_documented_order(tmp_path):
    seen = {}

    class Look(th.callbacks.Callback):
        def __init__(self):
            self.state = {"epochs": 0}

        def on_epoch_end(self, epoch, logs):
            # RunFolderWriter runs first: this epoch's row is already in history.csv ...
            rows = (tmp_path / "r" / "history.csv").read_text().splitlines()
            seen.setdefault("rows", []).append(len(rows) - 1)
            # ... and StateCheckpoint runs last: no state of this epoch exists yet.
            seen.setdefault("states", []).append(len(RunFolder(tmp_path / "r").state_names()))
            self.state["epochs"] += 1

        def state_dict(self):
            return dict(self.state)

        def load_state_dict(self, state):
            self.state = dict(state)

    fit(model(), tmp_path / "r", epochs=3, callbacks=[Look()])
    assert seen == {"rows": [1, 2, 3], "states": [0, 1, 2]}
    _, saved = RunFolder(tmp_path / "r").load_latest_state()
    assert saved["callbacks"] == [{"type": "Look", "state": {"epochs": 3}}]  # saved after Look ran


def test_the_progress_display_resumes_mid_epoch_at_the_saved_batch(tmp_path):
    from torchhouse.progress import set_relay

    x, y = make_classification(n=80)

    class Stop(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.global_step == 6:
                raise KeyboardInterrupt

    options = dict(epochs=1, batch_size=8, seed=0, run_dir=tmp_path / "r", checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        model().fit(x, y, progress="none", callbacks=[Stop()], **options)
    shown = []
    set_relay(lambda lines, current: shown.append((list(lines), current)))
    try:
        model().fit(x, y, progress="notebook", resume=True, **options)
    finally:
        set_relay(None)
    assert shown[0] == ([], "Epoch 1/1 [######..............] 3/10")  # the state saved at step 3
    lines, current = shown[-1]
    assert current == "" and len(lines) == 1 and lines[0].startswith("Epoch 1/1 - 10/10 - ")


def test_the_loop_module_reads_in_one_screen():
    import inspect

    from torchhouse.train import loop

    for name in ("_run_epochs", "_begin_epoch", "_train_epoch", "_end_epoch"):
        lines = inspect.getsource(getattr(loop.FitLoop, name)).splitlines()
        assert len(lines) <= 45, f"{name} has {len(lines)} lines"
    import ast

    from torchhouse.train import model as model_module

    allowed = {"torchhouse.callbacks.base", "torchhouse.callbacks.dispatch"}
    for module in (loop, model_module):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = node.module
                assert not imported.startswith(("matplotlib", "optuna", "torchhouse.runs.plots")), imported
                if imported.startswith("torchhouse.callbacks"):
                    assert imported in allowed, f"{module.__name__} imports {imported}"


def test_evaluate_and_predict_share_the_batch_loop_and_its_first_step_check():
    m = model()
    x, y = make_classification(n=20)
    with pytest.raises(th.DataError, match="the net failed on the first evaluation batch"):
        m.evaluate(x[:, :2], y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.predict(x, batch_size=8).shape == (20, 3)


def test_warnings_point_at_the_users_line_from_any_depth():
    x, y = make_classification(n=40)
    poisoned = x.clone()
    poisoned[5] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model().fit(poisoned, y, epochs=1, batch_size=8, progress="none", on_nonfinite="skip")  # fit -> loop
        model().fit(iter([(x[:8], y[:8])]), epochs=1, steps_per_epoch=2, progress="none")  # a stream runs out
    ours = [w for w in caught if "skipped" in str(w.message) or "ran out" in str(w.message)]
    assert len(ours) == 2
    assert all(w.filename == __file__ for w in ours), [(w.filename, w.lineno) for w in ours]


def test_in_a_terminal_the_progress_bar_shows_each_epoch_with_its_final_values(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    x, y = make_classification(n=80)
    m = model()
    h = m.fit(x, y, epochs=2, batch_size=8, validation_split=0.25, progress="auto")
    text = terminal.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text and "8/8" in text
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.strip()]
    # each epoch keeps one line with its final values; nothing is drawn after the last
    assert [line.split(":")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    for line, epoch in zip(lines, range(2)):
        assert f"val_loss: {h.history['val_loss'][epoch]:.4g}" in line and "8/8" in line


def test_in_a_terminal_one_bar_serves_the_fit_and_an_interrupted_epoch_keeps_its_line(monkeypatch):
    import io
    import sys

    import tqdm

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    made = []

    class CountingBar(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("desc"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", CountingBar)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    x, y = make_classification(n=80)
    model().fit(x, y, epochs=4, batch_size=8, progress="bar")
    assert made == ["Epoch 1/4"]  # created once, reset for each later epoch

    class StopAt(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.epoch == 1 and batch == 3:
                raise KeyboardInterrupt

    terminal.seek(0)
    terminal.truncate()
    with pytest.raises(KeyboardInterrupt):
        model().fit(x, y, epochs=4, batch_size=8, progress="bar", callbacks=[StopAt()])
    lines = [line.rsplit("\r", 1)[-1] for line in terminal.getvalue().split("\n") if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["Epoch 1/4", "Epoch 2/4"]
    assert "10/10" in lines[0] and "4/10" in lines[1]  # the cut epoch shows where it stopped


def test_the_first_step_checks_run_once_per_fit_not_once_per_epoch(monkeypatch):
    """The first-step checks read the device (a host sync on a GPU): a fit runs them on its
    first training step and its first validation step; a standalone evaluate on its first."""
    from torchhouse.train import batch_loop, step_checks

    seen = []

    def counting(model, step, batch, what, record):
        seen.append(what)
        return step_checks.first_step(model, step, batch, what, record)

    monkeypatch.setattr(batch_loop, "first_step", counting)
    x, y = make_classification(n=80)
    m = model()
    m.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, progress="none")
    assert seen == ["training", "evaluation"]
    m.evaluate(x, y)
    m.fit(x, y, epochs=2, batch_size=8, progress="none")  # a second fit checks its first step again
    assert seen == ["training", "evaluation", "evaluation", "training"]


def test_in_a_terminal_a_fit_resumed_mid_epoch_starts_the_bar_at_the_saved_batch(tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    x, y = make_classification(n=80)

    class Stop(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.global_step == 6:
                raise KeyboardInterrupt

    options = dict(epochs=2, batch_size=8, seed=0, run_dir=tmp_path / "r", checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        model().fit(x, y, progress="none", callbacks=[Stop()], **options)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    h = model().fit(x, y, progress="bar", resume=True, **options)
    text = terminal.getvalue()
    assert text.split("\r")[1].startswith("Epoch 1/2:  30%") and " 3/10 " in text.split("\r")[1]
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    for line, epoch in zip(lines, range(2)):
        assert "10/10" in line and f"loss: {h.history['loss'][epoch]:.4g}" in line
