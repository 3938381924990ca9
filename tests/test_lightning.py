"""th.LightModel and Model.to_lightning: the same model, trained by PyTorch Lightning's Trainer."""

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import CompilesOtherwise, ScaleAtEpoch, ScaledUntilSwitched, SwitchAtEpoch

pytestmark = pytest.mark.slow
lightning = pytest.importorskip("lightning")


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers and loggers
        yield


def data():
    x = torch.randn(96, 4, generator=torch.Generator().manual_seed(0))
    return x, (x[:, 0] > 0).long()


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def test_light_model_ends_with_the_weights_model_ends_with(tmp_path):
    x, y = data()
    plain = th.Model(make(), loss=nn.CrossEntropyLoss(), optimizer=sgd, metrics=["acc"], device="cpu")
    expected = plain.fit(
        x, y, validation_data=(x[:32], y[:32]), epochs=3, batch_size=16, shuffle=False, progress="none"
    )
    light = th.LightModel(make(), loss=nn.CrossEntropyLoss(), optimizer=sgd, metrics=["acc"])
    history = light.fit(
        x,
        y,
        validation_data=(x[:32], y[:32]),
        epochs=3,
        batch_size=16,
        shuffle=False,
        accelerator="cpu",
        devices=1,
    )
    # The same steps in the same order: bit-identical weights. Lightning accumulates the
    # logged epoch means in float32 (torchhouse in float64), so the history agrees to that.
    assert all(torch.equal(a, b) for a, b in zip(plain.net.parameters(), light.net.parameters(), strict=True))
    assert set(history.history) == set(expected.history) == {"loss", "acc", "val_loss", "val_acc"}
    for name in expected.history:
        assert history.history[name] == pytest.approx(expected.history[name], rel=1e-6), name
    assert light.evaluate(x, y) == plain.evaluate(x, y)
    assert torch.equal(light.predict(x), plain.predict(x))


def test_torchhouse_callbacks_run_at_the_epoch_hooks_and_early_stopping_stops_the_trainer():
    x, y = data()
    seen = []
    light = th.LightModel(make(), loss=nn.CrossEntropyLoss(), optimizer=sgd)
    stop = th.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    record = th.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append((epoch, sorted(logs))),
        on_fit_exit=lambda status, logs: seen.append(status),
    )
    history = light.fit(
        x, y, epochs=10, batch_size=16, callbacks=[stop, record], accelerator="cpu", devices=1
    )
    assert len(history.epoch) == 2  # the first epoch sets the best, the second fails min_delta
    assert seen == [(0, ["loss"]), (1, ["loss"]), "stopped_early"]


def test_a_light_model_run_folder_holds_safetensors_and_is_served_without_its_code(tmp_path):
    from torchhouse.frontends.serving import load_run

    x, y = data()
    light = th.LightModel(make(), loss=nn.CrossEntropyLoss(), optimizer=sgd, metrics=["acc"])
    light.fit(x, y, epochs=2, batch_size=16, run_dir=tmp_path / "run", accelerator="cpu", devices=1)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.safetensors", "history.csv", "run.json", "serve.json", "model.pt2"} <= files
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # no pickled Lightning checkpoints
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"
    _, served = load_run(tmp_path / "run")
    assert torch.allclose(served.predict(x), light.predict(x), atol=1e-6)


def test_to_lightning_gives_a_module_any_trainer_can_fit():
    x, y = data()
    model = th.Model(make(), loss=nn.CrossEntropyLoss(), optimizer=sgd, metrics=["acc"], device="cpu")
    module = model.to_lightning()
    assert isinstance(module, lightning.LightningModule)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = model.evaluate(x, y)["loss"]
    trainer.fit(module, loader)
    assert {"loss", "acc"} <= set(trainer.callback_metrics)
    assert model.evaluate(x, y)["loss"] < before


DDP_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
from torch import nn
import torchhouse as th

torch.manual_seed(0)
x = torch.randn(96, 4, generator=torch.Generator().manual_seed(0))
y = (x[:, 0] > 0).long()
light = th.LightModel(nn.Linear(4, 2), loss=nn.CrossEntropyLoss(), metrics=["acc"])
history = light.fit(x, y, epochs=2, batch_size=16, accelerator="cpu", devices=2, strategy="ddp",
                    run_dir=sys.argv[1])
if torch.distributed.get_rank() == 0:
    json.dump(history.history, open(sys.argv[2], "w"))
"""


def test_lightnings_ddp_strategy_runs_on_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_light.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "history.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["loss"]) == 2 and len(history["acc"]) == 2
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"


def test_without_lightning_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    light = th.LightModel(make(), loss=nn.CrossEntropyLoss())
    x, y = data()
    with pytest.raises(th.ConfigError, match="pip install 'torchhouse\\[lightning\\]'"):
        light.fit(x, y, epochs=1)


# --------------------------------------------------------------------------- parity with th.Model


def both(light_class=th.LightModel, model_class=th.Model, **kwargs):
    options = dict(loss=nn.CrossEntropyLoss(), optimizer=sgd, metrics=["acc"], **kwargs)
    return model_class(make(), device="cpu", **options), light_class(make(), **options)


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True))


FIT = dict(epochs=2, batch_size=16, shuffle=False)
ON_CPU = dict(accelerator="cpu", devices=1)


def test_validation_split_holds_out_what_model_holds_out():
    x, y = data()
    plain, light = both()
    expected = plain.fit(x, y, validation_split=0.25, progress="none", **FIT)
    history = light.fit(x, y, validation_split=0.25, **FIT, **ON_CPU)
    assert same_weights(plain, light)
    assert history.history["val_loss"] == pytest.approx(expected.history["val_loss"], rel=1e-6)
    with pytest.raises(th.ConfigError, match="validation_split"):
        light.fit(x, y, validation_split=1.5, **ON_CPU)


class FirstColumnSquared(th.LightModel):
    """Overrides written against Model's API: unpack_batch, and eval_step with an extra value."""

    def unpack_batch(self, batch):
        x, y = batch
        return x * torch.tensor([2.0, 1.0, 1.0, 1.0]), y

    def eval_step(self, batch):
        out = th.Model.eval_step(self, batch)
        return {**out, "mean_logit": out["preds"].mean()}


class FirstColumnSquaredModel(th.Model):
    def unpack_batch(self, batch):
        x, y = batch
        return x * torch.tensor([2.0, 1.0, 1.0, 1.0]), y

    def eval_step(self, batch):
        out = super().eval_step(batch)
        return {**out, "mean_logit": out["preds"].mean()}


def test_step_overrides_of_a_light_model_subclass_run_as_a_model_subclass_s_do():
    x, y = data()
    plain, light = both(FirstColumnSquared, FirstColumnSquaredModel)
    expected = plain.fit(x, y, validation_data=(x[:32], y[:32]), progress="none", **FIT)
    history = light.fit(x, y, validation_data=(x[:32], y[:32]), **FIT, **ON_CPU)
    assert same_weights(plain, light)
    assert history.history["val_mean_logit"] == pytest.approx(expected.history["val_mean_logit"], rel=1e-5)


class ClippedStep(th.LightModel):
    def train_step(self, batch):  # the README's custom step: backward and optimizer_step of Model
        inputs, target = self.unpack_batch(batch)
        preds = self.forward(inputs)
        loss = self.compute_loss(preds, target)
        self.backward(loss)
        self.optimizer_step()
        return {"loss": loss, "preds": preds, "target": target, "penalty": loss.detach() * 0 + 1}


class ClippedStepModel(th.Model):
    def train_step(self, batch):
        inputs, target = self.unpack_batch(batch)
        preds = self.forward(inputs)
        loss = self.compute_loss(preds, target)
        self.backward(loss)
        self.optimizer_step()
        return {"loss": loss, "preds": preds, "target": target, "penalty": loss.detach() * 0 + 1}


def test_a_train_step_override_runs_under_manual_optimization_with_model_s_clipping():
    x, y = data()
    plain, light = both(ClippedStep, ClippedStepModel, gradient_clip_val=0.05)
    expected = plain.fit(x, y, progress="none", **FIT)
    history = light.fit(x, y, **FIT, **ON_CPU)
    assert same_weights(plain, light)
    assert history.history["penalty"] == [1.0, 1.0]
    assert history.history["loss"] == pytest.approx(expected.history["loss"], rel=1e-6)
    _, accumulating = both(ClippedStep, ClippedStepModel, accumulate_grad_batches=2)
    with pytest.raises(th.ConfigError, match="manual optimization.*accumulate"):
        accumulating.fit(x, y, **ON_CPU)


def test_plateau_without_validation_weighted_metrics_and_lr_in_the_history():
    x, y = data()

    def plateau(optimizer):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)

    options = dict(lr_scheduler=plateau, weighted_metrics={"wacc": "accuracy"})
    plain, light = both(**options)
    expected = plain.fit(x, y, progress="none", **FIT)
    history = light.fit(x, y, **FIT, **ON_CPU)  # watches "loss": no validation
    assert set(history.history) == set(expected.history) == {"loss", "acc", "wacc", "lr"}
    assert history.history["lr"] == expected.history["lr"]
    assert history.history["wacc"] == pytest.approx(expected.history["acc"], rel=1e-6)  # no weights: 1 each
    assert same_weights(plain, light)


def test_dict_inputs_with_labels():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = make()

        def forward(self, features, labels=None):
            logits = self.inner(features)
            loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    x, y = data()
    torch.manual_seed(0)
    light = th.LightModel(Keyed(), loss=None, optimizer=sgd, metrics=["acc"])
    history = light.fit({"features": x, "labels": y}, **FIT, **ON_CPU)
    assert set(history.history) == {"loss", "acc"} and history.history["acc"][-1] > 0.5


def test_compiled_steps_are_th_models_and_compile_true_is_checked_against_eager():
    # compile="step" / cuda_graph=True compile th.Model's own step, which Lightning does not run;
    # compile=True's first training step is compared with the eager net's, as under th.Model
    for options in ({"compile": "step"}, {"cuda_graph": True}):
        with pytest.raises(th.ConfigError, match="LightModel: compile='step' and cuda_graph=True"):
            th.LightModel(make(), loss=nn.CrossEntropyLoss(), **options)

    x, y = data()
    light = th.LightModel(
        CompilesOtherwise(features=4, classes=2), loss=nn.CrossEntropyLoss(), optimizer=sgd, compile=True
    )
    before = light.net.layer.weight.detach().clone()
    with pytest.raises(th.ConfigError, match="compile=True.*differs from the eager step"):
        light.fit(x, y, epochs=1, batch_size=16)
    assert torch.equal(light.net.layer.weight, before)
    fine = th.LightModel(make(), loss=nn.CrossEntropyLoss(), optimizer=sgd, compile=True)
    assert len(fine.fit(x, y, epochs=2, batch_size=16).history["loss"]) == 2

    # a graph torch compiles later in the fit (an attribute the forward reads changed) is checked too
    net = ScaledUntilSwitched(features=4, classes=2)
    light = th.LightModel(net, loss=nn.CrossEntropyLoss(), optimizer=sgd, compile=True)
    light.fit(x, y, epochs=2, batch_size=16, callbacks=[ScaleAtEpoch(net)])
    switch = SwitchAtEpoch(net, epoch=1)  # after the fit's first step, which is checked anyway
    with pytest.raises(th.ConfigError, match="compile=True.*differs from the eager step"):
        light.fit(x, y, epochs=3, batch_size=16, callbacks=[switch])
    assert switch.weights is not None and torch.equal(net.layer.weight, switch.weights["layer.weight"])
