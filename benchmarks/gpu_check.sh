#!/usr/bin/env bash
# benchmarks/gpu_check.sh — the one command a GPU machine runs, offline, in under
# 8 minutes: install, doctor, the whole test suite, the NVRTC compile report,
# compute-sanitizer (memcheck, racecheck, synccheck) over the kernel tour, and the
# benchmarks. Without a GPU it runs in its CPU-only form: the same steps minus the
# sanitizers and the GPU benchmarks (said so in the log and summary), with quick
# emu benchmarks.
#
#   OUT=/path bash benchmarks/gpu_check.sh      # results folder: $OUT, else ./gpu-results
#
# Results folder (few files, one level):
#   summary.txt      one line per step (ok / FAIL / TIMEOUT / SKIPPED, seconds), verdict
#   check.log        everything every step printed, in order
#   junit.xml        the pytest run
#   benchmarks.json  every benchmark's JSON report, merged: {"runs": [...]}
#
# Every step is time-boxed with `timeout`; a failing step does not stop the later
# ones, but the script exits non-zero if any step failed or timed out.
#
# Knobs (environment): CHECK_BUDGET_S (total seconds for the steps, default 450),
# CHECK_SKIP_INSTALL=1, CHECK_PYTEST_ARGS (extra pytest arguments), PYTHON (default: python).
#
# Benchmarks: every benchmarks/*.py that defines `def main(argv` runs as
# `python benchmarks/NAME.py --out DIR` (plus --quick without a GPU). To add one,
# write benchmarks/NAME.py with main(argv) using benchmarks/harness.py; nothing here
# needs to change.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
PY=${PYTHON:-python}
RESULTS=${OUT:-./gpu-results}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
LOG="$RESULTS/check.log"
SUMMARY="$RESULTS/summary.txt"
BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/convnet-bench.XXXXXX")
trap 'rm -rf "$BENCH_TMP"' EXIT
: >"$LOG"
: >"$SUMMARY"

BUDGET=${CHECK_BUDGET_S:-450}
START=$SECONDS
FAILED=0

say() {  # to the terminal and the log
  echo "$*"
  echo "$*" >>"$LOG"
}

record() {  # record NAME STATUS DETAIL
  printf '%-22s %-8s %s\n' "$1" "$2" "$3" >>"$SUMMARY"
  say "---- [$1] $2 $3"
}

# run_step NAME LIMIT_S COMMAND...: run with a timeout (never past the budget), log all output.
run_step() {
  local name=$1 limit=$2 rc=0 t0 left
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  if ((left < 15)); then
    record "$name" SKIPPED "(under 15s left of the ${BUDGET}s time budget)"
    FAILED=1
    return 0
  fi
  ((limit > left)) && limit=$left
  say "==== [$name] $(date -u +%H:%M:%S) (timeout ${limit}s): $*"
  t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
  local took="$((SECONDS - t0))s"
  if ((rc == 0)); then
    record "$name" ok "($took)"
  elif ((rc == 124 || rc == 137)); then
    record "$name" TIMEOUT "(killed after ${limit}s)"
    FAILED=1
  else
    record "$name" FAIL "(exit $rc, $took)"
    FAILED=1
  fi
}

skip() {  # skip NAME WHY
  record "$1" SKIPPED "($2)"
}

# ------------------------------------------------------------------ machine
GPU=0
if "$PY" -c 'import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)' \
  >/dev/null 2>&1; then
  GPU=1
fi
{
  echo "convnet gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "repo: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "host: $(uname -a)"
  echo "cpus: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')"
  echo "python: $("$PY" --version 2>&1)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  fi
} >>"$LOG"
if ((GPU)); then
  MODE="GPU"
  say "mode: GPU (CuPy sees a CUDA device)"
else
  MODE="CPU-only"
  say "mode: CPU-only: no GPU usable through CuPy here; compute-sanitizer and the GPU"
  say "      benchmarks are skipped, the emu benchmarks run in --quick form"
fi
echo "mode: $MODE" >>"$SUMMARY"

# ------------------------------------------------------------------ install, doctor
if [[ ${CHECK_SKIP_INSTALL:-0} == 1 ]]; then
  skip install "CHECK_SKIP_INSTALL=1"
else
  run_step install 180 "$PY" -m pip install --no-build-isolation --no-deps -e .
fi
run_step doctor 60 "$PY" -m convnet doctor

# ------------------------------------------------------------------ tests
# shellcheck disable=SC2086  # CHECK_PYTEST_ARGS is split on purpose
run_step pytest 240 "$PY" -m pytest -q -p no:cacheprovider \
  --junitxml="$RESULTS/junit.xml" ${CHECK_PYTEST_ARGS:-}

# ------------------------------------------------------------------ compile report
if "$PY" -c 'from convnet import nvrtc; nvrtc.version()' >/dev/null 2>&1; then
  run_step kernels 90 "$PY" -m convnet kernels
else
  skip kernels "NVRTC through cuda-bindings is not installed: pip install -e .[test]"
fi

# ------------------------------------------------------------------ compute-sanitizer
# The kernel tour (benchmarks/kernel_tour.py) launches every kernel once on small
# shapes, every variant and tile included, and checks each against the cpu reference.
SANITIZER=$(command -v compute-sanitizer || true)
if [[ -z $SANITIZER && -x /usr/local/cuda/bin/compute-sanitizer ]]; then
  SANITIZER=/usr/local/cuda/bin/compute-sanitizer
fi
for tool in memcheck racecheck synccheck; do
  if ((!GPU)); then
    skip "sanitizer-$tool" "no GPU"
  elif [[ -z $SANITIZER ]]; then
    skip "sanitizer-$tool" "compute-sanitizer not found"
  else
    run_step "sanitizer-$tool" 120 "$SANITIZER" --tool "$tool" --error-exitcode 1 \
      "$PY" benchmarks/kernel_tour.py cuda:0
  fi
done

# ------------------------------------------------------------------ benchmarks
BENCH_ARGS=(--out "$BENCH_TMP")
if ((!GPU)); then
  BENCH_ARGS+=(--quick)
  say "note: GPU benchmarks skipped (no GPU); emu/cpu benchmarks run with --quick"
fi
for script in benchmarks/*.py; do
  name=$(basename "$script" .py)
  case $name in harness | __init__ | kernel_tour | sgemm_kernel | alexnet | columns) continue ;; esac
  grep -q '^def main(argv' "$script" || continue
  run_step "bench-$name" 150 "$PY" "$script" "${BENCH_ARGS[@]}"
done
# End to end against PyTorch (where torch is installed: the 'bench' extra): on a GPU the
# paper's AlexNet on cuda:0 only (PyTorch FP32 with TF32 off, default, bf16 autocast);
# without one, the small network on cpu, --quick.
if ((GPU)); then ALEXNET_ARGS=(--devices cuda:0); else ALEXNET_ARGS=(--devices cpu); fi
run_step bench-alexnet 240 "$PY" benchmarks/alexnet.py "${BENCH_ARGS[@]}" "${ALEXNET_ARGS[@]}"

# Two columns on two GPUs (issue 13, item 1): with two or more GPUs, a few training steps
# of the paper's AlexNet in two columns on cuda:0 + cuda:1 against both columns on cuda:0
# (same seed and batch: the same losses and weights, each layout's step time, the crossing
# path, peer or staged); with one GPU, two columns on cuda:0 twice (what one GPU can
# check); without one, the small network on cpu + cpu. Exit 1 when the runs disagree.
# The copy paths themselves (peer and staged forced between streams of cuda:0) run in
# the pytest step (tests/test_columns_devices.py).
if ((GPU)); then
  say "two columns: $("$PY" -c 'import cupy; print(cupy.cuda.runtime.getDeviceCount())' 2>&1) GPU(s)"
fi
run_step bench-columns 150 "$PY" benchmarks/columns.py "${BENCH_ARGS[@]}"

# ------------------------------------------------------------------ merge, summary
"$PY" - "$BENCH_TMP" "$RESULTS/benchmarks.json" "$MODE" >>"$LOG" 2>&1 <<'EOF' || true
import json, sys
from pathlib import Path
src, dst, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
runs = []
for path in sorted(src.glob("*.json")):
    try:
        runs.append(json.loads(path.read_text()))
    except ValueError as exc:
        runs.append({"file": path.name, "error": str(exc)})
dst.write_text(json.dumps({"mode": mode, "runs": runs}, indent=1) + "\n")
print(f"merged {len(runs)} benchmark report(s) into {dst}")
EOF
"$PY" - "$RESULTS/benchmarks.json" >>"$SUMMARY" 2>/dev/null <<'EOF' || true
import json, sys
data = json.load(open(sys.argv[1]))
print("\nbenchmarks (median):")
for run in data["runs"]:
    for r in run.get("results", []):
        rate = (f"{r['gflops']:.2f} GFLOP/s" if r.get("gflops") else
                f"{r['gbps']:.2f} GB/s" if r.get("gbps") else "")
        params = " ".join(f"{k}={v}" for k, v in r.get("params", {}).items()
                          if k in ("n", "tile", "shape", "numel", "p"))
        print(f"  {run['benchmark']:<12} {r['name']:<22} {r['device']:<7} {params:<28} "
              f"{r['median_s'] * 1e3:10.3f} ms  {rate}")
    for k, v in run.get("notes", {}).items():
        print(f"  {run['benchmark']:<12} note {k}: {v}")
    cal = run.get("calibration")
    if cal:
        print(f"  {run['benchmark']:<12} model calibration (measured / predicted), "
              f"median {cal['median_ratio']:.2f}:")
        for e in cal["entries"]:
            print(f"  {run['benchmark']:<12}   {e['label']:<36} measured {e['measured_s'] * 1e6:9.1f} us"
                  f"  predicted {e['predicted_s'] * 1e6:9.1f} us  ratio {e['ratio']:.2f}")
EOF

TOTAL=$((SECONDS - START))
if ((FAILED)); then
  VERDICT="FAILED"
else
  VERDICT="PASSED"
fi
printf '\n%s: %s in %ss (%s)\n' "gpu_check" "$VERDICT" "$TOTAL" "$MODE" >>"$SUMMARY"
{
  echo
  echo "==== summary"
  cat "$SUMMARY"
} >>"$LOG"
echo
cat "$SUMMARY"
echo "results in $RESULTS"
exit "$FAILED"
