"""Model(compile="step") and Model(cuda_graph=True) (issue 29): the compiled step equals the
eager one within float rounding, resumes exactly, keeps the step's features, and refuses
what it cannot capture with the reason. Compiling takes seconds: those tests are slow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, params_equal

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
    # train (full and last batch shapes) and evaluation graphs, nothing else
    assert len(compiled.compiled_step.shapes) == 4


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
    longer = model(net=mlp(dropout=0.1))
    longer.fit(x, y, run_dir=tmp_path / "r", resume=True, **{**options, "epochs": 4})
    assert isinstance(longer.optimizer.param_groups[0]["lr"], float) and len(longer.history) == 4


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
    assert len(runs[1].compiled_step.shapes) == 1


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
    assert m.global_step == 2  # two shapes trained, the third refused before its step


@pytest.mark.slow
def test_a_config_run_takes_compile_step(tmp_path, capsys):
    import json
    from pathlib import Path

    from torchhouse.frontends.cli import main

    digits = Path(__file__).parent.parent / "examples" / "configs" / "digits.yaml"
    args = ["fit", str(digits), "--run-dir", str(tmp_path / "d"), "--progress", "none"]
    assert main([*args, "--set", "fit.epochs=2", "--set", "trainer.compile=step"]) == 0
    assert float(capsys.readouterr().out.split("acc ")[1].split()[0]) > 0.5
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
