"""strategy="fsdp" (FSDP2) on two CPU processes with gloo: sharded training equals one process."""

import os

import pytest
import torch
from torch import nn

import torchhouse as th

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing"),
]


class Blocks(nn.Module):
    """Repeated blocks in a ModuleList, as FSDP is used on transformers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=g)
    return x, (x @ torch.randn(6, 3, generator=g)).argmax(1)


def train(folder, world=None, optimizer="sgd"):
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = th.Model(
        Blocks(),
        loss=nn.CrossEntropyLoss(),
        optimizer=(lambda p: torch.optim.SGD(p, lr=0.1)) if optimizer == "sgd" else None,
        metrics=["acc"],
        device="cpu",
        strategy="fsdp",
        gradient_clip_val=1.0,
    )
    per_process = 16 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 16 * world
    x, y = data()
    history = model.fit(
        x,
        y,
        validation_data=(x[:40], y[:40]),
        epochs=3,
        batch_size=per_process,
        shuffle=False,
        progress="none",
    )
    sharded = type(model.net.state_dict()["stem.weight"]).__name__
    model.save(os.path.join(folder, "full.safetensors"))  # every rank calls it; rank 0 writes
    predictions = model.predict(x[:10])
    return {"history": history.history, "sharded": sharded, "predictions": predictions.tolist()}


@pytest.mark.parametrize("optimizer", ["sgd", "default"])
def test_two_sharded_processes_equal_one_process_with_the_same_global_batch(tmp_path, optimizer):
    result = th.launch(train, str(tmp_path), None, optimizer, nprocs=2, timeout=120)
    os.rename(tmp_path / "full.safetensors", tmp_path / "fsdp.safetensors")
    os.rename(tmp_path / "full.json", tmp_path / "fsdp.json")
    reference = train(str(tmp_path), world=2, optimizer=optimizer)
    assert result["sharded"] == "DTensor" and reference["sharded"] == "Tensor"
    for name, values in reference["history"].items():
        assert result["history"][name] == pytest.approx(values, rel=1e-5, abs=1e-6), name
    torch.testing.assert_close(torch.tensor(result["predictions"]), torch.tensor(reference["predictions"]))
    # model.save gathered one full file with the plain net's keys; a plain net loads it
    plain = th.Model(Blocks(), loss=nn.CrossEntropyLoss(), device="cpu")
    plain.load_weights(tmp_path / "fsdp.safetensors")
    assert set(plain.net.state_dict()) == set(Blocks().state_dict())
    x, _ = data()
    torch.testing.assert_close(plain.predict(x[:10]), torch.tensor(reference["predictions"]))


def _with_run_dir(folder):
    model = th.Model(Blocks(), loss=nn.CrossEntropyLoss(), device="cpu", strategy="fsdp")
    x, y = data()
    try:
        model.fit(x, y, epochs=1, progress="none", run_dir=folder)
    except th.ConfigError as exc:
        return str(exc)
    return "no error"


def test_a_sharded_fit_refuses_a_run_folder_it_cannot_resume_and_fp16():
    message = th.launch(_with_run_dir, "unused-run", nprocs=2, timeout=60)
    assert 'strategy="fsdp" does not write resumable run folders yet' in message
    with pytest.raises(th.ConfigError, match="strategy: expected 'ddp' or 'fsdp'"):
        th.Model(Blocks(), loss=nn.CrossEntropyLoss(), strategy="zero3")


def _early_stopped():
    torch.manual_seed(0)
    model = th.Model(
        Blocks(),
        loss=nn.CrossEntropyLoss(),
        device="cpu",
        strategy="fsdp",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
    )
    x, y = data()
    stop = th.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    history = model.fit(
        x, y, validation_data=(x[:40], y[:40]), epochs=8, batch_size=16, progress="none", callbacks=[stop]
    )
    return history.history["val_loss"], model.evaluate(x[:40], y[:40])["loss"]


def test_early_stopping_restores_the_best_sharded_weights():
    val_losses, after = th.launch(_early_stopped, nprocs=2, timeout=90)
    assert len(val_losses) < 8  # it stopped
    assert after == pytest.approx(
        min(val_losses), rel=1e-6
    )  # the best epoch's weights, restored on every shard
