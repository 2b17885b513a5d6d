"""cmir_trt.Engine: one facade over the backends (native C++ CPU, PyTorch CPU/CUDA, TensorRT).

    engine = cmir_trt.Engine("model.plan")                 # native CPU engine, all cores
    engine = cmir_trt.Engine("model.plan", precision="bf16")  # bf16 convolutions (CPUs with avx512_bf16 / AMX)
    pred = engine.predict(art, pv, clinical)               # numpy in, Prediction(probability, logit, heatmap) out
    engine.metadata["threshold"], engine.metadata["model_id"]

backend="auto" picks by file type: `.plan` -> native, a checkpoint (`.pt`/`.pth`) -> torch, `.engine` -> tensorrt.
Research use only, not for diagnostic use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .prediction import Prediction

BACKENDS = ("auto", "native", "torch", "tensorrt")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")


def _auto_backend(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".plan":
        return "native"
    if suffix in (".pt", ".pth", ".ckpt"):
        return "torch"
    if suffix in (".engine", ".trt"):
        return "tensorrt"
    raise ValueError(f"cannot tell the backend from the file name {path.name!r}: use a .plan (native), .pt (torch) "
                     "or .engine (tensorrt) file, or pass backend=...")


class Engine:
    """A loaded model; `predict` is safe to call from several threads at once (native backend: the GIL is released)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu", backend: str = "auto",
                 threads: int | None = None, precision: str = "fp32") -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if backend == "auto":
            backend = _auto_backend(self.path)
        self.device = device
        self.backend = backend
        self.precision = precision
        self._impl: Any = self._load(backend, device, threads, precision)

    def _load(self, backend: str, device: str, threads: int | None, precision: str) -> Any:
        if device == "cpu":
            if backend == "native":
                if precision not in ("fp32", "bf16"):
                    raise ValueError(f"the native CPU engine runs precision 'fp32' or 'bf16', got {precision!r}")
                from .backends.native import NativeBackend

                return NativeBackend(self.path, threads, precision=precision)
            if precision != "fp32":
                raise ValueError(f"the {backend} CPU backend runs fp32 only, got precision={precision!r} (bf16 on "
                                 "the CPU: the native engine, a .plan file)")
            if backend == "torch":
                from .backends.torch_cpu import TorchCPUBackend

                return TorchCPUBackend(self.path, threads)
            raise ValueError("the tensorrt backend needs device='cuda'")
        # device == "cuda"
        if backend == "native":
            raise ValueError("the native engine runs on the CPU; use device='cpu', or backend='torch'/'tensorrt' "
                             "for a GPU")
        if backend == "torch":
            try:
                from .gpu import TorchCudaBackend
            except ImportError as exc:
                raise RuntimeError(f"the CUDA torch backend is unavailable in this installation: {exc}") from exc
            return TorchCudaBackend(self.path, precision=precision, cuda_graph=True)
        try:
            from .tensorrt import TensorRTBackend
        except ImportError as exc:
            raise RuntimeError(f"the TensorRT backend is unavailable (TensorRT not installed?): {exc}") from exc
        return TensorRTBackend(self.path)

    def predict(self, art: Any, pv: Any = None, clinical: Any = None) -> Prediction:
        """Prediction(probability [B, K], logit [B, K], heatmap [B, 1, S, S]) as float32 numpy arrays."""
        shape = getattr(art, "shape", None)
        # Checked here once so every backend (native, torch, CUDA, TensorRT) words an empty batch alike.
        if shape is not None and len(shape) == 4 and shape[0] == 0:
            raise ValueError(f"art holds 0 cases (shape {list(shape)}); predict needs at least one case (B >= 1)")
        out = self._impl.predict(art, pv, clinical)
        if not isinstance(out, Prediction):
            out = Prediction(*out)
        return out

    @property
    def metadata(self) -> dict[str, Any]:
        """The model's metadata (the plan's, or the checkpoint's for torch): model_id, threshold, synthetic, ..."""
        return self._impl.metadata

    @property
    def threads(self) -> int | None:
        return getattr(self._impl, "threads", None)

    @property
    def input_spec(self) -> dict[str, Any]:
        spec = getattr(self._impl, "spec", None)
        if spec is not None:
            return dict(spec)
        cfg = self.metadata.get("config", {})
        return {"image_size": cfg.get("image_size"), "in_channels": cfg.get("in_channels"),
                "num_clinical": cfg.get("num_clinical"), "num_classes": cfg.get("num_classes"),
                "two_phase": cfg.get("variant") != "S1"}

    def __repr__(self) -> str:
        return (f"Engine({str(self.path)!r}, device={self.device!r}, backend={self.backend!r}, "
                f"precision={self.precision!r})")
