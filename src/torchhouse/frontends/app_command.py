"""The command that starts the app's server for a run folder (``torchhouse app``).

The page scripts live in `torchhouse.app`; starting one needs only its path, so the
command line does not import the app layer above it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_SCRIPT", "gradio_command", "streamlit_command"]

APP_SCRIPT = Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py"


def streamlit_command(run_dir: str, port: int, max_upload_mb: float) -> list[str]:
    """The command that serves the app for ``run_dir`` on 127.0.0.1:``port``."""
    import sys

    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        str(max(1, int(max_upload_mb + 0.999))),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--",
        run_dir,
    ]


def gradio_command(run_dir: str, port: int, max_upload_mb: float) -> list[str]:
    """The command that serves the Gradio page for ``run_dir`` on 127.0.0.1:``port``."""
    import sys

    return [
        sys.executable, "-m", "torchhouse.app.gradio_app", run_dir,
        "--port", str(port), "--max-upload-mb", str(max_upload_mb),
    ]  # fmt: skip
