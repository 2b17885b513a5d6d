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
# Seeds: small valid plans of several variants (written by the Python exporter), whole and cut before the weights.
"$ROOT/.venv/bin/python" "$ROOT/tests/fuzz/make_seeds.py" "$WORK/corpus"
ls -la "$WORK/corpus"
exec "$WORK/fuzz_plan" "$WORK/corpus" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix="$WORK/artifacts/" -print_final_stats=1
