"""Small shared pieces of the DICOM package: dataset IO, deterministic UIDs, the optional-dependency check."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..data.errors import DataError

try:
    import pydicom
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the DICOM features need pydicom, highdicom and pynetdicom: pip install 'cmir_trt[dicom]'") \
        from exc

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


_UID_NAMESPACE = uuid.UUID("5b0c6f7e-4f3a-5d53-9a39-6b1f0c3e2a10")  # cmir_trt's own name-based UUID namespace


def stable_uid(*parts: object) -> str:
    """A UID derived from `parts` only: 2.25.<a name-based UUID (version 5) as an integer>. The same inputs give
    the same UID, so a result re-made after a crash carries the UIDs of the first attempt and a PACS sees one
    object, not two. (pydicom's generate_uid(prefix=None) ignores its entropy sources and is random.)"""
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def dataset_bytes(ds: Any) -> bytes:
    """A dataset as a DICOM Part 10 file (preamble, file meta) in memory."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_dataset(ds: Any, path: str | os.PathLike[str]) -> Path:
    """A dataset written atomically (temp file + rename): never a half-written .dcm."""
    return atomic_write_bytes(path, dataset_bytes(ds))


def read_dataset(path: str | os.PathLike[str], what: str = "DICOM file", stop_before_pixels: bool = False) -> Any:
    """pydicom.dcmread with one-line errors (DataError) naming the file, for anything unreadable or truncated."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except (OSError, EOFError, ValueError, TypeError, KeyError, pydicom.errors.InvalidDicomError) as exc:
        raise DataError(f"{what}: cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0][:400]) from exc


def sort_by_position(datasets: Iterable[Any]) -> list[Any]:
    """Single-frame slices ordered along their normal (ImagePositionPatient projected on the slice normal)."""
    import numpy as np

    items = list(datasets)

    def key(ds: Any) -> float:
        iop = np.array([float(x) for x in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        return float(np.dot(normal, [float(x) for x in ds.ImagePositionPatient]))

    return sorted(items, key=key)
