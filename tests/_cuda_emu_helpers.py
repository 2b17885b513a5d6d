"""The CPU emulator of the CUDA kernels (cuda/emu) for the `cuda_emu` tests: build its test driver with
AddressSanitizer + UBSan from the very sources nvcc compiles (cached by content hash under build/cuda_emu/), run a
launcher on seeded inputs, read the outputs back.

The driver is a separate executable run as a subprocess, so ASan needs no preloading into Python and an emulator
abort (a barrier divergence, an out-of-bounds access) fails one test with its one-line report instead of the session.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# CMIR_EMU_CUDA_DIR: a modified copy of cuda/ to emulate instead (cuda/emu/mutation_check.py uses it).
CUDA = Path(os.environ.get("CMIR_EMU_CUDA_DIR", ROOT / "cuda")).resolve()
BUILD = Path(os.environ.get("CMIR_EMU_BUILD_DIR", ROOT / "build" / "cuda_emu")).resolve()
EMU = CUDA / "emu"
ORDERS = ("reverse", "forward", "random")

# -O1 as ASan recommends; -Wno-unknown-pragmas: `#pragma unroll` is nvcc's. UBSan aborts on the first report.
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
CXXFLAGS = ["-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas", *SANITIZE,
            f"-I{EMU / 'include'}", f"-I{CUDA}"]
RUN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


def compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"the cuda_emu tests need a C++17 compiler with ASan/UBSan ({cxx} not found; set CXX)")
    return cxx


def driver_sources() -> list[Path]:
    """Every kernel source (cuda/*.cu, so kernels added later are emulated too) plus the emulator and its driver."""
    return sorted(CUDA.glob("*.cu")) + [EMU / "emu_runtime.cpp", EMU / "driver.cpp", EMU / "emu_selftest.cpp"]


def _digest(paths: Sequence[Path], flags: Sequence[str]) -> str:
    h = hashlib.sha256()
    inputs = sorted({*paths, *CUDA.glob("*.cuh"), *(EMU / "include").glob("*.h")})  # set: each file once
    for p in inputs:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(flags).encode())
    version = subprocess.run([compiler(), "--version"], capture_output=True, text=True, check=False).stdout
    h.update(version.encode())
    return h.hexdigest()[:16]


def build(name: str, sources: Sequence[Path], flags: Sequence[str], link: Sequence[str] = (),
          shared: bool = False, extra_hash: Sequence[Path] = ()) -> Path:
    """Compile `sources` (.cu as C++) into build/cuda_emu/<hash>/<name>, two jobs at a time, once per content
    (sources, the headers in `extra_hash`, the kernels' and emulator's headers, flags, compiler version). A file lock
    keeps concurrent test sessions from building the same thing twice."""
    out_dir = BUILD / _digest([*sources, *extra_hash], [*flags, *link, name, str(shared)])
    target = out_dir / name
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        cxx = compiler()

        def compile_one(src: Path) -> Path:
            obj = out_dir / (src.name + ".o")
            lang = ["-x", "c++"] if src.suffix == ".cu" else []
            cmd = [cxx, *flags, *lang, "-c", str(src), "-o", str(obj)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"emulator build failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
            return obj

        with ThreadPoolExecutor(max_workers=2) as pool:
            objs = list(pool.map(compile_one, sources))
        tmp = out_dir / (name + ".tmp")
        cmd = [cxx, *SANITIZE, *(["-shared"] if shared else []), *map(str, objs), *link, "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"emulator link failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
        tmp.replace(target)  # atomic: a concurrent reader sees the whole binary or none
    return target


def driver() -> Path:
    return build("cmir_cuda_emu_driver", driver_sources(), CXXFLAGS)


@dataclass
class EmuResult:
    returncode: int
    stdout: str
    stderr: str
    outputs: dict[str, np.ndarray]


def run_driver(args: Sequence[str], order: str = "reverse", seed: int = 0, sms: int = 132,
               timeout: float = 300) -> EmuResult:
    """Run the driver with the emulator's thread `order`, shuffle `seed` and SM count (132 as an H200; a small
    count makes the launchers plan fewer, longer blocks: no split-K, whole channel groups per block)."""
    env = {**os.environ, **RUN_ENV, "CMIR_EMU_ORDER": order, "CMIR_EMU_SEED": str(seed), "CMIR_EMU_SMS": str(sms)}
    proc = subprocess.run([str(driver()), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
    return EmuResult(proc.returncode, proc.stdout, proc.stderr, {})


def run_op(op: str, params: Sequence[object], inputs: dict[str, np.ndarray], outputs: Sequence[str],
           order: str = "reverse", seed: int = 0, sms: int = 132) -> EmuResult:
    """Write `inputs` as raw files, run `driver op DIR params...`, read back `outputs` as raw bytes (uint8 arrays;
    the caller views them with the right dtype). A non-zero exit leaves `outputs` empty."""
    with tempfile.TemporaryDirectory(prefix="cmir_emu_") as tmp:
        for name, arr in inputs.items():
            np.ascontiguousarray(arr).tofile(os.path.join(tmp, f"{name}.bin"))
        res = run_driver([op, tmp, *map(str, params)], order=order, seed=seed, sms=sms)
        if res.returncode == 0:
            for name in outputs:
                res.outputs[name] = np.fromfile(os.path.join(tmp, f"{name}.bin"), dtype=np.uint8)
    return res


def failure_text(res: EmuResult) -> str:
    """The lines that say why a run failed (the emulator's report, the sanitizer's summary), for assertion messages."""
    keep = [ln for ln in (res.stdout + res.stderr).splitlines()
            if "cmir_emu:" in ln or "ERROR:" in ln or "runtime error" in ln or "SUMMARY" in ln or "launch error" in ln
            or "driver:" in ln or "FAIL" in ln]
    return "\n".join(keep[:20]) or (res.stdout + res.stderr)[-3000:]


# ---------------------------------------------------------------- the TensorRT plugin harness through the emulator
PLUGINS = CUDA / "plugins"
HARNESS = ROOT / "tests" / "trt_harness"


def tensorrt_include_dirs() -> list[Path]:
    """Folders with TensorRT's NvInfer.h: $TensorRT_INCLUDE_DIR, else those extracted into .deps/ (git-ignored; a
    clean clone has none)."""
    cands = [os.environ.get("TensorRT_INCLUDE_DIR", ""), ROOT / ".deps" / "tensorrt-11" / "include",
             ROOT / ".deps" / "tensorrt-10" / "include"]
    return [Path(c) for c in cands if c and (Path(c) / "NvInfer.h").is_file()]


def harness(trt_include: Path) -> tuple[Path, Path]:
    """(harness executable, plugin library), both built for the emulator against `trt_include`: the plugins'
    sources and the kernels as C++ in a shared library exporting only the plugin entry points; the harness with the
    emulator runtime, exporting it to the library it dlopens (-rdynamic)."""
    import sys

    gen = BUILD / "generated" / hashlib.sha256(
        (ROOT / "export" / "plugin_schema.json").read_bytes() + (PLUGINS / "gen_plugin_schema.py").read_bytes()
    ).hexdigest()[:16]
    header = gen / "cmir_plugin_schema.h"
    if not header.is_file():
        gen.mkdir(parents=True, exist_ok=True)
        tmp = gen / f"cmir_plugin_schema.h.{os.getpid()}.tmp"
        subprocess.run([sys.executable, str(PLUGINS / "gen_plugin_schema.py"),
                        str(ROOT / "export" / "plugin_schema.json"), str(tmp)], check=True, capture_output=True)
        tmp.replace(header)
    common = [*CXXFLAGS, f"-I{gen}", "-isystem", str(trt_include), f"-DCMIR_EMU_TRT={trt_include.parent.name}"]
    plugin_flags = [*common, "-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden",
                    *(f"-I{PLUGINS / d}" for d in ("", "common", "involution", "cmam"))]
    plugin_srcs = [PLUGINS / "plugin_entry.cpp", PLUGINS / "common" / "plugin_common.cpp",
                   PLUGINS / "involution" / "involution_plugin.cpp", PLUGINS / "cmam" / "cmam_plugin.cpp",
                   *(p for p in sorted(CUDA.glob("*.cu")) if p.name != "device.cu"),
                   *sorted(PLUGINS.rglob("*.h")), header]
    lib = build("libcmir_trt_plugins_emu.so", [p for p in plugin_srcs if p.suffix in (".cpp", ".cu")],
                plugin_flags, link=[f"-Wl,--version-script={PLUGINS / 'exports.map'}", "-ldl"], shared=True,
                extra_hash=[p for p in plugin_srcs if p.suffix == ".h"])
    exe = build("cmir_trt_plugin_harness_emu", [HARNESS / "harness.cpp", EMU / "emu_runtime.cpp"], common,
                link=["-rdynamic", "-ldl"], extra_hash=[header])
    return exe, lib


# The launchers' dtype codes (CmirDType) and the tensors' raw bytes, for the op tests.
CODES = {"fp32": 0, "fp16": 1, "bf16": 2}


def tensor_bits(t: Any) -> np.ndarray:
    """Raw bytes the kernels read from a torch tensor: fp32 as is, fp16/bf16 as their 16-bit patterns."""
    import torch

    t = t.contiguous()
    return t.numpy() if t.dtype == torch.float32 else t.view(torch.int16).numpy()


def bits_tensor(raw: np.ndarray, dtype: Any, shape: tuple[int, ...]) -> Any:
    """The torch tensor of `dtype` and `shape` whose raw bytes a kernel wrote (tensor_bits reversed)."""
    import torch

    base = torch.from_numpy(raw.copy().view(np.float32 if dtype == torch.float32 else np.int16))
    return (base if dtype == torch.float32 else base.view(dtype)).reshape(shape)
