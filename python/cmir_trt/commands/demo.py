"""`cmir-trt demo`: the main job on its built-in default."""

from __future__ import annotations

import argparse

HELP = "run CMIR end to end on a built-in example (reference model on a generated input until the engine lands)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the generated input")
    p.add_argument("--variant", default="full", help="model variant (S1, M1, M2, M3, full)")


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from ..model import CMIRConfig, build_model, count_parameters

    torch.manual_seed(args.seed)
    cfg = CMIRConfig(variant=args.variant)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(args.seed)
    art = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=g)
    pv = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=g)
    clinical = torch.randn(1, cfg.num_clinical, generator=g)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(art, pv, clinical)
    dt = time.perf_counter() - t0
    print(f"CMIR {cfg.variant}: {count_parameters(model):,} parameters (untrained weights, synthetic random input)")
    print(f"probability (synthetic input, untrained model) = {out.probability.item():.4f}  "
          f"logit = {out.logit.item():+.4f}  heatmap {tuple(out.heatmap.shape)} in "
          f"[{out.heatmap.min().item():.3f}, {out.heatmap.max().item():.3f}]  ({dt * 1e3:.0f} ms, PyTorch CPU)")
    return 0
