"""Shared helpers of the data-path tests: small phantoms with known geometry, DICOM series writer, Dice."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# A rotation about an oblique axis: a non-identity direction that still maps k to (roughly) the axial normal.
_ANG = math.radians(12.0)
OBLIQUE = tuple(np.array([
    [math.cos(_ANG), -math.sin(_ANG), 0.0],
    [math.sin(_ANG) * math.cos(0.1), math.cos(_ANG) * math.cos(0.1), -math.sin(0.1)],
    [math.sin(_ANG) * math.sin(0.1), math.cos(_ANG) * math.sin(0.1), math.cos(0.1)],
]).ravel().tolist())
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def sitk():
    import SimpleITK

    return SimpleITK


def make_image(arr: np.ndarray, spacing=(0.9, 1.1, 2.5), origin=(-40.0, 12.5, 30.0), direction=IDENTITY):
    """A SimpleITK image of arr [k, j, i] with the given geometry (x, y, z order)."""
    img = sitk().GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in direction])
    return img


def ball(shape, centre_kji, radius_mm, spacing_xyz) -> np.ndarray:
    """Boolean ball of radius_mm (physical, anisotropic voxels) centred at voxel centre_kji."""
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    sx, sy, sz = spacing_xyz
    d2 = ((i - centre_kji[2]) * sx) ** 2 + ((j - centre_kji[1]) * sy) ** 2 + ((k - centre_kji[0]) * sz) ** 2
    return d2 <= radius_mm ** 2


def phantom(seed: int = 0, shape=(16, 48, 56), spacing=(0.9, 1.1, 2.5), direction=IDENTITY,
            centre=(8, 22, 30), radius_mm=9.0, origin=(-40.0, 12.5, 30.0)):
    """(art, pv, mask) SimpleITK images on one grid: textured background, a bright ball tumour (ART), dark in PV."""
    rng = np.random.default_rng(seed)
    m = ball(shape, centre, radius_mm, spacing)
    art = 100.0 + 5.0 * rng.standard_normal(shape) + 60.0 * m
    pv = 110.0 + 5.0 * rng.standard_normal(shape) - 40.0 * m
    imgs = [make_image(a, spacing, origin, direction) for a in (art.astype(np.float32), pv.astype(np.float32),
                                                                m.astype(np.uint8))]
    return tuple(imgs)


def write_case(folder: Path, case_id: str, imgs, ext: str = ".nii.gz", subfolder: bool = False) -> Path:
    s = sitk()
    d = folder / case_id if subfolder else folder
    d.mkdir(parents=True, exist_ok=True)
    for img, suffix in zip(imgs, ("_0000", "_0001", "_mask"), strict=True):
        s.WriteImage(img, str(d / f"{case_id}{suffix}{ext}"))
    return d


def write_dicom_series(img, folder: Path, series_uid: str, study_uid: str = "1.2.826.0.1.3680043.2.1125.1") -> None:
    """A 3-D image as one DICOM file per slice, with position/orientation tags (geometry survives the round trip)."""
    s = sitk()
    folder.mkdir(parents=True, exist_ok=True)
    img = s.Cast(img, s.sitkInt16)
    d = img.GetDirection()
    writer = s.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
            "0028|0030": f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"{series_uid[-6:]}_{k:03d}.dcm"))
        writer.Execute(sl)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    den = a.sum() + b.sum()
    return 1.0 if den == 0 else float(2.0 * (a & b).sum() / den)


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half): an independent check of what sklearn reports."""
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    pos, neg = score[y == 1], score[y == 0]
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())
