"""benchmarks/gpu/run.sh without a GPU: the --dry-run plan (order, time budget, no quick mode, sanitizers last and on
our kernels only, PEP 668-proof pip, documented carry list), and a real run against stand-in tools (python,
nvidia-smi, compute-sanitizer) that log what they are asked to do: steps in plan order, a failing step recorded and
passed, the budget stopping late steps, the summary written and the logs bundled."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "run.sh"
ORDER = ["machine", "build", "import", "ops_check", "bench_involution", "bench_cmam", "bench_e2e", "pytest",
         "trt_harness", "memcheck", "racecheck"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="run.sh needs bash and coreutils timeout")


def _dry_run(tmp_path: Path, **env: str) -> tuple[str, dict[str, tuple[int, str]]]:
    out = tmp_path / "out-not-created"
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(out), **env})
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()  # a dry run writes nothing
    steps = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\w+)\s+(\d+) s  (.*)$", line)
        if m:
            steps[m.group(1)] = (int(m.group(2)), m.group(3))
    return proc.stdout, steps


def test_dry_run_plan_fits_eight_minutes(tmp_path: Path) -> None:
    text, steps = _dry_run(tmp_path)
    assert list(steps) == ORDER
    total = sum(limit for limit, _ in steps.values())
    budget = int(re.search(r"whole-run budget (\d+) s", text).group(1))
    assert f"total of step limits: {total} s (budget {budget} s)" in text
    assert total <= budget <= 480 - 10  # the summary and the kill grace fit in the 8 minutes
    assert all(limit > 0 for limit, _ in steps.values())


def test_dry_run_plan_content(tmp_path: Path) -> None:
    _, steps = _dry_run(tmp_path)
    build = steps["build"][1]
    assert "PIP_BREAK_SYSTEM_PACKAGES=1" in build and "PIP_NO_INDEX=1" in build
    assert "pip install --no-build-isolation --no-deps" in build and "CMIR_NATIVE=AUTO" in build
    assert "CMIR_TENSORRT=AUTO" in build and "-real" in build
    for name in ("memcheck", "racecheck"):  # sanitizers: our kernels only (no PyTorch kernels), small shapes
        assert steps[name][1].startswith("env CUDA_MODULE_LOADING=LAZY compute-sanitizer --tool " + name)
        assert steps[name][1].endswith("benchmarks/gpu/sanitize_ops.py")
    assert ".deps/involution/cls/mmcls/models/utils/involution_cuda.py" in steps["bench_involution"][1]
    assert "cmir_trt_plugin_harness" in steps["trt_harness"][1]
    for _, cmd in steps.values():
        assert "--quick" not in cmd and "fp32" not in cmd  # every precision, always
    header = SCRIPT.read_text(encoding="utf-8").split("set -uo pipefail")[0]
    assert 'carry=[".deps/tensorrt-11", ".deps/involution"]' in header


def test_budget_can_only_be_lowered(tmp_path: Path) -> None:
    assert "whole-run budget 60 s" in _dry_run(tmp_path, CMIR_GPU_BUDGET_S="60")[0]
    assert "whole-run budget 465 s" in _dry_run(tmp_path, CMIR_GPU_BUDGET_S="9999")[0]
    proc = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option '--fast'" in proc.stderr


STUB_PYTHON = r"""#!/usr/bin/env bash
# Stand-in for python on the GPU machine: logs each call; the summary heredoc runs the real interpreter.
echo "PY $*" >> "$STUB_LOG"
case "$1" in
  -) exec "$REAL_PY" "$@" ;;
  -m)
    if [[ "$2" == pip ]]; then
      echo "PIP_BREAK_SYSTEM_PACKAGES=${PIP_BREAK_SYSTEM_PACKAGES:-unset}" >> "$STUB_LOG"
      exit 0
    fi
    if [[ "$2" == pytest ]]; then
      for a in "$@"; do [[ "$a" == --junitxml=* ]] && xml="${a#--junitxml=}"; done
      suite='<testsuite name="pytest" tests="7" failures="0" errors="0" skipped="2"></testsuite>'
      echo "<testsuites>$suite</testsuites>" > "$xml"
      exit 0
    fi ;;
  benchmarks/gpu/sanitize_ops.py) sleep "${STUB_OPS_SLEEP:-0}"; exit 0 ;;
  benchmarks/bench_cmam.py) echo "cmam broke" >&2; exit 1 ;;
  benchmarks/bench_involution.py)
    target='"involution_pct_copy_bw": {"label": "inv", "value": 80.0, "target": ">= 70.0", "met": true}'
    echo "{\"targets\": {$target}, \"failures\": {}}" > "$3/involution.json"
    echo '# involution table (SYNTHETIC)' > "$3/involution.md"; exit 0 ;;
esac
exit 0
"""

STUB_SMI = """#!/usr/bin/env bash
echo "SMI $*" >> "$STUB_LOG"
[[ "$*" == *compute_cap* ]] && echo "9.0"
exit 0
"""

STUB_SAN = """#!/usr/bin/env bash
echo "SAN $*" >> "$STUB_LOG"
echo "========= ERROR SUMMARY: 0 errors"
exit 0
"""


def _stub_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("python-stub", STUB_PYTHON), ("nvidia-smi", STUB_SMI), ("compute-sanitizer", STUB_SAN)):
        p = bin_dir / name
        p.write_text(text, encoding="utf-8")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python-stub"),
           "REAL_PY": sys.executable, "STUB_LOG": str(log), "OUT": str(tmp_path / "out")}
    return env, log


def _steps(out: Path) -> list[tuple[str, str]]:
    with tarfile.open(out / "logs.tar.gz") as tar:
        f = tar.extractfile("steps.tsv")
        assert f is not None
        rows = f.read().decode("utf-8").splitlines()[1:]
    return [tuple(r.split("\t")[:2]) for r in rows]


def test_run_with_stand_in_tools(tmp_path: Path) -> None:
    env, log = _stub_env(tmp_path)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    steps = _steps(out)
    names = [n for n, _ in steps]
    assert [n for n in names if n in ORDER] == [n for n in ORDER if n in names]  # plan order
    assert names[-2:] == ["memcheck", "racecheck"]  # sanitizers last
    rc = dict(steps)
    assert rc["bench_cmam"] == "1" and rc["bench_e2e"] == "0"  # a failing step is recorded, the next one runs
    assert rc["build"] == "0" and rc["pytest"] == "0"
    calls = log.read_text(encoding="utf-8")
    assert "PIP_BREAK_SYSTEM_PACKAGES=1" in calls
    assert "CMIR_CUDA_ARCHITECTURES=90-real" in calls  # the card's own architecture only
    san = [line for line in calls.splitlines() if line.startswith("SAN ")]
    assert len(san) == 2 and all(line.endswith("benchmarks/gpu/sanitize_ops.py") for line in san)
    assert sorted(p.name for p in out.iterdir()) == ["involution.json", "logs.tar.gz", "summary.json", "summary.md"]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "pytest: 7 tests, 0 failures, 0 errors, 2 skipped" in summary
    assert "memcheck: 0 errors" in summary and "# involution table (SYNTHETIC)" in summary
    import json

    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert data["targets"]["involution_pct_copy_bw"]["met"] is True and "SYNTHETIC" in data["note"]


def test_budget_skips_late_steps(tmp_path: Path) -> None:
    """A step that eats the budget: later steps are recorded as skipped, not run; the summary is still written."""
    env, log = _stub_env(tmp_path)
    env.update(CMIR_GPU_BUDGET_S="19", STUB_OPS_SLEEP="5")  # < 15 s left after ops_check
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rc = dict(_steps(tmp_path / "out"))
    assert rc["build"] == "0" and rc["ops_check"] == "0"
    assert rc["bench_involution"] == "skipped(budget)" and rc["racecheck"] == "skipped(budget)"
    assert "SAN " not in log.read_text(encoding="utf-8")
    assert (tmp_path / "out" / "summary.md").is_file()
