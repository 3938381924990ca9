"""The four step styles of the step-contract matrix (importable by spawned processes)."""

import torch
from torch import nn

import torchhouse as th


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


class ReadmeStep(th.Model):
    """train_step written out as the README names its parts (autocast, forward, compute_loss,
    backward, optimizer_step)."""

    def train_step(self, batch):
        inputs, target = self.unpack_batch(batch)
        with self.autocast():
            preds = self.forward(inputs)
            loss = self.compute_loss(preds, target)
        self.backward(loss)
        self.optimizer_step()
        return {"loss": loss, "preds": preds, "target": target}


class TwoLossStep(th.Model):
    """Two losses, both logged: the step returns exactly three keys."""

    def train_step(self, batch):
        inputs, target = self.unpack_batch(batch)
        with self.autocast():
            preds = self.forward(inputs)
        ce = nn.functional.cross_entropy(preds.float(), target)
        penalty = 0.01 * preds.float().pow(2).mean()
        loss = ce + penalty
        self.backward(loss)
        self.optimizer_step()
        return {"loss": loss, "ce": ce, "penalty": penalty}


class GanStep(th.Model):
    """Two networks with their own optimizers, stepped by the step itself."""

    def __init__(self, **kwargs):
        torch.manual_seed(0)
        generator = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 6))
        discriminator = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
        super().__init__(nn.ModuleDict({"g": generator, "d": discriminator}), device="cpu", **kwargs)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)

    def optimizers(self):
        return [self.opt_g, self.opt_d]

    def train_step(self, batch):
        real, _ = batch
        g, d = self.net["g"], self.net["d"]
        fake = g(torch.randn(real.shape[0], 2))
        bce = nn.functional.binary_cross_entropy_with_logits
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        d_loss = bce(d(real), ones) + bce(d(fake.detach()), zeros)
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        g_loss = bce(d(fake), ones)
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        return {"loss": g_loss + d_loss, "d_loss": d_loss, "g_loss": g_loss, "batch_size": len(real)}


class GanWithoutOptimizers(GanStep):
    optimizers = th.Model.optimizers  # as if it never listed its own optimizers


def build(kind, **kwargs):
    """A model of ``kind`` with SGD (deterministic) for the built-in / README / two-loss steps."""
    if kind == "gan":
        return GanStep(**kwargs)
    cls = {"builtin": th.Model, "readme": ReadmeStep, "two_loss": TwoLossStep}[kind]
    return cls(
        net(),
        loss=nn.CrossEntropyLoss(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        device="cpu",
        **kwargs,
    )


def data(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    return x, y


def two_ranks():
    """Rank 0's outcome for each kind under 2 gloo processes: weights, history or the error."""
    results = {}
    x, y = data()
    for kind in ("builtin", "readme", "two_loss", "gan"):
        model = build(kind)
        try:
            history = model.fit(x, y, epochs=2, batch_size=8, shuffle=False, progress="none")
        except th.ConfigError as exc:
            results[kind] = {"error": str(exc)}
            continue
        results[kind] = {
            "history": history.history,
            "weights": {k: v.clone() for k, v in model.net.state_dict().items()},
        }
    return results
