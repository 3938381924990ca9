"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to one never killed."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net

WORKER = str(Path(__file__).with_name("resume_worker.py"))


def run_worker(run_dir, kill_at, out, delay=0.0, data="arrays"):
    return subprocess.run(
        [sys.executable, WORKER, str(run_dir), str(kill_at), str(out), str(delay), data],
        capture_output=True,
        text=True,
        timeout=120,
    )


def result(out):
    return load_file(str(out) + ".safetensors"), json.loads(Path(str(out) + ".json").read_text())


def assert_same(a, b):
    weights_a, hist_a = a
    weights_b, hist_b = b
    assert hist_a == hist_b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    done = run_worker("-", -1, folder / "out")
    assert done.returncode == 0, done.stderr
    return result(folder / "out")


@pytest.mark.slow
def test_checkpointing_does_not_change_the_run(reference, tmp_path):
    done = run_worker(tmp_path / "run", -1, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert_same(result(tmp_path / "out"), reference)


# 5 steps per epoch, a state every 3 steps and at each epoch end:
# 4 = mid-epoch after a state, 5 = last batch of epoch 0 (before its epoch-end state),
# 10 = epoch boundary, 13 and 19 = mid-epoch in later epochs.
@pytest.mark.parametrize("kill_at", [4, 5, 10, 13, 19])
@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path, kill_at):
    killed = run_worker(tmp_path / "run", kill_at, tmp_path / "out")
    assert killed.returncode == -signal.SIGKILL
    resumed = run_worker(tmp_path / "run", -1, tmp_path / "out")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stdout
    assert_same(result(tmp_path / "out"), reference)


@pytest.mark.slow
def test_killed_twice_on_a_dataset_with_a_dataloader(tmp_path):
    ref = run_worker("-", -1, tmp_path / "ref", data="dataset")
    assert ref.returncode == 0, ref.stderr
    assert run_worker(tmp_path / "run", 4, tmp_path / "out", data="dataset").returncode == -signal.SIGKILL
    assert run_worker(tmp_path / "run", 14, tmp_path / "out", data="dataset").returncode == -signal.SIGKILL
    resumed = run_worker(tmp_path / "run", -1, tmp_path / "out", data="dataset")
    assert resumed.returncode == 0, resumed.stderr
    assert_same(result(tmp_path / "out"), result(tmp_path / "ref"))


LEFTOVERS = (".ckpt-", ".deleting-", ".trash-")


def leftovers(run):
    found = [p for p in run.rglob("*") if p.name.startswith(LEFTOVERS) or p.name.endswith(".tmp")]
    return [str(p.relative_to(run)) for p in found]


@pytest.mark.slow
def test_thirty_random_sigkills_leave_no_orphan_and_resume_bit_identically(reference, tmp_path):
    """30 SIGKILLs at random moments (each asserted mid-run), a state written every step."""
    run, out = tmp_path / "run", tmp_path / "out"
    loop = subprocess.run(
        [sys.executable, WORKER, "--kill-loop", str(run), "30", "1234"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert loop.returncode == 0, loop.stderr[-3000:]
    assert loop.stdout.count("killed") == 30
    resumed = run_worker(run, -1, out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(result(out), reference)
    assert leftovers(run) == []


def small_model(features=6, optimizer=None):
    net = make_net(features=features)
    return th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu", optimizer=optimizer)


def test_resume_without_state_starts_from_scratch_and_says_so(tmp_path, capsys):
    x, y = make_classification(n=30)
    history = small_model().fit(x, y, epochs=2, run_dir=tmp_path / "r", resume=True, progress="none")
    assert "starting from scratch" in capsys.readouterr().out
    assert len(history) == 2


def test_resume_of_a_finished_run_trains_nothing_and_loads_final_weights(tmp_path, capsys):
    x, y = make_classification(n=30)
    first = small_model()
    history = first.fit(x, y, epochs=2, run_dir=tmp_path / "r", progress="none")
    second = small_model()
    second.net[0].weight.data.zero_()
    again = second.fit(x, y, epochs=2, run_dir=tmp_path / "r", resume=True, progress="none")
    assert "already finished" in capsys.readouterr().out
    assert again.history == history.history
    assert torch.equal(second.net[0].weight, first.net[0].weight)
    # asking for more epochs continues the run
    more = small_model().fit(x, y, epochs=3, run_dir=tmp_path / "r", resume=True, progress="none")
    assert len(more) == 3 and more.history["loss"][:2] == history.history["loss"]


def test_resume_with_another_model_optimizer_or_data_says_what_differs(tmp_path):
    x, y = make_classification(n=30)
    small_model().fit(x, y, epochs=1, run_dir=tmp_path / "r", progress="none")
    with pytest.raises(
        th.CheckpointError,
        match="differs from the saved run(.|\n)*parameters.0.weight: saved \\[16, 6\\], now \\[16, 5\\]",
    ):
        x5, _ = make_classification(n=30, features=5)
        small_model(features=5).fit(x5, y, epochs=2, run_dir=tmp_path / "r", resume=True, progress="none")
    with pytest.raises(th.CheckpointError, match="optimizer: saved \\['AdamW'\\], now \\['SGD'\\]"):
        small_model(optimizer=lambda p: torch.optim.SGD(p, lr=0.1)).fit(
            x, y, epochs=2, run_dir=tmp_path / "r", resume=True, progress="none"
        )
    with pytest.raises(th.CheckpointError, match="data.num_samples: saved 30, now 20"):
        small_model().fit(x[:20], y[:20], epochs=2, run_dir=tmp_path / "r", resume=True, progress="none")
    # nothing already saved was lost
    assert (tmp_path / "r" / "model.safetensors").exists()
    assert small_model().fit(x, y, epochs=2, run_dir=tmp_path / "r", resume=True, progress="none").epoch == [
        0,
        1,
    ]


def test_a_corrupt_newest_state_falls_back_to_the_previous_one(tmp_path):
    x, y = make_classification(n=30)
    small_model().fit(x, y, epochs=2, run_dir=tmp_path / "r", progress="none", keep_checkpoints=5)
    states = sorted((tmp_path / "r" / "checkpoints").glob("ckpt-*"))
    newest = states[-1] / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    (tmp_path / "r" / "run.json").write_text('{"status": "crashed"}')
    with pytest.warns(UserWarning, match="damaged checkpoint ckpt-00002-0000000.*checksum"):
        history = small_model().fit(x, y, epochs=2, run_dir=tmp_path / "r", resume=True, progress="none")
    assert len(history) == 2


def test_checkpoints_keep_the_last_k_and_the_best(tmp_path):
    x, y = make_classification(n=30)
    small_model(optimizer=lambda p: torch.optim.SGD(p, lr=5.0)).fit(
        x, y, validation_data=(x, y), epochs=6, run_dir=tmp_path / "r", progress="none", keep_checkpoints=2
    )
    folder = tmp_path / "r" / "checkpoints"
    best = json.loads((folder / "best.json").read_text())["name"]
    names = sorted(p.name for p in folder.glob("ckpt-*"))
    assert names[-2:] == ["ckpt-00005-0000000", "ckpt-00006-0000000"]
    assert best in names and len(names) <= 3
    history = json.loads((tmp_path / "r" / "run.json").read_text())
    assert history["status"] == "finished"


class NaNAt(th.Model):
    """Returns a NaN loss at one global step."""

    bad_step = 3

    def compute_loss(self, preds, target):
        loss = super().compute_loss(preds, target)
        if self.global_step == self.bad_step:
            return loss * float("nan")
        return loss


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_state(tmp_path):
    x, y = make_classification(n=40)  # 3 batches of 16 per epoch: step 3 = epoch 1, batch 0
    model = NaNAt(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(th.NonFiniteLossError, match="epoch 2, batch 1"):  # a person's numbers
        model.fit(x, y, epochs=3, batch_size=16, run_dir=tmp_path / "r", progress="none")
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["status"] == "crashed"
    from torchhouse.files.checkpoint import load_state

    states = sorted((tmp_path / "r" / "checkpoints").glob("ckpt-*"))
    assert [s.name for s in states] == ["ckpt-00001-0000000"]
    state = load_state(states[-1])
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nan_loss_skip_mode_skips_the_batch(tmp_path):
    x, y = make_classification(n=40)
    model = NaNAt(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    with pytest.warns(UserWarning, match="skipped 1 batch"):
        history = model.fit(x, y, epochs=2, batch_size=16, progress="none", on_nonfinite="skip")
    assert all(torch.isfinite(p).all() for p in model.net.parameters())
    assert all(v == v for v in history.history["loss"])


def test_nan_validation_is_recorded_and_never_best(tmp_path):
    class NaNVal(th.Model):
        def eval_step(self, batch):
            out = super().eval_step(batch)
            if self.epoch == 1:
                out["loss"] = out["loss"] * float("nan")
            return out

    x, y = make_classification(n=30)
    model = NaNVal(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    history = model.fit(x, y, validation_data=(x, y), epochs=3, run_dir=tmp_path / "r", progress="none")
    assert history.history["val_loss"][1] != history.history["val_loss"][1]
    best = json.loads((tmp_path / "r" / "checkpoints" / "best.json").read_text())["name"]
    assert best != "ckpt-00002-0000000"
