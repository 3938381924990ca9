"""What users porting from Hugging Face, Lightning, Keras and Kaggle reached for (issue 26):
collators, lists of batches, the best checkpoint after the fact, the loader's truth in
config.json, a DataModule."""

import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.frontends.cli import main


def model(**kwargs):
    torch.manual_seed(0)
    return th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", **kwargs)


class Ragged(Dataset):
    """Rows of different lengths, as tokenized text without padding is."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.rows = [torch.randn(int(torch.randint(2, 7, (1,), generator=g)), generator=g) for _ in range(n)]
        self.labels = [int(r.sum() > 0) for r in self.rows]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i], self.labels[i]


def pad(rows):
    """A collate_fn: pad every row to the batch's longest with zeros, and stack the labels."""
    longest = max(len(x) for x, _ in rows)
    x = torch.stack([nn.functional.pad(x, (0, longest - len(x))) for x, _ in rows])
    return x.mean(dim=1, keepdim=True).expand(-1, 6).contiguous(), torch.tensor([y for _, y in rows])


# --------------------------------------------------------------------------- collate_fn


def test_a_ragged_dataset_without_a_collator_names_collate_fn():
    with pytest.raises(th.DataError, match="different shapes.*collate_fn"):
        model().fit(Ragged(), epochs=1, batch_size=8, progress="none")


def test_collate_fn_batches_a_dataset_in_fit_validation_evaluate_and_predict():
    data = Ragged()
    m = model(metrics=["acc"])
    history = m.fit(data, validation_data=Ragged(12), collate_fn=pad, epochs=2, batch_size=8, progress="none")
    assert len(history.history["val_acc"]) == 2
    # the same as a DataLoader built with that collate_fn, batch for batch (no shuffling)
    reference = model(metrics=["acc"])
    reference.fit(DataLoader(data, batch_size=8, collate_fn=pad), epochs=1, progress="none")
    again = model(metrics=["acc"])
    again.fit(data, collate_fn=pad, epochs=1, batch_size=8, shuffle=False, progress="none")
    for a, b in zip(reference.net.parameters(), again.net.parameters()):
        assert torch.equal(a, b)
    assert m.evaluate(data, collate_fn=pad, batch_size=5)["acc"] == pytest.approx(
        m.evaluate(DataLoader(data, batch_size=5, collate_fn=pad))["acc"]
    )
    assert m.predict(data, collate_fn=pad, batch_size=5).shape == (24, 3)


def test_collate_fn_is_refused_where_it_would_be_ignored():
    x, y = make_classification(n=16)
    with pytest.raises(th.DataError, match="DataLoader.*its own collate_fn"):
        model().fit(DataLoader(TensorDataset(x, y)), collate_fn=pad, progress="none")
    with pytest.raises(th.DataError, match="batched by slicing"):
        model().fit(x, y, collate_fn=pad, progress="none")
    with pytest.raises(th.DataError, match="expected a function"):
        model().fit(Ragged(), collate_fn="pad", progress="none")


def test_a_hugging_face_dataset_with_a_padding_collator():
    pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from hf_sentiment_words import small_bert, train_tokenizer
    from transformers import DataCollatorWithPadding

    words, labels, _ = th.datasets.load_sentiment_words()
    table = datasets.Dataset.from_dict({"text": words, "label": labels.tolist()}).shuffle(seed=0)
    table = table.select(range(300))
    tokenizer = train_tokenizer(table["text"])
    tokenized = table.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=8), batched=True)
    assert len({len(ids) for ids in tokenized["input_ids"]}) > 1  # rows of different lengths
    net = th.Model(small_bert(tokenizer.vocab_size), loss=None, metrics=["acc"], device="cpu")
    with pytest.raises(th.DataError, match="collate_fn"):
        net.fit(tokenized, epochs=1, batch_size=32, progress="none")
    collator = DataCollatorWithPadding(tokenizer=tokenizer)
    history = net.fit(tokenized, collate_fn=collator, epochs=1, batch_size=32, progress="none")
    assert torch.isfinite(torch.tensor(history.history["loss"])).all()
    assert net.predict(tokenized, collate_fn=collator, batch_size=64).shape == (300, 2)


# --------------------------------------------------------------------------- a list of batches


def test_a_list_of_batches_trains_as_the_loop_over_it_does():
    x, y = make_classification(n=40)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]
    m = model()
    m.fit(batches, epochs=2, progress="none")
    torch.manual_seed(0)
    net, loss_fn = make_net(), nn.CrossEntropyLoss()
    optimizer = th.train.building.default_optimizer(net.parameters())
    for _ in range(2):
        for xb, yb in batches:
            optimizer.zero_grad()
            loss_fn(net(xb), yb).backward()
            optimizer.step()
    for a, b in zip(m.net.parameters(), net.parameters()):
        assert torch.equal(a, b)
    assert m.evaluate(batches)["loss"] == pytest.approx(m.evaluate(x, y)["loss"], rel=1e-6)
    history = m.fit(batches, validation_data=batches[:2], epochs=1, progress="none")
    assert "val_loss" in history.history


def test_a_list_that_is_not_batches_says_what_it_was_read_as():
    x, y = make_classification(n=8)
    with pytest.raises(th.DataError, match=r"list of \(inputs, target\) batches.*x\[1\]"):
        model().fit([(x, y), x], progress="none")
    with pytest.raises(th.DataError, match="empty list"):
        model().fit([], progress="none")
    # a pair of arrays in a list is still validation data
    history = model().fit(x, y, validation_data=[x, y], epochs=1, progress="none")
    assert "val_loss" in history.history


# --------------------------------------------------------------------------- the best state


def fit_run(run, **kwargs):
    x, y = make_classification(n=60)
    m = model(metrics=["acc"])
    options = dict(validation_split=0.25, epochs=6, batch_size=8, seed=0, progress="none", run_dir=run)
    options.update(kwargs)
    return m, m.fit(x, y, **options), (x, y)


def test_load_best_loads_the_state_with_the_best_monitored_value(tmp_path):
    m, history, (x, y) = fit_run(tmp_path / "r")
    best_epoch, best_value = history.best("val_loss")
    final = m.evaluate(x[45:], y[45:])["loss"]
    info = m.load_best()
    assert info["epoch"] == best_epoch + 1 and info["monitor"] == "val_loss"
    assert info["value"] == pytest.approx(best_value)
    assert m.evaluate(x[45:], y[45:])["loss"] == pytest.approx(best_value, rel=1e-6)
    # evaluate(weights="best") evaluates the best and leaves the model's weights as they were
    other = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", metrics=["acc"])
    other.load_weights(tmp_path / "r" / "model.safetensors")
    before = {k: v.clone() for k, v in other.net.state_dict().items()}
    assert other.evaluate(x[45:], y[45:])["loss"] == pytest.approx(final, rel=1e-6)
    with pytest.raises(th.ConfigError, match="give run_dir"):
        other.evaluate(x[45:], y[45:], weights="best")  # this model never fitted into a run folder
    m.load_weights(tmp_path / "r" / "model.safetensors")
    assert m.evaluate(x[45:], y[45:], weights="best")["loss"] == pytest.approx(best_value, rel=1e-6)
    assert m.evaluate(x[45:], y[45:])["loss"] == pytest.approx(final, rel=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in other.net.state_dict().items())
    with pytest.raises(th.ConfigError, match="'best'"):
        m.evaluate(x, y, weights="last")


def test_load_weights_on_a_run_folder_or_a_state_says_what_to_call(tmp_path):
    m, _, _ = fit_run(tmp_path / "r", epochs=2)
    with pytest.raises(th.CheckpointError, match="is a run folder.*load_best"):
        m.load_weights(tmp_path / "r")
    state = next((tmp_path / "r" / "checkpoints").glob("ckpt-*")) / "state.safetensors"
    with pytest.raises(th.CheckpointError, match="full training state.*load_best"):
        m.load_weights(state)
    with pytest.raises(th.CheckpointError, match="not a run folder"):
        m.load_best(tmp_path)


def test_early_stopping_on_another_monitor_warns_and_run_json_says_whose_weights(tmp_path):
    stop = th.callbacks.EarlyStopping(monitor="val_acc", patience=2)
    with pytest.warns(UserWarning, match="EarlyStopping watches val_acc.*fit's monitor='val_loss'"):
        _, history, _ = fit_run(tmp_path / "r", callbacks=[stop], epochs=8)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["weights"] == {"epoch": stop.best_epoch, "monitor": "val_acc", "restored_by": "EarlyStopping"}
    assert info["best_epoch"] == history.best("val_loss")[0]
    table = th.runs.runs_table(tmp_path)
    assert f"{stop.best_epoch + 1} (val_acc)" in table
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same monitor: no warning
        stop = th.callbacks.EarlyStopping(monitor="val_loss", patience=2)
        fit_run(tmp_path / "same", callbacks=[stop], epochs=3)


def test_torchhouse_evaluate_best_on_a_config_run(tmp_path, capsys):
    import yaml

    config = {
        "name": "bc",
        "model": {"factory": "torchhouse.models:mlp", "kwargs": {"in_features": 30, "hidden": [8], "out_features": 2}},
        "data": {"dataset": "breast_cancer", "standardize": True, "test_fraction": 0.2, "seed": 0},
        "loss": "CrossEntropyLoss",
        "optimizer": {"name": "AdamW", "lr": 0.05},
        "metrics": {"acc": "accuracy"},
        "fit": {"epochs": 6, "batch_size": 32, "seed": 0, "validation_split": 0.2, "progress": "none"},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "c.yaml"), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--best"]) == 0
    out = capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert f"the best state: epoch {info['best_epoch'] + 1} (val_loss" in out and "acc " in out


# --------------------------------------------------------------------------- config.json's truth


def test_config_json_records_what_a_loader_really_does(tmp_path):
    x, y = make_classification(n=32)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # in order, whatever fit's shuffle says
    model().fit(loader, epochs=1, progress="none", run_dir=tmp_path / "r")
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())["fit"]
    assert (
        recorded["shuffle"] is False and recorded["batch_size"] == 4 and recorded["data"] == "LoaderBatches"
    )


# --------------------------------------------------------------------------- Kaggle habits


def kaggle_files(folder):
    """train.csv / valid.csv / test.csv with an Id column and a target, and predict.csv without."""
    import csv

    x, y, names = th.datasets.load_breast_cancer()
    header = ["Id", *names[:5], "Diagnosis"]
    parts = {"train": range(0, 400), "valid": range(400, 480), "test": range(480, 569)}
    for part, rows in parts.items():
        with open(folder / f"{part}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows([[1000 + i, *x[i, :5].tolist(), int(y[i])] for i in rows])
    with open(folder / "predict.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header[:-1])
        writer.writerows([[2000 + i, *x[i, :5].tolist()] for i in range(5)])
    return names[:5]


def kaggle_config(features, **data):
    return {
        "name": "kaggle",
        "model": {"factory": "torchhouse.models:mlp", "kwargs": {"in_features": 5, "hidden": [8], "out_features": 2}},
        "data": {"csv": "train.csv", "target": "Diagnosis", "features": features, "standardize": True, **data},
        "loss": "CrossEntropyLoss",
        "optimizer": {"name": "AdamW", "lr": 0.05},
        "metrics": {"acc": "accuracy"},
        "fit": {"epochs": 4, "batch_size": 32, "seed": 0, "progress": "none"},
    }  # fmt: skip


def test_a_config_with_validation_and_test_csvs_and_predict_with_an_id_column(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    features = kaggle_files(tmp_path)
    config = kaggle_config(features, validation_csv="valid.csv", test_csv="test.csv")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "c.yaml", "--run-dir", "runs/k"]) == 0
    history = (tmp_path / "runs" / "k" / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:4] == ["epoch", "loss", "acc", "val_loss"] and len(history) == 5
    info = json.loads((tmp_path / "runs" / "k" / "run.json").read_text())
    capsys.readouterr()
    # the run kept test.csv's 89 rows as its test split: evaluate reads the same numbers
    assert main(["evaluate", "runs/k"]) == 0
    assert f"acc {info['test']['acc']:.4f}" in capsys.readouterr().out
    assert main(["evaluate", "runs/k", "--csv", "test.csv"]) == 0
    assert f"acc {info['test']['acc']:.4f}" in capsys.readouterr().out
    assert main(["predict", "runs/k", "predict.csv", "--id-column", "Id", "--output", "out.csv"]) == 0
    out = (tmp_path / "out.csv").read_text().splitlines()
    assert out[0] == "Id,prediction,p0,p1" and [line.split(",")[0] for line in out[1:]] == [
        str(2000 + i) for i in range(5)
    ]
    assert main(["predict", "runs/k", "predict.csv", "--id-column", "PassengerId"]) == 2
    assert "no column 'PassengerId'" in capsys.readouterr().err


def test_a_test_csv_without_the_target_points_to_predict(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    features = kaggle_files(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(kaggle_config(features, test_csv="predict.csv")))
    assert main(["fit", "c.yaml", "--run-dir", "runs/k"]) == 2
    assert "torchhouse predict RUN FILE.csv --id-column" in capsys.readouterr().err
    both = kaggle_config(features, test_csv="test.csv", test_fraction=0.2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(both))
    assert main(["fit", "c.yaml", "--run-dir", "runs/k2"]) == 2
    assert "test_csv or test_fraction" in capsys.readouterr().err


# --------------------------------------------------------------------------- a DataModule


class PlainDataModule:
    """Lightning's DataModule habit without Lightning: the hooks are called in Lightning's order."""

    def __init__(self):
        self.calls = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        x, y = make_classification(n=48)
        self.train, self.val, self.test = TensorDataset(x[:32], y[:32]), TensorDataset(x[32:40], y[32:40]), TensorDataset(x[40:], y[40:])  # fmt: skip

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=8)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=8)


def test_fit_evaluate_and_predict_take_a_datamodule():
    dm = PlainDataModule()
    m = model(metrics=["acc"])
    history = m.fit(dm, epochs=2, progress="none")
    assert dm.calls == ["prepare_data", "setup:fit"] and "val_acc" in history.history
    reference = model(metrics=["acc"])
    expected = reference.fit(
        dm.train_dataloader(), validation_data=dm.val_dataloader(), epochs=2, progress="none"
    )
    assert history.history == expected.history
    assert m.evaluate(dm) == m.evaluate(dm.test_dataloader())  # its test_dataloader
    with pytest.raises(th.DataError, match="without predict_dataloader"):
        m.predict(dm)
    with pytest.raises(th.DataError, match="DataModule, so y must be None"):
        m.fit(dm, torch.zeros(3), progress="none")


# --------------------------------------------------------------------------- where people look


def test_lr_is_in_the_history_the_csv_log_and_the_epoch_line(tmp_path, capsys):
    x, y = make_classification(n=32)

    def warmup(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 8)

    m = model(lr_scheduler=warmup, lr_scheduler_interval="step")
    log = tmp_path / "log.csv"
    history = m.fit(x, y, epochs=2, batch_size=8, progress="epoch", callbacks=[th.callbacks.CSVLogger(log)])
    # four steps an epoch: the last step of epoch 1 used factor 4/8, of epoch 2 factor 8/8
    assert history.history["lr"] == pytest.approx([0.5e-3, 1e-3])
    assert log.read_text().splitlines()[0].split(",") == ["epoch", "loss", "lr"]
    assert "lr: 0.0005" in capsys.readouterr().out


def test_progress_bar_off_a_terminal_counts_the_steps_it_did(capsys):
    x, y = make_classification(n=40)
    model().fit(x, y, epochs=2, batch_size=8, progress="bar")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" - ")[1] for line in lines] == ["5/5", "5/5"]


def test_evaluate_gives_float32_values_as_float32_prints_them():
    torchmetrics = pytest.importorskip("torchmetrics")
    x, y = make_classification(n=40)
    m = model(metrics={"acc": torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")})
    value = m.evaluate(x, y)["acc"]
    assert repr(value) == str(torch.tensor(value, dtype=torch.float32).numpy())  # e.g. 0.925, not 0.92500001
    reference = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
    exact = float(reference(m.predict(x), y))  # the float32 result, widened
    assert (
        value == pytest.approx(exact, rel=1e-7) and float(torch.tensor(value, dtype=torch.float32)) == exact
    )
    counted = model(metrics=["acc"]).evaluate(x[:3], y[:3])["acc"]  # a count's ratio stays as computed
    assert counted in (0.0, 1 / 3, 2 / 3, 1.0)


def test_a_monitor_without_a_run_folder_says_it_does_nothing():
    x, y = make_classification(n=16)
    with pytest.warns(UserWarning, match="fit\\(monitor='loss'\\) picks which state run_dir keeps"):
        model().fit(x, y, monitor="loss", progress="none")


def test_config_json_says_where_tensorboard_events_go(tmp_path):
    pytest.importorskip("tensorboard")
    x, y = make_classification(n=16)
    mine = th.callbacks.TensorBoard(tmp_path / "elsewhere")
    model().fit(x, y, epochs=1, progress="none", run_dir=tmp_path / "r", callbacks=[mine])
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())
    assert recorded["tensorboard"] == [str(tmp_path / "elsewhere")]  # the run folder's own is not written
    assert not (tmp_path / "r" / "tensorboard").exists()
    model().fit(x, y, epochs=1, progress="none", run_dir=tmp_path / "r2")
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["tensorboard"] == [
        str(tmp_path / "r2" / "tensorboard")
    ]
