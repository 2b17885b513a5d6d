#!/usr/bin/env bash
# Build the plan-loader fuzzer with clang (libFuzzer + ASan + UBSan) and run it.
# Usage: tests/fuzz/run_fuzz.sh [seconds=600] [workdir=/tmp/cmir-fuzz]
# Needs clang with the libFuzzer runtime (Debian: apt-get install clang-14 libclang-rt-14-dev) and the venv (to write
# the seed plans). Prints libFuzzer's summary; exit status 0 = no finding.
set -euo pipefail
SECONDS_TO_RUN=${1:-600}
WORK=${2:-/tmp/cmir-fuzz}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CXX=${CXX_FUZZ:-$(command -v clang++ || command -v clang++-14)}
mkdir -p "$WORK/corpus" "$WORK/artifacts"
"$CXX" -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$ROOT/cpp/include" "$ROOT/tests/fuzz/fuzz_plan.cpp" "$ROOT/cpp/src/plan.cpp" -o "$WORK/fuzz_plan"
# Seeds: small valid plans of several variants (written by the Python exporter).
"$ROOT/.venv/bin/python" - "$WORK/corpus" <<'PY'
import sys
import torch
from cmir_trt.export.plan import export_plan
from cmir_trt.model import CMIRConfig, build_model
out = sys.argv[1]
for i, (v, k) in enumerate([("S1", 1), ("M2", 1), ("full", 1), ("full", 3)]):
    torch.manual_seed(i)
    cfg = CMIRConfig(variant=v, image_size=32, width=0.0625, num_classes=k, cmam_dim=16, cmam_heads=2,
                     num_clinical=2 + i, clinical_hidden=4)
    export_plan(build_model(cfg), f"{out}/seed_{v}_{k}.plan")
PY
ls -la "$WORK/corpus"
exec "$WORK/fuzz_plan" "$WORK/corpus" -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix="$WORK/artifacts/" -print_final_stats=1
