"""From one case's images to the model's inputs and back.

prepare_case(case, params) -> PreparedCase:
  1. read ART, PV, mask (SimpleITK); a mask or PV on another grid is resampled onto the ART grid (nearest for the
     mask, linear for PV) after checking that the two overlap in physical space;
  2. the tumour component: connected components of mask > 0.5, ranked by size (params.component = 1 is the largest);
  3. the axial slice k* of largest component area and its neighbours k*-1, k*+1 (clamped at the volume's ends) are
     the 3 channels ("axial" = the image's third voxel axis);
  4. the in-plane crop: the component's bounding box over all its slices + margin_mm on each side, made square in
     millimetres (the short side padded, or extended into the image with square="extend"), resampled bilinearly to
     S x S with square output pixels (aspect ratio kept);
  5. per phase: percentile clip and z-score, the statistics taken from the native voxels of the crop on the 3 slices
     and recorded in PreparedCase.stats.
The crop transform is kept (PreparedCase.roi), so place_back()/write_heatmap() put any S x S map back on the ART grid.
Arrays are indexed [k, j, i] (numpy order of SimpleITK images); an S x S map is [row, col] = [j, i] direction.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import dataclass_from_dict
from .errors import DataError, GeometryError, ImageReadError, MaskError
from .io import (
    CaseFiles,
    _sitk,
    format_extent,
    geometry,
    physical_extent,
    read_image,
    same_geometry,
    write_image_atomic,
)

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clip_percentiles"] = list(self.clip_percentiles)
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

    def metadata(self) -> dict[str, Any]:
        """Plain JSON-able description (no arrays): enough to place an S x S map back on the ART grid."""
        return {"case_id": self.case_id, "diameter_mm": self.diameter_mm, "stats": self.stats,
                "slices": list(self.slices), "roi": self.roi, "geometry": self.geometry, "info": self.info}


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


def prepare_images(case_id: str, art_img: Any, pv_img: Any, mask_img: Any,
                   params: PreprocessParams | None = None) -> PreparedCase:
    """prepare_case on images already read (SimpleITK images); see the module docstring."""
    params = params or PreprocessParams()
    info: dict[str, Any] = {"pv_resampled": False, "mask_resampled": False}
    if not same_geometry(mask_img, art_img):
        _check_overlap(art_img, mask_img, "ART", "mask", case_id)
        mask_img = _onto_grid(mask_img, art_img, nearest=True, default=0.0)
        info["mask_resampled"] = True
    if not same_geometry(pv_img, art_img):
        _check_overlap(art_img, pv_img, "ART", "PV", case_id)
        pv_img = _onto_grid(pv_img, art_img, nearest=False, default=float("nan"))  # NaN = not covered by PV
        info["pv_resampled"] = True
    art = _array(art_img)
    pv = _array(pv_img)
    mask = _array(mask_img)
    if not np.isfinite(art).all():
        raise ImageReadError(f"case {case_id!r}: ART contains NaN/inf voxels")
    if not info["pv_resampled"] and not np.isfinite(pv).all():
        raise ImageReadError(f"case {case_id!r}: PV contains NaN/inf voxels")
    if not np.isfinite(mask).all():
        raise MaskError(f"case {case_id!r}: mask contains NaN/inf voxels")
    binary = mask > 0.5
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
        roi=roi, geometry=geometry(art_img), art_slice=art[kc].astype(np.float32),
        mask_slice=binary[kc].astype(np.uint8), info=info)


def prepare_case(case: CaseFiles, params: PreprocessParams | None = None) -> PreparedCase:
    """Read a case's files and prepare the model inputs (see the module docstring). Errors name the case."""
    missing = case.missing()
    if missing:
        raise DataError(f"case {case.case_id!r}: missing {', '.join(m.upper() for m in missing)} input")
    art = read_image(case.art, case.art_series_uid, what=f"case {case.case_id!r} ART")  # type: ignore[arg-type]
    pv = read_image(case.pv, case.pv_series_uid, what=f"case {case.case_id!r} PV")  # type: ignore[arg-type]
    mask = read_image(case.mask, what=f"case {case.case_id!r} mask")  # type: ignore[arg-type]
    return prepare_images(case.case_id, art, pv, mask, params)


def place_back(prepared: PreparedCase, heatmap: np.ndarray) -> np.ndarray:
    """An S x S map placed on the ART grid: float32 [k, j, i], bilinear, zero outside the ROI and its slices."""
    hm = np.asarray(heatmap, dtype=np.float64)
    while hm.ndim > 2 and hm.shape[0] == 1:
        hm = hm[0]
    s = int(prepared.roi["size"])
    if hm.shape != (s, s):
        raise DataError(f"case {prepared.case_id!r}: heatmap must be [{s}, {s}], got {tuple(np.shape(heatmap))}")
    if not np.isfinite(hm).all():
        raise DataError(f"case {prepared.case_id!r}: heatmap contains NaN/inf")
    ni, nj, nk = prepared.geometry["size"]
    roi = prepared.roi
    jj, ii = np.meshgrid(np.arange(nj, dtype=np.float64), np.arange(ni, dtype=np.float64), indexing="ij")
    rr = (jj - roi["centre_j"]) / roi["step_j"] + s / 2.0 - 0.5
    cc = (ii - roi["centre_i"]) / roi["step_i"] + s / 2.0 - 0.5
    plane = np.nan_to_num(_sample(hm, rr, cc), nan=0.0)
    vol = np.zeros((nk, nj, ni), dtype=np.float32)
    for k in set(prepared.slices):
        vol[k] = plane
    return vol


def _image_from(vol: np.ndarray, geom: dict[str, Any]) -> Any:
    sitk = _sitk()
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(geom["spacing"])
    img.SetOrigin(geom["origin"])
    img.SetDirection(geom["direction"])
    return img


def _save_figure_atomic(fig: Any, path: Path, dpi: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    vol = place_back(prepared, heatmap)
    if nii_path is not None:
        write_image_atomic(_image_from(vol, prepared.geometry), nii_path)
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
