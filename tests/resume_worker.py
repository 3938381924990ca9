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
    def __init__(self, kill_at=-1, delay=0.0, started_fd=None):
        self.kill_at = kill_at
        self.delay = delay
        self.started_fd = started_fd

    def on_fit_start(self, logs):
        if self.started_fd is not None:
            os.write(self.started_fd, b"s")
        else:
            print("started", flush=True)

    def on_train_batch_end(self, batch, logs):
        if self.delay:
            time.sleep(self.delay)
        if self.model.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    if sys.argv[1] == "--kill-loop":
        kill_loop(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    run_dir, kill_at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    data_kind = sys.argv[5] if len(sys.argv) > 5 else "arrays"
    every = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    train(run_dir, kill_at, out, delay, data_kind, every)


def kill_loop(run_dir, kills, seed):
    """SIGKILL ``kills`` resumed runs (a state every step) at random moments, each mid-run.

    Children are forked from this warmed-up process, so a kill costs milliseconds, not an
    interpreter start. Prints one line per kill: the number of states on disk then.
    """
    import random
    import select
    import shutil

    rnd = random.Random(seed)
    torch.set_num_threads(1)
    done = 0
    while done < kills:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                train(run_dir, -1, os.path.join(run_dir + ".child"), 0.01, "arrays", 1, write_end)
            finally:
                os._exit(0)
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], 60)
        assert ready, "the child never started"
        os.read(read_end, 1)
        os.close(read_end)
        time.sleep(rnd.uniform(0.0, 0.2))
        finished, status = os.waitpid(pid, os.WNOHANG)
        if not finished:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        ended = os.path.exists(run_dir + ".child.json")
        if finished or ended:  # the run ended before the kill: start it again from scratch
            shutil.rmtree(run_dir)
            for suffix in (".child.json", ".child.safetensors"):
                if os.path.exists(run_dir + suffix):
                    os.remove(run_dir + suffix)
            continue
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        done += 1
        print("killed", flush=True)


def train(run_dir, kill_at, out, delay, data_kind, every, started_fd=None):
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
            Killer(kill_at, delay, started_fd),
        ],
        progress="none",
    )
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, out + ".safetensors")
    with open(out + ".json", "w") as handle:
        json.dump({"history": history.history, "epoch": history.epoch}, handle)


if __name__ == "__main__":
    main()
