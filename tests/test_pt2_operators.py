"""The .pt2 checker admits only operators that compute on tensors (torchhouse.pt2_operators).

Each crafted archive is a genuine export with a real payload prepended: ``aten.from_file``
on a marker path with ``shared=True`` creates (and maps) that file when the program runs,
and ``fill_`` writes into it. The positive control runs the archive with torch alone and
sees the marker appear; torchhouse refuses the archive, names the operator of the family
under test, and no marker appears.
"""

import copy
import json
import zipfile
from pathlib import Path

import pytest
import torch

import torchhouse as th
from conftest import make_net
from torchhouse.files.pt2_operators import ATEN_FAMILIES, PURE_ONLY_WITH, operator_refusal

CPU = {"type": "cpu", "index": None}


def meta(dtype: int, sizes: list, strides: list) -> dict:
    """A serialized tensor description (dtype codes: 1 uint8, 7 float32)."""
    return {
        "dtype": dtype,
        "sizes": sizes,
        "requires_grad": False,
        "device": CPU,
        "strides": strides,
        "storage_offset": {"as_int": 0},
        "layout": 7,
    }


def bytes_meta(n: int) -> dict:
    return meta(1, [{"as_int": n}], [{"as_int": 1}])


KEYWORD_ONLY = ("dtype", "out")  # serialized with kind 2; the others are positional (kind 1)


def node(target: str, result: str, **arguments) -> dict:
    inputs = [{"name": k, "arg": v, "kind": 2 if k in KEYWORD_ONLY else 1} for k, v in arguments.items()]
    return {"target": target, "inputs": inputs, "outputs": [{"as_tensor": {"name": result}}], "metadata": {}}


def tensor(name: str) -> dict:
    return {"as_tensor": {"name": name}}


def writes_marker(marker: Path) -> tuple[list, dict]:
    """from_file(marker, shared=True) creates and maps the file; fill_ writes b"AAAAAAAA" into it."""
    nodes = [
        node(
            "torch.ops.aten.from_file.default",
            "evil_file",
            filename={"as_string": str(marker)},
            shared={"as_bool": True},
            size={"as_int": 8},
            dtype={"as_scalar_type": 1},
        ),
        node("torch.ops.aten.fill_.Scalar", "evil_filled", self=tensor("evil_file"), value={"as_int": 65}),
    ]
    return nodes, {"evil_file": bytes_meta(8), "evil_filled": bytes_meta(8)}


def family_nodes(family: str, input_meta: dict) -> tuple[list, dict]:
    """The operator of ``family`` applied after the payload, and the description of its output."""
    x = tensor("input")
    eight = {"as_ints": [8]}
    cases = {
        "file and memory mapping": ([], {}),  # the payload's own from_file
        "in place on the input": (
            [node("torch.ops.aten.add_.Tensor", "family_out", self=x, other=x)],
            {"family_out": input_meta},
        ),
        "out= variant": (
            [node("torch.ops.aten.relu.out", "family_out", self=x, out=x)],
            {"family_out": input_meta},
        ),
        "storage": (
            [
                node(
                    "torch.ops.aten.as_strided.default",
                    "family_out",
                    self=x,
                    size={"as_ints": [1]},
                    stride={"as_ints": [1]},
                )
            ],
            {"family_out": meta(7, [{"as_int": 1}], [{"as_int": 1}])},
        ),
        "uninitialised memory": (
            [node("torch.ops.aten.empty.memory_format", "family_out", size=eight)],
            {"family_out": meta(7, [{"as_int": 8}], [{"as_int": 1}])},
        ),
        "random numbers": (
            [node("torch.ops.aten.rand.default", "family_out", size=eight)],
            {"family_out": meta(7, [{"as_int": 8}], [{"as_int": 1}])},
        ),
        "dropout in training": (
            [
                node(
                    "torch.ops.aten.dropout.default",
                    "family_out",
                    input=x,
                    p={"as_float": 0.5},
                    train={"as_bool": True},
                )
            ],
            {"family_out": input_meta},
        ),
        "distributed": (
            [
                node(
                    "torch.ops._c10d_functional.all_reduce.default",
                    "family_out",
                    input=x,
                    reduce_op={"as_string": "sum"},
                    group_name={"as_string": "0"},
                )
            ],
            {"family_out": input_meta},
        ),
    }
    return cases[family]


NAMED = {
    "file and memory mapping": "aten.from_file",
    "in place on the input": "aten.add_",
    "out= variant": "aten.relu'.out",
    "storage": "aten.as_strided",
    "uninitialised memory": "aten.empty",
    "random numbers": "aten.rand",
    "dropout in training": "aten.dropout' with train=True",
    "distributed": "_c10d_functional.all_reduce",
}


def craft(good: Path, target: Path, extra_nodes: list, extra_values: dict) -> Path:
    """``good`` with ``extra_nodes`` run before the net's own nodes."""
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("models/model.json"):
                program = json.loads(data)
                graph = program["graph_module"]["graph"]
                graph["nodes"] = extra_nodes + graph["nodes"]
                graph["tensor_values"].update(extra_values)
                data = json.dumps(program).encode()
            out.writestr(info, data)
    return target


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    return th.Model(make_net(), device="cpu").export(folder / "m.pt2", torch.randn(2, 6))


def input_description(good: Path) -> dict:
    with zipfile.ZipFile(good) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        program = json.loads(archive.read(name))
    return copy.deepcopy(program["graph_module"]["graph"]["tensor_values"]["input"])


@pytest.mark.parametrize("family", list(NAMED))
def test_each_refused_family_is_refused_with_a_real_payload(family, genuine, tmp_path):
    marker = tmp_path / "marker"
    payload, values = writes_marker(marker)
    more, more_values = family_nodes(family, input_description(genuine))
    evil = craft(genuine, tmp_path / "evil.pt2", payload + more, {**values, **more_values})
    with pytest.raises(th.CheckpointError, match="refused") as refused:
        th.load_exported(evil).predict(torch.randn(3, 6))
    assert NAMED[family] in str(refused.value)
    assert not marker.exists()
    # positive control: torch alone loads it and the program writes the marker when it runs
    try:
        torch.export.load(str(evil)).module()(torch.randn(3, 6))
    except Exception:
        pass  # a later operator may fail; the payload ran first
    assert marker.read_bytes() == b"A" * 8


def test_the_file_payload_is_refused_on_every_route_that_runs_a_program(genuine, tmp_path):
    """th.load_exported, `torchhouse predict` of a downloaded run folder, and the app's model."""
    from torchhouse.frontends.cli import main
    from torchhouse.frontends.serving import load_run

    x = torch.randn(20, 6)
    y = torch.randint(0, 3, (20,))
    run = tmp_path / "run"
    model = th.Model(make_net(), loss=torch.nn.CrossEntropyLoss(), device="cpu")
    model.fit(x, y, epochs=1, run_dir=run, progress="none")
    marker = tmp_path / "marker"
    payload, values = writes_marker(marker)
    genuine_program = run / "model.pt2"
    crafted = craft(genuine_program, tmp_path / "evil.pt2", payload, values)
    genuine_program.write_bytes(crafted.read_bytes())
    with pytest.raises(th.CheckpointError, match="aten.from_file"):
        load_run(run)  # what `torchhouse app` and `torchhouse evaluate` open
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(f"x{i}" for i in range(6)) + "\n" + ",".join(["0.5"] * 6) + "\n")
    assert main(["predict", str(run), str(rows)]) == 2
    assert not marker.exists()


def test_every_listed_operator_is_a_real_pure_aten_operator():
    """The allowlist names operators this torch knows; none of their overloads is mutable
    unless the checker refuses it by name (in place, out=)."""
    missing = [
        f"{family}: {name}"
        for family, names in ATEN_FAMILIES.items()
        for name in names
        if not hasattr(torch.ops.aten, name)
    ]
    assert not missing, missing
    for name, (argument, _) in PURE_ONLY_WITH.items():
        overloads = getattr(torch.ops.aten, name).overloads()
        schemas = [getattr(getattr(torch.ops.aten, name), o)._schema for o in overloads]
        assert any(argument in [a.name for a in s.arguments] for s in schemas), name


def test_arguments_that_make_an_operator_pure_are_read_from_the_program():
    train_false = {"train": {"as_bool": False}}
    assert operator_refusal("torch.ops.aten.dropout.default", train_false) is None
    assert "train=True" in operator_refusal("torch.ops.aten.dropout.default", {"train": {"as_bool": True}})
    assert "without a literal" in operator_refusal("torch.ops.aten.dropout.default", {"train": tensor("t")})
    batch_norm = "torch.ops.aten.batch_norm.default"
    assert operator_refusal(batch_norm, {"training": {"as_bool": False}}) is None
    assert "updates a buffer" in operator_refusal(batch_norm, {"training": {"as_bool": True}})
    sdpa = "torch.ops.aten.scaled_dot_product_attention.default"
    assert operator_refusal(sdpa, {}) is None  # dropout_p defaults to 0
    assert "dropout_p=0.1" in operator_refusal(sdpa, {"dropout_p": {"as_float": 0.1}})
    assert "in place" in operator_refusal("torch.ops.aten.relu_.default", {})
    assert "not an aten operator" in operator_refusal("torch.ops.prims.add.default", {})


@pytest.mark.parametrize(
    "net, example",
    [
        ("transformer", (2, 5, 8)),
        ("lstm", (2, 7, 4)),
        ("conv_bn", (2, 3, 16, 16)),
    ],
)
def test_common_nets_export_and_load_through_the_checker(net, example, tmp_path):
    from torch import nn

    torch.manual_seed(0)
    nets = {
        "transformer": lambda: nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2
        ),
        "lstm": lambda: LSTMHead(),
        "conv_bn": lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.LayerNorm(4),
            nn.Dropout(0.2),
            nn.Linear(4, 2),
        ),
    }
    module = nets[net]()
    x = torch.randn(*example)
    path = th.Model(module, device="cpu").export(tmp_path / "m.pt2", x)
    loaded = th.load_exported(path)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), module(x))


class LSTMHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 5, batch_first=True, num_layers=2, dropout=0.1)
        self.gru = torch.nn.GRU(5, 5, batch_first=True)
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x):
        a, _ = self.lstm(x)
        b, _ = self.gru(a)
        return self.head(b[:, -1])
