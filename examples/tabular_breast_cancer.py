"""Tabular binary classification: the breast-cancer table, end to end.

prepare (split, standardise with training statistics) -> define (an MLP) -> train (validation,
early stopping) -> evaluate (held-out accuracy vs the majority class) -> use (new rows) ->
save and reload (identical predictions). Run: python examples/tabular_breast_cancer.py
"""

import os

import numpy as np
import torch
from torch import nn

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "100"))


def main() -> dict[str, float]:
    # 1. Prepare: a seeded 80/20 split; standardise with the training split's mean and std only.
    x, y, names = th.datasets.load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:114], order[114:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
    x_train, x_test = (x[train] - mean) / std, (x[test] - mean) / std
    y_train, y_test = y[train].astype(np.float32)[:, None], y[test].astype(np.float32)[:, None]

    # 2. Define: an MLP with one logit for "benign".
    torch.manual_seed(0)
    net = th.models.mlp(len(names), hidden=[32, 16], out_features=1, dropout=0.1)
    model = th.Model(
        net,
        loss=nn.BCEWithLogitsLoss(),
        metrics={"acc": th.metrics.binary_accuracy_logits},
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
    )

    # 3. Train with a validation split and early stopping (best weights restored).
    model.fit(
        x_train,
        y_train,
        validation_split=0.2,
        epochs=EPOCHS,
        batch_size=32,
        seed=0,
        progress="none",
        callbacks=[th.callbacks.EarlyStopping(monitor="val_loss", patience=10, verbose=False)],
    )

    # 4. Evaluate on the held-out split, against the trivial baseline.
    result = model.evaluate(x_test, y_test)
    majority = max(y_test.mean(), 1 - y_test.mean())
    print(f"held-out accuracy {result['acc']:.4f} (majority class {majority:.4f})")

    # 5. Use: probabilities for new rows (raw features, standardised like the training data).
    new_rows = (x[test[:3]] - mean) / std
    probabilities = model.predict(new_rows).sigmoid().reshape(-1).tolist()
    print("P(benign) for 3 new rows:", ", ".join(f"{p:.3f}" for p in probabilities))

    # 6. Save, reload into a fresh net, check the predictions are identical.
    os.makedirs("runs", exist_ok=True)
    model.save("runs/breast_cancer.safetensors")
    reloaded = th.Model(th.models.mlp(len(names), hidden=[32, 16], out_features=1, dropout=0.1))
    reloaded.load_weights("runs/breast_cancer.safetensors")
    assert torch.equal(reloaded.predict(x_test), model.predict(x_test))
    print("reloaded model gives identical predictions")
    return {"accuracy": result["acc"], "baseline": float(majority)}


if __name__ == "__main__":
    main()
