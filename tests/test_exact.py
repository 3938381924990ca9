"""Exactness: fit gives the same weights as the plain loop, and seeded runs repeat."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchhouse as th
from conftest import make_classification, make_net, params_equal


def plain_loop(net, loader, opt, loss_fn, epochs):
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()


def test_fit_on_a_dataloader_is_bit_identical_to_the_plain_loop():
    x, y = make_classification(n=103)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    reference = make_net(seed=3)
    plain_loop(reference, loader, torch.optim.Adam(reference.parameters(), lr=1e-2), nn.CrossEntropyLoss(), 3)

    net = make_net(seed=3)
    model = th.Model(
        net,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
        metrics={"acc": th.metrics.accuracy},
        device="cpu",
    )
    model.fit(loader, epochs=3, progress="none")
    assert params_equal(net, reference)


def test_fit_on_arrays_is_bit_identical_to_the_plain_loop():
    x, y = make_classification(n=103)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    reference = make_net(seed=4, dropout=0.0)
    plain_loop(
        reference,
        loader,
        torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9),
        nn.CrossEntropyLoss(),
        2,
    )

    net = make_net(seed=4)
    model = th.Model(
        net,
        loss=nn.CrossEntropyLoss(),
        device="cpu",
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
    )
    model.fit(x.numpy(), y.numpy(), epochs=2, batch_size=16, shuffle=False, progress="none")
    assert params_equal(net, reference)


def test_shuffled_arrays_match_a_hand_loop_over_a_seeded_permutation():
    # The documented order: torch.randperm(n, generator=Generator().manual_seed(seed)) per epoch.
    x, y = make_classification(n=50)
    reference = make_net(seed=5)
    opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    th.seed_everything(7)
    gen = torch.Generator().manual_seed(7)
    for _ in range(2):
        order = torch.randperm(50, generator=gen)
        for lo in range(0, 50, 16):
            rows = order[lo : lo + 16]
            opt.zero_grad()
            nn.functional.cross_entropy(reference(x[rows]), y[rows]).backward()
            opt.step()
    net = make_net(seed=5)
    model = th.Model(
        net, loss=nn.CrossEntropyLoss(), device="cpu", optimizer=torch.optim.Adam(net.parameters(), lr=1e-2)
    )
    model.fit(x, y, epochs=2, batch_size=16, seed=7, progress="none")
    assert params_equal(net, reference)


def run_seeded(kind, seed):
    x, y = make_classification(n=90)
    net = make_net(seed=0, dropout=0.3)
    model = th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu", metrics={"acc": th.metrics.accuracy})
    data = (x, y) if kind == "arrays" else (TensorDataset(x, y),)
    history = model.fit(*data, epochs=3, batch_size=8, shuffle=True, seed=seed, progress="none")
    return net, history


def test_two_seeded_shuffled_runs_are_bit_identical_on_arrays_and_datasets():
    for kind in ("arrays", "dataset"):
        net_a, hist_a = run_seeded(kind, 11)
        net_b, hist_b = run_seeded(kind, 11)
        assert params_equal(net_a, net_b)
        assert hist_a.history == hist_b.history
        net_c, _ = run_seeded(kind, 12)
        assert not params_equal(net_a, net_c)


def test_history_has_no_wall_clock_values():
    _, history = run_seeded("arrays", 1)
    assert set(history.history) == {"loss", "acc"}
