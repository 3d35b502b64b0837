#!/usr/bin/env bash
# The one-call GPU check: run from the repository root on the GPU machine (prepared here with
# scripts/gpu_prepare.sh; bench/README.md says how). In at most 8 minutes (each step has a time
# limit: 120 + 20 + 70 + 45 + 30 + 85 + 35 + 75 = 480 s; a step that runs over is killed and FAILED) it
#   1. builds the extension with CUDA for sm_90 only (MAX_JOBS=16) and prints ops.backend();
#   2. runs every CUDA test variant (pytest -m cuda: the ops against the reference in
#      float32/float16/bfloat16, opcheck, the compiled PGD loop, bad inputs with mixed devices, the
#      CUDA loader, the DLR loss and the FAB projection);
#   3. runs compute-sanitizer memcheck, and racecheck on the reduction kernels, over a small subset;
#   4. runs the CUDA op benchmarks (each op against eager, torch.compile and a copy) and the CUDA
#      training-throughput benchmarks (fused against eager, fp32 against bf16);
#   5. runs bench/gpu_e2e.py: PreAct ResNet-18 short-trained on the CIFAR-10 subset, class-wise
#      PGD-10 against torchattacks, AutoAttack against the reference;
#   6. writes at most 8 files to $OUT (summary.json, check.log, tests.xml, bench_ops.json,
#      bench_train.json, e2e.json, sanitizer.log) and exits non-zero if any step failed.
# Without CUDA (the dry run of tests/cli/test_gpu_check.py) the CUDA steps say "skipped" and the rest
# runs on the CPU on a small model. CWR_FAST_GPU_CHECK_SKIP_BUILD=1 keeps the installed build.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-.gpu/out}
mkdir -p "$OUT"
LOG="$OUT/check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 CWR_FAST_SHARED_DATA=${CWR_FAST_SHARED_DATA:-$PWD/.gpu/data}
[[ -d .gpu/site ]] && export PYTHONPATH="$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"
declare -A STATUS
ORDER=()

step() {  # step NAME SECONDS COMMAND...: runs it (killed after SECONDS), logs it, records ok/FAILED
  local name=$1 limit=$2; shift 2
  ORDER+=("$name")
  echo "=== $name (at most $limit s): $*" >> "$LOG"
  local started=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1 || rc=$?
  if [[ $rc == 0 ]]; then STATUS[$name]="ok"
  elif [[ $rc == 124 || $rc == 137 ]]; then STATUS[$name]="FAILED: timed out after $limit s"
  else STATUS[$name]="FAILED"; fi
  echo "=== $name: ${STATUS[$name]} ($((SECONDS - started)) s)" | tee -a "$LOG"
}

skip() {
  ORDER+=("$1"); STATUS[$1]="skipped: $2"
  echo "=== $1: skipped ($2)" | tee -a "$LOG"
}

HAS_CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
} >> "$LOG" 2>&1

if [[ ${CWR_FAST_GPU_CHECK_SKIP_BUILD:-0} == 1 ]]; then
  skip build "CWR_FAST_GPU_CHECK_SKIP_BUILD=1"
elif [[ $HAS_CUDA == 1 ]]; then
  step build 120 env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 CWR_FAST_CUDA=1 "$PYTHON" -m pip install \
    --no-build-isolation --no-deps --disable-pip-version-check -q -e .
else
  skip build "no CUDA device"
fi
step backend 20 "$PYTHON" -c "import cwr_fast; print('ops.backend():', cwr_fast.ops.backend())"
grep "ops.backend()" "$LOG" | tail -1

PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider)
BENCH=(--benchmark-only --benchmark-max-time=0.2 --benchmark-min-rounds=5)
# The test selections, checked without CUDA too (collection must find tests for each).
CUDA_TESTS=(tests -m cuda)
MEMCHECK=(tests/ops/test_ops_reference.py -m cuda -k "f32 and (5x3x8x8 or 33x17 or 7x10 or 9x7) and not layouts")
RACECHECK=(tests/ops/test_ops_reference.py -m cuda -k "f32 and (l2 and 5x3x8x8 or 33x17 or projection and 9x7)")
if [[ $HAS_CUDA == 1 ]]; then
  step cuda_tests 70 "${PYTEST[@]}" "${CUDA_TESTS[@]}" --junitxml="$OUT/tests.xml"
  step memcheck 45 compute-sanitizer --tool memcheck --error-exitcode 1 "${PYTEST[@]}" "${MEMCHECK[@]}"
  step racecheck 30 compute-sanitizer --tool racecheck --error-exitcode 1 "${PYTEST[@]}" "${RACECHECK[@]}"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|========= " "$LOG" > "$OUT/sanitizer.log" || true
  step bench_ops 85 "${PYTEST[@]}" bench/bench_ops.py "${BENCH[@]}" -k cuda --benchmark-json="$OUT/bench_ops.json"
  # bench_train runs on the GPU whenever there is one (its ids carry no device)
  step bench_train 35 "${PYTEST[@]}" bench/bench_train.py "${BENCH[@]}" --benchmark-json="$OUT/bench_train.json"
  step e2e 75 "$PYTHON" bench/gpu_e2e.py --data "$CWR_FAST_SHARED_DATA" --out "$OUT/e2e.json"
else
  for name in cuda_tests memcheck racecheck bench_ops bench_train; do skip "$name" "no CUDA device"; done
  step select_cuda_tests 120 "${PYTEST[@]}" --collect-only "${CUDA_TESTS[@]}"
  step select_memcheck 120 "${PYTEST[@]}" --collect-only "${MEMCHECK[@]}"
  step select_racecheck 120 "${PYTEST[@]}" --collect-only "${RACECHECK[@]}"
  step select_bench 120 "${PYTEST[@]}" --collect-only bench/bench_ops.py bench/bench_train.py
  step e2e 600 "$PYTHON" bench/gpu_e2e.py --data "$CWR_FAST_SHARED_DATA" --out "$OUT/e2e.json" --dry-run
fi

failed=0
{
  echo "{"
  echo "  \"cuda\": $HAS_CUDA,"
  for i in "${!ORDER[@]}"; do
    name=${ORDER[$i]}; sep=","; [[ $i == $((${#ORDER[@]} - 1)) ]] && sep=""
    echo "  \"$name\": \"${STATUS[$name]}\"$sep"
    [[ ${STATUS[$name]} == FAILED* ]] && failed=1
  done
  echo "}"
} > "$OUT/summary.json"
rm -rf "$OUT/e2e-run"
cat "$OUT/summary.json"
exit $failed
