"""The tools of issue 27: EMA, find_lr, activation checkpointing, max_time, deterministic,
freeze / unfreeze, param_groups, BackboneFinetuning, FLOPs in the summary."""

import json

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import torchhouse as th
from conftest import make_classification, params_equal

SGD = lambda params: torch.optim.SGD(params, lr=0.1)


def net(seed=1, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def model(**kwargs):
    kwargs.setdefault("optimizer", SGD)
    return th.Model(kwargs.pop("net", None) or net(), loss=nn.CrossEntropyLoss(), device="cpu", **kwargs)


class CrashAtStep(th.callbacks.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.model.global_step == self.step:
            raise RuntimeError("killed")


# --------------------------------------------------------------------------- EMA


def test_ema_equals_a_hand_loop_with_averaged_model_bit_for_bit():
    x, y = make_classification(n=96)
    m = model()
    ema = th.callbacks.EMA(decay=0.9, validate_with_ema=False)
    m.fit(x, y, epochs=3, batch_size=16, shuffle=False, progress="none", callbacks=[ema])

    hand = net()
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)
    averaged = AveragedModel(hand, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for _ in range(3):
        for i in range(0, 96, 16):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(hand(x[i : i + 16]), y[i : i + 16]).backward()
            opt.step()
            averaged.update_parameters(hand)
    assert ema.num_updates == 18
    for got, want in zip(m.net.parameters(), averaged.module.parameters(), strict=True):
        assert torch.equal(got, want)  # at the end of fit the averages are in the net


def test_ema_validates_on_the_averages_and_puts_the_training_weights_back():
    x, y = make_classification(n=96)
    seen = []

    class Watch(th.callbacks.Callback):
        def on_test_begin(self, logs):
            seen.append([p.detach().clone() for p in self.model.net.parameters()])

    ema = th.callbacks.EMA(decay=0.5)
    m = model()
    m.fit(x, y, validation_data=(x[:32], y[:32]), epochs=2, progress="none", callbacks=[ema, Watch()])
    # the last validation saw the averaged weights, which the net holds at the end
    assert all(torch.equal(a, b) for a, b in zip(seen[-1], m.net.parameters(), strict=True))
    plain = model()
    plain.fit(x, y, validation_data=(x[:32], y[:32]), epochs=2, progress="none")
    assert m.history.history["loss"] == plain.history.history["loss"]  # training itself untouched


def test_ema_resumed_mid_epoch_equals_the_uninterrupted_fit(tmp_path):
    x, y = make_classification(n=96)
    options = dict(epochs=3, batch_size=16, seed=0, progress="none", checkpoint_every=2)
    whole = model()
    whole.fit(x, y, run_dir=tmp_path / "a", callbacks=[th.callbacks.EMA(decay=0.8)], **options)
    with pytest.raises(RuntimeError, match="killed"):
        model().fit(
            x, y, run_dir=tmp_path / "b", callbacks=[th.callbacks.EMA(decay=0.8), CrashAtStep(9)], **options
        )
    resumed = model()
    resumed.fit(x, y, run_dir=tmp_path / "b", resume=True, callbacks=[th.callbacks.EMA(decay=0.8)], **options)
    assert params_equal(whole.net, resumed.net)
    assert whole.history.history == resumed.history.history


def test_ema_arguments_are_checked():
    with pytest.raises(th.ConfigError, match="decay"):
        th.callbacks.EMA(decay=1.0)
    with pytest.raises(th.ConfigError, match="every_n_steps"):
        th.callbacks.EMA(every_n_steps=0)


# --------------------------------------------------------------------------- find_lr


def test_find_lr_leaves_the_model_exactly_as_it_was():
    x, y = make_classification(n=200)
    m = model(net=net(dropout=0.2), optimizer=None)  # AdamW: it has optimizer state
    m.fit(x, y, epochs=1, progress="none")
    weights = {k: v.clone() for k, v in m.net.state_dict().items()}
    optimizer_state = {k: v.clone() for k, v in m.optimizer.state_dict()["state"][0].items()}
    torch.manual_seed(123)
    finder = m.find_lr(x, y, num_steps=30, seed=0)
    after_rng = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after_rng, torch.rand(1))  # the RNG is where it was
    assert all(torch.equal(v, weights[k]) for k, v in m.net.state_dict().items())
    assert all(torch.equal(v, optimizer_state[k]) for k, v in m.optimizer.state_dict()["state"][0].items())
    assert m.optimizer.param_groups[0]["lr"] == 1e-3
    assert len(finder.lrs) == len(finder.losses) >= 5
    assert finder.lrs[0] == pytest.approx(1e-7) and finder.lrs == sorted(finder.lrs)
    assert finder.suggestion is not None and finder.lrs[0] <= finder.suggestion <= finder.lrs[-1]
    assert finder.plot().axes[0].get_xscale() == "log"


def test_find_lr_stops_when_the_loss_blows_up_and_checks_its_arguments():
    x, y = make_classification(n=200)
    finder = model().find_lr(x, y, start_lr=1e-3, end_lr=1e4, num_steps=200, seed=0)
    assert len(finder.lrs) < 200  # stopped by stop_factor (or a non-finite loss)
    with pytest.raises(th.ConfigError, match="start_lr"):
        model().find_lr(x, y, start_lr=1.0, end_lr=0.1)


# --------------------------------------------------------------------------- activation checkpointing


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_the_weights_names():
    x, y = make_classification(n=64)
    plain, checked = model(net=net(dropout=0.3)), model(net=net(dropout=0.3), activation_checkpointing=True)
    assert checked.activation_checkpointing == ["0", "1", "2", "3"]
    assert list(checked.net.state_dict()) == list(plain.net.state_dict())
    for m in (plain, checked):
        torch.manual_seed(5)
        m.net.train()
        nn.functional.cross_entropy(m.net(x), y).backward()
    for a, b in zip(plain.net.parameters(), checked.net.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    h1 = model(net=net()).fit(x, y, epochs=2, seed=0, progress="none")
    h2 = model(net=net(), activation_checkpointing=[nn.Linear]).fit(x, y, epochs=2, seed=0, progress="none")
    assert h1.history == h2.history
    with pytest.raises(th.ConfigError, match="no submodule 'encoder'"):
        model(activation_checkpointing=["encoder"])


# --------------------------------------------------------------------------- max_time, deterministic


def test_max_time_stops_with_a_resumable_state_and_the_resume_equals_the_whole_fit(tmp_path, capsys):
    x, y = make_classification(n=96)
    options = dict(epochs=3, batch_size=16, seed=0, progress="none")
    whole = model()
    whole.fit(x, y, **options)
    statuses = []
    exit_status = th.callbacks.LambdaCallback(on_fit_exit=lambda status, logs: statuses.append(status))
    stopped = model()
    history = stopped.fit(x, y, run_dir=tmp_path / "r", max_time=1e-9, callbacks=[exit_status], **options)
    assert statuses == ["time_limit"] and len(history) == 0  # stopped after its first step
    assert "stopped at the time limit" in capsys.readouterr().out
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "time_limit"
    resumed = model()
    resumed.fit(x, y, run_dir=tmp_path / "r", resume=True, **options)
    assert params_equal(whole.net, resumed.net)
    assert whole.history.history == resumed.history.history


def test_max_time_takes_hh_mm_ss_and_refuses_nonsense():
    from torchhouse.train.spec import checked_max_time

    assert checked_max_time("00:01:30") == 90.0 and checked_max_time("1:00:00:00") == 86400.0
    x, y = make_classification(n=32)
    for bad in ("soon", -1, 0, "00:00:00", True):
        with pytest.raises(th.ConfigError, match="max_time"):
            model().fit(x, y, max_time=bad, progress="none")
    assert len(model().fit(x, y, epochs=2, max_time="01:00:00", progress="none")) == 2


def test_deterministic_holds_for_the_fit_only():
    x, y = make_classification(n=32)
    inside = []
    probe = th.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: inside.append(torch.are_deterministic_algorithms_enabled())
    )
    model().fit(x, y, epochs=1, deterministic=True, callbacks=[probe], progress="none")
    assert inside == [True] and not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(th.ConfigError, match="deterministic"):
        model().fit(x, y, deterministic="yes", progress="none")


# --------------------------------------------------------------------------- fine-tuning


class Backboned(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_freeze_keeps_weights_and_batchnorm_statistics_and_unfreeze_undoes_it():
    x, y = make_classification(n=64)
    m = model(net=Backboned())
    th.freeze(m.net.backbone)
    before = {k: v.clone() for k, v in m.net.backbone.state_dict().items()}
    m.fit(x, y, epochs=2, progress="none")
    after = m.net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included
    th.unfreeze(m.net.backbone)
    m.net.train()
    assert m.net.backbone[1].training and all(p.requires_grad for p in m.net.parameters())
    with pytest.raises(th.ConfigError, match="nn.Module"):
        th.freeze("backbone")


def test_param_groups_by_name_and_a_typo_is_refused():
    n = Backboned()
    groups = th.param_groups(n, {"backbone": 1e-4}, default_lr=1e-2)
    assert [(g["name"], g.get("lr"), len(g["params"])) for g in groups] == [
        ("backbone", 1e-4, 4), ("default", 1e-2, 2),
    ]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-2]
    with pytest.raises(th.ConfigError, match=r"\['backbon'\] match no parameter"):
        th.param_groups(n, {"backbon": 1e-4})


def test_backbone_finetuning_trains_the_head_first_then_the_backbone_at_a_lower_lr(tmp_path):
    x, y = make_classification(n=64)
    snapshots = []
    watch = th.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(m.net.backbone[0].weight.detach().clone())
    )
    m = model(net=Backboned())
    tune = th.callbacks.BackboneFinetuning(unfreeze_at_epoch=2, lr_factor=0.1)
    m.fit(x, y, epochs=3, progress="none", callbacks=[tune, watch])
    assert torch.equal(snapshots[0], snapshots[1]) and not torch.equal(snapshots[1], snapshots[2])
    assert [g["lr"] for g in m.optimizer.param_groups] == [0.1, pytest.approx(0.01)]

    options = dict(epochs=4, batch_size=16, seed=0, progress="none", checkpoint_every=3)
    whole = model(net=Backboned())
    whole.fit(x, y, callbacks=[th.callbacks.BackboneFinetuning(1)], **options)
    with pytest.raises(RuntimeError, match="killed"):
        model(net=Backboned()).fit(
            x,
            y,
            run_dir=tmp_path / "r",
            callbacks=[th.callbacks.BackboneFinetuning(1), CrashAtStep(10)],
            **options,
        )
    resumed = model(net=Backboned())
    resumed.fit(
        x, y, run_dir=tmp_path / "r", resume=True, callbacks=[th.callbacks.BackboneFinetuning(1)], **options
    )
    assert params_equal(whole.net, resumed.net)


def test_backbone_finetuning_refuses_to_regroup_under_a_scheduler():
    m = th.Model(
        Backboned(), loss=nn.CrossEntropyLoss(), device="cpu",
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1),
    )  # fmt: skip
    x, y = make_classification(n=32)
    with pytest.raises(th.ConfigError, match="th.param_groups"):
        m.fit(x, y, callbacks=[th.callbacks.BackboneFinetuning(1)], progress="none")


# --------------------------------------------------------------------------- FLOPs


def test_summary_counts_flops_per_layer_and_in_total():
    s = th.summary(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), input_size=(3, 4))
    assert [r.flops for r in s.rows] == [2 * 3 * 4 * 8, 0, 2 * 3 * 8 * 2]
    assert s.total_flops == 288 and "FLOPs (one forward pass): 288" in str(s)
    assert model().summary(input_size=(1, 6)).total_flops == 2 * 6 * 16 + 2 * 16 * 3


def test_the_config_can_name_the_new_callbacks_and_fit_arguments():
    from torchhouse.frontends.config import validate

    config = {
        "model": {"factory": "torchhouse.models:mlp", "kwargs": {"in_features": 30, "out_features": 2}},
        "data": {"dataset": "breast_cancer"},
        "loss": "CrossEntropyLoss",
        "callbacks": [{"name": "EMA", "decay": 0.99}],
        "fit": {"max_time": "00:10:00", "deterministic": True},
    }
    checked = validate(config)
    assert checked["fit"]["max_time"] == "00:10:00"


# --------------------------------------------------------------------------- seams


class OwnStep(th.Model):
    def train_step(self, batch):
        inputs, target = self.unpack_batch(batch)
        preds = self.forward(inputs)
        loss = self.compute_loss(preds, target)
        self.backward(loss)
        self.optimizer_step()
        return {"loss": loss.detach(), "preds": preds.detach(), "target": target}


def test_ema_with_a_custom_step_bf16_accumulation_and_a_second_fit():
    x, y = make_classification(n=64)
    own = OwnStep(net(), loss=nn.CrossEntropyLoss(), device="cpu", optimizer=SGD)
    ema = th.callbacks.EMA(decay=0.9)
    own.fit(x, y, epochs=2, batch_size=16, progress="none", callbacks=[ema])
    assert ema.num_updates == 8
    mixed = model(precision="bf16-mixed", accumulate_grad_batches=2)
    ema = th.callbacks.EMA(decay=0.9)
    mixed.fit(x, y, epochs=2, batch_size=16, progress="none", callbacks=[ema])
    assert ema.num_updates == 4  # one per optimizer step: two batches per window
    mixed.fit(x, y, epochs=1, batch_size=16, progress="none", callbacks=[ema])
    assert ema.num_updates == 2  # a second fit starts its average afresh, from the net's weights


def test_max_time_stops_a_custom_step_and_a_fit_within_the_limit_finishes():
    x, y = make_classification(n=64)
    statuses = []
    exits = th.callbacks.LambdaCallback(on_fit_exit=lambda status, logs: statuses.append(status))
    OwnStep(net(), loss=nn.CrossEntropyLoss(), device="cpu").fit(
        x, y, epochs=5, max_time=1e-9, callbacks=[exits], progress="none"
    )
    assert statuses == ["time_limit"]
    finished = model().fit(x, y, epochs=2, max_time=3600, callbacks=[exits], progress="none")
    assert statuses[-1] == "finished" and len(finished) == 2


# --------------------------------------------------------------------------- mid-epoch validation, profiler


def test_validation_every_n_steps_reaches_the_callbacks_and_tensorboard_under_the_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = make_classification(n=128)
    seen = []
    watch = th.callbacks.LambdaCallback(on_validation_end=lambda logs: seen.append(dict(logs)))
    m = model()
    history = m.fit(
        x, y, validation_split=0.25, epochs=2, batch_size=16, validation_every_n_steps=2,
        run_dir=tmp_path / "r", callbacks=[watch], progress="none",
    )  # fmt: skip
    # 6 steps per epoch: inside validations at steps 2, 4 and 8, 10; the epochs' ends at 6 and 12
    assert [v.get("step") for v in seen] == [2, 4, None, 8, 10, None]
    assert len(history) == 2 and history.history["val_loss"][0] == seen[2]["val_loss"]
    inside = m.evaluate(x[96:], y[96:])  # the last inside validation was not the final weights'
    assert seen[4]["val_loss"] != pytest.approx(inside["loss"], abs=0)
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard" / "validation"))
    events.Reload()
    assert [e.step for e in events.Scalars("step/loss")] == [2, 4, 8, 10]
    with pytest.raises(th.ConfigError, match="nothing to validate on"):
        model().fit(x, y, validation_every_n_steps=2, progress="none")


def test_validation_every_n_steps_keeps_a_fit_exact_and_resumable(tmp_path):
    x, y = make_classification(n=96)
    options = dict(validation_split=0.25, epochs=3, batch_size=8, seed=0, progress="none")
    plain, checked = model(net=net(dropout=0.2)), model(net=net(dropout=0.2))
    plain.fit(x, y, **options)
    checked.fit(x, y, validation_every_n_steps=3, **options)
    assert params_equal(plain.net, checked.net) and plain.history.history == checked.history.history
    with pytest.raises(RuntimeError, match="killed"):
        model(net=net(dropout=0.2)).fit(
            x,
            y,
            run_dir=tmp_path / "r",
            checkpoint_every=4,
            validation_every_n_steps=3,
            callbacks=[CrashAtStep(14)],
            **options,
        )
    resumed = model(net=net(dropout=0.2))
    resumed.fit(
        x, y, run_dir=tmp_path / "r", resume=True, checkpoint_every=4, validation_every_n_steps=3, **options
    )
    assert params_equal(plain.net, resumed.net)


def test_profiler_writes_a_trace_and_prints_the_top_operators(tmp_path, capsys):
    x, y = make_classification(n=128)
    profiler = th.callbacks.Profiler(wait=1, warmup=1, active=2)
    model().fit(x, y, epochs=1, batch_size=16, run_dir=tmp_path / "r", callbacks=[profiler], progress="none")
    traces = list((tmp_path / "r" / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1 and json.loads(traces[0].read_text())["traceEvents"]
    assert "aten::addmm" in profiler.table and "Profiler: 2 steps" in capsys.readouterr().out
    short = th.callbacks.Profiler(wait=5, warmup=5, active=5)  # more steps than the fit has
    model().fit(x[:32], y[:32], epochs=1, batch_size=16, callbacks=[short], progress="none")
    assert short.trace_dir is None
    with pytest.raises(th.ConfigError, match="active"):
        th.callbacks.Profiler(active=0)


def test_importing_torchhouse_loads_neither_the_flop_counter_nor_matplotlib():
    import subprocess
    import sys

    # (torch itself imports torch.profiler; the profiler callback only starts it when used)
    code = "import sys, torchhouse; print(sorted(m for m in ('torch.utils.flop_counter', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


# --------------------------------------------------------------------------- SWA


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_swa_equals_pytorchs_swa_loop_bit_for_bit():
    from torch.optim.swa_utils import SWALR, update_bn

    x, y = make_classification(n=96)
    swa = th.callbacks.StochasticWeightAveraging(swa_lr=0.05, start_epoch=2, anneal_epochs=2)
    m = model(net=Normed())
    m.fit(x, y, epochs=5, batch_size=16, shuffle=False, progress="none", callbacks=[swa])

    hand = Normed()
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)
    averaged = AveragedModel(hand)
    scheduler = SWALR(opt, swa_lr=0.05, anneal_epochs=2, anneal_strategy="cos")
    for epoch in range(5):
        for i in range(0, 96, 16):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(hand(x[i : i + 16]), y[i : i + 16]).backward()
            opt.step()
        if epoch >= 2:
            averaged.update_parameters(hand)
            scheduler.step()
    update_bn([x[i : i + 16] for i in range(0, 96, 16)], averaged)
    assert swa.num_averaged == 3 == int(averaged.n_averaged)
    assert params_equal(m.net, averaged.module)  # the averages, and BatchNorm statistics recomputed


def test_swa_resumes_exactly_and_refuses_a_scheduler(tmp_path):
    x, y = make_classification(n=96)
    options = dict(epochs=5, batch_size=16, seed=0, progress="none", checkpoint_every=4)
    make = lambda: th.callbacks.StochasticWeightAveraging(swa_lr=0.05, start_epoch=1, anneal_epochs=2)
    whole = model(net=Normed())
    whole.fit(x, y, callbacks=[make()], **options)
    with pytest.raises(RuntimeError, match="killed"):
        model(net=Normed()).fit(x, y, run_dir=tmp_path / "r", callbacks=[make(), CrashAtStep(20)], **options)
    resumed = model(net=Normed())
    resumed.fit(x, y, run_dir=tmp_path / "r", resume=True, callbacks=[make()], **options)
    assert params_equal(whole.net, resumed.net) and whole.history.history == resumed.history.history
    scheduled = model(lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))
    with pytest.raises(th.ConfigError, match="lr_scheduler"):
        scheduled.fit(x, y, callbacks=[make()], progress="none")


def test_a_config_profiler_dir_must_stay_inside_the_run_folder_and_the_trainer_takes_checkpointing():
    from torchhouse.frontends.config import build_model, validate

    base = {
        "model": {"factory": "torchhouse.models:mlp", "kwargs": {"in_features": 30, "out_features": 2}},
        "data": {"dataset": "breast_cancer"},
        "loss": "CrossEntropyLoss",
    }
    with pytest.raises(th.UntrustedCodeError, match=r"callbacks\[0\].dir"):
        validate({**base, "callbacks": [{"name": "Profiler", "dir": "/tmp/elsewhere"}]})
    checked = validate({**base, "trainer": {"activation_checkpointing": True}})
    assert build_model(checked).activation_checkpointing == ["0", "1", "2", "3", "4"]


def test_averaging_and_early_stopping_that_restores_weights_are_refused_together():
    x, y = make_classification(n=64)
    restore = th.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    for averaging in (th.callbacks.EMA(), th.callbacks.StochasticWeightAveraging(swa_lr=0.01, start_epoch=1)):
        with pytest.raises(th.ConfigError, match="would both choose the weights"):
            model().fit(
                x, y, validation_split=0.25, epochs=2, callbacks=[averaging, restore], progress="none"
            )
    keep = th.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=False)
    model().fit(x, y, validation_split=0.25, epochs=2, callbacks=[th.callbacks.EMA(), keep], progress="none")
