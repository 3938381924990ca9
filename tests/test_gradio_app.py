"""torchhouse app RUN --ui gradio: the page's functions, and the real page in headless Chromium."""

import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from test_app import _chromium, artifacts, digit_png, digits_run, tabular_run  # noqa: F401
from torchhouse.app.logic import load_app_run

gradio_app = pytest.importorskip("torchhouse.app.gradio_app")
pytest.importorskip("gradio", reason="the gradio extra: pip install 'torchhouse[gradio]'")


def drawn_digit(label=3, size=160):
    """A digit as the Sketchpad gives it: an RGBA sheet, dark strokes, transparent elsewhere."""
    from PIL import Image

    grey = np.asarray(Image.open(__import__("io").BytesIO(digit_png(label, size))).convert("L"))
    ink = 255 - grey  # 255 where the stroke is
    sheet = np.zeros((size, size, 4), dtype=np.uint8)
    sheet[..., 3] = ink
    return {"composite": sheet, "background": None, "layers": []}


def test_a_drawn_digit_is_classified_and_a_bad_upload_gets_a_message(digits_run, tmp_path):  # noqa: F811
    app = load_app_run(digits_run)
    message, table = gradio_app.predict_image(app, drawn_digit(3))
    assert message.startswith("Predicted class **3**") and len(table) == 1
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    message, table = gradio_app.predict_image(app, str(not_an_image))
    assert message.startswith("**Cannot predict:**") and "not an image" in message and table is None
    message, _ = gradio_app.predict_image(app, {"composite": None})
    assert "draw a digit" in message


def test_csv_rows_and_wrong_columns(tabular_run):  # noqa: F811
    app = load_app_run(tabular_run)
    rows = gradio_app.predict_csv(app, gradio_app.example_csv(app), None)
    assert rows[0].startswith("Predicted class") and len(rows[1]) == 3
    message, table = gradio_app.predict_csv(app, "a,b\n1,2\n", None)
    assert message.startswith("**Cannot predict:**") and table is None


def _serve(run_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "torchhouse", "app", str(run_dir), "--ui", "gradio", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                if response.status == 200:
                    return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the Gradio page did not start: {process.stdout.read()}")
        time.sleep(0.5)


@pytest.mark.skipif(
    _chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)"
)
@pytest.mark.slow
def test_the_gradio_page_in_a_real_browser_classifies_an_uploaded_digit(digits_run, tmp_path):  # noqa: F811
    playwright = pytest.importorskip("playwright.sync_api")
    process, port = _serve(digits_run)
    upload = tmp_path / "three.png"
    upload.write_bytes(digit_png(3))
    shots = artifacts(tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.get_by_text("Predict the picture").first.wait_for(timeout=60_000)
            page.locator("input[type=file]").last.set_input_files(str(upload))
            time.sleep(1.0)
            page.get_by_text("Predict the picture").first.click()
            page.get_by_text("Predicted class", exact=False).first.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "gradio-digits.png"), full_page=True)
            body = page.inner_text("body")
            browser.close()
        assert "Traceback" not in body and "Predicted class 3" in body
    finally:
        process.terminate()
        process.wait(timeout=30)
    with socket.socket() as probe:  # it listened on 127.0.0.1 only
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # and is gone now
