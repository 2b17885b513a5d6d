"""The GPU backend's row of ``cmir-trt validate``: TorchCudaBackend vs the CPU float32 reference model on seeded
synthetic inputs. Returns plain numbers; the caller prints/writes them (labelled synthetic)."""

from __future__ import annotations

import os
from typing import Any

# Max |difference| allowed vs the CPU fp32 reference, per output, by precision (fp16/bf16: the model's own PyTorch
# eager error at that precision is of the same order; see tests/test_gpu_backend.py for the 2x-PyTorch bound).
TOLERANCES = {"fp32": 2e-3, "fp16": 3e-2, "bf16": 1e-1}


def compare_with_reference(path_or_model: str | os.PathLike[str] | Any, precision: str = "fp32", batch: int = 2,
                           seed: int = 0, cuda_graph: bool = True, fused_involution: bool = False,
                           device: int = 0) -> dict[str, Any]:
    """Run both on the same synthetic inputs; returns max abs errors, the tolerance and `passed`."""
    import copy

    import numpy as np
    import torch

    from ..model.checkpoint import load_checkpoint
    from .backend import TorchCudaBackend

    if precision not in TOLERANCES:
        raise ValueError(f"precision must be one of {tuple(TOLERANCES)}, got {precision!r}")
    model = (load_checkpoint(path_or_model) if isinstance(path_or_model, (str, os.PathLike))
             else path_or_model).eval()
    backend = TorchCudaBackend(model, precision=precision, cuda_graph=cuda_graph, device=device,
                               fused_involution=fused_involution)
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    art = torch.randn(batch, cfg.in_channels, s, s, generator=g)
    pv = torch.randn(batch, cfg.in_channels, s, s, generator=g)
    clin = torch.randn(batch, cfg.num_clinical, generator=g)
    reference = copy.deepcopy(model).float().cpu().eval()  # the caller's model is left as it is
    with torch.no_grad():
        ref = reference(art, pv, clin)
    pred = backend.predict(art.numpy(), pv.numpy(), clin.numpy())
    errs = {f"max_abs_{k}": float(np.abs(getattr(pred, k) - getattr(ref, k).numpy()).max())
            for k in ("probability", "logit", "heatmap")}
    tol = TOLERANCES[precision]
    return {"backend": "torch-cuda", "precision": precision, "cuda_graph": cuda_graph,
            "fused_involution": fused_involution, "device_name": backend.metadata["device_name"], "batch": batch,
            "seed": seed, "synthetic": True, **errs, "tolerance": tol,
            "passed": all(v <= tol for k, v in errs.items() if k != "max_abs_logit")}
