"""`cuda_emu` marker: the TensorRT plugin harness (tests/trt_harness) with its enqueue checks run through the CPU
emulator, so the plugins' enqueue path (shape and stride handling, workspace size, the launchers, every type
combination supportsFormatCombination declares) executes without a GPU, under ASan + UBSan.

Needs TensorRT's headers only (never libnvinfer): $TensorRT_INCLUDE_DIR or .deps/tensorrt-{11,10}/include. A clean
clone has none, and these tests skip with that reason; the kernels themselves are covered by test_cuda_emu.py."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from _cuda_emu_helpers import RUN_ENV, harness, tensorrt_include_dirs

pytestmark = pytest.mark.cuda_emu


def _built() -> tuple[str, str]:
    dirs = tensorrt_include_dirs()
    if not dirs:
        pytest.skip("no TensorRT headers (set TensorRT_INCLUDE_DIR or extract TensorRT's include/ into "
                    ".deps/tensorrt-11/include; see cuda/plugins/README.md)")
    exe, lib = harness(dirs[0])  # the newest headers found; one build keeps the cuda_emu set within its time
    return str(exe), str(lib)


def test_plugin_enqueue_checks_pass_through_the_emulator() -> None:
    exe, lib = _built()
    for order in ("reverse", "random"):
        env = {**os.environ, **RUN_ENV, "CMIR_EMU_ORDER": order, "CMIR_EMU_SEED": "7"}
        proc = subprocess.run([exe, lib, "--verbose"], capture_output=True, text=True, timeout=600, env=env,
                              check=False)
        out = proc.stdout
        assert proc.returncode == 0, "\n".join(ln for ln in (out + proc.stderr).splitlines()
                                               if "FAIL" in ln or "ERROR" in ln or "cmir_emu" in ln)[:4000]
        assert "GPU checks on 1 device(s)" in out
        assert re.search(r"^\d+ checks, 0 failed$", out, re.M), out[-2000:]
        # 3 involution cases and 2 CMAM cases, each in every declared type (fp32, fp16, bf16), all enqueued.
        enqueued = re.findall(r"^ok:\s+(\w+) enqueue (fp32|fp16|bf16) .*: enqueue returns 0", out, re.M)
        assert sorted(set(enqueued)) == sorted({(op, t) for op in ("involution", "cmam")
                                               for t in ("fp32", "fp16", "bf16")})
        assert len(enqueued) == 3 * 3 + 2 * 3
        assert "FAIL" not in out


def test_plugins_refuse_what_the_kernels_cannot_run() -> None:
    """CMAM: a head_dim above 256 is refused at createPlugin, more than 2^24 tokens at configurePlugin."""
    exe, lib = _built()
    proc = subprocess.run([exe, lib, "--no-gpu", "--verbose"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **RUN_ENV}, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "ok:   CMIRCrossModalAttention: refuses a head_dim (dim / heads) above the kernel's 256" in proc.stdout
    assert "exceeds the CUDA kernel's limit of 256" in proc.stdout + proc.stderr
    assert "configurePlugin/onShapeChange reject more than 2^24 tokens" in proc.stdout
