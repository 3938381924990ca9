"""Export with torch.export and safe loading of the program."""

import io
import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.files.export import ExportError
from torchhouse.frontends.demo import digits_cnn


def test_export_and_load_give_the_same_predictions(tmp_path):
    x, y = make_classification(n=50)
    model = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    model.fit(x, y, epochs=2, progress="none")
    path = model.export(tmp_path / "m.pt2", x[:1])
    assert path.exists() and (tmp_path / "m.safetensors").exists()
    exported = th.load_exported(path)
    torch.testing.assert_close(exported.predict(x, batch_size=7), model.predict(x))
    assert exported.meta["export"]["inputs"][0]["shape"] == [2, 6]


def test_export_a_cnn_and_run_it_without_its_code(tmp_path):
    x, _ = th.datasets.load_digits()
    model = th.Model(digits_cnn(), device="cpu")
    model.export(tmp_path / "cnn.pt2", x[:4])
    code = (
        "import torch, torchhouse as th; "
        f"m = th.load_exported({str(tmp_path / 'cnn.pt2')!r}); "
        "print(tuple(m.predict(torch.zeros(3, 1, 8, 8)).shape))"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "(3, 10)"


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow
            return self.a(x)
        return -self.a(x)


def test_data_dependent_control_flow_gives_a_clear_error(tmp_path):
    model = th.Model(DataDependent(), device="cpu")
    with pytest.raises(ExportError, match="data-dependent Python control flow"):
        model.export(tmp_path / "d.pt2", torch.randn(4, 6))
    assert not (tmp_path / "d.pt2").exists()


def test_bad_export_arguments(tmp_path):
    model = th.Model(make_net(), device="cpu")
    with pytest.raises(th.ConfigError, match="must end in .pt2"):
        model.export(tmp_path / "m.pt", torch.randn(2, 6))
    with pytest.raises(th.ConfigError, match="format: expected"):
        model.export(tmp_path / "m.pt2", torch.randn(2, 6), format="tflite")


def test_a_pt2_with_a_pickle_payload_is_refused_without_running_it(tmp_path):
    model = th.Model(make_net(), device="cpu")
    good = model.export(tmp_path / "m.pt2", torch.randn(2, 6))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(evil, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if "sample_inputs" in item.filename:
                buffer = io.BytesIO()
                torch.save(((Payload(),), {}), buffer)
                data = buffer.getvalue()
            target.writestr(item, data)
    with pytest.raises(th.CheckpointError, match="pickled example inputs"):
        th.load_exported(evil)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload()))  # the payload is real: unpickling it runs the command
    assert marker.exists()


def test_loading_junk_and_missing_files(tmp_path):
    with pytest.raises(th.CheckpointError, match="no such file"):
        th.load_exported(tmp_path / "none.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(th.CheckpointError, match="not a .pt2 archive"):
        th.load_exported(tmp_path / "junk.pt2")


def test_onnx_export_checks_with_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = th.Model(make_net(), device="cpu")
    path = model.export(tmp_path / "m.onnx", torch.randn(3, 6), format="onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input]
    assert (tmp_path / "m.safetensors").exists()


def test_an_exported_model_names_a_wrong_width_rank_dtype_or_count(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3))
    th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu").export(tmp_path / "m.pt2", torch.randn(2, 4))
    exported = th.load_exported(tmp_path / "m.pt2")
    assert exported.inputs == [((None, 4), torch.float32)]
    x = torch.randn(5, 4)
    assert torch.equal(exported(x), net(x).detach())  # right inputs still run
    with pytest.raises(th.DataError, match=r"input 0 must have shape \(N, 4\).*got \(5, 6\)"):
        exported(torch.randn(5, 6))
    with pytest.raises(th.DataError, match=r"must have shape \(N, 4\).*got \(4,\)"):
        exported(torch.randn(4))
    with pytest.raises(
        th.DataError, match=r"must be torch.float32, got torch.float64.*\.to\(torch.float32\)"
    ):
        exported(torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(th.DataError, match=r"takes 1 input tensor\(s\), got 2"):
        exported(x, x)
    with pytest.raises(th.DataError, match=r"must have shape \(N, 4\).*got \(3, 6\)"):
        exported.predict(torch.randn(7, 6).numpy(), batch_size=3)
