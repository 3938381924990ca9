"""Run folders you can trust: one run per folder, a lock, complete resume checks, clean faults."""

import json
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.files.checkpoint import seal_state_json
from torchhouse.frontends.cli import main
from torchhouse.runs import RunFolder, run_status


def model(**kwargs):
    return th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", **kwargs)


def fit(run, epochs=2, **kwargs):
    x, y = kwargs.pop("data", make_classification(n=40))
    options = dict(epochs=epochs, run_dir=run, progress="none", seed=0, batch_size=8)
    options.update(kwargs)
    return model().fit(x, y, **options)


# --------------------------------------------------------------------------- one run per folder


def test_a_second_fresh_fit_into_a_used_folder_is_refused_and_nothing_is_lost(tmp_path):
    run = tmp_path / "r"
    fit(run, epochs=5)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(th.ConfigError, match="already holds a run.*resume=True.*overwrite=True"):
        fit(run, epochs=2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert (
        len(json.loads((run / "run.json").read_text())) and (run / "history.csv").read_text().count("\n") == 6
    )


def test_overwrite_replaces_the_run_and_resume_then_continues_the_new_one(tmp_path):
    run = tmp_path / "r"
    fit(run, epochs=5)
    fit(run, epochs=2, overwrite=True)
    names = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*"))
    assert names[-1] == "ckpt-00002-0000000" and "ckpt-00005-0000000" not in names
    history = fit(run, epochs=3, resume=True)
    assert history.epoch == [0, 1, 2]
    assert (run / "history.csv").read_text().count("\n") == 4


def test_the_cli_demo_sequence_no_longer_mixes_runs(tmp_path, capsys):
    run = str(tmp_path / "demo")
    common = ["--run-dir", run, "--progress", "none"]
    assert main(["demo", "--epochs", "3", *common]) == 0
    assert main(["demo", "--epochs", "2", *common]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["demo", "--epochs", "1", "--overwrite", *common]) == 0
    assert main(["demo", "--epochs", "2", "--resume", *common]) == 0
    out = capsys.readouterr().out
    assert "Resuming" in out and "ckpt-00001-0000000" in out
    assert (tmp_path / "demo" / "history.csv").read_text().count("\n") == 3


def test_empty_run_dir_and_foreign_folders_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text('{"mine": true}')
    with pytest.raises(th.ConfigError, match="empty path would write into the current folder"):
        fit("", epochs=1)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("meow")
    with pytest.raises(th.ConfigError, match="not empty and is not a torchhouse run.*cat.jpg"):
        fit(other, epochs=1)
    assert sorted(p.name for p in other.iterdir()) == ["cat.jpg"]
    assert (tmp_path / "config.json").read_text() == '{"mine": true}'
    with pytest.raises(th.ConfigError, match="contradict"):
        fit(tmp_path / "x", resume=True, overwrite=True)


# --------------------------------------------------------------------------- the lock

SLOW_FIT = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    import torchhouse as th

    class Slow(th.callbacks.Callback):
        def on_fit_start(self, logs):
            print("started", flush=True)
        def on_epoch_end(self, epoch, logs):
            time.sleep(float(sys.argv[3]))

    torch.manual_seed(int(sys.argv[2]))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    model = th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu")
    model.fit(x, y, epochs=4, run_dir=sys.argv[1], progress="none", seed=int(sys.argv[2]),
              callbacks=[Slow()], resume=len(sys.argv) > 4)
    print("done", flush=True)
    """
)


def start(run, seed, pause, *extra):
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_FIT, str(run), str(seed), str(pause), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_writers_on_one_folder_one_clear_error_one_intact_run(tmp_path):
    run = tmp_path / "r"
    first = start(run, 5, 1.5)
    assert first.stdout.readline().strip() == "started"
    assert run_status(RunFolder(run).info(), run) == "running"
    second = start(run, 6, 0.0, "resume")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 1 and "started" not in out
    assert "another process is training into this run folder (pid" in err
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == 4
    state = json.loads(sorted((run / "checkpoints").glob("ckpt-*"))[-1].joinpath("state.json").read_text())
    assert state["state"]["fingerprint"]["seed"] == 5


@pytest.mark.slow
def test_a_killed_writer_leaves_a_crashed_run_whose_lock_is_taken_over(tmp_path):
    run = tmp_path / "r"
    first = start(run, 5, 5.0)
    assert first.stdout.readline().strip() == "started"
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert run_status(RunFolder(run).info(), run) == "crashed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model().fit(
            torch.randn(40, 6),
            torch.randint(0, 3, (40,)),
            epochs=1,
            run_dir=run,
            progress="none",
            overwrite=True,
        )
    assert len(history) == 1
    assert any("taking over the lock" in str(w.message) for w in caught)


def test_ctrl_c_marks_the_run_interrupted(tmp_path):
    class Interrupt(th.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "r", epochs=3, callbacks=[Interrupt()])
    assert run_status(RunFolder(tmp_path / "r").info(), tmp_path / "r") == "interrupted"


# --------------------------------------------------------------------------- resume checks


def test_resume_refuses_every_setting_that_changes_the_result_naming_each(tmp_path):
    x, y = make_classification(n=40)
    run = tmp_path / "r"
    fit(run, epochs=1, data=(x, y), batch_size=8)
    changes = {
        "batch_size": dict(batch_size=9),  # 5 steps either way, but other samples per step
        "shuffle": dict(shuffle=False),
        "seed": dict(seed=1),
        "validation_split": dict(validation_split=0.25),
    }
    for name, change in changes.items():
        with pytest.raises(th.CheckpointError, match=f"(?s)differs from the saved run.*{name}: saved"):
            fit(run, epochs=2, data=(x, y), resume=True, **change)
    with pytest.raises(th.CheckpointError, match="hyperparameters.*'lr': 0.001.*'lr': 0.5"):
        th.Model(
            make_net(),
            loss=nn.CrossEntropyLoss(),
            device="cpu",
            optimizer=lambda p: torch.optim.AdamW(p, lr=0.5),
        ).fit(x, y, epochs=2, run_dir=run, resume=True, progress="none", seed=0, batch_size=8)
    with pytest.raises(th.CheckpointError, match="loss: saved 'CrossEntropyLoss\\(\\)', now 'NLLLoss\\(\\)'"):
        th.Model(make_net(), loss=nn.NLLLoss(), device="cpu").fit(
            x, y, epochs=2, run_dir=run, resume=True, progress="none", seed=0, batch_size=8
        )
    other = x.clone()
    other[3, 2] += 1.0  # same size, other values
    with pytest.raises(th.CheckpointError, match="data.sample_sha256: saved"):
        fit(run, epochs=2, data=(other, y), resume=True)
    with pytest.raises(th.CheckpointError, match="metrics: saved \\[\\], now \\['acc'\\]"):
        th.Model(
            make_net(), loss=nn.CrossEntropyLoss(), device="cpu", metrics={"acc": th.metrics.accuracy}
        ).fit(x, y, epochs=2, run_dir=run, resume=True, progress="none", seed=0, batch_size=8)
    # a stateless callback added on resume is fine, and the run continues
    history = fit(
        run, epochs=2, data=(x, y), resume=True, callbacks=[th.callbacks.CSVLogger(tmp_path / "log.csv")]
    )
    assert history.epoch == [0, 1]


def reseal(state_dir: Path, edit) -> None:
    meta_file = state_dir / "state.json"
    meta = json.loads(meta_file.read_text())
    edit(meta["state"])
    meta_file.write_text(json.dumps(seal_state_json(meta["sha256"], meta["state"])))


DAMAGE = {
    "a missing key": lambda s: s.pop("optimizers"),
    "a dangling tensor reference": lambda s: s["model"].update({"0.weight": {"__tensor__": "s.nowhere"}}),
    "a wrong type": lambda s: s.update(global_step="many"),
    "a bad RNG state": lambda s: s["rng"].update(torch={"__tensor__": s["model"]["0.bias"]["__tensor__"]}),
    "deep nesting": lambda s: s.update(history=json.loads("[" * 500 + "]" * 500)),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_but_valid_newest_state_falls_back_to_the_previous_one(kind, tmp_path):
    run = tmp_path / "r"
    fit(run, epochs=2, keep_checkpoints=5)
    reseal(run / "checkpoints" / "ckpt-00002-0000000", DAMAGE[kind])
    with pytest.warns(UserWarning, match="ckpt-00002-0000000"):
        history = fit(run, epochs=3, resume=True)
    reference = fit(tmp_path / "ref", epochs=3)
    assert history.history == reference.history


def test_deeply_nested_json_is_a_clear_error_not_a_recursion_error(tmp_path):
    run = tmp_path / "r"
    fit(run, epochs=1)
    state = run / "checkpoints" / "ckpt-00001-0000000" / "state.json"
    state.write_text("[" * 100_000 + "]" * 100_000)
    with (
        pytest.raises(th.CheckpointError, match="none of the 1 saved states can be used"),
        pytest.warns(UserWarning, match="nested too deeply"),
    ):
        fit(run, epochs=2, resume=True)


def test_leftovers_of_a_killed_process_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "r"
    fit(run, epochs=1)
    checkpoints = run / "checkpoints"
    (checkpoints / ".ckpt-00002-0000000.abc").mkdir()
    (checkpoints / ".ckpt-00002-0000000.abc" / "state.safetensors").write_bytes(b"x" * 1000)
    (checkpoints / ".deleting-ckpt-00000-0000003").mkdir()
    (run / ".run.json.xyz.tmp").write_text("{")
    (run / ".trash-123").mkdir()
    fit(run, epochs=2, resume=True)
    left = [
        p.name
        for p in run.rglob("*")
        if p.name.startswith((".ckpt", ".deleting", ".trash")) or p.name.endswith(".tmp")
    ]
    assert left == []


def test_a_full_disk_names_the_file_and_keeps_the_saved_states(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import torchhouse.files.checkpoint as checkpoint

    run = tmp_path / "r"
    fit(run, epochs=1)

    def no_space(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(checkpoint, "save_file", no_space)
    with pytest.raises(
        th.CheckpointError, match="cannot write .*checkpoints.*state.safetensors.*No space left"
    ):
        fit(run, epochs=2, resume=True)
    monkeypatch.undo()
    assert [p.name for p in (run / "checkpoints").glob("ckpt-*")] == ["ckpt-00001-0000000"]
    assert fit(run, epochs=2, resume=True).epoch == [0, 1]


def test_nan_validation_with_early_stopping_reports_and_finishes(tmp_path, capsys):
    x, y = make_classification(n=40)
    x_val = x.clone()
    x_val[0, 0] = float("nan")
    history = model().fit(
        x,
        y,
        validation_data=(x_val, y),
        epochs=6,
        run_dir=tmp_path / "r",
        progress="none",
        callbacks=[th.callbacks.EarlyStopping(monitor="val_loss", patience=2)],
    )
    assert len(history) == 2
    assert "no finite value yet" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "stopped_early"


# --------------------------------------------------------------------------- data loaders


def test_validation_split_keeps_loader_semantics_or_refuses(tmp_path):
    x, y = make_classification(n=40)
    weights = torch.where(y == 0, 1.0, 0.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, sampler=WeightedRandomSampler(weights, 40))
    with pytest.raises(th.DataError, match="WeightedRandomSampler.*validation_data"):
        model().fit(loader, validation_split=0.25, epochs=1, progress="none")
    dropping = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, drop_last=True)
    seen = []

    class Count(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(batch)

    model().fit(dropping, validation_split=0.25, epochs=1, progress="none", callbacks=[Count()])
    assert len(seen) == 30 // 8  # drop_last kept: 3 full batches of the 30 training samples


def test_predict_on_a_shuffling_loader_warns():
    x, _ = make_classification(n=20)
    with pytest.warns(UserWarning, match="RandomSampler shuffles.*shuffle=False"):
        model().predict(DataLoader(TensorDataset(x), batch_size=8, shuffle=True))


# --------------------------------------------------------------------------- tuning


@pytest.fixture()
def tuning_data():
    pytest.importorskip("optuna")
    return make_classification(n=60)


def build(trial):
    width = trial.suggest_int("width", 4, 64)
    return th.Model(
        make_net(),
        loss=nn.CrossEntropyLoss(),
        device="cpu",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01 * width / 8),
    )


def test_a_resumed_seeded_study_does_not_replay_tried_parameters(tuning_data, tmp_path):
    x, y = tuning_data
    options = dict(validation_split=0.25, epochs=1, seed=0, tune_dir=tmp_path)
    th.tune(build, x, y, n_trials=2, **options)
    study = th.tune(build, x, y, n_trials=4, **options)
    widths = [t.params["width"] for t in study.trials]
    assert len(widths) == 4 and widths[2:] != widths[:2]


def test_a_dead_running_trial_is_failed_and_another_monitor_is_refused(tuning_data, tmp_path):
    import optuna

    x, y = tuning_data
    options = dict(validation_split=0.25, epochs=1, seed=0, tune_dir=tmp_path)
    study = th.tune(build, x, y, n_trials=1, **options)
    orphan = study.ask()  # as a killed worker leaves it: RUNNING, its folder unlocked
    folder = tmp_path / f"trial-{orphan.number:04d}"
    folder.mkdir()
    (folder / "run.json").write_text('{"status": "running", "pid": 999999}')
    orphan.set_user_attr("run_dir", str(folder))
    study = th.tune(build, x, y, n_trials=3, **options)
    states = {t.number: t.state for t in study.trials}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert study.trials[orphan.number].user_attrs["error"].startswith("its process died")
    with pytest.raises(th.ConfigError, match="created to minimize val_loss, now asked to maximize val_acc"):
        th.tune(build, x, y, n_trials=4, monitor="val_acc", **options)


def test_shard_files_are_written_read_back_checked_and_never_followed_out_of_the_folder(tmp_path):
    run = RunFolder(tmp_path / "r")
    tensors = {"model/w": torch.arange(4.0)}
    digest = run.save_shard("ckpt-00001-0000000", 0, tensors)
    assert torch.equal(run.load_shard("ckpt-00001-0000000", 0, digest)["model/w"], tensors["model/w"])
    with pytest.raises(th.CheckpointError, match="does not match"):
        run.load_shard("ckpt-00001-0000000", 0, "0" * 64)
    with pytest.raises(th.CheckpointError, match="missing"):
        run.load_shard("ckpt-00001-0000000", 1, digest)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "rank-0.safetensors").write_bytes(
        (run.checkpoints / "ckpt-00001-0000000.shards" / "rank-0.safetensors").read_bytes()
    )
    (run.checkpoints / "ckpt-00002-0000000.shards").symlink_to(outside)
    with pytest.raises(th.CheckpointError, match="a symlink"):
        run.load_shard("ckpt-00002-0000000", 0, digest)
    assert run.state_names() == []  # shard folders are not states


# --------------------------------------------------------------------------- planted links and FIFOs


def test_a_lock_that_is_a_symlink_never_truncates_its_target(tmp_path):
    run = tmp_path / "r"
    fit(run, epochs=1)
    precious = tmp_path / "precious.txt"
    precious.write_text("years of notes")
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(precious)
    for options in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(th.CheckpointError, match="lock is a symbolic link"):
            fit(run, epochs=2, **options)
        assert precious.read_text() == "years of notes"
    assert (run / "checkpoints").is_dir()  # overwrite refused before removing anything


def test_a_lock_that_is_a_fifo_never_blocks_runs_show_or_resume(tmp_path):
    import os

    run = tmp_path / "runs" / "r"
    fit(run, epochs=1)
    (run / ".lock").unlink()
    os.mkfifo(run / ".lock")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from torch import nn
        import torchhouse as th
        from torchhouse.frontends.cli import main
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import make_classification, make_net
        print("runs", main(["runs", {str(run.parent)!r}]), flush=True)
        print("show", main(["show", {str(run)!r}]), flush=True)
        x, y = make_classification(n=40)
        model = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
        try:
            model.fit(x, y, epochs=2, run_dir={str(run)!r}, resume=True, progress="none", seed=0, batch_size=8)
        except th.CheckpointError as exc:
            print("resume refused:", exc, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "runs 0" in done.stdout and "show 0" in done.stdout
    assert "finished" in done.stdout
    assert "resume refused:" in done.stdout and "not a regular file" in done.stdout


def test_a_fifo_or_link_planted_for_a_run_file_is_refused_not_waited_on(tmp_path):
    import os

    from torchhouse.files.checkpoint import read_json
    from torchhouse.runs import describe_run, read_history_csv

    run = tmp_path / "r"
    fit(run, epochs=1)
    (run / "history.csv").unlink()
    os.mkfifo(run / "history.csv")
    with pytest.raises(th.CheckpointError, match="not a regular file"):
        read_history_csv(run / "history.csv")
    assert "history.csv" in describe_run(run)  # reported as damaged, the rest shown
    (run / "run.json").rename(tmp_path / "run.json")
    os.mkfifo(run / "run.json")
    with pytest.raises(th.CheckpointError, match="not a regular file"):
        read_json(run / "run.json")


def test_shard_folders_planted_for_future_states_are_refused_before_writing(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.checkpoints.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run.checkpoints / "ckpt-00003-0000000.shards").symlink_to(outside, target_is_directory=True)
    with pytest.raises(th.CheckpointError, match="holds symbolic links"):
        run.save_shard("ckpt-00001-0000000", 0, {"model/w": torch.ones(2)})
    with pytest.raises(th.CheckpointError, match="holds symbolic links"):
        run.save_shard("ckpt-00003-0000000", 0, {"model/w": torch.ones(2)})
    assert list(outside.iterdir()) == []
    with pytest.raises(th.CheckpointError, match="holds symbolic links"):
        run.prepare(resume=True, overwrite=False)
    assert list(outside.iterdir()) == []


def test_every_file_of_a_run_folder_gets_the_usual_mode_not_a_private_one(tmp_path):
    """Temporary files are created private (0600); the finished files take the umask's mode,
    the weights too (safetensors replaces the file it writes with a private one)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        fit(tmp_path / "r", epochs=2)
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(tmp_path / "r")): stat.S_IMODE(p.stat().st_mode)
        for p in (tmp_path / "r").rglob("*")
        if p.is_file() and p.name != ".lock"
    }
    assert "model.safetensors" in modes and any(name.endswith("state.safetensors") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}


class CrashAtStep(th.callbacks.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.model.global_step == self.step:
            raise RuntimeError("crash")


def test_a_resume_inside_an_accumulation_window_keeps_its_pending_gradients(tmp_path):
    """A state saved mid-window holds the gradients of the batches not yet stepped; the
    resumed fit must not clear them (it used to, at the start of its epoch loop)."""
    x, y = make_classification(n=64)

    def accumulating():
        torch.manual_seed(0)
        return th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", accumulate_grad_batches=3,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.1))  # fmt: skip

    options = dict(epochs=2, batch_size=8, seed=0, checkpoint_every=2, progress="none")
    reference = accumulating()
    expected = reference.fit(x, y, run_dir=tmp_path / "ref", **options)
    with pytest.raises(RuntimeError, match="crash"):  # the last state: step 4, one batch pending
        accumulating().fit(x, y, run_dir=tmp_path / "run", callbacks=[CrashAtStep(5)], **options)
    resumed = accumulating()
    assert resumed.fit(x, y, run_dir=tmp_path / "run", resume=True, **options).history == expected.history
    for name, value in reference.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[name], value), name


def test_a_mid_epoch_state_of_0_1_with_accuracy_falls_back_to_the_epoch_start(tmp_path):
    """0.1 kept accuracy as per-batch fractions; this version keeps counts. Such a state's
    partial epoch cannot be continued exactly: the resume warns and starts from the state at
    the epoch's start, and ends where the run never stopped ends."""
    x, y = make_classification(n=64)
    options = dict(epochs=3, batch_size=8, seed=0, checkpoint_every=3, progress="none")

    def with_accuracy():
        return model(metrics=["acc"])

    reference = with_accuracy().fit(x, y, run_dir=tmp_path / "ref", **options)
    with pytest.raises(RuntimeError, match="crash"):
        with_accuracy().fit(x, y, run_dir=tmp_path / "run", callbacks=[CrashAtStep(13)], **options)
    newest = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*"))[-1]
    assert newest.name == "ckpt-00001-0000004"  # mid-epoch: 8 steps an epoch

    def as_0_1(state):  # what 0.1 wrote: no count column beside the accuracy column
        columns = state["train_metrics"]["columns"]["__items__"]  # names with "__" are escaped
        assert [name for name, _ in columns] == ["loss", "acc", "__count__acc"]
        columns.pop()

    reseal(newest, as_0_1)
    with pytest.warns(UserWarning, match="ckpt-00001-0000004.*torchhouse 0.1"):
        resumed = with_accuracy().fit(x, y, run_dir=tmp_path / "run", resume=True, **options)
    assert resumed.history == reference.history and "acc" in resumed.history
