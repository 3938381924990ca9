"""Notebooks, run by a real Jupyter kernel (nbclient + ipykernel): what a saved notebook stores."""

import json
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow

SETUP = """
import torch, torchhouse as th
from torch import nn
x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
y = (x[:, 0] > 0).long()
def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return th.Model(net, loss=nn.CrossEntropyLoss(), metrics=["acc"], device="cpu")
"""

CELLS = {
    "setup": SETUP,
    "fit": "h = make().fit(x, y, epochs=3, batch_size=8, seed=0)",
    "values": "print(json.dumps(h.history))",
    "bar": "h2 = make().fit(x, y, epochs=3, batch_size=8, seed=0, progress='bar')",
    "plot": "h.plot()",
    "launch": (
        "def train():\n"
        "    return make().fit(x, y, epochs=2, batch_size=8, seed=0).history\n"
        "launched = th.launch(train, nprocs=2, timeout=120)\n"
        "print(json.dumps(launched))"
    ),
}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Execute the notebook once with a python3 kernel from this environment; the cells by name."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("import json\n" + code if name == "setup" else code)
        for name, code in CELLS.items()
    ]
    folder = tmp_path_factory.mktemp("nb")
    client = nbclient.NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.km = client.create_kernel_manager()
    client.km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client.execute()
    saved = folder / "saved.ipynb"
    nbformat.write(notebook, saved)  # what GitHub / nbviewer would show: read back from disk
    cells = nbformat.read(saved, as_version=4).cells
    return dict(zip(CELLS, cells, strict=True))


def texts(cell, output_type=None):
    found = []
    for output in cell.outputs:
        if output_type is not None and output.output_type != output_type:
            continue
        if output.output_type == "stream":
            found.append(output.text)
        elif "data" in output:
            found.append(output.data.get("text/plain", ""))
    return found


def test_the_default_progress_is_one_output_whose_saved_text_holds_the_final_metrics(executed):
    fit = executed["fit"]
    history = json.loads(texts(executed["values"], "stream")[0])
    assert [o.output_type for o in fit.outputs] == ["display_data"]  # one output for the whole fit
    text = fit.outputs[0].data["text/plain"]
    lines = text.splitlines()
    assert len(lines) == 3 and all(
        line.startswith(f"Epoch {i}/3 - 8/8 - ") for i, line in enumerate(lines, 1)
    )
    assert f"loss: {history['loss'][-1]:.4g} - acc: {history['acc'][-1]:.4g}" in lines[-1]
    assert "application/vnd.jupyter.widget-view+json" not in fit.outputs[0].data  # no widget state needed


def test_progress_bar_in_a_notebook_writes_one_line_per_epoch(executed):
    streams = [o for o in executed["bar"].outputs if o.output_type == "stream"]
    text = "".join(o.text for o in streams)
    assert "\r" not in text
    assert [line.split(" - ")[0] for line in text.splitlines()] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all(o.name == "stderr" for o in streams)


def test_history_plot_as_the_last_line_shows_the_figure_once(executed):
    images = [o for o in executed["plot"].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1


def test_launch_from_a_notebook_draws_progress_in_the_parent_without_fork_warnings(executed):
    cell = executed["launch"]
    everything = "\n".join(texts(cell))
    assert "fork" not in everything.lower(), everything[:2000]
    displays = [o for o in cell.outputs if o.output_type == "display_data"]
    assert len(displays) == 1
    lines = displays[0].data["text/plain"].splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    launched = json.loads(texts(cell, "stream")[-1])
    assert f"loss: {launched['loss'][-1]:.4g}" in lines[-1]
