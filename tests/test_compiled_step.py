"""Model(compile="step") and Model(cuda_graph=True) (issue 29): the compiled step equals the
eager one within float rounding, resumes exactly, keeps the step's features, and refuses
what it cannot capture with the reason. Compiling takes seconds: those tests are slow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import (
    CompilesOtherwise,
    ScaleAtEpoch,
    ScaledUntilSwitched,
    SwitchAtEpoch,
    make_classification,
    params_equal,
)

EPS = torch.finfo(torch.float32).eps


def mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def model(compile=False, net=None, **kwargs):
    kwargs.setdefault("metrics", {"acc": th.metrics.accuracy})
    return th.Model(net or mlp(), nn.CrossEntropyLoss(), device="cpu", compile=compile, **kwargs)


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# --------------------------------------------------------------------------- refusals (no compiling)


def test_cuda_graph_needs_cuda_and_compile_modes_are_checked():
    with pytest.raises(th.ConfigError, match="cuda_graph=True needs a CUDA device.*cpu"):
        model(cuda_graph=True)
    with pytest.raises(th.ConfigError, match="cuda_graph: expected True or False"):
        model(cuda_graph="yes")
    for bad in ("fast", 1, "Step"):
        with pytest.raises(th.ConfigError, match="compile: expected False, True or 'step'"):
            model(compile=bad)
    with pytest.raises(th.ConfigError, match="16-mixed.*grad scaler"):
        model(compile="step", precision="16-mixed")
    eager = model()
    assert eager.compiled_step is None and not eager.compiled


def test_compile_step_keeps_learning_rates_in_tensors_without_compiling_anything():
    m = model(compile="step", optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    lr = m.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float64 and lr.item() == 0.1
    assert not m.compiled  # the net alone is not compiled: the step is


# --------------------------------------------------------------------------- numbers


@pytest.mark.slow
def test_one_step_equals_eager_within_float_rounding():
    # one full batch: the same batches, one optimizer step; SGD within 2 ulps of each weight,
    # the default fused AdamW within one float32 eps of each weight
    x, y = make_classification(n=32)
    for optimizer, bound in ((lambda p: torch.optim.SGD(p, lr=0.1), 2 * EPS), (None, EPS)):
        eager, compiled = model(optimizer=optimizer), model("step", optimizer=optimizer)
        for m in (eager, compiled):
            m.fit(x, y, epochs=1, batch_size=32, seed=0, progress="none")
        assert max_difference(eager.net, compiled.net) <= bound
        assert eager.history.history["acc"] == compiled.history.history["acc"]
        assert abs(eager.history.history["loss"][0] - compiled.history.history["loss"][0]) <= 4 * EPS


@pytest.mark.slow
def test_a_fit_with_dropout_weights_validation_and_schedule_stays_close_to_eager():
    # dropout draws from torch's generator in the graph too; sample and class weights, a
    # per-step scheduler, accumulation and clipping run around the compiled parts
    x, y = make_classification(n=80)
    w = torch.linspace(0.5, 2.0, 80)

    def build(compile):
        return model(
            compile,
            net=mlp(dropout=0.2),
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
            lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.9),
            lr_scheduler_interval="step",
            accumulate_grad_batches=2,
            gradient_clip_val=0.5,
        )

    runs = []
    for compile in (False, "step"):
        m = build(compile)
        h = m.fit(
            x,
            y,
            epochs=2,
            batch_size=16,
            seed=3,
            progress="none",
            validation_split=0.25,
            sample_weight=w,
            class_weight={0: 2.0},
        )
        runs.append((m, h.history))
    (eager, he), (compiled, hc) = runs
    assert max_difference(eager.net, compiled.net) < 1e-5
    assert he.keys() == hc.keys() and he["lr"] == hc["lr"]  # the lr tensors log as the floats
    for key in ("loss", "val_loss"):
        assert all(abs(a - b) < 1e-5 for a, b in zip(he[key], hc[key], strict=True))
    assert isinstance(hc["lr"][0], float)
    # gradients and evaluation for the full and the last batch shapes, and the optimizer's update
    graphs = sorted(key[0] for key in compiled.compiled_step.shapes)
    assert graphs == ["forward_and_loss"] * 2 + ["forward_backward"] * 2 + ["update"]


@pytest.mark.slow
def test_a_scheduler_changing_the_lr_does_not_recompile():
    x, y = make_classification(n=64)
    m = model(
        "step",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        lr_scheduler_interval="step",
    )
    m.fit(x, y, epochs=1, batch_size=16, progress="none")  # compiles (4 equal batches)
    with torch._dynamo.config.patch(error_on_recompile=True):
        h = m.fit(x, y, epochs=2, batch_size=16, progress="none")
    assert h.history["lr"][-1] == pytest.approx(0.1 * 0.5**11)


@pytest.mark.slow
def test_resume_is_bit_identical_to_the_uninterrupted_compiled_fit(tmp_path):
    x, y = make_classification(n=72)  # 4 full batches and a short one
    options = dict(epochs=3, batch_size=16, seed=0, progress="none")
    whole = model("step", net=mlp(dropout=0.1))
    whole.fit(x, y, **options)

    class Interrupt(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.global_step == 7:
                raise KeyboardInterrupt

    stopped = model("step", net=mlp(dropout=0.1))
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(x, y, run_dir=tmp_path / "r", checkpoint_every=1, callbacks=[Interrupt()], **options)
    resumed = model("step", net=mlp(dropout=0.1))
    resumed.fit(x, y, run_dir=tmp_path / "r", resume=True, **options)
    assert params_equal(whole.net, resumed.net)
    assert whole.history.history == resumed.history.history
    # the weights the run folder wrote load back into an eager model, and an eager fit can
    # continue the run from its states (learning rates as floats again)
    eager = model()
    eager.load_weights(tmp_path / "r" / "model.safetensors")
    assert params_equal(eager.net, whole.net)
    # (the same optimizer: an eager model's default AdamW is the fused one, a compiled step's is not)
    longer = model(net=mlp(dropout=0.1), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    longer.fit(x, y, run_dir=tmp_path / "r", resume=True, **{**options, "epochs": 4})
    assert isinstance(longer.optimizer.param_groups[0]["lr"], float) and len(longer.history) == 4

    # with clipping (the gradient graph, then the update graph) too, interrupted mid-epoch
    whole = model("step", net=mlp(dropout=0.1), gradient_clip_val=0.5)
    whole.fit(x, y, **options)
    with pytest.raises(KeyboardInterrupt):
        model("step", net=mlp(dropout=0.1), gradient_clip_val=0.5).fit(
            x, y, run_dir=tmp_path / "c", checkpoint_every=1, callbacks=[Interrupt()], **options
        )
    resumed = model("step", net=mlp(dropout=0.1), gradient_clip_val=0.5)
    resumed.fit(x, y, run_dir=tmp_path / "c", resume=True, **options)
    assert params_equal(whole.net, resumed.net)
    assert "update" in {k[0] for k in resumed.compiled_step.shapes}


# --------------------------------------------------------------------------- features around the graph


@pytest.mark.slow
def test_nonfinite_guard_and_a_custom_step_that_opts_in():
    x, y = make_classification(n=48)
    bad = x.clone()
    bad[20] = float("nan")
    with pytest.raises(th.NonFiniteLossError, match="batch 2"):
        model("step").fit(bad, y, batch_size=16, shuffle=False, progress="none")
    skipping = model("step")
    with pytest.warns(UserWarning, match="skipped 1 batch"):
        skipping.fit(bad, y, batch_size=16, shuffle=False, progress="none", on_nonfinite="skip")
    assert all(torch.isfinite(p).all() for p in skipping.net.parameters())

    class HalfLoss(th.Model):
        def train_step(self, batch):
            inputs, target = self.unpack_batch(batch)
            preds, loss = self.forward_and_loss(inputs, target)  # the compiled graph
            self.backward(loss * 0.5)
            self.optimizer_step()
            return {"loss": loss, "preds": preds, "target": target}

    runs = []
    for compile in (False, "step"):
        m = HalfLoss(mlp(), nn.CrossEntropyLoss(), device="cpu", compile=compile)
        m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
        runs.append(m)
    assert max_difference(runs[0].net, runs[1].net) < 1e-5
    # the custom step's forward-and-loss graph, and the optimizer's update as a graph of its own
    assert {k[0] for k in runs[1].compiled_step.shapes} == {"forward_and_loss", "update"}


@pytest.mark.slow
def test_an_overridden_compute_loss_is_compiled_as_written():
    class Smoothed(th.Model):
        def compute_loss(self, preds, target, sample_weight=None):
            return super().compute_loss(preds, target) + 0.01 * preds.pow(2).mean()

    x, y = make_classification(n=32)
    runs = [Smoothed(mlp(), nn.CrossEntropyLoss(), device="cpu", compile=c) for c in (False, "step")]
    for m in runs:
        m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
    assert max_difference(runs[0].net, runs[1].net) < 1e-5
    for m in runs:  # a second fit (a new fit state) and an evaluation reuse the graphs
        m.fit(x, y, epochs=1, batch_size=16, seed=1, progress="none")
    assert max_difference(runs[0].net, runs[1].net) < 1e-5
    assert runs[1].evaluate(x, y)["loss"] == pytest.approx(runs[0].evaluate(x, y)["loss"], abs=1e-5)


@pytest.mark.slow
def test_bf16_mixed_compiles_and_tracks_eager_bf16():
    x, y = make_classification(n=32)
    runs = [model(c, precision="bf16-mixed") for c in (False, "step")]
    for m in runs:
        m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
    assert max_difference(runs[0].net, runs[1].net) < 1e-2  # bf16 rounds at 2^-8
    assert runs[1].history.history["loss"][-1] < runs[1].history.history["loss"][0] + 0.1


# --------------------------------------------------------------------------- what it refuses


class Syncing(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 3)

    def forward(self, x):
        out = self.layer(x)
        if out.sum().item() > 1e9:  # a host sync and a data-dependent branch
            out = out * 0
        return out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using a target size")  # torch's, while tracing the broadcast
def test_a_step_that_cannot_be_one_graph_is_refused_at_the_first_step_with_the_reason():
    x, y = make_classification(n=32)
    torch.manual_seed(0)
    m = model("step", net=Syncing(), metrics=None)
    before = {k: v.clone() for k, v in m.net.state_dict().items()}
    with pytest.raises(
        th.ConfigError, match="cannot capture the step's forward and loss as one graph"
    ) as info:
        m.fit(x, y, batch_size=16, progress="none")
    assert "item" in str(info.value) and "compile=True" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in m.net.state_dict().items())  # nothing trained
    # a wrong input shape is the data's error, as eagerly, not a compile error
    with pytest.raises(th.DataError, match="the net failed on the first training batch"):
        model("step").fit(torch.randn(32, 5), y, batch_size=16, progress="none")
    # a silent broadcast is caught before backward, as eagerly
    regression = th.Model(nn.Linear(6, 1), nn.MSELoss(), device="cpu", compile="step")
    with pytest.raises(th.DataError, match="same shape"):
        regression.fit(x, torch.randn(32), batch_size=16, progress="none")


@pytest.mark.slow
def test_more_batch_shapes_than_torch_keeps_graphs_for_are_refused():
    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, x):  # (N, L, 4) with a different L per batch
            return self.layer(x).mean(dim=1)

    batches = [(torch.randn(4, length, 4), torch.randint(0, 3, (4,))) for length in (2, 3, 4, 5)]
    m = th.Model(Mean(), nn.CrossEntropyLoss(), device="cpu", compile="step")
    refused = pytest.raises(
        th.ConfigError, match="one graph per batch shape.*graph 3, past torch's limit of 2"
    )
    with torch._dynamo.config.patch(recompile_limit=2), refused:
        m.fit(batches, epochs=1, progress="none")
    # the first step (no optimizer state yet: its gradients go to step()) is a graph of its
    # own, the second shape the second graph, the third is refused before its step
    assert m.global_step == 2
    assert sorted(k[0] for k in m.compiled_step.shapes) == ["train_step", "train_step"]


@pytest.mark.slow
def test_a_config_run_takes_compile_step(tmp_path, capsys):
    import json
    from pathlib import Path

    from torchhouse.frontends.cli import main

    config = Path(__file__).parent.parent / "examples" / "configs" / "breast_cancer.yaml"
    args = ["fit", str(config), "--run-dir", str(tmp_path / "d"), "--progress", "none"]
    assert main([*args, "--set", "fit.epochs=8", "--set", "trainer.compile=step"]) == 0
    assert float(capsys.readouterr().out.split("acc ")[1].split()[0]) > 0.8  # the majority class: 0.63
    saved = json.loads((tmp_path / "d" / "config.json").read_text())
    assert saved["compile"] == "step" and saved["cuda_graph"] is False


def test_several_processes_are_refused_before_the_fit_begins():
    from types import SimpleNamespace

    from torchhouse.parallel.strategies import SingleProcess
    from torchhouse.train.loop import FitLoop
    from torchhouse.train.spec import FitSpec

    class TwoRanks(SingleProcess):  # what a torchrun group of two looks like to the loop
        world_size = 2

    m = model("step")
    data = SimpleNamespace(train=None, val=None, generator=None)
    with pytest.raises(th.ConfigError, match="one process for now.*compile=True"):
        FitLoop(m, FitSpec(), data, TwoRanks(torch.device("cpu")))


# --------------------------------------------------------------------------- gradients in the graph


def sgd(p):
    return torch.optim.SGD(p, lr=0.1)


def grads_of(m):
    return [p.grad.clone() for p in m.net.parameters()]


@pytest.mark.slow
def test_the_training_step_takes_its_gradients_from_the_graph_as_backward_would():
    # the built-in train_step's forward, loss and gradients are one compiled graph: its
    # gradients equal eager backward's within a few ulps, sum over calls as backward's do,
    # are divided by the accumulation window, and leave a parameter no optimizer holds alone
    x, y = make_classification(n=32)
    eager, compiled = model(optimizer=sgd), model("step", optimizer=sgd)
    for m in (eager, compiled):
        m.forward_backward(x, y)
    assert all(
        torch.allclose(a, b, rtol=0, atol=4 * EPS) for a, b in zip(grads_of(eager), grads_of(compiled))
    )
    once = grads_of(compiled)
    compiled.forward_backward(x, y)  # a second batch adds into .grad
    assert all(torch.allclose(2 * a, b, rtol=0, atol=8 * EPS) for a, b in zip(once, grads_of(compiled)))
    assert {k[0] for k in compiled.compiled_step.shapes} == {"forward_backward"}

    window = model("step", optimizer=sgd, accumulate_grad_batches=4)
    window.forward_backward(x, y)
    assert all(torch.allclose(a / 4, b, rtol=0, atol=EPS) for a, b in zip(once, grads_of(window)))

    net = mlp()
    left_out = th.Model(
        net,
        nn.CrossEntropyLoss(),
        device="cpu",
        compile="step",
        optimizer=torch.optim.SGD(net[3].parameters(), lr=0.1),
    )
    left_out.fit(x, y, epochs=1, batch_size=16, progress="none")
    assert net[0].weight.grad is None and torch.equal(net[0].weight, mlp()[0].weight)
    assert not torch.equal(net[3].weight, mlp()[3].weight)


@pytest.mark.slow
def test_gradient_hooks_frozen_layers_batchnorm_and_checkpointing_stay_equal_to_eager():
    x, y = make_classification(n=64)

    def hooked():
        net = mlp()
        net[0].weight.register_hook(lambda g: g * 100)  # the graph would not run it: eager backward does

        def clip(p):
            p.grad.clamp_(-1e-3, 1e-3)

        net[3].bias.register_post_accumulate_grad_hook(clip)
        return net

    def normed():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def frozen():
        net = mlp()
        th.freeze(net[0])
        return net

    cases = {
        "hooks": (hooked, {}),
        "batchnorm": (normed, {}),
        "frozen": (frozen, {}),
        "checkpointing": (mlp, {"activation_checkpointing": True}),
    }
    for name, (build, options) in cases.items():
        runs = []
        for compile in (False, "step"):
            m = model(compile, net=build(), optimizer=sgd, **options)
            m.fit(x, y, epochs=2, batch_size=16, seed=0, shuffle=False, progress="none")
            runs.append(m)
        assert max_difference(runs[0].net, runs[1].net) < 1e-6, name  # buffers (BatchNorm's) included
    # with hooks the step stepped aside: eager backward ran them (equal to eager above)
    hooked_model = model("step", net=hooked(), optimizer=sgd)
    hooked_model.fit(x, y, epochs=1, batch_size=16, seed=0, shuffle=False, progress="none")
    assert {k[0] for k in hooked_model.compiled_step.shapes} == {"forward_and_loss", "update"}
    assert hooked_model.net[3].bias.grad is None  # zero_grad after the step, as eagerly
    # a frozen layer trains nothing and gets no gradient; unfrozen, it trains (a graph of its own)
    runs = []
    for compile in (False, "step"):
        net = mlp()
        m = model(compile, net=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
        th.freeze(net[0])
        m.fit(x, y, epochs=1, batch_size=16, progress="none", seed=0)
        assert torch.equal(net[0].weight, mlp()[0].weight) and net[0].weight.grad is None
        th.unfreeze(net[0])
        m.fit(x, y, epochs=1, batch_size=16, progress="none", seed=0)
        assert not torch.equal(net[0].weight, mlp()[0].weight)
        runs.append(m)
    assert max_difference(runs[0].net, runs[1].net) < 1e-6
    assert len({k[-1] for k in runs[1].compiled_step.shapes}) == 2  # two sets of trainable parameters
    # a net with nothing to train runs eagerly (nothing to differentiate) and changes nothing
    still = model("step", net=th.freeze(mlp()))
    with pytest.warns(UserWarning, match="no trainable parameters"):
        still.fit(x, y, epochs=1, batch_size=16, progress="none")
    assert max_difference(still.net, mlp()) == 0


@pytest.mark.slow
def test_a_loss_backward_cannot_take_is_backwards_error_and_trains_nothing():
    x, y = make_classification(n=32)

    class Detached(th.Model):
        def compute_loss(self, preds, target, sample_weight=None):
            return super().compute_loss(preds.detach(), target)

    class PerSample(th.Model):
        def compute_loss(self, preds, target, sample_weight=None):
            return nn.functional.cross_entropy(preds, target, reduction="none")

    net = mlp(dropout=0.5)
    before = [p.clone() for p in net.parameters()]
    for cls, message in ((Detached, "does not require grad"), (PerSample, r"shape \(16,\).*one number")):
        m = cls(net, nn.CrossEntropyLoss(), device="cpu", compile="step")
        with pytest.raises(th.DataError, match=message):  # backward's own errors, as eagerly
            m.fit(x, y, batch_size=16, progress="none")
        assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # nothing trained
        assert all(p.grad is None for p in net.parameters())


@pytest.mark.slow
def test_a_custom_step_opts_in_with_forward_backward_and_an_overridden_backward_runs_as_written():
    x, y = make_classification(n=48)

    class Logged(th.Model):
        def train_step(self, batch):
            inputs, target = self.unpack_batch(batch)
            preds, loss = self.forward_backward(inputs, target)  # compiled, gradients included
            self.optimizer_step()
            return {"loss": loss, "preds": preds, "target": target, "twice": 2 * loss}

    class Counted(th.Model):
        calls = 0

        def backward(self, loss):
            Counted.calls += 1
            super().backward(loss)

    builtin = model("step", optimizer=sgd)
    builtin.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
    runs = {}
    for cls in (Logged, Counted):
        m = cls(mlp(), nn.CrossEntropyLoss(), device="cpu", compile="step", optimizer=sgd)
        m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
        runs[cls] = m
    assert params_equal(builtin.net, runs[Logged].net)  # the same graph, the same numbers
    assert runs[Logged].history.history["twice"] == [2 * v for v in runs[Logged].history.history["loss"]]
    assert Counted.calls == 6  # its backward, every step: no graph computed the gradients around it
    assert {k[0] for k in runs[Counted].compiled_step.shapes} == {"forward_and_loss", "update"}
    assert max_difference(builtin.net, runs[Counted].net) < 1e-6


@pytest.mark.slow
def test_ema_a_fused_optimizer_and_a_deterministic_second_fit():
    # EMA's optimizer hook: the update stays out of the graph (step() runs the hook, compiled);
    # a fused optimizer steps eagerly (its lr a float); a deterministic fit changes torch's
    # global state, so dynamo traces the graphs again, with the settings of the first trace
    x, y = make_classification(n=48)
    runs = []
    for compile in (False, "step"):
        m = model(compile, optimizer=sgd)
        ema = th.callbacks.EMA(decay=0.5, validate_with_ema=False)
        m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none", callbacks=[ema])
        runs.append((m, ema))
    assert runs[1][1].num_updates == runs[0][1].num_updates == 6
    assert max((a - b).abs().max().item() for a, b in zip(runs[0][1].averages, runs[1][1].averages)) < 1e-6
    assert {k[0] for k in runs[1][0].compiled_step.shapes} == {"forward_backward"}

    def fused_adamw(p):
        return torch.optim.AdamW(p, lr=1e-3, fused=True)

    fused = model("step", optimizer=fused_adamw)
    assert not fused.compiled_step.compiles_optimizer and fused.compiled_step.update is None
    fused.fit(x, y, epochs=1, batch_size=16, seed=0, progress="none")
    assert isinstance(fused.optimizer.param_groups[0]["lr"], float)
    eager = model(optimizer=fused_adamw)
    eager.fit(x, y, epochs=1, batch_size=16, seed=0, progress="none")
    assert max_difference(eager.net, fused.net) < 1e-6
    for m in (eager, fused):
        m.fit(x, y, epochs=2, batch_size=16, seed=1, progress="none", deterministic=True)
    assert max_difference(eager.net, fused.net) < 1e-5
    # the default optimizer under compile="step": AdamW that torch traces into the step's graph
    default = model("step")
    assert not default.optimizer.defaults["fused"] and default.compiled_step.update is not None


@pytest.mark.slow
def test_the_optimizers_update_in_the_steps_graph_equals_its_own_step():
    # Adam (two groups, amsgrad, weight decay), SGD (momentum, nesterov) and AdamW under a
    # per-step schedule: forward, gradients and the update are one graph after the first step
    # (which creates the optimizer's state eagerly); a parameter the loss never reaches keeps
    # its state and weights, as step() leaves a parameter without a gradient
    x, y = make_classification(n=80)

    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body, self.spare = (
                nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)),
                nn.Linear(2, 2),
            )

        def forward(self, x):
            return self.body(x)

    optimizers = {
        "adam": lambda net: torch.optim.Adam(
            [
                {"params": net.body[0].parameters(), "lr": 3e-3},
                {"params": [*net.body[2].parameters(), *net.spare.parameters()]},
            ],
            lr=1e-2,
            amsgrad=True,
            weight_decay=1e-3,
        ),
        "sgd": lambda net: torch.optim.SGD(
            net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
        ),
        "adamw": lambda net: torch.optim.AdamW(net.parameters(), lr=1e-2),
    }
    for name, build in optimizers.items():
        runs = []
        for compile in (False, "step"):
            net = WithSpare()
            scheduled = (
                {
                    "lr_scheduler": lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.95),
                    "lr_scheduler_interval": "step",
                }
                if name == "adamw"
                else {}
            )
            m = th.Model(
                net, nn.CrossEntropyLoss(), optimizer=build(net), device="cpu", compile=compile, **scheduled
            )
            m.fit(x, y, epochs=3, batch_size=16, seed=0, progress="none")
            runs.append(m)
        eager, compiled = runs
        assert max_difference(eager.net, compiled.net) < 1e-5, name
        # a graph for the first step (no state yet: step() takes its gradients), one for the rest,
        # whose update leaves the spare parameters (no gradient, no state) alone
        masks = {k[-1] for k in compiled.compiled_step.shapes if k[0] == "train_step"}
        assert len(compiled.compiled_step.shapes) == len(masks) == 2, name
        assert any(all(mask) for mask in masks) and any(not all(mask) and any(mask) for mask in masks), name
        he, hc = eager.history.history, compiled.history.history
        assert he.keys() == hc.keys() and all(hc[k] == pytest.approx(he[k], abs=1e-5) for k in he), name
        assert torch.equal(compiled.net.spare.weight, WithSpare().spare.weight)
        assert compiled.net.spare.weight not in compiled.optimizer.state  # never stepped, as eagerly
        for p, q in zip(eager.optimizer.state.values(), compiled.optimizer.state.values()):
            assert all(torch.allclose(p[k].float(), q[k].float(), atol=1e-5) for k in p), name
    assert isinstance(compiled.optimizer.param_groups[0]["lr"], torch.Tensor)


@pytest.mark.slow
def test_the_update_graph_of_a_step_that_is_not_one_graph_is_checked_against_step(monkeypatch):
    # accumulation: the gradient graph, then the optimizer's update as a graph of its own,
    # equal to the eager step(); an update the compiler got wrong is refused at its first call
    from torchhouse.train.traced_update import TracedUpdate

    x, y = make_classification(n=64)
    options = dict(batch_size=16, seed=0, shuffle=False, progress="none")
    runs = []
    for compile in (False, "step"):
        m = model(compile, accumulate_grad_batches=2, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
        m.fit(x, y, epochs=3, **options)
        runs.append(m)
    assert max_difference(runs[0].net, runs[1].net) < 1e-5
    assert "update" in {k[0] for k in runs[1].compiled_step.shapes}

    right = TracedUpdate.apply
    switch = {"wrong": True}  # read while traced: flipping it makes dynamo compile the graph again

    def doubled_when_compiled(self, groups, grads):
        if switch["wrong"] and torch.compiler.is_compiling():
            grads = tuple(None if g is None else 2 * g for g in grads)
        return right(self, groups, grads)

    monkeypatch.setattr(TracedUpdate, "apply", doubled_when_compiled)
    # the first optimizer step creates Adam's state eagerly; the second is the update graph's
    once = model(accumulate_grad_batches=2, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    once.fit(x[:32], y[:32], epochs=1, **options)
    wrong = model("step", accumulate_grad_batches=2, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    with pytest.raises(
        th.ConfigError, match="optimizer's update: the compiled step's change of the .* differs"
    ):
        wrong.fit(x, y, epochs=1, **options)
    assert max_difference(once.net, wrong.net) < 1e-6  # the refused update changed nothing

    # a graph dynamo compiles again, later, is checked too (and refused when wrong)
    switch["wrong"] = False
    later = model("step", accumulate_grad_batches=2, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    later.fit(x, y, epochs=1, **options)
    assert "update" in {k[0] for k in later.compiled_step.shapes}
    switch["wrong"] = True
    before = {k: v.clone() for k, v in later.net.state_dict().items()}
    with pytest.raises(th.ConfigError, match="optimizer's update: the compiled step's change"):
        later.fit(x, y, epochs=1, **options)
    assert all(torch.equal(before[k], v) for k, v in later.net.state_dict().items())


@pytest.mark.slow
def test_a_scheduler_cycling_momentum_moves_the_update_out_of_the_graph_and_alpha_adds_stay_right():
    # OneCycleLR cycles Adam's betas every step: a graph holding them would be traced again at
    # every step, so the optimizer steps eagerly after the first change (said once); the net
    # adds a matrix product with alpha, which torch 2.13's pattern matcher compiles wrongly
    # (it drops alpha): the step's graphs compile without it
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(6, 16), nn.Parameter(torch.randn(16, 3) * 0.1)
            self.c = nn.Parameter(torch.randn(3) * 0.1)

        def forward(self, x):
            return torch.add(self.a(x).relu() @ self.b, self.c, alpha=0.5)

    x, y = make_classification(n=64)
    runs = []
    for compile in (False, "step"):
        m = th.Model(
            Scaled(),
            nn.CrossEntropyLoss(),
            device="cpu",
            compile=compile,
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
            lr_scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=8),
            lr_scheduler_interval="step",
        )
        if compile:
            with pytest.warns(UserWarning, match="settings other than the lr change between steps"):
                m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
        else:
            m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
        runs.append(m)
    assert max_difference(runs[0].net, runs[1].net) < 1e-5
    assert runs[1].compiled_step.update is None and not runs[1].compiled_step.compiles_optimizer
    assert runs[0].history.history["lr"] == runs[1].history.history["lr"]


@pytest.mark.slow
def test_many_models_in_one_process_each_compile_their_own_graphs_and_find_lr_leaves_the_step_alone():
    # tuning trials and cross-validation folds build a model each: their graphs are counted
    # per model, so the third model still compiles (dynamo's limit is per code object)
    import torch._dynamo.utils

    x, y = make_classification(n=32)
    counters = torch._dynamo.utils.counters["stats"]
    added = []
    with torch._dynamo.config.patch(recompile_limit=1):
        for _ in range(3):
            before = counters["unique_graphs"]
            m = model("step", optimizer=sgd)  # SGD without momentum: no state, one graph
            m.fit(x, y, epochs=1, batch_size=16, progress="none")
            added.append(counters["unique_graphs"] - before)
            assert {k[0] for k in m.compiled_step.shapes} == {"train_step"}
    assert added == [1, 1, 1]  # a shared count would have stopped compiling at the second
    # find_lr runs its own eager steps and puts everything back; the fit after it is compiled
    m = model("step", optimizer=sgd)
    result = m.find_lr(x, y, batch_size=16, num_steps=5)
    assert len(result.lrs) == 5 and isinstance(m.optimizer.param_groups[0]["lr"], torch.Tensor)
    h = m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
    reference = model(optimizer=sgd)
    reference.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
    assert max_difference(reference.net, m.net) < 1e-6
    assert h.history["loss"] == pytest.approx(reference.history.history["loss"], abs=1e-6)


# --------------------------------------------------------------------------- checked against eager


@pytest.mark.slow
def test_a_compiled_step_that_computes_other_numbers_than_eager_is_refused_before_it_trains():
    # every training graph's first call is run eagerly too, from the same state: a difference
    # beyond float rounding is refused with the tensor's name, and nothing is trained on it
    x, y = make_classification(n=32)

    class OwnStep(th.Model):
        def train_step(self, batch):  # the forward-and-loss graph, then an eager backward
            inputs, target = self.unpack_batch(batch)
            preds, loss = self.forward_and_loss(inputs, target)
            self.backward(loss)
            self.optimizer_step()
            return {"loss": loss, "preds": preds, "target": target}

    for cls, options in (
        (th.Model, {}),
        (th.Model, {"accumulate_grad_batches": 2}),
        (OwnStep, {}),
        (th.Model, {"compile": True}),
    ):
        net = CompilesOtherwise()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        m = cls(net, nn.CrossEntropyLoss(), device="cpu", **{"compile": "step", **options})
        with pytest.raises(
            th.ConfigError, match=r"compiled step's (loss|gradient of layer\.\w+) differs from the eager"
        ):
            m.fit(x, y, batch_size=16, progress="none")
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), options
        assert all(p.grad is None for p in net.parameters()), options


class WrongWhenEvaluating(CompilesOtherwise):
    def forward(self, x):
        out = self.layer(x)
        return out * 2 if not self.training and torch.compiler.is_compiling() else out


@pytest.mark.slow
def test_an_evaluation_graph_that_computes_other_numbers_than_eager_is_refused():
    # validation losses choose the best checkpoint and stop fits early: an evaluation graph's
    # first call is compared with the eager forward too, output and loss
    x, y = make_classification(n=32)
    m = th.Model(WrongWhenEvaluating(), nn.CrossEntropyLoss(), device="cpu", compile="step")
    with pytest.raises(
        th.ConfigError, match=r"compile='step', evaluation.*compiled step's (loss|output) differs"
    ):
        m.evaluate(x, y, batch_size=16)
    with pytest.raises(th.ConfigError, match="differs from the eager"):
        m.fit(x, y, validation_data=(x, y), batch_size=16, progress="none")
    # compile=True (the net alone): a forward without gradients that compiled a graph too
    m = th.Model(WrongWhenEvaluating(), nn.CrossEntropyLoss(), device="cpu", compile=True)
    with pytest.raises(
        th.ConfigError, match=r"compile=True, a forward without gradients.*compiled step's output differs"
    ):
        m.evaluate(x, y, batch_size=16)
    with pytest.raises(
        th.ConfigError, match=r"compile=True, a forward without gradients.*differs.*stays refused"
    ):
        m.predict(x, batch_size=16)  # the same graph, kept by torch: refused again, not run unchecked
    # graphs that compute what eager does evaluate and predict as eager does
    eager = model()
    expected = eager.evaluate(x, y, batch_size=16)
    for compile in ("step", True):
        compiled = model(compile)
        assert compiled.evaluate(x, y, batch_size=16) == pytest.approx(expected, rel=1e-6)
        torch.testing.assert_close(compiled.predict(x, batch_size=16), eager.predict(x, batch_size=16))


class OwnForwardAndLossStep(th.Model):
    def train_step(self, batch):
        inputs, target = self.unpack_batch(batch)
        preds, loss = self.forward_and_loss(inputs, target)
        self.backward(loss)
        self.optimizer_step()
        return {"loss": loss, "preds": preds, "target": target}


@pytest.mark.slow
def test_a_graph_dynamo_compiles_again_for_a_change_the_step_does_not_key_on_is_checked_too():
    # dynamo compiles a graph again when an attribute its forward read changes; that graph is
    # checked against eager as a new batch shape's graph is: a right one trains on (same
    # numbers as eager), a wrong one is refused before it trains, in each of the three graphs
    x, y = make_classification(n=32)
    for cls, options in (
        (th.Model, {}),  # the train_step graph
        (th.Model, {"accumulate_grad_batches": 2}),  # forward_backward
        (OwnForwardAndLossStep, {}),  # forward_and_loss, then eager backward
    ):
        runs = []
        for compile in (False, "step"):
            net = ScaledUntilSwitched()
            m = cls(net, nn.CrossEntropyLoss(), device="cpu", compile=compile, **options)
            m.fit(x, y, epochs=3, batch_size=16, seed=0, progress="none", callbacks=[ScaleAtEpoch(net)])
            runs.append(m)
        assert max_difference(runs[0].net, runs[1].net) < 1e-5, options

        net = runs[1].net
        net.switched = True
        before = {k: v.clone() for k, v in net.state_dict().items()}
        for _ in range(2):  # torch keeps the refused graph: it is refused again, not run unchecked
            with pytest.raises(th.ConfigError, match="differs from the eager"):
                runs[1].fit(
                    x, y, epochs=3, batch_size=16, seed=0, progress="none", callbacks=[ScaleAtEpoch(net)]
                )
            assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), options


@pytest.mark.slow
def test_compile_true_checks_each_graph_a_step_compiles_not_only_the_first_steps():
    # compile=True (the net alone) compiles a graph for the short last batch and again when an
    # attribute its forward reads changes: each is checked before its gradients are used
    x, y = make_classification(n=40)  # batches of 16, 16 and 8
    runs = []
    for compile in (False, True):
        net = ScaledUntilSwitched()
        m = th.Model(net, nn.CrossEntropyLoss(), device="cpu", compile=compile)
        m.fit(x, y, epochs=3, batch_size=16, seed=0, progress="none", callbacks=[ScaleAtEpoch(net)])
        runs.append(m)
    assert max_difference(runs[0].net, runs[1].net) < 1e-5

    net = ScaledUntilSwitched()
    switch = SwitchAtEpoch(net, epoch=1)
    m = th.Model(net, nn.CrossEntropyLoss(), device="cpu", compile=True)
    with pytest.raises(th.ConfigError, match="compile=True.*differs from the eager"):
        m.fit(x, y, epochs=3, batch_size=16, seed=0, progress="none", callbacks=[switch])
    assert switch.weights is not None and params_equal_to(net, switch.weights)
    # torch keeps the refused graph, which the next fit's step would run without compiling: the
    # compiled net stays refused
    with pytest.raises(th.ConfigError, match="stays refused"):
        m.fit(x, y, epochs=1, batch_size=16, seed=0, progress="none")
    assert params_equal_to(net, switch.weights)


class SelfDistilling(th.Model):
    """A custom step with a forward without gradients in training mode (dropout draws)."""

    def train_step(self, batch):
        inputs, target = self.unpack_batch(batch)
        with torch.no_grad():
            soft = self.forward(inputs).softmax(-1)
        preds = self.forward(inputs)
        loss = self.compute_loss(preds, target) - (preds.log_softmax(-1) * soft).sum(-1).mean()
        self.backward(loss)
        self.optimizer_step()
        return {"loss": loss, "preds": preds, "target": target}


@pytest.mark.slow
def test_compile_true_checks_a_forward_without_gradients_in_training_mode_on_the_same_draws():
    # the compiled no-grad forward made torch compile a graph: the eager one it is compared
    # with draws the same dropout masks, so a right graph is not refused, and trains as eager
    x, y = make_classification(n=32)
    runs = [
        SelfDistilling(mlp(dropout=0.5), nn.CrossEntropyLoss(), device="cpu", compile=compile)
        for compile in (False, True)
    ]
    for m in runs:
        m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
    assert max_difference(runs[0].net, runs[1].net) < 1e-5


def params_equal_to(net, weights):
    return all(torch.equal(weights[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_the_digits_cnn_is_never_trained_on_wrong_gradients():
    # torch 2.13's AOTAutograd backward returns zero gradients for this net's convolutions on
    # the CPU: compile=True (the net through torch.compile) is refused at the first step
    # rather than trained without them; compile="step" computes its gradients in one graph,
    # which is right. Whatever the torch release, compiled either way equals eager or is refused.
    from torchhouse.models import digits_cnn

    x, y = th.datasets.load_digits()
    x, y = x[:256], y[:256]
    runs = {}
    for compile in (False, True, "step"):
        torch.manual_seed(0)
        m = th.Model(digits_cnn(), nn.CrossEntropyLoss(), device="cpu", compile=compile)
        try:
            m.fit(x, y, epochs=1, batch_size=64, seed=0, progress="none")
        except th.ConfigError as refused:
            assert compile is True and "differs from the eager" in str(refused)
            continue
        runs[compile] = m
    assert "step" in runs
    for compile, m in runs.items():
        assert max_difference(runs[False].net, m.net) < 1e-4, compile


@pytest.mark.slow
def test_backbone_finetuning_adds_a_group_whose_first_step_creates_its_state():
    # the backbone's group joins the optimizer at the fit's start and trains from epoch 2: its
    # first step under compile="step" hands the graph's gradients to step() (no Adam state yet)
    x, y = make_classification(n=64)

    def build():
        torch.manual_seed(0)
        net = nn.Sequential()
        net.add_module("backbone", nn.Sequential(nn.Linear(6, 16), nn.ReLU()))
        net.add_module("head", nn.Linear(16, 3))
        return net

    for options in ({}, {"accumulate_grad_batches": 2}):
        runs = []
        for compile in (False, "step"):
            m = model(compile, net=build(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), **options)
            unfreeze = th.callbacks.BackboneFinetuning(unfreeze_at_epoch=2)
            m.fit(x, y, epochs=4, batch_size=16, seed=0, progress="none", callbacks=[unfreeze])
            runs.append(m)
        assert max_difference(runs[0].net, runs[1].net) < 1e-5, options
        shapes = runs[1].compiled_step.shapes
        if options:  # the update graph: one per trainable set, after its first step() made the state
            assert sorted(len(k[3]) for k in shapes if k[0] == "update") == [2, 4]
        else:
            stateless = sorted(sum(k[-1]) for k in shapes)
            assert stateless == [0, 0, 2, 2]  # each trainable set's first step (no state), then the rest


@pytest.mark.slow
def test_a_torch_that_cannot_trace_autograd_grad_steps_with_the_forward_and_loss_graph(monkeypatch):
    # before torch 2.11 dynamo has no trace_autograd_ops: the step runs the forward-and-loss
    # graph (its backward compiled with it, checked against eager) and the optimizer's step
    from torchhouse.train import compiled_step

    monkeypatch.setattr(compiled_step, "traces_autograd", lambda: False)
    x, y = make_classification(n=48)
    runs = []
    for compile in (False, "step"):
        m = model(compile, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
        m.fit(x, y, epochs=2, batch_size=16, seed=0, progress="none")
        runs.append(m)
    assert max_difference(runs[0].net, runs[1].net) < 1e-5
    assert {k[0] for k in runs[1].compiled_step.shapes} == {"forward_and_loss", "update"}
