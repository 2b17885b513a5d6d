"""`cuda_emu` marker: the emulator itself behaves as the card would (cuda/emu/emu_selftest.cpp, run through the
driver). A missing barrier (read-after-write and write-after-read) gives wrong results in every thread order; shared
memory starts as NaN; out-of-bounds reads of global or shared memory are AddressSanitizer failures; a barrier
reached by different call sites, a barrier waiting for an exited thread and a warp intrinsic waiting for an exited
lane are reported; launch limits (1024 threads, block z 64, grid y/z 65535) and dynamic shared memory (48 KiB, opt-in
up to 227 KiB per kernel) fail exactly where an H100/H200 fails; warp shuffles/ballot give CUDA's values; the
fp16/bf16 conversions match numpy/torch bit for bit. The pieces for tensor-core and pipelined kernels: cp.async lands
only at the wait that covers it (a wait that is too lax reads stale shared memory), checks alignment and that the
destination is shared memory; WMMA fragments multiply right in every shape/type and refuse misaligned pointers. Grid
barriers (cooperative launches): every block waits for all (a missing one reads another block's slot unwritten), a
parked block keeps its shared memory, a grid beyond one block per SM is refused, and a grid barrier in a plain launch
or one a block never reaches is reported."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from _cuda_emu_helpers import ORDERS, failure_text, run_driver

pytestmark = pytest.mark.cuda_emu


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", ["barrier", "war_barrier", "poison", "shuffles", "cp_async", "grid_barrier"])
def test_correct_kernels_are_right_in_every_order(name: str, order: str) -> None:
    res = run_driver(["selftest", name], order=order, seed=3)
    assert res.returncode == 0, failure_text(res)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", ["missing_barrier", "missing_war_barrier", "cp_async_missing_wait",
                                  "missing_grid_barrier"])
def test_missing_barrier_gives_wrong_results_in_every_order(name: str, order: str) -> None:
    res = run_driver(["selftest", name], order=order, seed=5)
    assert res.returncode == 0, failure_text(res)  # 0: some thread read the wrong value, as it may on a GPU
    wrong = int(res.stdout.split()[0])
    assert wrong > 0, res.stdout


def test_launch_and_shared_memory_limits() -> None:
    res = run_driver(["selftest", "limits"])
    assert res.returncode == 0, failure_text(res)
    assert "48 KiB + 1 smem without opt-in: cudaErrorInvalidValue" in res.stdout
    assert "227 KiB smem: cudaSuccess" in res.stdout


def test_device_attributes_are_h200_like() -> None:
    res = run_driver(["selftest", "device"])
    assert res.returncode == 0, failure_text(res)
    assert res.stdout.split() == ["sms=132", "smem=49152", "smem_optin=232448", "threads=1024", "major=9",
                                  "grid_y=65535"]


@pytest.mark.parametrize("name, message", [
    ("smem_oob", "AddressSanitizer: use-after-poison"),
    ("global_oob", "AddressSanitizer: heap-buffer-overflow"),
    ("divergent_barrier", "cmir_emu: barrier divergence"),
    ("exited_barrier", "which has exited"),
    ("warp_exit", "cmir_emu: deadlock"),
    ("cp_async_misaligned", "cp.async addresses must be aligned"),
    ("cp_async_global_dst", "cp.async destination is not inside the block's shared memory"),
    ("wmma_misaligned", "pointer not 256-bit aligned"),
    ("grid_plain", "grid barrier in a kernel not launched cooperatively"),
    ("grid_exit", "exited without arriving"),
])
def test_misuse_is_reported(name: str, message: str) -> None:
    res = run_driver(["selftest", name])
    assert res.returncode != 0, res.stdout
    assert message in res.stderr, failure_text(res)
    assert "the emulator did not stop the kernel" not in res.stdout


@pytest.mark.parametrize("order", ORDERS)
def test_wmma_fragments(order: str) -> None:
    """WMMA (three warps, each its own tile): fp16 and bf16 m16n16k16, fp16 m32n8k16, bf16 m8n32k16, tf32 m16n16k8;
    A row-major, B column-major, C loaded row-major, D = A B + C then D = A B + D (aliased), stored column-major;
    within 1e-5 (relative to 1 + |ref|) of float64 on the same rounded operands."""
    res = run_driver(["selftest", "wmma"], order=order, seed=9)
    assert res.returncode == 0, failure_text(res)
    assert res.stdout.count("max relative error") == 5


@pytest.mark.parametrize("order", ORDERS)
def test_mma_sync_fragments(order: str) -> None:
    """mma.sync m16n8k16 and ldmatrix.x4 (cuda/mma_sync.cuh), fp16 and bf16, two warps: fragments built per lane from
    the PTX ISA's forward formulas (register element -> row, column), D = A B + A B + A B (the second A loaded by
    ldmatrix from shared memory, the third by ldmatrix.trans from a transposed copy; both sets of registers must
    equal the formula-built ones bit for bit); D within 1e-5 (relative to
    1 + |ref|) of float64 on the same rounded operands. The emulator's mma reads the fragments through the inverse
    mapping, so this checks the two directions against each other."""
    res = run_driver(["selftest", "mma_sync"], order=order, seed=11)
    assert res.returncode == 0, failure_text(res)
    assert res.stdout.count("ldmatrix lanes differing from the formula: 0") == 2
    assert res.stdout.count("ldmatrix.trans lanes differing: 0") == 2


def _convert(mode: str, data: np.ndarray) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="cmir_emu_conv_") as tmp:
        data.tofile(os.path.join(tmp, "in.bin"))
        res = run_driver(["convert", tmp, mode])
        assert res.returncode == 0, failure_text(res)
        return np.fromfile(os.path.join(tmp, "out.bin"), dtype=np.uint16 if mode.startswith("f2") else np.float32)


def _probe_floats() -> np.ndarray:
    """Random floats over the whole fp16/bf16 range and beyond, plus halfway points, subnormals, limits."""
    rng = np.random.default_rng(11)
    rand = (rng.standard_normal(20000) * np.exp2(rng.integers(-30, 20, 20000))).astype(np.float32)
    halves = np.arange(0, 0x7c00, 37, dtype=np.uint16).view(np.float16).astype(np.float32)
    ulp = np.spacing(halves.astype(np.float16)).astype(np.float32)
    special = np.array([0.0, -0.0, 65504.0, 65519.996, 65520.0, 1e9, np.inf, -np.inf, 2.0**-24, 2.0**-25,
                        3 * 2.0**-26, 2.0**-14, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 3.4e38], dtype=np.float32)
    return np.concatenate([rand, halves + ulp / 2, -(halves + ulp / 2), special]).astype(np.float32)


def test_half_conversions_match_numpy() -> None:
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = _convert("h2f", every)
    want = every.view(np.float16).astype(np.float32)
    assert np.array_equal(got, want, equal_nan=True)
    f = _probe_floats()
    bits = _convert("f2h", f)
    with np.errstate(over="ignore"):  # numpy warns on the values that round to inf, as intended here
        want_bits = f.astype(np.float16).view(np.uint16)
    assert np.array_equal(bits, want_bits)
    nan = _convert("f2h", np.array([np.nan], dtype=np.float32))
    assert nan[0] == 0x7FFF  # CUDA's canonical NaN


def test_bfloat16_conversions_match_torch() -> None:
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = _convert("bf2f", every)
    want = torch.from_numpy(every.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert np.array_equal(got, want, equal_nan=True)
    f = _probe_floats()
    bits = _convert("f2bf", f)
    assert np.array_equal(bits, torch.from_numpy(f).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
