#!/usr/bin/env bash
# The GPU session's one command: build the runtime with the CUDA path for the GPU at hand, run
# every C++ test (the CUDA op tests run instead of skipping), then check the runtime against
# PyTorch/transformers/PEFT (check_reference.py). Prints a summary; exits non-zero when a
# step failed.
#
#   bash scripts/gpu/run_checks.sh [--build-only] [--skip-build] [--tests FILTER]
#                                  [--checks a,b,c,d] [--arch 90] [--jobs N]
#
# Environment: LORA_GPU_BUILD (build folder, default native-runtime/build-gpu), PYTHON
# (default python3). When $OUT is set (the device tool's output folder), the logs are copied
# there so they come back with the call.
set -u
set -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${LORA_GPU_BUILD:-$ROOT/native-runtime/build-gpu}"
PYTHON="${PYTHON:-python3}"
ARCH=90
JOBS="$(nproc 2>/dev/null || echo 4)"
BUILD_ONLY=0
SKIP_BUILD=0
TEST_FILTER=""
CHECKS="a,b,c,d"

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) BUILD_ONLY=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --tests) TEST_FILTER="${2:?--tests needs a filter}"; shift ;;
    --checks) CHECKS="${2:?--checks needs a list}"; shift ;;
    --arch) ARCH="${2:?--arch needs a compute capability, e.g. 90 or 80}"; shift ;;
    --jobs) JOBS="${2:?--jobs needs a number}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_checks: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

LOGS="$BUILD/logs"
mkdir -p "$LOGS"
declare -a SUMMARY=()
FAILED=0
START=$(date +%s)

step() {  # step NAME STATUS DETAIL
  SUMMARY+=("$(printf '%-22s %-5s %s' "$1" "$2" "$3")")
  [ "$2" = "FAIL" ] && FAILED=1
  return 0
}

finish() {
  echo
  echo "== run_checks summary ($(( $(date +%s) - START )) s; logs in $LOGS) =="
  for line in "${SUMMARY[@]}"; do echo "$line"; done
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$LOGS"/*.log "$OUT"/ 2>/dev/null || true
  fi
  if [ "$FAILED" -ne 0 ]; then echo "run_checks: FAILED"; exit 1; fi
  echo "run_checks: all passed"
  exit 0
}

echo "run_checks: $(date -u +%FT%TZ) on $(hostname)"
HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/  GPU: /'
  nvidia-smi -L >/dev/null 2>&1 && HAVE_GPU=1
else
  echo "  GPU: nvidia-smi not found (the CUDA tests will skip and check d will be skipped)"
fi
command -v nvcc >/dev/null 2>&1 && echo "  $(nvcc --version | tail -1)"

# 1. Build ---------------------------------------------------------------------------------------
if [ "$SKIP_BUILD" -eq 0 ]; then
  GEN=()
  if command -v ninja >/dev/null 2>&1 && [ ! -f "$BUILD/Makefile" ]; then GEN=(-G Ninja); fi
  echo "run_checks: configuring $BUILD (CUDA architectures $ARCH)"
  if cmake -S "$ROOT/native-runtime" -B "$BUILD" ${GEN[@]+"${GEN[@]}"} -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DLORA_NATIVE_ARCH=OFF >"$LOGS/configure.log" 2>&1 &&
     grep -q "CUDA path: on" "$LOGS/configure.log"; then
    echo "run_checks: building with $JOBS jobs (log: build.log)"
    cmake --build "$BUILD" -j "$JOBS" >"$LOGS/build.log" 2>&1
    brc=$?
    grep -E "error:|warning:" "$LOGS/build.log" | head -40
    if [ "$brc" -eq 0 ]; then
      step build PASS "lora-runtime, runtime-tests for sm_$ARCH"
    else
      tail -30 "$LOGS/build.log"
      step build FAIL "cmake --build failed (see build.log)"
      finish
    fi
    # The benchmark is outside `all` (CMakeLists.txt): its failure is reported, the tests still run.
    if cmake --build "$BUILD" -j "$JOBS" --target cuda-bench >"$LOGS/build-cuda-bench.log" 2>&1; then
      step build-cuda-bench PASS "$BUILD/cuda-bench"
    else
      grep -E "error:|undefined reference" "$LOGS/build-cuda-bench.log" | head -20
      step build-cuda-bench FAIL "see build-cuda-bench.log"
    fi
  else
    cat "$LOGS/configure.log" | tail -20
    if grep -q "CUDA path: off" "$LOGS/configure.log"; then
      step configure FAIL "CMake did not find nvcc: the CUDA path is off (see configure.log)"
    else
      step configure FAIL "cmake configure failed (see configure.log)"
    fi
    finish
  fi
else
  step build SKIP "--skip-build ($BUILD)"
fi
[ "$BUILD_ONLY" -eq 1 ] && finish

# What the runtime itself sees: whether it was built with CUDA and which GPUs it can use.
echo "run_checks: $("$BUILD/lora-runtime" --version 2>&1)"
echo "run_checks: devices $("$BUILD/lora-runtime" devices 2>&1)"

# 2. C++ tests (CPU and CUDA) --------------------------------------------------------------------
echo "run_checks: runtime-tests ${TEST_FILTER:+(filter $TEST_FILTER)}"
"$BUILD/runtime-tests" ${TEST_FILTER:+"$TEST_FILTER"} >"$LOGS/runtime-tests.log" 2>&1
rc=$?
# Failure details are printed before their "not ok" line; skip reasons are left out here
# (with a GPU present nothing should skip: grep "skip - " runtime-tests.log).
grep -E "^not ok|^    " "$LOGS/runtime-tests.log" | grep -v "^    skipped:" | head -80
counts="$(tail -1 "$LOGS/runtime-tests.log")"
skipped="$(grep -c "^skip - " "$LOGS/runtime-tests.log" || true)"
if [ $rc -eq 0 ] && [ "$HAVE_GPU" -eq 1 ] && [ "${skipped:-0}" -gt 0 ]; then
  # With a GPU listed by nvidia-smi, a skipped CUDA test means the runtime could not use it.
  reason="$(grep -m1 "^    skipped:" "$LOGS/runtime-tests.log" | sed 's/^    skipped: //')"
  step runtime-tests FAIL "$counts: tests skipped although nvidia-smi lists a GPU ($reason)"
elif [ $rc -eq 0 ]; then
  step runtime-tests PASS "$counts"
else
  step runtime-tests FAIL "$counts (exit $rc; see runtime-tests.log)"
fi

# 3. Reference checks against PyTorch / transformers / PEFT --------------------------------------
if "$PYTHON" -c "import torch, transformers, peft, safetensors" >/dev/null 2>&1; then
  echo "run_checks: check_reference.py --checks $CHECKS"
  PYTHONUNBUFFERED=1 "$PYTHON" "$ROOT/scripts/gpu/check_reference.py" --runtime "$BUILD/lora-runtime" \
    --checks "$CHECKS" 2>&1 | tee "$LOGS/check_reference.log"
  rc=${PIPESTATUS[0]}
  last="$(tail -1 "$LOGS/check_reference.log")"
  if [ "$rc" -eq 0 ]; then step check_reference PASS "${last#check_reference: }"; else step check_reference FAIL "${last#check_reference: }"; fi
else
  step check_reference SKIP "$PYTHON cannot import torch, transformers, peft and safetensors"
fi

finish
