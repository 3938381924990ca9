"""Bad input everywhere: each gives a clear error naming what was wrong and what was expected."""

import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import torchhouse as th
from conftest import make_classification, make_net
from torchhouse.callbacks import EarlyStopping, ModelCheckpoint

X, Y = make_classification(n=20)


def model(**kwargs):
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    return th.Model(make_net(), device="cpu", **kwargs)


class Strings(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return "not a batch"


class Quadruples(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):  # a third element is the sample weight, a fourth has no meaning
        return torch.zeros(6), torch.tensor(0), torch.tensor(1.0), torch.tensor(1)


FIT_CASES = [
    # (id, call, error type, message pattern)
    (
        "mismatched lengths",
        lambda: model().fit(X, Y[:10]),
        th.DataError,
        "same number of samples.*x has 20 and y has 10",
    ),
    ("empty arrays", lambda: model().fit(X[:0], Y[:0]), th.DataError, "x is empty"),
    ("empty dataset", lambda: model().fit(TensorDataset(X[:0], Y[:0])), th.DataError, "dataset is empty"),
    ("y missing", lambda: model().fit(X), th.DataError, "y is missing"),
    ("x is None", lambda: model().fit(None, Y), th.DataError, "no data given"),
    ("x is a string", lambda: model().fit("data.csv", Y), th.DataError, "got a string"),
    (
        "object dtype",
        lambda: model().fit(np.array([["a"] * 6] * 20, dtype=object), Y),
        th.DataError,
        "not numeric",
    ),
    ("x a dict", lambda: model().fit({"a": X, "b": X[:5]}, Y), th.DataError, "same number of samples"),
    ("scalar x", lambda: model().fit(np.float32(1.0), Y), th.DataError, "scalar"),
    (
        "y with a loader",
        lambda: model().fit(DataLoader(TensorDataset(X, Y)), Y),
        th.DataError,
        "y must be None",
    ),
    (
        "loader not yielding pairs",
        lambda: model().fit(DataLoader(Strings())),
        th.DataError,
        "pair \\(inputs, target\\)",
    ),
    (
        "loader yielding quadruples",
        lambda: model().fit(DataLoader(Quadruples())),
        th.DataError,
        "pair \\(inputs, target\\)",
    ),
    ("negative epochs", lambda: model().fit(X, Y, epochs=-1), th.ConfigError, "epochs: expected an int >= 0"),
    ("float epochs", lambda: model().fit(X, Y, epochs=2.5), th.ConfigError, "epochs"),
    (
        "zero batch size",
        lambda: model().fit(X, Y, batch_size=0),
        th.ConfigError,
        "batch_size: expected an int >= 1",
    ),
    (
        "validation_split 1.0",
        lambda: model().fit(X, Y, validation_split=1.0),
        th.ConfigError,
        r"validation_split: expected a float in \[0, 1\)",
    ),
    (
        "validation_split negative",
        lambda: model().fit(X, Y, validation_split=-0.1),
        th.ConfigError,
        "validation_split",
    ),
    (
        "validation_split too large",
        lambda: model().fit(X, Y, validation_split=0.99),
        th.DataError,
        "both must be at least 1",
    ),
    (
        "split and data",
        lambda: model().fit(X, Y, validation_split=0.2, validation_data=(X, Y)),
        th.ConfigError,
        "either validation_data or validation_split",
    ),
    (
        "bad validation_data",
        lambda: model().fit(X, Y, validation_data=X),
        th.DataError,
        "validation_data: expected \\(x_val, y_val\\)",
    ),
    (
        "split of a loader",
        lambda: model().fit(DataLoader(TensorDataset(X, Y), batch_size=None), validation_split=0.2),
        th.DataError,
        "validation_split needs arrays",
    ),
    (
        "unknown monitor",
        lambda: model().fit(X, Y, callbacks=[EarlyStopping(monitor="acc")]),
        th.ConfigError,
        "monitor='acc' is not a logged value",
    ),
    (
        "val monitor, no val",
        lambda: model().fit(X, Y, callbacks=[ModelCheckpoint("m.safetensors")]),
        th.ConfigError,
        "no validation data",
    ),
    ("not a callback", lambda: model().fit(X, Y, callbacks=[print]), th.ConfigError, "callbacks: expected"),
    ("bad progress", lambda: model().fit(X, Y, progress="loud"), th.ConfigError, "progress: expected one of"),
    ("bad on_nonfinite", lambda: model().fit(X, Y, on_nonfinite="ignore"), th.ConfigError, "on_nonfinite"),
    (
        "bad checkpoint_every",
        lambda: model().fit(X, Y, checkpoint_every=0),
        th.ConfigError,
        "checkpoint_every",
    ),
    (
        "resume without run_dir",
        lambda: model().fit(X, Y, resume=True),
        th.ConfigError,
        "resume=True needs run_dir",
    ),
    ("bad seed", lambda: model().fit(X, Y, seed="abc"), th.ConfigError, "seed: expected an int"),
    (
        "wrong input width",
        lambda: model().fit(torch.randn(20, 5), Y),
        th.DataError,
        "the net failed on the first training batch.*shape=\\(20, 5\\)",
    ),
    (
        "float class targets",
        lambda: model().fit(X, Y.float()),
        th.DataError,
        "CrossEntropyLoss.*y.long\\(\\)",
    ),
    ("(N,1) class targets", lambda: model().fit(X, Y[:, None]), th.DataError, "shape \\(N,\\).*y.squeeze"),
    (
        "a loss returning a Python float",
        lambda: th.Model(nn.Linear(6, 3), loss=lambda p, t: 1.0, device="cpu").fit(X, Y),
        th.DataError,
        "the loss is float 1.0; it must be a tensor.*no .item\\(\\) or float\\(\\)",
    ),
    (
        "int32 class targets",
        lambda: model().fit(X, Y.int()),
        th.DataError,
        "int64 \\(torch.long\\), not torch.int32",
    ),
    (
        "3-D input to a Linear net",
        lambda: th.Model(nn.Linear(6, 3), loss=nn.CrossEntropyLoss(), device="cpu").fit(X[:, None, :], Y),
        th.DataError,
        "outputs \\(20, 1, 3\\).*targets of shape \\(N, d1, ...\\).*nn.Flatten\\(\\)",
    ),
    (
        "class index out of range",
        lambda: model().fit(X, Y + 5),
        (th.DataError, IndexError),
        "class indices must lie in \\[0, 3\\)|out of bounds",
    ),
    (
        "MSE broadcast trap",
        lambda: th.Model(nn.Linear(6, 1), loss=nn.MSELoss(), device="cpu").fit(X, torch.randn(20)),
        th.DataError,
        "same shape.*\\(20, 1\\).*\\(20,\\)",
    ),
    (
        "BCE integer target",
        lambda: th.Model(nn.Linear(6, 1), loss=nn.BCEWithLogitsLoss(), device="cpu").fit(
            X, Y[:, None].clamp(max=1)
        ),
        th.DataError,
        "floating-point target.*y.float\\(\\)",
    ),
    (
        "metric failing",
        lambda: model(metrics={"bad": lambda p, t: p @ t}).fit(X, Y),
        th.DataError,
        "metric 'bad' failed",
    ),
    (
        "no loss",
        lambda: th.Model(make_net(), device="cpu").fit(X, Y),
        th.ConfigError,
        "loss=None: the net's output carries no loss",
    ),
]


@pytest.mark.parametrize("case", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_bad_fit_input(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, call, error, pattern = case
    with pytest.raises(error, match=pattern):
        call()


MODEL_CASES = [
    ("net not a module", lambda: th.Model(lambda x: x), "net: expected a torch.nn.Module"),
    ("loss not callable", lambda: th.Model(make_net(), loss="mse"), "loss: expected a callable"),
    ("bad optimizer", lambda: th.Model(make_net(), optimizer="adam"), "optimizer: expected None"),
    (
        "optimizer of another net",
        lambda: th.Model(make_net(), optimizer=torch.optim.SGD(make_net().parameters(), lr=1)),
        "not net's",
    ),
    ("bad metrics", lambda: th.Model(make_net(), metrics="acc"), "metrics: expected a dict"),
    ("metric not callable", lambda: th.Model(make_net(), metrics={"acc": 3}), "metrics\\['acc'\\]: expected"),
    (
        "reserved metric name",
        lambda: th.Model(make_net(), metrics={"val_acc": th.metrics.accuracy}),
        "reserved",
    ),
    ("bad device", lambda: th.Model(make_net(), device="gpu7"), "device: expected"),
    ("bad precision", lambda: th.Model(make_net(), precision="fp8"), "precision: expected one of"),
    ("bad accumulation", lambda: th.Model(make_net(), accumulate_grad_batches=0), "accumulate_grad_batches"),
    ("bad clip", lambda: th.Model(make_net(), gradient_clip_val=-1), "gradient_clip_val"),
    (
        "bad clip algorithm",
        lambda: th.Model(make_net(), gradient_clip_algorithm="l2"),
        "gradient_clip_algorithm",
    ),
    ("bad scheduler", lambda: th.Model(make_net(), lr_scheduler=3), "lr_scheduler: expected"),
    ("bad early stopping mode", lambda: EarlyStopping(mode="up"), "mode must be"),
    ("bad patience", lambda: EarlyStopping(patience=-1), "patience"),
    (
        "summary without input",
        lambda: th.summary(make_net()),
        "exactly one of input_size, input_shape or input_data",
    ),
    ("summary bad size", lambda: th.summary(make_net(), input_size="big"), "input_size must be a shape"),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_construction(case):
    _, call, pattern = case
    with pytest.raises(th.ConfigError, match=pattern):
        call()


def test_summary_with_the_wrong_input_names_the_shape():
    with pytest.raises(th.DataError, match="shape=\\(1, 5\\)"):
        th.summary(make_net(), input_size=(1, 5))


def test_unwritable_run_dir_fails_before_training_and_says_which(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/torchhouse-run"  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = str(locked / "run")
    m = model()
    with pytest.raises(th.CheckpointError, match="torchhouse-run|locked"):
        m.fit(X, Y, run_dir=target, progress="none")
    assert len(m.history) == 0


def test_run_dir_of_another_model_is_refused_and_kept(tmp_path):
    model().fit(X, Y, epochs=1, run_dir=tmp_path / "r", progress="none")
    before = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    other = th.Model(nn.Sequential(nn.Linear(6, 3)), loss=nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(th.CheckpointError, match="differs from the saved run(.|\n)*parameters.0.weight"):
        other.fit(X, Y, epochs=2, run_dir=tmp_path / "r", resume=True, progress="none")
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == before


def test_missing_and_unreadable_weights_files(tmp_path):
    with pytest.raises(th.CheckpointError, match="no such file"):
        model().load_weights(tmp_path / "missing.safetensors")
    with pytest.raises(th.CheckpointError, match="is a folder"):
        model().load_weights(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not tensors")
    with pytest.raises(th.CheckpointError, match="truncated or corrupt"):
        model().load_weights(tmp_path / "junk.safetensors")


def test_errors_do_not_touch_saved_files(tmp_path):
    m = model()
    m.fit(X, Y, epochs=1, run_dir=tmp_path / "r", progress="none")
    saved = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(th.DataError):
        m.fit(X, Y.float(), epochs=1, run_dir=tmp_path / "r2", progress="none")
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == saved


CLI_CASES = [
    (["demo", "--epochs", "0"], 2, "--epochs must be >= 1"),
    (["demo", "--epochs", "x"], 2, "invalid int value"),
    (["nosuchcommand"], 2, "invalid choice"),
    (["demo", "--device", "gpu7"], 2, "device: expected"),
]


@pytest.mark.parametrize("args,code,message", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_usage_errors_exit_2(args, code, message, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "torchhouse", *args, "--run-dir", str(tmp_path / "r")]
        if args[0] == "demo"
        else [sys.executable, "-m", "torchhouse", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_keras_and_torchkeras_habits_get_did_you_mean():
    with pytest.raises(th.ConfigError, match="'loss_fn' \\(did you mean loss"):
        th.Model(make_net(), loss_fn=nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(th.ConfigError, match="'metrics_dict' \\(did you mean metrics"):
        th.Model(make_net(), metrics_dict={}, device="cpu")
    m = model(loss=nn.CrossEntropyLoss())
    for name, hint in [
        ("train_data", "x"),
        ("val_data", "validation_data"),
        ("patience", "EarlyStopping"),
        ("ckpt_path", "run_dir"),
        ("verbose", "progress"),
        ("epoch", "epochs"),
    ]:
        with pytest.raises(th.ConfigError, match=f"'{name}' \\(did you mean .*{hint}"):
            m.fit(X, Y, **{name: 1})


def test_numpy_integers_are_fine_for_counts():
    import numpy as np

    history = model(loss=nn.CrossEntropyLoss()).fit(
        X, Y, epochs=np.int64(2), batch_size=np.int32(8), progress="none"
    )
    assert history.epoch == [0, 1]


def test_an_optimizer_callable_over_another_nets_parameters_is_refused():
    other = make_net()
    with pytest.raises(th.ConfigError, match="parameters that are not the net's"):
        model(optimizer=lambda params: torch.optim.SGD(other.parameters(), lr=0.1))


def test_losses_and_metrics_that_are_not_one_number_get_clear_messages():
    with pytest.raises(th.DataError, match="the loss has shape \\(20,\\); it must be one number"):
        model(loss=nn.CrossEntropyLoss(reduction="none")).fit(X, Y, progress="none")
    with pytest.raises(th.DataError, match="does not require grad.*\\.detach\\(\\)"):
        model(loss=lambda p, t: nn.functional.cross_entropy(p, t).detach()).fit(X, Y, progress="none")
    with pytest.raises(th.DataError, match="metric 'per_row' returned a tensor of shape \\(20,\\)"):
        model(loss=nn.CrossEntropyLoss(), metrics={"per_row": lambda p, t: (p.argmax(1) == t).float()}).fit(
            X, Y, progress="none"
        )
    with pytest.raises(th.DataError, match="metric 'as_float' returned 0.5"):
        model(loss=nn.CrossEntropyLoss(), metrics={"as_float": lambda p, t: 0.5}).fit(X, Y, progress="none")


def test_nan_in_the_data_is_blamed_on_the_data_not_the_learning_rate():
    x = X.clone()
    x[7, 2] = float("nan")
    with pytest.raises(
        th.NonFiniteLossError, match="x holds NaN or inf values \\(first at row 7.*will not help"
    ):
        model(loss=nn.CrossEntropyLoss()).fit(x, Y, batch_size=4, shuffle=False, progress="none")


def test_data_conversions_name_the_real_problem():
    pd = pytest.importorskip("pandas")
    import numpy as np

    frame = pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "b": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(th.DataError, match=r"missing values \(NA/NaN\) in column\(s\) \['a'\]"):
        model(loss=nn.MSELoss()).fit(frame, np.zeros((4, 1), dtype=np.float32), progress="none")
    flags = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "on": [True, False, True, False]})
    net = nn.Linear(2, 1)
    th.Model(net, loss=nn.MSELoss(), device="cpu").fit(
        flags, np.zeros((4, 1), dtype=np.float32), progress="none"
    )
    text = pd.DataFrame({"x": [1.0, 2.0], "city": ["Oslo", "Lima"]})
    with pytest.raises(th.DataError, match=r"column\(s\) \['city'\] are not numeric"):
        th.Model(nn.Linear(2, 1), loss=nn.MSELoss(), device="cpu").fit(
            text, np.zeros((2, 1), dtype=np.float32)
        )
    dates = np.array(["2026-01-01", "2026-01-02"], dtype="datetime64[D]").reshape(2, 1)
    with pytest.raises(th.DataError, match="dates or times"):
        th.Model(nn.Linear(1, 1), loss=nn.MSELoss(), device="cpu").fit(
            dates, np.zeros((2, 1), dtype=np.float32)
        )
    rows = [torch.randn(6) for _ in range(20)]  # a list of arrays is several inputs, as in Keras
    with pytest.raises(th.DataError, match=r"read as 20 inputs of 6 samples each.*torch.stack\(x\)"):
        model(loss=nn.CrossEntropyLoss()).fit(rows, Y, epochs=1, progress="none")


MISSING_EXTRAS = {
    "optuna": (
        "optuna",
        lambda: importlib.import_module("torchhouse.frontends.tuning").import_optuna(),
        "torchhouse[tune]",
    ),
    "lightning": (
        "lightning",
        lambda: th.LightModel(nn.Linear(2, 1), loss=nn.MSELoss()).to_lightning(),
        "torchhouse[lightning]",
    ),
    "pyplot": (
        "matplotlib",
        lambda: importlib.import_module("torchhouse.runs.plots").pyplot(),
        "torchhouse[plot]",
    ),
    "figure": (
        "matplotlib",
        lambda: importlib.import_module("torchhouse.runs.plots").offscreen_figure(),
        "torchhouse[plot]",
    ),
    "wandb": (
        "wandb",
        lambda: th.callbacks.WandbLogger(project="p", mode="offline").start(),
        "torchhouse[trackers]",
    ),
    "mlflow": ("mlflow", lambda: th.callbacks.MLflowLogger().start(), "torchhouse[trackers]"),
}


@pytest.mark.parametrize("name", MISSING_EXTRAS)
def test_a_missing_optional_package_names_the_extra_to_install(monkeypatch, name):
    package, use, extra = MISSING_EXTRAS[name]
    for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(th.ConfigError, match=re.escape(f"pip install '{extra}'")):
        use()
