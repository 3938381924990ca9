"""model.report: equal to scikit-learn's reports on the same predictions; worst(k) by hand."""

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a dev dependency")


def trained_classifier():
    x, y = make_classification(n=300, classes=4)
    torch.manual_seed(0)
    model = th.Model(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), loss=nn.CrossEntropyLoss(), device="cpu"
    )
    model.fit(x, y, epochs=2, progress="none")  # a little trained: every kind of mistake occurs
    return model, x, y


def test_a_classification_report_equals_scikit_learns():
    model, x, y = trained_classifier()
    report = model.report(x, y, labels=["a", "b", "c", "d"])
    predicted = model.predict(x).argmax(1).numpy()
    truth = y.numpy()
    assert torch.equal(
        report.confusion_matrix, torch.as_tensor(sklearn_metrics.confusion_matrix(truth, predicted))
    )
    assert report.confusion_matrix.dtype == torch.int64
    reference = sklearn_metrics.classification_report(
        truth,
        predicted,
        labels=[0, 1, 2, 3],
        target_names=["a", "b", "c", "d"],
        output_dict=True,
        zero_division=0,
    )
    for name in "abcd":
        for key, theirs in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "f1-score"),
            ("support", "support"),
        ):
            assert report.per_class[name][key] == pytest.approx(reference[name][theirs], abs=1e-12)
    assert report.summary["accuracy"] == pytest.approx(
        sklearn_metrics.accuracy_score(truth, predicted), abs=1e-12
    )
    assert report.summary["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(truth, predicted, average="macro", zero_division=0), abs=1e-12
    )
    assert report.summary["weighted_f1"] == pytest.approx(
        sklearn_metrics.f1_score(truth, predicted, average="weighted", zero_division=0), abs=1e-12
    )
    text = report.to_markdown()
    assert "| a |" in text and "Confusion matrix" in text
    assert report.plot().axes[0].get_title() == "confusion matrix"


def test_worst_cases_agree_with_per_sample_losses_by_hand():
    model, x, y = trained_classifier()
    report = model.report(x, y)
    with torch.no_grad():
        by_hand = nn.functional.cross_entropy(model.predict(x), y, reduction="none")
    order = torch.argsort(by_hand, descending=True, stable=True)[:5]
    worst = report.worst(5)
    assert [case["index"] for case in worst] == order.tolist()
    assert [case["loss"] for case in worst] == pytest.approx(by_hand[order].tolist(), rel=1e-6)
    assert all(case["target"] == int(y[case["index"]]) for case in worst)


def test_a_regression_report_equals_scikit_learns_and_refuses_missing_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(200, 1, generator=g)
    torch.manual_seed(0)
    model = th.Model(nn.Linear(3, 1), loss=nn.MSELoss(), device="cpu")
    model.fit(x, y, epochs=3, progress="none")
    report = model.report(x, y)
    predicted = model.predict(x).numpy()
    assert report.summary["mae"] == pytest.approx(
        sklearn_metrics.mean_absolute_error(y.numpy(), predicted), rel=1e-6
    )
    assert report.summary["rmse"] == pytest.approx(
        sklearn_metrics.mean_squared_error(y.numpy(), predicted) ** 0.5, rel=1e-6
    )
    assert report.summary["r2"] == pytest.approx(sklearn_metrics.r2_score(y.numpy(), predicted), rel=1e-6)
    assert report.confusion_matrix is None and report.plot().axes[0].get_title() == "predicted vs true"
    assert len(report.worst(3)) == 3
    with pytest.raises(th.DataError, match="y is missing"):
        model.report(x)
    with pytest.raises(th.ConfigError, match="labels"):
        trained_classifier()[0].report(*make_classification(n=20, classes=4), labels=["just one"])


def test_a_config_run_folder_holds_its_validation_report_and_torchhouse_report_prints_the_test_split(
    tmp_path, capsys
):
    import yaml

    from torchhouse.frontends.cli import main
    from torchhouse.frontends.config import read_test_split

    config = {
        "name": "bc",
        "model": {"factory": "torchhouse.models:mlp", "kwargs": {"in_features": 30, "hidden": [8], "out_features": 2}},
        "data": {"dataset": "breast_cancer", "standardize": True, "test_fraction": 0.2, "seed": 0},
        "loss": "CrossEntropyLoss",
        "metrics": {"acc": "accuracy"},
        "fit": {"epochs": 3, "batch_size": 32, "seed": 0, "validation_split": 0.2, "progress": "none"},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "c.yaml"), "--run-dir", str(run)]) == 0
    # the fit's end: report.md of the validation split, and the figure (the command line draws it)
    assert "## Per class" in (run / "report.md").read_text()
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["report", str(run), "--plot", str(tmp_path / "cm.png")]) == 0
    out = capsys.readouterr().out
    x, y = read_test_split(run)
    _, model = __import__("torchhouse.frontends.serving", fromlist=["load_run"]).load_run(run)
    predicted = model.predict(x).argmax(1).numpy()
    accuracy = sklearn_metrics.accuracy_score(y.numpy(), predicted)
    assert f"| accuracy | {accuracy:.4f} |" in out, (accuracy, out[:300])
    assert f"(classification, {len(y)} samples)" in out
    assert (tmp_path / "cm.png").stat().st_size > 1000
    assert main(["report", str(tmp_path / "nowhere")]) != 0
