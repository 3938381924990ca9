"""Three ways to build a model: nn.Sequential, an nn.Module subclass, nn.ModuleList/ModuleDict.

All three train the same way with th.Model. Run: python examples/build_three_ways.py
"""

import itertools
import os

import torch
from torch import nn

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "10"))


# 1. nn.Sequential: a stack of layers.
def sequential() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


# 2. An nn.Module subclass: any forward you can write.
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


# 3. nn.ModuleList / nn.ModuleDict: layers chosen in a loop.
class BlockNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (64, 48, 32)) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.heads = nn.ModuleDict({"digits": nn.Linear(widths[-1], 10)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.heads["digits"](x)


def main() -> dict[str, float]:
    x, y = th.datasets.load_digits()
    x_train, x_test, y_train, y_test = th.datasets.train_test_split(x, y, seed=0)
    results = {}
    for name, build in [("Sequential", sequential), ("Module subclass", ConvNet), ("ModuleList", BlockNet)]:
        torch.manual_seed(0)
        model = th.Model(build(), loss=nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy})
        model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, seed=0, progress="none")
        results[name] = model.evaluate(x_test, y_test)["acc"]
        print(f"{name:16s} test accuracy {results[name]:.4f}")
    return results


if __name__ == "__main__":
    main()
