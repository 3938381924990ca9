"""Training for the multi-process tests: run by torchrun, by th.launch, or alone as the reference.

usage: python ddp_worker.py OUT MODE   (MODE: fit | fsdp | raise)
Under K processes the per-process batch is 16; alone it is 16 * K (the same global batch).
"""

import json
import os
import sys

import torch
import torchmetrics
from torch import nn

import torchhouse as th


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    x_val = torch.randn(37, 6, generator=g)  # 37 does not split evenly over 2 or 3 ranks
    y_val = (x_val @ torch.randn(6, 3, generator=g)).argmax(1)
    return x, y, x_val, y_val


class CrashAtStep(th.callbacks.Callback):
    def __init__(self, step=-1):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.model.global_step == self.step and int(os.environ.get("RANK", "0")) == 1:
            raise RuntimeError("rank 1 crashes mid-epoch")


def train_with_checkpoints(run_dir, crash_at):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    model = th.Model(net, loss=nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy}, device="cpu")
    x, y, x_val, y_val = data()
    history = model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=3,
        batch_size=16,
        seed=5,
        progress="none",
        run_dir=run_dir,
        resume=True,
        checkpoint_every=3,
        callbacks=[CrashAtStep(crash_at)],
    )
    return {"history": history.history, "params": {k: v.tolist() for k, v in model.net.state_dict().items()}}


class RaiseAt(th.callbacks.Callback):
    def on_epoch_end(self, epoch, logs):
        if epoch == 1 and int(os.environ.get("RANK", "0")) == 1:
            raise RuntimeError("rank 1 fails on purpose")


def train(mode="fit", world=None):
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model = th.Model(
        net,
        loss=nn.CrossEntropyLoss(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        metrics={
            "acc": th.metrics.accuracy,
            "tm_acc": torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro"),
        },
        # scripts/gpu_check.sh sets TORCHHOUSE_TEST_DEVICE=cuda: each rank then takes cuda:LOCAL_RANK (NCCL)
        device=None if os.environ.get("TORCHHOUSE_TEST_DEVICE") == "cuda" else "cpu",
        strategy="fsdp" if mode == "fsdp" else "ddp",
    )
    x, y, x_val, y_val = data()
    initial = model.evaluate(x_val, y_val, batch_size=4)
    per_process = 16 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 16 * world
    history = model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=3,
        batch_size=per_process,
        seed=5,
        progress="none",
        callbacks=[RaiseAt()] if mode == "raise" else [],
    )
    evaluation = model.evaluate(x_val, y_val, batch_size=5)
    return {
        "history": history.history,
        "evaluate": evaluation,
        "initial_evaluate": initial,
        "params": {
            k: getattr(v, "full_tensor", lambda v=v: v)().tolist() for k, v in model.net.state_dict().items()
        },
        "ddp_dropped": model.fit_state.forward_net is model.net,
        "sharded": type(model.net.state_dict()["0.weight"]).__name__ == "DTensor",
    }


def main():
    out, mode = sys.argv[1], sys.argv[2]
    if mode == "checkpoints":
        result = train_with_checkpoints(out + ".run", int(sys.argv[3]))
    else:
        world = int(sys.argv[3]) if len(sys.argv) > 3 else None
        result = train(mode, world)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
