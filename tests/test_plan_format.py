"""The plan file: writer <-> C++ loader round trip, metadata, and robustness of the loader against corrupt files.

The mutation test edits a valid plan >= 2,000 ways (truncation, bit flips with and without a fixed-up checksum, header
offset/size edits, graph count/id/shape/attribute edits) and loads each one in this process: every load must either
succeed or raise PlanError (a ValueError) with a message; a crash would kill the run.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from _engine_helpers import export, inputs, native_core, small_model

from cmir_trt.export.plan import HEADER_SIZE, PLAN_VERSION, PlanError, plan_bytes, read_plan_metadata


@pytest.fixture(scope="module")
def core():
    return native_core()


@pytest.fixture(scope="module")
def tiny_plan() -> bytes:
    model = small_model("full", image_size=32, width=0.0625, seed=1, cmam_dim=16, cmam_heads=2, num_clinical=3,
                        clinical_hidden=4)
    return plan_bytes(model, metadata={"threshold": 0.4, "training_data": {"synthetic": True}})


def fix_crc(b: bytearray) -> bytearray:
    struct.pack_into("<Q", b, 16, len(b))
    b[-8:-4] = struct.pack("<I", zlib.crc32(bytes(b[:-8])))
    b[-4:] = b"PEND"
    return b


def sections(data: bytes) -> dict[str, tuple[int, int]]:
    _, _, _, mo, ms, go, gs, wo, ws = struct.unpack_from("<2I7Q", data, 8)
    return {"meta": (mo, ms), "graph": (go, gs), "weights": (wo, ws)}


def test_round_trip_metadata(core, tmp_path, tiny_plan):
    path = tmp_path / "m.plan"
    path.write_bytes(tiny_plan)
    meta = read_plan_metadata(path)
    assert meta["format"] == "cmir-plan" and meta["format_version"] == PLAN_VERSION
    assert meta["synthetic"] is True and meta["threshold"] == pytest.approx(0.4)
    assert meta["config"]["variant"] == "full" and meta["input_spec"]["clinical"] == [3]
    eng = core.NativeEngine(str(path), 1)
    assert json.loads(eng.metadata_json) == meta
    assert eng.spec == {"image_size": 32, "in_channels": 3, "num_clinical": 3, "num_classes": 1, "two_phase": True}
    assert core.validate_plan_bytes(tiny_plan) == eng.num_ops


def test_weights_aligned_and_bn_folded(tiny_plan):
    secs = sections(tiny_plan)
    assert secs["weights"][0] % 64 == 0
    from cmir_trt.export.plan import OP_AFFINE, build_graph

    model = small_model("M1", image_size=32, width=0.0625, seed=2)
    gb, _ = build_graph(model)
    # M1 (plain ResNet): every BatchNorm is folded, so no separate affine op is left
    assert all(op[0] != OP_AFFINE for op in gb.ops)


def test_checkpoint_path_and_hash(core, tmp_path):
    from cmir_trt.model.checkpoint import file_sha256, save_checkpoint

    model = small_model("M2", image_size=32, width=0.0625, seed=3)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, {"threshold": 0.5, "seed": 3})
    plan = export(str(ckpt), tmp_path / "m.plan")
    meta = read_plan_metadata(plan)
    assert meta["checkpoint_sha256"] == file_sha256(ckpt)
    assert meta["model_id"].startswith("cmir-M2-" + file_sha256(ckpt)[:12])
    assert meta["checkpoint_metadata"]["seed"] == 3


@pytest.mark.parametrize("edit,message", [
    (lambda b: b[:100], "truncated"),
    (lambda b: b"XMIRPLAN" + b[8:], "magic"),
    (lambda b: b[:8] + struct.pack("<I", 99) + b[12:], "version 99"),
    (lambda b: b[:200] + bytes([b[200] ^ 1]) + b[201:], "checksum"),
    (lambda b: b + b"\0", "does not match"),
    (lambda b: b"", "too short"),
])
def test_clear_errors(core, tmp_path, tiny_plan, edit, message):
    bad = edit(tiny_plan)
    with pytest.raises(ValueError, match=message):
        core.validate_plan_bytes(bad)
    p = tmp_path / "bad.plan"
    p.write_bytes(bad)
    with pytest.raises(ValueError, match=message):
        core.NativeEngine(str(p), 1)


def test_inconsistent_graph_is_rejected(core, tiny_plan):
    go, gs = sections(tiny_plan)["graph"]
    b = bytearray(tiny_plan)
    # first tensor (the art input, 32x32x3) declared as 31 pixels high: the input spec no longer matches
    n_hdr = 4 + 5 * 4 + 6 * 4 + 2 * 4
    struct.pack_into("<I", b, go + n_hdr, 31)
    with pytest.raises(ValueError, match="input tensor shape"):
        core.validate_plan_bytes(bytes(fix_crc(b)))
    with pytest.raises(FileNotFoundError):
        read_plan_metadata("/nonexistent/x.plan")
    with pytest.raises(PlanError, match="checksum"):
        p = bytearray(tiny_plan)
        p[HEADER_SIZE + 3] ^= 0x20
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".plan") as f:
            f.write(p)
            f.flush()
            read_plan_metadata(f.name)


INTERESTING = [0, 1, 2, 3, 7, 15, 16, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE]


def mutants(data: bytes, rng: np.random.Generator, n: int):
    secs = sections(data)
    go, gs = secs["graph"]
    size = len(data)
    for i in range(n):
        kind = i % 8
        b = bytearray(data)
        if kind == 0:  # truncation anywhere
            yield "truncate", bytes(b[: int(rng.integers(0, size))])
            continue
        if kind == 1:  # bit flip anywhere, checksum left stale
            pos = int(rng.integers(0, size))
            b[pos] ^= 1 << int(rng.integers(0, 8))
            yield "flip", bytes(b)
            continue
        if kind == 2:  # bit flip in header/metadata/graph with the checksum fixed up
            pos = int(rng.integers(0, go + gs))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 3:  # header u64 field (offsets, sizes) set to an interesting or nearby value
            field = 16 + 8 * int(rng.integers(0, 7))
            old = struct.unpack_from("<Q", b, field)[0]
            choice = [0, 1, old + 1, old - 1 if old else 0, old + 64, size, size * 2, 2**63, 2**64 - 1,
                      int(rng.integers(0, size))]
            struct.pack_into("<Q", b, field, choice[int(rng.integers(0, len(choice)))] % 2**64)
            yield "header", bytes(b)  # not fixed: file_size edits must be caught as such
            continue
        elif kind in (4, 5):  # a graph u32 (count, tensor id, shape, attribute) set to an interesting value
            word = go + 4 * int(rng.integers(1, gs // 4))
            old = struct.unpack_from("<I", b, word)[0]
            vals = INTERESTING + [old + 1, (old - 1) % 2**32, old * 2 % 2**32]
            struct.pack_into("<I", b, word, vals[int(rng.integers(0, len(vals)))])
        elif kind == 6:  # truncate/extend the graph section: shift everything after it
            cut = go + int(rng.integers(0, gs))
            b = b[:cut] + b[cut + int(rng.integers(1, 64)):]
        else:  # random bytes over a random span of header + graph
            pos = int(rng.integers(8, go + gs - 8))
            b[pos: pos + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        yield f"fixed{kind}", bytes(fix_crc(b)) if len(b) >= 88 else bytes(b)


def test_mutated_plans_fail_cleanly(core, tmp_path, tiny_plan):
    rng = np.random.default_rng(2026)
    outcomes: dict[str, int] = {"ok": 0, "error": 0}
    survivors = []
    n = 2400
    for kind, blob in mutants(tiny_plan, rng, n):
        try:
            core.validate_plan_bytes(blob)
            outcomes["ok"] += 1
            if kind.startswith("fixed") and blob != tiny_plan and len(survivors) < 12:
                survivors.append(blob)
        except ValueError as exc:  # PlanError
            assert str(exc).startswith("invalid plan:"), f"{kind}: unexpected message {exc}"
            outcomes["error"] += 1
    assert sum(outcomes.values()) == n
    assert outcomes["error"] > n * 0.8, outcomes
    # A mutant the loader accepts is a consistent graph: it must also run (or fail with a clear error), not crash.
    model_inputs = inputs(small_model("full", image_size=32, width=0.0625), 2, seed=0)
    art, pv, _ = model_inputs
    clinical = np.zeros((2, 3), np.float32)
    for i, blob in enumerate(survivors):
        p = tmp_path / f"s{i}.plan"
        p.write_bytes(blob)
        eng = core.NativeEngine(str(p), 1)
        try:
            prob, logit, heat, _ = eng.predict(art, pv, clinical)
            assert prob.shape[0] == 2 and heat.shape[0] == 2
        except (ValueError, RuntimeError) as exc:
            assert str(exc)
