#!/usr/bin/env bash
# One unattended run on a GPU machine (H100/H200; python 3.12, torch + CUDA 13, cupy, pybind11, scikit-build-core,
# cmake, ninja, nvcc; no internet, no TensorRT libraries, no SimpleITK, no oneDNN).
#
# Order (most valuable first; the sanitizers slow everything they touch, so they come last):
#   machine -> build -> import -> ops_check (our kernels vs float64, so the figures are of correct kernels)
#   -> bench_involution -> bench_cmam -> bench_e2e (thin CLIs over cmir_trt.gpu.bench.run_gpu_benchmarks, each part
#   in its own process: a sticky CUDA error in one part leaves the others) -> pytest -m "gpu or trt" -> trt_harness -> memcheck -> racecheck (compute-sanitizer on our
#   kernels only, small shapes: benchmarks/gpu/sanitize_ops.py).
# Every step has a time limit, capped by what is left of the whole-run budget (465 s; + the summary, the run stays
# under 8 minutes); a failing step is recorded and skipped past. Every precision (fp32, fp16, bf16) is measured:
# there is no quick mode.
#
#   bash benchmarks/gpu/run.sh --dry-run   # print the steps and their time budgets; runs and writes nothing
#   bash benchmarks/gpu/run.sh             # results in $OUT (the device tool's folder), else benchmarks/gpu/out/
#
# Device tool call (the two carried folders are git-ignored, so they travel only when named in `carry`):
#   run(command="bash benchmarks/gpu/run.sh", carry=[".deps/tensorrt-11", ".deps/involution"], timeout_s=540)
#     .deps/tensorrt-11  TensorRT's public headers: the plugin library and its harness get built and run
#     .deps/involution   d-li14/involution: the official CuPy kernel, the involution benchmark's baseline
# How to fetch both: benchmarks/gpu/README.md. Environment: PYTHON (default python3), OUT, CMIR_GPU_BUDGET_S.
set -uo pipefail
DRY=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY=1 ;;
  -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
  *) echo "run.sh: unknown option '$1' (use --dry-run, --help or no option)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../.." || exit 2
ROOT=$(pwd)
PY="${PYTHON:-python3}"
# CMIR_GPU_BUDGET_S may lower the whole-run budget (never raise it above the 8-minute plan).
BUDGET=465
if [[ "${CMIR_GPU_BUDGET_S:-}" =~ ^[0-9]+$ ]] && (( CMIR_GPU_BUDGET_S < BUDGET )); then BUDGET=$CMIR_GPU_BUDGET_S; fi
OFFICIAL="$ROOT/.deps/involution/cls/mmcls/models/utils/involution_cuda.py"
TRT_HEADERS="$ROOT/.deps/tensorrt-11/include/NvInfer.h"
START=$(date +%s)
PLANNED=0

if (( DRY )); then
  OUT="${OUT:-$ROOT/benchmarks/gpu/out}"
  echo "run.sh --dry-run: plan for one GPU lease (nothing is run or written)"
  echo "whole-run budget ${BUDGET} s for the steps (+ ~5 s summary, < 480 s); each limit is also capped by what is left"
  printf '%-16s %6s  %s\n' step limit command
else
  OUT="${OUT:-$ROOT/benchmarks/gpu/out}"
  mkdir -p "$OUT" || exit 2
  OUT=$(cd "$OUT" && pwd)
  printf 'step\trc\tseconds\n' > "$OUT/steps.tsv"
  export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
fi

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, record rc and duration, never abort.
# Dry run: print the step, its limit and its command.
step() {
  local name=$1 limit=$2 t0 rc left
  shift 2
  if (( DRY )); then
    PLANNED=$(( PLANNED + limit ))
    printf '%-16s %4d s  %s\n' "$name" "$limit" "$*"
    return 0
  fi
  left=$(remaining)
  if (( left < 15 )); then
    printf '%s\tskipped(budget)\t0\n' "$name" >> "$OUT/steps.tsv"; echo "== $name: skipped, time budget spent"
    return 124
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
  tail -n 4 "$OUT/$name.log"
  return $rc
}

# note NAME REASON: a step that cannot run here, recorded with its reason.
note() {
  if (( DRY )); then printf '%-16s %6s  %s\n' "$1" "-" "$2"; else printf '%s\t%s\t0\n' "$1" "$2" >> "$OUT/steps.tsv"; fi
}

# ---------------------------------------------------------------- machine
step machine 10 bash -c "nvidia-smi; nvcc --version; $PY -c \"import torch, sys; print(sys.version); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))\"; $PY -c 'import cupy; print(\"cupy\", cupy.__version__)'; grep -m1 'model name' /proc/cpuinfo; nproc"
# Build only this card's architecture (the normal build makes sm_80 + sm_90; here compile time is device time).
if (( DRY )); then ARCH="<compute_cap from nvidia-smi, e.g. 90>"; else
  CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
  ARCH="${CC:-90}"
fi

# ---------------------------------------------------------------- build
# PEP 668 system Pythons refuse plain `pip install`: PIP_BREAK_SYSTEM_PACKAGES=1 allows it (harmless elsewhere; pip
# falls back to a user install when site-packages is read-only). No index (no internet) and no version check, so
# pip never waits on the network. oneDNN is absent there: CMIR_NATIVE=AUTO builds without the native CPU engine.
# The TensorRT plugins and their harness are built when .deps/tensorrt-11/include/NvInfer.h was carried.
if (( ! DRY )); then
  if [[ -f "$TRT_HEADERS" ]]; then echo "TensorRT headers: $TRT_HEADERS"; else echo "TensorRT headers not carried"; fi
fi
step build 150 env PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$PY" -m pip install --no-build-isolation --no-deps -v -e . -Ccmake.define.CMIR_CUDA=ON \
  "-Ccmake.define.CMIR_CUDA_ARCHITECTURES=${ARCH}-real" -Ccmake.define.CMIR_NATIVE=AUTO \
  -Ccmake.define.CMIR_TENSORRT=AUTO
step import 15 "$PY" -c "import cmir_trt, cmir_trt._cuda as c; print(cmir_trt.build_info()); print('devices', c.device_count())"
BUILT=$?

if (( BUILT == 0 )); then
  # ---------------------------------------------------------------- correctness gate (fast, no sanitizer)
  step ops_check 20 "$PY" benchmarks/gpu/sanitize_ops.py --json "$OUT/ops_check.json"

  # ---------------------------------------------------------------- benchmarks, one process per part
  step bench_involution 65 "$PY" benchmarks/bench_involution.py --out "$OUT" --official-involution "$OFFICIAL"
  step bench_cmam 30 "$PY" benchmarks/bench_cmam.py --out "$OUT"
  # torch.compile rows start only in the first 30 s of the step (one compile takes tens of seconds)
  step bench_e2e 70 "$PY" benchmarks/bench_gpu_e2e.py --out "$OUT" --budget 30

  # ---------------------------------------------------------------- tests (pytest may be missing on a bare machine)
  if (( DRY )) || "$PY" -c "import pytest" 2>/dev/null; then
    # Only the files that hold gpu/trt tests: the others import packages this machine lacks (SimpleITK, onnx, ...).
    mapfile -t GPU_TEST_FILES < <(grep -lE "pytest\.mark\.(gpu|trt)" tests/test_*.py)
    step pytest 35 "$PY" -m pytest -m "gpu or trt" -q -p no:cacheprovider --continue-on-collection-errors \
      -o addopts="" -rfEs --junitxml="$OUT/pytest.xml" "${GPU_TEST_FILES[@]}"
  else
    note pytest "unavailable(no pytest)"
    step smoke 35 "$PY" benchmarks/gpu/smoke.py --json "$OUT/smoke.json"
  fi

  # ---------------------------------------------------------------- TensorRT plugin harness (headers carried)
  if (( DRY )); then
    HARNESS="build/<wheel tag>/cmir_trt_plugin_harness"; PLUGLIB="<site-packages>/cmir_trt/libcmir_trt_plugins.so"
  else
    HARNESS=$(ls build/*/cmir_trt_plugin_harness 2>/dev/null | head -n1)
    PLUGLIB=$("$PY" -c "from cmir_trt._native import plugin_library_path as f; print(f() or '')" 2>/dev/null)
  fi
  if [[ -n "$HARNESS" && -n "$PLUGLIB" ]]; then
    step trt_harness 15 "$HARNESS" "$PLUGLIB" --verbose
  elif [[ -z "$HARNESS" ]]; then
    note trt_harness "unavailable(no harness built: TensorRT headers not carried in .deps/tensorrt-11)"
  else
    note trt_harness "unavailable(libcmir_trt_plugins.so not found in the installed package)"
  fi

  # ---------------------------------------------------------------- compute-sanitizer, last: our kernels only
  if (( DRY )); then SAN=compute-sanitizer; else
    SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1 || true)
  fi
  if [[ -n "$SAN" ]]; then
    step memcheck 30 env CUDA_MODULE_LOADING=LAZY "$SAN" --tool memcheck --error-exitcode 3 --leak-check no \
      --print-limit 20 "$PY" benchmarks/gpu/sanitize_ops.py
    step racecheck 20 env CUDA_MODULE_LOADING=LAZY "$SAN" --tool racecheck --error-exitcode 3 --print-limit 20 \
      "$PY" benchmarks/gpu/sanitize_ops.py
  else
    note memcheck "unavailable(compute-sanitizer not found)"
    note racecheck "unavailable(compute-sanitizer not found)"
  fi
fi

if (( DRY )); then
  printf '%-16s %6s  %s\n' summary "~5 s" "summary.md / summary.json; logs and per-part files in logs.tar.gz"
  echo "total of step limits: ${PLANNED} s (budget ${BUDGET} s)"
  exit 0
fi

# ---------------------------------------------------------------- summary (plain python: works even if the build failed)
"$PY" - "$OUT" "$START" <<'PYEOF'
import json, os, re, sys, time
out, start = sys.argv[1], int(sys.argv[2])

def read(name, limit=None):
    with open(os.path.join(out, name), encoding="utf-8", errors="replace") as f:
        return f.read() if limit is None else f.read(limit)

steps = []
for line in read("steps.tsv").splitlines()[1:]:
    name, rc, secs = line.split("\t")
    steps.append({"step": name, "rc": rc, "seconds": int(secs)})
summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "total_s": int(time.time()) - start,
           "steps": steps, "note": "SYNTHETIC inputs and random weights (timings only)"}
if os.path.exists(os.path.join(out, "machine.log")):
    summary["machine"] = read("machine.log")[-2000:]
if os.path.exists(os.path.join(out, "pytest.xml")):
    m = re.search(r"<testsuite [^>]*>", read("pytest.xml", 4000))
    if m:
        summary["pytest"] = dict(re.findall(r'(\w+)="([^"]*)"', m.group(0)))
for tool in ("memcheck", "racecheck"):
    if os.path.exists(os.path.join(out, f"{tool}.log")):
        m = re.findall(r"ERROR SUMMARY: (\d+) error", read(f"{tool}.log"))
        summary[tool] = {"errors": int(m[-1]) if m else None}
summary["targets"] = {}
for part in ("involution", "cmam", "e2e"):
    if os.path.exists(os.path.join(out, f"{part}.json")):
        res = json.loads(read(f"{part}.json"))
        summary["targets"].update({k: v for k, v in (res.get("targets") or {}).items() if v.get("value") is not None})
        summary.setdefault("failures", {}).update(res.get("failures") or {})
with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
lines = [f"# GPU run {summary['date']} ({summary['total_s']} s)", "", "| step | rc | s |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in steps]
if "pytest" in summary:
    t = summary["pytest"]
    lines += ["", f"pytest: {t.get('tests')} tests, {t.get('failures')} failures, {t.get('errors')} errors, "
              f"{t.get('skipped')} skipped"]
for tool in ("memcheck", "racecheck"):
    if tool in summary:
        lines.append(f"{tool}: {summary[tool]['errors']} errors")
for part in ("involution", "cmam", "e2e"):
    if os.path.exists(os.path.join(out, f"{part}.md")):
        lines += ["", read(f"{part}.md")]
with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines[:40]))
PYEOF
# Few files come back from the device tool: keep the summaries and the per-part JSON, bundle the rest.
( cd "$OUT" && shopt -s nullglob && rest=(*.log *.xml *.tsv) \
  && for f in involution.md cmam.md e2e.md ops_check.json smoke.json; do [[ -f "$f" ]] && rest+=("$f"); done; \
  (( ${#rest[@]} )) && tar czf logs.tar.gz "${rest[@]}" && rm -f "${rest[@]}" )
echo "results in $OUT"
