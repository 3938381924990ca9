"""The benchmark workloads and the training loops compared on them.

Every runner trains the same model (same initial weights, Adam lr=1e-3, same batch size)
on the same data, and returns the seconds of each epoch and the final epoch's mean train
loss. The runners differ only in the loop around the step.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SEED = 0
# The benchmark's GPU rows set TORCHHOUSE_BENCH_DEVICE=cuda (scripts/gpu_check.sh).
DEVICE = torch.device(os.environ.get("TORCHHOUSE_BENCH_DEVICE", "cpu"))


@dataclass
class Workload:
    name: str
    title: str
    batch_size: int
    make_data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    make_net: Callable[[], nn.Module]
    loss: Callable[[], nn.Module]
    classification: bool


def _tabular() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(200_000, 32, generator=g)
    y = (x[:, :4].sum(dim=1) > 0).long()
    return x, y


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from torchhouse.datasets import load_digits

    return load_digits()


def _wide() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(4096, 512, generator=g)
    y = x[:, :8].sum(dim=1, keepdim=True)
    return x, y


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def _cnn() -> nn.Module:
    from torchhouse.frontends.demo import digits_cnn

    return digits_cnn()


def _wide_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 1)
    )


def _probe_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(8 * 4000, 4, generator=g)
    return x, x.sum(dim=1, keepdim=True)


def _epochs_probe_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(64, 4, generator=g)
    return x, x.sum(dim=1, keepdim=True)


WORKLOADS = {
    "tabular": Workload(
        "tabular", "tiny tabular MLP (200k x 32, batch 256)", 256, _tabular, _mlp, nn.CrossEntropyLoss, True
    ),
    "digits": Workload(
        "digits", "small CNN on digits (8x8, batch 64)", 64, _digits, _cnn, nn.CrossEntropyLoss, True
    ),
    "wide": Workload(
        "wide", "wide MLP 512-2048-2048-1 (4096 x 512, batch 256)", 256, _wide, _wide_mlp, nn.MSELoss, False
    ),
    "probe": Workload(
        "probe",
        "fixed-cost probe: Linear(4, 1), batch 8, 4000 steps",
        8,
        _probe_data,
        lambda: nn.Linear(4, 1),
        nn.MSELoss,
        False,
    ),
    "epochs": Workload(
        "epochs",
        "per-epoch fixed-cost probe: Linear(4, 1), 64 rows, batch 8 (8 steps an epoch)",
        8,
        _epochs_probe_data,
        lambda: nn.Linear(4, 1),
        nn.MSELoss,
        False,
    ),
}


def _setup(workload: Workload) -> tuple[torch.Tensor, torch.Tensor, nn.Module, torch.optim.Optimizer]:
    x, y = workload.make_data()
    torch.manual_seed(SEED)
    net = workload.make_net().to(DEVICE)
    return x, y, net, torch.optim.Adam(net.parameters(), lr=1e-3)


# --------------------------------------------------------------------------- runners


def hand_loop(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """A careful hand-written loop: pre-loaded tensors, index-sliced batches of a seeded
    permutation, loss (and accuracy) accumulated on-tensor, one sync per epoch."""
    x, y, net, opt = _setup(workload)
    x, y = x.to(DEVICE), y.to(DEVICE)
    loss_fn = workload.loss()
    gen = torch.Generator().manual_seed(SEED)
    n, b = len(x), workload.batch_size
    times, last = [], 0.0
    torch.manual_seed(SEED)
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=gen).to(DEVICE)
        loss_sum = torch.zeros((), device=DEVICE)
        correct = torch.zeros((), dtype=torch.long, device=DEVICE)
        for lo in range(0, n, b):
            rows = order[lo : lo + b]
            xb, yb = x.index_select(0, rows), y.index_select(0, rows)
            preds = net(xb)
            loss = loss_fn(preds, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(rows)
            if workload.classification:
                correct += (preds.detach().argmax(1) == yb).sum()
        last = loss_sum.item() / n
        if workload.classification:
            _ = correct.item() / n
        times.append(time.perf_counter() - start)
    return times, last


def _hand_loop_compiled(workload: Workload, epochs: int, cuda_graphs: bool) -> tuple[list[float], float]:
    """The hand loop with PyTorch's recipes: ``torch.compile`` over the net and loss (its
    backward compiled with it) and over ``opt.step()`` with the lr in a tensor; with
    ``cuda_graphs``, inductor's CUDA graphs as well (what ``mode="reduce-overhead"`` turns on)."""
    x, y, net, _ = _setup(workload)
    opt = torch.optim.Adam(
        net.parameters(), lr=torch.tensor(1e-3, dtype=torch.float64), capturable=cuda_graphs
    )
    x, y = x.to(DEVICE), y.to(DEVICE)
    loss_fn = workload.loss()
    options = {"triton.cudagraphs": True} if cuda_graphs else None

    def forward_and_loss(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        preds = net(xb)
        return preds, loss_fn(preds, yb)

    def step() -> None:
        opt.step()

    compiled = torch.compile(forward_and_loss, fullgraph=True, dynamic=False, options=options)
    compiled_step = torch.compile(step, dynamic=False, options=options)
    gen = torch.Generator().manual_seed(SEED)
    n, b = len(x), workload.batch_size
    times, last = [], 0.0
    torch.manual_seed(SEED)
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=gen).to(DEVICE)
        loss_sum = torch.zeros((), device=DEVICE)
        correct = torch.zeros((), dtype=torch.long, device=DEVICE)
        for lo in range(0, n, b):
            rows = order[lo : lo + b]
            xb, yb = x.index_select(0, rows), y.index_select(0, rows)
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            preds, loss = compiled(xb, yb)
            loss.backward()
            compiled_step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(rows)
            if workload.classification:
                correct += (preds.detach().argmax(1) == yb).sum()
        last = loss_sum.item() / n
        if workload.classification:
            _ = correct.item() / n
        times.append(time.perf_counter() - start)
    return times, last


def hand_loop_compiled(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """The hand loop, torch.compile'd as PyTorch's recipes show (net + loss, and the optimizer)."""
    return _hand_loop_compiled(workload, epochs, cuda_graphs=False)


def hand_loop_cuda_graphs(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """The compiled hand loop with inductor's CUDA graphs (CUDA only)."""
    return _hand_loop_compiled(workload, epochs, cuda_graphs=True)


def textbook_loader(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """The textbook loop: TensorDataset + DataLoader(shuffle=True) and loss.item() per step."""
    x, y, net, opt = _setup(workload)
    loss_fn = workload.loss()
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=workload.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    times, last = [], 0.0
    torch.manual_seed(SEED)
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        total, count = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(DEVICE, non_blocking=True), yb.to(DEVICE, non_blocking=True)
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            count += len(xb)
        last = total / count
        times.append(time.perf_counter() - start)
    return times, last


def _torchhouse(
    workload: Workload,
    epochs: int,
    loader: bool,
    metric_object: bool = False,
    default_optimizer: bool = False,
    **model_kwargs: object,
) -> tuple[list[float], float]:
    import torchhouse as th

    x, y, net, opt = _setup(workload)
    metrics: dict[str, object] | None = {"acc": th.metrics.accuracy} if workload.classification else None
    if metric_object:
        import torchmetrics

        metrics = (
            {
                "acc": torchmetrics.classification.MulticlassAccuracy(
                    num_classes=int(y.max()) + 1, average="micro"
                )
            }
            if workload.classification
            else {"mse": torchmetrics.MeanSquaredError()}
        )
    optimizer = None if default_optimizer else opt
    model = th.Model(
        net, loss=workload.loss(), optimizer=optimizer, metrics=metrics, device=DEVICE, **model_kwargs
    )
    times: list[float] = []
    clock: list[float] = []
    timer = th.callbacks.LambdaCallback(
        on_epoch_start=lambda e, logs: clock.append(time.perf_counter()),
        on_epoch_end=lambda e, logs: times.append(time.perf_counter() - clock[-1]),
    )
    if loader:
        data = DataLoader(
            TensorDataset(x, y),
            batch_size=workload.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(SEED),
            pin_memory=DEVICE.type == "cuda",
        )
        history = model.fit(data, epochs=epochs, callbacks=[timer], progress="bar", seed=SEED)
    else:
        history = model.fit(
            x, y, epochs=epochs, batch_size=workload.batch_size, callbacks=[timer], progress="bar", seed=SEED
        )
    return times, history.history["loss"][-1]


def torchhouse_arrays(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """torchhouse defaults (progress bar and metrics on), data given as tensors."""
    return _torchhouse(workload, epochs, loader=False)


def torchhouse_loader(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """torchhouse given the textbook DataLoader."""
    return _torchhouse(workload, epochs, loader=True)


def hand_loop_torchmetrics_imported(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """The hand loop in a process that also imports torchmetrics: the RSS baseline of the metric rows."""
    import torchmetrics  # noqa: F401

    return hand_loop(workload, epochs)


def torchhouse_metric_object(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """torchhouse given a torchmetrics object (MulticlassAccuracy, or MeanSquaredError)."""
    return _torchhouse(workload, epochs, loader=False, metric_object=True)


def torchhouse_default_optimizer(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """torchhouse with optimizer=None: AdamW(lr=1e-3), fused where the device has the kernel."""
    return _torchhouse(workload, epochs, loader=False, default_optimizer=True)


def torchhouse_compile_step(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """torchhouse arrays with Model(compile="step"): forward, loss, backward and the optimizer compiled."""
    return _torchhouse(workload, epochs, loader=False, compile="step")


def torchhouse_cuda_graph(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """torchhouse arrays with Model(cuda_graph=True): the compiled step replayed as CUDA graphs."""
    return _torchhouse(workload, epochs, loader=False, cuda_graph=True)


def torchhouse_fused(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """torchhouse with a fused Adam (beats the hand loop's default Adam on CPU)."""
    import torchhouse as th

    x, y, net, _ = _setup(workload)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    metrics = {"acc": th.metrics.accuracy} if workload.classification else None
    model = th.Model(net, loss=workload.loss(), optimizer=opt, metrics=metrics, device=DEVICE)
    times: list[float] = []
    clock: list[float] = []
    timer = th.callbacks.LambdaCallback(
        on_epoch_start=lambda e, logs: clock.append(time.perf_counter()),
        on_epoch_end=lambda e, logs: times.append(time.perf_counter() - clock[-1]),
    )
    history = model.fit(
        x, y, epochs=epochs, batch_size=workload.batch_size, callbacks=[timer], progress="bar", seed=SEED
    )
    return times, history.history["loss"][-1]


def lightning(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """PyTorch Lightning 2.x as its docs show: a LightningModule, Trainer, DataLoader."""
    import lightning as L

    x, y, net, _ = _setup(workload)
    loss_fn = workload.loss()

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            xb, yb = batch
            loss = loss_fn(self.net(xb), yb)
            self.log("loss", loss, on_epoch=True, on_step=False, prog_bar=True)
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    times: list[float] = []

    class Timer(L.Callback):
        def on_train_epoch_start(self, trainer, module):  # type: ignore[no-untyped-def]
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter() - self.start)

    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=workload.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[Timer()],
        enable_model_summary=False,
    )
    module = Module()
    trainer.fit(module, loader)
    return times, float(trainer.callback_metrics["loss"])


def torchkeras_runner(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """torchkeras 4 as its README shows: KerasModel(net, loss_fn, metrics_dict, optimizer).fit(loader)."""
    import tempfile

    from torchkeras import KerasModel

    x, y, net, opt = _setup(workload)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=workload.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    marks: list[float] = []

    class Timer:
        def on_fit_start(self, model):  # type: ignore[no-untyped-def]
            marks.append(time.perf_counter())

        def on_train_epoch_end(self, model):  # type: ignore[no-untyped-def]
            marks.append(time.perf_counter())

    model = KerasModel(net, loss_fn=workload.loss(), optimizer=opt, metrics_dict={})
    with tempfile.TemporaryDirectory() as folder:
        history = model.fit(
            train_data=loader,
            epochs=epochs,
            ckpt_path=f"{folder}/ckpt",
            monitor="train_loss",
            mode="min",
            patience=epochs + 1,
            plot=False,
            cpu=True,
            callbacks=[Timer()],
        )
    times = [b - a for a, b in itertools.pairwise(marks)]
    return times, float(history["train_loss"].iloc[-1])


def keras3(workload: Workload, epochs: int) -> tuple[list[float], float]:
    """Keras 3 on the torch backend, the torch net wrapped in keras.layers.TorchModuleWrapper."""
    import os

    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    x, y, net, _ = _setup(workload)

    class Wrapped(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.net = keras.layers.TorchModuleWrapper(net)

        def call(self, inputs):  # type: ignore[no-untyped-def]
            return self.net(inputs)

    model = Wrapped()
    if workload.classification:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        loss = keras.losses.MeanSquaredError()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=loss)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter() - self.start)

    history = model.fit(
        x.numpy(),
        y.numpy(),
        batch_size=workload.batch_size,
        epochs=epochs,
        shuffle=True,
        callbacks=[Timer()],
        verbose=2,
    )
    return times, float(history.history["loss"][-1])


RUNNERS = {
    "hand loop": hand_loop,
    "textbook DataLoader": textbook_loader,
    "torchhouse (arrays)": torchhouse_arrays,
    "torchhouse (DataLoader)": torchhouse_loader,
    "hand loop + torch.compile": hand_loop_compiled,
    "torchhouse compile=step": torchhouse_compile_step,
    "hand loop + CUDA graphs": hand_loop_cuda_graphs,
    "torchhouse cuda_graph=True": torchhouse_cuda_graph,
    "torchhouse + fused Adam": torchhouse_fused,
    "torchhouse (optimizer=None)": torchhouse_default_optimizer,
    "hand loop (torchmetrics imported)": hand_loop_torchmetrics_imported,
    "torchhouse + torchmetrics object": torchhouse_metric_object,
    "Lightning": lightning,
    "torchkeras": torchkeras_runner,
    "Keras 3 (torch)": keras3,
}
OPTIONAL = {"Lightning": "lightning", "torchkeras": "torchkeras", "Keras 3 (torch)": "keras"}
CUDA_ONLY = {"hand loop + CUDA graphs", "torchhouse cuda_graph=True"}
