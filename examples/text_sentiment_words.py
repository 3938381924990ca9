"""Text classification: is an English word positive or negative? (VADER lexicon, 7,217 words)

prepare (tokenise each word into character trigrams, build the vocabulary on the training
split, encode and pad: torchhouse.text) -> define (an embedding, masked mean pooling, an MLP:
torchhouse.models.BagOfTrigrams) -> train
(validation, early stopping) -> evaluate (held-out accuracy vs the majority class) -> use
(words it never saw) -> save and reload (identical predictions).
Run: python examples/text_sentiment_words.py
"""

import os

import numpy as np
import torch
from torch import nn

import torchhouse as th
from torchhouse.data.text import TrigramVocabulary

EPOCHS = int(os.environ.get("EPOCHS", "40"))


def main() -> dict[str, float]:
    # 1. Prepare: a seeded 80/20 split of the words; the vocabulary sees training words only.
    words, labels, _ = th.datasets.load_sentiment_words()
    order = np.random.default_rng(0).permutation(len(words))
    n_test = len(words) // 5
    test, train = order[:n_test], order[n_test:]
    vocabulary = TrigramVocabulary.build([words[i] for i in train], min_count=2)
    x_train, x_test = (
        vocabulary.encode([words[i] for i in train]),
        vocabulary.encode([words[i] for i in test]),
    )
    y_train, y_test = labels[train], labels[test]

    # 2. Define.
    torch.manual_seed(0)
    model = th.Model(
        th.models.BagOfTrigrams(len(vocabulary)),
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
    reloaded = th.Model(th.models.BagOfTrigrams(len(vocabulary)))
    reloaded.load_weights("runs/sentiment_words.safetensors")
    assert torch.equal(reloaded.predict(x_test), model.predict(x_test))
    print("reloaded model gives identical predictions")
    return {"accuracy": result["acc"], "baseline": majority}


if __name__ == "__main__":
    main()
