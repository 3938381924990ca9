"""The six-step workflow on the bundled digits: prepare, define, train, evaluate, use, save.

Run: python examples/quickstart.py  (EPOCHS=3 for a quick run)
"""

import os

import torch
from torch import nn

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "20"))

# 1. Prepare data: 1,797 8x8 images, a seeded 80/20 train/test split.
x, y = th.datasets.load_digits()
x_train, x_test, y_train, y_test = th.datasets.train_test_split(x, y, test_fraction=0.2, seed=0)


# 2. Define the model: any nn.Module.
def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


torch.manual_seed(0)
net = make_net()
print(th.summary(net, input_size=(1, 1, 8, 8)))

# 3. Train, holding out 20% of the training set for validation, stopping early.
model = th.Model(net, loss=nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy})
history = model.fit(
    x_train,
    y_train,
    validation_split=0.2,
    epochs=EPOCHS,
    batch_size=64,
    seed=0,
    callbacks=[th.callbacks.EarlyStopping(monitor="val_loss", patience=3)],
)

# 4. Evaluate on the held-out test set.
test = model.evaluate(x_test, y_test)
print(f"test loss {test['loss']:.4f}, test accuracy {test['acc']:.4f}")

# 5. Use it: class probabilities for new images.
probabilities = model.predict(x_test[:5]).softmax(dim=1)
print("predicted:", probabilities.argmax(dim=1).tolist(), "true:", y_test[:5].tolist())

# 6. Save, reload into a fresh net, and check the predictions are identical.
os.makedirs("runs", exist_ok=True)
model.save("runs/quickstart.safetensors")
reloaded = th.Model(make_net())
reloaded.load_weights("runs/quickstart.safetensors")
assert torch.equal(reloaded.predict(x_test), model.predict(x_test))
print("reloaded model gives identical predictions")
