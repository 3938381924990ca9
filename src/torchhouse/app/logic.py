"""What the Streamlit app does, as plain functions (tested without a browser).

The page script (``streamlit_app.py``) only lays these out.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchhouse.errors import TorchhouseError
from torchhouse.files.safety import MAX_CSV_ROWS, MAX_IMAGE_PIXELS

__all__ = [
    "AppInputError",
    "AppRun",
    "DEFAULT_MAX_UPLOAD_MB",
    "example_csv",
    "image_to_input",
    "load_app_run",
    "max_upload_bytes",
    "predict_rows",
    "rows_from_csv",
    "texts_from_box",
    "trust_code_from_env",
]


class AppInputError(TorchhouseError, ValueError):
    """An upload or a form entry the model cannot take; the message is shown in the page."""


DEFAULT_MAX_UPLOAD_MB = 5.0


def max_upload_bytes() -> int:
    return int(float(os.environ.get("TORCHHOUSE_APP_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)) * 2**20)


@dataclass
class AppRun:
    """A run folder loaded for the app."""

    path: Path
    config: dict[str, Any]
    model: Any
    info: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """ "text" for a text model, "image" for (C, H, W) inputs, "tabular" for a row of features."""
        if self.info.get("vocabulary") is not None:
            return "text"
        shape = self.info.get("input_shape") or []
        return "image" if len(shape) == 3 else "tabular"

    @property
    def feature_names(self) -> list[str]:
        names = self.info.get("feature_names")
        if names:
            return list(names)
        width = int(np.prod(self.info.get("input_shape") or [1]))
        return [f"x{i}" for i in range(width)]


def trust_code_from_env() -> bool:
    """Whether `torchhouse app --trust-code` started this page."""
    return os.environ.get("TORCHHOUSE_TRUST_CODE") == "1"


def load_app_run(path: str | os.PathLike[str], trust_code: bool | None = None) -> AppRun:
    """Load a run folder's config, model and history; a clear error if it cannot be served.

    The folder is data: it is served without importing code it names unless
    ``trust_code`` (default: what `torchhouse app --trust-code` said).
    """
    from torchhouse.frontends.serving import load_run
    from torchhouse.runs import RunFolder, read_history_csv

    folder = Path(path)
    if not folder.is_dir():
        raise AppInputError(f"{folder}: no such run folder")
    trust = trust_code_from_env() if trust_code is None else trust_code
    config, model = load_run(folder, trust_code=trust)
    history: dict[str, list[float]] = {}
    if (folder / "history.csv").is_file():
        try:
            history = read_history_csv(folder / "history.csv")
        except (OSError, ValueError, KeyError, csv.Error):
            history = {}
    try:
        info = RunFolder(folder).info()
    except TorchhouseError:
        info = {}
    return AppRun(folder, config, model, config["data"], info, history)


def _check_size(data: bytes) -> None:
    limit = max_upload_bytes()
    if len(data) > limit:
        raise AppInputError(
            f"the file is {len(data) / 2**20:.1f} MB; the limit is {limit / 2**20:.1f} MB "
            "(set it with `torchhouse app --max-upload-mb`)"
        )


def rows_from_csv(app: AppRun, data: bytes) -> np.ndarray:
    """Feature rows from CSV text with a header naming the model's feature columns."""
    _check_size(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AppInputError("the file is not text: upload a CSV file (UTF-8)") from exc
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise AppInputError(
            f"the CSV cannot be read ({exc}); a field may hold at most 131,072 characters"
        ) from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) > MAX_CSV_ROWS + 1:
        raise AppInputError(f"the CSV has more than {MAX_CSV_ROWS:,} rows; upload fewer")
    if len(rows) < 2:
        raise AppInputError("the CSV needs a header row and at least one row of values")
    header = [h.strip() for h in rows[0]]
    expected = app.feature_names
    missing = [n for n in expected if n not in header]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise AppInputError(f"the CSV is missing column(s) {shown}; expected columns: {', '.join(expected)}")
    index = [header.index(n) for n in expected]
    values = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            numbers = [float(row[i]) for i in index]
        except (ValueError, IndexError) as exc:
            raise AppInputError(f"row {line} of the CSV has a missing or non-numeric value") from exc
        for name, number in zip(expected, numbers):
            if not np.isfinite(number):
                raise AppInputError(
                    f"row {line}, column {name!r} is {number}; every value must be a finite number"
                )
        values.append(numbers)
    return np.asarray(values, dtype=np.float32)


def image_to_input(app: AppRun, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """An uploaded picture as the net's input: grey, resized, scaled to [0, 1], ink bright.

    Returns (input of shape (1, C, H, W), the resized image for display).
    """
    from PIL import Image, UnidentifiedImageError

    _check_size(data)
    too_big = f"the limit is {MAX_IMAGE_PIXELS:,} pixels (4096x4096): upload a smaller picture"
    try:
        image: Any = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise AppInputError(f"the image has more pixels than Pillow will decode; {too_big}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AppInputError("the file is not an image: upload a PNG or JPEG") from exc
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise AppInputError(f"the image is {image.width}x{image.height} pixels; {too_big}")
    try:
        image.load()
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as exc:
        raise AppInputError(f"the image cannot be decoded ({exc}); upload a PNG or JPEG") from exc
    channels, height, width = (int(s) for s in app.info["input_shape"])
    if image.width < width or image.height < height:
        raise AppInputError(
            f"the image is {image.width}x{image.height}; it must be at least {width}x{height} pixels"
        )
    image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if pixels.mean() > 0.5:  # dark ink on light paper: the digits data have bright ink on black
        pixels = 1.0 - pixels
    array = pixels.reshape(1, 1, height, width) if channels == 1 else pixels.transpose(2, 0, 1)[None]
    return array, pixels


def texts_from_box(app: AppRun, text: str) -> list[str]:
    """One text per non-empty line of a text box."""
    _check_size(text.encode())
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise AppInputError("type at least one text (one per line)")
    return texts


def predict_rows(app: AppRun, rows: Any) -> tuple[list[str], list[list[Any]], np.ndarray | None]:
    """Predictions for feature rows: (columns, table rows, class probabilities or None)."""
    from torchhouse.frontends.config import prepare_inputs

    inputs = rows if app.kind == "image" else prepare_inputs(rows, app.info)
    outputs = app.model.predict(torch.as_tensor(inputs), batch_size=256)
    task = app.info.get("task")
    if task == "classification":
        probabilities = outputs.softmax(dim=1).numpy()
        labels = probabilities.argmax(axis=1)
        table = [[int(label), float(p[label])] for label, p in zip(labels, probabilities)]
        return ["prediction", "probability"], table, probabilities
    if task in ("binary", "probability"):
        # a BCELoss net outputs probabilities; a BCEWithLogitsLoss net outputs logits
        p1 = (outputs if task == "probability" else outputs.sigmoid()).reshape(-1).numpy()
        probabilities = np.stack([1 - p1, p1], axis=1)
        return (
            ["prediction", "probability"],
            [[int(p > 0.5), float(max(p, 1 - p))] for p in p1],
            probabilities,
        )
    flat = outputs.reshape(len(outputs), -1).numpy()
    columns = ["prediction"] if flat.shape[1] == 1 else [f"prediction{i}" for i in range(flat.shape[1])]
    return columns, flat.tolist(), None


def example_csv(app: AppRun, rows: int = 3) -> str:
    """A small CSV of held-out rows, for the page's example (tabular runs)."""
    from torchhouse.frontends.config import load_data

    if not any(k in app.info for k in ("dataset", "csv")):
        return ",".join(app.feature_names) + "\n"
    try:
        data = load_data(app.config, trust_code=False, base=app.path)
    except TorchhouseError:
        return ",".join(app.feature_names) + "\n"
    x = data.x_test if data.x_test is not None else data.x_train
    x = np.asarray(x[:rows], dtype=np.float64)
    if "mean" in app.info:  # undo the standardisation: the form takes raw feature values
        x = x * np.asarray(app.info["std"]) + np.asarray(app.info["mean"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(app.feature_names)
    for row in x.reshape(len(x), -1):
        writer.writerow([f"{v:.6g}" for v in row])
    return buffer.getvalue()
