"""The Gradio page for one run folder: ``torchhouse app RUN --ui gradio`` starts it.

The same page as the Streamlit one (`torchhouse.app.streamlit_app`), from the same plain
functions (`torchhouse.app.logic`): draw or upload a digit, paste or upload CSV rows, or
type texts; the run's history and model. Bound to 127.0.0.1 unless told otherwise, with
the same upload limit; a bad input gets a message, never a traceback.

Run directly: python -m torchhouse.app.gradio_app RUN_DIR [--port P] [--max-upload-mb N]
"""

from __future__ import annotations

import argparse
import io
import os
from typing import Any

import numpy as np

from torchhouse.app.logic import (
    AppInputError,
    AppRun,
    example_csv,
    image_to_input,
    load_app_run,
    max_upload_bytes,
    predict_rows,
    rows_from_csv,
    texts_from_box,
)
from torchhouse.errors import TorchhouseError

__all__ = ["build_page", "main"]


def _table(columns: list[str], rows: list[list[Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def _message(columns: list[str], table: list[list[Any]], probabilities: Any) -> str:
    if probabilities is None:
        return f"{len(table)} predictions"
    label, probability = table[0][-2], table[0][-1]
    more = f" (first of {len(table)} rows)" if len(table) > 1 else ""
    return f"Predicted class **{label}** with probability {probability:.3f}{more}"


def _safely(run: Any) -> tuple[str, Any]:
    """(message, table) of a prediction, or the reason it could not be made: never a traceback."""
    try:
        columns, table, probabilities = run()
    except AppInputError as exc:
        return f"**Cannot predict:** {exc}", None
    except TorchhouseError as exc:
        return f"**The model could not take this input:** {exc}", None
    return _message(columns, table, probabilities), _table(columns, table)


def image_bytes(image: Any) -> bytes:
    """A drawn (Sketchpad: a dict with its ``composite``) or uploaded image as PNG bytes."""
    from PIL import Image

    if isinstance(image, dict):
        image = image.get("composite")
    if image is None:
        raise AppInputError("draw a digit or upload a picture first")
    if isinstance(image, str):
        with open(image, "rb") as handle:
            return handle.read()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 4:  # a drawing: dark strokes on a transparent sheet
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = (array[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def predict_image(app: AppRun, image: Any) -> tuple[str, Any]:
    def run() -> Any:
        array, _ = image_to_input(app, image_bytes(image))
        return predict_rows(app, array)

    return _safely(run)


def predict_csv(app: AppRun, pasted: str, upload: Any) -> tuple[str, Any]:
    def run() -> Any:
        if upload is not None:
            with open(upload if isinstance(upload, str) else upload.name, "rb") as handle:
                data = handle.read()
        else:
            data = (pasted or "").encode()
        return predict_rows(app, rows_from_csv(app, data))

    return _safely(run)


def predict_texts(app: AppRun, box: str) -> tuple[str, Any]:
    def run() -> Any:
        texts = texts_from_box(app, box or "")
        columns, table, probabilities = predict_rows(app, texts)
        return ["text", *columns], [[t, *row] for t, row in zip(texts, table, strict=True)], probabilities

    return _safely(run)


def build_page(run_dir: str | os.PathLike[str]) -> Any:
    """The page for ``run_dir`` as a ``gradio.Blocks`` (a run that cannot be served: a page
    that says why)."""
    import gradio as gr

    with gr.Blocks(title="torchhouse") as page:
        try:
            app = load_app_run(run_dir)
        except TorchhouseError as exc:
            gr.Markdown(f"# torchhouse\n\n**{exc}**")
            return page
        status = app.run.get("status", "unknown").replace("_", " ")
        gr.Markdown(
            f"# {app.config.get('name', app.path.name)}\n\nrun folder `{app.path}` · {status} · "
            f"{len(app.history.get('epoch', []))} epochs · "
            f"{sum(p.numel() for p in app.model.net.parameters()):,} parameters"
        )
        with gr.Tab("Predict"):
            message = gr.Markdown()
            table = gr.Dataframe(label="predictions", interactive=False)
            if app.kind == "image":
                with gr.Row():
                    drawn = gr.Sketchpad(label="draw a digit", type="numpy", image_mode="RGBA")
                    uploaded = gr.Image(label="or upload a picture", type="filepath")
                gr.Button("Predict the drawing", variant="primary").click(
                    lambda image: predict_image(app, image), drawn, [message, table]
                )
                gr.Button("Predict the picture").click(
                    lambda image: predict_image(app, image), uploaded, [message, table]
                )
            elif app.kind == "text":
                box = gr.Textbox(
                    label="one text per line", value="wonderful\nunhelpful\ndisgraceful", lines=5
                )
                gr.Button("Predict", variant="primary").click(
                    lambda text: predict_texts(app, text), box, [message, table]
                )
            else:
                pasted = gr.Textbox(label="CSV rows (with a header row)", value=example_csv(app), lines=6)
                upload = gr.File(label="or upload a CSV", file_types=[".csv"])
                gr.Button("Predict", variant="primary").click(
                    lambda text, file: predict_csv(app, text, file), [pasted, upload], [message, table]
                )
        with gr.Tab("Training"):
            if app.history:
                history = {k: v for k, v in app.history.items()}
                epochs = [int(e) + 1 for e in history.pop("epoch", [])]
                gr.Dataframe(
                    _table(
                        ["epoch", *history],
                        [[e, *(history[k][i] for k in history)] for i, e in enumerate(epochs)],
                    )
                )
            else:
                gr.Markdown("This run has no history.csv yet.")
        with gr.Tab("Model"):
            gr.Code(repr(app.model.net), label="net")
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the Gradio page for a torchhouse run folder")
    parser.add_argument("run")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max-upload-mb", type=float, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    if args.max_upload_mb is not None:
        os.environ["TORCHHOUSE_APP_MAX_UPLOAD_MB"] = str(args.max_upload_mb)
    page = build_page(args.run)
    page.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=max_upload_bytes(),
        show_error=False,
        quiet=True,
    )


if __name__ == "__main__":
    main()
