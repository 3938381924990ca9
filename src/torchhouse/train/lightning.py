"""LightModel: the `Model` interface, trained by PyTorch Lightning's ``Trainer``.

For Lightning's accelerators, strategies (DDP, FSDP, DeepSpeed...), ``num_nodes`` and
precision plugins, with the model defined and used as with `Model`. ``Model.to_lightning()``
gives the `LightningModule` itself, to hand to any ``Trainer``. Lightning is imported only
here (``pip install 'torchhouse[lightning]'``).

What carries over: the net, loss (or the net's own), optimizer, scheduler, metrics and
weighted metrics (logged as sample-weighted epoch means, as `Model` logs them; ``lr`` too),
``validation_split``, dict inputs with ``"labels"``, the step methods (``unpack_batch``,
``forward``, ``compute_loss``, ``eval_step``, ``train_step``: override them in a subclass of
`LightModel` as in one of `Model`), and torchhouse's callbacks at the epoch hooks
(``on_fit_start``, ``on_epoch_start``, ``on_epoch_end``, ``on_fit_end``, ``on_fit_exit``;
per-batch hooks are not called). A ``train_step`` override runs under Lightning's manual
optimization (its ``self.backward`` / ``self.optimizer_step`` clip and step as `Model`'s
do; accumulation and mixed precision are refused there). Weights are saved as safetensors
(Lightning's pickled ``.ckpt`` checkpointing is off); a ``run_dir`` gets ``history.csv``,
``run.json``, ``model.safetensors`` and the serving files, so ``torchhouse app`` serves it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchhouse.callbacks.base import Callback
from torchhouse.callbacks.dispatch import CallbackList
from torchhouse.data.batches import make_batches
from torchhouse.data.convert import to_tensor_tree
from torchhouse.data.datamodule import defines, is_datamodule
from torchhouse.data.rng import seed_everything
from torchhouse.errors import ConfigError, DataError
from torchhouse.runs.folder import RunFolder
from torchhouse.runs.history import History
from torchhouse.train.lightning_module import lightning, lightning_module
from torchhouse.train.model import Model
from torchhouse.train.run_folder_writer import write_final_files
from torchhouse.train.spec import FitSpec
from torchhouse.train.state import FitState

__all__ = ["LightModel"]


class LightModel:
    """`Model`'s constructor, ``.net`` and fit / evaluate / predict / save, trained by ``lightning.Trainer``.

    ``fit`` passes ``accelerator``, ``devices``, ``strategy``, ``num_nodes`` and
    ``precision`` (default: the model's) to the Trainer, with ``accumulate_grad_batches``
    and ``gradient_clip_val`` from the constructor, as `Model` takes them.

    Example:
        >>> from torch import nn
        >>> light = LightModel(nn.Linear(3, 2), loss=nn.CrossEntropyLoss())
        >>> # light.fit(x, y, epochs=5, accelerator="gpu", devices=4, strategy="ddp")
    """

    def __init__(self, net: torch.nn.Module, loss: Any = None, optimizer: Any = None, **options: Any) -> None:
        options.setdefault("device", "cpu")  # Lightning moves the net to its accelerator
        if options.get("compile") == "step" or options.get("cuda_graph"):
            raise ConfigError(
                "LightModel: compile='step' and cuda_graph=True compile th.Model's own training step, "
                "and Lightning runs its own: use th.Model for them, or compile=True (the net compiled) here"
            )
        self.model = _model_class(type(self))(net, loss=loss, optimizer=optimizer, **options)

    @property
    def overrides_train_step(self) -> bool:
        """Whether this class overrides ``train_step`` (it then runs under manual optimization)."""
        return "train_step" in _overridden(type(self))

    @property
    def net(self) -> torch.nn.Module:
        return self.model.net

    @property
    def history(self) -> History:
        return self.model.history

    def to_lightning(self) -> Any:
        """The `LightningModule` (see `lightning_module`)."""
        return lightning_module(self.model, custom_eval=type(self.model).eval_step is not Model.eval_step)

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        validation_data: Any = None,
        epochs: int = 1,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        callbacks: Iterable[Callback] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        accelerator: str = "auto",
        devices: Any = "auto",
        strategy: Any = "auto",
        num_nodes: int = 1,
        precision: str | None = None,
        progress: bool = False,
        validation_split: float = 0.0,
        **trainer_options: Any,
    ) -> History:
        """Train with ``lightning.Trainer``; returns the `History` (one row per epoch, `Model`'s names).

        ``validation_split`` holds out the last fraction of ``x`` as `Model.fit` does.
        """
        L = lightning()
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise ConfigError(f"epochs: expected an int >= 1, got {epochs!r}")
        if seed is not None:
            seed_everything(seed)
        model = self.model
        spec = FitSpec.from_fit(
            {"epochs": epochs, "batch_size": batch_size, "shuffle": shuffle, "seed": seed, "run_dir": run_dir,
             "validation_split": validation_split, "validation_data": validation_data}
        )  # fmt: skip
        datamodule = x if is_datamodule(x) else None  # Lightning's own: the Trainer calls its hooks
        train, val = _fit_loaders(x, y, validation_data, spec, datamodule)
        manual = self.overrides_train_step
        if manual:
            _check_manual(model, precision)
        logs_lr = model.lr_scheduler is not None or any(getattr(c, "logs_lr", False) for c in callbacks or ())
        state = dataclasses.replace(
            FitState.idle(model),
            spec=spec,
            log_names=model.log_names_for(val is not None, logs_lr=logs_lr),
            run_folder=RunFolder(run_dir) if run_dir is not None else None,
        )
        model.history = History()
        model.stop_training = False
        model.use_fit_state(state)
        bridge = _bridge(L, model, state, CallbackList(list(callbacks or []), model))
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            precision=precision or model.precision,
            accumulate_grad_batches=1 if manual else model.accumulate_grad_batches,
            gradient_clip_val=None if manual else model.gradient_clip_val,  # manual: optimizer_step clips
            gradient_clip_algorithm=None if manual else model.gradient_clip_algorithm,
            callbacks=[bridge],
            enable_checkpointing=False,  # Lightning's .ckpt files are pickles: torchhouse saves safetensors
            logger=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            default_root_dir=os.fspath(run_dir) if run_dir is not None else None,
            **trainer_options,
        )
        custom_eval = type(model).eval_step is not Model.eval_step
        module = lightning_module(
            model, with_validation=val is not None, manual=manual, custom_eval=custom_eval
        )
        if datamodule is not None:
            trainer.fit(module, datamodule=datamodule)
        else:
            trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
        return model.history

    def evaluate(self, x: Any, y: Any = None, batch_size: int = 256) -> dict[str, float]:
        """Loss and metrics over ``x`` (as `Model.evaluate`, in this process)."""
        self.model.net.to(self.model.device)
        return self.model.evaluate(x, y, batch_size=batch_size)

    def predict(self, x: Any, batch_size: int = 256) -> Any:
        """The net's outputs for ``x`` (as `Model.predict`, in this process)."""
        self.model.net.to(self.model.device)
        return self.model.predict(x, batch_size=batch_size)

    def save(self, path: str | os.PathLike[str]) -> Any:
        """The weights as safetensors + JSON (as `Model.save`)."""
        return self.model.save(path)


def _fit_loaders(x: Any, y: Any, validation_data: Any, spec: FitSpec, datamodule: Any) -> tuple[Any, Any]:
    """The training and validation loaders the Trainer gets (a DataModule's validation: itself)."""
    if datamodule is not None:
        if y is not None or validation_data is not None or spec.validation_split:
            raise ConfigError("LightModel.fit: a DataModule brings its own loaders; give it alone")
        return None, datamodule if defines(datamodule, "val_dataloader") else None
    train = _loader(x, y, spec.batch_size, spec.shuffle, spec.seed)
    val = None
    if validation_data is not None:
        val = _loader(*_pair(validation_data), spec.batch_size, False, None)
    if spec.validation_split:
        train, val = _split(train, spec.validation_split)
    return train, val


STEP_METHODS = ("unpack_batch", "forward", "compute_loss", "train_step", "eval_step", "predict_step")


def _overridden(cls: type) -> dict[str, Any]:
    """The step methods a subclass of `LightModel` defines (the nearest definition wins)."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(LightModel)]):
        found.update({name: vars(klass)[name] for name in STEP_METHODS if name in vars(klass)})
    return found


def _model_class(cls: type) -> type[Model]:
    """`Model`, or a subclass of it with the step methods a `LightModel` subclass overrides
    (written against `Model`'s API: ``self`` is the model in them)."""
    methods = _overridden(cls)
    return type(f"{cls.__name__}Steps", (Model,), methods) if methods else Model


def _check_manual(model: Model, precision: str | None) -> None:
    """What a ``train_step`` override cannot have under Lightning's manual optimization."""
    if model.accumulate_grad_batches > 1:
        raise ConfigError(
            "LightModel: a train_step override runs under Lightning's manual optimization, which does "
            "not accumulate gradients; use accumulate_grad_batches=1 (or th.Model, which does)"
        )
    if (precision or model.precision) != "32":
        raise ConfigError(
            "LightModel: a train_step override runs under Lightning's manual optimization; mixed "
            "precision there needs Lightning's own backward. Use precision='32' (or th.Model)"
        )


def _split(train: DataLoader[Any], fraction: float) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """``validation_split``: the last fraction of the samples, as `Model.fit` holds it out."""
    from torchhouse.data.batches import LoaderBatches, split_validation

    kept, held_out = split_validation(LoaderBatches(train), fraction)
    assert isinstance(kept, LoaderBatches) and isinstance(held_out, LoaderBatches)
    return kept.loader, held_out.loader


def _pair(data: Any) -> tuple[Any, Any]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    return data, None


def _loader(x: Any, y: Any, batch_size: int, shuffle: bool, seed: int | None) -> DataLoader[Any]:
    """Arrays -> a DataLoader over their tensors (Lightning shards loaders itself)."""
    if isinstance(x, DataLoader):
        return x
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if isinstance(x, Dataset):
        return DataLoader(x, batch_size=batch_size, shuffle=shuffle, generator=generator)
    if y is None and isinstance(x, dict) and "labels" in x:  # Hugging Face's batch: net(**batch)
        make_batches(x, None, batch_size=batch_size, shuffle=False, generator=None)  # checks, explains
        return DataLoader(
            _Rows(to_tensor_tree(x, "x")), batch_size=batch_size, shuffle=shuffle, generator=generator
        )
    if y is None:
        raise DataError("LightModel.fit: y is missing (arrays need targets; or pass a Dataset / DataLoader)")
    make_batches(x, y, batch_size=batch_size, shuffle=False, generator=None)  # checks shapes, explains errors
    inputs, target = to_tensor_tree(x, "x"), to_tensor_tree(y, "y")
    if not isinstance(inputs, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise DataError("LightModel.fit takes x and y as single arrays; pass a DataLoader for other layouts")
    return DataLoader(
        TensorDataset(inputs, target), batch_size=batch_size, shuffle=shuffle, generator=generator
    )


class _Rows(Dataset[dict[str, torch.Tensor]]):
    """A dict of arrays as a Dataset of dict rows (the default collate makes dict batches)."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        self.columns = columns
        self.length = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {name: column[i] for name, column in self.columns.items()}


def _bridge(L: Any, model: Model, state: FitState, callbacks: CallbackList) -> Any:
    """A Lightning callback that keeps `Model`'s history and calls torchhouse's epoch hooks."""

    class Bridge(L.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.logs: dict[str, float] = {}
            self.status = "crashed"
            self.run = state.run_folder

        def on_fit_start(self, trainer: Any, module: Any) -> None:
            if self.run is not None and trainer.is_global_zero:
                self.run.prepare(resume=False, overwrite=False)
                self.run.start({"trainer": "lightning", "fit": state.spec.config()}, resumed=False)
            callbacks.call("on_fit_start", {})

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            state.epoch = trainer.current_epoch
            callbacks.call("on_epoch_start", trainer.current_epoch, {})

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            self.step_lr = model.optimizer.param_groups[0]["lr"]  # what this step uses: the logged lr

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            metrics = trainer.callback_metrics
            names = [n for n in state.log_names if n in metrics]
            names += [n for n in metrics if n not in names]  # a custom step's own values
            self.logs = {n: float(metrics[n]) for n in names}
            if "lr" in state.log_names:
                self.logs["lr"] = float(getattr(self, "step_lr", model.optimizer.param_groups[0]["lr"]))
            model.history.append(trainer.current_epoch, self.logs)
            if self.run is not None and trainer.is_global_zero:
                self.run.write_history(model.history)
            callbacks.call("on_epoch_end", trainer.current_epoch, dict(self.logs))
            if model.stop_training:
                trainer.should_stop = True

        def on_fit_end(self, trainer: Any, module: Any) -> None:
            callbacks.call("on_fit_end", dict(self.logs))
            self.status = "stopped_early" if model.stop_training else "finished"
            self._exit(trainer)

        def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
            self.status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "crashed"
            self._exit(trainer)

        def _exit(self, trainer: Any) -> None:
            callbacks.call("on_fit_exit", self.status, dict(self.logs))
            if self.run is None or not trainer.is_global_zero:
                return
            if self.status in ("finished", "stopped_early"):
                state.example_batch = next(iter(trainer.train_dataloader))
                write_final_files(model, state, self.run, model.net.state_dict())
            self.run.update(
                status=self.status, epochs_done=len(model.history), ended=time.strftime("%Y-%m-%dT%H:%M:%S%z")
            )
            self.run.release()

    return Bridge()
