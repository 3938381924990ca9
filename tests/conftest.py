import pytest
import torch
from torch import nn

from torchhouse.callbacks.base import Callback

torch.set_num_threads(1)


def make_classification(n=100, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    y = (x @ w).argmax(dim=1)
    return x, y


def make_net(features=6, classes=3, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(features, 16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(16, classes))
    return nn.Sequential(*layers)


class CompilesOtherwise(nn.Module):
    """A net whose compiled forward differs from its eager one: what a compiler bug looks like."""

    def __init__(self, features=6, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(features, classes)

    def forward(self, x):
        out = self.layer(x)
        return out * 2 if torch.compiler.is_compiling() else out


class ScaledUntilSwitched(nn.Module):
    """Reads two attributes in its forward: a change to either makes dynamo compile the graph
    again, outside the step's key. Once ``switched``, its compiled forward is wrong."""

    def __init__(self, features=6, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(features, classes)
        self.scale, self.switched = 1.0, False

    def forward(self, x):
        out = self.layer(x) * self.scale
        return out * 2 if self.switched and torch.compiler.is_compiling() else out


class ScaleAtEpoch(Callback):
    def __init__(self, net):
        self.net = net

    def on_epoch_start(self, epoch, logs):
        self.net.scale = 1.0 + epoch / 2


class SwitchAtEpoch(Callback):
    def __init__(self, net, epoch):
        self.net, self.epoch, self.weights = net, epoch, None

    def on_epoch_start(self, epoch, logs):
        if epoch == self.epoch:
            self.weights = {k: v.clone() for k, v in self.net.state_dict().items()}
            self.net.switched = True


@pytest.fixture
def data():
    return make_classification()


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
