"""Config-driven training: torchhouse fit / evaluate / predict, and config checks."""

import csv
import json
from pathlib import Path

import pytest

import torchhouse as th
from torchhouse.frontends.cli import main
from torchhouse.frontends.config import apply_override, load_config, validate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"


def base_config(**changes):
    config = {
        "name": "t",
        "model": {
            "factory": "torchhouse.models:mlp",
            "kwargs": {"in_features": 30, "hidden": [8], "out_features": 1},
        },
        "data": {"dataset": "breast_cancer", "standardize": True},
        "loss": "BCEWithLogitsLoss",
        "optimizer": {"name": "Adam", "lr": 0.01},
        "metrics": {"acc": "binary_accuracy_logits"},
        "fit": {"epochs": 3, "batch_size": 32, "seed": 0, "progress": "none"},
    }
    config.update(changes)
    return config


BAD = [
    ({"unknown": 1}, "unknown section 'unknown'"),
    ({"model": {"factory": "torchhouse.models:mlp", "kwarg": {}}}, "model: unknown key\\(s\\) \\['kwarg'\\]"),
    ({"model": {"factory": "nosuchmodule:net"}}, "model.factory: 'nosuchmodule:net' names code outside"),
    (
        {"model": {"factory": "torchhouse.models:nope"}},
        "model.factory: 'torchhouse.models:nope' names code outside",
    ),
    (
        {"model": {"factory": "torchhouse.models:mlp", "kwargs": {"width": 3}}},
        "model.kwargs: mlp takes no argument",
    ),
    ({"loss": "CrossEntropyLos"}, "loss: 'CrossEntropyLos' is not a loss in torch.nn"),
    (
        {"optimizer": {"name": "Adam", "learning_rate": 0.1}},
        "optimizer: Adam takes no argument\\(s\\) \\['learning_rate'\\]",
    ),
    ({"optimizer": {"lr": 0.1}}, "optimizer: a mapping needs a 'name' key"),
    ({"metrics": {"acc": "accurracy"}}, "metrics.acc: 'accurracy' is not a torchhouse metric"),
    ({"callbacks": [{"name": "EarlyStop"}]}, "callbacks\\[0\\]: 'EarlyStop' is not a callback"),
    (
        {"callbacks": [{"name": "EarlyStopping", "patiense": 2}]},
        "callbacks\\[0\\]: EarlyStopping takes no argument",
    ),
    ({"fit": {"epochs": "ten"}}, "fit.epochs: expected an int >= 0"),
    ({"fit": {"epoch": 3}}, "fit: unknown key\\(s\\) \\['epoch'\\]"),
    ({"trainer": {"precision": "32", "gpu": 1}}, "trainer: unknown key\\(s\\) \\['gpu'\\]"),
    ({"data": {"dataset": "mnist"}}, "data.dataset: 'mnist' is not bundled"),
    ({"data": {"csv": "x.csv"}}, "data.target: a csv source needs"),
    ({"data": {"dataset": "digits", "csv": "x.csv"}}, "give exactly one of dataset, csv or factory"),
    ({"data": {"dataset": "digits", "test_fraction": 1.5}}, "data.test_fraction"),
    ({"fit": []}, "config: 'fit' has the wrong type"),
]


TRUSTED_BAD = [
    ({"model": {"factory": "nosuchmodule:net"}}, "model.factory: cannot import module 'nosuchmodule'"),
    (
        {"model": {"factory": "torchhouse.models:nope"}},
        "model.factory: module 'torchhouse.models' has no 'nope'",
    ),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m for _, m in BAD])
def test_bad_configs_fail_before_training_naming_the_key(change, message):
    with pytest.raises(th.ConfigError, match=message):
        validate(base_config(**change))


@pytest.mark.parametrize("change,message", TRUSTED_BAD, ids=[m for _, m in TRUSTED_BAD])
def test_trusted_configs_still_name_what_does_not_import(change, message):
    with pytest.raises(th.ConfigError, match=message):
        validate(base_config(**change), trust_code=True)


def test_missing_section_and_bad_files(tmp_path):
    config = base_config()
    del config["loss"]
    with pytest.raises(th.ConfigError, match="the section 'loss' is missing"):
        validate(config)
    with pytest.raises(th.ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(th.ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_overrides_parse_values():
    config = {"fit": {"epochs": 1}}
    apply_override(config, "fit.epochs=5")
    apply_override(config, "optimizer.lr=3e-4")
    apply_override(config, "model.kwargs.hidden=[16, 8]")
    assert config == {
        "fit": {"epochs": 5},
        "optimizer": {"lr": 3e-4},
        "model": {"kwargs": {"hidden": [16, 8]}},
    }
    with pytest.raises(th.ConfigError, match="expected key=value"):
        apply_override(config, "fit.epochs")


def test_fit_evaluate_predict_from_the_command_line(tmp_path, capsys):
    config = tmp_path / "bc.yaml"
    import yaml

    config.write_text(yaml.safe_dump(base_config()))
    run = tmp_path / "run"
    assert main(["fit", str(config), "--run-dir", str(run), "--set", "fit.epochs=8"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("acc ")[1].split()[0])
    assert acc > 0.85  # majority class is 0.63
    resolved = json.loads((run / "run_config.json").read_text())
    assert resolved["fit"]["epochs"] == 8 and len(resolved["data"]["mean"]) == 30
    assert main(["evaluate", str(run)]) == 0
    assert f"acc {acc:.4f}" in capsys.readouterr().out
    source = Path(th.__file__).parent / "datasets" / "breast_cancer.csv"
    rows = list(csv.reader(source.open()))
    features = tmp_path / "rows.csv"
    with features.open("w", newline="") as handle:
        csv.writer(handle).writerows([r[:30] for r in rows[:11]])
    assert main(["predict", str(run), str(features), "--output", str(tmp_path / "p.csv")]) == 0
    predictions = list(csv.reader((tmp_path / "p.csv").open()))
    assert predictions[0] == ["prediction", "p1"] and len(predictions) == 11
    truth = [int(r[30]) for r in rows[1:11]]
    assert sum(int(p[0]) == t for p, t in zip(predictions[1:], truth)) >= 8


def test_predict_rejects_wrong_columns(tmp_path, capsys):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(base_config()))
    assert (
        main(["fit", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "r"), "--set", "fit.epochs=1"])
        == 0
    )
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert main(["predict", str(tmp_path / "r"), str(tmp_path / "x.csv")]) == 2
    assert "no column(s)" in capsys.readouterr().err


def test_cli_config_errors_exit_2_and_training_failures_exit_1(tmp_path, capsys):
    import yaml

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(base_config(loss="NoSuchLoss")))
    assert main(["fit", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "loss: 'NoSuchLoss'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    diverging = base_config(optimizer={"name": "SGD", "lr": 1e30})
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(diverging))
    assert main(["fit", str(tmp_path / "nan.yaml"), "--run-dir", str(tmp_path / "n")]) == 1
    assert "training loss is" in capsys.readouterr().err


def test_example_configs_are_valid():
    paths = sorted(EXAMPLES.glob("*.yaml"))
    assert [p.name for p in paths] == ["breast_cancer.yaml", "digits.yaml", "sentiment_words.yaml"]
    for path in paths:
        config = validate(load_config(path))
        assert config["model"]["factory"].startswith("torchhouse.")


def test_digits_config_trains(tmp_path, capsys):
    assert (
        main(
            [
                "fit",
                str(EXAMPLES / "digits.yaml"),
                "--run-dir",
                str(tmp_path / "d"),
                "--set",
                "fit.epochs=3",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    assert float(capsys.readouterr().out.split("acc ")[1].split()[0]) > 0.6


def test_evaluate_of_a_run_trained_from_your_own_csv_needs_no_trust(tmp_path, capsys, monkeypatch):
    """The CSV lies outside the run folder; the folder keeps its held-out rows (test_split)."""
    import yaml

    source = Path(th.__file__).parent / "datasets" / "breast_cancer.csv"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.csv").write_text(source.read_text())
    monkeypatch.chdir(tmp_path)
    config = base_config(data={"csv": "data/mine.csv", "target": "benign", "standardize": True})
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "mine.yaml", "--run-dir", "runs/mine"]) == 0
    test_line = capsys.readouterr().out.splitlines()[-2]
    assert main(["evaluate", "runs/mine"]) == 0  # no --trust-code
    evaluated = capsys.readouterr().out.strip()
    assert evaluated == test_line.removeprefix("Test (held-out split): ")
    (tmp_path / "data" / "mine.csv").unlink()  # the data may even be gone
    assert main(["evaluate", "runs/mine"]) == 0


def test_every_keyword_of_model_and_fit_is_a_config_key_or_listed_as_code_only():
    import inspect

    from torchhouse.frontends.config import CODE_ONLY, FIT_KEYS, TRAINER_KEYS

    for function, keys, code_only in (
        (th.Model.__init__, TRAINER_KEYS, CODE_ONLY["Model"]),
        (th.Model.fit, FIT_KEYS, CODE_ONLY["fit"]),
    ):
        names = {
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        }
        assert names == set(keys) | set(code_only), names ^ (set(keys) | set(code_only))
        assert not set(keys) & set(code_only)
        assert all(isinstance(reason, str) and reason for reason in code_only.values())


def test_the_keys_that_could_not_be_set_before_reach_the_model_and_fit(tmp_path, capsys):
    import yaml

    config = base_config(
        trainer={"strategy": "fsdp", "weighted_metrics": {"wacc": "accuracy"}},
        fit={
            "epochs": 3,
            "batch_size": 32,
            "seed": 0,
            "progress": "none",
            "initial_epoch": 1,
            "validation_freq": 2,
            "steps_per_epoch": 4,
            "validation_split": 0.2,
            "class_weight": {0: 2.0},
        },
    )
    (tmp_path / "c.json").write_text(json.dumps(config))  # JSON: the class_weight key is "0"
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "c.json"), "--run-dir", str(run)]) == 0
    fit = json.loads((run / "config.json").read_text())["fit"]
    assert fit["initial_epoch"] == 1 and fit["validation_freq"] == 2 and fit["steps_per_epoch"] == 4
    assert fit["class_weight"] == {"0": 2.0}
    history = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == [1, 2]  # epochs 2 and 3 of 3 (initial_epoch=1)
    assert "wacc" in history[0] and history[1]["val_loss"] == "nan"  # validation every 2nd epoch
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(base_config(fit={"epochs": 1, "steps_per_epochs": 2})))
    assert main(["fit", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "unknown key(s) ['steps_per_epochs']" in capsys.readouterr().err


def test_one_fit_writes_each_run_file_once_and_the_extras_while_the_lock_is_held(tmp_path, monkeypatch):
    """A config-driven fit: config.json, model.safetensors, model.json, model.pt2, serve.json and
    run_config.json are each written exactly once, every one while the run's lock is held."""
    import os

    import yaml

    from torchhouse.runs.lock import is_locked

    real_replace, written = os.replace, []
    run = tmp_path / "run"

    def recording_replace(source, target, *args, **kwargs):
        target = Path(target)
        written.append((target.name, is_locked(run / ".lock")))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording_replace)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(base_config()))
    assert main(["fit", str(tmp_path / "c.yaml"), "--run-dir", str(run), "--set", "fit.epochs=3"]) == 0
    names = [name for name, _ in written]
    files = ("config.json", "model.safetensors", "model.json", "model.pt2", "serve.json", "run_config.json")
    for once in (*files, "history.png"):  # the command line draws the curves once, at the end
        assert names.count(once) == 1, (once, names)
    assert names.count("history.csv") == 3  # one per epoch
    outside = [name for name, locked in written if not locked]
    assert outside == [], f"written after the lock was released: {outside}"
    assert not is_locked(run / ".lock")
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
