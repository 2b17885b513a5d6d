"""Seed corpus of the plan fuzzer: small valid plans of several variants, whole and cut before their weights section.

    .venv/bin/python tests/fuzz/make_seeds.py OUT_DIR
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path


def main(out: Path) -> None:
    import torch

    from cmir_trt.export.plan import plan_bytes
    from cmir_trt.model import CMIRConfig, build_model

    out.mkdir(parents=True, exist_ok=True)
    for i, (variant, classes, clinical) in enumerate([("S1", 1, 2), ("M1", 3, 0), ("M2", 1, 3), ("M3", 3, 4),
                                                      ("full", 1, 5), ("full", 3, 0)]):
        torch.manual_seed(i)
        cfg = CMIRConfig(variant=variant, image_size=32 + 8 * (i % 2), width=0.0625, num_classes=classes,
                         cmam_dim=16, cmam_heads=2, num_clinical=clinical, clinical_hidden=4)
        data = plan_bytes(build_model(cfg))
        (out / f"seed_{variant}_{i}.plan").write_bytes(data)
        weights_off = struct.unpack_from("<Q", data, 56)[0]
        (out / f"seed_{variant}_{i}.prefix").write_bytes(data[:weights_off])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
