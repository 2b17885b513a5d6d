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


def write_dicom_series(img, folder: Path, series_uid: str, study_uid: str = "1.2.826.0.1.3680043.2.1125.1",
                       tags: dict[str, str] | None = None, slice_tags=None) -> list[Path]:
    """A 3-D image as one DICOM file per slice, with position/orientation tags (geometry survives the round trip).
    `tags`: extra tags for every slice (e.g. {"0008|103e": "Arterial"}); `slice_tags(k)`: per-slice overrides."""
    s = sitk()
    folder.mkdir(parents=True, exist_ok=True)
    img = s.Cast(img, s.sitkInt16)
    d = img.GetDirection()
    writer = s.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        base = {
            "0008|0060": "MR",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
            "0028|0030": f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}",
            **(tags or {}),
            **(slice_tags(k) if slice_tags else {}),
        }
        for key, val in base.items():
            sl.SetMetaData(key, val)
        paths.append(folder / f"{series_uid.replace('.', '_')}_{k:03d}.dcm")
        writer.SetFileName(str(paths[-1]))
        writer.Execute(sl)
    return paths


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


# ------------------------------------------------------------------------------------- models and case folders
CLINICAL_HEADER = "case_id,age,sex,log10_afp,log10_pivka,hbv,cirrhosis,albi"


def clinical_row(case_id: str, seed: int) -> str:
    """A plausible clinical CSV row (schema ranges), seeded."""
    rng = np.random.default_rng(seed)
    return (f"{case_id},{rng.integers(35, 80)},{rng.integers(0, 2)},{rng.uniform(0.5, 4):.3f},"
            f"{rng.uniform(1, 4):.3f},{rng.integers(0, 2)},{rng.integers(0, 2)},{rng.uniform(-3.2, -1.8):.3f}")


def small_models(folder: Path, num_classes: int = 1) -> tuple[Path, Path | None]:
    """(checkpoint, plan or None without the native engine) of a small seeded `full` CMIR at S = 32 with a fitted
    clinical schema, a stored threshold and the synthetic flag."""
    from _engine_helpers import export, small_model

    from cmir_trt.data import ClinicalSchema
    from cmir_trt.model.checkpoint import save_checkpoint

    schema = ClinicalSchema()
    raw = np.array([[50, 1, 2, 2, 1, 1, 20, -2.5], [65, 0, 3, 3, 0, 1, 35, -2.0]], dtype=np.float64)
    schema.fit(raw)
    meta = {"clinical_schema": schema.to_dict(), "preprocess": {"image_size": 32, "margin_mm": 8.0},
            "threshold": 0.45, "training_data": {"synthetic": True, "description": "test"}}
    model = small_model("full", image_size=32, width=0.125, seed=3, num_classes=num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(folder / "m.pt", model, meta)
    plan = None
    try:
        from cmir_trt._native import load_core

        if hasattr(load_core(), "NativeEngine"):
            plan = export(str(ckpt), folder / "m.plan")
    except ImportError:
        plan = None
    return ckpt, plan


def write_cases(root: Path, n: int, ext: str = ".nii.gz", seed0: int = 0) -> Path:
    """n small phantom cases CASE0..CASE{n-1} side by side + clinical.csv."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [CLINICAL_HEADER]
    for i in range(n):
        write_case(root, f"CASE{i}", phantom(seed=seed0 + i, radius_mm=8.0 + i), ext=ext)
        rows.append(clinical_row(f"CASE{i}", seed0 + i))
    (root / "clinical.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root
