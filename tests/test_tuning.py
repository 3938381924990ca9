"""Optuna tuning: pruning, failed trials, resumable studies, reproducibility, several workers."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import torchhouse as th
from torchhouse.frontends.cli import main

pytestmark = pytest.mark.slow

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.ERROR)

HERE = Path(__file__).resolve().parent


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g)
    y = (x[:, :2].sum(1) > 0).long()
    return x, y


def build(trial):
    width = trial.suggest_int("width", 4, 32, log=True)
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    net = nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 2))
    return th.Model(
        net,
        loss=nn.CrossEntropyLoss(),
        optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        device="cpu",
        metrics={"acc": th.metrics.accuracy},
    )


def test_tune_runs_trials_and_restores_the_best_model(tmp_path):
    x, y = data()
    study = th.tune(build, x, y, validation_split=0.25, n_trials=4, epochs=3, seed=0, tune_dir=tmp_path)
    assert len(study.trials) == 4
    assert (tmp_path / "study.db").exists()
    best = study.best_trial
    folder = Path(best.user_attrs["run_dir"])
    saved = json.loads((folder / "params.json").read_text())
    assert saved["params"] == best.params and saved["value"] == pytest.approx(best.value)
    assert (folder / "history.csv").exists() and (folder / "model.safetensors").exists()
    model = study.best_model
    assert isinstance(model, th.Model)
    assert model.net[0].out_features == best.params["width"]
    # restored from the best trial's weights: its validation loss is the trial's final one
    x_val, y_val = x[90:], y[90:]
    history = json.loads((folder / "run.json").read_text())
    assert history["status"] in ("finished", "stopped_early")
    assert model.evaluate(x_val, y_val)["loss"] == pytest.approx(
        float((folder / "history.csv").read_text().splitlines()[-1].split(",")[3]), rel=1e-5
    )


def test_seeded_studies_give_the_same_best_params(tmp_path):
    x, y = data()
    a = th.tune(build, x, y, validation_split=0.25, n_trials=3, epochs=2, seed=3, tune_dir=tmp_path / "a")
    b = th.tune(build, x, y, validation_split=0.25, n_trials=3, epochs=2, seed=3, tune_dir=tmp_path / "b")
    assert a.best_params == b.best_params and a.best_value == b.best_value


def test_pruned_trials_stop_at_once(tmp_path):
    x, y = data()
    pruner = optuna.pruners.ThresholdPruner(upper=0.0)  # every reported val_loss is above 0: prune
    study = th.tune(
        build, x, y, validation_split=0.25, n_trials=2, epochs=5, pruner=pruner, tune_dir=tmp_path
    )
    states = {t.state for t in study.trials}
    assert states == {optuna.trial.TrialState.PRUNED}
    for trial in study.trials:
        folder = Path(trial.user_attrs["run_dir"])
        assert len((folder / "history.csv").read_text().splitlines()) == 2  # header + epoch 0 only
        assert json.loads((folder / "run.json").read_text())["status"] == "pruned"
    assert study.best_model is None


def test_a_build_that_raises_is_a_failed_trial_and_the_study_goes_on(tmp_path):
    x, y = data()

    def flaky(trial):
        if trial.number == 1:
            raise ValueError("width must be even")
        return build(trial)

    study = th.tune(flaky, x, y, validation_split=0.25, n_trials=3, epochs=2, tune_dir=tmp_path)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert "width must be even" in study.trials[1].user_attrs["error"]


def test_a_bad_search_space_is_a_failed_trial(tmp_path):
    x, y = data()

    def bad(trial):
        trial.suggest_float("lr", 1.0, 0.1)  # low > high
        return build(trial)

    study = th.tune(bad, x, y, validation_split=0.25, n_trials=2, epochs=1, tune_dir=tmp_path)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    assert "build raised" in study.trials[0].user_attrs["error"]


def test_the_pruning_callback_in_a_plain_fit():
    x, y = data()
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    trial = study.ask()
    model = build(trial)
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        model.fit(
            x,
            y,
            validation_split=0.25,
            epochs=5,
            progress="none",
            callbacks=[th.callbacks.OptunaPruning(trial, monitor="val_loss")],
        )
    assert len(model.history) == 1


SEARCH_CONFIG = {
    "name": "bc",
    "model": {
        "factory": "torchhouse.models:mlp",
        "kwargs": {"in_features": 30, "hidden": [8], "out_features": 1},
    },
    "data": {"dataset": "breast_cancer", "standardize": True},
    "loss": "BCEWithLogitsLoss",
    "optimizer": {"name": "Adam", "lr": 0.01},
    "metrics": {"acc": "binary_accuracy_logits"},
    "fit": {"epochs": 2, "batch_size": 64, "seed": 0, "validation_split": 0.2},
    "search": {
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "model.kwargs.hidden": {"type": "categorical", "choices": [[8], [16, 8]]},
    },
}


def write_config(folder, **changes):
    import yaml

    config = json.loads(json.dumps(SEARCH_CONFIG))
    config.update(changes)
    path = Path(folder) / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_tune_command_prints_best_trials_and_each_trial_is_a_run(tmp_path, capsys, monkeypatch):
    from torchhouse.runs.lock import is_locked

    real_replace, unlocked = os.replace, []

    def recording_replace(source, target, *args, **kwargs):
        target = Path(target)
        trial = next((p for p in target.parents if p.name.startswith("trial-")), None)
        if trial is not None and not is_locked(trial / ".lock"):
            unlocked.append(str(target.relative_to(trial)))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording_replace)
    config = write_config(tmp_path)
    assert main(["tune", str(config), "--trials", "3", "--tune-dir", str(tmp_path / "t")]) == 0
    # run_config.json and params.json too are written while the trial's fit holds its folder
    assert unlocked == []
    out = capsys.readouterr().out
    assert "trial" in out and "optuna-dashboard sqlite:///" in out
    folders = sorted((tmp_path / "t").glob("trial-*"))
    assert len(folders) == 3
    resolved = json.loads((folders[0] / "run_config.json").read_text())
    assert resolved["model"]["kwargs"]["hidden"] in ([8], [16, 8])
    params = json.loads((folders[0] / "params.json").read_text())
    assert params["number"] == 0 and "value" in params and "best_epoch" in params
    assert not (folders[0] / "history.png").exists()  # trials draw no figure
    # a trial folder is a complete run: evaluate works from it alone
    assert main(["evaluate", str(folders[0])]) == 0


def test_bad_search_section_fails_before_any_trial(tmp_path, capsys):
    config = write_config(tmp_path, search={"optimizer.lr": {"type": "float", "low": 1.0, "high": 0.1}})
    assert main(["tune", str(config), "--trials", "2", "--tune-dir", str(tmp_path / "t")]) == 2
    assert "search.optimizer.lr: needs numbers low <= high" in capsys.readouterr().err
    assert not list((tmp_path / "t").glob("trial-*")) if (tmp_path / "t").exists() else True


def run_tune_cli(config, tune_dir, trials, storage=None, study="bc"):
    args = [
        sys.executable,
        "-m",
        "torchhouse",
        "tune",
        str(config),
        "--trials",
        str(trials),
        "--tune-dir",
        str(tune_dir),
        "--study-name",
        study,
    ]
    if storage:
        args += ["--storage", storage]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
    config = write_config(tmp_path, fit={"epochs": 40, "batch_size": 64, "seed": 0, "validation_split": 0.2})
    tune_dir = tmp_path / "t"
    process = run_tune_cli(config, tune_dir, 4)
    study_db = f"sqlite:///{(tune_dir / 'study.db').resolve()}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for 2 finished trials, then SIGKILL mid-trial
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name="bc", storage=study_db)
        except Exception:
            continue
        if sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= 2:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = {
        t.number: t.datetime_complete
        for t in optuna.load_study(study_name="bc", storage=study_db).trials
        if t.state == optuna.trial.TrialState.COMPLETE
    }
    assert len(before) >= 2
    resumed = run_tune_cli(config, tune_dir, 4)
    _out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    after = optuna.load_study(study_name="bc", storage=study_db).trials
    finished = [t for t in after if t.state.is_finished()]
    assert len(finished) >= 4
    for number, completed in before.items():
        assert after[number].datetime_complete == completed  # not rerun


def _postgres_bin():
    for candidate in [shutil.which("initdb"), *sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))]:
        if candidate:
            return Path(candidate).resolve().parent
    return None


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server on 127.0.0.1 for the duration of the module."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; .ci/run installs them")
    pytest.importorskip("psycopg", reason="psycopg (3) is needed for a postgresql:// storage")
    base = Path("/tmp") / f"torchhouse-pg-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o777)
    prefix = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(base, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = base / "data"
    subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "tune", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            f"-h 127.0.0.1 -p {port} -k {base}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [*prefix, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tune", "studies"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://tune@127.0.0.1:{port}/studies"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres_url):
    config = write_config(tmp_path)
    workers = [
        run_tune_cli(config, tmp_path / f"w{i}", 3, storage=postgres_url, study="shared") for i in range(2)
    ]
    for worker in workers:
        _out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) >= 3
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= 3


def test_two_workers_share_one_study_on_sqlite(tmp_path):
    config = write_config(tmp_path)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [run_tune_cli(config, tmp_path / f"w{i}", 3, storage=storage, study="shared") for i in range(2)]
    for worker in workers:
        _out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=storage)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= 3


def test_tune_exits_1_when_no_trial_completes_with_one_line_per_reason(tmp_path, capsys):
    # every trial builds a net that does not fit the data (30 features, 7 inputs)
    config = write_config(tmp_path, search={"model.kwargs.in_features": {"type": "int", "low": 7, "high": 7}})
    assert main(["tune", str(config), "--trials", "2", "--tune-dir", str(tmp_path / "t")]) == 1
    captured = capsys.readouterr()
    assert "no trial completed" in captured.err and "first failure: trial 0" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_tune_returns_its_own_result_with_the_study_beside_it(tmp_path):
    import optuna

    x, y, _ = th.datasets.load_breast_cancer()
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    result = th.tune(
        lambda trial: th.Model(
            nn.Linear(30, 1),
            loss=nn.BCEWithLogitsLoss(),
            device="cpu",
            optimizer=lambda p: torch.optim.Adam(p, lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True)),
        ),
        x[:200],
        y[:200].float().reshape(-1, 1),
        validation_split=0.25,
        n_trials=2,
        epochs=1,
        seed=0,
        tune_dir=tmp_path,
    )
    assert isinstance(result, th.tuning.TuneResult) and isinstance(result.study, optuna.Study)
    assert not hasattr(result.study, "best_model")  # nothing is set on Optuna's object
    assert result.best_params == result.study.best_params and result.tune_dir == tmp_path
    assert result.best_model is not None and result.best_run_dir.is_dir()


def test_a_search_key_added_after_the_best_trial_keeps_the_study_usable(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["tune", str(config), "--trials", "2", "--tune-dir", str(tmp_path / "t")]) == 0
    grown = json.loads(json.dumps(SEARCH_CONFIG))
    grown["search"]["fit.batch_size"] = {"type": "int", "low": 16, "high": 64, "step": 16}
    config = write_config(tmp_path, search=grown["search"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # no new trial: the best is one of the two that ran before fit.batch_size was searched
        assert main(["tune", str(config), "--trials", "2", "--tune-dir", str(tmp_path / "t")]) == 0
    assert "best trial's run folder" in capsys.readouterr().out
    assert not [w for w in caught if "cannot rebuild" in str(w.message)]  # rebuilt with the config's value


def test_a_misspelt_search_key_is_a_usage_error_before_any_trial(tmp_path, capsys):
    config = write_config(tmp_path, search={"optimizer.lrr": {"type": "float", "low": 1e-3, "high": 1e-1}})
    assert main(["tune", str(config), "--trials", "2", "--tune-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "search.optimizer.lrr" in err and "takes no argument(s) ['lrr']" in err
    assert not list((tmp_path / "t").glob("trial-*"))
    config = write_config(tmp_path, search={"fit.epochz": {"type": "int", "low": 1, "high": 3}})
    assert main(["tune", str(config), "--trials", "2", "--tune-dir", str(tmp_path / "t")]) == 2
    assert "unknown key(s) ['epochz']" in capsys.readouterr().err


def test_the_python_tune_warns_instead_of_crashing_when_the_best_trial_cannot_be_rebuilt(tmp_path):
    x, y = data()
    th.tune(build, x, y, validation_split=0.2, n_trials=2, epochs=1, tune_dir=tmp_path / "t", seed=0)

    def grown(trial):
        trial.suggest_int("extra", 1, 3)  # a parameter the first trials never had
        return build(trial)

    with pytest.warns(UserWarning, match="cannot rebuild the best trial"):
        result = th.tune(
            grown, x, y, validation_split=0.2, n_trials=2, epochs=1, tune_dir=tmp_path / "t", seed=0
        )
    assert result.best_model is None and result.best_run_dir is not None
