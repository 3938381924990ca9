"""A Lightning DataModule, used unchanged by th.Model (the data half of a Lightning port).

The DataModule is written as Lightning's tutorial writes one for MNIST (`prepare_data`,
`setup(stage)` with a seeded `random_split`, `train/val/test_dataloader`), over the bundled
8x8 digits so nothing is downloaded. `th.Model.fit(datamodule)` calls `prepare_data()` and
`setup("fit")` as Lightning's Trainer does and trains on its loaders; `evaluate(datamodule)`
uses its `test_dataloader()`. The same DataModule then goes to `th.LightModel`, whose
Trainer drives it itself, and both end with the same weights.
Needs the lightning extra: pip install 'torchhouse[lightning]'.
Run: python examples/lightning_datamodule.py
"""

import os
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "8"))


def digits_datamodule(batch_size: int = 64):  # -> lightning.LightningDataModule
    import lightning as L

    class DigitsDataModule(L.LightningDataModule):
        def __init__(self, batch_size: int) -> None:
            super().__init__()
            self.batch_size = batch_size

        def prepare_data(self) -> None:
            th.datasets.load_digits()  # Lightning's place for downloads: here, a bundled file

        def setup(self, stage: str) -> None:
            x, y = th.datasets.load_digits()
            full = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
            split = torch.Generator().manual_seed(42)
            self.train, self.val, self.test = random_split(full, [1200, 237, 360], generator=split)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train, batch_size=self.batch_size)  # in order: comparable runs

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.val, batch_size=self.batch_size)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.test, batch_size=self.batch_size)

    return DigitsDataModule(batch_size)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10)
    )


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def main() -> dict[str, float]:
    options = dict(loss=nn.CrossEntropyLoss(), optimizer=sgd, metrics=["acc"])
    model = th.Model(net(), device="cpu", **options)
    history = model.fit(digits_datamodule(), epochs=EPOCHS, progress="epoch")
    result = model.evaluate(digits_datamodule())  # its test_dataloader
    best = max(history.history["val_acc"])
    print(f"test accuracy {result['acc']:.3f} (chance 0.100); best val_acc {best:.3f}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers and loggers
        light = th.LightModel(net(), **options)
        light.fit(digits_datamodule(), epochs=EPOCHS, accelerator="cpu", devices=1)
    same = all(torch.equal(a, b) for a, b in zip(model.net.parameters(), light.net.parameters(), strict=True))
    print("th.Model and th.LightModel end with identical weights:", same)
    return {"accuracy": float(result["acc"]), "same_weights": float(same)}


if __name__ == "__main__":
    main()
