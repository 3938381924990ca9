"""``torchhouse serve``: requests per second and p50 / p99 latency, with and without dynamic batching.

A real server on a free loopback port; ``clients`` threads send ``requests`` single-row
requests in all (bounded in count and time). "batching off" is ``max_batch_size=1``;
"batching on" gathers for up to 5 ms into batches of up to 64 rows.

    python benchmarks/serve_latency.py
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

import torchhouse as th


def trained_runs(root: Path) -> dict[str, tuple[Path, torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(256, 20)
    mlp = th.Model(th.models.mlp(20, [64, 64], 3), loss=nn.CrossEntropyLoss(), device="cpu")
    mlp.fit(x, torch.randint(0, 3, (256,)), epochs=1, progress="none", run_dir=root / "mlp")
    images, labels = th.datasets.load_digits()[:2]
    digits = torch.as_tensor(images[:256]).float().reshape(-1, 1, 8, 8)
    cnn = th.Model(th.models.digits_cnn(), loss=nn.CrossEntropyLoss(), device="cpu")
    cnn.fit(digits, torch.as_tensor(labels[:256]), epochs=1, progress="none", run_dir=root / "cnn")
    return {"small MLP": (root / "mlp", x), "digits CNN": (root / "cnn", digits)}


def measure_one(
    folder: Path, x: torch.Tensor, batch: int, wait_ms: float, requests: int, clients: int
) -> str:
    import uvicorn

    from torchhouse.frontends.server import build_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(build_app(folder, batch, wait_ms), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    bodies = [
        json.dumps({"inputs": x[i % len(x) : i % len(x) + 1].tolist()}).encode() for i in range(requests)
    ]

    def ask(body: bytes) -> float:
        start = time.perf_counter()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        return time.perf_counter() - start

    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(ask, bodies))
        elapsed = time.perf_counter() - began
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return f"{requests / elapsed:7.0f} req/s, p50 {p50:6.1f} ms, p99 {p99:6.1f} ms"


def measure(requests: int = 400, clients: int = 16) -> str:
    torch.set_num_threads(1)
    lines = [
        f"`torchhouse serve` on loopback, {clients} clients, {requests} single-row requests (`benchmarks/serve_latency.py`):"
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (folder, x) in trained_runs(Path(tmp)).items():
            off = measure_one(folder, x, 1, 0.0, requests, clients)
            on = measure_one(folder, x, 64, 5.0, requests, clients)
            lines.append(f"- {name}: batching off {off}; batching on {on}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(measure())
