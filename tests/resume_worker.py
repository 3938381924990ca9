"""A training run for the resume tests, run in a subprocess so it can be SIGKILLed.

usage: python resume_worker.py RUN_DIR KILL_AT_STEP OUT_FILE [SECONDS_PER_STEP] [DATA] [CHECKPOINT_EVERY]
"""

import json
import os
import signal
import sys
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

import torchhouse as th


class Killer(th.callbacks.Callback):
    def __init__(self, kill_at=-1, delay=0.0):
        self.kill_at = kill_at
        self.delay = delay

    def on_fit_start(self, logs):
        print("started", flush=True)

    def on_train_batch_end(self, batch, logs):
        if self.delay:
            time.sleep(self.delay)
        if self.model.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    run_dir, kill_at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    data_kind = sys.argv[5] if len(sys.argv) > 5 else "arrays"
    every = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    model = th.Model(
        net,
        loss=nn.CrossEntropyLoss(),
        optimizer=opt,
        metrics={"acc": th.metrics.accuracy},
        lr_scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        device="cpu",
    )
    data = (x, y) if data_kind == "arrays" else (TensorDataset(x, y),)
    history = model.fit(
        *data,
        validation_split=0.2,
        epochs=4,
        batch_size=16,
        shuffle=True,
        seed=3,
        run_dir=None if run_dir == "-" else run_dir,
        resume=run_dir != "-",
        checkpoint_every=every,
        keep_checkpoints=2,
        callbacks=[
            th.callbacks.EarlyStopping(monitor="val_loss", patience=10, verbose=False),
            Killer(kill_at, delay),
        ],
        progress="none",
    )
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, out + ".safetensors")
    with open(out + ".json", "w") as handle:
        json.dump({"history": history.history, "epoch": history.epoch}, handle)


if __name__ == "__main__":
    main()
