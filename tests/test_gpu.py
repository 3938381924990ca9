"""GPU checks: run by scripts/gpu_check.sh on a CUDA machine; skipped (with the reason) elsewhere."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchhouse as th
from conftest import ScaleAtEpoch, ScaledUntilSwitched, make_classification, make_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_model(**kwargs):
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    return th.Model(make_net(dropout=0.2), device="cuda", metrics={"acc": th.metrics.accuracy}, **kwargs)


def test_default_device_is_cuda_and_arrays_move_once():
    from torchhouse.train.building import default_device

    assert default_device().type == "cuda"
    x, y = make_classification(n=256)
    model = cuda_model()
    history = model.fit(x, y, epochs=3, batch_size=32, seed=0, progress="none")
    assert next(model.net.parameters()).device.type == "cuda"
    assert history.history["loss"][-1] < history.history["loss"][0]
    preds = model.predict(x)
    assert preds.device.type == "cpu" and preds.shape == (256, 3)


def test_pinned_dataloader_matches_arrays_on_cuda():
    x, y = make_classification(n=256)
    a = cuda_model()
    a.fit(x, y, epochs=2, batch_size=32, shuffle=False, progress="none", seed=0)
    b = cuda_model()
    b.fit(DataLoader(TensorDataset(x, y), batch_size=32, pin_memory=True), epochs=2, progress="none", seed=0)
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cuda(precision):
    x, y = make_classification(n=512)
    model = cuda_model(precision=precision, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    history = model.fit(x, y, epochs=5, batch_size=64, progress="none", seed=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert (model.scaler is not None) == (precision == "16-mixed")


def test_compile_on_cuda():
    x, y = make_classification(n=256)
    eager = cuda_model(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    compiled = cuda_model(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), compile=True)
    compiled.net.load_state_dict(eager.net.state_dict())
    eager.net.eval()
    compiled.net.eval()
    x_dev = x.cuda()
    with torch.no_grad():
        torch.testing.assert_close(compiled.forward(x_dev), eager.forward(x_dev), rtol=1e-4, atol=1e-4)
    history = compiled.fit(x, y, epochs=2, batch_size=64, progress="none")
    assert len(history.epoch) == 2


class CrashAt(th.callbacks.Callback):
    def __init__(self, step=-1):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.model.global_step == self.step:
            raise RuntimeError("simulated crash")


def run(tmp_path, crash_at=-1, resume=False, name="r"):
    x, y = make_classification(n=200)
    torch.manual_seed(0)
    model = cuda_model()
    history = model.fit(
        x,
        y,
        epochs=4,
        batch_size=32,
        seed=1,
        run_dir=tmp_path / name,
        resume=resume,
        checkpoint_every=3,
        callbacks=[CrashAt(crash_at)],
        progress="none",
    )
    return model, history


def test_resume_on_cuda_is_bit_identical_with_dropout(tmp_path):
    reference, ref_history = run(tmp_path, name="ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, crash_at=11)
    model, history = run(tmp_path, resume=True)
    assert history.history == ref_history.history
    for p, q in zip(model.net.parameters(), reference.net.parameters()):
        assert torch.equal(p, q)


class NoisyRows(torch.utils.data.Dataset):
    """Rows with CPU-side noise drawn in __getitem__ (the global RNG): no loader fast path,
    and any read-ahead of the loop would change which noise each batch gets."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i] + 0.01 * torch.randn(self.x.shape[1])}, self.y[i]


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_net(features=64, dropout=0.2)

    def forward(self, batch):
        return self.net(batch["x"])


def _plain_transfer(batches, device):
    for batch in batches:
        yield th.data.move_to(batch, device)


@pytest.mark.parametrize("pin_memory", [False, True])
def test_overlapped_copies_equal_plain_copies(monkeypatch, tmp_path, pin_memory):
    """The side-stream copy of CPU batches (transfer.device_batches) trains bit-identically
    to a plain .to(device) per batch: large batches (a missing stream wait would read
    half-copied memory), CPU noise drawn per sample, validation, predict, and a fit killed
    mid-epoch and resumed."""
    from torchhouse.data import move_to
    from torchhouse.train import batch_loop

    def plain_transfer(batches, device):
        for batch in batches:
            yield move_to(batch, device)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()

    def loader(shuffle=True):
        return DataLoader(
            NoisyRows(x, y),
            batch_size=512,
            shuffle=shuffle,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(1),
        )

    def fit(name, crash_at=-1, resume=False):
        torch.manual_seed(0)
        model = th.Model(DictNet(), loss=nn.CrossEntropyLoss(), device="cuda")
        history = model.fit(
            loader(),
            epochs=3,
            validation_data=loader(False),
            progress="none",
            seed=0,
            run_dir=tmp_path / name,
            checkpoint_every=3,
            resume=resume,
            callbacks=[CrashAt(crash_at)],
        )
        return model, history

    overlapped, h1 = fit("overlapped")
    with monkeypatch.context() as patch:
        patch.setattr(batch_loop, "device_batches", plain_transfer)
        plain, h2 = fit("plain")
    assert h1.history == h2.history
    for p, q in zip(overlapped.net.parameters(), plain.net.parameters()):
        assert torch.equal(p, q)
    torch.manual_seed(5)
    a = overlapped.predict(loader(False))
    torch.manual_seed(5)
    assert torch.equal(a, plain.predict(loader(False)))

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit("killed", crash_at=13)
    resumed, h3 = fit("killed", resume=True)
    assert h3.history == h1.history
    for p, q in zip(resumed.net.parameters(), overlapped.net.parameters()):
        assert torch.equal(p, q)


class Exploding(nn.Module):
    """Its output becomes NaN from global step ``at`` on (the data stays clean)."""

    def __init__(self, at):
        super().__init__()
        self.linear, self.at, self.calls = nn.Linear(6, 3), at, 0

    def forward(self, x):
        self.calls += 1
        out = self.linear(x)
        return out * float("nan") if self.calls > self.at else out


@pytest.mark.parametrize("on_nonfinite", ["raise", "stop"])
def test_a_nan_on_the_gpu_is_found_without_draining_the_queue(on_nonfinite):
    """On CUDA the periodic NaN check reads its flag asynchronously (one check late): the
    error still names the first bad batch, and the fit stops within 2 x 32 steps."""
    x, y = make_classification(n=8 * 300)
    model = th.Model(Exploding(at=40), loss=nn.CrossEntropyLoss(), device="cuda")
    steps = []
    counter = th.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: steps.append(b))
    kwargs = dict(epochs=1, batch_size=8, shuffle=False, progress="none", callbacks=[counter])
    if on_nonfinite == "raise":
        with pytest.raises(th.NonFiniteLossError, match="at epoch 1, batch 41") as caught:
            model.fit(x, y, **kwargs)
        assert caught.value.step == 40
    else:
        model.fit(x, y, on_nonfinite="stop", **kwargs)
    assert 41 <= len(steps) <= 40 + 2 * 32 < 300


# --------------------------------------------------------------------------- issue 29: the compiled step


@pytest.mark.parametrize("mode", [{"compile": "step"}, {"cuda_graph": True}])
def test_the_compiled_step_on_cuda_tracks_eager_and_captures_the_short_batch(mode):
    x, y = make_classification(n=72)  # 4 batches of 16 and a short one of 8
    options = dict(epochs=3, batch_size=16, seed=0, progress="none", validation_split=0.25)
    eager, compiled = cuda_model(), cuda_model(**mode)
    he = eager.fit(x, y, **options).history
    hc = compiled.fit(x, y, **options).history
    for p, q in zip(eager.net.parameters(), compiled.net.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)
    assert all(abs(a - b) < 1e-4 for a, b in zip(he["val_loss"], hc["val_loss"], strict=True))
    training = ("train_step", "forward_backward")
    shapes = {key[3] for key in compiled.compiled_step.shapes if key[0] in training}
    assert len(shapes) == 2  # the full batch and the short last one each have a graph


@pytest.mark.parametrize("mode", [{"compile": "step"}, {"cuda_graph": True}])
def test_the_compiled_step_on_cuda_accumulates_and_clips_like_eager(mode):
    # the graph's gradients are copied out of CUDA graphs' static buffers before they are
    # summed over the window (a replay overwrites those buffers). The default AdamW (not fused
    # under either mode) steps as the update graph under compile="step", and as torch's
    # compiled, capturable step() under cuda_graph=True
    x, y = make_classification(n=96)
    options = dict(epochs=2, batch_size=16, seed=0, progress="none")
    eager = cuda_model(accumulate_grad_batches=3, gradient_clip_val=0.5)
    compiled = cuda_model(accumulate_grad_batches=3, gradient_clip_val=0.5, **mode)
    eager.fit(x, y, **options)
    compiled.fit(x, y, **options)
    for p, q in zip(eager.net.parameters(), compiled.net.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)
    graphs = {key[0] for key in compiled.compiled_step.shapes}
    assert ("update" in graphs) == ("cuda_graph" not in mode)
    assert compiled.compiled_step.compiles_optimizer


def test_cuda_graph_resume_is_bit_identical(tmp_path):
    x, y = make_classification(n=72)
    options = dict(epochs=3, batch_size=16, seed=0, progress="none")
    whole = cuda_model(cuda_graph=True)
    whole.fit(x, y, **options)

    class Interrupt(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.global_step == 7:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cuda_model(cuda_graph=True).fit(
            x, y, run_dir=tmp_path / "r", checkpoint_every=1, callbacks=[Interrupt()], **options
        )
    resumed = cuda_model(cuda_graph=True)
    resumed.fit(x, y, run_dir=tmp_path / "r", resume=True, **options)
    for p, q in zip(whole.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(p, q)
    assert whole.history.history == resumed.history.history


def test_cuda_graph_keeps_the_nan_guard_and_the_step_scheduler():
    x, y = make_classification(n=64)
    bad = x.clone()
    bad[20] = float("nan")
    with pytest.raises(th.NonFiniteLossError):
        cuda_model(cuda_graph=True).fit(bad, y, batch_size=16, shuffle=False, progress="none")
    model = cuda_model(
        cuda_graph=True,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        lr_scheduler_interval="step",
    )
    history = model.fit(x, y, epochs=2, batch_size=16, progress="none").history
    assert history["lr"] == pytest.approx([1e-2 * 0.5**3, 1e-2 * 0.5**7])


@pytest.mark.parametrize("mode", [{"compile": "step"}, {"cuda_graph": True}])
def test_a_graph_the_compiled_step_compiles_again_on_cuda_is_checked(mode):
    # an attribute the forward reads changes each epoch: dynamo compiles the graph again, which
    # is checked against eager (and, captured as a CUDA graph, replayed); a wrong one is refused
    x, y = make_classification(n=32)
    options = dict(epochs=3, batch_size=16, seed=0, progress="none")
    runs = []
    for kwargs in ({}, mode):
        net = ScaledUntilSwitched()
        model = th.Model(net, nn.CrossEntropyLoss(), device="cuda", **kwargs)
        model.fit(x, y, callbacks=[ScaleAtEpoch(net)], **options)
        runs.append(model)
    for p, q in zip(runs[0].net.parameters(), runs[1].net.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)
    net = runs[1].net
    net.switched = True
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(th.ConfigError, match="differs from the eager"):
        runs[1].fit(x, y, callbacks=[ScaleAtEpoch(net)], **options)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
