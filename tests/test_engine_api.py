"""cmir_trt.Engine: backend selection, the torch backend, input checking, metadata, threads and concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _engine_helpers import assert_parity, export, inputs, native_core, reference, small_model

from cmir_trt import Engine, Prediction


@pytest.fixture(scope="module")
def model():
    return small_model("full", image_size=40, width=0.125, seed=21)


@pytest.fixture(scope="module")
def plan(model, tmp_path_factory):
    native_core()
    return export(model, tmp_path_factory.mktemp("plan") / "m.plan",
                  metadata={"threshold": 0.37, "training_data": {"synthetic": True, "description": "unit test"}})


@pytest.fixture(scope="module")
def engine(plan):
    return Engine(plan, threads=2)


def test_prediction_type_and_metadata(engine, model):
    art, pv, clinical = inputs(model, 2, seed=0)
    out = engine.predict(art, pv, clinical)
    assert isinstance(out, Prediction)
    assert out.probability.shape == (2, 1) and out.logit.shape == (2, 1) and out.heatmap.shape == (2, 1, 40, 40)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in out)
    meta = engine.metadata
    assert meta["threshold"] == pytest.approx(0.37) and meta["synthetic"] is True
    assert meta["model_id"].startswith("cmir-full-")
    assert engine.input_spec["image_size"] == 40 and engine.threads == 2 and engine.backend == "native"


def test_torch_backend_matches(model, tmp_path, engine):
    from cmir_trt.model.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", model, {"threshold": 0.37})
    tb = Engine(ckpt, threads=1)
    assert tb.backend == "torch"
    art, pv, clinical = inputs(model, 3, seed=5)
    ref = reference(model, art, pv, clinical)
    got = tb.predict(art, pv, clinical)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)  # same computation: exactly equal
    assert_parity(engine.predict(art, pv, clinical), ref)
    assert tb.metadata["threshold"] == pytest.approx(0.37)


def test_accepts_torch_tensors_float64_and_single_case(engine, model):
    import torch

    art, pv, clinical = inputs(model, 1, seed=3)
    base = engine.predict(art, pv, clinical)
    t = engine.predict(torch.from_numpy(art), torch.from_numpy(pv), torch.from_numpy(clinical))
    d = engine.predict(art.astype(np.float64), pv.astype(np.float64), clinical.astype(np.float64))
    s = engine.predict(art[0], pv[0], clinical[0])  # [C,S,S] and [F]: a batch of one
    for other in (t, d, s):
        for a, b in zip(base, other, strict=True):
            np.testing.assert_array_equal(a, b)
    f_order = engine.predict(np.asfortranarray(art), pv, clinical)
    np.testing.assert_array_equal(f_order.probability, base.probability)


@pytest.mark.parametrize("which,bad,err,match", [
    ("art", lambda a: a[:, :2], ValueError, "art has shape"),
    ("art", lambda a: a[..., :-1], ValueError, "art has shape"),
    ("pv", lambda a: a[:1], ValueError, "pv has shape"),
    ("clinical", lambda a: a[:, :5], ValueError, "clinical has shape"),
    ("art", lambda a: a.astype(np.int32), TypeError, "floating-point"),
    ("clinical", lambda a: np.where(a > 0, np.nan, a).astype(np.float32), ValueError, "NaN"),
    ("pv", lambda a: np.full_like(a, np.inf), ValueError, "NaN or infinity"),
    ("pv", lambda a: None, ValueError, "pv is missing"),
    ("art", lambda a: "not an array", TypeError, "floating-point"),
])
def test_bad_inputs_raise_clear_errors(engine, model, which, bad, err, match):
    art, pv, clinical = inputs(model, 2, seed=1)
    args = {"art": art, "pv": pv, "clinical": clinical}
    args[which] = bad(args[which])
    with pytest.raises(err, match=match):
        engine.predict(args["art"], args["pv"], args["clinical"])


def test_empty_batch_says_at_least_one_case(engine, model, tmp_path):
    """B = 0 on every backend that runs here (native, torch CPU): one line saying a case is needed."""
    from cmir_trt.model.checkpoint import save_checkpoint

    tb = Engine(save_checkpoint(tmp_path / "m.pt", model, {}), threads=1)
    art, pv, clinical = inputs(model, 2, seed=1)
    for eng in (engine, tb):
        with pytest.raises(ValueError, match="at least one case") as ei:
            eng.predict(art[:0], pv[:0], clinical[:0])
        assert "\n" not in str(ei.value)


def test_empty_batch_is_refused_before_any_backend(engine, model):
    """The CUDA and TensorRT backends cannot run here: Engine itself must refuse B = 0 before reaching them."""

    class Unreachable:
        def predict(self, *a):
            raise AssertionError("the backend was called with an empty batch")

    art, pv, clinical = inputs(model, 1, seed=2)
    eng = Engine.__new__(Engine)
    eng._impl = Unreachable()
    with pytest.raises(ValueError, match="at least one case"):
        eng.predict(art[:0], pv[:0], clinical[:0])
    with pytest.raises(AssertionError, match="empty batch"):  # a real batch does reach the backend
        eng.predict(art, pv, clinical)


def test_native_core_checks_inputs_itself(plan, model):
    """The C++ binding (and so the C API) rejects bad input on its own, without the Python checks."""
    core = native_core()
    eng = core.NativeEngine(str(plan), 1)
    art, pv, clinical = inputs(model, 2, seed=1)
    with pytest.raises(TypeError, match="float32"):
        eng.predict(art.astype(np.float64), pv, clinical)
    with pytest.raises(ValueError, match="expected"):
        eng.predict(art, pv[:1], clinical)
    with pytest.raises(ValueError, match="C-contiguous"):
        eng.predict(np.asfortranarray(art), pv, clinical)
    art[1, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="art contains NaN"):
        eng.predict(art, pv, clinical)


def test_backend_selection_errors(plan, tmp_path):
    with pytest.raises(FileNotFoundError):
        Engine(tmp_path / "missing.plan")
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot tell the backend"):
        Engine(weird)
    with pytest.raises(ValueError, match="runs on the CPU"):
        Engine(plan, device="cuda", backend="native")
    with pytest.raises(ValueError, match="fp32"):
        Engine(plan, precision="fp16")
    with pytest.raises(ValueError, match="device"):
        Engine(plan, device="tpu")
    with pytest.raises(ValueError, match="threads"):
        Engine(plan, threads=0)
    bad = tmp_path / "bad.plan"
    bad.write_bytes(plan.read_bytes()[:-100])
    with pytest.raises(ValueError, match="invalid plan"):
        Engine(bad)


def test_thread_counts_agree(plan, model):
    """1 and 2 threads: each bit-identical run to run; across thread counts within float tolerance."""
    art, pv, clinical = inputs(model, 3, seed=9)
    outs = {}
    for t in (1, 2):
        e = Engine(plan, threads=t)
        a, b = e.predict(art, pv, clinical), e.predict(art, pv, clinical)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        outs[t] = a
    np.testing.assert_allclose(outs[1].probability, outs[2].probability, atol=1e-6)
    np.testing.assert_allclose(outs[1].heatmap, outs[2].heatmap, atol=1e-5)


def test_concurrent_predictions_equal_sequential(engine, model):
    """8 threads x 50 predictions (mixed batch sizes) on one engine give exactly the sequential results."""
    cases = [inputs(model, 1 + (i % 3), seed=100 + i) for i in range(10)]
    expected = [engine.predict(*c) for c in cases]
    barrier = threading.Barrier(8)

    def worker(w: int) -> list[tuple[int, Prediction]]:
        barrier.wait()
        res = []
        for j in range(50):
            k = (w * 7 + j) % len(cases)
            res.append((k, engine.predict(*cases[k])))
        return res

    with ThreadPoolExecutor(8) as pool:
        results = [r for fut in [pool.submit(worker, w) for w in range(8)] for r in fut.result()]
    assert len(results) == 400
    for k, got in results:
        for a, b in zip(got, expected[k], strict=True):
            np.testing.assert_array_equal(a, b)


def test_predict_releases_the_gil(engine, model):
    """Two threads' native calls overlap in time, which cannot happen if predict held the GIL (the second thread could
    not even read the clock before the first returned)."""
    import time

    art, pv, clinical = inputs(model, 32, seed=2)
    raw = engine._impl._engine
    raw.predict(art, pv, clinical)  # warm: the execution contexts exist
    raw.predict(art, pv, clinical)
    overlapped = False
    for _ in range(5):
        spans: list[tuple[float, float]] = []
        barrier = threading.Barrier(2)

        def call(barrier: threading.Barrier = barrier, spans: list = spans) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            raw.predict(art, pv, clinical)
            spans.append((t0, time.perf_counter()))

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (a0, a1), (b0, b1) = spans
        if a0 < b1 and b0 < a1:
            overlapped = True
            break
    assert overlapped


def test_single_phase_without_pv_and_no_clinical(tmp_path):
    native_core()
    model = small_model("S1", image_size=32, width=0.0625, seed=8, num_clinical=0)
    eng = Engine(export(model, tmp_path / "s1.plan"), threads=1)
    art, pv, clinical = inputs(model, 2, seed=4)
    assert eng.input_spec["two_phase"] is False and eng.input_spec["num_clinical"] == 0
    got = eng.predict(art)  # no pv, no clinical
    assert_parity(got, reference(model, art, pv, clinical))
