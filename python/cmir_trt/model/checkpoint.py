"""CMIR checkpoints: tensors and plain data only, so `torch.load(weights_only=True)` reads them.

Layout of the saved dict (format "cmir-checkpoint", version 1):
    format, format_version, config (CMIRConfig.to_dict()), state_dict, metadata (plain dict: clinical schema and
    normalisation, preprocessing parameters, decision threshold, training-data description incl. `synthetic`, seed,
    versions, ...). Unknown metadata keys are kept as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_via, file_sha256
from .cmir import CMIR, CMIRConfig

CHECKPOINT_FORMAT = "cmir-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable cmir checkpoint."""


def save_checkpoint(path: str | os.PathLike[str], model: CMIR, metadata: dict[str, Any] | None = None) -> Path:
    """Write atomically (temp file + rename): an interrupted save never leaves a half-written checkpoint."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    # torch.save to a temp file named after the target (not to a buffer): torch names the zip's top folder after the
    # file, and the committed demo checkpoint's bytes (models/README.md) depend on that name.
    return atomic_write_via(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict, validated; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/unsafe files
        text = " ".join(str(exc).split())
        if "weights_only" in text or "Unsupported global" in text:
            # torch's advice here is to unpickle with weights_only=False: never do that with a file from elsewhere
            why = "it holds Python objects, not only tensors and plain data (cmir_trt never unpickles those)"
        else:
            why = f"{type(exc).__name__}: {text.split('. ')[0][:200]}"  # the first sentence: torch goes on at length
        raise CheckpointError(f"{path} is not a readable cmir checkpoint: {why}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a cmir checkpoint (missing format marker {CHECKPOINT_FORMAT!r})")
    version = payload.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format version {version!r} "
                              f"(this cmir_trt reads version {CHECKPOINT_VERSION})")
    for key in ("config", "state_dict", "metadata"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint field {key!r} is missing or not a dict")
    return payload


def load_checkpoint(path: str | os.PathLike[str]) -> CMIR:
    """The CMIR module in eval mode, with `.metadata` (dict) and `.checkpoint_sha256` attached."""
    payload = read_checkpoint(path)
    try:
        config = CMIRConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config: {exc}") from exc
    model = CMIR(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the config: {exc}") from exc
    model.eval()
    model.metadata = payload["metadata"]  # type: ignore[assignment]
    model.checkpoint_sha256 = file_sha256(path)  # type: ignore[assignment]
    return model

