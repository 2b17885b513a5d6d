"""PyTorch eager on the CPU: the reference model from a checkpoint (imports torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..prediction import Prediction
from .inputs import check_inputs


class TorchCPUBackend:
    name = "torch"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import torch

        from ..export.plan import plan_metadata
        from ..model.checkpoint import load_checkpoint

        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1 (or None for all cores), got {threads}")
            torch.set_num_threads(int(threads))
        self.path = Path(path)
        self.model = load_checkpoint(self.path)
        self.metadata: dict[str, Any] = plan_metadata(self.model)
        cfg = self.model.config
        self.spec = {"image_size": cfg.image_size, "in_channels": cfg.in_channels, "num_clinical": cfg.num_clinical,
                     "num_classes": cfg.num_classes, "two_phase": cfg.two_phase}
        self.threads = torch.get_num_threads()

    def predict(self, art: Any, pv: Any = None, clinical: Any = None) -> Prediction:
        import torch

        a, p, c = check_inputs(self.spec, art, pv, clinical)
        ta = torch.from_numpy(a)
        tp = torch.from_numpy(p) if p is not None else ta
        tc = torch.from_numpy(c) if c is not None else torch.zeros(a.shape[0], 0)
        with torch.inference_mode():
            out = self.model(ta, tp, tc)
        return Prediction(out.probability.numpy().astype("float32"), out.logit.numpy().astype("float32"),
                          out.heatmap.numpy().astype("float32"))
