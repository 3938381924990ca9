"""Time-series forecasting: yearly sunspot numbers (1700-2008), end to end.

prepare (scale, sliding windows of 20 years -> the next year; the last 40 years held out)
-> define (a GRU) -> train (validation on the latest training years, early stopping) ->
evaluate (held-out MAE vs repeating the last value) -> use (a forecast plot) -> save and
reload (identical forecasts). Run: python examples/timeseries_sunspots.py
"""

import os

import numpy as np
import torch
from torch import nn

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "150"))
WINDOW = 20
HELD_OUT = 40


class Forecaster(nn.Module):
    """A GRU over the window, then a linear head for the next value."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=1, hidden_size=hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def windows(series: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([series[i : i + size] for i in range(len(series) - size)])[:, :, None]
    return x.astype(np.float32), series[size:, None].astype(np.float32)


def main() -> dict[str, float]:
    # 1. Prepare: scale by the training years' maximum; windows of WINDOW years.
    years, values = th.datasets.load_sunspots()
    scale = values[:-HELD_OUT].max()
    x, y = windows(values / scale, WINDOW)
    x_train, y_train, x_test, y_test = x[:-HELD_OUT], y[:-HELD_OUT], x[-HELD_OUT:], y[-HELD_OUT:]

    # 2. Define.
    torch.manual_seed(0)
    model = th.Model(
        Forecaster(),
        loss=nn.MSELoss(),
        metrics={"mae": lambda p, t: (p - t).abs().mean()},
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
    )

    # 3. Train: validation_split takes the last 15% of the windows, the most recent years.
    model.fit(
        x_train,
        y_train,
        validation_split=0.15,
        epochs=EPOCHS,
        batch_size=32,
        seed=0,
        progress="none",
        callbacks=[th.callbacks.EarlyStopping(monitor="val_loss", patience=20, verbose=False)],
    )

    # 4. Evaluate on the last HELD_OUT years against "next year = this year".
    forecast = model.predict(x_test).numpy()[:, 0] * scale
    truth = y_test[:, 0] * scale
    mae = float(np.abs(forecast - truth).mean())
    last_value_mae = float(np.abs(x_test[:, -1, 0] * scale - truth).mean())
    print(f"held-out MAE {mae:.2f} sunspots (last-value baseline {last_value_mae:.2f})")

    # 5. Use: plot the one-year-ahead forecasts of the held-out years.
    os.makedirs("runs", exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(9, 3.5))
        axis.plot(years, values, color="0.6", label="sunspots")
        axis.plot(years[-HELD_OUT:], forecast, marker="o", markersize=3, label="one-year-ahead forecast")
        axis.axvline(
            years[-HELD_OUT] - 0.5, color="0.3", linestyle="--", linewidth=1, label="held out from here"
        )
        axis.set_xlabel("year")
        axis.set_ylabel("sunspot number")
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig("runs/sunspots_forecast.png", dpi=110)
        print("forecast plot: runs/sunspots_forecast.png")
    except ImportError:
        print("(install matplotlib for the forecast plot)")

    # 6. Save, reload, check the forecasts are identical.
    model.save("runs/sunspots.safetensors")
    reloaded = th.Model(Forecaster())
    reloaded.load_weights("runs/sunspots.safetensors")
    assert torch.equal(reloaded.predict(x_test), model.predict(x_test))
    print("reloaded model gives identical forecasts")
    return {"mae": mae, "baseline": last_value_mae}


if __name__ == "__main__":
    main()
