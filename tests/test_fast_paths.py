"""Fast paths give exactly what the slow paths give: the DataLoader fast path, batch for batch."""

import copy

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
