"""Two torchrun "nodes" on one machine (c10d rendezvous, gloo): they train as one process does."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_distributed import assert_close_results, single

HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing"),
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_nodes(out, mode, port):
    """Node 0 hosts the rendezvous store; both run one process each (global ranks 0 and 1)."""
    nodes = []
    for node_rank in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=torchhouse-test",
            f"--rdzv-conf=is_host={1 if node_rank == 0 else 0}",
            "--max-restarts=0",
            str(HERE / "ddp_worker.py"),
            str(out),
            mode,
        ]
        nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return nodes


def finish(nodes, timeout):
    outputs = []
    for node in nodes:
        try:
            _, err = node.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
        outputs.append((node.returncode, err))
    return outputs


def test_two_nodes_train_as_one_process_with_the_same_global_batch(tmp_path):
    nodes = start_nodes(tmp_path / "nodes.json", "fit", free_port())
    for code, err in finish(nodes, timeout=240):
        assert code == 0, err[-3000:]
    reference = single(tmp_path / "one.json", 2)
    assert_close_results(json.loads((tmp_path / "nodes.json").read_text()), reference)


def test_a_failing_node_makes_the_other_exit_with_an_error_in_bounded_time(tmp_path):
    started = time.monotonic()
    nodes = start_nodes(tmp_path / "fail.json", "raise", free_port())
    (code0, err0), (code1, err1) = finish(nodes, timeout=240)
    assert code1 != 0 and "rank 1 fails on purpose" in err1
    assert code0 != 0, "node 0 must not report success when node 1 failed"
    assert "RuntimeError" in err0  # gloo: "Connection closed by peer ... a remote worker crashing"
    assert time.monotonic() - started < 180
    assert not (tmp_path / "fail.json").exists()
