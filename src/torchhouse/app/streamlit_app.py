"""The Streamlit page for one run folder: `torchhouse app RUN_DIR` starts it.

Run directly: streamlit run streamlit_app.py -- RUN_DIR  (or set TORCHHOUSE_RUN_DIR).
"""

from __future__ import annotations

import os
import sys

import pandas as pd
import streamlit as st

from torchhouse.app.logic import (
    AppInputError,
    example_csv,
    image_to_input,
    load_app_run,
    max_upload_bytes,
    predict_rows,
    rows_from_csv,
    texts_from_box,
)
from torchhouse.errors import TorchhouseError

run_path = os.environ.get("TORCHHOUSE_RUN_DIR") or (sys.argv[1] if len(sys.argv) > 1 else "")
st.set_page_config(page_title="torchhouse", layout="wide")


@st.cache_resource(show_spinner="Loading the model...")
def _load(path: str):  # type: ignore[no-untyped-def]
    return load_app_run(path)


try:
    app = _load(run_path)
except TorchhouseError as exc:
    st.title("torchhouse")
    st.error(str(exc))
    st.stop()

name = app.config.get("name", app.path.name)
st.title(name)
status = app.run.get("status", "unknown").replace("_", " ")
epochs = len(app.history.get("epoch", []))
test = app.run.get("test") or {}
st.caption(
    f"run folder `{app.path}` · {status} · {epochs} epochs · "
    f"{sum(p.numel() for p in app.model.net.parameters()):,} parameters"
)
if test:
    columns = st.columns(len(test))
    for column, (metric, value) in zip(columns, test.items()):
        column.metric(f"test {metric}", f"{value:.4f}")


def show_predictions(columns: list[str], table: list[list[object]], probabilities) -> None:  # type: ignore[no-untyped-def]
    st.subheader("Prediction")
    if probabilities is not None:
        label, probability = table[0][-2], table[0][-1]
        more = f" (first of {len(table)} rows)" if len(table) > 1 else ""
        st.markdown(f"Predicted class **{label}** with probability {probability:.3f}{more}")
    st.dataframe(pd.DataFrame(table, columns=columns), hide_index=False)
    if probabilities is not None:
        st.caption("Class probabilities of the first row")
        chart = pd.DataFrame(
            {"probability": probabilities[0]}, index=[str(i) for i in range(len(probabilities[0]))]
        )
        st.bar_chart(chart)


predict_tab, training_tab, model_tab, config_tab = st.tabs(["Predict", "Training", "Model", "Config"])

with predict_tab:
    limit_mb = max_upload_bytes() / 2**20
    if app.kind == "image":
        shape = app.info["input_shape"]
        st.write(
            f"Upload a picture of a handwritten digit (PNG or JPEG, up to {limit_mb:.0f} MB); "
            f"it is turned grey and resized to {shape[2]}x{shape[1]} pixels."
        )
        upload = st.file_uploader("Image", type=["png", "jpg", "jpeg"], key="image")
        if upload is not None:
            try:
                array, pixels = image_to_input(app, upload.getvalue())
                left, right = st.columns([1, 2])
                left.image(pixels, caption="what the model sees", width=160, clamp=True)
                with right:
                    show_predictions(*predict_rows(app, array))
            except AppInputError as exc:
                st.error(str(exc))
    elif app.kind == "text":
        st.write("Type one text per line; the model reads its words as character trigrams.")
        box = st.text_area(
            "Texts", value="wonderful\nunhelpful\ndisgraceful\njoyfully", height=140, key="texts"
        )
        if st.button("Predict", type="primary"):
            try:
                texts = texts_from_box(app, box)
                names, table, probabilities = predict_rows(app, texts)
                show_predictions(["text", *names], [[t, *row] for t, row in zip(texts, table)], probabilities)
            except AppInputError as exc:
                st.error(str(exc))
    else:
        st.write(
            f"Give one row per sample with the columns {', '.join(app.feature_names[:6])}"
            f"{', ...' if len(app.feature_names) > 6 else ''} — upload a CSV (up to {limit_mb:.0f} MB) "
            "or paste CSV text."
        )
        upload = st.file_uploader("CSV file", type=["csv"], key="csv")
        pasted = st.text_area(
            "or paste CSV (with a header row)", value=example_csv(app), height=140, key="pasted"
        )
        clicked = st.button("Predict", type="primary")
        source = upload.getvalue() if upload is not None else (pasted.encode() if clicked else None)
        if source is not None:
            try:
                show_predictions(*predict_rows(app, rows_from_csv(app, source)))
            except AppInputError as exc:
                st.error(str(exc))

with training_tab:
    history = app.history
    if not history:
        st.info("This run has no history.csv yet.")
    else:
        frame = pd.DataFrame(history)
        frame["epoch"] = frame["epoch"].astype(int) + 1
        frame = frame.set_index("epoch")
        names = [n for n in frame.columns if not n.startswith("val_")]
        for metric in names:
            shown = [c for c in (metric, f"val_{metric}") if c in frame.columns]
            st.markdown(f"**{metric}**")
            st.line_chart(frame[shown].rename(columns={f"val_{metric}": "validation", metric: "train"}))
        st.dataframe(frame)

with model_tab:
    st.code(repr(app.model.net), language="text")
    shape = app.info.get("input_shape")
    if shape:
        import torch

        from torchhouse.summary import summary

        dtype = torch.long if app.kind == "text" else torch.float32  # a text net takes token indices
        try:
            st.code(str(summary(app.model.net, input_size=(1, *shape), dtype=dtype)), language="text")
        except Exception as exc:  # the layer table is extra: the page works without it
            st.warning(f"no layer table: {str(exc).splitlines()[0]}")

with config_tab:
    st.json(app.config, expanded=False)
    st.json(app.run, expanded=False)
