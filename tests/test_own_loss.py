"""Nets that compute their own loss (the Hugging Face convention): loss=None, dict batches."""

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import torchhouse as th


class Output(OrderedDict):
    """Like transformers' ModelOutput: a mapping whose None fields are left out."""

    def __init__(self, **fields):
        super().__init__((k, v) for k, v in fields.items() if v is not None)

    def __getattr__(self, name):
        return self.get(name)


class TinyClassifier(nn.Module):
    """forward(input_ids, attention_mask=None, labels=None) -> Output(loss, logits), as HF models."""

    def __init__(self, vocab=20, classes=3):
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab, 8, mode="sum")
        self.head = nn.Linear(8, classes)

    def forward(self, input_ids, attention_mask=None, labels=None):
        weights = None if attention_mask is None else attention_mask.float()
        logits = self.head(self.embed(input_ids, per_sample_weights=weights))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return Output(loss=loss, logits=logits)


def data(n=64, length=6):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    labels = ids[:, 0] % 3
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def hand_loop(batches, epochs):
    torch.manual_seed(0)
    net = TinyClassifier()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(epochs):
        for batch in batches:
            optimizer.zero_grad()
            net(**batch).loss.backward()
            optimizer.step()
    return net


def test_fit_a_dict_of_arrays_with_labels_uses_the_nets_own_loss_like_the_hand_loop():
    x = data()
    torch.manual_seed(0)
    net = TinyClassifier()
    model = th.Model(
        net, loss=None, optimizer=lambda p: torch.optim.SGD(p, lr=0.5), metrics=["acc"], device="cpu"
    )
    history = model.fit(x, epochs=3, batch_size=16, shuffle=False, progress="none")
    batches = [{k: v[lo : lo + 16] for k, v in x.items()} for lo in range(0, 64, 16)]
    reference = hand_loop(batches, epochs=3)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), reference.parameters(), strict=True))
    with torch.no_grad():
        logits = reference(**x).logits
        expected_acc = (logits.argmax(1) == x["labels"]).float().mean().item()
        expected_loss = reference(**x).loss.item()
    evaluation = model.evaluate(x, batch_size=64)
    assert evaluation["acc"] == pytest.approx(expected_acc)
    assert evaluation["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert len(history.history["acc"]) == 3
    predictions = model.predict({k: v for k, v in x.items() if k != "labels"}, batch_size=10)
    assert torch.allclose(predictions, logits, atol=1e-6)  # predict gives the logits


def test_a_loader_of_tokenizer_style_dict_batches_trains_and_validates():
    x = data()
    rows = [{k: v[i] for k, v in x.items()} for i in range(64)]  # a list of dicts, as `datasets` rows
    loader = DataLoader(rows, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(rows[:20], batch_size=8)
    torch.manual_seed(0)
    model = th.Model(TinyClassifier(), loss=None, metrics=["acc"], device="cpu")
    history = model.fit(loader, validation_data=val, epochs=2, progress="none")
    assert set(history.history) == {"loss", "acc", "val_loss", "val_acc"}
    assert history.history["loss"][1] < history.history["loss"][0]


def test_loss_none_with_a_net_that_returns_no_loss_says_what_to_do():
    x = data()
    model = th.Model(TinyClassifier(), loss=None, device="cpu")
    without_labels = {k: v for k, v in x.items() if k != "labels"}
    with pytest.raises(th.DataError, match="y is missing"):
        model.fit(without_labels, epochs=1, progress="none")
    plain = th.Model(nn.Linear(3, 2), loss=None, device="cpu")
    with pytest.raises(th.ConfigError, match="loss=None: the net's output carries no loss.*pass loss="):
        plain.fit(torch.randn(8, 3), torch.randint(0, 2, (8,)), epochs=1, progress="none")


def test_a_given_loss_still_applies_to_dict_batches_and_sees_the_logits():
    x = data()
    torch.manual_seed(0)
    seen = []

    def loss(preds, target):
        seen.append(type(preds).__name__)
        return nn.functional.cross_entropy(preds["logits"], target)

    model = th.Model(TinyClassifier(), loss=loss, device="cpu")
    model.fit(x, epochs=1, batch_size=32, progress="none")
    assert seen and set(seen) == {"Output"}  # a given loss gets the whole output, as before


def test_a_hugging_face_dataset_is_taken_as_it_is_and_trains_like_the_dict_of_arrays():
    datasets = pytest.importorskip("datasets")
    x = data()
    table = datasets.Dataset.from_dict({**{k: v.tolist() for k, v in x.items()}, "text": ["a word"] * 64})

    def run(train, val):
        torch.manual_seed(0)
        net = TinyClassifier()
        model = th.Model(
            net, loss=None, optimizer=lambda p: torch.optim.SGD(p, lr=0.5), metrics=["acc"], device="cpu"
        )
        history = model.fit(
            train, validation_data=val, epochs=2, batch_size=16, shuffle=False, progress="none"
        )
        return net, history.history, model

    net, history, model = run(table, table.select(range(20)))  # the text column is left out
    plain_net, plain_history, _ = run(x, {k: v[:20] for k, v in x.items()})
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), plain_net.parameters(), strict=True))
    assert history == plain_history
    logits = model.predict(table.remove_columns("labels"), batch_size=10)
    assert logits.shape == (64, 3)
    with pytest.raises(th.DataError, match="only text columns"):
        model.fit(datasets.Dataset.from_dict({"text": ["a", "b"]}), epochs=1, progress="none")
