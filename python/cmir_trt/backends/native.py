"""The native C++ CPU engine (cmir_trt._C.NativeEngine) running a .plan file; no torch needed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..prediction import Prediction
from .inputs import check_inputs

# GNU OpenMP (oneDNN's and the kernels' thread pool) reads its wait policy once, when libgomp is loaded with _C.
# Passive waiting: on a machine shared with other work an actively spinning barrier wastes the CPU the late thread
# needs (measured on the 2-core dev machine under load: 150 ms -> 29 ms per full-CMIR call at 2 threads), while on an
# idle machine the difference is within noise. Set OMP_WAIT_POLICY=ACTIVE yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class NativeBackend:
    """Loads a plan once; `predict` releases the GIL and may be called from several threads at once."""

    name = "native"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, precision: str = "fp32") -> None:
        from .._native import load_core

        core = load_core()
        if not hasattr(core, "NativeEngine"):
            raise RuntimeError("this build of cmir_trt has no native engine (oneDNN was not found at build time; "
                               "install onednn-cpu-gomp and onednn-devel-cpu-gomp and rebuild)")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"plan not found: {path}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for all cores), got {threads}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"the native engine runs precision 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16":
            ok, why = core.bf16_supported()
            if not ok:  # before the plan is read: the CPU, not the file, is the problem
                raise ValueError(f"precision='bf16' refused: {why}")
        self._engine = core.NativeEngine(str(path), int(threads or 0), precision)
        self.precision: str = str(self._engine.precision)
        self.path = path
        self.spec: dict[str, Any] = dict(self._engine.spec)
        self.metadata: dict[str, Any] = json.loads(self._engine.metadata_json)
        self.threads: int = int(self._engine.threads)

    def predict(self, art: Any, pv: Any = None, clinical: Any = None) -> Prediction:
        a, p, c = check_inputs(self.spec, art, pv, clinical)
        prob, logit, heat, _ = self._engine.predict(a, p, c)
        return Prediction(prob, logit, heat)

    def profile(self, art: Any, pv: Any = None, clinical: Any = None) -> tuple[Prediction, list[tuple[str, float]]]:
        """A prediction plus the wall time of every op (seconds), in graph order."""
        a, p, c = check_inputs(self.spec, art, pv, clinical)
        prob, logit, heat, prof = self._engine.predict(a, p, c, profile=True)
        return Prediction(prob, logit, heat), [(str(n), float(t)) for n, t in prof]
