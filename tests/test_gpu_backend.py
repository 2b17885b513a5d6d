"""Tier 1, `gpu` marker: the GPU backend (TorchCudaBackend) end to end vs the CPU reference model.

fp32: probabilities/logits within 2e-3 and heatmaps within 2e-3 (absolute) of the float32 CPU model (the GPU model
folds conv+BN, uses cuDNN/TF32-free fp32 convolutions and our kernels: differences are float32 reassociation).
fp16/bf16: error vs the CPU fp32 model <= 2x the error of the same model run by PyTorch eager at that precision on
the GPU, plus a floor of 8 ulps at 1.0.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from _gpu_helpers import LOW_PRECISION, SEED, assert_low_precision_bound, generator

from cmir_trt.model.checkpoint import save_checkpoint
from cmir_trt.model.cmir import CMIRConfig, build_model

pytestmark = pytest.mark.gpu

CONFIG = CMIRConfig(width=0.25, image_size=64, cmam_dim=64, cmam_heads=4)


def _model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    m = build_model(CONFIG).eval()
    g = generator(100)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return m


def _inputs(b: int, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = generator(offset)
    s = CONFIG.image_size
    return (torch.randn(b, 3, s, s, generator=g).numpy(), torch.randn(b, 3, s, s, generator=g).numpy(),
            torch.randn(b, CONFIG.num_clinical, generator=g).numpy())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    model = _model()
    path = save_checkpoint(tmp_path_factory.mktemp("gpu") / "model.pt", model, {"synthetic": True})
    return path, model


def _reference(model: torch.nn.Module, art: np.ndarray, pv: np.ndarray, clin: np.ndarray):  # noqa: ANN202
    with torch.no_grad():
        return model(torch.from_numpy(art), torch.from_numpy(pv), torch.from_numpy(clin))


@pytest.mark.parametrize("cuda_graph", [True, False])
@pytest.mark.parametrize("fused", [False, True])
def test_backend_fp32_matches_cpu_reference(checkpoint: tuple[Path, torch.nn.Module], cuda_graph: bool,
                                            fused: bool) -> None:
    from cmir_trt.gpu import TorchCudaBackend

    path, model = checkpoint
    backend = TorchCudaBackend(path, precision="fp32", cuda_graph=cuda_graph, fused_involution=fused)
    assert backend.metadata["synthetic"] is True and backend.metadata["backend"] == "torch-cuda"
    for b, off in ((1, 101), (3, 102), (1, 103)):  # the third call replays the batch-1 graph with new inputs
        art, pv, clin = _inputs(b, off)
        pred = backend.predict(art, pv, clin)
        ref = _reference(model, art, pv, clin)
        assert pred.probability.dtype == np.float32 and pred.heatmap.shape == (b, 1, 64, 64)
        np.testing.assert_allclose(pred.logit, ref.logit.numpy(), atol=2e-3, rtol=0)
        np.testing.assert_allclose(pred.probability, ref.probability.numpy(), atol=2e-3, rtol=0)
        np.testing.assert_allclose(pred.heatmap, ref.heatmap.numpy(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
def test_backend_low_precision_vs_pytorch_eager(checkpoint: tuple[Path, torch.nn.Module], prec: str) -> None:
    from cmir_trt.gpu import TorchCudaBackend

    path, model = checkpoint
    backend = TorchCudaBackend(path, precision=prec, cuda_graph=True)
    art, pv, clin = _inputs(4, 110)
    ref = _reference(model, art, pv, clin)
    dtype = LOW_PRECISION[prec]
    eager = copy.deepcopy(model).to("cuda", dtype).eval()
    with torch.no_grad():
        theirs = eager(*(torch.from_numpy(a).to("cuda", dtype) for a in (art, pv, clin)))
    pred = backend.predict(art, pv, clin)
    floor = 8 * float(torch.finfo(dtype).eps)
    for name, ours, t, r in (("probability", pred.probability, theirs.probability, ref.probability),
                             ("heatmap", pred.heatmap, theirs.heatmap, ref.heatmap)):
        e_ours = float(np.abs(ours - r.numpy()).max())
        e_torch = float((t.float().cpu() - r).abs().max())
        assert_low_precision_bound(e_ours, e_torch, f"backend {prec} {name}", floor)


def test_backend_inputs(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    from cmir_trt.gpu import TorchCudaBackend

    path, model = checkpoint
    backend = TorchCudaBackend(model, precision="fp32", cuda_graph=False)
    art, pv, clin = _inputs(2, 120)
    ref = _reference(model, art, pv, clin)
    # torch tensors already on the GPU are used in place
    pred = backend.predict(*(torch.from_numpy(a).cuda() for a in (art, pv, clin)))
    np.testing.assert_allclose(pred.probability, ref.probability.numpy(), atol=2e-3, rtol=0)
    bad = art.copy()
    bad[1, 0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        backend.predict(bad, pv, clin)
    with pytest.raises(ValueError, match="NaN"):
        backend.predict(torch.from_numpy(bad).cuda(), pv, clin)
    with pytest.raises(ValueError, match="shape"):
        backend.predict(art[:, :2], pv, clin)
    with pytest.raises(ValueError, match="batch"):
        backend.predict(art, pv[:1], clin)
    with pytest.raises(TypeError):
        backend.predict("art", pv, clin)
    cupy = pytest.importorskip("cupy")
    pred = backend.predict(cupy.asarray(art), cupy.asarray(pv), cupy.asarray(clin))
    np.testing.assert_allclose(pred.probability, ref.probability.numpy(), atol=2e-3, rtol=0)


def test_engine_facade_delegates_to_the_gpu_backend(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    import cmir_trt

    path, model = checkpoint
    engine = cmir_trt.Engine(path, device="cuda", backend="torch", precision="fp32")
    art, pv, clin = _inputs(2, 130)
    ref = _reference(model, art, pv, clin)
    pred = engine.predict(art, pv, clin)
    np.testing.assert_allclose(pred.probability, ref.probability.numpy(), atol=2e-3, rtol=0)
    assert engine.metadata["backend"] == "torch-cuda"
