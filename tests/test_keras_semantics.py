"""Keras' meanings where users bring Keras habits (issue: Keras-faithful semantics)."""

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net


def model(**kwargs):
    return th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", **kwargs)


def test_a_reused_early_stopping_starts_afresh_in_the_next_fit():
    x, y = make_classification(n=40)
    stop = th.callbacks.EarlyStopping(monitor="loss", patience=2, verbose=False)
    a = model(optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    a.fit(x, y, epochs=30, progress="none", callbacks=[stop], seed=0)
    b = model(optimizer=lambda p: torch.optim.SGD(p, lr=1e-4))  # a slow learner: a's best is far away
    history = b.fit(x, y, epochs=4, progress="none", callbacks=[stop], seed=0)
    assert len(history) == 4  # not stopped after 1 epoch by a's remembered best
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        assert not torch.equal(pa, pb)  # and b does not end with a's weights


def test_baseline_never_beaten_still_restores_the_best_epoch():
    x, y = make_classification(n=40)
    scores = [5.0, 3.0, 4.0, 6.0, 7.0, 8.0]  # never under the baseline 1.0; best at epoch 1
    m = model(
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        metrics={"score": lambda preds, target: torch.tensor(scores[m.epoch])},  # one batch an epoch
    )
    stop = th.callbacks.EarlyStopping(
        monitor="score", mode="min", patience=2, baseline=1.0, restore_best_weights=True, verbose=False
    )
    snapshots = []

    class Keep(th.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            snapshots.append({k: v.clone() for k, v in self.model.net.state_dict().items()})

    history = m.fit(x, y, epochs=6, batch_size=64, progress="none", callbacks=[Keep(), stop], seed=0)
    assert history.history["score"] == scores[:3]  # stopped at epoch 2, as Keras does
    assert stop.best_epoch == 1
    for name, value in m.net.state_dict().items():
        assert torch.equal(value, snapshots[1][name])


def test_start_from_epoch_ignores_the_warm_up_epochs():
    x, y = make_classification(n=40)
    stop = th.callbacks.EarlyStopping(
        monitor="loss", patience=0, start_from_epoch=3, verbose=False, mode="max"
    )
    history = model().fit(x, y, epochs=10, progress="none", callbacks=[stop], seed=0)
    assert len(history) == 5  # epochs 0-2 unwatched; 3 is the first best; 4 does not beat it (max)


def test_accuracy_follows_a_logits_loss():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = (x[:, :1] > 0).float()
    net = nn.Linear(4, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 0.0, 0.0, 0.0]]))
        net.bias.fill_(-0.5)  # logits in roughly [-10, 10]: many between 0 and 0.5
    for metric in (th.metrics.accuracy, "accuracy"):
        m = th.Model(net, loss=nn.BCEWithLogitsLoss(), metrics={"acc": metric}, device="cpu")
        truth = ((net(x) > 0).float() == y).float().mean().item()
        assert m.evaluate(x, y)["acc"] == pytest.approx(truth)


def test_accuracy_names_resolve_from_the_loss_and_refuse_what_does_not_fit():
    x, y = make_classification(n=40)
    result = model(metrics={"acc": "accuracy"}).evaluate(x, y)
    with torch.no_grad():
        assert "acc" in result
    regression = th.Model(nn.Linear(6, 1), loss=nn.MSELoss(), metrics=["mae", "mse"], device="cpu")
    xr, yr = torch.randn(20, 6), torch.randn(20, 1)
    got = regression.evaluate(xr, yr)
    with torch.no_grad():
        preds = regression.net(xr)
    assert got["mae"] == pytest.approx((preds - yr).abs().mean().item(), rel=1e-5)
    assert got["mse"] == pytest.approx((preds - yr).pow(2).mean().item(), rel=1e-5)
    with pytest.raises(th.ConfigError, match="'accuracy' follows the loss, and MSELoss is not"):
        th.Model(nn.Linear(6, 1), loss=nn.MSELoss(), metrics={"acc": "accuracy"}, device="cpu")
    with pytest.raises(th.ConfigError, match="'f2' is not a metric name"):
        model(metrics={"f": "f2"})


def test_accuracy_on_logits_from_an_unknown_loss_fails_at_the_first_batch():
    x = torch.randn(30, 4)
    y = (x[:, :1] > 0).float()
    custom = th.Model(
        nn.Linear(4, 1),
        loss=lambda preds, target: nn.functional.binary_cross_entropy_with_logits(preds, target),
        metrics={"acc": th.metrics.accuracy},
        device="cpu",
    )
    with pytest.raises(th.DataError, match="look like logits.*binary_accuracy_logits"):
        custom.fit(x * 10, y, epochs=1, progress="none")
