"""Synthetic multi-centre cohort of two-phase liver MRI phantoms with HCC and a known MVI truth (all SYNTHETIC).

Each case is a small 3-D volume (96 x 96 in-plane, about 80 mm of slices: 16-32 slices depending on the centre's
slice thickness) rendered from random fields in millimetres:
  liver (lobulated ellipsoid, textured parenchyma, arterial + portal/hepatic vessel networks) inside other tissue;
  HCC: arterial hyper-enhancement and portal-venous wash-out, internal mosaic texture, an enhancing capsule (PV);
  MVI signs, present more often and stronger in MVI+ cases (scaled by `strength`): irregular/non-smooth margin,
  peritumoral arterial enhancement, satellite nodules, incomplete capsule, larger size. MVI- cases show each sign
  at a false-positive rate, so the task is learnable but not trivial.
Clinical values (AFP, PIVKA-II, ALBI, cirrhosis, ...) correlate with MVI, with noise. Centre effects: in-plane
spacing, slice thickness, noise, bias field, intensity scale, arterial timing, PV misregistration and, for some
centres, PV stored on its own grid (the loader resamples it onto ART).

Determinism: each case draws from its own generator seeded by (seed, crc32(case_id)), so files are byte-identical
for the same seed and a case does not depend on the order or number of cases.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text as _write_text_atomic
from .._io import public_dir_mode
from .clinical import CLINICAL_FEATURES, ClinicalSchema
from .io import _sitk

SYNTH_VERSION = 2
GRADES = ("M0", "M1", "M2")
SPLITS = ("train", "internal", "external")
MARKER = ".cmir_synth_cohort"
IN_PLANE = 96        # voxels per in-plane axis
Z_EXTENT_MM = 80.0   # slab thickness covered by the slices


@dataclass(frozen=True)
class Centre:
    name: str
    spacing_mm: float      # in-plane
    thickness_mm: float    # slice spacing
    noise: float           # Rician noise sigma (before the intensity scale)
    bias: float            # bias-field amplitude (log scale)
    scale: float           # intensity scale of the scanner
    art_timing: float      # arterial enhancement factor (contrast timing)
    pv_shift_mm: float     # max PV misregistration (anatomy moves between phases)
    pv_own_grid: bool      # PV written on its own grid (different spacing/origin)


CENTRES: dict[str, Centre] = {
    "RRSH": Centre("RRSH", 1.30, 3.0, 4.0, 0.10, 1.00, 1.00, 1.5, False),
    "FPWH": Centre("FPWH", 1.45, 4.0, 6.0, 0.20, 1.80, 0.90, 2.5, True),
    "LHH": Centre("LHH", 1.20, 2.5, 5.0, 0.15, 0.60, 1.05, 2.0, False),
    "ZTH": Centre("ZTH", 1.55, 5.0, 6.0, 0.25, 2.60, 0.85, 3.0, True),
    "ZFH": Centre("ZFH", 1.35, 3.5, 3.0, 0.12, 1.25, 0.95, 1.0, False),
}

# (centre, split, positives, negatives): the source study's Table I (../shared/seed), every centre's own MVI+/MVI-
# counts, external centres included (MVI+:MVI- = FPWH 1:2.1, LHH 1:0.67, ZTH 1:3.6, ZFH 1:2.95).
PRESETS: dict[str, tuple[tuple[str, str, int, int], ...]] = {
    "default": (
        ("RRSH", "train", 124, 201),
        ("RRSH", "internal", 31, 50),
        ("FPWH", "external", 42, 88),
        ("LHH", "external", 61, 41),
        ("ZTH", "external", 40, 145),
        ("ZFH", "external", 20, 59),
    ),
    "tiny": (
        ("RRSH", "train", 3, 3),
        ("RRSH", "internal", 2, 2),
        ("FPWH", "external", 2, 2),
        ("LHH", "external", 2, 2),
        ("ZTH", "external", 2, 2),
        ("ZFH", "external", 2, 2),
    ),
}


@dataclass(frozen=True)
class PlannedCase:
    case_id: str
    centre: str
    split: str
    mvi: int


def cohort_plan(preset: str = "default", seed: int = 0, scale: float = 1.0) -> list[PlannedCase]:
    """The cases a preset produces (ids, centre, split, label) without rendering anything."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if not (math.isfinite(scale) and 0 < scale <= 1.0):
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    plan = []
    for centre, split, npos, nneg in PRESETS[preset]:
        p, n = (max(1, round(npos * scale)), max(1, round(nneg * scale))) if scale != 1.0 else (npos, nneg)
        labels = np.array([1] * p + [0] * n)
        rng = np.random.default_rng([seed, zlib.crc32(f"{centre}/{split}".encode())])
        rng.shuffle(labels)
        tag = split[0].upper()
        plan += [PlannedCase(f"{centre}_{tag}{i + 1:04d}", centre, split, int(y)) for i, y in enumerate(labels)]
    return plan


# ----------------------------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], step_vox: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ~step_vox voxels per axis.

    White noise on a coarse lattice (node spacing step/2) smoothed onto the full grid by a separable Gaussian
    weight matrix per axis: three small matrix products, ~100x cheaper than spline zoom or a full-resolution filter.
    """
    mats = []
    for n, step in zip(shape, step_vox, strict=True):
        h = max(float(step) / 2.0, 1.0)      # lattice spacing (voxels)
        sigma = max(float(step) / 2.0, 0.7)  # Gaussian width (voxels)
        pad = int(math.ceil(3 * sigma / h))
        q = (np.arange(-pad, int(math.ceil((n - 1) / h)) + pad + 1)) * h
        p = np.arange(n, dtype=np.float64)
        mats.append(np.exp(-0.5 * ((p[:, None] - q[None, :]) / sigma) ** 2))
    arr = rng.standard_normal(tuple(m.shape[1] for m in mats))
    m0, m1, m2 = arr.shape
    arr = (mats[0] @ arr.reshape(m0, m1 * m2)).reshape(-1, m1, m2)  # BLAS matrix products, one axis at a time
    arr = np.matmul(mats[1], arr)
    arr = arr @ mats[2].T
    sd = arr.std()
    return (arr - arr.mean()) / (sd if sd > 0 else 1.0)


def _ramp(d_mm: np.ndarray, width_mm: float = 1.0) -> np.ndarray:
    """Soft membership 1 inside (d < 0), 0 outside, linear over width_mm: partial-volume edges."""
    return np.clip(0.5 - d_mm / width_mm, 0.0, 1.0)


def case_truth(pc: PlannedCase, seed: int, strength: float) -> dict[str, Any]:
    """The label-dependent draws of a case (grade, MVI signs, tumour size, clinical values), from their own random
    stream so they can be studied without rendering: {"grade", "signs", "diameter_mm", "clinical", ...}."""
    rng = np.random.default_rng([seed, zlib.crc32(pc.case_id.encode()), 0])
    y = pc.mvi
    # Latent MVI aggressiveness drives the grade (M1 low-risk / M2 high-risk) and the strength of the signs.
    aggr = float(rng.uniform()) if y else 0.0
    grade = 0 if not y else (2 if aggr > 0.6 else 1)
    p_neg = 0.15  # each sign also appears in MVI- tumours: the task is not trivial
    p_pos = p_neg + (1 - p_neg) * (1 - math.exp(-1.2 * strength))

    def sign() -> float:
        present = rng.uniform() < (p_pos if y else p_neg)
        mag = float(rng.uniform(0.4, 1.0))
        if y:
            mag = min(1.0, mag + min(strength, 1.0) * 0.3 * (aggr - 0.5))
        return mag if present else 0.0

    signs = {"irregular_margin": sign(), "peritumoral_enhancement": sign(), "satellite_sign": sign(),
             "incomplete_capsule": sign()}
    signs["satellites"] = int(rng.poisson(3.0 * signs["satellite_sign"])) if signs["satellite_sign"] > 0 else 0
    diam = float(np.clip(28.0 * math.exp(0.22 * strength * y + 0.35 * rng.standard_normal()), 10.0, 60.0))
    s = strength * y
    clinical = {
        "age": float(np.clip(rng.normal(55.0, 10.0), 25, 85)),
        "sex": float(rng.uniform() < 0.82),
        "log10_afp": float(np.clip(rng.normal(1.2 + 0.55 * s, 0.9), 0.0, 5.0)),
        "log10_pivka": float(np.clip(rng.normal(1.7 + 0.5 * s, 0.8), 0.3, 5.0)),
        "hbv": float(rng.uniform() < 0.78 + 0.05 * min(s, 1.0)),
        "cirrhosis": float(rng.uniform() < 0.50 + 0.12 * min(s, 1.0)),
        "albi": float(np.clip(rng.normal(-2.65 + 0.15 * s, 0.35), -4.0, -0.5)),
    }
    return {"grade": grade, "aggressiveness": aggr, "signs": signs, "diameter_mm": diam,
            "clinical": {k: round(v, 3) for k, v in clinical.items()}}


def _render_case(pc: PlannedCase, seed: int, strength: float) -> dict[str, Any]:
    """Render one case: ART/PV/mask arrays [k, j, i], geometry, clinical values, grade."""
    truth = case_truth(pc, seed, strength)
    sg = truth["signs"]
    rng = np.random.default_rng([seed, zlib.crc32(pc.case_id.encode()), 1])
    ctr = CENTRES[pc.centre]
    nk = int(round(Z_EXTENT_MM / ctr.thickness_mm))
    shape = (nk, IN_PLANE, IN_PLANE)
    sp = np.array([ctr.thickness_mm, ctr.spacing_mm, ctr.spacing_mm])  # per numpy axis (k, j, i)
    fov = sp * np.array(shape)
    z, yy, x = (((np.arange(n) + 0.5) - n / 2.0) * s for n, s in zip(shape, sp, strict=True))
    Z, Y, X = z[:, None, None], yy[None, :, None], x[None, None, :]

    # Liver: lobulated ellipsoid covering most of the slab; other tissue outside.
    ax = fov[::-1] * rng.uniform([0.42, 0.40, 0.9], [0.55, 0.52, 1.3])  # x, y, z semi-axes (mm)
    lc = rng.uniform(-0.12, 0.12, 3) * fov[::-1]
    lobe = _smooth_noise(rng, shape, 40.0 / sp)
    lv = np.sqrt(((X - lc[0]) / ax[0]) ** 2 + ((Y - lc[1]) / ax[1]) ** 2 + ((Z - lc[2]) / ax[2]) ** 2)
    liver = _ramp((lv - 1.0 + 0.08 * lobe) * 40.0, 2.0)
    tex = _smooth_noise(rng, shape, np.array([3.0, 3.0, 3.0]) / sp * 2.0)

    # Vessels: intersections of level sets of two smooth fields are tube networks.
    f1, f2 = _smooth_noise(rng, shape, 18.0 / sp), _smooth_noise(rng, shape, 18.0 / sp)
    g1, g2 = _smooth_noise(rng, shape, 14.0 / sp), _smooth_noise(rng, shape, 14.0 / sp)
    veins = np.exp(-(f1 ** 2 + f2 ** 2) / (2 * 0.20 ** 2))
    arteries = np.exp(-(g1 ** 2 + g2 ** 2) / (2 * 0.11 ** 2))

    # Tumour: centre inside the liver and the slab.
    r = truth["diameter_mm"] / 2.0
    lim = np.maximum(fov[::-1] / 2.0 - r - np.array([14.0, 14.0, 4.0]), 0.0)
    c = rng.uniform(-lim, lim)
    for _ in range(30):  # prefer a centre inside the liver
        if math.sqrt(sum(((c[a] - lc[a]) / ax[a]) ** 2 for a in range(3))) < 0.75:
            break
        c = rng.uniform(-lim, lim)
    # Everything tumour-related lives in a box around it (satellites and enhancement reach < r + 30 mm): the
    # fine random fields are only computed there.
    half = 1.3 * r + 30.0
    centre_vox = (c[::-1] / sp + np.array(shape) / 2.0 - 0.5)
    lo = np.maximum(np.floor(centre_vox - half / sp).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + half / sp).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    bshape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    bZ, bY, bX = Z[box[0]], Y[:, box[1]], X[:, :, box[2]]
    rho = np.sqrt((bX - c[0]) ** 2 + (bY - c[1]) ** 2 + (bZ - c[2]) ** 2) / r
    n_lobe = _smooth_noise(rng, bshape, np.full(3, 0.6 * r) / sp)
    n_fine = _smooth_noise(rng, bshape, np.full(3, 2.5) / sp)
    a_lobe = 0.05 + 0.16 * sg["irregular_margin"]   # lobulated margin
    a_fine = 0.015 + 0.09 * sg["irregular_margin"]  # non-smooth margin
    rho_e = rho / np.maximum(1.0 + a_lobe * n_lobe + a_fine * n_fine, 0.3)
    dist_mm = (rho_e - 1.0) * r  # signed distance-like field, <0 inside
    tumour = _ramp(dist_mm, 1.0)
    bmask = dist_mm < 0.0

    # Satellite nodules (MVI sign): small tumours within ~2 cm of the main one; in the mask for half the cases.
    sat = np.zeros(bshape)
    sat_in_mask = bool(rng.uniform() < 0.5)
    for _ in range(sg["satellites"]):
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        u[2] *= 0.5
        sc = c + u * (r + rng.uniform(4.0, 16.0))
        sr = rng.uniform(1.8, 4.0)
        d = np.sqrt((bX - sc[0]) ** 2 + (bY - sc[1]) ** 2 + (bZ - sc[2]) ** 2) - sr
        sat = np.maximum(sat, _ramp(d, 1.0))
        if sat_in_mask:
            bmask |= d < 0.0
    lesion = np.maximum(tumour, sat)

    # Capsule: an enhancing rim (PV), incomplete where the MVI sign is present.
    n_cap = _smooth_noise(rng, bshape, np.full(3, 0.8 * r) / sp)
    rim = np.exp(-0.5 * ((dist_mm - 1.0) / 0.8) ** 2) * (1 - tumour)
    missing = 0.1 + 0.6 * sg["incomplete_capsule"]  # fraction of the rim that is absent
    shell = rim > 0.3
    thr = float(np.quantile(n_cap[shell], missing)) if shell.any() else -np.inf
    capsule = rim * (n_cap > thr)

    # Peritumoral arterial enhancement (MVI sign): a wedge of enhancing liver next to the tumour.
    u = rng.standard_normal(3)
    u /= np.linalg.norm(u)
    cosang = ((bX - c[0]) * u[0] + (bY - c[1]) * u[1] + (bZ - c[2]) * u[2]) / np.maximum(rho * r, 1e-6)
    peri = (sg["peritumoral_enhancement"] * np.clip((cosang - 0.2) / 0.8, 0, 1)
            * np.exp(-np.maximum(dist_mm, 0) / 5.0) * (1 - tumour))
    tum_tex = _smooth_noise(rng, bshape, np.full(3, 4.0) / sp)

    tissue = 62.0 * (1 + 0.06 * tex)
    par = 100.0 * (1 + 0.05 * tex)
    phases = {}
    enh = ctr.art_timing * rng.uniform(0.9, 1.1)
    washout = 0.28 * rng.uniform(0.8, 1.2)
    for ph in ("art", "pv"):
        if ph == "art":
            vol = par + (175.0 * enh - par) * arteries + (108.0 - par) * veins * 0.5
            lesion_int = 100.0 * (1 + 0.45 * enh) * (1 + 0.12 * tum_tex)
            add = 45.0 * enh * peri * liver[box] + 10.0 * capsule
        else:
            vol = par + (165.0 - par) * veins + (125.0 - par) * arteries * 0.3
            lesion_int = 100.0 * (1 - washout) * (1 + 0.10 * tum_tex)
            add = 45.0 * capsule
        vol = tissue * (1 - liver) + vol * liver
        vb = vol[box] + add
        vol[box] = vb * (1 - lesion) + lesion_int * lesion
        phases[ph] = vol
    mask = np.zeros(shape, dtype=np.uint8)
    mask[box] = bmask

    # Centre effects: bias field, intensity scale, Rician noise; PV misregistration.
    out = {}
    for ph, vol in phases.items():
        coef = rng.normal(0, 1, 6) * ctr.bias
        xn, yn, zn = X / fov[2], Y / fov[1], Z / fov[0]
        bias = np.exp(coef[0] * xn + coef[1] * yn + coef[2] * zn + coef[3] * xn * yn + coef[4] * xn ** 2
                      + coef[5] * yn ** 2)
        v = vol * bias
        if ph == "pv":
            from scipy.ndimage import shift as nd_shift

            d = rng.standard_normal(3)
            d *= rng.uniform(0, ctr.pv_shift_mm) / np.linalg.norm(d)
            v = nd_shift(v, d / sp, order=1, mode="nearest")
        n1 = rng.normal(0, ctr.noise, shape)
        n2 = rng.normal(0, ctr.noise, shape)
        v = np.sqrt((v + n1) ** 2 + n2 ** 2) * ctr.scale
        out[ph] = np.clip(np.rint(v), 0, 32767).astype(np.int16)

    origin_off = rng.uniform(-20, 20, 3)
    origin = (-fov[::-1] / 2.0 + sp[::-1] / 2.0 + origin_off).tolist()  # x, y, z of voxel (0, 0, 0)
    signs = dict(sg, diameter_target_mm=round(truth["diameter_mm"], 2))
    return {"art": out["art"], "pv": out["pv"], "mask": mask, "origin": origin,
            "spacing": sp[::-1].tolist(), "grade": truth["grade"], "clinical": truth["clinical"], "signs": signs,
            "pv_own_grid": ctr.pv_own_grid, "pv_grid_rng": rng.uniform(-0.5, 0.5, 3)}


def _images(case: dict[str, Any]) -> tuple[Any, Any, Any]:
    sitk = _sitk()
    imgs = []
    for key in ("art", "pv", "mask"):
        img = sitk.GetImageFromArray(case[key])
        img.SetSpacing(case["spacing"])
        img.SetOrigin(case["origin"])
        imgs.append(img)
    art, pv, mask = imgs
    if case["pv_own_grid"]:
        # This centre stores PV on its own grid: finer in-plane spacing, shifted origin (the loader resamples).
        sp = np.array(case["spacing"]) * np.array([0.85, 0.85, 1.0])
        size = [int(math.ceil(n * s / t)) for n, s, t in zip(art.GetSize(), case["spacing"], sp, strict=True)]
        origin = (np.array(case["origin"]) + case["pv_grid_rng"] * sp).tolist()
        pv = sitk.Resample(pv, size, sitk.Transform(), sitk.sitkLinear, origin, sp.tolist(), art.GetDirection(),
                           0.0, sitk.sitkInt16)
    return art, pv, mask


# ------------------------------------------------------------------------------------------------- writing


def _write_case_dir(out_dir: Path, case_id: str, imgs: tuple[Any, Any, Any]) -> None:
    """Write the case into a hidden staging folder, then rename it into place: never a half-written case."""
    sitk = _sitk()
    final = out_dir / case_id
    stage = Path(tempfile.mkdtemp(prefix=f".{case_id}.", dir=out_dir))
    try:
        for img, suffix in zip(imgs, ("_0000", "_0001", "_mask"), strict=True):
            sitk.WriteImage(img, str(stage / f"{case_id}{suffix}.nii.gz"), True)
        os.chmod(stage, public_dir_mode())  # an ordinary folder once in place, not mkdtemp's 0700
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{case_id}.old.", dir=out_dir))
            os.replace(final, trash / case_id)
            os.replace(stage, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)




def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _generate_one(args: tuple[PlannedCase, int, float, str]) -> tuple[str, int, dict[str, float], dict[str, Any]]:
    pc, seed, strength, out_dir = args
    case = _render_case(pc, seed, strength)
    _write_case_dir(Path(out_dir), pc.case_id, _images(case))
    return pc.case_id, case["grade"], case["clinical"], case["signs"]


def generate_cohort(out_dir: str | os.PathLike[str], preset: str = "tiny", seed: int = 0, scale: float = 1.0,
                    progress: bool = True, strength: float = 1.0, workers: int = 1) -> Path:
    """Write a SYNTHETIC cohort: one folder per case (CASE_0000/0001/mask.nii.gz), clinical.csv, manifest.csv
    (case_id, centre, split, mvi, grade), cohort.json. Returns out_dir.

    A folder that already holds a finished cohort with the same parameters is returned as it is; an existing
    folder that is not a cmir synthetic cohort (non-empty, no cohort.json) is refused.
    """
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be >= 0, got {strength}")
    plan = cohort_plan(preset, seed, scale)
    out = Path(out_dir)
    params = {"format": "cmir-synthetic-cohort", "version": SYNTH_VERSION, "preset": preset, "seed": int(seed),
              "scale": float(scale), "strength": float(strength), "synthetic": True}
    meta_path = out / "cohort.json"
    marker = out / MARKER  # written first: an interrupted cohort is still recognised as ours on the next run
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder")
        if meta_path.is_file():
            try:
                old = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
            if old.get("params") == params and all((out / pc.case_id).is_dir() for pc in plan) \
                    and (out / "manifest.csv").is_file() and (out / "clinical.csv").is_file():
                return out
        elif not marker.is_file() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no synthetic cohort (cohort.json); refusing to write "
                             "into it")
    out.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(marker, json.dumps(params, sort_keys=True) + "\n")
    if meta_path.exists():
        meta_path.unlink()  # the cohort is unfinished until cohort.json is written again at the end
    # Case folders of an earlier cohort in this folder that the new plan does not have would linger: remove them
    # (only folders named in the old manifest, holding nothing but that case's files).
    new_ids = {pc.case_id for pc in plan}
    if (out / "manifest.csv").is_file():
        with open(out / "manifest.csv", encoding="utf-8", newline="") as f:
            old_ids = {r.get("case_id", "") for r in csv.DictReader(f)}
        for cid in sorted(old_ids - new_ids):
            d = out / cid
            if cid and d.is_dir() and not d.is_symlink() and all(
                    q.is_file() and q.name.startswith(f"{cid}_") for q in d.iterdir()):
                shutil.rmtree(d)
        (out / "manifest.csv").unlink()

    jobs = [(pc, int(seed), float(strength), str(out)) for pc in plan]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"synth {preset} (synthetic)", unit="case")
        except ImportError:
            bar = None
    results = []
    try:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for res in pool.imap(_generate_one, jobs):
                    results.append(res)
                    if bar is not None:
                        bar.update(1)
        else:
            for job in jobs:
                results.append(_generate_one(job))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    by_id = {r[0]: r for r in results}
    csv_cols = list(ClinicalSchema().csv_columns)
    man_rows, clin_rows, truth = [], [], {}
    for pc in plan:
        _, grade, clin, signs = by_id[pc.case_id]
        man_rows.append([pc.case_id, pc.centre, pc.split, pc.mvi, GRADES[grade]])
        clin_rows.append([pc.case_id] + [clin[c] for c in csv_cols])
        truth[pc.case_id] = signs
    _write_text_atomic(out / "clinical.csv", _csv_text(["case_id", *csv_cols], clin_rows))
    _write_text_atomic(out / "manifest.csv", _csv_text(["case_id", "centre", "split", "mvi", "grade"], man_rows))
    meta = {"params": params, "features": list(CLINICAL_FEATURES),
            "centres": {k: vars(v) for k, v in CENTRES.items()}, "signs": truth,
            "note": "SYNTHETIC phantoms for testing and demonstration; not clinical data"}
    _write_text_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out
