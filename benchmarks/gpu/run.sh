#!/usr/bin/env bash
# One unattended run on a GPU machine (H100/H200; python 3.12, torch+CUDA, cupy, nvcc; no internet, TensorRT or
# SimpleITK): build, the `gpu`/`trt` tests, compute-sanitizer memcheck on a small case, the benchmarks.
# Results (JSON + Markdown + logs) go to $OUT, else benchmarks/gpu/out/. Every step has its own time limit and a
# failing step is recorded and skipped past, so one broken part never loses the others. Whole run: <= ~8 minutes.
#
#   bash benchmarks/gpu/run.sh            # PYTHON=python3.12 and CMIR_GPU_BUDGET_S=480 may be set
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT="${OUT:-$ROOT/benchmarks/gpu/out}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY="${PYTHON:-python3}"
BUDGET="${CMIR_GPU_BUDGET_S:-470}"
START=$(date +%s)
STEPS="$OUT/steps.tsv"
printf 'step\trc\tseconds\n' > "$STEPS"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, record rc and duration, never abort.
step() {
  local name=$1 limit=$2 t0 rc
  shift 2
  local left; left=$(remaining)
  if (( left < 15 )); then
    printf '%s\tskipped(budget)\t0\n' "$name" >> "$STEPS"; echo "== $name: skipped, time budget spent"; return 124
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STEPS"
  tail -n 4 "$OUT/$name.log"
  return $rc
}

# ---------------------------------------------------------------- machine
{ nvidia-smi || true; nvcc --version || true; "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" || true; } > "$OUT/machine.txt" 2>&1
# Build only this card's architecture (the normal build makes sm_80 + sm_90; here compile time is device time).
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
ARCH="${CC:-90}"

# ---------------------------------------------------------------- build
step build 240 "$PY" -m pip install --no-build-isolation --no-deps -v -e . \
  -Ccmake.define.CMIR_CUDA=ON "-Ccmake.define.CMIR_CUDA_ARCHITECTURES=${ARCH}-real"
step import 60 "$PY" -c "import cmir_trt, cmir_trt._cuda as c; print(cmir_trt.build_info()); print('devices', c.device_count())"
BUILT=$?

# Order = importance under the time budget: tests, memcheck, benchmarks, racecheck.
if (( BUILT == 0 )); then
  # ---------------------------------------------------------------- tests (pytest may be missing on a bare machine)
  if "$PY" -c "import pytest" 2>/dev/null; then
    # Only the files that hold gpu/trt tests: the others import packages this machine lacks (SimpleITK, onnx, ...).
    mapfile -t GPU_TEST_FILES < <(grep -lE "pytest\.mark\.(gpu|trt)" tests/test_*.py)
    step pytest 150 "$PY" -m pytest -m "gpu or trt" -q -p no:cacheprovider --continue-on-collection-errors \
      -o addopts="" -rfEs --junitxml="$OUT/pytest.xml" "${GPU_TEST_FILES[@]}"
  else
    printf 'pytest\tunavailable\t0\n' >> "$STEPS"
    step smoke 90 "$PY" benchmarks/gpu/smoke.py --json "$OUT/smoke.json"
  fi

  # ---------------------------------------------------------------- TensorRT plugin harness (headers carried in .deps)
  HARNESS=$(ls build/*/cmir_trt_plugin_harness 2>/dev/null | head -n1)
  PLUGLIB=$("$PY" -c "from cmir_trt._native import plugin_library_path as f; print(f() or '')" 2>/dev/null)
  if [[ -n "$HARNESS" && -n "$PLUGLIB" ]]; then
    step trt_harness 120 "$HARNESS" "$PLUGLIB" --verbose
  else
    printf 'trt_harness\tunavailable(no headers in .deps)\t0\n' >> "$STEPS"
  fi

  # ---------------------------------------------------------------- compute-sanitizer (small case: the ops only)
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1 || true)
  if [[ -n "$SAN" ]]; then
    step memcheck 90 "$SAN" --tool memcheck --error-exitcode 3 --leak-check no --print-limit 20 \
      "$PY" benchmarks/gpu/smoke.py --small --json "$OUT/smoke_small.json"
  else
    echo "compute-sanitizer not found" > "$OUT/memcheck.log"
    printf 'memcheck\tunavailable\t0\n' >> "$STEPS"
  fi

  # ---------------------------------------------------------------- benchmarks (what is left, minus racecheck's share)
  LEFT=$(remaining)
  QUICK=False
  (( LEFT < 220 )) && QUICK=True
  BENCH_LIMIT=$(( LEFT - 50 ))
  (( BENCH_LIMIT < 30 )) && BENCH_LIMIT=30
  step bench "$BENCH_LIMIT" "$PY" -c "
from cmir_trt.gpu.bench import run_gpu_benchmarks
r = run_gpu_benchmarks('$OUT', quick=$QUICK, budget_s=max(20, $BENCH_LIMIT - 90))
print('failures:', list(r['failures']))
"

  # ---------------------------------------------------------------- racecheck (shared-memory hazards), if time is left
  if [[ -n "$SAN" ]] && (( $(remaining) >= 40 )); then
    step racecheck 60 "$SAN" --tool racecheck --error-exitcode 3 --print-limit 20 \
      "$PY" benchmarks/gpu/smoke.py --small
  fi
fi

# ---------------------------------------------------------------- summary (plain python: works even if the build failed)
"$PY" - "$OUT" "$START" <<'PYEOF'
import json, os, re, sys, time
out, start = sys.argv[1], int(sys.argv[2])
steps = []
with open(os.path.join(out, "steps.tsv")) as f:
    next(f)
    for line in f:
        name, rc, secs = line.rstrip("\n").split("\t")
        steps.append({"step": name, "rc": rc, "seconds": int(secs)})
summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "total_s": int(time.time()) - start,
           "steps": steps, "note": "synthetic inputs and random weights"}
try:
    summary["machine"] = open(os.path.join(out, "machine.txt")).read()[-2000:]
except OSError:
    pass
xml = os.path.join(out, "pytest.xml")
if os.path.exists(xml):
    head = open(xml).read(4000)
    m = re.search(r'<testsuite [^>]*>', head)
    if m:
        summary["pytest"] = dict(re.findall(r'(\w+)="([^"]*)"', m.group(0)))
for tool in ("memcheck", "racecheck"):
    p = os.path.join(out, f"{tool}.log")
    if os.path.exists(p):
        m = re.findall(r"ERROR SUMMARY: (\d+) error", open(p, errors="replace").read())
        summary[tool] = {"errors": int(m[-1]) if m else None}
bench = os.path.join(out, "gpu_bench.json")
if os.path.exists(bench):
    summary["targets"] = json.load(open(bench)).get("targets")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
lines = [f"# GPU run {summary['date']} ({summary['total_s']} s)", "", "| step | rc | s |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in steps]
if "pytest" in summary:
    t = summary["pytest"]
    lines += ["", f"pytest: {t.get('tests')} tests, {t.get('failures')} failures, {t.get('errors')} errors, "
              f"{t.get('skipped')} skipped"]
for tool in ("memcheck", "racecheck"):
    if tool in summary:
        lines.append(f"{tool}: {summary[tool]['errors']} errors")
md = os.path.join(out, "gpu_bench.md")
if os.path.exists(md):
    lines += ["", open(md).read()]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines[:40]))
PYEOF
# The device tool brings back at most 8 files: keep the summaries, bundle the logs.
( cd "$OUT" && shopt -s nullglob && logs=(*.log *.xml *.tsv machine.txt) && (( ${#logs[@]} )) \
  && tar czf logs.tar.gz "${logs[@]}" && rm -f "${logs[@]}" )
echo "results in $OUT"
