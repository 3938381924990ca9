"""Text classification: is an English word positive or negative? (VADER lexicon, 7,217 words)

prepare (tokenise each word into character trigrams, build the vocabulary on the training
split, encode and pad) -> define (an embedding, masked mean pooling, an MLP) -> train
(validation, early stopping) -> evaluate (held-out accuracy vs the majority class) -> use
(words it never saw) -> save and reload (identical predictions).
Run: python examples/text_sentiment_words.py
"""

import os

import numpy as np
import torch
from torch import nn

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "40"))


def trigrams(word: str) -> list[str]:
    padded = f"<{word}>"
    return [padded[i : i + 3] for i in range(len(padded) - 2)]


class Vocabulary:
    """Trigram -> id, built on the training words; 0 pads, 1 is an unknown trigram."""

    def __init__(self, words: list[str], min_count: int = 2) -> None:
        counts: dict[str, int] = {}
        for word in words:
            for gram in trigrams(word):
                counts[gram] = counts.get(gram, 0) + 1
        kept = sorted(g for g, c in counts.items() if c >= min_count)
        self.ids = {gram: i + 2 for i, gram in enumerate(kept)}

    def __len__(self) -> int:
        return len(self.ids) + 2

    def encode(self, words: list[str], length: int = 16) -> torch.Tensor:
        out = torch.zeros(len(words), length, dtype=torch.long)
        for row, word in enumerate(words):
            ids = [self.ids.get(g, 1) for g in trigrams(word)][:length]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


class BagOfTrigrams(nn.Module):
    """Embed each trigram, average the non-padding ones, classify."""

    def __init__(self, vocabulary_size: int, dim: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, dim, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids > 0).unsqueeze(-1).float()
        pooled = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(pooled)


def main() -> dict[str, float]:
    # 1. Prepare: a seeded 80/20 split of the words; the vocabulary sees training words only.
    words, labels, _ = th.datasets.load_sentiment_words()
    order = np.random.default_rng(0).permutation(len(words))
    n_test = len(words) // 5
    test, train = order[:n_test], order[n_test:]
    vocabulary = Vocabulary([words[i] for i in train])
    x_train, x_test = (
        vocabulary.encode([words[i] for i in train]),
        vocabulary.encode([words[i] for i in test]),
    )
    y_train, y_test = labels[train], labels[test]

    # 2. Define.
    torch.manual_seed(0)
    model = th.Model(
        BagOfTrigrams(len(vocabulary)),
        loss=nn.CrossEntropyLoss(),
        metrics={"acc": th.metrics.accuracy},
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
    )

    # 3. Train.
    model.fit(
        x_train,
        y_train,
        validation_split=0.15,
        epochs=EPOCHS,
        batch_size=64,
        seed=0,
        progress="none",
        callbacks=[th.callbacks.EarlyStopping(monitor="val_loss", patience=5, verbose=False)],
    )

    # 4. Evaluate against the majority class.
    result = model.evaluate(x_test, y_test)
    majority = float(max(y_test.mean(), 1 - y_test.mean()))
    print(f"held-out accuracy {result['acc']:.4f} (majority class {majority:.4f})")

    # 5. Use: words that are not in the lexicon.
    new = ["wonderfulness", "unhelpfully", "joyfully", "disgraceful"]
    probabilities = model.predict(vocabulary.encode(new)).softmax(dim=1)[:, 1].tolist()
    print("P(positive):", ", ".join(f"{w} {p:.2f}" for w, p in zip(new, probabilities)))

    # 6. Save, reload, check.
    os.makedirs("runs", exist_ok=True)
    model.save("runs/sentiment_words.safetensors")
    reloaded = th.Model(BagOfTrigrams(len(vocabulary)))
    reloaded.load_weights("runs/sentiment_words.safetensors")
    assert torch.equal(reloaded.predict(x_test), model.predict(x_test))
    print("reloaded model gives identical predictions")
    return {"accuracy": result["acc"], "baseline": majority}


if __name__ == "__main__":
    main()
