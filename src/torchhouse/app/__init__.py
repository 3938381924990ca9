"""The app for a run folder (`torchhouse app RUN_DIR`): the Streamlit page (`streamlit_app`) and
what it does, as plain functions tested without a browser (`logic`). Streamlit is imported
only by the page script.
"""

from torchhouse.frontends.app_command import APP_SCRIPT, streamlit_command

__all__ = ["APP_SCRIPT", "streamlit_command"]
