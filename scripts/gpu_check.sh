#!/usr/bin/env bash
# Everything a GPU machine must run, in one command (DESIGN.md §6):
#   scripts/gpu_check.sh [OUTDIR]
# 1. build + install fastnorm with the CUDA kernels for this GPU's arch (or install a wheel given in
#    FASTNORM_WHEEL), 2. pytest -m cuda, 3. compute-sanitizer memcheck on a short subset, 4. the GPU
#    benchmarks (pytest-benchmark, CUDA-event timing), 5. python -m fastnorm. Logs go to OUTDIR; a summary
#    table is printed last. Must finish well inside 8 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
declare -a rows
record() { rows+=("$(printf '%-28s %-6s %s' "$1" "$2" "$3")"); }
run_step() {  # name, log file, command...
  local name=$1 log=$2; shift 2
  local t0=$(date +%s)
  if timeout "${STEP_TIMEOUT:-300}" "$@" >"$OUT/$log" 2>&1; then st=PASS; else st=FAIL; fi
  record "$name" "$st" "$(( $(date +%s) - t0 ))s  $OUT/$log: $(tail -n 1 "$OUT/$log" | cut -c1-90)"
  [ "$st" = PASS ]
}

nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.')
case "$cap" in
  90) arch=90a-real ;; 100) arch=100f-real ;; 120) arch=120f-real ;; "") arch=90a-real ;; *) arch=${cap}-real ;;
esac
echo "GPU: $(cat "$OUT/gpu.txt")  arch: $arch  date: $(date -u +%F)" | tee "$OUT/summary.txt"

if [ -n "${FASTNORM_WHEEL:-}" ]; then
  run_step "install wheel" install.log $PY -m pip install --no-deps --force-reinstall "$FASTNORM_WHEEL"
else
  run_step "build + install (CUDA $arch)" install.log env FASTNORM_CUDA=ON FASTNORM_CUDA_ARCHS="$arch" \
    $PY -m pip install -v --no-build-isolation --no-deps -Cbuild-dir=build/gpu .
fi
(cd /tmp && $PY -c "import fastnorm, json; print(json.dumps(fastnorm._build.info()))") >"$OUT/build_info.txt" 2>&1
record "build info" "-" "$(cut -c1-110 "$OUT/build_info.txt")"

run_step "pytest -m cuda" pytest_cuda.log $PY -m pytest tests/python -m cuda -q -x --no-header -p no:cacheprovider
run_step "pytest (all, on this machine)" pytest_all.log $PY -m pytest tests/python -q --no-header -p no:cacheprovider
if command -v compute-sanitizer >/dev/null; then
  run_step "compute-sanitizer memcheck" memcheck.log compute-sanitizer --tool memcheck --error-exitcode 1 \
    $PY -m pytest tests/python/test_norm.py -q -x -k "cuda_matches_cpu and (127 or 4095) and float32"
  run_step "compute-sanitizer memcheck (lion)" memcheck_lion.log compute-sanitizer --tool memcheck \
    --error-exitcode 1 $PY -m pytest tests/python/test_lion.py -q -x -k "cuda and (1023 or unaligned) and fp32"
  # One short CUDA subset per family added later (poincare, sara, hyper_attention), each under memcheck.
  run_step "compute-sanitizer memcheck (poincare)" memcheck_poincare.log compute-sanitizer --tool memcheck \
    --error-exitcode 1 $PY -m pytest tests/python/test_poincare.py -q -x -k "cuda_matches_cpu and float32"
  run_step "compute-sanitizer memcheck (sara)" memcheck_sara.log compute-sanitizer --tool memcheck \
    --error-exitcode 1 $PY -m pytest tests/python/test_sara_ops.py -q -x -k "cuda_sddmm_matches_cpu or cuda_adamw"
  run_step "compute-sanitizer memcheck (hyper_attention)" memcheck_hyper_attention.log compute-sanitizer \
    --tool memcheck --error-exitcode 1 $PY -m pytest tests/python/test_hyper_attention.py -q -x -k "cuda"
else
  record "compute-sanitizer memcheck" SKIP "compute-sanitizer not on PATH"
fi
run_step "benchmarks (GPU)" bench.log $PY -m pytest bench/python -q -m cuda --benchmark-json="$OUT/bench.json"
$PY bench/python/summarize.py "$OUT/bench.json" >"$OUT/bench_table.md" 2>&1 || true
run_step "python -m fastnorm" demo.log $PY -m fastnorm

echo
echo "== benchmark ratios (baseline time / fastnorm time) =="
cat "$OUT/bench_table.md" 2>/dev/null | tail -n 60
echo
echo "== gpu_check summary =="
printf '%s\n' "${rows[@]}" | tee -a "$OUT/summary.txt"
