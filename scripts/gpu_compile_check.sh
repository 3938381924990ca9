#!/usr/bin/env bash
# Issue 29 on a CUDA machine (meant to fit one ~9-minute device call): the compiled-step and
# CUDA-graph tests, then the benchmark rows hand loop eager / + torch.compile / + CUDA graphs
# and torchhouse eager / compile="step" / cuda_graph=True on tiny-tabular, the digits CNN and
# the per-epoch probe, 3 interleaved repeats, each run a cold compile. Logs go to $OUT (or
# ./gpu-compile-check).
#   bash scripts/gpu_compile_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-compile-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.__version__, torch.cuda.get_device_name())' \
  | tee "$out/device.txt" || exit 1

timeout 180 python3 -m pytest -p no:cacheprovider -rs tests/test_compiled_step.py \
  "tests/test_gpu.py::test_the_compiled_step_on_cuda_tracks_eager_and_captures_the_short_batch" \
  "tests/test_gpu.py::test_cuda_graph_resume_is_bit_identical" \
  "tests/test_gpu.py::test_cuda_graph_keeps_the_nan_guard_and_the_step_scheduler" \
  2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}

TORCHHOUSE_BENCH_DEVICE=cuda timeout 330 python3 benchmarks/run.py --workloads tabular epochs digits \
  --runners "hand loop" "hand loop + torch.compile" "hand loop + CUDA graphs" \
  "torchhouse (arrays)" "torchhouse compile=step" "torchhouse cuda_graph=True" \
  --repeats 3 --no-run-folder --out "$out/bench-compile.md" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}

echo "== summary =="
cat "$out/device.txt"
echo "tests: $(tail -n 1 "$out/tests.log") (exit $tests_rc)"
echo "benchmark: exit $bench_rc (124: the time ran out; the tables done so far are in $out/bench-compile.md)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
