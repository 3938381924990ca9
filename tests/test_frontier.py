"""Fast paths and conveniences at the frontier: each is exact, or steps aside, or refuses.

Every test compares with an independent reference: torchmetrics updated per batch, torch's
own loss, a hand-written loop, or the same fit without the convenience.
"""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler, TensorDataset

import torchhouse as th
from conftest import make_classification, make_net, params_equal

torchmetrics = pytest.importorskip("torchmetrics")


def model(**kwargs):
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    return th.Model(make_net(), device="cpu", **kwargs)


def sgd(net=None, lr=0.1, **kwargs):
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    return th.Model(net or make_net(), optimizer=lambda p: torch.optim.SGD(p, lr=lr), device="cpu", **kwargs)


# --------------------------------------------------------------------------- metric batching


class MinOfBatches(torchmetrics.Metric):
    """Not a sum: the smallest per-batch accuracy (full_state_update=False all the same)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("low", default=torch.tensor(2.0), dist_reduce_fx="min")

    def update(self, preds, target):
        self.low = torch.minimum(self.low, (preds.argmax(1) == target).float().mean())

    def compute(self):
        return self.low


class UpdateCounter(torchmetrics.Metric):
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("calls", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds, target):
        self.calls += 1

    def compute(self):
        return self.calls


class MeanOfBatchMeans(torchmetrics.Metric):
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("batches", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds, target):
        self.total += (preds.argmax(1) == target).float().mean()
        self.batches += 1

    def compute(self):
        return self.total / self.batches


class SideEffect(torchmetrics.Metric):
    full_state_update = False
    seen: list

    def __init__(self):
        super().__init__()
        self.add_state("n", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.seen = []

    def update(self, preds, target):
        self.seen.append(len(target))
        self.n += len(target)

    def compute(self):
        return self.n


@pytest.mark.parametrize("make", [MinOfBatches, UpdateCounter, MeanOfBatchMeans, SideEffect])
def test_metrics_that_are_not_sums_are_updated_per_batch(make):
    x, y = make_classification(n=100)
    trained = model(metrics={"m": make()})
    got = trained.evaluate(x, y, batch_size=8)["m"]
    reference = make()
    trained.net.eval()
    with torch.no_grad():
        for i in range(0, 100, 8):
            reference.update(trained.net(x[i : i + 8]), y[i : i + 8])
    assert got == as_float32_prints(reference.compute())


def as_float32_prints(value: torch.Tensor) -> float:
    """What `evaluate` reports for a float32 result: the float32 as it prints (0.475, not
    0.4749999940395355), the same float32 value."""
    assert value.dtype == torch.float32
    return float(str(value.numpy()))


class ReusedBuffers:
    """A collate_fn that writes every batch into the same two tensors (as fast loaders do)."""

    def __init__(self, batch_size, features):
        self.x = torch.empty(batch_size, features)
        self.y = torch.empty(batch_size, dtype=torch.long)

    def __call__(self, items):
        n = len(items)
        for i, (xi, yi) in enumerate(items):
            self.x[i], self.y[i] = xi, yi
        return self.x[:n], self.y[:n]


def test_a_collate_fn_that_reuses_its_buffers_counts_like_a_per_batch_update():
    x, y = make_classification(n=200)
    dataset = TensorDataset(x, y)
    make = lambda: torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
    trained = model(metrics={"acc": make()})
    reused = DataLoader(dataset, batch_size=8, collate_fn=ReusedBuffers(8, 6))
    got = trained.evaluate(reused)["acc"]
    reference = make()
    trained.net.eval()
    with torch.no_grad():
        for xb, yb in DataLoader(dataset, batch_size=8):
            reference.update(trained.net(xb), yb)
    assert got == as_float32_prints(reference.compute())


def test_only_known_sums_are_batched():
    from torchhouse.metrics import EpochMetrics

    class MyAccuracy(torchmetrics.classification.MulticlassAccuracy):  # may override update
        pass

    metrics = {
        "acc": torchmetrics.classification.MulticlassAccuracy(num_classes=3),
        "auc": torchmetrics.classification.MulticlassAUROC(num_classes=3),
        "named": th.metrics.resolve_metric("f1", nn.CrossEntropyLoss(), "named"),
        "mine": MyAccuracy(num_classes=3),
        "mse": torchmetrics.MeanSquaredError(),
        "min": MinOfBatches(),
    }
    acc = EpochMetrics(metrics, torch.device("cpu"), capacity=4)
    assert sorted(acc.batched) == ["acc", "auc", "named"]
    assert sorted(acc.per_step) == ["min", "mine", "mse"]


# --------------------------------------------------------------------------- a third batch element


def test_an_integer_third_tensor_is_refused_not_read_as_weights():
    x, y = make_classification(n=40)
    index = torch.arange(40)
    loader = DataLoader(TensorDataset(x, y, index), batch_size=8)
    with pytest.raises(th.DataError, match="third element.*floating vector.*unpack_batch"):
        model().fit(loader, epochs=1, progress="none")
    weights = torch.rand(40)
    weighted = DataLoader(TensorDataset(x, y, weights), batch_size=8)
    model().fit(weighted, epochs=1, progress="none")  # floats of the batch's length: weights
    with pytest.raises(th.DataError, match="third element"):
        model().fit(
            DataLoader(TensorDataset(x, y, torch.rand(40, 2)), batch_size=8), epochs=1, progress="none"
        )


def test_an_extra_column_carried_with_unpack_batch_trains_like_no_column():
    x, y = make_classification(n=40)

    class WithIndex(th.Model):
        def unpack_batch(self, batch):
            (inputs, _index), target = batch
            return inputs, target

    class Pairs(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return (x[i], i), y[i]

    with_index = WithIndex(
        make_net(), loss=nn.CrossEntropyLoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), device="cpu"
    )
    with_index.fit(DataLoader(Pairs(), batch_size=8), epochs=2, progress="none")
    plain = sgd()
    plain.fit(DataLoader(TensorDataset(x, y), batch_size=8), epochs=2, progress="none")
    assert params_equal(with_index.net, plain.net)


class SeesZeros(th.callbacks.Callback):
    """Records, per epoch, whether the first batch's predictions are the net's on zeros."""

    def __init__(self):
        self.zeros = []

    def on_train_batch_start(self, batch, logs):
        if batch == 0:
            with torch.no_grad():
                self.expected = self.model.net(torch.zeros(8, 6))

    def on_train_batch_end(self, batch, logs):
        if batch == 0:
            self.zeros.append(torch.equal(logs["preds"], self.expected))


def test_the_loader_fast_path_sees_the_datasets_tensors_rebound_or_changed_in_place():
    x, y = make_classification(n=32)
    dataset = TensorDataset(x.clone(), y)
    loader = DataLoader(dataset, batch_size=8)

    class Swap(th.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                dataset.tensors = (torch.zeros(32, 6), y)  # epoch 2 must train on zeros

    watch = SeesZeros()
    trained = model()
    trained.fit(loader, epochs=2, progress="none", callbacks=[Swap(), watch])
    assert watch.zeros == [False, True]
    dataset.tensors = (x.clone(), y)
    watch = SeesZeros()
    trained.fit(loader, epochs=1, progress="none", callbacks=[watch])
    dataset.tensors[0].zero_()  # changed in place between two fits
    trained.fit(loader, epochs=1, progress="none", callbacks=[watch])
    assert watch.zeros == [False, True]


# --------------------------------------------------------------------------- sample and class weights

LOSSES = {
    "CrossEntropyLoss": (nn.CrossEntropyLoss(), "classes"),
    "CrossEntropyLoss(weight)": (nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 3.0])), "classes"),
    "CrossEntropyLoss(ignore_index)": (nn.CrossEntropyLoss(ignore_index=1), "classes"),
    "CrossEntropyLoss(sum)": (nn.CrossEntropyLoss(reduction="sum"), "classes"),
    "CrossEntropyLoss(probabilities)": (nn.CrossEntropyLoss(), "probabilities"),
    "NLLLoss(weight)": (nn.NLLLoss(weight=torch.tensor([0.2, 1.0, 3.0])), "log_probs"),
    "MSELoss": (nn.MSELoss(), "regression"),
    "MSELoss(sum)": (nn.MSELoss(reduction="sum"), "regression"),
    "L1Loss": (nn.L1Loss(), "regression"),
    "HuberLoss": (nn.HuberLoss(), "regression"),
    "SmoothL1Loss": (nn.SmoothL1Loss(), "regression"),
    "BCEWithLogitsLoss(pos_weight)": (
        nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 0.5])),
        "binary",
    ),
    "BCELoss": (nn.BCELoss(), "binary_probabilities"),
    "KLDivLoss(batchmean)": (nn.KLDivLoss(reduction="batchmean"), "kl"),
    "PoissonNLLLoss": (nn.PoissonNLLLoss(), "counts"),
    "MultiLabelSoftMarginLoss": (nn.MultiLabelSoftMarginLoss(), "binary"),
}


class Head(nn.Module):
    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        out = self.body(x)
        if self.kind == "log_probs" or self.kind == "kl":
            return out.log_softmax(1)
        if self.kind == "binary_probabilities":
            return out.sigmoid()
        return out


def targets(kind, n=40):
    g = torch.Generator().manual_seed(1)
    if kind in ("classes", "log_probs"):
        return torch.randint(0, 3, (n,), generator=g)
    if kind in ("probabilities", "kl"):
        return torch.rand(n, 3, generator=g).softmax(1)
    if kind in ("binary", "binary_probabilities"):
        return (torch.rand(n, 3, generator=g) > 0.5).float()
    if kind == "counts":
        return torch.randint(0, 5, (n, 3), generator=g).float()
    return torch.randn(n, 3, generator=g)


@pytest.mark.parametrize("name", list(LOSSES))
def test_weights_of_one_equal_no_weights_bit_for_bit(name):
    loss, kind = LOSSES[name]
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    y = targets(kind)
    plain = sgd(Head(kind), lr=0.01, loss=loss)
    ones = sgd(Head(kind), lr=0.01, loss=loss)
    plain.fit(x, y, epochs=2, batch_size=8, shuffle=False, progress="none")
    ones.fit(x, y, epochs=2, batch_size=8, shuffle=False, progress="none", sample_weight=torch.ones(40))
    assert params_equal(plain.net, ones.net)
    assert plain.history.history == ones.history.history
    if kind in ("classes", "binary", "binary_probabilities"):
        by_class = sgd(Head(kind), lr=0.01, loss=loss)
        by_class.fit(
            x, y, epochs=2, batch_size=8, shuffle=False, progress="none", class_weight={0: 1.0, 1: 1.0}
        )
        assert params_equal(plain.net, by_class.net)


def test_weights_scale_each_samples_loss_and_keep_the_losses_own_normaliser():
    x = torch.randn(12, 3)
    y = torch.tensor([0, 1, 2, 1, 0, 2, 1, 1, 0, 2, 2, 0])
    w = torch.rand(12)
    class_weight = torch.tensor([0.5, 2.0, 1.0])
    loss = nn.CrossEntropyLoss(weight=class_weight, ignore_index=2)
    got = th.Model(nn.Identity(), loss=loss, device="cpu").compute_loss(x, y, w)
    per_sample = nn.functional.cross_entropy(x, y, weight=class_weight, ignore_index=2, reduction="none")
    kept = y != 2
    expected = (per_sample * w).sum() / class_weight[y[kept]].sum()
    torch.testing.assert_close(got, expected)


def test_unsupported_weighted_losses_and_loaders_are_refused_with_the_way_out():
    x, y = make_classification(n=16)
    with pytest.raises(th.ConfigError, match="label_smoothing"):
        model(loss=nn.CrossEntropyLoss(label_smoothing=0.1)).fit(
            x, y, epochs=1, sample_weight=torch.rand(16), progress="none"
        )
    with pytest.raises(th.ConfigError, match="override Model.compute_loss"):
        th.Model(nn.Linear(6, 1), loss=nn.MarginRankingLoss(), device="cpu").compute_loss(
            torch.randn(4, 1), torch.ones(4, 1), torch.ones(4)
        )
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(th.DataError, match="sample_weight is for arrays.*third element"):
        model().fit(loader, sample_weight=torch.zeros(16), epochs=1, progress="none")
    with pytest.raises(th.DataError, match="sample_weight is for arrays"):
        model().fit(TensorDataset(x, y), sample_weight=torch.zeros(16), epochs=1, progress="none")


def test_class_weight_rounds_binary_labels_and_weighs_missing_classes_one():
    from torchhouse.train.losses import class_weights_of

    table = torch.tensor([2.0])  # only class 0 named
    assert class_weights_of(table, torch.tensor([0, 1, 1, 0])).tolist() == [2.0, 1.0, 1.0, 2.0]
    soft = torch.tensor([[0.2], [0.7], [0.4]])  # one column of probabilities: rounded, as Keras
    assert class_weights_of(torch.tensor([3.0, 5.0]), soft).tolist() == [3.0, 5.0, 3.0]
    assert class_weights_of(table, torch.tensor([-100, 0])).tolist() == [1.0, 2.0]  # ignore_index
    with pytest.raises(th.DataError, match="a class per position"):
        class_weights_of(table, torch.zeros(2, 5, dtype=torch.long))
    x, y = make_classification(n=30, classes=2)
    history = model(loss=nn.CrossEntropyLoss()).fit(x, y, epochs=1, class_weight={0: 2.0}, progress="none")
    assert len(history) == 1


# --------------------------------------------------------------------------- resume with loaders


def loader_fit(run, loader, epochs=2, **kwargs):
    return model().fit(loader, epochs=epochs, run_dir=run, progress="none", seed=0, **kwargs)


def test_a_loader_run_refuses_other_data_another_shuffle_or_sampler(tmp_path):
    x, y = make_classification(n=40)
    run = tmp_path / "r"
    loader_fit(run, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), epochs=1)
    other = x.clone()
    other[5, 0] += 1
    with pytest.raises(th.CheckpointError, match="items_sha256"):
        loader_fit(run, DataLoader(TensorDataset(other, y), batch_size=8, shuffle=True), resume=True)
    with pytest.raises(th.CheckpointError, match="shuffle: saved True, now False"):
        loader_fit(run, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False), resume=True)
    sampler = SubsetRandomSampler(range(40))
    with pytest.raises(th.CheckpointError, match="sampler.class"):
        loader_fit(run, DataLoader(TensorDataset(x, y), batch_size=8, sampler=sampler), resume=True)
    history = loader_fit(run, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), resume=True)
    assert history.epoch == [0, 1]


class Items(Dataset):
    """A map-style dataset (not a TensorDataset) that adds noise drawn from the global RNG."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.01 * torch.randn(self.x.shape[1]), self.y[i]


def test_a_dataset_run_refuses_other_items_even_with_random_augmentation(tmp_path):
    x, y = make_classification(n=40)
    run = tmp_path / "r"
    loader_fit(run, DataLoader(Items(x, y), batch_size=8), epochs=1)
    torch.manual_seed(99)  # the fingerprint reads items under its own seed: the same hash
    history = loader_fit(run, DataLoader(Items(x, y), batch_size=8), resume=True)
    assert history.epoch == [0, 1]
    other = x * 2  # other data of the same size
    run2 = tmp_path / "r2"
    loader_fit(run2, DataLoader(Items(x, y), batch_size=8), epochs=1)
    with pytest.raises(th.CheckpointError, match="items_sha256"):
        loader_fit(run2, DataLoader(Items(other, y), batch_size=8), resume=True)


def test_persistent_workers_are_refused_on_resume_and_said_at_the_start(tmp_path):
    x, y = make_classification(n=32)
    run = tmp_path / "r"

    def loader():
        return DataLoader(Items(x, y), batch_size=8, num_workers=1, persistent_workers=True)

    with pytest.warns(UserWarning, match="cannot be resumed exactly.*persistent_workers=True"):
        loader_fit(run, loader(), epochs=1)
    with pytest.raises(th.CheckpointError, match="persistent_workers=True"):
        loader_fit(run, loader(), resume=True)


class CrashAtStep(th.callbacks.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.model.global_step == self.step:
            raise RuntimeError("crash")


def test_a_per_step_scheduler_logs_the_lr_of_the_last_step_also_after_a_mid_epoch_resume(tmp_path):
    x, y = make_classification(n=40)

    def scheduled():
        return th.Model(
            make_net(),
            loss=nn.CrossEntropyLoss(),
            device="cpu",
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=8),
            lr_scheduler_interval="step",
        )

    options = dict(epochs=2, batch_size=8, seed=0, checkpoint_every=2, progress="none")
    reference = scheduled().fit(x, y, run_dir=tmp_path / "ref", **options)
    # 5 steps an epoch; the last step of epoch 1 is step 5, which used lr 1e-3 * (0.1 + 0.9 * 4/8)
    assert reference.history["lr"][0] == pytest.approx(1e-3 * (0.1 + 0.9 * 4 / 8))
    with pytest.raises(RuntimeError, match="crash"):
        scheduled().fit(x, y, run_dir=tmp_path / "r", callbacks=[CrashAtStep(8)], **options)
    resumed = scheduled().fit(x, y, run_dir=tmp_path / "r", resume=True, **options)
    assert resumed.history == reference.history


def test_an_lr_callback_puts_the_lr_in_the_history():
    x, y = make_classification(n=40)
    warm_up = th.callbacks.LearningRateScheduler(lambda epoch: 1e-4 * (epoch + 1))
    history = model().fit(x, y, epochs=3, progress="none", callbacks=[warm_up])
    assert history.history["lr"] == pytest.approx([1e-4, 2e-4, 3e-4])


# --------------------------------------------------------------------------- the global RNG


def test_shuffle_false_on_arrays_draws_nothing_from_the_global_rng():
    x, y = make_classification(n=40)
    untrained = model(loss=nn.CrossEntropyLoss())
    torch.manual_seed(7)
    untrained.fit(x, y, epochs=1, shuffle=False, progress="none")
    after_fit = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_fit, torch.rand(3))


def test_dropout_without_seed_or_shuffle_equals_the_plain_slicing_loop():
    x, y = make_classification(n=40)
    torch.manual_seed(3)
    net = make_net(dropout=0.5)
    hand = make_net(dropout=0.5)
    hand.load_state_dict(net.state_dict())
    torch.manual_seed(11)
    th.Model(
        net, loss=nn.CrossEntropyLoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), device="cpu"
    ).fit(x, y, epochs=3, batch_size=8, shuffle=False, progress="none")
    torch.manual_seed(11)
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)
    for _ in range(3):
        for i in range(0, 40, 8):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(hand(x[i : i + 8]), y[i : i + 8]).backward()
            opt.step()
    assert params_equal(net, hand)


# --------------------------------------------------------------------------- DataFrames by name


def test_predict_and_evaluate_on_a_dataframe_match_columns_by_name():
    pd = pytest.importorskip("pandas")
    x, y = make_classification(n=40)
    frame = pd.DataFrame(x.numpy(), columns=[f"f{i}" for i in range(6)])
    trained = model()
    trained.fit(frame, pd.Series(y.numpy()), epochs=1, progress="none")
    expected = trained.predict(frame)
    shuffled = frame[["f3", "f0", "f5", "f1", "f4", "f2"]]
    torch.testing.assert_close(trained.predict(shuffled), expected)
    assert trained.evaluate(shuffled, pd.Series(y.numpy())) == trained.evaluate(frame, pd.Series(y.numpy()))
    with pytest.raises(th.DataError, match="missing column.*f5"):
        trained.predict(frame.drop(columns=["f5"]))
    with pytest.raises(th.DataError, match="unknown column.*extra"):
        trained.predict(frame.assign(extra=1.0))
    trained.predict(x)  # a plain array is taken by position, as in training


def test_the_trained_columns_travel_with_saved_weights(tmp_path):
    pd = pytest.importorskip("pandas")
    x, y = make_classification(n=40)
    frame = pd.DataFrame(x.numpy(), columns=[f"f{i}" for i in range(6)])
    trained = model()
    trained.fit(frame, pd.Series(y.numpy()), epochs=1, progress="none")
    trained.save(tmp_path / "m.safetensors")
    loaded = model()
    loaded.load_weights(tmp_path / "m.safetensors")
    reordered = frame[list(reversed(frame.columns))]
    torch.testing.assert_close(loaded.predict(reordered), trained.predict(frame))


# --------------------------------------------------------------------------- ignored targets


def test_named_accuracy_leaves_out_ignored_targets():
    from torchhouse.metrics import EpochMetrics

    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], [[0.0, 2.0], [2.0, 0.0], [0.0, 2.0]]])
    labels = torch.tensor([[0, -100, -100], [1, 1, -100]])  # 3 labelled tokens, 2 right
    acc = th.metrics.resolve_metric("acc", None, "acc")  # loss=None: a Hugging Face own-loss net
    epoch = EpochMetrics({"acc": acc}, torch.device("cpu"), capacity=2)
    epoch.update({"loss": torch.tensor(1.0), "preds": logits, "target": labels}, 2)
    assert epoch.compute()["acc"] == pytest.approx(2 / 3)
    with_ce = th.metrics.resolve_metric("accuracy", nn.CrossEntropyLoss(ignore_index=-100), "acc")
    epoch = EpochMetrics({"acc": with_ce}, torch.device("cpu"), capacity=2)
    epoch.update({"loss": torch.tensor(1.0), "preds": logits.reshape(6, 2), "target": labels.reshape(6)}, 6)
    assert epoch.compute()["acc"] == pytest.approx(2 / 3)


def test_token_accuracy_over_an_epoch_counts_labelled_tokens_not_sequences():
    """Two batches with 1 and 9 labelled tokens: the epoch's accuracy is over the 10 tokens."""
    from torchhouse.metrics import EpochMetrics

    acc = th.metrics.resolve_metric("acc", None, "acc")
    epoch = EpochMetrics({"acc": acc}, torch.device("cpu"), capacity=2)
    right = torch.tensor([[[5.0, 0.0]] * 9])  # predicts 0 everywhere
    one = torch.full((1, 9), -100)
    one[0, 0] = 0  # 1 labelled token, right
    nine = torch.ones(1, 9, dtype=torch.long)  # 9 labelled tokens, all wrong
    epoch.update({"loss": torch.tensor(1.0), "preds": right, "target": one}, 1)
    epoch.update({"loss": torch.tensor(1.0), "preds": right, "target": nine}, 1)
    assert epoch.compute()["acc"] == pytest.approx(1 / 10)


@pytest.mark.parametrize(
    "sampler",
    [
        lambda n: SubsetRandomSampler(range(n)),
        lambda n: torch.utils.data.WeightedRandomSampler(torch.ones(n), n),
    ],
)
def test_predict_warns_for_any_sampler_that_is_not_in_order(sampler):
    x, y = make_classification(n=16)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, sampler=sampler(16))
    with pytest.warns(UserWarning, match="not in the dataset's order.*shuffle=False"):
        model().predict(loader)
