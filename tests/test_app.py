"""The Streamlit app: its logic, the page through Streamlit's AppTest, and a real browser."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import torchhouse as th
from torchhouse.app import APP_SCRIPT
from torchhouse.app.logic import AppInputError, image_to_input, load_app_run, predict_rows, rows_from_csv
from torchhouse.frontends.cli import main

pytest.importorskip("streamlit")


def artifacts(tmp_path: Path) -> Path:
    """Where the browser test saves its screenshot: TORCHHOUSE_TEST_ARTIFACTS, or the test's tmp_path."""
    return Path(os.environ.get("TORCHHOUSE_TEST_ARTIFACTS") or tmp_path)


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("tabular")
    config = {
        "name": "breast-cancer",
        "model": {
            "factory": "torchhouse.models:mlp",
            "kwargs": {"in_features": 30, "hidden": [16], "out_features": 1},
        },
        "data": {"dataset": "breast_cancer", "standardize": True},
        "loss": "BCEWithLogitsLoss",
        "optimizer": {"name": "Adam", "lr": 0.01},
        "metrics": {"acc": "binary_accuracy_logits"},
        "fit": {"epochs": 8, "batch_size": 32, "seed": 0, "validation_split": 0.2, "progress": "none"},
    }
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", str(folder / "c.yaml"), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits") / "run"
    assert main(["demo", "--epochs", "6", "--run-dir", str(folder), "--progress", "none"]) == 0
    return folder


def digit_png(label=3, size=64):
    """A digit from the held-out data, drawn as dark ink on white paper and enlarged."""
    from PIL import Image

    import torchhouse as th

    x, y = th.datasets.load_digits()
    _, x_test, _, y_test = th.datasets.train_test_split(x, y, 0.2, seed=0)
    index = int((y_test == label).nonzero()[0, 0])
    pixels = (255 * (1 - x_test[index, 0].numpy())).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def test_csv_rows_predict_and_wrong_columns_are_explained(tabular_run):
    app = load_app_run(tabular_run)
    assert app.kind == "tabular" and len(app.feature_names) == 30
    source = (
        Path(__file__).resolve().parent.parent / "src/torchhouse/datasets/breast_cancer.csv"
    ).read_text()
    lines = source.splitlines()
    csv_text = "\n".join(line.rsplit(",", 1)[0] for line in lines[:21]).encode()
    columns, table, probabilities = predict_rows(app, rows_from_csv(app, csv_text))
    assert columns == ["prediction", "probability"] and len(table) == 20
    truth = [int(line.rsplit(",", 1)[1]) for line in lines[1:21]]
    assert sum(row[0] == t for row, t in zip(table, truth)) >= 17
    assert probabilities.shape == (20, 2)
    with pytest.raises(AppInputError, match="missing column\\(s\\) mean_radius"):
        rows_from_csv(app, b"a,b\n1,2\n")
    with pytest.raises(AppInputError, match="row 2 of the CSV has a missing or non-numeric value"):
        rows_from_csv(app, (lines[0].rsplit(",", 1)[0] + "\n" + "x," * 29 + "1\n").encode())
    with pytest.raises(AppInputError, match="not text"):
        rows_from_csv(app, b"\xff\xfe\x00bad")


def test_upload_limit(tabular_run, monkeypatch):
    monkeypatch.setenv("TORCHHOUSE_APP_MAX_UPLOAD_MB", "0.001")
    app = load_app_run(tabular_run)
    with pytest.raises(AppInputError, match="the limit is 0.0 MB"):
        rows_from_csv(app, b"x" * 5000)


def test_images_are_read_like_the_training_data(digits_run):
    app = load_app_run(digits_run)
    assert app.kind == "image"
    array, _ = image_to_input(app, digit_png(3))
    assert array.shape == (1, 1, 8, 8) and array.min() >= 0 and array.max() <= 1
    _columns, table, probabilities = predict_rows(app, array)
    assert table[0][0] == 3 and probabilities.shape == (1, 10)
    with pytest.raises(AppInputError, match="not an image"):
        image_to_input(app, b"GIF89a not really")
    with pytest.raises(AppInputError, match="at least 8x8"):
        image_to_input(app, digit_png(3, size=4))


def test_a_folder_without_run_config_is_explained(tmp_path):
    with pytest.raises(
        th.ConfigError, match="cannot be served: it has neither run_config.json nor serve.json"
    ):
        load_app_run(tmp_path)
    assert main(["app", str(tmp_path)]) == 2
    with pytest.raises(AppInputError, match="no such run folder"):
        load_app_run(tmp_path / "missing")


def test_the_page_with_apptest(tabular_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TORCHHOUSE_RUN_DIR", str(tabular_run))
    page = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    page.run()
    assert not page.exception
    assert "breast-cancer" in page.title[0].value
    assert [m.label for m in page.metric] == ["test loss", "test acc"]
    page.button[0].click().run()  # predict the example rows in the text box
    assert not page.exception and not page.error
    assert page.dataframe[0].value.shape[0] == 3
    page.text_area[0].set_value("a,b\n1,2\n")
    page.button[0].click().run()
    assert "missing column(s)" in page.error[0].value


def test_the_page_for_a_missing_run_shows_an_error(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TORCHHOUSE_RUN_DIR", str(tmp_path / "nope"))
    page = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    page.run()
    assert not page.exception
    assert "no such run folder" in page.error[0].value


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _serve(run_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "torchhouse", "app", str(run_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as response:
                if response.status == 200:
                    return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the app did not start: {process.stdout.read()}")
        time.sleep(0.5)


@pytest.mark.skipif(
    _chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)"
)
@pytest.mark.slow
def test_in_a_real_browser(digits_run, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    process, port = _serve(digits_run)
    upload = tmp_path / "three.png"
    upload.write_bytes(digit_png(3))
    shots = artifacts(tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=_chromium(),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.get_by_text("Upload a picture").first.wait_for(timeout=60_000)
            page.locator("input[type=file]").set_input_files(str(upload))
            page.get_by_text("Predicted class", exact=False).first.wait_for(timeout=60_000)
            page.get_by_text("what the model sees").first.wait_for(timeout=60_000)
            time.sleep(1.5)  # let the chart finish drawing
            page.screenshot(path=str(shots / "app-digits.png"), full_page=True)
            body = page.inner_text("body")
            browser.close()
        assert "Traceback" not in body
        assert "Predicted class 3 with probability" in body
        assert (shots / "app-digits.png").stat().st_size > 10_000
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text") / "run"
    config = str(Path(__file__).resolve().parent.parent / "examples" / "configs" / "sentiment_words.yaml")
    assert main(["fit", config, "--run-dir", str(folder), "--set", "fit.epochs=6", "--progress", "none"]) == 0
    return folder


def test_a_text_run_from_a_config_predicts_texts(text_run, tmp_path, capsys):
    import json

    resolved = json.loads((text_run / "run_config.json").read_text())
    assert resolved["model"]["kwargs"]["vocabulary_size"] == len(resolved["data"]["vocabulary"]) + 2
    (tmp_path / "words.csv").write_text("text\nmarvelous\nhorrible\n")
    capsys.readouterr()
    assert main(["predict", str(text_run), str(tmp_path / "words.csv")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "prediction,p0,p1" and [line[0] for line in lines[1:]] == ["1", "0"]
    app = load_app_run(text_run)
    assert app.kind == "text"
    _, table, _ = predict_rows(app, ["wonderful", "awful"])
    assert [row[0] for row in table] == [1, 0]


def test_the_text_page_with_apptest(text_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TORCHHOUSE_RUN_DIR", str(text_run))
    page = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    page.run()
    assert not page.exception
    page.text_area[0].set_value("splendid\nterrible")
    page.button[0].click().run()
    assert not page.exception and not page.error
    frame = page.dataframe[0].value
    assert list(frame["text"]) == ["splendid", "terrible"] and list(frame["prediction"]) == [1, 0]
    page.text_area[0].set_value("   \n")
    page.button[0].click().run()
    assert "at least one text" in page.error[0].value
