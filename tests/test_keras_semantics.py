"""Keras' meanings where users bring Keras habits (issue: Keras-faithful semantics)."""

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net, params_equal


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


def test_model_checkpoint_counts_epochs_from_one_and_checks_its_path_before_training(tmp_path):
    x, y = make_classification(n=40)
    every = th.callbacks.ModelCheckpoint(
        tmp_path / "e{epoch}.safetensors", monitor=None, save_best_only=False
    )
    model().fit(x, y, epochs=2, progress="none", callbacks=[every])
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["e1.safetensors", "e2.safetensors"]
    # save_best_only=False does not need the monitor to be logged
    unlogged = th.callbacks.ModelCheckpoint(
        tmp_path / "x{epoch}.safetensors", monitor="val_acc", save_best_only=False
    )
    model().fit(x, y, epochs=1, progress="none", callbacks=[unlogged])
    with pytest.raises(th.ConfigError, match="must end in .safetensors"):
        th.callbacks.ModelCheckpoint("best.keras")
    seen = []

    class Count(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(batch)

    bad = th.callbacks.ModelCheckpoint(
        tmp_path / "{val_accuracy}.safetensors", save_best_only=False, monitor=None
    )
    with pytest.raises(th.ConfigError, match="cannot fill in the path"):
        model().fit(x, y, epochs=1, progress="none", callbacks=[Count(), bad])
    assert seen == []  # refused before the first batch


def test_a_bad_scheduler_monitor_is_refused_before_the_first_batch():
    x, y = make_classification(n=40)
    seen = []

    class Count(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(batch)

    m = model(
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
        lr_scheduler_monitor="val_acc",
    )
    with pytest.raises(th.ConfigError, match="lr_scheduler_monitor.*'val_acc'"):
        m.fit(x, y, epochs=1, progress="none", callbacks=[Count()])
    assert seen == []


def test_history_params_hold_epochs_and_steps():
    x, y = make_classification(n=40)
    history = model().fit(x, y, epochs=3, batch_size=16, progress="none")
    assert history.params == {"epochs": 3, "steps": 3}


@pytest.mark.parametrize("n,split,train", [(10, 0.25, 7), (10, 0.05, 9), (40, 0.2, 32)])
def test_validation_split_floors_the_training_part_as_keras(n, split, train):
    x, y = make_classification(n=n)
    seen = []

    class Sizes(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(len(logs["target"]))

    model().fit(x, y, epochs=1, batch_size=64, validation_split=split, progress="none", callbacks=[Sizes()])
    assert seen == [train]


def test_stop_training_in_a_batch_hook_stops_after_that_batch():
    x, y = make_classification(n=40)
    seen = []

    class StopAtTwo(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(batch)
            if batch == 2:
                self.model.stop_training = True

    history = model().fit(x, y, epochs=5, batch_size=8, progress="none", callbacks=[StopAtTwo()])
    assert seen == [0, 1, 2] and len(history) == 1


def test_a_frozen_or_weightless_net_can_be_built_evaluated_predicted_and_fitted():
    x, y = make_classification(n=40)
    weightless = th.Model(nn.Softmax(dim=1), loss=nn.NLLLoss(), device="cpu")
    assert weightless.predict(x[:, :3]).shape == (40, 3)
    assert "loss" in weightless.evaluate(x[:, :3].log_softmax(1), y)
    frozen_net = make_net()
    for p in frozen_net.parameters():
        p.requires_grad_(False)
    frozen = th.Model(frozen_net, loss=nn.CrossEntropyLoss(), device="cpu")
    before = [p.clone() for p in frozen_net.parameters()]
    with pytest.warns(UserWarning, match="no trainable parameters"):
        history = frozen.fit(x, y, epochs=2, progress="none")
    assert len(history.history["loss"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(before, frozen_net.parameters()))


def test_tensorboard_logs_the_learning_rate_without_a_scheduler(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = make_classification(n=40)
    model().fit(x, y, epochs=2, progress="none", callbacks=[th.callbacks.TensorBoard(tmp_path)])
    events = EventAccumulator(str(tmp_path / "train")).Reload()
    assert [e.value for e in events.Scalars("epoch/lr")] == pytest.approx([1e-3, 1e-3])


def test_every_hook_is_called_in_keras_order_and_lambda_callback_takes_any_hook():
    x, y = make_classification(n=16)
    calls = []
    hooks = {name: (lambda name: lambda *args: calls.append(name))(name) for name in th.callbacks.base.HOOKS}
    recorder = th.callbacks.LambdaCallback(**hooks, describe=lambda: "mine")
    assert recorder.describe() == "mine"  # other names become methods
    m = model()
    m.fit(x, y, validation_data=(x, y), epochs=1, batch_size=8, progress="none", callbacks=[recorder])
    assert calls == [
        "on_fit_start",
        "on_epoch_start",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_test_begin",
        "on_test_batch_start",
        "on_test_batch_end",
        "on_test_batch_start",
        "on_test_batch_end",
        "on_test_end",
        "on_validation_end",
        "on_epoch_end",
        "on_fit_end",
        "on_fit_exit",
    ]
    calls.clear()
    m.evaluate(x, y, batch_size=16, callbacks=[recorder])
    assert calls == ["on_test_begin", "on_test_batch_start", "on_test_batch_end", "on_test_end"]
    calls.clear()
    m.predict(x, batch_size=8, callbacks=[recorder])
    assert calls == [
        "on_predict_begin",
        "on_predict_batch_start",
        "on_predict_batch_end",
        "on_predict_batch_start",
        "on_predict_batch_end",
        "on_predict_end",
    ]


def test_train_test_and_predict_on_batch():
    x, y = make_classification(n=16)
    m = model(metrics={"acc": "accuracy"})
    reference = model(metrics={"acc": "accuracy"})
    before = m.test_on_batch(x, y, return_dict=True)
    assert set(before) == {"loss", "acc"}
    loss, _acc = m.train_on_batch(x, y)
    assert loss == pytest.approx(before["loss"], rel=1e-6)  # the values of the batch before the step
    reference.fit(x, y, epochs=1, batch_size=16, shuffle=False, progress="none")  # the same one step
    for a, b in zip(m.net.parameters(), reference.net.parameters()):
        assert torch.equal(a, b)
    after = m.test_on_batch(x, y)
    assert isinstance(after, list) and after[0] < before["loss"]
    torch.testing.assert_close(m.predict_on_batch(x), m.predict(x))
    weighted = m.test_on_batch(x, y, sample_weight=torch.zeros(16), return_dict=True)
    assert weighted["loss"] == 0.0 and weighted["acc"] == after[1]  # metrics stay unweighted


def test_csv_logger_separator_and_append(tmp_path):
    x, y = make_classification(n=16)
    path = tmp_path / "log.csv"
    model().fit(x, y, epochs=2, progress="none", callbacks=[th.callbacks.CSVLogger(path, separator=";")])
    assert path.read_text().splitlines()[0] == "epoch;loss"
    model().fit(
        x, y, epochs=1, progress="none", callbacks=[th.callbacks.CSVLogger(path, separator=";", append=True)]
    )
    lines = path.read_text().splitlines()
    assert [line.split(";")[0] for line in lines] == ["epoch", "0", "1", "0"]
    model().fit(x, y, epochs=1, progress="none", callbacks=[th.callbacks.CSVLogger(path, separator=";")])
    assert len(path.read_text().splitlines()) == 2  # append=False starts the file again


def lrs_seen():
    seen = []

    class Record(th.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            seen.append(self.model.optimizer.param_groups[0]["lr"])

    return seen, Record()


def test_learning_rate_scheduler_with_one_or_two_arguments():
    x, y = make_classification(n=16)
    seen, record = lrs_seen()
    one = th.callbacks.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))
    model().fit(x, y, epochs=3, progress="none", callbacks=[one, record])
    assert seen == pytest.approx([0.1, 0.05, 0.1 / 3])
    seen, record = lrs_seen()
    two = th.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    model().fit(x, y, epochs=3, progress="none", callbacks=[two, record])
    assert seen == pytest.approx([5e-4, 2.5e-4, 1.25e-4])
    bad = th.callbacks.LearningRateScheduler(lambda epoch: float("nan"))
    with pytest.raises(th.ConfigError, match="expected a finite number"):
        model().fit(x, y, epochs=1, progress="none", callbacks=[bad])


def test_reduce_lr_on_plateau_as_keras():
    x, y = make_classification(n=16)
    values = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]  # improves once, then never
    m = model(metrics={"score": lambda preds, target: torch.tensor(values[m.epoch])})
    seen, record = lrs_seen()
    plateau = th.callbacks.ReduceLROnPlateau(
        monitor="score", mode="min", factor=0.5, patience=2, cooldown=1, min_lr=2e-4
    )
    m.fit(x, y, epochs=8, batch_size=16, progress="none", callbacks=[plateau, record])
    # 2, 3 do not improve: halved after 3; the cooldown epoch 4 resets the count, which then
    # reaches 2 at 5 (halved) and, after cooldown 6, at 7: halved but floored at min_lr
    assert seen == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 2e-4])
    assert plateau.state_dict()["best"] == 0.5


def test_terminate_on_nan_stops_keeps_the_history_and_saves_no_state(tmp_path):
    x, y = make_classification(n=400)
    x = x.clone()
    x[100, 0] = float("nan")  # batch 12 of 50 (batch size 8) in epoch 2
    m = model()
    history = m.fit(
        torch.cat([x[:8] * 0 + x[:8], x]),
        torch.cat([y[:8], y]),
        epochs=5,
        batch_size=8,
        shuffle=False,
        progress="none",
        run_dir=tmp_path / "r",
        callbacks=[th.callbacks.TerminateOnNaN()],
    )
    assert len(history) == 1 and history.history["loss"][0] != history.history["loss"][0]  # NaN kept
    info = (tmp_path / "r" / "run.json").read_text()
    assert '"stopped_nonfinite"' in info
    assert not (tmp_path / "r" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("ckpt-*")) == []


def test_a_nan_is_found_within_a_bounded_number_of_steps():
    x, y = make_classification(n=800)
    x = x.clone()
    x[8 * 3, 0] = float("nan")  # batch 4 of 100
    steps = []

    class Count(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            steps.append(batch)

    with pytest.raises(th.NonFiniteLossError, match="epoch 1, batch 4"):
        model().fit(x, y, epochs=1, batch_size=8, shuffle=False, progress="none", callbacks=[Count()])
    assert len(steps) <= 32  # not the whole epoch of 100 batches


def test_initial_epoch_and_validation_freq():
    x, y = make_classification(n=16)
    history = model().fit(x, y, epochs=5, initial_epoch=2, progress="none")
    assert history.epoch == [2, 3, 4]
    history = model().fit(x, y, validation_data=(x, y), epochs=4, validation_freq=2, progress="none")
    val = history.history["val_loss"]
    assert val[0] != val[0] and val[2] != val[2]  # NaN: no validation in epochs 1 and 3
    assert val[1] == val[1] and val[3] == val[3]
    with pytest.raises(th.ConfigError, match="validation_freq: expected an int >= 1"):
        model().fit(x, y, validation_freq=0, progress="none")


def test_model_checkpoint_save_freq_batch_and_initial_value_threshold(tmp_path):
    x, y = make_classification(n=40)
    steps = th.callbacks.ModelCheckpoint(
        tmp_path / "e{epoch}-b{batch}.safetensors", monitor=None, save_best_only=False, save_freq=2
    )
    model().fit(x, y, epochs=2, batch_size=8, progress="none", callbacks=[steps])  # 5 steps an epoch
    names = sorted(p.name for p in tmp_path.glob("e*.safetensors"))
    assert names == [
        "e1-b2.safetensors",
        "e1-b4.safetensors",
        "e2-b1.safetensors",
        "e2-b3.safetensors",
        "e2-b5.safetensors",
    ]
    threshold = th.callbacks.ModelCheckpoint(
        tmp_path / "best.safetensors", monitor="loss", initial_value_threshold=1e-6
    )
    model().fit(x, y, epochs=2, progress="none", callbacks=[threshold])
    assert not (tmp_path / "best.safetensors").exists()  # nothing beat the threshold
    with pytest.raises(th.ConfigError, match="with save_freq=2 the only monitor is 'loss'"):
        model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=1,
            progress="none",
            callbacks=[th.callbacks.ModelCheckpoint(tmp_path / "v.safetensors", save_freq=2)],
        )


def test_generators_and_infinite_iterable_datasets_with_steps():
    from torch.utils.data import DataLoader, IterableDataset

    x, y = make_classification(n=64)

    def batches():
        i = 0
        while True:  # infinite, as Keras generators are
            yield x[i % 64 : i % 64 + 8].numpy(), y[i % 64 : i % 64 + 8].numpy()
            i += 8

    seen = []

    class Count(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(float(logs["preds"].sum()))

    history = model().fit(
        batches(),
        epochs=3,
        steps_per_epoch=4,
        validation_data=batches(),
        validation_steps=2,
        progress="none",
        callbacks=[Count()],
    )
    assert len(history) == 3 and len(seen) == 12 and "val_loss" in history.history
    with pytest.raises(th.DataError, match="give steps_per_epoch"):
        model().fit(batches(), epochs=1, progress="none")

    class Forever(IterableDataset):
        def __iter__(self):
            while True:
                yield from zip(x, y)

    history = model().fit(DataLoader(Forever(), batch_size=8), epochs=2, steps_per_epoch=3, progress="none")
    assert len(history) == 2
    assert model().evaluate(DataLoader(Forever(), batch_size=8), steps=2)["loss"] > 0
    assert model().predict(DataLoader(Forever(), batch_size=8), steps=3).shape == (24, 3)


def test_steps_per_epoch_caps_arrays_and_reads_loaders_on():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_classification(n=40)
    history = model().fit(x, y, epochs=2, batch_size=8, steps_per_epoch=2, progress="none")
    assert history.params["steps"] == 2
    firsts = []

    class First(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if batch == 0:
                firsts.append(logs["target"].tolist())

    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 5 batches; 2 per epoch, read on
    model().fit(loader, epochs=3, steps_per_epoch=2, progress="none", callbacks=[First()])
    assert firsts == [y[0:8].tolist(), y[16:24].tolist(), y[32:40].tolist()]


def sgd_model(**kwargs):
    return model(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)


def test_sample_weight_weighs_the_loss_as_keras():
    x, y = make_classification(n=40)
    w = torch.rand(40, generator=torch.Generator().manual_seed(1)) * 2
    m = sgd_model()
    got = m.evaluate(x, y, batch_size=40, sample_weight=w)["loss"]
    with torch.no_grad():
        per_sample = nn.functional.cross_entropy(m.net(x), y, reduction="none")
    assert got == pytest.approx(float((per_sample * w).sum() / 40), rel=1e-5)  # sum(w * l) / N
    val = sgd_model().fit(x, y, validation_data=(x, y, w), epochs=1, progress="none").history["val_loss"][0]
    assert val != pytest.approx(m.evaluate(x, y)["loss"])  # the validation loss is weighted too


def test_class_weight_equals_the_same_sample_weights_and_loaders_carry_weights():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_classification(n=40)
    by_class = sgd_model()
    by_class.fit(x, y, epochs=2, batch_size=8, shuffle=False, class_weight={0: 2.0, 2: 0.5}, progress="none")
    w = torch.tensor([{0: 2.0, 2: 0.5}.get(int(c), 1.0) for c in y])
    by_sample = sgd_model()
    by_sample.fit(x, y, epochs=2, batch_size=8, shuffle=False, sample_weight=w, progress="none")
    by_loader = sgd_model()
    by_loader.fit(DataLoader(TensorDataset(x, y, w), batch_size=8), epochs=2, progress="none")
    for a, b, c in zip(by_class.net.parameters(), by_sample.net.parameters(), by_loader.net.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    zero = sgd_model()
    before = [p.clone() for p in zero.net.parameters()]
    zero.fit(x, y, epochs=1, class_weight={0: 0.0, 1: 0.0, 2: 0.0}, progress="none")
    assert all(torch.equal(a, b) for a, b in zip(before, zero.net.parameters()))
    with pytest.raises(th.ConfigError, match="class_weight: keys must be class indices"):
        sgd_model().fit(x, y, class_weight={"cat": 1.0}, progress="none")
    with pytest.raises(th.DataError, match="one weight per sample"):
        sgd_model().fit(x, y, sample_weight=torch.ones(3), progress="none")


def test_a_custom_step_that_ignores_sample_weights_is_refused():
    from step_models import ReadmeStep

    x, y = make_classification(n=16)
    m = ReadmeStep(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(th.ConfigError, match="ignores the sample weights"):
        m.fit(x, y, sample_weight=torch.ones(16), epochs=1, progress="none")


def test_auc_f1_precision_recall_by_name_follow_the_loss_and_match_torchmetrics():
    classification = pytest.importorskip("torchmetrics.classification")
    torch.manual_seed(0)
    x = torch.randn(60, 4)
    y = (x[:, :1] + 0.3 * torch.randn(60, 1) > 0).float()
    net = nn.Linear(4, 1)
    m = th.Model(net, loss=nn.BCEWithLogitsLoss(), metrics=["auc", "f1", "precision", "recall"], device="cpu")
    got = m.evaluate(x, y, batch_size=7)  # several batches: the state accumulates
    with torch.no_grad():
        probabilities = net(x).sigmoid().reshape(-1)
    target = y.reshape(-1).long()
    assert got["auc"] == pytest.approx(float(classification.BinaryAUROC()(probabilities, target)), rel=1e-5)
    assert got["f1"] == pytest.approx(float(classification.BinaryF1Score()(probabilities, target)), rel=1e-5)
    xc, yc = make_classification(n=60)
    mc = model(metrics={"auc": "auc", "f1": "f1"})
    got = mc.evaluate(xc, yc, batch_size=9)
    with torch.no_grad():
        scores = mc.net(xc).softmax(1)
    expected = classification.MulticlassF1Score(num_classes=3, average="macro")(scores, yc)
    assert got["f1"] == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(th.ConfigError, match="follows the loss"):
        th.Model(nn.Linear(4, 1), loss=nn.MSELoss(), metrics=["auc"], device="cpu")


def test_a_named_metric_survives_a_mid_epoch_resume(tmp_path):
    pytest.importorskip("torchmetrics")
    x, y = make_classification(n=40)

    class Crash(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.global_step == 3:
                raise RuntimeError("crash")

    options = dict(epochs=2, batch_size=8, seed=0, checkpoint_every=2, progress="none")
    reference = model(metrics=["f1"]).fit(x, y, run_dir=tmp_path / "ref", **options)
    with pytest.raises(RuntimeError):
        model(metrics=["f1"]).fit(x, y, run_dir=tmp_path / "run", callbacks=[Crash()], **options)
    resumed = model(metrics=["f1"]).fit(x, y, run_dir=tmp_path / "run", resume=True, **options)
    assert resumed.history == reference.history


def test_a_torchmetrics_object_with_list_states_survives_a_mid_epoch_resume(tmp_path):
    """AUROC without thresholds keeps every batch's outputs in lists: they are restored through
    torchmetrics' public load_state_dict, and the cached result of the crashed run is not reused."""
    torchmetrics = pytest.importorskip("torchmetrics")
    x, y = make_classification(n=40)

    class Crash(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.global_step == 3:
                raise RuntimeError("crash")

    def auroc():
        return {"auroc": torchmetrics.classification.MulticlassAUROC(num_classes=3, average="macro")}

    options = dict(epochs=2, batch_size=8, seed=0, checkpoint_every=2, progress="none")
    reference = model(metrics=auroc()).fit(x, y, run_dir=tmp_path / "ref", **options)
    with pytest.raises(RuntimeError):
        model(metrics=auroc()).fit(x, y, run_dir=tmp_path / "run", callbacks=[Crash()], **options)
    resumed = model(metrics=auroc()).fit(x, y, run_dir=tmp_path / "run", resume=True, **options)
    assert resumed.history == reference.history
    assert resumed.history["auroc"][0] == reference.history["auroc"][0]


def test_weighted_metrics_follow_the_sample_weights_and_metrics_do_not():
    x, y = make_classification(n=40)
    w = torch.rand(40, generator=torch.Generator().manual_seed(3))
    m = model(metrics={"acc": "accuracy"}, weighted_metrics={"wacc": "accuracy"})
    got = m.evaluate(x, y, batch_size=16, sample_weight=w)  # three batches: 16, 16, 8
    with torch.no_grad():
        correct = (m.net(x).argmax(1) == y).float()
    keras_rule = float((w * correct).sum() / w.sum())  # sum(w * value) / sum(w)
    assert got["wacc"] == pytest.approx(keras_rule, rel=1e-5)
    assert got["acc"] == pytest.approx(float(correct.mean()), rel=1e-5)  # unweighted
    plain = m.evaluate(x, y, batch_size=16)
    assert plain["wacc"] == pytest.approx(plain["acc"], rel=1e-6)  # weight 1 without weights
    torchmetrics = pytest.importorskip("torchmetrics")
    with pytest.raises(th.ConfigError, match="a metric object takes no sample weights"):
        model(weighted_metrics={"a": torchmetrics.classification.MulticlassAccuracy(num_classes=3)})
    with pytest.raises(th.ConfigError, match="in metrics"):
        model(metrics={"acc": "accuracy"}, weighted_metrics={"acc": "accuracy"})


def test_weighted_metrics_in_fit_are_logged_for_training_and_validation():
    x, y = make_classification(n=40)
    w = torch.ones(40)
    w[:20] = 0.0
    history = model(weighted_metrics={"wacc": "accuracy"}).fit(
        x, y, sample_weight=w, validation_data=(x, y, w), epochs=2, progress="none"
    )
    assert {"wacc", "val_wacc"} <= set(history.history)


def test_the_issue_api_block_signatures_hold_positionally():
    import inspect

    expected = {
        th.callbacks.ReduceLROnPlateau: [
            "monitor",
            "factor",
            "patience",
            "mode",
            "min_delta",
            "cooldown",
            "min_lr",
        ],
        th.callbacks.CSVLogger: ["path", "separator", "append"],
        th.callbacks.LearningRateScheduler: ["schedule"],
        th.Model.train_on_batch: ["self", "x", "y", "sample_weight", "class_weight", "return_dict"],
        th.Model.test_on_batch: ["self", "x", "y", "sample_weight", "return_dict"],
        th.Model.predict_on_batch: ["self", "x"],
    }
    for function, names in expected.items():
        parameters = list(inspect.signature(function).parameters)
        assert parameters[: len(names)] == names, function


def test_callback_paths_are_checked_before_the_first_batch(tmp_path):
    x, y = make_classification(n=16)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    seen = []

    class Count(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(batch)

    for callback in (
        th.callbacks.CSVLogger(blocker / "log.csv"),
        th.callbacks.ModelCheckpoint(blocker / "m.safetensors", monitor="loss"),
    ):
        with pytest.raises(th.ConfigError, match="cannot create the folder"):
            model().fit(x, y, epochs=1, progress="none", callbacks=[Count(), callback])
    assert seen == []


class CrashAtStep(th.callbacks.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.model.global_step == self.step:
            raise RuntimeError("crash")


def test_sample_weights_and_weighted_metrics_resume_mid_epoch_exactly(tmp_path):
    x, y = make_classification(n=40)
    w = torch.rand(40, generator=torch.Generator().manual_seed(5))
    options = dict(epochs=2, batch_size=8, seed=0, checkpoint_every=2, sample_weight=w, progress="none")
    reference = model(weighted_metrics={"wacc": "accuracy"}).fit(x, y, run_dir=tmp_path / "ref", **options)
    with pytest.raises(RuntimeError, match="crash"):
        model(weighted_metrics={"wacc": "accuracy"}).fit(
            x, y, run_dir=tmp_path / "run", callbacks=[CrashAtStep(3)], **options
        )
    resumed = model(weighted_metrics={"wacc": "accuracy"}).fit(
        x, y, run_dir=tmp_path / "run", resume=True, **options
    )
    assert resumed.history == reference.history


@pytest.mark.parametrize("checkpoint_every", [2, "epoch"])
def test_a_loader_read_on_across_epochs_resumes_where_its_pass_stood(checkpoint_every, tmp_path):
    """steps_per_epoch=4 over a shuffled 5-batch loader: epochs cut across the loader's passes;
    killed at step 7 (mid-pass) and resumed, the run ends as the run never killed."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_classification(n=40)

    def loader():
        return DataLoader(
            TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)
        )

    def dropout_model():
        return th.Model(make_net(dropout=0.3), loss=nn.CrossEntropyLoss(), device="cpu")

    options = dict(epochs=3, steps_per_epoch=4, checkpoint_every=checkpoint_every, progress="none")
    reference_model = dropout_model()
    reference = reference_model.fit(loader(), run_dir=tmp_path / "ref", **options)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="crash"):
        dropout_model().fit(loader(), run_dir=tmp_path / "r", callbacks=[CrashAtStep(7)], **options)
    torch.manual_seed(123)  # another global RNG state: the saved one must be used
    resumed_model = dropout_model()
    resumed = resumed_model.fit(loader(), run_dir=tmp_path / "r", resume=True, **options)
    assert resumed.history == reference.history
    assert params_equal(resumed_model.net, reference_model.net)


def test_an_infinite_stream_with_steps_resumes_where_it_stood(tmp_path):
    from torch.utils.data import DataLoader, IterableDataset

    x, y = make_classification(n=64)

    class Forever(IterableDataset):
        def __iter__(self):
            i = 0
            while True:  # noise drawn from the global RNG while the stream is read
                yield x[i % 64] + 0.01 * torch.randn(6), y[i % 64]
                i += 1

    options = dict(epochs=3, steps_per_epoch=3, checkpoint_every="epoch", progress="none")
    reference_model = model()
    reference = reference_model.fit(
        DataLoader(Forever(), batch_size=8), run_dir=tmp_path / "ref", seed=1, **options
    )
    with pytest.raises(RuntimeError, match="crash"):
        model().fit(
            DataLoader(Forever(), batch_size=8),
            run_dir=tmp_path / "r",
            seed=1,
            callbacks=[CrashAtStep(5)],
            **options,
        )
    resumed_model = model()
    resumed = resumed_model.fit(
        DataLoader(Forever(), batch_size=8), run_dir=tmp_path / "r", seed=1, resume=True, **options
    )
    assert resumed.history == reference.history
    assert params_equal(resumed_model.net, reference_model.net)


def test_data_without_a_length_needs_a_bound_everywhere():
    from torch.utils.data import DataLoader, IterableDataset

    x, y = make_classification(n=16)

    class Forever(IterableDataset):
        def __iter__(self):
            while True:
                yield from zip(x, y)

    stream = DataLoader(Forever(), batch_size=8)
    with pytest.raises(th.DataError, match="give steps_per_epoch=N"):
        model().fit(stream, epochs=1, progress="none")
    with pytest.raises(th.DataError, match="give validation_steps=N"):
        model().fit(x, y, validation_data=stream, epochs=1, progress="none")
    with pytest.raises(th.DataError, match="give steps=N"):
        model().evaluate(stream)
    with pytest.raises(th.DataError, match="give steps=N"):
        model().predict(stream)
