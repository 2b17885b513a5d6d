"""Shared helpers of the native-engine tests: small seeded CMIR models, their plans, seeded inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


def native_core() -> Any:
    """cmir_trt._C with the native engine, or skip with the reason (a build without oneDNN)."""
    from cmir_trt._native import load_core

    core = load_core()
    if not hasattr(core, "NativeEngine"):
        pytest.skip("cmir_trt was built without the native engine (oneDNN not found at build time)")
    return core


def small_model(variant: str = "full", image_size: int = 64, width: float = 0.25, seed: int = 0,
                **overrides: Any) -> Any:
    """A seeded CMIR in eval mode whose BatchNorms have non-trivial statistics (so folding is really tested)."""
    import torch

    from cmir_trt.model import CMIRConfig, build_model

    torch.manual_seed(seed)
    kw = {"cmam_dim": 32, "cmam_heads": 4}
    kw.update(overrides)
    model = build_model(CMIRConfig(variant=variant, image_size=image_size, width=width, **kw))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
        # Positive image weights in the head, so the class-activation map of the CAM variants is not all zero.
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):  # CMAM output: mostly positive, as after a ReLU
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=g) * 0.5 + 0.5)
        img = model.image_features
        model.classifier.weight[:, :img].abs_()
    return model.eval()


def export(model: Any, path: Path, **kw: Any) -> Path:
    from cmir_trt.export.plan import export_plan

    return export_plan(model, path, **kw)


def inputs(model: Any, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg = model.config
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    art = rng.standard_normal((batch, cfg.in_channels, s, s), dtype=np.float32)
    pv = rng.standard_normal((batch, cfg.in_channels, s, s), dtype=np.float32)
    clinical = rng.standard_normal((batch, cfg.num_clinical), dtype=np.float32)
    return art, pv, clinical


def reference(model: Any, art: np.ndarray, pv: np.ndarray, clinical: np.ndarray) -> tuple[np.ndarray, ...]:
    """The PyTorch model's (probability, logit, heatmap) in eval mode."""
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(art), torch.from_numpy(pv), torch.from_numpy(clinical))
    return out.probability.numpy(), out.logit.numpy(), out.heatmap.numpy()


# Tolerances of the issue (tier-0 parity): probability abs, logit rel (with an absolute floor for logits near 0),
# heatmap abs.
PROB_ATOL = 1e-5
LOGIT_RTOL = 1e-4
LOGIT_FLOOR = 1e-3
HEAT_ATOL = 1e-4


def assert_parity(got: Any, ref: tuple[np.ndarray, ...]) -> None:
    prob, logit, heat = ref
    assert got.probability.shape == prob.shape and got.logit.shape == logit.shape and got.heatmap.shape == heat.shape
    assert got.probability.dtype == np.float32 and got.heatmap.dtype == np.float32
    np.testing.assert_allclose(got.probability, prob, rtol=0, atol=PROB_ATOL)
    rel = np.abs(got.logit - logit) / np.maximum(np.abs(logit), LOGIT_FLOOR)
    assert rel.max() <= LOGIT_RTOL, f"logit relative error {rel.max():.3g} > {LOGIT_RTOL}"
    np.testing.assert_allclose(got.heatmap, heat, rtol=0, atol=HEAT_ATOL)
