"""GPU checks: run by scripts/gpu_check.sh on a CUDA machine; skipped (with the reason) elsewhere."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchhouse as th
from conftest import make_classification, make_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_model(**kwargs):
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    return th.Model(make_net(dropout=0.2), device="cuda", metrics={"acc": th.metrics.accuracy}, **kwargs)


def test_default_device_is_cuda_and_arrays_move_once():
    assert th.model.default_device().type == "cuda"
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
