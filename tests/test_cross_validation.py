"""th.cross_validate: seeded folds, each an ordinary fit; a killed run continues."""

import json

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification
from torchhouse.frontends.cross_validation import fold_indices


def build():
    torch.manual_seed(0)
    return th.Model(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
        loss=nn.CrossEntropyLoss(), metrics=["acc"], device="cpu",
    )  # fmt: skip


def test_each_fold_equals_a_plain_fit_on_its_split_and_the_folds_cover_the_rows():
    x, y = make_classification(n=90)
    result = th.cross_validate(build, x, y, folds=3, epochs=2, batch_size=16, progress="none")
    parts = fold_indices(90, 3, 0, y.numpy())
    assert sorted(i for part in parts for i in part.tolist()) == list(range(90))  # each row once
    for part in parts:  # stratified: every class in every fold, in its share
        counts = torch.bincount(y[torch.as_tensor(part)], minlength=3)
        assert all(
            abs(int(c) - int(t) / 3) <= 1 for c, t in zip(counts, torch.bincount(y, minlength=3), strict=True)
        )
    val = torch.as_tensor(parts[1])
    train = torch.as_tensor(sorted(set(range(90)) - set(parts[1].tolist())))
    plain = build()
    plain.fit(
        x[train], y[train], validation_data=(x[val], y[val]), epochs=2, batch_size=16, seed=0, progress="none"
    )
    assert result.folds[1] == {
        "fold": 1,
        **{f"val_{k}": v for k, v in plain.evaluate(x[val], y[val], batch_size=16).items()},
    }
    assert result.mean["val_loss"] == pytest.approx(sum(f["val_loss"] for f in result.folds) / 3)
    assert list(result.to_pandas().columns) == ["fold", "val_loss", "val_acc"]
    assert result.std["val_acc"] >= 0


def test_a_killed_cross_validation_continues_with_the_folds_not_yet_finished(tmp_path):
    x, y = make_classification(n=60)
    fits = []

    class Counting(th.callbacks.Callback):
        def on_fit_start(self, logs):
            fits.append(self.model.fit_state.spec.run_dir)

    class KillInFoldTwo(th.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if self.model.fit_state.spec.run_dir.endswith("fold-1") and epoch == 1:
                raise KeyboardInterrupt

    options = dict(folds=3, epochs=3, batch_size=16, progress="none", run_dir=tmp_path / "cv")
    whole = th.cross_validate(build, x, y, **{**options, "run_dir": tmp_path / "whole"})
    with pytest.raises(KeyboardInterrupt):
        th.cross_validate(build, x, y, callbacks=[Counting(), KillInFoldTwo()], **options)
    assert len(json.loads((tmp_path / "cv" / "cv.json").read_text())["done"]) == 1
    fits.clear()
    again = th.cross_validate(build, x, y, callbacks=[Counting()], **options)
    assert [p.rsplit("/", 1)[1] for p in fits] == ["fold-1", "fold-2"]  # fold 0 is not repeated
    assert again.folds == whole.folds  # fold 1 resumed from its state: the same numbers
    with pytest.raises(th.ConfigError, match="made with"):
        th.cross_validate(build, x, y, **{**options, "folds": 4})


def test_cross_validate_refuses_what_it_cannot_split():
    x, y = make_classification(n=20)
    with pytest.raises(th.ConfigError, match="folds"):
        th.cross_validate(build, x, y, folds=1)
    with pytest.raises(th.ConfigError, match="the folds' own"):
        th.cross_validate(build, x, y, validation_split=0.2)
    with pytest.raises(th.DataError, match="y is missing"):
        th.cross_validate(build, x)
    with pytest.raises(th.ConfigError, match="stratify=True"):
        th.cross_validate(build, x, torch.randn(20), stratify=True)
