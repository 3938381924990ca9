"""Several processes on CPU with gloo: torchrun and th.launch give single-process results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchhouse as th

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing"),
]


def torchrun(nprocs, out, mode="fit", timeout=180, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nprocs}",
            str(HERE / "ddp_worker.py"),
            str(out),
            mode,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def single(out, world):
    done = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), str(out), "fit", str(world)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(Path(out).read_text())


def assert_close_results(a, b):
    assert a["history"].keys() == b["history"].keys()
    for key in a["history"]:
        assert a["history"][key] == pytest.approx(b["history"][key], rel=1e-5, abs=1e-6), key
    for key in a["evaluate"]:
        assert a["evaluate"][key] == pytest.approx(b["evaluate"][key], rel=1e-5, abs=1e-6), key
    for key in a["params"]:
        torch.testing.assert_close(
            torch.tensor(a["params"][key]), torch.tensor(b["params"][key]), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("nprocs", [2, 3])
def test_torchrun_matches_one_process_with_the_same_global_batch(tmp_path, nprocs):
    done = torchrun(nprocs, tmp_path / "ddp.json")
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    reference = single(tmp_path / "one.json", nprocs)
    assert ddp["ddp_dropped"]
    # evaluate over 37 samples (which 2 or 3 ranks cannot split evenly): loss and metrics
    # equal one process's, so no padded duplicate is counted
    for key, value in reference["initial_evaluate"].items():
        assert ddp["initial_evaluate"][key] == pytest.approx(value, rel=1e-6), key
    if nprocs == 2:
        # 160 samples split into global batches of 32: the same training, step for step
        assert_close_results(ddp, reference)


def test_launch_returns_rank_zeros_result():
    result = th.launch(ddp_worker.train, "fit", nprocs=2)
    reference = ddp_worker.train("fit", world=2)
    assert_close_results(result, reference)


LAUNCH_AFTER_FIT = """
import torch, torchhouse as th
from torch import nn
torch.set_num_threads(2)  # the default on this machine; the suite's conftest uses 1
x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
def make():
    torch.manual_seed(0)
    return th.Model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), loss=nn.CrossEntropyLoss(), device="cpu")
make().fit(x, y, epochs=2, batch_size=8, progress="none")  # the parent's OpenMP pool is now in use
def train():
    return make().fit(x, y, epochs=2, batch_size=8, seed=0, progress="none").history
print(len(th.launch(train, nprocs=2, timeout=60)["loss"]))
"""


def test_launch_after_training_in_the_parent_does_not_deadlock(tmp_path):
    # A forked child running OpenMP with several threads hangs in its first backward once
    # the parent has used the pool; launch gives forked children one thread each.
    script = tmp_path / "launch_after_fit.py"
    script.write_text(LAUNCH_AFTER_FIT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2"]


@pytest.mark.timeout(90)  # a rank left waiting for a collective would hang until this
def test_a_failing_rank_stops_the_others_under_launch():
    with pytest.raises(RuntimeError, match="(?s)rank 1 raised.*fails on purpose"):
        th.launch(ddp_worker.train, "raise", nprocs=2)


def test_a_failing_rank_stops_the_others_under_torchrun(tmp_path):
    done = torchrun(2, tmp_path / "x.json", mode="raise", timeout=150)  # a hang raises TimeoutExpired
    assert done.returncode != 0
    assert "fails on purpose" in done.stderr


def test_two_process_run_resumes_bit_identical_after_a_crash(tmp_path):
    # 160 samples / 2 ranks / batch 16 = 5 steps per epoch; states every 3 steps and per epoch.
    done = torchrun(2, tmp_path / "ref", "checkpoints", 180, "-1")
    assert done.returncode == 0, done.stderr[-3000:]
    crashed = torchrun(2, tmp_path / "run", "checkpoints", 180, "8")
    assert crashed.returncode != 0 and "crashes mid-epoch" in crashed.stderr
    resumed = torchrun(2, tmp_path / "run", "checkpoints", 180, "-1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout
    ref = json.loads((tmp_path / "ref").read_text())
    got = json.loads((tmp_path / "run").read_text())
    assert got["history"] == ref["history"]
    assert got["params"] == ref["params"]
    with pytest.raises(th.CheckpointError, match="world_size: saved 2, now 1"):
        ddp_worker.train_with_checkpoints(str(tmp_path / "run.run"), -1)


def test_launch_rejects_bad_nprocs():
    with pytest.raises(th.ConfigError, match="nprocs"):
        th.launch(print, nprocs=0)


def _pruned_everywhere():
    """Rank 0 holds the Optuna trial; rank 1 has none. Both must stop at the same epoch."""
    import os

    import optuna
    from torch import nn

    rank = int(os.environ["RANK"])
    trial = None
    if rank == 0:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        trial = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0)).ask()
    torch.manual_seed(0)
    model = th.Model(nn.Linear(6, 3), loss=nn.CrossEntropyLoss(), device="cpu")
    x, y, _, _ = ddp_worker.data()
    try:
        model.fit(
            x,
            y,
            validation_split=0.25,
            epochs=5,
            progress="none",
            callbacks=[th.callbacks.OptunaPruning(trial, monitor="val_loss")],
        )
    except optuna.TrialPruned:
        return {"rank": rank, "epochs": len(model.history)}
    raise AssertionError(f"rank {rank} was not pruned")


def test_pruning_is_decided_by_rank_zero_and_stops_every_rank():
    pytest.importorskip("optuna")
    # launch's timeout fails the test if rank 1 waits for a collective that never comes
    result = th.launch(_pruned_everywhere, nprocs=2, timeout=60)
    assert result == {"rank": 0, "epochs": 1}


def _nan_on_rank_one():
    import os

    from torch import nn

    rank = int(os.environ["RANK"])

    class NaNOnRankOne(th.Model):
        def compute_loss(self, preds, target):
            loss = super().compute_loss(preds, target)
            return loss * float("nan") if rank == 1 and self.global_step == 2 else loss

    torch.manual_seed(0)
    model = NaNOnRankOne(nn.Linear(6, 3), loss=nn.CrossEntropyLoss(), device="cpu")
    x, y, _, _ = ddp_worker.data()
    try:
        model.fit(x, y, epochs=3, batch_size=16, progress="none")
    except th.NonFiniteLossError as exc:
        return str(exc)
    raise AssertionError(f"rank {rank} did not stop")


def test_a_nan_on_one_rank_stops_every_rank():
    message = th.launch(_nan_on_rank_one, nprocs=2, timeout=60)
    # rank 0 stops too (the NaN reached its weights through the all-reduced gradients)
    assert message.startswith("the training loss is nan") and "at epoch 1" in message  # counted from 1


def _samples_seen_unseeded():
    import os

    from torch import nn

    from torchhouse.parallel import distributed

    seen = []

    class Recording(th.Model):
        def train_step(self, batch):
            seen.extend(int(v) for v in batch[0][:, 0])
            return super().train_step(batch)

    os.environ.pop("PYTHONHASHSEED", None)
    torch.manual_seed(int(os.environ["RANK"]) * 1000 + 7)  # each process's RNG differs, as unseeded ones do
    x = torch.arange(40, dtype=torch.float32).reshape(40, 1).repeat(1, 2)
    y = torch.zeros(40, dtype=torch.long)
    model = Recording(nn.Linear(2, 2), loss=nn.CrossEntropyLoss(), device="cpu")
    model.fit(x, y, epochs=1, batch_size=4, shuffle=True, progress="none")  # seed=None
    return distributed.gather_objects(seen)


def test_an_unseeded_shuffled_fit_gives_every_rank_its_own_share_of_one_order():
    # Without seed=..., rank 0 picks the epoch order's seed and every rank uses it: the
    # ranks' shares cover every sample once, as DistributedSampler's do.
    per_rank = th.launch(_samples_seen_unseeded, nprocs=2, timeout=60)
    assert sorted(per_rank[0] + per_rank[1]) == list(range(40))


def _own_loss_fit(world=None):

    sys.path.insert(0, str(HERE))
    from test_own_loss import TinyClassifier, data

    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    net = TinyClassifier()
    model = th.Model(
        net, loss=None, optimizer=lambda p: torch.optim.SGD(p, lr=0.5), metrics=["acc"], device="cpu"
    )
    per_process = 8 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 8 * world
    history = model.fit(data(), epochs=2, batch_size=per_process, shuffle=False, progress="none")
    return {"history": history.history, "params": {k: v.tolist() for k, v in net.state_dict().items()}}


def test_a_net_with_its_own_loss_and_dict_batches_trains_under_several_processes_as_in_one():
    result = th.launch(_own_loss_fit, nprocs=2, timeout=120)
    reference = _own_loss_fit(world=2)
    for key in reference["history"]:
        assert result["history"][key] == pytest.approx(reference["history"][key], rel=1e-5), key
    for key in reference["params"]:
        torch.testing.assert_close(
            torch.tensor(result["params"][key]), torch.tensor(reference["params"][key])
        )


def test_torchrun_with_fsdp_matches_one_process(tmp_path):
    done = torchrun(2, tmp_path / "fsdp.json", "fsdp")
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = json.loads((tmp_path / "fsdp.json").read_text())
    assert sharded["sharded"]
    assert_close_results(sharded, single(tmp_path / "one.json", 2))


def _ema_under_a_time_limit():
    from torch import nn

    from torchhouse.parallel import distributed

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = th.Model(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), loss=nn.CrossEntropyLoss(), device="cpu"
    )
    ema, statuses = th.callbacks.EMA(decay=0.9), []
    exits = th.callbacks.LambdaCallback(on_fit_exit=lambda status, logs: statuses.append(status))
    model.fit(x, y, epochs=500, batch_size=4, seed=0, max_time=0.5, callbacks=[ema, exits], progress="none")
    flat = torch.cat([p.detach().flatten() for p in model.net.parameters()]).tolist()
    return distributed.gather_objects((statuses, model.global_step, ema.num_updates, flat))


def test_ema_and_a_time_limit_under_two_processes_stop_every_rank_at_one_step_with_one_average():
    ranks = th.launch(_ema_under_a_time_limit, nprocs=2, timeout=120)
    (status0, step0, updates0, flat0), (status1, step1, updates1, flat1) = ranks
    assert status0 == status1 == ["time_limit"]
    assert step0 == step1 and step0 % 32 == 0 and step0 < 500 * 32  # the ranks agree every 32 steps
    assert updates0 == updates1 == step0  # one average update per optimizer step
    assert flat0 == flat1  # the same averaged weights on every rank
