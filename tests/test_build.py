"""What the build contains, and that importing cmir_trt stays light (no torch, no CUDA call)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import cmir_trt


def test_build_info_fields() -> None:
    info = cmir_trt.build_info()
    assert info["version"] == cmir_trt.__version__
    assert info["cpu"] is True
    assert isinstance(info["cuda_archs"], list)
    assert isinstance(info["tensorrt_plugins"], bool)
    assert info["cxx_compiler"].split()[0] in {"GNU", "Clang", "AppleClang", "IntelLLVM"}


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="no nvcc on this machine: the build has no CUDA part to check")
def test_cuda_archs_built_here() -> None:
    info = cmir_trt.build_info()
    assert info["cuda"] is True
    assert {"sm_80", "sm_90"} <= set(info["cuda_archs"])
    assert info["cuda_compiler"].startswith("NVIDIA")


def test_import_does_not_load_torch_or_cuda() -> None:
    code = ("import sys, cmir_trt; cmir_trt.build_info(); "
            "print(int('torch' in sys.modules), int('cmir_trt._cuda' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]


def test_cuda_module_loads_without_a_driver() -> None:
    # The CUDA extension links cudart statically: on a machine without a driver it loads and reports 0 devices.
    from cmir_trt._native import cuda_device_count

    n = cuda_device_count()
    assert isinstance(n, int) and n >= 0


def test_cli_info_json() -> None:
    exe = shutil.which("cmir-trt", path=os.path.dirname(sys.executable)) or "cmir-trt"
    out = subprocess.run([exe, "info", "--json"], capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["version"] == cmir_trt.__version__
    assert "cuda_devices" in info


def test_cli_unknown_command_fails() -> None:
    proc = subprocess.run([sys.executable, "-m", "cmir_trt", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr


def test_cli_cuda_request_without_gpu_is_one_clear_line(tmp_path) -> None:
    from cmir_trt._native import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("this machine has a GPU: the request would succeed")
    proc = subprocess.run([sys.executable, "-m", "cmir_trt", "bench", "--device", "cuda", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, env={**os.environ, "CMIR_TRT_DEBUG": ""})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "cuda" in proc.stderr.lower() and "error" in proc.stderr
