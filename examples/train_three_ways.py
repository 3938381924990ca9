"""Three ways to train: a script loop, a training function, and the th.Model class.

The first two are plain PyTorch, shown so you can see exactly what th.Model does for you:
with the same seed and data order, all three end with identical weights.
Run: python examples/train_three_ways.py
"""

import os

import torch
from torch import nn

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "5"))
BATCH = 64


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train_function(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    """2. A training function: the loop, wrapped for reuse."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for lo in range(0, len(x), BATCH):
            optimizer.zero_grad()
            loss_fn(net(x[lo : lo + BATCH]), y[lo : lo + BATCH]).backward()
            optimizer.step()
    return net


def main() -> dict[str, float]:
    x, y = th.datasets.load_digits()
    x_train, x_test, y_train, y_test = th.datasets.train_test_split(x, y, seed=0)

    # 1. A script loop, written out inline.
    script_net = make_net()
    optimizer = torch.optim.AdamW(script_net.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        for lo in range(0, len(x_train), BATCH):
            optimizer.zero_grad()
            loss_fn(script_net(x_train[lo : lo + BATCH]), y_train[lo : lo + BATCH]).backward()
            optimizer.step()

    # 2. The function.
    function_net = train_function(make_net(), x_train, y_train, EPOCHS)

    # 3. The Model class (AdamW lr=1e-3, fused, is its default optimizer).
    model = th.Model(
        make_net(), loss=nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy}, device="cpu"
    )
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH, shuffle=False, progress="none")

    results = {}
    for name, net in [("script loop", script_net), ("function", function_net), ("th.Model", model.net)]:
        with torch.no_grad():
            results[name] = (net(x_test).argmax(1) == y_test).float().mean().item()
        print(f"{name:12s} test accuracy {results[name]:.4f}")
    same = all(torch.equal(a, b) for a, b in zip(script_net.parameters(), model.net.parameters()))
    print("identical weights for the script loop and th.Model:", same)
    return results


if __name__ == "__main__":
    main()
