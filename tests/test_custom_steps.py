"""Custom steps: override one method to change what a step does."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchhouse as th
from conftest import make_classification, make_net


class TwoLosses(th.Model):
    """compute_loss override: cross-entropy plus an L2 penalty on the outputs."""

    def compute_loss(self, preds, target):
        return nn.functional.cross_entropy(preds, target) + 0.01 * preds.pow(2).mean()


def test_compute_loss_override():
    x, y = make_classification(n=40)
    model = TwoLosses(make_net(), device="cpu")
    model.fit(x, y, epochs=1, progress="none")
    with torch.no_grad():
        logits = model.net(x)
        expected = nn.functional.cross_entropy(logits, y) + 0.01 * logits.pow(2).mean()
    assert model.evaluate(x, y, batch_size=40)["loss"] == pytest.approx(expected.item(), rel=1e-5)


class DictDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i]}


class DictBatches(th.Model):
    def unpack_batch(self, batch):
        return batch["features"], batch["label"]


def test_dict_batches_with_unpack_batch_override():
    x, y = make_classification(n=40)
    model = DictBatches(
        make_net(), loss=nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy}, device="cpu"
    )
    history = model.fit(DataLoader(DictDataset(x, y), batch_size=8), epochs=2, progress="none")
    assert len(history.history["acc"]) == 2


def test_dict_batches_without_override_explain_the_batch_rule():
    x, y = make_classification(n=40)
    model = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(
        th.DataError, match="keys \\['features', 'label'\\].*net\\(\\*\\*batch\\).*'labels'.*unpack_batch"
    ):
        model.fit(DataLoader(DictDataset(x, y), batch_size=8), progress="none")


class GAN(th.Model):
    """train_step override: two networks, two optimizers, two losses."""

    def __init__(self, generator, discriminator):
        super().__init__(
            nn.ModuleDict({"g": generator, "d": discriminator}),
            device="cpu",
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        )
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)

    def train_step(self, batch):
        real, _ = batch
        g, d = self.net["g"], self.net["d"]
        noise = torch.randn(real.shape[0], 2)
        fake = g(noise)
        bce = nn.functional.binary_cross_entropy_with_logits
        d_loss = bce(d(real), torch.ones(len(real), 1)) + bce(d(fake.detach()), torch.zeros(len(real), 1))
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        g_loss = bce(d(fake), torch.ones(len(real), 1))
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        return {"loss": g_loss + d_loss, "d_loss": d_loss, "g_loss": g_loss, "batch_size": len(real)}


def test_gan_train_step_override_logs_extra_losses():
    torch.manual_seed(0)
    real = torch.randn(64, 2) * 0.5 + 2.0
    model = GAN(
        nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)),
        nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)),
    )
    before = model.net["g"][0].weight.clone()
    history = model.fit(real, torch.zeros(64), epochs=2, batch_size=16, progress="none")
    assert set(history.history) == {"loss", "d_loss", "g_loss"}
    assert history.history["loss"][0] == pytest.approx(
        history.history["d_loss"][0] + history.history["g_loss"][0], rel=1e-5
    )
    assert not torch.equal(before, model.net["g"][0].weight)
