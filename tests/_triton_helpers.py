"""Shared helpers of the Triton serving tests: a small seeded model exported as a repository, a test-only model that
fails on request, Triton clients, and the server's Prometheus metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

IMAGE = 48           # small: the whole serving file runs in a few minutes on 2 cores
MAX_BATCH = 8
FAULT_MARKER = 777.0  # clinical[0, 0] == this makes the test-only `cmir_faulty` model raise
FAULTY = "cmir_faulty"


def server_or_skip() -> Any:
    """The tritonserver distribution, or skip with the reason (no server on PATH and no nvidia-pytriton wheel)."""
    from cmir_trt.serve import ServerNotFoundError, find_server

    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (make install adds it)")
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (make install adds it)")
    try:
        return find_server()
    except ServerNotFoundError as exc:
        pytest.skip(f"no Triton server here: {exc}")


def make_checkpoint(folder: Path) -> Path:
    """A small seeded model with a fitted clinical schema, trained-on-SYNTHETIC metadata and a threshold."""
    from _engine_helpers import small_model

    from cmir_trt.data import ClinicalSchema
    from cmir_trt.model.checkpoint import save_checkpoint

    schema = ClinicalSchema()
    schema.fit(np.array([[50, 1, 2, 2, 1, 1, 20, -2.5], [65, 0, 3, 3, 0, 1, 35, -2.0]], dtype=np.float64))
    meta = {"clinical_schema": schema.to_dict(), "preprocess": {"image_size": IMAGE, "margin_mm": 8.0},
            "threshold": 0.45, "training_data": {"synthetic": True, "description": "serving test"}}
    return save_checkpoint(folder / "m.pt", small_model("full", image_size=IMAGE, width=0.125, seed=3), meta)


FAULTY_MODEL_PY = f'''"""Test-only: the cmir tensor model whose engine raises on a marked request."""
import numpy as np

from cmir_trt.serve.models import TensorModel


class TritonPythonModel(TensorModel):
    def initialize(self, args):
        super().initialize(args)
        real = self.engine.predict

        def predict(art, pv, clinical):
            if np.any(clinical[:, 0] == {FAULT_MARKER!r}):
                raise RuntimeError("injected fault in the engine")
            return real(art, pv, clinical)

        self.engine.predict = predict
'''


def add_faulty_model(repo: Path) -> None:
    """repo/cmir_faulty: the `cmir` model's config and plan, with a model.py that fails on FAULT_MARKER."""
    import shutil

    src, dst = repo / "cmir", repo / FAULTY
    (dst / "1").mkdir(parents=True)
    cfg = (src / "config.pbtxt").read_text(encoding="utf-8").replace('name: "cmir"', f'name: "{FAULTY}"')
    # Two requests of batch 2 sent together are held (up to 1.5 s) until they make one batch of 4: the test of
    # failure isolation inside a batch is then deterministic.
    cfg = re.sub(r"preferred_batch_size: \[[^]]*\]", "preferred_batch_size: [ 4 ]", cfg)
    cfg = re.sub(r"max_queue_delay_microseconds: \d+", "max_queue_delay_microseconds: 1500000", cfg)
    (dst / "config.pbtxt").write_text(cfg, encoding="utf-8")
    shutil.copyfile(src / "1" / "model.plan", dst / "1" / "model.plan")
    (dst / "1" / "model.py").write_text(FAULTY_MODEL_PY, encoding="utf-8")


def tensor_inputs(batch: int, seed: int, image: int = IMAGE, clinical: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, image, image), dtype=np.float32),
            rng.standard_normal((batch, 3, image, image), dtype=np.float32),
            rng.standard_normal((batch, clinical), dtype=np.float32)]


def infer(client: Any, model: str, arrays: dict[str, np.ndarray], outputs: tuple[str, ...], grpc: bool = False
          ) -> dict[str, np.ndarray]:
    """One request through a tritonclient HTTP or gRPC client; {output name: array}."""
    if grpc:
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    from tritonclient.utils import np_to_triton_dtype

    ins = []
    for name, a in arrays.items():
        i = tc.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
        i.set_data_from_numpy(a)
        ins.append(i)
    res = client.infer(model, ins, outputs=[tc.InferRequestedOutput(n) for n in outputs])
    return {n: res.as_numpy(n) for n in outputs}


def file_bytes(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype=np.uint8)


def text_bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def metric(text: str, name: str, model: str) -> float:
    """The value of Prometheus metric `name` for `model` (summed over versions) from /metrics text."""
    pat = re.compile(rf'^{re.escape(name)}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}}\s+([0-9.eE+-]+)$', re.M)
    vals = [float(v) for v in pat.findall(text)]
    if not vals:
        raise AssertionError(f"metric {name} for model {model} not in the server's metrics")
    return sum(vals)
