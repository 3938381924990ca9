"""The step contract (docs/steps.md): every step style x every feature that meets it.

Styles: the built-in step, the README's train_step override, a two-loss override that
returns exactly three keys, and a GAN stepping two optimizers of its own. Each cell
asserts the behaviour, or the clear error where the combination cannot work.
"""

import math

import pytest
import torch

import torchhouse as th
from step_models import GanWithoutOptimizers, build, data, two_ranks

KINDS = ["builtin", "readme", "two_loss", "gan"]
HELPERS = ["builtin", "readme", "two_loss"]  # steps that go through self.backward / self.optimizer_step


def nan_data():
    x, y = data()
    x = x.clone()
    x[13, 0] = float("nan")  # batch 1 of 5 (batch size 8, no shuffling)
    return x, y


def fit(model, x, y, **kwargs):
    options = dict(epochs=1, batch_size=8, shuffle=False, progress="none")
    options.update(kwargs)
    return model.fit(x, y, **options)


@pytest.mark.parametrize("kind", KINDS)
def test_raise_stops_on_a_non_finite_loss_naming_the_batch(kind):
    with pytest.raises(th.NonFiniteLossError, match="epoch 1, batch 2"):
        fit(build(kind), *nan_data())


@pytest.mark.parametrize("kind", KINDS)
def test_skip_skips_the_bad_batch_or_refuses(kind):
    model = build(kind)
    if kind == "gan":
        with pytest.raises(th.ConfigError, match='steps its optimizer.*on_nonfinite="skip"'):
            fit(model, *nan_data(), on_nonfinite="skip")
        return
    with pytest.warns(UserWarning, match="skipped 1 batch"):
        history = fit(model, *nan_data(), on_nonfinite="skip")
    assert all(torch.isfinite(p).all() for p in model.net.parameters())
    assert math.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("kind", KINDS)
def test_accumulation_equals_one_big_batch_or_refuses(kind):
    x, y = data()
    if kind == "gan":
        with pytest.raises(th.ConfigError, match="accumulate_grad_batches=2 cannot apply"):
            fit(build(kind, accumulate_grad_batches=2), x, y)
        return
    accumulated = build(kind, accumulate_grad_batches=2)
    fit(accumulated, x, y, batch_size=4)
    big = build(kind)
    fit(big, x, y, batch_size=8)
    for a, b in zip(accumulated.net.parameters(), big.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_reaches_the_forward(kind):
    model = build(kind, precision="bf16-mixed")
    seen = []
    first = model.net["d"][0] if kind == "gan" else model.net[0]
    first.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    history = fit(model, *data())
    assert math.isfinite(history.history["loss"][0])
    # the GAN's step does not enter self.autocast(): it chose float32, as documented
    assert seen[0] == (torch.float32 if kind == "gan" else torch.bfloat16)


@pytest.mark.parametrize("kind", KINDS)
def test_clipping_bounds_every_step_or_refuses(kind):
    if kind == "gan":
        with pytest.raises(th.ConfigError, match="gradient_clip_val=0.01 cannot apply"):
            fit(build(kind, gradient_clip_val=0.01), *data())
        return
    model = build(kind, gradient_clip_val=0.01)
    norms = []

    def spy(optimizer, args, kwargs):
        grads = [p.grad.reshape(-1) for group in optimizer.param_groups for p in group["params"]]
        norms.append(float(torch.cat(grads).norm()))

    model.optimizer.register_step_pre_hook(spy)
    fit(model, *data())
    assert len(norms) == 5 and max(norms) <= 0.01 * 1.0001


@pytest.mark.parametrize("kind", KINDS)
def test_extra_returned_scalars_are_logged(kind):
    history = fit(build(kind), *data(), epochs=2)
    expected = {
        "builtin": {"loss"},
        "readme": {"loss"},
        "two_loss": {"loss", "ce", "penalty"},  # exactly three keys: all logged
        "gan": {"loss", "d_loss", "g_loss"},
    }[kind]
    assert set(history.history) == expected
    if kind == "two_loss":
        parts = history.history["ce"][1] + history.history["penalty"][1]
        assert history.history["loss"][1] == pytest.approx(parts, rel=1e-5)


@pytest.mark.slow
def test_two_gloo_ranks_train_as_one_process_or_refuse():
    results = th.launch(two_ranks, nprocs=2)
    x, y = data()
    for kind in HELPERS:
        one = build(kind)
        one.fit(x, y, epochs=2, batch_size=16, shuffle=False, progress="none")  # the same global batch
        for name, value in one.net.state_dict().items():
            torch.testing.assert_close(results[kind]["weights"][name], value, rtol=1e-5, atol=1e-6)
    assert "calls the net directly, not through self.forward" in results["gan"]["error"]


class CrashAt(th.callbacks.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.model.global_step == self.step:
            raise RuntimeError("crash")


@pytest.mark.parametrize("kind", KINDS)
def test_mid_epoch_resume_is_bit_identical(kind, tmp_path):
    x, y = data()
    options = dict(epochs=2, batch_size=8, seed=0, checkpoint_every=2, progress="none")
    reference = build(kind)
    expected = reference.fit(x, y, run_dir=tmp_path / "ref", **options)
    with pytest.raises(RuntimeError, match="crash"):
        build(kind).fit(x, y, run_dir=tmp_path / "run", callbacks=[CrashAt(7)], **options)
    resumed = build(kind)
    history = resumed.fit(x, y, run_dir=tmp_path / "run", resume=True, **options)
    assert history.history == expected.history
    for name, value in reference.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[name], value), name


def test_a_step_with_its_own_optimizers_must_list_them_for_checkpoints(tmp_path):
    with pytest.raises(th.ConfigError, match="list them in an override of Model.optimizers"):
        fit(GanWithoutOptimizers(), *data(), run_dir=tmp_path / "r")
