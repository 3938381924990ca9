"""One home for a fit: its arguments in a frozen FitSpec, its live state in a FitState the loop
owns; the Model keeps no per-fit attributes, and a refused fit changes nothing on it."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.train.spec import FitSpec
from torchhouse.train.state import FitState

KERAS_ATTRIBUTES = {"history", "stop_training"}  # what Keras' model holds after a fit, too


def model(**kwargs):
    return th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", metrics=["acc"], **kwargs)


def attributes(m):
    """The model's own attributes and what each one is (identity: a replaced object shows)."""
    return {name: id(value) for name, value in vars(m).items()}


def test_a_fit_writes_only_its_state_and_keras_attributes_onto_the_model():
    x, y = make_classification(n=40)
    m = model()
    m.fit(x, y, epochs=1, progress="none", seed=0)  # the first fit records the input columns
    before = attributes(m)
    m.fit(x, y, epochs=2, progress="none", seed=0, on_nonfinite="skip", class_weight={0: 2.0})
    after = attributes(m)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    assert changed <= KERAS_ATTRIBUTES | {"_fit_state"}, changed
    assert isinstance(m.fit_state, FitState) and m.fit_state.spec.epochs == 2
    assert m.on_nonfinite == "skip" and m.epoch == 1 and m.global_step == 4


@pytest.mark.parametrize("name", ["epoch", "global_step", "micro_step", "on_nonfinite", "class_weight_table"])
def test_the_step_contract_s_state_is_read_only_on_the_model(name):
    m = model()
    with pytest.raises(AttributeError, match=name):
        setattr(m, name, 3)


def test_the_spec_is_frozen_and_gives_config_json_and_the_trackers_params(tmp_path):
    x, y = make_classification(n=40)
    m = model()
    m.fit(x, y, epochs=2, batch_size=8, progress="none", seed=0, run_dir=tmp_path / "r")
    spec = m.fit_state.spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.batch_size = 16
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["fit"]["batch_size"] == spec.batch_size == 8
    assert m.fit_params["batch_size"] == 8 and m.fit_params["epochs"] == 2


def test_a_fit_refused_at_its_arguments_changes_nothing():
    x, y = make_classification(n=40)
    m = model()
    m.fit(x, y, epochs=1, progress="none", seed=0, on_nonfinite="skip")
    before, history, state = attributes(m), m.history, m.fit_state
    with pytest.raises(th.ConfigError, match="epochs"):
        m.fit(x, y, epochs=-1, on_nonfinite="stop")
    with pytest.raises(th.ConfigError, match="on_nonfinite"):
        m.fit(x, y, epochs=1, on_nonfinite="ignore")
    assert attributes(m) == before and m.history is history and m.fit_state is state
    assert m.on_nonfinite == "skip"


def test_a_fit_refused_late_by_its_run_folder_or_its_resume_check_changes_nothing(tmp_path):
    x, y = make_classification(n=40)
    m = model()
    m.fit(x, y, epochs=2, progress="none", seed=0, run_dir=tmp_path / "r", on_nonfinite="skip")
    weights = {k: v.clone() for k, v in m.net.state_dict().items()}
    before, history = attributes(m), m.history
    # one run per folder: refused when the folder is opened
    with pytest.raises(th.ConfigError, match="already holds a run"):
        m.fit(x, y, epochs=3, progress="none", run_dir=tmp_path / "r", class_weight={0: 3.0})
    # a resume with another batch size: refused by the resume check, after the folder was locked
    with pytest.raises(th.CheckpointError, match="batch_size"):
        m.fit(x, y, epochs=3, batch_size=16, progress="none", seed=0, run_dir=tmp_path / "r", resume=True)
    assert attributes(m) == before and m.history is history and len(m.history) == 2
    assert m.on_nonfinite == "skip" and m.class_weight_table is None
    assert all(torch.equal(v, weights[k]) for k, v in m.net.state_dict().items())
    # and the folder is still the first run's, unlocked: resuming it works
    assert m.fit(x, y, epochs=3, progress="none", seed=0, run_dir=tmp_path / "r", resume=True).epoch == [
        0,
        1,
        2,
    ]


def test_fit_spec_is_built_from_fit_s_own_signature():
    import inspect

    fit_keywords = set(inspect.signature(th.Model.fit).parameters) - {"self", "x", "y", "unexpected"}
    fields = {f.name for f in dataclasses.fields(FitSpec)}
    data_only = {"validation_data", "sample_weight"}  # seen by the spec only as given or not
    assert fit_keywords - data_only <= fields, sorted(fit_keywords - data_only - fields)
