"""Fast paths give exactly what the slow paths give: the DataLoader fast path, batch for batch."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import torchhouse as th
from torchhouse.data import LoaderBatches


def dataset(n=50, three=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    tensors = (x, y, torch.rand(n, generator=g)) if three else (x, y)
    return TensorDataset(*tensors)


LOADERS = {
    "shuffle with a generator": lambda: DataLoader(
        dataset(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)
    ),
    "shuffle on the global RNG": lambda: DataLoader(dataset(), batch_size=8, shuffle=True),
    "in order, drop_last": lambda: DataLoader(dataset(), batch_size=8, drop_last=True),
    "batch size 1": lambda: DataLoader(dataset(n=5), batch_size=1, shuffle=True),
    "three tensors": lambda: DataLoader(dataset(three=True), batch_size=16, shuffle=True),
    "weighted sampler": lambda: DataLoader(
        dataset(),
        batch_size=8,
        sampler=WeightedRandomSampler(
            torch.rand(50, generator=torch.Generator().manual_seed(9)),
            60,
            generator=torch.Generator().manual_seed(2),
        ),
    ),
    "distributed sampler": lambda: DataLoader(
        dataset(), batch_size=8, sampler=DistributedSampler(dataset(), num_replicas=2, rank=1, seed=3)
    ),
    "a batch sampler": lambda: DataLoader(
        dataset(), batch_sampler=BatchSampler(SequentialSampler(range(50)), batch_size=7, drop_last=False)
    ),
}


def rng_states(loader):
    states = [torch.get_rng_state()]
    for gen in (loader.generator, getattr(loader.sampler, "generator", None)):
        if gen is not None:
            states.append(gen.get_state())
    return states


@pytest.mark.parametrize("name", LOADERS)
@pytest.mark.parametrize("start", [0, 3])
def test_the_fast_path_yields_the_loaders_batches_and_consumes_the_same_random_numbers(name, start):
    plain, fast = LOADERS[name](), LOADERS[name]()
    batches = LoaderBatches(fast)
    assert batches.sliceable()
    for epoch in range(2):  # two epochs: each draws its own order
        torch.manual_seed(epoch)
        expected = list(plain)[start if epoch == 0 else 0 :]
        after_plain = rng_states(plain)
        torch.manual_seed(epoch)
        got = list(batches.iterate(None, start if epoch == 0 else 0))
        assert len(got) == len(expected) > 0
        for mine, theirs in zip(got, expected, strict=True):
            assert type(mine) is type(theirs) is list
            for a, b in zip(mine, theirs, strict=True):
                assert a.dtype == b.dtype and torch.equal(a, b)
        assert all(torch.equal(a, b) for a, b in zip(rng_states(fast), after_plain, strict=True))


def test_loaders_the_fast_path_cannot_copy_are_iterated_as_they_are():
    class Doubled(TensorDataset):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x * 2, y

    collate = lambda items: torch.utils.data.default_collate(items)
    for loader in (
        DataLoader(dataset(), batch_size=8, num_workers=1),
        DataLoader(dataset(), batch_size=8, collate_fn=collate),
        DataLoader(Doubled(*dataset().tensors), batch_size=8),
        DataLoader(dataset(), batch_size=None),
    ):
        assert not LoaderBatches(loader).sliceable()
    doubled = LoaderBatches(DataLoader(Doubled(*dataset().tensors), batch_size=8))
    first = next(iter(doubled.iterate(None)))
    assert torch.equal(first[0], dataset().tensors[0][:8] * 2)


def textbook_fit(loader, epochs):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(net(x), y).backward()
            optimizer.step()
    return net


def test_fit_on_a_shuffling_loader_ends_bit_identical_to_the_textbook_loop():
    make = LOADERS["shuffle on the global RNG"]
    reference = textbook_fit(make(), epochs=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    model = th.Model(
        net, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), device="cpu"
    )
    model.fit(make(), epochs=3, progress="none")
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_mid_epoch_resume_on_the_fast_path_is_bit_identical(tmp_path):
    def run(**kwargs):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
        model = th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu")
        loader = DataLoader(dataset(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5))
        model.fit(loader, epochs=2, progress="none", seed=0, checkpoint_every=2, **kwargs)
        return net

    reference = run()

    class Stop(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.global_step == 9:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(run_dir=tmp_path / "r", callbacks=[Stop()])
    resumed = run(run_dir=tmp_path / "r", resume=True)
    for a, b in zip(resumed.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_to_keeps_a_copy_on_the_device_and_leaves_the_users_dataset_alone():
    data = dataset()
    batches = LoaderBatches(DataLoader(data, batch_size=8)).to(torch.device("cpu"))
    assert batches.on_device and batches.tensors is not None
    big = LoaderBatches(DataLoader(data, batch_size=8)).to(torch.device("meta"), max_bytes=10)
    assert not big.on_device  # too big for the accelerator: batches are moved one by one
    assert data.tensors[0].device.type == "cpu"
    assert copy.copy(data.tensors) == data.tensors


# --------------------------------------------------------------------------- metric objects

torchmetrics = pytest.importorskip("torchmetrics")


def step_outputs(steps=37, seq=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        n = 16 if i < steps - 1 else 5  # a short last batch
        if seq:  # text-like: another length each step
            length = 3 + i % 4
            yield torch.randn(n, 3, length, generator=g), torch.randint(0, 3, (n, length), generator=g)
        else:
            yield torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)


def per_step_reference(metric, outputs):
    for preds, target in outputs:
        metric.update(preds, target)
    return metric.compute()


METRICS = {
    "accuracy": lambda: torchmetrics.classification.MulticlassAccuracy(num_classes=3),
    "macro f1": lambda: torchmetrics.classification.MulticlassF1Score(num_classes=3, average="macro"),
    "auroc": lambda: torchmetrics.classification.MulticlassAUROC(num_classes=3),
    "mse of logits": lambda: torchmetrics.MeanSquaredError(),
}


@pytest.mark.parametrize("name", METRICS)
def test_metric_objects_updated_every_few_steps_equal_per_step_updates(name):
    from torchhouse.metrics.epoch import PENDING_STEPS, EpochMetrics

    metric = METRICS[name]()
    acc = EpochMetrics({"m": metric}, torch.device("cpu"), capacity=4)
    float_sums = name == "mse of logits"  # a float sum in another order would round otherwise
    assert ("m" in acc.per_step) if float_sums else ("m" in acc.batched)
    calls = []
    original = metric.update
    metric.update = lambda *a: (calls.append(len(a[0])), original(*a))[1]
    adapt = (lambda p, t: (p[:, 0], t.float())) if name == "mse of logits" else (lambda p, t: (p, t))
    for preds, target in step_outputs():
        p, t = adapt(preds, target)
        acc.update({"loss": torch.tensor(1.0), "preds": p, "target": t}, len(t))
    value = acc.compute()["m"]
    expected = per_step_reference(METRICS[name](), [adapt(p, t) for p, t in step_outputs()])
    # 3 updates for 37 steps for counts and concatenations; a float sum is updated every step
    assert len(calls) == (37 if float_sums else -(-37 // PENDING_STEPS))
    assert value == float(expected)  # counts, the same concatenated scores, or the same float sums


def test_outputs_of_changing_shape_are_not_concatenated_and_still_counted():
    from torchhouse.metrics import EpochMetrics

    make = lambda: torchmetrics.classification.MulticlassAccuracy(num_classes=3, multidim_average="global")
    acc = EpochMetrics({"m": make()}, torch.device("cpu"), capacity=4)
    for preds, target in step_outputs(seq=True):
        acc.update({"loss": torch.tensor(1.0), "preds": preds, "target": target}, len(target))
    assert acc.compute()["m"] == float(per_step_reference(make(), step_outputs(seq=True)))


def test_a_mid_epoch_state_holds_the_outputs_not_yet_given_to_the_metric():
    from torchhouse.metrics import EpochMetrics

    make = lambda: torchmetrics.classification.MulticlassAccuracy(num_classes=3)
    outputs = list(step_outputs())
    acc = EpochMetrics({"m": make()}, torch.device("cpu"), capacity=4)
    for preds, target in outputs[:20]:  # 16 given to the metric, 4 pending
        acc.update({"loss": torch.tensor(1.0), "preds": preds, "target": target}, len(target))
    state = acc.state_dict()
    resumed = EpochMetrics({"m": make()}, torch.device("cpu"), capacity=4)
    resumed.load_state_dict(state)
    for preds, target in outputs[20:]:
        resumed.update({"loss": torch.tensor(1.0), "preds": preds, "target": target}, len(target))
    assert resumed.compute()["m"] == float(per_step_reference(make(), outputs))


def test_fit_with_a_torchmetrics_accuracy_logs_what_the_plain_function_logs():
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()

    def run(metric):
        torch.manual_seed(0)
        model = th.Model(nn.Linear(3, 2), loss=nn.CrossEntropyLoss(), metrics={"acc": metric}, device="cpu")
        return model.fit(x, y, validation_split=0.2, epochs=2, batch_size=8, seed=0, progress="none").history

    with_object = run(torchmetrics.classification.MulticlassAccuracy(num_classes=2, average="micro"))
    with_function = run(th.metrics.accuracy)
    assert with_object["acc"] == pytest.approx(with_function["acc"], abs=1e-6)
    assert with_object["val_acc"] == pytest.approx(with_function["val_acc"], abs=1e-6)
    assert with_object["loss"] == with_function["loss"]


# --------------------------------------------------------------------------- the default optimizer


def test_the_default_optimizer_is_fused_adamw_and_a_hand_loop_with_it_matches_bit_for_bit():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    model = th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu")
    assert isinstance(model.optimizer, torch.optim.AdamW) and model.optimizer.defaults["fused"] is True
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, progress="none")
    torch.manual_seed(0)
    hand = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(hand.parameters(), lr=1e-3, fused=True)
    for _ in range(2):
        for lo in range(0, 64, 16):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(hand(x[lo : lo + 16]), y[lo : lo + 16]).backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), hand.parameters(), strict=True))


def test_the_default_optimizer_falls_back_where_the_fused_kernel_refuses(monkeypatch):
    from torchhouse.train.building import default_optimizer

    plain_adamw = torch.optim.AdamW

    def refuse_fused(params, **kwargs):  # as AdamW does for a device without the fused kernel
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")
        return plain_adamw(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", refuse_fused)
    optimizer = default_optimizer(list(nn.Linear(2, 1).parameters()))
    assert isinstance(optimizer, plain_adamw) and not optimizer.defaults["fused"]
    assert optimizer.defaults["lr"] == 1e-3


def test_epoch_values_read_in_one_go_are_the_sample_weighted_means():
    """EpochMetrics.compute reads every column and metric result in one device read and
    sums on the host: the values are the float64 sample-weighted means, a stateful metric's
    dict result is spread over named keys, and skipped (non-finite) steps are left out."""
    from torchhouse.metrics import EpochMetrics

    class Spread:  # a stateful metric whose compute returns a dict of tensors
        full_state_update = True

        def __init__(self):
            self.total = torch.zeros(())

        def update(self, preds, target):
            self.total += preds.sum()

        def compute(self):
            return {"sum": self.total, "half": self.total / 2}

        def reset(self):
            self.total = torch.zeros(())

    losses, sizes = [0.5, 2.0, float("nan"), 1.25], [8, 8, 8, 3]
    first = lambda p, t: p[:, 0].mean()
    acc = EpochMetrics({"first": first, "spread": Spread()}, torch.device("cpu"), capacity=2)
    acc.ignore_nonfinite = True
    steps = []
    for loss, n in zip(losses, sizes):
        preds = torch.arange(2 * n, dtype=torch.float32).reshape(n, 2) * loss
        steps.append(preds)
        acc.update({"loss": torch.tensor(loss), "preds": preds, "target": torch.zeros(n)}, n)
    values = acc.compute()
    kept = [i for i, v in enumerate(losses) if v == v]
    total = sum(sizes[i] for i in kept)
    assert list(values) == ["loss", "first", "spread_sum", "spread_half"]
    assert values["loss"] == sum(losses[i] * sizes[i] for i in kept) / total
    assert values["first"] == pytest.approx(
        sum(float(steps[i][:, 0].mean()) * sizes[i] for i in kept) / total
    )
    assert math.isnan(values["spread_sum"])  # the metric saw the NaN step: its own business
    assert acc.nonfinite == 1

    acc.ignore_nonfinite = False
    acc.reset()
    acc.update({"loss": torch.tensor(float("nan")), "preds": steps[0], "target": torch.zeros(8)}, 8)
    assert math.isnan(acc.compute()["loss"]) and acc.nonfinite == 1
    acc.ignore_nonfinite = True  # every step skipped: 0 / 0 samples, NaN, not an error
    assert math.isnan(acc.compute()["loss"])
    assert math.isnan(acc.partial_loss()) and acc.nonfinite == 1

    summed = EpochMetrics({}, torch.device("cpu"), capacity=4, loss_reduction="sum")
    for loss, n in [(3.0, 4), (5.0, 2)]:
        summed.update({"loss": torch.tensor(loss)}, n)
    assert summed.compute() == {"loss": (3.0 + 5.0) / 6}  # per-sample mean of summed losses
