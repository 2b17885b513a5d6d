"""Shared helpers of the export/validate tests: small seeded models with non-trivial BatchNorm, checkpoints, inputs,
and ONNX Runtime runs. The reference is always the checkpoint's PyTorch model (float32, eager)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from cmir_trt.data import CLINICAL_FEATURES
from cmir_trt.export import export_model, verify_artifact
from cmir_trt.model import CMIR, CMIRConfig, build_model, save_checkpoint

# Image 40: the stage inputs are 10, 5 and 3 pixels wide, so stride-2 involutions pool odd sizes (partial windows).
IMAGE = 40
WIDTH = 0.25
REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "export" / "plugin_schema.json"
METADATA = {
    "threshold": 0.45,
    "training_data": {"synthetic": True, "cohort": "unit-test"},
    # no normalisation statistics: validation then fits them on the cohort it is given (and says so)
    "clinical_schema": {"features": list(CLINICAL_FEATURES), "mean": None, "std": None},
    "preprocess": {"image_size": IMAGE},
}


def make_model(variant: str = "full", seed: int = 0, image: int = IMAGE, num_classes: int = 1) -> CMIR:
    """Random weights and randomised BN statistics/affine (so BN is not the identity), eval mode."""
    torch.manual_seed(seed)
    model = build_model(CMIRConfig(variant=variant, width=WIDTH, image_size=image, num_classes=num_classes))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.rand(m.bias.shape, generator=g) - 0.1)
    return model.eval()


def make_checkpoint(tmp: Path, variant: str = "full", seed: int = 0, metadata: dict[str, Any] | None = None,
                    **kw: Any) -> tuple[Path, CMIR]:
    model = make_model(variant, seed, **kw)
    path = save_checkpoint(tmp / f"{variant}-{seed}.pt", model, METADATA if metadata is None else metadata)
    return path, model


def inputs(batch: int, seed: int = 7, image: int = IMAGE, clinical: int = 8) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 3, image, image), dtype=np.float32),
            rng.standard_normal((batch, 3, image, image), dtype=np.float32),
            rng.standard_normal((batch, clinical), dtype=np.float32))


def reference(model: CMIR, x: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with torch.no_grad():
        o = model(*(torch.from_numpy(a) for a in x))
    return o.logit.numpy(), o.probability.numpy(), o.heatmap.numpy()


def run_ort(model: Any, x: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    import onnxruntime as ort

    src = model if isinstance(model, (str, Path)) else model.SerializeToString()
    sess = ort.InferenceSession(str(src) if isinstance(src, Path) else src, providers=["CPUExecutionProvider"])
    return sess.run(["logit", "probability", "heatmap"], {"art": x[0], "pv": x[1], "clinical": x[2]})


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """Norm-wise relative error against b (the reference)."""
    return max_abs(a, b) / max(float(np.max(np.abs(b))), 1e-30)


def schema_json() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def check_standard_onnx(tmp_path: Path, variant: str) -> None:
    """Standard-op ONNX of `variant`: structure, and ONNX Runtime vs PyTorch at batch 1 and a dynamic batch of 3."""
    ckpt, model = make_checkpoint(tmp_path, variant, seed=len(variant))
    out = export_model(ckpt, "onnx", tmp_path / "m.onnx")
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["art", "pv", "clinical"]
    assert [o.name for o in proto.graph.output] == ["logit", "probability", "heatmap"]
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "standard form must have no custom op"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        x = inputs(batch, seed=batch)
        ref = reference(model, x)
        got = run_ort(out, x)
        assert got[0].shape == ref[0].shape and got[2].shape == ref[2].shape == (batch, 1, 40, 40)
        assert max_abs(got[1], ref[1]) <= 1e-5
        assert max_rel(got[0], ref[0]) <= 1e-4
        assert max_abs(got[2], ref[2]) <= 1e-4
    assert verify_artifact(out)["artifact"]["format"] == "onnx"
