"""``torchhouse serve RUN``: an HTTP server for a run folder (FastAPI on uvicorn, an extra).

The net is the folder's exported program (``model.pt2``), opened only through the
admit-only checker of `torchhouse.load_exported`: the run's code is never imported, and
there is no ``--trust-code``. The inputs are prepared as training prepared them
(``serve.json``: feature scaling, a text model's vocabulary).

Endpoints: ``GET /health``, ``GET /info`` (task, input shape, classes, features),
``POST /predict`` with ``{"inputs": [row, ...]}`` -> ``{"predictions": [...],
"probabilities": [...]}`` (probabilities for classification only), OpenAPI docs at
``/docs``. Requests that arrive together are run as one batch of up to ``max_batch_size``
rows, gathered for at most ``max_wait_ms`` (dynamic batching); each request gets its own
rows back. Bad input: 422 naming what was wrong and the expected shape; NaN or infinite
values: 422; a body over ``max_body_bytes``: 413.

Example::

    torchhouse serve runs/demo --port 8000
    curl -s localhost:8000/predict -d '{"inputs": [[0.0, 1.0, ...]]}'
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchhouse.errors import ConfigError, TorchhouseError, import_optional

__all__ = ["ServedRun", "build_app", "load_served_run", "serve"]

INSTALL_HINT = "torchhouse serve needs FastAPI and uvicorn: pip install 'torchhouse[serve]'"
DEFAULT_MAX_BODY_BYTES = 8 * 2**20


@dataclass
class ServedRun:
    """A run folder's exported program and how to prepare its inputs."""

    path: Path
    model: Any
    info: dict[str, Any]
    task: str

    @property
    def input_shape(self) -> list[int]:
        return list(self.info.get("input_shape") or [])

    @property
    def is_text(self) -> bool:
        return self.info.get("vocabulary") is not None

    def describe(self) -> dict[str, Any]:
        classes = self.info.get("classes")
        return {
            "run": self.path.name,
            "task": self.task,
            "inputs": "texts"
            if self.is_text
            else {"shape": self.input_shape, "features": self.info.get("feature_names")},
            "classes": classes
            if classes is not None
            else (2 if self.task in ("binary", "probability") else None),
        }


def load_served_run(run_dir: str | os.PathLike[str]) -> ServedRun:
    """The run folder's program (never its code): a `ConfigError` when it has none."""
    from torchhouse.frontends.serving import load_program

    config, model = load_program(run_dir)
    info = dict(config["data"])
    return ServedRun(Path(run_dir), model, info, str(info.get("task", "regression")))


class InputError(TorchhouseError, ValueError):
    """A request the model cannot take (answered with 422 and this message)."""


def prepare(run: ServedRun, inputs: Any) -> torch.Tensor:
    """The request's ``inputs`` as the net's batch, or an `InputError` naming what is wrong."""
    from torchhouse.frontends.config import prepare_inputs

    if not isinstance(inputs, list) or not inputs:
        raise InputError("inputs: expected a non-empty list of rows")
    if run.is_text:
        if not all(isinstance(text, str) for text in inputs):
            raise InputError("inputs: this model takes texts: a list of strings")
        return torch.as_tensor(prepare_inputs(inputs, run.info))
    try:
        rows = np.asarray(inputs, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("inputs: expected rows of numbers of one shape each") from None
    expected = run.input_shape
    width = int(np.prod(expected)) if expected else None
    if rows.ndim < 2 or (width is not None and int(np.prod(rows.shape[1:])) != width):
        raise InputError(
            f"inputs: got shape {list(rows.shape)}; expected [rows, {', '.join(map(str, expected)) or '...'}]"
            + (f" ({width} values per row)" if width is not None else "")
        )
    if not np.isfinite(rows).all():
        raise InputError("inputs: NaN or infinite values are not accepted")
    return torch.as_tensor(prepare_inputs(rows.reshape(len(rows), -1), run.info)).float()


def answer(run: ServedRun, outputs: torch.Tensor) -> dict[str, list[Any]]:
    """Predictions (and class probabilities) for a batch of the net's outputs."""
    if run.task == "classification":
        probabilities = outputs.float().softmax(dim=1)
        return {"predictions": probabilities.argmax(1).tolist(), "probabilities": probabilities.tolist()}
    if run.task in ("binary", "probability"):
        p1 = outputs.float().reshape(-1)
        p1 = p1 if run.task == "probability" else p1.sigmoid()
        return {
            "predictions": (p1 > 0.5).long().tolist(),
            "probabilities": torch.stack([1 - p1, p1], 1).tolist(),
        }
    flat = outputs.float().reshape(len(outputs), -1)
    return {"predictions": (flat[:, 0] if flat.shape[1] == 1 else flat).tolist()}


@dataclass
class _Pending:
    batch: torch.Tensor
    done: asyncio.Future[Any] = field(repr=False)


class DynamicBatcher:
    """Gathers the rows of requests that arrive within ``max_wait_ms`` into one batch of at most
    ``max_batch_size`` rows (a request larger than that runs alone), runs the net once in a
    worker thread, and hands each request its own rows."""

    def __init__(self, run: ServedRun, max_batch_size: int, max_wait_ms: float) -> None:
        self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches_run = 0  # for tests and the benchmark: how many net calls served the requests

    async def submit(self, batch: torch.Tensor) -> torch.Tensor:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(batch, done))
        result: torch.Tensor = await done
        return result

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            group, rows = [first], len(first.batch)
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                if rows + len(nxt.batch) > self.max_batch_size:
                    await self._run([nxt])  # too large to join: alone, after nothing waits longer
                    continue
                group.append(nxt)
                rows += len(nxt.batch)
            await self._run(group)

    async def _run(self, group: list[_Pending]) -> None:
        try:
            joined = torch.cat([p.batch for p in group])
            outputs = await asyncio.to_thread(self.run.model.predict, joined, batch_size=max(len(joined), 1))
            self.batches_run += 1
            start = 0
            for pending in group:
                pending.done.set_result(outputs[start : start + len(pending.batch)])
                start += len(pending.batch)
        except Exception as exc:  # the net failed: every request of the batch gets the error
            for pending in group:
                if not pending.done.done():
                    pending.done.set_exception(exc)


_PREDICT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"inputs": {"type": "array"}}}}
        },
    }
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not accepted (NaN and infinite values are refused)")


def build_app(
    run_dir: str | os.PathLike[str],
    max_batch_size: int = 64,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Any:
    """The FastAPI application serving ``run_dir`` (see the module docstring)."""
    fastapi = import_optional("fastapi", INSTALL_HINT)
    from fastapi.responses import JSONResponse

    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ConfigError(f"--max-batch-size: expected an int >= 1, got {max_batch_size!r}")
    if not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0 or not math.isfinite(max_wait_ms):
        raise ConfigError(f"--max-wait-ms: expected a number >= 0, got {max_wait_ms!r}")
    run = load_served_run(run_dir)
    batcher = DynamicBatcher(run, max_batch_size, float(max_wait_ms))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        worker = asyncio.create_task(batcher.run_forever())
        yield
        worker.cancel()

    app = fastapi.FastAPI(title=f"torchhouse: {run.path.name}", lifespan=lifespan)
    app.state.batcher = batcher

    async def limit_declared_body(request: Any, call_next: Any) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse(
                {"detail": f"the body is over the limit of {max_body_bytes} bytes"}, status_code=413
            )
        return await call_next(request)

    def health() -> dict[str, str]:
        return {"status": "ok"}

    def info() -> dict[str, Any]:
        return run.describe()

    async def predict(request: Any) -> Any:
        body = await request.body()
        if len(body) > max_body_bytes:  # a body sent without its length
            return JSONResponse(
                {"detail": f"the body is over the limit of {max_body_bytes} bytes"}, status_code=413
            )
        try:
            payload = json.loads(body, parse_constant=_refuse_constant)
        except ValueError as exc:
            return JSONResponse({"detail": f"the body is not JSON: {exc}"}, status_code=422)
        if not isinstance(payload, dict) or set(payload) != {"inputs"}:
            return JSONResponse({"detail": 'expected a JSON object {"inputs": [row, ...]}'}, status_code=422)
        try:
            batch = prepare(run, payload["inputs"])
        except InputError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        outputs = await batcher.submit(batch)
        return answer(run, outputs)

    predict.__annotations__ = {"request": fastapi.Request, "return": Any}  # FastAPI reads the hint
    app.middleware("http")(limit_declared_body)
    app.get("/health")(health)
    app.get("/info")(info)
    app.post("/predict", openapi_extra=_PREDICT_SCHEMA)(predict)
    return app


def serve(
    run_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 64,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> None:
    """Serve ``run_dir`` until interrupted (``torchhouse serve``)."""
    uvicorn = import_optional("uvicorn", INSTALL_HINT)
    app = build_app(run_dir, max_batch_size, max_wait_ms, max_body_bytes)
    uvicorn.run(app, host=host, port=port, log_level="warning")
