#!/usr/bin/env bash
# The GPU check, in one run on a machine with a GPU and no internet access (its image has torch,
# triton, nvcc, cmake, ninja, pybind11 and scikit-build-core): build and install fnn_fast,
# confirm the CUDA kernels are compiled in, run the GPU tests, then benchmarks/gpu_bench.py
# (copy bandwidth; fused kernels' GB/s; FM / FNN scoring and train steps for the eager
# reference, the reference under torch.compile, Triton and CUDA), with a short
# `fnn-fast train --device cuda` run beside the same run on the CPU before it (metrics side by
# side: benchmarks/gpu_train_check.py). Finishes within
# FNN_FAST_GPU_CHECK_SECONDS (default 460, under 8 minutes) and prints a short table last.
#
#   benchmarks/gpu_check.sh [results.json]        # JSON also via FNN_FAST_GPU_JSON
#   FNN_FAST_GPU_BENCH_ARGS=--dry-run benchmarks/gpu_check.sh   # the whole path on a CPU machine
#
# Exit status: 0 when everything built, passed and ran; 1 otherwise (the table still prints).
set -euo pipefail
cd "$(dirname "$0")/.."

limit=${FNN_FAST_GPU_CHECK_SECONDS:-460}
json=${1:-${FNN_FAST_GPU_JSON:-gpu_check.json}}
python=${PYTHON:-python3}
start=$SECONDS
status=0
elapsed() { echo $((SECONDS - start)); }

# CMake looks for nvcc on PATH; the CUDA toolkit's usual home may not be on it.
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 1

echo "== build: pip install --no-build-isolation --no-deps -e ."
build_log=$(mktemp)
if ! "$python" -m pip install --no-build-isolation --no-deps -v -e . >"$build_log" 2>&1; then
  tail -n 80 "$build_log"
  echo "BUILD FAILED after $(elapsed) s"
  exit 1
fi
# CMake's own account of the CUDA build (and the compiler output when it failed).
grep -E -A40 "fnn_fast: the CUDA kernels did not compile" "$build_log" || true
grep -E "fnn_fast:|CUDA compiler identification" "$build_log" || true
echo "built in $(elapsed) s"

echo "== CUDA in fnn_fast._C"
if ! "$python" - <<'PY'
import sys

import torch

import fnn_fast
from fnn_fast import _C
from fnn_fast.ops import cuda

print("torch", torch.__version__, "| GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("_C.cuda compiled in:", hasattr(_C, "cuda"), getattr(_C, "cuda_unavailable_reason", ""))
print("CUDA kernels usable:", cuda.available(), cuda.UNAVAILABLE_REASON or "")
print("backends:", fnn_fast.backends())
sys.exit(0 if cuda.available() else 1)
PY
then
  echo "CUDA KERNELS UNAVAILABLE: the CUDA cases below will be skipped"
  status=1
fi

echo "== GPU tests"
# Each file gets its own time limit, so a slow one cannot starve the others or the benchmark.
test_limit=${FNN_FAST_GPU_TEST_SECONDS:-75}
per_test=()
if "$python" -c "import pytest_timeout" 2>/dev/null; then
  per_test=(--timeout=60)  # a hung test fails alone
fi
tests_summary=""
for test_file in tests/test_cuda_ops.py tests/test_triton_ops.py tests/test_gpu_*.py; do
  [[ -f $test_file ]] || continue
  echo "-- $test_file"
  test_status=0
  timeout --kill-after=5 "$test_limit" "$python" -m pytest -q -rfEs -p no:cacheprovider \
    ${per_test[@]+"${per_test[@]}"} "$test_file" || test_status=$?
  case $test_status in
    0) result=passed ;;
    124 | 137) result="TIMED OUT after ${test_limit} s" ;;
    *) result="FAILED (exit $test_status)" ;;
  esac
  [[ $test_status == 0 ]] || status=1
  tests_summary+="$test_file: $result; "
  echo "$test_file: $result ($(elapsed) s elapsed)"
done

echo "== scoring on the GPU (pinned copies, CUDA graphs, bf16) against the CPU"
score_status=0
timeout --kill-after=5 "${FNN_FAST_GPU_SCORING_SECONDS:-45}" "$python" \
  benchmarks/gpu_scoring_check.py --rows 200000 --json "${json%.json}-scoring.json" \
  || score_status=$?
[[ $score_status == 0 ]] || status=1
tests_summary+="scoring check: exit $score_status; "

echo "== training on the GPU (fnn-fast train --device cuda) against the CPU"
train_status=0
timeout --kill-after=5 "${FNN_FAST_GPU_TRAIN_SECONDS:-120}" "$python" \
  benchmarks/gpu_train_check.py --timeout 50 --json "${json%.json}-training.json" \
  || train_status=$?
[[ $train_status == 0 ]] || status=1
tests_summary+="training check: exit $train_status; "

echo "== benchmark"
budget=$((limit - $(elapsed) - 20))  # 20 s for start-up, the report and the JSON
if ((budget < 60)); then
  echo "only ${budget} s left for the benchmark: raise FNN_FAST_GPU_CHECK_SECONDS"
  budget=60
fi
note="build and tests took $(elapsed) s; ${tests_summary:-no GPU test files found}"
# The benchmark prints the table last; its exit status is 1 when a case failed.
# shellcheck disable=SC2086  # FNN_FAST_GPU_BENCH_ARGS: several words on purpose
"$python" benchmarks/gpu_bench.py --budget "$budget" --json "$json" --note "$note" \
  ${FNN_FAST_GPU_BENCH_ARGS:-} || status=1
exit $status
