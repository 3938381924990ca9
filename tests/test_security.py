"""Files torchhouse did not write are data, never code (docs/security.md).

Every payload here is real: it writes a marker file when it runs, and each test shows it
does run where torchhouse does not guard (the positive control), then asserts that
torchhouse's path leaves no marker.
"""

import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.errors import TorchhouseError, UntrustedCodeError
from torchhouse.files.checkpoint import load_state, read_tensors, save_state
from torchhouse.frontends.cli import main
from torchhouse.frontends.config import load_config, read_run_config, train_from_config, write_run_config
from torchhouse.frontends.serving import load_run

PAYLOAD_MODULE = "torchhouse_test_payload"


def payload_module(folder: Path, marker: Path) -> Path:
    """A module that writes ``marker`` when imported, and offers callables of every shape."""
    source = f"""
from pathlib import Path
Path({str(marker)!r}).write_text("imported")

def anything(*args, **kwargs):
    Path({str(marker)!r}).write_text("called")
    import torch
    return torch.nn.Linear(30, 1)
"""
    (folder / f"{PAYLOAD_MODULE}.py").write_text(source)
    return folder


@pytest.fixture(scope="module")
def tabular_config():
    return {
        "name": "bc",
        "model": {
            "factory": "torchhouse.models:mlp",
            "kwargs": {"in_features": 30, "hidden": [8], "out_features": 1},
        },
        "data": {"dataset": "breast_cancer", "standardize": True},
        "loss": "BCEWithLogitsLoss",
        "optimizer": {"name": "Adam", "lr": 0.01},
        "metrics": {"acc": "binary_accuracy_logits"},
        "fit": {"epochs": 2, "batch_size": 64, "seed": 0, "progress": "none"},
    }


@pytest.fixture(scope="module")
def genuine_run(tmp_path_factory, tabular_config):
    folder = tmp_path_factory.mktemp("genuine") / "run"
    train_from_config(tabular_config, run_dir=folder)
    return folder


@pytest.fixture()
def rows_csv(tmp_path):
    from importlib import resources

    with resources.files("torchhouse.datasets").joinpath("breast_cancer.csv").open() as handle:
        lines = handle.read().splitlines()[:6]
    header = lines[0].split(",")
    keep = [i for i, h in enumerate(header) if h != "benign"]
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n")
    return path


def tampered_run(genuine: Path, folder: Path, change, keep_program: bool = True) -> Path:
    shutil.copytree(genuine, folder)
    if not keep_program:
        (folder / "model.pt2").unlink()
    config = read_run_config(folder)
    change(config)
    write_run_config(folder, config)  # an attacker recomputes the checksum
    return folder


ATTACKS = {
    "model.factory": lambda c: c["model"].update(factory=f"{PAYLOAD_MODULE}:anything", kwargs={}),
    "model.factory torch.hub": lambda c: c["model"].update(
        factory="torch.hub:load", kwargs={"repo_or_dir": ".", "model": "x", "source": "local"}
    ),
    "loss": lambda c: c.update(loss={"name": f"{PAYLOAD_MODULE}:anything"}),
    "loss subprocess": lambda c: c.update(
        loss={"name": "subprocess:Popen", "args": ["sh", "-c", "touch pwned"]}
    ),
    "optimizer": lambda c: c.update(optimizer={"name": f"{PAYLOAD_MODULE}:anything"}),
    "lr_scheduler": lambda c: c.update(lr_scheduler={"name": f"{PAYLOAD_MODULE}:anything"}),
    "metrics": lambda c: c.update(metrics={"acc": f"{PAYLOAD_MODULE}:anything"}),
    "callbacks": lambda c: c.update(callbacks=[{"name": f"{PAYLOAD_MODULE}:anything"}]),
    "data.factory": lambda c: c.update(
        data={
            **{k: v for k, v in c["data"].items() if k != "dataset"},
            "factory": f"{PAYLOAD_MODULE}:anything",
        }
    ),
}


@pytest.mark.parametrize("field", list(ATTACKS))
def test_no_name_in_a_run_folder_is_imported_by_the_python_loader(field, genuine_run, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.syspath_prepend(str(payload_module(tmp_path, marker)))
    monkeypatch.chdir(tmp_path)
    folder = tampered_run(genuine_run, tmp_path / "run", ATTACKS[field], keep_program=False)
    with pytest.raises(UntrustedCodeError, match="trust_code=True"):
        load_run(folder)
    assert not marker.exists() and not (tmp_path / "pwned").exists()


def test_a_tampered_folder_is_served_from_its_program_without_running_the_names(
    genuine_run, tmp_path, monkeypatch
):
    marker = tmp_path / "marker"
    monkeypatch.syspath_prepend(str(payload_module(tmp_path, marker)))
    x = torch.randn(7, 30)
    _, genuine = load_run(genuine_run)
    for field in ATTACKS:
        folder = tampered_run(genuine_run, tmp_path / field.replace(" ", "_"), ATTACKS[field])
        config, model = load_run(folder)
        assert config["served_from"] == "model.pt2"
        torch.testing.assert_close(model.predict(x), genuine.predict(x), rtol=0, atol=0)
    assert not marker.exists()
    # the positive control: trusting the folder does import and call the payload
    trusted = tampered_run(genuine_run, tmp_path / "trusted", ATTACKS["model.factory"])
    with pytest.raises(th.CheckpointError, match="does not match the net"):
        load_run(trusted, trust_code=True)  # the payload's net does not fit the weights, but it ran
    assert marker.read_text() == "called"


def run_cli(args, cwd, extra_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "torchhouse", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_evaluate_and_predict_commands_never_run_the_folder_code(genuine_run, tmp_path, rows_csv):
    marker = tmp_path / "marker"
    payload_module(tmp_path, marker)
    folder = tampered_run(genuine_run, tmp_path / "run", ATTACKS["loss"], keep_program=False)
    for args in (["evaluate", str(folder)], ["predict", str(folder), str(rows_csv)]):
        done = run_cli(args, tmp_path, tmp_path)
        assert done.returncode == 2, done.stderr
        assert "--trust-code" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()
    # with the program kept, the same folder is served from data: correct output, no code run
    served = tampered_run(genuine_run, tmp_path / "served", ATTACKS["loss"])
    done = run_cli(["predict", str(served), str(rows_csv)], tmp_path, tmp_path)
    assert done.returncode == 0, done.stderr
    genuine = run_cli(["predict", str(genuine_run), str(rows_csv)], tmp_path, tmp_path)
    assert done.stdout == genuine.stdout and len(done.stdout.splitlines()) == 6
    assert not marker.exists()
    done = run_cli(["predict", str(folder), str(rows_csv), "--trust-code"], tmp_path, tmp_path)
    assert marker.exists()  # positive control


def test_the_app_never_runs_the_folder_code(genuine_run, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from torchhouse.app import APP_SCRIPT

    marker = tmp_path / "marker"
    monkeypatch.syspath_prepend(str(payload_module(tmp_path, marker)))
    folder = tampered_run(genuine_run, tmp_path / "run", ATTACKS["model.factory"], keep_program=False)
    monkeypatch.setenv("TORCHHOUSE_RUN_DIR", str(folder))
    monkeypatch.setenv("TORCHHOUSE_TRUST_CODE", "0")
    page = AppTest.from_file(str(APP_SCRIPT), default_timeout=60).run()
    assert any("--trust-code" in e.value for e in page.error)
    assert not marker.exists()
    assert main(["app", str(folder)]) == 2  # refused before Streamlit starts
    assert not marker.exists()


def test_a_data_path_outside_the_run_folder_is_refused(genuine_run, tmp_path, capsys):
    secret = tmp_path / "secret.csv"
    secret.write_text("password,benign\nhunter2,1\n")
    folder = tampered_run(
        genuine_run,
        tmp_path / "run",
        lambda c: c.update(
            data={k: v for k, v in c["data"].items() if k != "dataset"}
            | {"csv": "/etc/passwd", "target": "x"}
        ),
    )
    assert main(["evaluate", str(folder)]) == 0  # the kept test split: the data path is not read
    assert "root:" not in capsys.readouterr().out
    (folder / "test_split.safetensors").unlink()  # a folder without one reads its recorded data
    assert main(["evaluate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "points outside" in err and "root:" not in err
    relative = tampered_run(
        genuine_run,
        tmp_path / "run2",
        lambda c: c.update(
            data={k: v for k, v in c["data"].items() if k != "dataset"}
            | {"csv": "../secret.csv", "target": "benign"}
        ),
    )
    (relative / "test_split.safetensors").unlink()
    assert main(["evaluate", str(relative)]) == 2
    assert "hunter2" not in capsys.readouterr().err


def test_a_config_may_not_name_code_or_escape_without_trust(tmp_path, tabular_config, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.syspath_prepend(str(payload_module(tmp_path, marker)))
    monkeypatch.chdir(tmp_path)
    config = {**tabular_config, "model": {"factory": f"{PAYLOAD_MODULE}:anything", "kwargs": {}}}
    with pytest.raises(UntrustedCodeError, match="--trust-code"):
        train_from_config(config, run_dir=tmp_path / "r")
    assert not marker.exists()
    for name in ("../../x", "a/b", "..", ""):
        with pytest.raises(th.ConfigError, match="plain folder name"):
            train_from_config({**tabular_config, "name": name})
    assert not (tmp_path.parent.parent / "x").exists()
    with pytest.raises(th.ConfigError, match="points outside"):
        train_from_config({**tabular_config, "run_dir": "/tmp/elsewhere"})
    (tmp_path / "c.yaml").write_text(json.dumps({**tabular_config, "name": "../../x"}))
    assert main(["fit", str(tmp_path / "c.yaml")]) == 2


def test_callback_paths_in_a_config_stay_inside_the_run(tmp_path, tabular_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {**tabular_config, "callbacks": [{"name": "CSVLogger", "path": "../../log.csv"}]}
    with pytest.raises(th.ConfigError, match="callbacks\\[0\\].path.*points outside"):
        train_from_config(config, run_dir=tmp_path / "r")
    config["callbacks"] = [{"name": "CSVLogger", "path": "log.csv"}]
    train_from_config({**config, "fit": {**config["fit"], "epochs": 1}}, run_dir=tmp_path / "r")
    assert (tmp_path / "r" / "log.csv").is_file()


# --------------------------------------------------------------------------- exported programs


def genuine_export(folder: Path) -> Path:
    model = th.Model(make_net(), device="cpu")
    return model.export(folder / "m.pt2", torch.randn(2, 6))


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def rebuilt(good: Path, target: Path, edit) -> Path:
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            data = edit(info.filename, source.read(info.filename), out)
            if data is not None:
                out.writestr(info.filename, data)
    return target


def pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def legacy_weights(marker):
    def edit(name, data, out):
        if name.endswith("model_weights_config.json"):
            out.writestr("archive/data/weights/model.pt", pickled(Payload(marker)))
        return data

    return edit


def legacy_constants(marker):
    def edit(name, data, out):
        if name.endswith("model_constants_config.json"):
            out.writestr("archive/data/constants/model.pt", pickled(Payload(marker)))
        return data

    return edit


def opaque_constant(marker):
    def edit(name, data, out):
        if name.endswith("model_constants_config.json"):
            out.writestr("archive/data/constants/opaque_obj_0", pickle.dumps(Payload(marker)))
            evil = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
            config = {"config": {"evil": evil}}
            return json.dumps(config).encode()
        return data

    return edit


def genuine_after_payload(marker, state):
    """Unpickled from a crafted archive: writes the marker, then hands torch the real weights."""
    Path(marker).write_text("ran")
    return state


class StealthyPayload:
    def __init__(self, marker, state):
        self.marker, self.state = str(marker), state

    def __reduce__(self):
        return (genuine_after_payload, (self.marker, self.state))


def weights_and_payload(marker, good):
    """Legacy weights that unpickle to the genuine state dict *and* run the payload."""
    state = dict(torch.export.load(str(good)).state_dict)

    def edit(name, data, out):
        if name.endswith("model_weights_config.json"):
            out.writestr("archive/data/weights/model.pt", pickled(StealthyPayload(marker, state)))
        return data

    return edit


def sympy_expression(marker):
    def edit(name, data, out):
        if name.endswith("models/model.json"):
            return (
                data.decode()
                .replace("Symbol('s", f"__import__('os').system('touch {marker}') + Symbol('s", 1)
                .encode()
            )
        return data

    return edit


def guard_code(marker):
    def edit(name, data, out):
        if name.endswith("models/model.json"):
            program = json.loads(data)
            program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
            return json.dumps(program).encode()
        return data

    return edit


def operator_target(marker):
    def edit(name, data, out):
        if name.endswith("models/model.json"):
            return data.decode().replace("torch.ops.aten.linear.default", "torch.hub.load", 1).encode()
        return data

    return edit


def pickled_example_inputs(marker):
    def edit(name, data, out):
        if "sample_inputs" in name:
            return pickled(((Payload(marker),), {}))
        return data

    return edit


PT2_ATTACKS = {
    "legacy weights": (legacy_weights, True),
    "legacy constants": (legacy_constants, True),
    "opaque_obj constant": (opaque_constant, True),
    "sympy expression": (sympy_expression, True),
    "guard code": (guard_code, False),
    "operator target": (operator_target, False),
    "pickled example inputs": (pickled_example_inputs, True),
}


@pytest.mark.parametrize("attack", [a for a in PT2_ATTACKS if a != "legacy weights with genuine outputs"])
def test_crafted_pt2_archives_are_refused_before_torch_reads_them(attack, tmp_path):
    make, torch_runs_it = PT2_ATTACKS[attack]
    good = genuine_export(tmp_path)
    marker = tmp_path / "marker"
    evil = rebuilt(good, tmp_path / "evil.pt2", make(marker))
    with pytest.raises(th.CheckpointError, match="refused"):
        th.load_exported(evil)
    assert not marker.exists()
    if torch_runs_it:  # positive control: torch.export.load alone runs the payload
        try:
            torch.export.load(str(evil))
        except Exception:
            pass
        assert marker.exists()


def test_a_stealthy_archive_that_predicts_correctly_is_refused_too(tmp_path, monkeypatch):
    import logging

    # torch logs its weights_only=False fallback with a malformed format string, which pytest's
    # log capture raises on; plain Python only prints "--- Logging error ---" and goes on
    monkeypatch.setattr(logging.getLogger("torch._export.serde.serialize"), "disabled", True)
    good = genuine_export(tmp_path)
    marker = tmp_path / "marker"
    evil = rebuilt(good, tmp_path / "evil.pt2", weights_and_payload(marker, good))
    with pytest.raises(th.CheckpointError, match="data/weights/model.pt"):
        th.load_exported(evil)
    assert not marker.exists()
    # positive control: plain torch.export.load runs the payload and predicts like the real export
    x = torch.randn(4, 6)
    expected = torch.export.load(str(good)).module()(x)
    assert torch.equal(torch.export.load(str(evil)).module()(x), expected)
    assert marker.read_text() == "ran"


def test_an_archive_written_by_torch_export_save_is_refused_with_the_way_out(tmp_path):
    net = make_net().eval()
    program = torch.export.export(net, (torch.randn(2, 6),))
    torch.export.save(program, tmp_path / "plain.pt2")
    with pytest.raises(th.CheckpointError, match="pickled example inputs.*Model.export"):
        th.load_exported(tmp_path / "plain.pt2")
    loaded = th.load_exported(tmp_path / "plain.pt2", trust_code=True)  # your own file
    x = torch.randn(2, 6)
    torch.testing.assert_close(loaded(x), net(x))


# --------------------------------------------------------------------------- fuzzing


def mutations(data: bytes, count: int, seed: int):
    rng = random.Random(seed)
    for _ in range(count):
        buffer = bytearray(data)
        kind = rng.random()
        if kind < 0.8:
            for _ in range(rng.randint(1, 3)):
                buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        elif kind < 0.9:
            del buffer[rng.randrange(len(buffer)) :]
        else:
            position = rng.randrange(len(buffer))
            buffer[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        yield bytes(buffer)


def same_tree(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b


def fuzz(path: Path, load, expected, seed: int) -> dict:
    original = path.read_bytes()
    outcomes = {"same": 0, "refused": 0}
    for mutated in mutations(original, 200, seed):
        path.write_bytes(mutated)
        try:
            got = load()
        except TorchhouseError:
            outcomes["refused"] += 1
            continue
        assert same_tree(got, expected), f"a mutation loaded different content from {path.name}"
        outcomes["same"] += 1
    path.write_bytes(original)
    return outcomes


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_fuzzed_weights_states_configs_and_programs_load_identically_or_fail_clearly(genuine_run, tmp_path):
    weights = tmp_path / "w.safetensors"
    th.Model(make_net(), device="cpu").save(weights)
    expected = read_tensors(weights)
    outcome = fuzz(weights, lambda: read_tensors(weights), expected, seed=1)
    assert outcome["refused"] > 100

    state = {"w": torch.arange(6.0), "lr": 0.1, "steps": [1, 2], "nested": {"t": (torch.ones(2), "x")}}
    save_state(tmp_path / "state", state)
    outcome = fuzz(tmp_path / "state" / "state.json", lambda: load_state(tmp_path / "state"), state, seed=2)
    assert outcome["refused"] > 150

    run = tmp_path / "run"
    shutil.copytree(genuine_run, run)
    x = torch.randn(5, 30)
    config, model = load_run(run)

    def open_run():
        loaded_config, loaded = load_run(run)
        return loaded_config, loaded.predict(x)

    fuzz(run / "run_config.json", open_run, (config, model.predict(x)), seed=3)

    program = run / "model.pt2"
    exported = th.load_exported(program)
    outcome = fuzz(program, lambda: th.load_exported(program).predict(x), exported.predict(x), seed=4)
    assert outcome["refused"] > 100


# --------------------------------------------------------------------------- limits and paths


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for level in range(1, 9):
        previous = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "bomb.yaml").stat().st_size < 600
    with pytest.raises(th.ConfigError, match="aliases .* are not allowed"):
        load_config(tmp_path / "bomb.yaml")
    (tmp_path / "big.yaml").write_text("a: " + "x" * (2 << 20))
    with pytest.raises(th.ConfigError, match="at most 1048576 bytes"):
        load_config(tmp_path / "big.yaml")


def test_decompression_bombs_are_refused_before_decoding(genuine_run):
    pytest.importorskip("PIL")
    from PIL import Image

    from torchhouse.app.logic import AppInputError, AppRun, image_to_input

    app = AppRun(Path("."), {}, None, {"input_shape": [1, 8, 8]})
    for size in ((6000, 6000), (14000, 14000)):  # under and over Pillow's own bomb limit
        buffer = io.BytesIO()
        Image.new("1", size).save(buffer, format="PNG")  # a few KB that decode to many MB
        with pytest.raises(AppInputError, match="the limit is 16,777,216 pixels"):
            image_to_input(app, buffer.getvalue())


def test_huge_csv_fields_and_non_finite_values_get_clear_messages(genuine_run, tmp_path, capsys, rows_csv):
    from torchhouse.app.logic import AppInputError, load_app_run, rows_from_csv

    header = rows_csv.read_text().splitlines()[0]
    width = len(header.split(","))
    huge = tmp_path / "huge.csv"
    huge.write_text(header + "\n" + "1" * 200_000 + ",0" * (width - 1) + "\n")
    assert main(["predict", str(genuine_run), str(huge)]) == 2
    assert "at most 131,072 characters" in capsys.readouterr().err
    nan = tmp_path / "nan.csv"
    first = header.split(",")[0]
    nan.write_text(header + "\n" + "nan" + ",1" * (width - 1) + "\n")
    assert main(["predict", str(genuine_run), str(nan)]) == 2
    assert f"column {first!r} is nan" in capsys.readouterr().err
    app = load_app_run(genuine_run)
    with pytest.raises(AppInputError, match="at most 131,072 characters"):
        rows_from_csv(app, huge.read_bytes())
    with pytest.raises(AppInputError, match=f"column {first!r} is inf"):
        rows_from_csv(app, (header + "\ninf" + ",1" * (width - 1) + "\n").encode())


def test_a_symlinked_checkpoints_folder_is_never_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    x, y = make_classification(n=30)
    model = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    model.fit(x, y, epochs=1, run_dir=tmp_path / "r", progress="none")
    shutil.rmtree(tmp_path / "r" / "checkpoints")
    (tmp_path / "r" / "checkpoints").symlink_to(outside)
    with pytest.raises(th.CheckpointError, match="symbolic link"):
        model.fit(x, y, epochs=3, run_dir=tmp_path / "r", resume=True, progress="none")
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_an_edited_state_json_is_skipped_for_the_previous_state(tmp_path):
    x, y = make_classification(n=30)
    fit = dict(epochs=2, run_dir=tmp_path / "r", progress="none", keep_checkpoints=5, seed=0)
    th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu").fit(x, y, **fit)
    newest = sorted((tmp_path / "r" / "checkpoints").glob("ckpt-*"))[-1] / "state.json"
    meta = json.loads(newest.read_text())
    meta["state"]["global_step"] = 1000
    newest.write_text(json.dumps(meta))
    model = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    with pytest.warns(UserWarning, match="damaged checkpoint ckpt-00002-0000000.*checksum does not match"):
        history = model.fit(x, y, **{**fit, "epochs": 3}, resume=True)
    assert history.epoch == [0, 1, 2] and model.global_step == 3
