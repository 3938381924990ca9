#!/usr/bin/env bash
# GPU checks for a machine with a CUDA GPU (under 9 minutes): the GPU tests (fp16 and bf16
# mixed precision, compile, pinned transfers, resume with CUDA RNG), the CPU-side exactness
# tests on that machine, and the benchmark's GPU rows. Prints a summary; writes logs to
# $OUT (or ./gpu-check) when set.
#   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$out/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {torch.cuda.device_count()} GPU(s)")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

python3 -m pytest -p no:cacheprovider -rs tests/test_gpu.py tests/test_precision.py tests/test_exact.py \
  2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}

ddp_rc=0
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  echo "== DDP with NCCL on 2 GPUs =="
  TORCHHOUSE_TEST_DEVICE=cuda python3 -m torch.distributed.run --standalone --nproc-per-node=2 \
    tests/ddp_worker.py "$out/ddp-nccl.json" fit 2>&1 | tail -n 20
  ddp_rc=${PIPESTATUS[0]}
  echo "== FSDP2 (strategy=fsdp) with NCCL on 2 GPUs =="
  TORCHHOUSE_TEST_DEVICE=cuda python3 -m torch.distributed.run --standalone --nproc-per-node=2 \
    tests/ddp_worker.py "$out/fsdp-nccl.json" fsdp 2>&1 | tail -n 20
  [ "${PIPESTATUS[0]}" -eq 0 ] || ddp_rc=1
else
  echo "(one GPU: the NCCL DDP and FSDP checks need 2+ GPUs and were not run)"
fi

# The GPU target (issue 17): torchhouse at most 1.01x the hand loop on the wide MLP, whose
# epoch is short enough (16 steps) to show fixed per-epoch costs; the "epochs" probe shows
# them directly. 3 repeats, fresh processes, interleaved.
TORCHHOUSE_BENCH_DEVICE=cuda timeout 420 python3 benchmarks/run.py --workloads wide epochs \
  --runners "hand loop" "torchhouse (arrays)" "torchhouse (DataLoader)" "textbook DataLoader" \
  --repeats 3 --out "$out/bench-gpu.md" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}

echo
echo "== summary =="
cat "$out/device.txt"
echo "tests: $(tail -n 1 "$out/tests.log") (exit $tests_rc)"
echo "DDP with NCCL: exit $ddp_rc"
echo "benchmark: exit $bench_rc, tables in $out/bench-gpu.md"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$ddp_rc" -eq 0 ]
