"""A tumour mask from a DICOM SEG: one segment (picked by label or number) as a SimpleITK image on the ART grid.

The SEG must reference the ART series (Referenced Series Sequence); a SEG made on another series, or a segment that
does not exist, is refused with one line naming the file and what it holds. Frames that lie exactly on ART slices
(the usual case: a SEG drawn on the ART series) are placed voxel for voxel; any other regular stack of frames is
turned into a volume and resampled onto ART with nearest neighbour, like a NIfTI mask on another grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.errors import DataError, MaskError
from ._common import SEGMENTATION_STORAGE, read_dataset

DEFAULT_LABELS = ("tumor", "tumour", "lesion", "hcc", "neoplasm")


@dataclass(frozen=True)
class Segment:
    number: int
    label: str
    property_type: str  # the Segmented Property Type's code meaning ("" if absent)


def segments(ds: Any) -> list[Segment]:
    """The segments a SEG dataset describes."""
    out = []
    for item in getattr(ds, "SegmentSequence", []):
        ptype = ""
        seq = getattr(item, "SegmentedPropertyTypeCodeSequence", None)
        if seq:
            ptype = str(getattr(seq[0], "CodeMeaning", ""))
        out.append(Segment(int(item.SegmentNumber), str(getattr(item, "SegmentLabel", "")), ptype))
    return out


def referenced_series(ds: Any) -> list[str]:
    """Series Instance UIDs the SEG says it was made on (Referenced Series Sequence, else Source Image Sequences)."""
    uids = [str(s.SeriesInstanceUID) for s in getattr(ds, "ReferencedSeriesSequence", [])
            if "SeriesInstanceUID" in s]
    return list(dict.fromkeys(uids))


def pick_segment(ds: Any, segment: int | str | None, where: str) -> Segment:
    """The segment asked for: a number, a label (case-insensitive; also matches the property type), or None = the
    only segment, else the one labelled like a tumour (DEFAULT_LABELS)."""
    segs = segments(ds)
    listing = ", ".join(f"{s.number} {s.label!r}" for s in segs) or "none"
    if not segs:
        raise MaskError(f"{where}: the SEG describes no segments")
    if isinstance(segment, int) or (isinstance(segment, str) and segment.strip().isdigit()):
        n = int(segment)
        for s in segs:
            if s.number == n:
                return s
        raise MaskError(f"{where}: no segment number {n} (segments: {listing})")
    if segment is not None:
        want = segment.strip().lower()
        hits = [s for s in segs if s.label.lower() == want] or [s for s in segs if s.property_type.lower() == want]
        if len(hits) == 1:
            return hits[0]
        problem = "several segments" if hits else "no segment"
        raise MaskError(f"{where}: {problem} labelled {segment!r} (segments: {listing}); pick one by number")
    if len(segs) == 1:
        return segs[0]
    for name in DEFAULT_LABELS:
        hits = [s for s in segs if s.label.lower() == name or s.property_type.lower() == name]
        if len(hits) == 1:
            return hits[0]
    raise MaskError(f"{where}: {len(segs)} segments and none labelled as the tumour ({listing}); pick one by "
                    "label or number")


def _frame_geometry(ds: Any, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position, orientation [6], pixel spacing [row, col]) of frame f from the functional groups."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = ds.PerFrameFunctionalGroupsSequence[f]

    def get(seq_name: str, attr: str) -> Any:
        for grp in (per, shared):
            if grp is not None and seq_name in grp and attr in grp[seq_name][0]:
                return grp[seq_name][0][attr].value
        raise MaskError(f"SEG frame {f + 1}: no {attr} in {seq_name}")

    pos = np.array([float(x) for x in get("PlanePositionSequence", "ImagePositionPatient")])
    iop = np.array([float(x) for x in get("PlaneOrientationSequence", "ImageOrientationPatient")])
    ps = np.array([float(x) for x in get("PixelMeasuresSequence", "PixelSpacing")])
    return pos, iop, ps


def _frame_segment(ds: Any, f: int) -> int:
    per = ds.PerFrameFunctionalGroupsSequence[f]
    if "SegmentIdentificationSequence" in per:
        return int(per.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    shared = ds.SharedFunctionalGroupsSequence[0]
    return int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def _frames(ds: Any, where: str) -> np.ndarray:
    """All frames as float in [0, 1] (binary 0/1, fractional scaled by MaximumFractionalValue): [frames, rows, cols]."""
    try:
        px = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken pixel data
        msg = f"{where}: cannot decode the SEG pixel data: {type(exc).__name__}: {exc}"
        raise MaskError(msg.splitlines()[0]) from exc
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    px = px.reshape(n, int(ds.Rows), int(ds.Columns)).astype(np.float64)
    if str(getattr(ds, "SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        px /= float(getattr(ds, "MaximumFractionalValue", 255) or 255)
    return px


def seg_mask(seg: str | os.PathLike[str] | Any, art_image: Any, art_series_uid: str | None = None,
             segment: int | str | None = None, case_id: str = "?") -> Any:
    """One SEG segment as a uint8 SimpleITK image (1 = tumour) on the grid of `art_image`.

    seg: a path or a pydicom Dataset; art_series_uid: the ART series the SEG must reference (None: not checked).
    Raises MaskError/DataError with one line naming the case, the file and the problem."""
    import SimpleITK as sitk

    path = seg if isinstance(seg, (str, os.PathLike)) else getattr(seg, "filename", None) or "SEG"
    where = f"case {case_id!r} SEG {Path(str(path)).name}"
    ds = read_dataset(seg, what=where) if isinstance(seg, (str, os.PathLike)) else seg
    if str(getattr(ds, "SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise DataError(f"{where}: not a Segmentation object (SOP Class {getattr(ds, 'SOPClassUID', 'missing')})")
    if art_series_uid is not None:
        refs = referenced_series(ds)
        if art_series_uid not in refs:
            raise MaskError(f"{where}: the SEG references series {', '.join(refs) or '(none)'}, not the ART series "
                            f"{art_series_uid}")
    seg_no = pick_segment(ds, segment, where).number
    frames = _frames(ds, where)
    chosen = [f for f in range(frames.shape[0]) if _frame_segment(ds, f) == seg_no]
    size = art_image.GetSize()
    out = np.zeros((size[2], size[1], size[0]), dtype=np.uint8)
    if not chosen:  # highdicom omits empty frames: a segment without frames is an empty mask
        raise MaskError(f"{where}: segment {seg_no} has no voxels")
    d_art = np.array(art_image.GetDirection()).reshape(3, 3)
    sp_art = np.array(art_image.GetSpacing())
    aligned = []
    for f in chosen:
        pos, iop, ps = _frame_geometry(ds, f)
        same_plane = (np.allclose(iop[:3], d_art[:, 0], atol=1e-4) and np.allclose(iop[3:], d_art[:, 1], atol=1e-4)
                      and np.allclose(ps[::-1], sp_art[:2], rtol=1e-4))
        idx = np.array(art_image.TransformPhysicalPointToContinuousIndex(pos.tolist()))
        if not (same_plane and np.allclose(idx, np.rint(idx), atol=1e-3)):
            aligned = []
            break
        aligned.append((f, np.rint(idx).astype(int)))
    if aligned:
        for f, (i0, j0, k0) in aligned:
            if not 0 <= k0 < size[2]:
                continue
            fr = frames[f] > 0.5
            r0, c0 = max(0, -j0), max(0, -i0)
            r1, c1 = min(fr.shape[0], size[1] - j0), min(fr.shape[1], size[0] - i0)
            if r1 > r0 and c1 > c0:
                out[k0, j0 + r0:j0 + r1, i0 + c0:i0 + c1] |= fr[r0:r1, c0:c1]
        img = sitk.GetImageFromArray(out)
        img.CopyInformation(art_image)
    else:
        img = _resampled(ds, seg_no, art_image, where)
    if not sitk.GetArrayViewFromImage(img).any():
        raise MaskError(f"{where}: segment {seg_no} does not overlap the ART volume")
    return img


def _resampled(ds: Any, seg_no: int, art_image: Any, where: str) -> Any:
    """The segment as a volume on its own regular grid (highdicom), resampled onto ART with nearest neighbour."""
    import highdicom as hd
    import SimpleITK as sitk

    try:
        vol = hd.seg.Segmentation.from_dataset(ds, copy=False).get_volume(segment_numbers=[seg_no],
                                                                           combine_segments=True)
    except (ValueError, RuntimeError, AttributeError) as exc:
        raise MaskError(f"{where}: the SEG frames do not lie on the ART slices and do not form a regular volume: "
                        f"{exc}".splitlines()[0]) from exc
    arr = (np.asarray(vol.array) > 0).astype(np.uint8)
    aff = np.asarray(vol.affine, dtype=np.float64)
    # numpy axes (0, 1, 2) of the array are ITK axes (z, y, x): reverse the affine's columns.
    cols = aff[:3, :3][:, ::-1]
    spacing = np.linalg.norm(cols, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(aff[:3, 3].tolist())
    img.SetDirection((cols / spacing).ravel().tolist())
    return sitk.Resample(img, art_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
