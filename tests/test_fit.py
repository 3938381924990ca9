"""fit / evaluate / predict on every kind of data, history and metrics."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchhouse as th
from conftest import make_classification, make_net


def model_for(net=None, **kwargs):
    return th.Model(net or make_net(), loss=nn.CrossEntropyLoss(), device="cpu", **kwargs)


def test_fit_returns_history_with_loss_metrics_and_val(data):
    x, y = data
    model = model_for(metrics={"acc": th.metrics.accuracy})
    history = model.fit(x, y, validation_split=0.2, epochs=3, batch_size=16, progress="none", seed=0)
    assert list(history.history) == ["loss", "acc", "val_loss", "val_acc"]
    assert all(len(v) == 3 for v in history.history.values())
    assert all(isinstance(v, float) for v in history.history["loss"])
    assert history.epoch == [0, 1, 2]
    assert history.history["loss"][-1] < history.history["loss"][0]
    frame = history.to_pandas()
    assert list(frame.columns) == ["epoch", "loss", "acc", "val_loss", "val_acc"]
    assert len(frame) == 3


def test_training_learns(data):
    x, y = make_classification(n=400)
    model = model_for(metrics={"acc": th.metrics.accuracy}, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    model.fit(x, y, epochs=15, batch_size=32, progress="none", seed=0)
    assert model.evaluate(x, y)["acc"] > 0.9


@pytest.mark.parametrize("kind", ["tensor", "numpy64", "dataframe", "dataset", "loader"])
def test_every_kind_of_data_gives_the_same_training(kind, data):
    x, y = data
    if kind == "tensor":
        args = (x, y)
    elif kind == "numpy64":
        args = (x.double().numpy(), y.numpy().astype(np.int32))
    elif kind == "dataframe":
        args = (pd.DataFrame(x.numpy()), pd.Series(y.numpy()))
    elif kind == "dataset":
        args = (TensorDataset(x, y),)
    else:
        args = (DataLoader(TensorDataset(x, y), batch_size=10),)
    model = model_for()
    history = model.fit(*args, epochs=2, batch_size=10, shuffle=False, progress="none")
    reference = model_for()
    ref_history = reference.fit(x, y, epochs=2, batch_size=10, shuffle=False, progress="none")
    assert history.history == ref_history.history
    for a, b in zip(model.net.parameters(), reference.net.parameters()):
        assert torch.equal(a, b)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, left, right):
        return self.head(torch.relu(self.a(left) + self.b(right)))


def test_tuple_inputs_call_net_with_several_arguments():
    torch.manual_seed(0)
    left, right, y = torch.randn(20, 3), torch.randn(20, 2), torch.randint(0, 2, (20,))
    model = th.Model(TwoInputs(), loss=nn.CrossEntropyLoss(), device="cpu")
    model.fit((left, right), y, epochs=1, batch_size=8, progress="none")
    assert model.predict((left, right)).shape == (20, 2)
    assert model.predict({"left": left, "right": right}).shape == (20, 2)


def test_dict_inputs_call_net_with_keywords():
    torch.manual_seed(0)
    left, right, y = torch.randn(20, 3), torch.randn(20, 2), torch.randint(0, 2, (20,))
    model = th.Model(TwoInputs(), loss=nn.CrossEntropyLoss(), device="cpu")
    history = model.fit({"left": left, "right": right}, y, epochs=1, batch_size=8, progress="none")
    assert math.isfinite(history.history["loss"][0])


def test_loss_is_sample_weighted_so_a_short_last_batch_counts_less():
    # 10 samples in batches of 4: 4 + 4 + 2. The epoch loss must equal the mean over samples.
    torch.manual_seed(0)
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    model = th.Model(nn.Linear(3, 1), loss=nn.MSELoss(), device="cpu")
    result = model.evaluate(x, y, batch_size=4)
    with torch.no_grad():
        whole = nn.functional.mse_loss(model.net(x), y).item()
    assert result["loss"] == pytest.approx(whole, rel=1e-6)


def test_evaluate_matches_whole_set_loss_and_torchmetrics(data):
    x, y = data
    metric = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
    model = model_for(metrics={"acc": metric, "acc_fn": th.metrics.accuracy})
    model.fit(x, y, epochs=2, batch_size=16, progress="none", seed=1)
    result = model.evaluate(x, y, batch_size=7)
    with torch.no_grad():
        logits = model.net(x)
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    expected_acc = (logits.argmax(1) == y).float().mean().item()
    assert result["acc"] == pytest.approx(expected_acc, abs=1e-6)
    assert result["acc_fn"] == pytest.approx(expected_acc, abs=1e-6)


def test_torchmetrics_train_and_validation_states_are_separate(data):
    x, y = data
    metric = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
    model = model_for(metrics={"acc": metric})
    model.fit(
        x[:80],
        y[:80],
        validation_data=(x[80:], y[80:]),
        epochs=1,
        batch_size=80,
        shuffle=False,
        progress="none",
    )
    history = model.history
    # validation accuracy equals an evaluate on the same data with the final weights
    assert history.history["val_acc"][0] == pytest.approx(model.evaluate(x[80:], y[80:])["acc"])


def test_predict_returns_cpu_tensor_concatenated(data):
    x, y = data
    model = model_for()
    preds = model.predict(x, batch_size=7)
    assert isinstance(preds, torch.Tensor) and preds.device.type == "cpu"
    with torch.no_grad():
        assert torch.allclose(preds, model.net(x), atol=1e-6)
    loader_preds = model.predict(DataLoader(TensorDataset(x, y), batch_size=9))
    assert torch.allclose(loader_preds, preds, atol=1e-6)
    only_inputs = model.predict(DataLoader(TensorDataset(x), batch_size=9))
    assert torch.allclose(only_inputs, preds, atol=1e-6)


def test_predict_and_evaluate_restore_training_mode(data):
    x, y = data
    model = model_for()
    model.net.train()
    model.predict(x)
    model.evaluate(x, y)
    assert model.net.training


def test_validation_split_takes_the_last_fraction(data):
    x, y = data
    model = model_for()
    history = model.fit(x, y, validation_split=0.25, epochs=1, batch_size=100, shuffle=False, progress="none")
    assert history.history["val_loss"][0] == pytest.approx(model.evaluate(x[75:], y[75:])["loss"], rel=1e-6)


def test_validation_split_on_a_dataset(data):
    x, y = data
    model = model_for()
    history = model.fit(TensorDataset(x, y), validation_split=0.2, epochs=1, progress="none")
    assert "val_loss" in history.history


def test_lr_scheduler_steps_per_epoch_and_lr_is_logged(data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    model = th.Model(
        net,
        loss=nn.CrossEntropyLoss(),
        optimizer=opt,
        device="cpu",
        lr_scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    history = model.fit(x, y, epochs=3, batch_size=50, progress="none")
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])


def test_lr_scheduler_per_step(data):
    x, y = data
    model = th.Model(
        make_net(),
        loss=nn.CrossEntropyLoss(),
        device="cpu",
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        lr_scheduler_interval="step",
    )
    model.fit(x, y, epochs=1, batch_size=25, progress="none")  # 4 steps
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(1.0 / 16)


def test_reduce_lr_on_plateau_uses_val_loss(data):
    x, y = data
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    # threshold=1.0: no epoch counts as an improvement, so the lr halves every epoch
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=1.0)
    model = th.Model(net, loss=nn.CrossEntropyLoss(), optimizer=opt, lr_scheduler=sched, device="cpu")
    history = model.fit(x, y, validation_split=0.2, epochs=3, progress="none")
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])


def test_default_optimizer_is_adamw_and_callable_optimizer_works():
    model = th.Model(make_net(), device="cpu")
    assert isinstance(model.optimizer, torch.optim.AdamW)
    assert model.optimizer.param_groups[0]["lr"] == 1e-3
    model = th.Model(make_net(), device="cpu", optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    assert isinstance(model.optimizer, torch.optim.SGD)


def test_history_best_skips_nan():
    h = th.History()
    for epoch, value in enumerate([0.5, float("nan"), 0.3, 0.4]):
        h.append(epoch, {"val_loss": value})
    assert h.best("val_loss") == (2, 0.3)


def test_progress_modes_print_one_line_per_epoch(data, capsys):
    x, y = data
    model_for().fit(x, y, epochs=2, progress="epoch")
    out = capsys.readouterr().out
    assert out.count("Epoch ") == 2 and "loss:" in out
    model_for().fit(x, y, epochs=2, progress="none")
    assert capsys.readouterr().out == ""


def test_progress_bar_mode_runs(data, capsys):
    x, y = data
    model_for().fit(x, y, epochs=1, progress="bar")
    assert "Epoch 1/1" in capsys.readouterr().err


def test_batch_size_of_short_last_batch_from_loader(data):
    x, y = data
    loader = DataLoader(TensorDataset(x, y), batch_size=30)  # 30, 30, 30, 10
    model = model_for()
    result = model.evaluate(loader)
    with torch.no_grad():
        whole = nn.functional.cross_entropy(model.net(x), y).item()
    assert result["loss"] == pytest.approx(whole, rel=1e-6)


def test_sum_reduced_loss_is_averaged_per_sample(data):
    x, y = data
    model = th.Model(make_net(), loss=nn.CrossEntropyLoss(reduction="sum"), device="cpu")
    result = model.evaluate(x, y, batch_size=30)
    with torch.no_grad():
        whole = nn.functional.cross_entropy(model.net(x), y).item()
    assert result["loss"] == pytest.approx(whole, rel=1e-6)
