"""Weights files: safetensors + JSON, atomic, never unpickled, clear errors."""

import json
import os
import pickle

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net, params_equal
from torchhouse.files.checkpoint import atomic_write_bytes, load_state, save_state


def test_save_writes_safetensors_and_json_and_load_restores(tmp_path):
    x, y = make_classification(n=30)
    model = th.Model(make_net(seed=1), loss=nn.CrossEntropyLoss(), device="cpu")
    model.fit(x, y, epochs=2, progress="none")
    path = model.save(tmp_path / "m.safetensors")
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["format"] == "torchhouse-weights"
    assert meta["parameters"] == sum(p.numel() for p in model.net.parameters())
    assert meta["tensors"]["0.weight"]["shape"] == [16, 6]
    assert len(meta["history"]["loss"]) == 2
    other = th.Model(make_net(seed=2), device="cpu")
    assert not params_equal(other.net, model.net)
    other.load_weights(path)
    assert params_equal(other.net, model.net)
    assert torch.equal(other.predict(x), model.predict(x))


def test_tied_weights_save_and_load(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, x):
            return self.out(self.emb(x))

    model = th.Model(Tied(), device="cpu")
    model.save(tmp_path / "t.safetensors")
    other = th.Model(Tied(), device="cpu")
    other.load_weights(tmp_path / "t.safetensors")
    assert torch.equal(other.net.emb.weight, model.net.emb.weight)
    assert other.net.out.weight is other.net.emb.weight


def test_save_needs_safetensors_suffix(tmp_path):
    with pytest.raises(th.ConfigError, match=".safetensors"):
        th.Model(make_net(), device="cpu").save(tmp_path / "m.pt")


def test_loading_a_pickle_with_a_payload_refuses_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name, writer in [
        ("evil.pt", lambda p: torch.save({"w": Payload()}, p)),
        ("evil.pkl", lambda p: p.write_bytes(pickle.dumps(Payload()))),
    ]:
        path = tmp_path / name
        writer(path)
        model = th.Model(make_net(), device="cpu")
        with pytest.raises(th.CheckpointError, match="never unpickles"):
            model.load_weights(path)
        assert not marker.exists()
    # the payload is real: unpickling it would have created the file
    pickle.loads((tmp_path / "evil.pkl").read_bytes())
    assert marker.exists()


def test_mismatched_weights_name_every_problem(tmp_path):
    th.Model(make_net(features=6), device="cpu").save(tmp_path / "m.safetensors")
    with pytest.raises(th.CheckpointError, match=r"0.weight has shape \(16, 6\) in the file but \(16, 5\)"):
        th.Model(make_net(features=5), device="cpu").load_weights(tmp_path / "m.safetensors")
    with pytest.raises(th.CheckpointError, match="missing 3.weight, 3.bias"):
        th.Model(
            nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3), nn.Linear(3, 3)), device="cpu"
        ).load_weights(tmp_path / "m.safetensors")


def test_truncated_and_missing_files_give_clear_errors(tmp_path):
    model = th.Model(make_net(), device="cpu")
    path = model.save(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(th.CheckpointError, match="m.safetensors.*truncated or corrupt"):
        model.load_weights(path)
    with pytest.raises(th.CheckpointError, match="no such file"):
        model.load_weights(tmp_path / "nope.safetensors")


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(
        th.CheckpointError, match=f"cannot write {target}: disk full; the previous file is intact"
    ):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_training_state_roundtrip_and_checksum(tmp_path):
    state = {"a": torch.arange(5), "nested": {3: (1.5, "x", [torch.ones(2)])}, "inf": float("inf")}
    save_state(tmp_path / "s", state)
    back = load_state(tmp_path / "s")
    assert torch.equal(back["a"], state["a"])
    assert back["nested"][3][0] == 1.5 and isinstance(back["nested"][3], tuple)
    assert 3 in back["nested"] and back["inf"] == float("inf")
    tensors = tmp_path / "s" / "state.safetensors"
    raw = bytearray(tensors.read_bytes())
    raw[-1] ^= 0xFF
    tensors.write_bytes(bytes(raw))
    with pytest.raises(th.CheckpointError, match="checksum"):
        load_state(tmp_path / "s")
