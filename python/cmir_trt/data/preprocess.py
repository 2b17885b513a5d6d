"""From one case's images to the model's inputs and back.

prepare_case(case, params) -> PreparedCase:
  0. read ART, PV, mask (SimpleITK; files verified against their headers, DICOM series checked to be one regular
     volume) and bring each to the canonical orientation (data.orient: exact axis permutation/flip, slice axis
     closest to superior-inferior); the tumour is the mask's one non-zero label, or params.mask_label;
  1. a mask or PV on another grid is resampled onto the ART grid (nearest for the mask, linear for PV) after
     checking that the two overlap in physical space;
  2. the tumour component: connected components of the tumour voxels, ranked by size (params.component = 1 is the
     largest);
  3. the axial slice k* of largest component area and its neighbours k*-1, k*+1 (clamped at the volume's ends) are
     the 3 channels ("axial" = the canonical grid's third voxel axis); NaN/inf voxels where the crop samples ART or
     PV are refused;
  4. the in-plane crop: the component's bounding box over all its slices + margin_mm on each side, made square in
     millimetres (the short side padded, or extended into the image with square="extend"), resampled bilinearly to
     S x S with square output pixels (aspect ratio kept);
  5. per phase: percentile clip and z-score, the statistics taken from the native voxels of the crop on the 3 slices
     and recorded in PreparedCase.stats.
The crop transform is kept (PreparedCase.roi), so place_back()/write_heatmap() put any S x S map back on the ART grid
as stored (the canonical orientation undone exactly).
Arrays are indexed [k, j, i] (numpy order of SimpleITK images); an S x S map is [row, col] = [j, i] direction.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_via, dataclass_from_dict
from .errors import DataError, GeometryError, ImageReadError, MaskError
from .io import (
    CaseFiles,
    _check_volume,
    _sitk,
    damaged_dicom_files,
    damaged_message,
    format_extent,
    geometry,
    physical_extent,
    read_dicom_files,
    read_image,
    same_geometry,
    write_image_atomic,
)
from .orient import Reorientation, canonical, to_stored

PREPROCESS_VERSION = 1  # bump when the arrays prepare_case produces change for the same params
SQUARE_MODES = ("pad", "extend")


@dataclass(frozen=True)
class PreprocessParams:
    image_size: int = 128                        # S: the model's input size
    margin_mm: float = 10.0                      # added around the tumour's bounding box on each side
    clip_percentiles: tuple[float, float] = (0.5, 99.5)  # intensity clip before the z-score, per phase
    component: int = 1                           # 1 = largest connected tumour component, 2 = second, ...
    square: str = "pad"                          # "pad": constant outside the crop; "extend": image content
    min_roi_mm: float = 0.0                      # lower bound of the square's side (tiny tumours)
    fully_connected: bool = False                # component connectivity: faces (False) or faces+edges+corners
    mask_label: int | None = None                # the tumour's label in a multi-label mask (None: one label only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_percentiles", tuple(float(x) for x in self.clip_percentiles))
        lo, hi = self.clip_percentiles
        if not (isinstance(self.image_size, int) and self.image_size >= 8):
            raise ValueError(f"image_size must be an int >= 8, got {self.image_size!r}")
        if not (math.isfinite(self.margin_mm) and self.margin_mm >= 0):
            raise ValueError(f"margin_mm must be >= 0, got {self.margin_mm}")
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"clip_percentiles must satisfy 0 <= lo < hi <= 100, got {self.clip_percentiles}")
        if not (isinstance(self.component, int) and self.component >= 1):
            raise ValueError(f"component must be an int >= 1 (1 = largest), got {self.component!r}")
        if self.square not in SQUARE_MODES:
            raise ValueError(f"square must be one of {SQUARE_MODES}, got {self.square!r}")
        if not (math.isfinite(self.min_roi_mm) and self.min_roi_mm >= 0):
            raise ValueError(f"min_roi_mm must be >= 0, got {self.min_roi_mm}")
        if self.mask_label is not None and not (isinstance(self.mask_label, int) and self.mask_label >= 1):
            raise ValueError(f"mask_label must be an int >= 1 (the tumour's label), got {self.mask_label!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clip_percentiles"] = list(self.clip_percentiles)
        if d["mask_label"] is None:  # absent = default: params stored before the field existed read back equal
            del d["mask_label"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessParams:
        return dataclass_from_dict(cls, d)

    def key(self) -> str:
        """Canonical JSON of the params and PREPROCESS_VERSION (for cache keys)."""
        return json.dumps({"version": PREPROCESS_VERSION, **self.to_dict()}, sort_keys=True)


@dataclass
class PreparedCase:
    case_id: str
    art: np.ndarray            # float32 [3, S, S], normalised
    pv: np.ndarray             # float32 [3, S, S], normalised, from PV on the ART grid
    mask: np.ndarray           # uint8 [3, S, S]: the selected tumour component in the ROI
    diameter_mm: float         # largest axial diameter of the selected component (max Feret over its slices)
    stats: dict[str, dict[str, float]]   # per phase: p_lo, p_hi, mean, std (+ percentiles used)
    slices: tuple[int, int, int]         # ART k indices of the 3 channels
    roi: dict[str, float]      # crop transform: centre_i, centre_j (voxel index), step_i, step_j (voxels/pixel), size
    geometry: dict[str, Any]   # ART size/spacing/origin/direction
    art_slice: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.float32))
    mask_slice: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.uint8))
    info: dict[str, Any] = field(default_factory=dict)  # components found, voxels, PV resampled, ...
    # `geometry` is the ART image as stored; `slices`, `roi`, `art_slice` and `mask_slice` refer to the canonical
    # grid (data.orient), which is the stored one unless info["reoriented"].
    canonical_geometry: dict[str, Any] | None = None
    orientation: Reorientation = field(default_factory=lambda: Reorientation((0, 1, 2), (False, False, False)))

    def metadata(self) -> dict[str, Any]:
        """Plain JSON-able description (no arrays): enough to place an S x S map back on the ART grid."""
        return {"case_id": self.case_id, "diameter_mm": self.diameter_mm, "stats": self.stats,
                "slices": list(self.slices), "roi": self.roi, "geometry": self.geometry,
                "canonical_geometry": self.canonical_geometry or self.geometry,
                "orientation": self.orientation.to_dict(), "info": self.info}


def _check_overlap(ref: Any, other: Any, ref_name: str, other_name: str, case_id: str) -> None:
    lo_a, hi_a = physical_extent(ref)
    lo_b, hi_b = physical_extent(other)
    if np.any(np.minimum(hi_a, hi_b) <= np.maximum(lo_a, lo_b)):
        raise GeometryError(f"case {case_id!r}: {other_name} does not overlap {ref_name} in physical space "
                            f"({ref_name} extent {format_extent(lo_a, hi_a)}, "
                            f"{other_name} extent {format_extent(lo_b, hi_b)})")


def resample_onto(image: Any, reference: Any, mask: bool = False, what: str = "image",
                  case_id: str = "?") -> Any:
    """`image` on the grid of `reference` (float64): nearest neighbour for masks (outside = 0), linear for images
    (outside = NaN). Refuses (GeometryError with both extents) when the two do not overlap in physical space."""
    if same_geometry(image, reference):
        return _sitk().Cast(image, _sitk().sitkFloat64)
    _check_overlap(reference, image, "ART", what, case_id)
    return _onto_grid(image, reference, nearest=mask, default=0.0 if mask else float("nan"))


def _onto_grid(img: Any, ref: Any, nearest: bool, default: float) -> Any:
    sitk = _sitk()
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(sitk.Cast(img, sitk.sitkFloat64), ref, sitk.Transform(), interp, default, sitk.sitkFloat64)


def _array(img: Any) -> np.ndarray:
    # float32 halves the memory of full-size clinical volumes; MRI intensities (int16/uint16) are exact in it.
    sitk = _sitk()
    return sitk.GetArrayFromImage(sitk.Cast(img, sitk.sitkFloat32))


def _feret_diameter(comp: np.ndarray, sp_i: float, sp_j: float) -> float:
    """Largest in-plane distance (mm) across the component's pixel squares, over all its slices.

    The farthest two points of a union of squares are two of their corners, so corners of boundary pixels suffice.
    """
    best = 0.0
    for k in np.flatnonzero(comp.any(axis=(1, 2))):
        sl = comp[k]
        inner = sl.copy()
        inner[1:, :] &= sl[:-1, :]
        inner[:-1, :] &= sl[1:, :]
        inner[:, 1:] &= sl[:, :-1]
        inner[:, :-1] &= sl[:, 1:]
        jj, ii = np.nonzero(sl & ~inner)
        pts = np.concatenate([np.stack([(ii + di) * sp_i, (jj + dj) * sp_j], 1)
                              for di in (-0.5, 0.5) for dj in (-0.5, 0.5)])
        pts = np.unique(pts, axis=0)
        if len(pts) > 3000:  # keep the O(n^2) step small: only convex-hull points can be farthest apart
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(np.sqrt(d2.max())))
    return best


def _sample(plane: np.ndarray, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """Bilinear samples of a 2-D array at (row, col); NaN outside the pixel extents [-0.5, n-0.5]."""
    from scipy.ndimage import map_coordinates

    out = map_coordinates(plane, [rr, cc], order=1, mode="nearest")
    outside = (rr < -0.5) | (rr > plane.shape[0] - 0.5) | (cc < -0.5) | (cc > plane.shape[1] - 0.5)
    out[outside] = np.nan
    return out


def roi_grid(roi: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Native (j, i) voxel coordinates of the centres of the S x S output pixels, each [S, S]."""
    s = int(roi["size"])
    t = np.arange(s, dtype=np.float64) + 0.5 - s / 2.0
    jj = roi["centre_j"] + t[:, None] * roi["step_j"] + 0.0 * t[None, :]
    ii = roi["centre_i"] + t[None, :] * roi["step_i"] + 0.0 * t[:, None]
    return jj, ii


def _mask_labels(mask: np.ndarray, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(non-zero labels, voxel counts) of a mask array; refuses NaN/inf and non-integer values."""
    if not np.isfinite(mask).all():
        raise MaskError(f"case {case_id!r}: mask contains {int((~np.isfinite(mask)).sum())} NaN/inf voxels")
    vals, counts = np.unique(mask[mask != 0], return_counts=True)
    frac = vals[vals != np.round(vals)]
    if frac.size:
        raise MaskError(f"case {case_id!r}: mask holds non-integer values (e.g. {frac[0]:g}); a label image "
                        "(0 = background, integer labels) is required, not a probability map")
    return vals, counts


def _tumour_mask(mask: np.ndarray, params: PreprocessParams, case_id: str) -> np.ndarray:
    """The tumour voxels of a label mask: its one non-zero label, or params.mask_label when it has several."""
    vals, counts = _mask_labels(mask, case_id)
    found = ", ".join(f"label {int(v)}: {int(n)} voxels" for v, n in zip(vals, counts, strict=True))
    if params.mask_label is None:
        if len(vals) > 1:
            raise MaskError(f"case {case_id!r}: the mask has {len(vals)} labels ({found}); pick the tumour's label "
                            "with --mask-label N")
        return mask != 0
    if params.mask_label not in vals.astype(np.int64):
        raise MaskError(f"case {case_id!r}: the mask has no voxel with the tumour label {params.mask_label} "
                        f"({found or 'no labels: the mask is empty'})")
    return mask == params.mask_label


def _image_like(arr: np.ndarray, like: Any) -> Any:
    img = _sitk().GetImageFromArray(arr)
    img.CopyInformation(like)
    return img


def _check_region(bad: np.ndarray | None, ks: list[int], jj: np.ndarray, ii: np.ndarray, phase: str,
                  case_id: str) -> None:
    """Refuse non-finite voxels of a phase where the crop samples it (the channel slices, the ROI +1 voxel)."""
    if bad is None or not bad.any():
        return
    nk, nj, ni = bad.shape
    r0, r1 = max(int(np.floor(jj.min())) - 1, 0), min(int(np.ceil(jj.max())) + 1, nj - 1)
    c0, c1 = max(int(np.floor(ii.min())) - 1, 0), min(int(np.ceil(ii.max())) + 1, ni - 1)
    n = int(bad[ks, r0:r1 + 1, c0:c1 + 1].sum())
    if n:
        raise ImageReadError(f"case {case_id!r}: {phase} has {n} non-finite (NaN/inf) voxel(s) inside the tumour ROI "
                             f"(slices {ks}); refusing to predict on them")


def prepare_images(case_id: str, art_img: Any, pv_img: Any, mask_img: Any,
                   params: PreprocessParams | None = None) -> PreparedCase:
    """prepare_case on images already read (SimpleITK images); see the module docstring."""
    params = params or PreprocessParams()
    for name, img in (("ART", art_img), ("PV", pv_img), ("mask", mask_img)):
        _check_volume(img, f"case {case_id!r} {name}")
    stored = geometry(art_img)
    # One anatomical orientation for all three (exact axis permutation/flip, no resampling): the slice axis is
    # the one closest to superior-inferior, whatever the storage order.
    art_img, orient = canonical(art_img)
    pv_img, pv_orient = canonical(pv_img)
    mask_img, mask_orient = canonical(mask_img)
    info: dict[str, Any] = {"pv_resampled": False, "mask_resampled": False, "reoriented": not orient.identity}
    if not pv_orient.identity or not mask_orient.identity:
        info["reoriented_inputs"] = [n for n, o in (("PV", pv_orient), ("mask", mask_orient)) if not o.identity]

    # The tumour label is chosen on the mask's own grid (exact labels), then the binary mask goes onto ART's grid.
    tumour = _tumour_mask(_array(mask_img), params, case_id).astype(np.uint8)
    if not tumour.any():
        raise MaskError(f"case {case_id!r}: the tumour mask is empty")
    mask_img = _image_like(tumour, mask_img)
    if not same_geometry(mask_img, art_img):
        _check_overlap(art_img, mask_img, "ART", "mask", case_id)
        mask_img = _onto_grid(mask_img, art_img, nearest=True, default=0.0)
        info["mask_resampled"] = True

    pv_bad: np.ndarray | None = None
    pv_raw = _array(pv_img)
    pv_nonfinite = ~np.isfinite(pv_raw)
    if not same_geometry(pv_img, art_img):
        _check_overlap(art_img, pv_img, "ART", "PV", case_id)
        if pv_nonfinite.any():  # follow PV's own bad voxels onto the ART grid; NaN there means "not covered"
            bad_img = _onto_grid(_image_like(pv_nonfinite.astype(np.float32), pv_img), art_img, nearest=False,
                                 default=0.0)
            pv_bad = _sitk().GetArrayFromImage(bad_img) > 0
            pv_img = _image_like(np.where(pv_nonfinite, 0.0, pv_raw).astype(np.float32), pv_img)
        pv_img = _onto_grid(pv_img, art_img, nearest=False, default=float("nan"))  # NaN = not covered by PV
        info["pv_resampled"] = True
        pv = _array(pv_img)
    else:
        pv, pv_bad = pv_raw, pv_nonfinite
    art = _array(art_img)
    art_bad = ~np.isfinite(art)
    binary = _array(mask_img) > 0.5
    if not binary.any():
        raise MaskError(f"case {case_id!r}: the tumour mask is empty (no voxel > 0.5 on the ART grid)")

    sitk = _sitk()
    mimg = sitk.GetImageFromArray(binary.astype(np.uint8))
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mimg, params.fully_connected), sortByObjectSize=True)
    labels = sitk.GetArrayViewFromImage(cc)
    n_comp = int(labels.max())
    if params.component > n_comp:
        raise MaskError(f"case {case_id!r}: component {params.component} requested but the mask has only "
                        f"{n_comp} connected component(s)")
    comp = labels == params.component
    info.update(components=n_comp, component=params.component, component_voxels=int(comp.sum()))

    nk, nj, ni = art.shape
    area = comp.sum(axis=(1, 2))
    kc = int(np.argmax(area))
    slices = tuple(int(min(max(k, 0), nk - 1)) for k in (kc - 1, kc, kc + 1))

    sp_i, sp_j = float(art_img.GetSpacing()[0]), float(art_img.GetSpacing()[1])
    js, is_ = np.nonzero(comp.any(axis=0))
    mi, mj = params.margin_mm / sp_i, params.margin_mm / sp_j
    i0, i1 = is_.min() - 0.5 - mi, is_.max() + 0.5 + mi
    j0, j1 = js.min() - 0.5 - mj, js.max() + 0.5 + mj
    side = max((i1 - i0) * sp_i, (j1 - j0) * sp_j, params.min_roi_mm)
    s = params.image_size
    roi = {"centre_i": (i0 + i1) / 2, "centre_j": (j0 + j1) / 2, "step_i": side / s / sp_i,
           "step_j": side / s / sp_j, "size": s, "side_mm": side, "i0": i0, "i1": i1, "j0": j0, "j1": j1}
    jj, ii = roi_grid(roi)
    if params.square == "pad":
        in_rect = (ii >= i0) & (ii <= i1) & (jj >= j0) & (jj <= j1)
    else:
        in_rect = np.ones_like(ii, dtype=bool)

    # Native voxels of the crop on the channel slices give the intensity statistics.
    ks = sorted(set(slices))
    _check_region(art_bad, ks, jj, ii, "ART", case_id)
    _check_region(pv_bad, ks, jj, ii, "PV", case_id)
    ra = (max(int(math.ceil(j0)), 0), min(int(math.floor(j1)), nj - 1) + 1)
    ca = (max(int(math.ceil(i0)), 0), min(int(math.floor(i1)), ni - 1) + 1)
    stats: dict[str, dict[str, float]] = {}
    out: dict[str, np.ndarray] = {}
    for name, vol in (("art", art), ("pv", pv)):
        vals = vol[ks, ra[0]:ra[1], ca[0]:ca[1]].ravel().astype(np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size < 4:
            raise GeometryError(f"case {case_id!r}: {name.upper()} has no data in the tumour ROI "
                                f"(the phase does not cover the tumour)")
        p_lo, p_hi = (float(x) for x in np.percentile(vals, params.clip_percentiles))
        clipped = np.clip(vals, p_lo, p_hi)
        mean, std = float(clipped.mean()), float(clipped.std())
        if not std > 1e-6 * max(1.0, abs(mean)):
            raise DataError(f"case {case_id!r}: {name.upper()} is constant in the tumour ROI (value {mean:g}); "
                            "cannot normalise")
        stats[name] = {"p_lo": p_lo, "p_hi": p_hi, "mean": mean, "std": std, "percentiles":
                       list(params.clip_percentiles), "voxels": int(vals.size)}
        pad = (p_lo - mean) / std
        chans = []
        for k in slices:
            v = _sample(vol[k].astype(np.float64), jj, ii)
            v = (np.clip(v, p_lo, p_hi) - mean) / std
            v[~in_rect | ~np.isfinite(v)] = pad
            chans.append(v)
        out[name] = np.stack(chans).astype(np.float32)
    roi_mask = []
    for k in slices:
        m = _sample(comp[k].astype(np.float64), jj, ii)
        roi_mask.append(np.nan_to_num(m, nan=0.0) >= 0.5)
    return PreparedCase(
        case_id=case_id, art=out["art"], pv=out["pv"], mask=np.stack(roi_mask).astype(np.uint8),
        diameter_mm=_feret_diameter(comp, sp_i, sp_j), stats=stats, slices=slices,  # type: ignore[arg-type]
        roi=roi, geometry=stored, art_slice=art[kc].astype(np.float32),
        mask_slice=binary[kc].astype(np.uint8), info=info, canonical_geometry=geometry(art_img), orientation=orient)


def read_case_images(case: CaseFiles, series_rules: Any = None, seg_segment: int | str | None = None
                     ) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(ART, PV, mask) SimpleITK images of a case and a description of where they came from (for a DICOM study:
    the picked series and why, and the SEG the mask came from). A study without a mask file takes its mask from its
    one DICOM SEG that references the ART series (cmir_trt.dicom, the `dicom` extra): segment `seg_segment` (a
    number or a label), by default the only segment or the one labelled as the tumour. Errors name the case."""
    missing = case.missing()
    if missing:
        raise DataError(f"case {case.case_id!r}: missing {', '.join(m.upper() for m in missing)} input")
    source: dict[str, Any] = {}
    if case.study is not None:
        from .series import select_phases

        overrides = {k: v for k, v in (("art", case.art_series_uid), ("pv", case.pv_series_uid)) if v}
        sel = select_phases(case.study, series_rules, overrides=overrides, case_id=case.case_id)
        damaged = damaged_dicom_files(case.study)
        if damaged:
            raise ImageReadError(damaged_message(f"case {case.case_id!r}", case.study, damaged))
        art = read_dicom_files(sel.art.files, f"case {case.case_id!r} ART", f"series {sel.art.series_uid}")
        pv = read_dicom_files(sel.pv.files, f"case {case.case_id!r} PV", f"series {sel.pv.series_uid}")
        source = {"study": str(case.study), "selection": sel,
                  **{f"{ph}_series": {"series_uid": getattr(sel, ph).series_uid, "description":
                                      getattr(sel, ph).description, "rule": sel.reasons[ph]} for ph in ("art", "pv")}}
        if case.mask is None:
            mask, source["mask_seg"] = _study_seg_mask(case, art, sel.art.series_uid, seg_segment)
            return art, pv, mask, source
    else:
        art = read_image(case.art, case.art_series_uid, what=f"case {case.case_id!r} ART")  # type: ignore[arg-type]
        pv = read_image(case.pv, case.pv_series_uid, what=f"case {case.case_id!r} PV")  # type: ignore[arg-type]
    mask = read_image(case.mask, what=f"case {case.case_id!r} mask")  # type: ignore[arg-type]
    return art, pv, mask, source


def _study_seg_mask(case: CaseFiles, art: Any, art_series_uid: str, segment: int | str | None
                    ) -> tuple[Any, dict[str, Any]]:
    """The mask of a study without a mask file: its SEG on ART (the dicom extra, imported only here)."""
    try:
        from ..dicom.case import study_seg_mask
    except ImportError as exc:
        raise DataError(f"case {case.case_id!r}: no mask file ({case.case_id}_mask.<ext>) and reading the mask from "
                        f"the study's DICOM SEG needs the dicom extra: pip install 'cmir_trt[dicom]' ({exc})") from exc
    assert case.study is not None
    mask, seg_file, seg_no = study_seg_mask(case.study, art, art_series_uid, segment, case.case_id)
    return mask, {"file": str(seg_file), "segment_number": int(seg_no)}


def prepare_case(case: CaseFiles, params: PreprocessParams | None = None, series_rules: Any = None,
                 seg_segment: int | str | None = None) -> PreparedCase:
    """Read a case's files and prepare the model inputs (see the module docstring). Errors name the case.
    `series_rules`: the phase rules for DICOM study folders (data.series.load_rules; None = shipped defaults);
    `seg_segment`: the SEG segment of a study without a mask file (read_case_images)."""
    art, pv, mask, source = read_case_images(case, series_rules, seg_segment)
    prep = prepare_images(case.case_id, art, pv, mask, params)
    if source:
        prep.info.update({k: v for k, v in source.items() if k != "selection"})
    return prep


def _place_canonical(prepared: PreparedCase, heatmap: np.ndarray) -> np.ndarray:
    hm = np.asarray(heatmap, dtype=np.float64)
    while hm.ndim > 2 and hm.shape[0] == 1:
        hm = hm[0]
    s = int(prepared.roi["size"])
    if hm.shape != (s, s):
        raise DataError(f"case {prepared.case_id!r}: heatmap must be [{s}, {s}], got {tuple(np.shape(heatmap))}")
    if not np.isfinite(hm).all():
        raise DataError(f"case {prepared.case_id!r}: heatmap contains NaN/inf")
    ni, nj, nk = (prepared.canonical_geometry or prepared.geometry)["size"]
    roi = prepared.roi
    jj, ii = np.meshgrid(np.arange(nj, dtype=np.float64), np.arange(ni, dtype=np.float64), indexing="ij")
    rr = (jj - roi["centre_j"]) / roi["step_j"] + s / 2.0 - 0.5
    cc = (ii - roi["centre_i"]) / roi["step_i"] + s / 2.0 - 0.5
    plane = np.nan_to_num(_sample(hm, rr, cc), nan=0.0)
    vol = np.zeros((nk, nj, ni), dtype=np.float32)
    for k in set(prepared.slices):
        vol[k] = plane
    return vol


def place_back(prepared: PreparedCase, heatmap: np.ndarray) -> np.ndarray:
    """An S x S map placed on the ART grid as stored: float32 [k, j, i], bilinear, zero outside the ROI and its
    slices."""
    return to_stored(_place_canonical(prepared, heatmap), prepared.orientation)


def heatmap_image(prepared: PreparedCase, heatmap: np.ndarray) -> Any:
    """place_back as a SimpleITK image with the stored ART image's exact size, spacing, origin and direction."""
    return _image_from(place_back(prepared, heatmap), prepared.geometry)


def _image_from(vol: np.ndarray, geom: dict[str, Any]) -> Any:
    sitk = _sitk()
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(geom["spacing"])
    img.SetOrigin(geom["origin"])
    img.SetDirection(geom["direction"])
    return img


def _save_figure_atomic(fig: Any, path: Path, dpi: int = 100) -> None:
    atomic_write_via(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), suffix=".png")


def _figure(w: float, h: float) -> Any:
    # Figure + Agg canvas directly: no pyplot global state, works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def write_heatmap(prepared: PreparedCase, heatmap: np.ndarray, nii_path: str | os.PathLike[str] | None,
                  png_path: str | os.PathLike[str] | None = None, title: str | None = None) -> None:
    """The heatmap on the ART grid as NIfTI (exact ART size/spacing/origin/direction) and a PNG overlay of the ART
    slice with the heatmap and the mask contour. Both written atomically; nothing is written if the map is bad."""
    vol = _place_canonical(prepared, heatmap)
    if nii_path is not None:
        write_image_atomic(_image_from(to_stored(vol, prepared.orientation), prepared.geometry), nii_path)
    if png_path is None:
        return
    kc = prepared.slices[1]
    art = prepared.art_slice
    st = prepared.stats["art"]
    fig = _figure(10, 5)
    roi = prepared.roi
    box_i = [roi["centre_i"] - roi["side_mm"] / 2 / prepared.geometry["spacing"][0] * 1.0,
             roi["centre_i"] + roi["side_mm"] / 2 / prepared.geometry["spacing"][0]]
    box_j = [roi["centre_j"] - roi["side_mm"] / 2 / prepared.geometry["spacing"][1],
             roi["centre_j"] + roi["side_mm"] / 2 / prepared.geometry["spacing"][1]]
    for n, zoom in enumerate((False, True)):
        ax = fig.add_subplot(1, 2, n + 1)
        ax.imshow(art, cmap="gray", vmin=st["p_lo"], vmax=st["p_hi"], interpolation="nearest")
        hm = np.ma.masked_less_equal(vol[kc], 1e-3)
        ax.imshow(hm, cmap="jet", alpha=0.45, vmin=0.0, vmax=max(1.0, float(vol.max())), interpolation="bilinear")
        if prepared.mask_slice.any():
            ax.contour(prepared.mask_slice, levels=[0.5], colors="red", linewidths=1.0)
        if zoom:
            ax.set_xlim(box_i[0], box_i[1])
            ax.set_ylim(box_j[1], box_j[0])
        else:
            ax.plot([box_i[0], box_i[1], box_i[1], box_i[0], box_i[0]],
                    [box_j[0], box_j[0], box_j[1], box_j[1], box_j[0]], color="yellow", lw=0.8)
        ax.set_axis_off()
        ax.set_title(("ROI" if zoom else f"ART slice k={kc}"), fontsize=9)
    fig.suptitle(title or f"{prepared.case_id}: heatmap (research use only)", fontsize=10)
    _save_figure_atomic(fig, Path(png_path))


def write_channels_png(prepared: PreparedCase, png_path: str | os.PathLike[str], title: str | None = None) -> None:
    """A 2 x 3 grid of what the model sees: ART and PV channels (k-1, k, k+1), with the ROI mask contour."""
    fig = _figure(9, 6.4)
    for r, name in enumerate(("art", "pv")):
        arr = getattr(prepared, name)
        for c in range(3):
            ax = fig.add_subplot(2, 3, r * 3 + c + 1)
            ax.imshow(arr[c], cmap="gray", interpolation="nearest")
            if prepared.mask[c].any():
                ax.contour(prepared.mask[c], levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{name.upper()} k={prepared.slices[c]}", fontsize=9)
            ax.set_axis_off()
    fig.suptitle(title or f"{prepared.case_id}: model input (z-scored), diameter {prepared.diameter_mm:.1f} mm",
                 fontsize=10)
    _save_figure_atomic(fig, Path(png_path))
