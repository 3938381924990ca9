#!/usr/bin/env bash
# Issue 29 on a CUDA machine, meant to fit one device call (at most 120 + 430 s, then the summary):
#   1. the compiled-step and CUDA-graph tests of tests/test_gpu.py (at most 2 minutes);
#   2. the benchmark rows hand loop eager / + torch.compile / + CUDA graphs and torchhouse
#      eager / compile="step" / cuda_graph=True on tiny-tabular, the per-epoch probe and the
#      digits CNN (in that order: a table is written as each workload ends), 3 interleaved
#      repeats; the runs share one inductor cache, so only the first run of each compiled row
#      compiles cold (its "first epoch s" shows it).
# Each phase has its own time limit; whatever finished is in $OUT (or ./gpu-compile-check).
#   bash scripts/gpu_compile_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-compile-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())' \
  | tee "$out/device.txt" || exit 1

timeout 120 python3 -m pytest -p no:cacheprovider -rs -q tests/test_gpu.py -k "compiled_step or cuda_graph" \
  2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}

TORCHHOUSE_BENCH_DEVICE=cuda timeout 430 python3 benchmarks/run.py --workloads tabular epochs digits \
  --runners "hand loop" "hand loop + torch.compile" "hand loop + CUDA graphs" \
  "torchhouse (arrays)" "torchhouse compile=step" "torchhouse cuda_graph=True" \
  --repeats 3 --warm-cache --no-run-folder --no-import-cost --out "$out/bench-compile.md" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}

echo "== summary =="
cat "$out/device.txt"
echo "tests: $(tail -n 1 "$out/tests.log") (exit $tests_rc)"
echo "benchmark: exit $bench_rc (124: the time ran out; the tables done so far are in $out/bench-compile.md)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
