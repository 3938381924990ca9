"""strategy="fsdp" (FSDP2) on two CPU processes with gloo: sharded training equals one process."""

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torchhouse as th

sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def test_an_unknown_strategy_is_refused():
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


def _with_checkpoints(folder, crash_at):
    from ddp_worker import CrashAtStep  # rank 1 raises at that global step

    torch.manual_seed(0)
    net = Blocks()
    net.blocks.insert(1, nn.Dropout(0.2))  # randomness inside the sharded net: RNG states must resume too
    model = th.Model(
        net, loss=nn.CrossEntropyLoss(), metrics=["acc"], device="cpu", strategy="fsdp"
    )  # fused AdamW
    x, y = data()
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        seed=5,
        progress="none",
        run_dir=folder,
        resume=True,
        checkpoint_every=3,
        callbacks=[CrashAtStep(crash_at)],
    )
    return {"history": history.history, "predictions": model.predict(x[:10]).tolist()}


def test_a_sharded_run_killed_mid_epoch_resumes_bit_identically(tmp_path):
    from safetensors import safe_open

    reference = th.launch(_with_checkpoints, str(tmp_path / "whole"), -1, nprocs=2, timeout=120)
    with pytest.raises(RuntimeError, match="rank 1 crashes mid-epoch"):
        th.launch(_with_checkpoints, str(tmp_path / "run"), 7, nprocs=2, timeout=120)
    checkpoints = tmp_path / "run" / "checkpoints"
    shards = sorted(checkpoints.glob("ckpt-*.shards/rank-*.safetensors"))
    assert {p.name for p in shards} == {"rank-0.safetensors", "rank-1.safetensors"}  # each rank its own file
    with safe_open(str(shards[0]), "pt") as handle:  # plain safetensors: tensors only, no pickle
        assert any(key.startswith("model/") for key in handle.keys())  # noqa: SIM118 (not a dict)
    resumed = th.launch(_with_checkpoints, str(tmp_path / "run"), -1, nprocs=2, timeout=120)
    assert resumed == reference  # history and predictions, bit for bit
    assert json_status(tmp_path / "run") == "finished"
    with_dropout = Blocks()
    with_dropout.blocks.insert(1, nn.Dropout(0.2))
    plain = th.Model(with_dropout, loss=nn.CrossEntropyLoss(), device="cpu")
    plain.load_weights(tmp_path / "run" / "model.safetensors")  # the gathered full weights
    x, _ = data()
    torch.testing.assert_close(plain.predict(x[:10]), torch.tensor(reference["predictions"]))


def json_status(folder):
    import json

    return json.loads((folder / "run.json").read_text())["status"]


def test_a_damaged_shard_on_one_rank_makes_every_rank_fall_back_to_an_older_state(tmp_path):
    reference = th.launch(_with_checkpoints, str(tmp_path / "whole"), -1, nprocs=2, timeout=120)
    with pytest.raises(RuntimeError, match="rank 1 crashes mid-epoch"):
        th.launch(_with_checkpoints, str(tmp_path / "run"), 11, nprocs=2, timeout=120)
    newest = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*.shards"))[-1] / "rank-1.safetensors"
    data = bytearray(newest.read_bytes())
    data[-8:] = b"\x00" * 8  # damage the tensor bytes of rank 1's newest shards
    newest.write_bytes(bytes(data))
    resumed = th.launch(_with_checkpoints, str(tmp_path / "run"), -1, nprocs=2, timeout=120)
    assert resumed == reference  # an older state, then the same steps: the same run


def _custom_step_in_bf16():
    class WithPenalty(th.Model):
        def train_step(self, batch):
            inputs, target = self.unpack_batch(batch)
            with self.autocast():
                preds = self.forward(inputs)
                penalty = 0.01 * preds.float().pow(2).mean()
                loss = self.compute_loss(preds, target) + penalty
            self.backward(loss)
            self.optimizer_step()
            return {"loss": loss, "preds": preds, "target": target, "penalty": penalty}

    torch.manual_seed(0)
    model = WithPenalty(
        Blocks(),
        loss=nn.CrossEntropyLoss(),
        device="cpu",
        strategy="fsdp",
        precision="bf16-mixed",
        accumulate_grad_batches=2,
    )
    x, y = data()
    history = model.fit(x, y, epochs=3, batch_size=16, progress="none")
    return history.history, type(model.net.state_dict()["stem.weight"]).__name__


def test_a_custom_step_with_bf16_and_accumulation_trains_sharded():
    history, kind = th.launch(_custom_step_in_bf16, nprocs=2, timeout=120)
    assert kind == "DTensor" and set(history) == {"loss", "penalty"}
    assert history["loss"][-1] < history["loss"][0]  # it learns under FSDP's bf16 policy


def _two_fits(world=None):
    """Two fits of the same sharded Model (Keras: the second goes on from the first's
    weights and optimizer state), then a save and a load back into the sharded net."""
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    per_process = 16 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 16 * world
    torch.manual_seed(0)
    model = th.Model(Blocks(), loss=nn.CrossEntropyLoss(), device="cpu", strategy="fsdp")  # AdamW
    x, y = data()
    first = model.fit(x, y, epochs=2, batch_size=per_process, shuffle=False, progress="none")
    second = model.fit(x, y, epochs=2, batch_size=per_process, shuffle=False, progress="none")
    return {
        "first": first.history["loss"],
        "second": second.history["loss"],
        "kind": type(model.net.state_dict()["stem.weight"]).__name__,
        "predictions": model.predict(x[:10]).tolist(),
    }


def test_a_second_fit_of_a_sharded_model_goes_on_where_the_first_stopped():
    result = th.launch(_two_fits, nprocs=2, timeout=120)
    reference = _two_fits(world=2)  # one process, the same global batch, twice
    assert result["kind"] == "DTensor"
    assert result["first"] == pytest.approx(reference["first"], rel=1e-5)
    assert result["second"] == pytest.approx(reference["second"], rel=1e-5)
    assert result["second"][0] < result["first"][-1]  # went on, not from the start
    torch.testing.assert_close(torch.tensor(result["predictions"]), torch.tensor(reference["predictions"]))


def _averaging_refused():
    messages = []
    for callback in (th.callbacks.EMA(), th.callbacks.StochasticWeightAveraging(swa_lr=0.01, start_epoch=0)):
        model = th.Model(Blocks(), loss=nn.CrossEntropyLoss(), device="cpu", strategy="fsdp")
        x, y = data()
        try:
            model.fit(x, y, epochs=1, batch_size=16, progress="none", callbacks=[callback])
        except th.ConfigError as exc:
            messages.append(str(exc))
    return messages


def test_weight_averaging_is_refused_under_fsdp_with_the_reason():
    messages = th.launch(_averaging_refused, nprocs=2, timeout=90)
    assert len(messages) == 2 and all("not supported with strategy='fsdp'" in m for m in messages)
