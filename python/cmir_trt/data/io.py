"""Image IO through SimpleITK (NIfTI, NRRD, MHA/MHD, DICOM series) and the case-folder convention.

Geometry (origin, spacing, direction; LPS as ITK uses it) is kept end to end: volumes travel as SimpleITK images
until the ROI is cut. SimpleITK is imported inside functions so that `import cmir_trt.data` works without it.

Case folder convention (nnU-Net style, cases side by side; one subfolder per case also accepted):
    CASE_0000.<ext>  arterial phase (ART)        or a DICOM series folder CASE_0000/
    CASE_0001.<ext>  portal-venous phase (PV)    or a DICOM series folder CASE_0001/
    CASE_mask.<ext>  tumour mask on the ART grid (or a DICOM folder CASE_mask/)
    clinical.csv     case_id + the schema's feature columns
with <ext> one of .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, ImageReadError

IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
ROLE_SUFFIX = {"art": "_0000", "pv": "_0001", "mask": "_mask"}
_ROLE_RE = re.compile(r"^(?P<case>.+?)(?P<role>_0000|_0001|_mask)(?P<ext>\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)?$")


def _sitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # the GPU machine has no SimpleITK
        raise ImportError("reading/writing medical images needs SimpleITK: pip install SimpleITK") from exc
    return sitk


def image_extension(path: str | os.PathLike[str]) -> str | None:
    name = Path(path).name.lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return None


def dicom_series_ids(folder: str | os.PathLike[str]) -> list[str]:
    sitk = _sitk()
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())


def read_image(path: str | os.PathLike[str], series_uid: str | None = None, what: str = "image") -> Any:
    """A 3-D scalar SimpleITK image from a file or a DICOM series folder.

    A folder with several DICOM series needs `series_uid`. Raises FileNotFoundError for a missing path and
    ImageReadError (naming the path and `what`) for anything unreadable, 2-D, 4-D or multi-component.
    """
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        ids = dicom_series_ids(path)
        if not ids:
            raise ImageReadError(f"{what}: no DICOM series in folder {path}")
        if series_uid is None:
            if len(ids) > 1:
                raise ImageReadError(f"{what}: folder {path} holds {len(ids)} DICOM series; pick one by UID "
                                     f"({', '.join(ids)})")
            series_uid = ids[0]
        elif series_uid not in ids:
            raise ImageReadError(f"{what}: DICOM series {series_uid} not in {path} (found {', '.join(ids)})")
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series_uid)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            img = reader.Execute()
        except RuntimeError as exc:
            raise ImageReadError(f"{what}: cannot read DICOM series {series_uid} in {path}: "
                                 f"{_first_line(exc)}") from exc
    else:
        if image_extension(path) is None:
            raise ImageReadError(f"{what}: {path.name} is not a supported image file "
                                 f"({', '.join(IMAGE_EXTENSIONS)} or a DICOM folder)")
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageReadError(f"{what}: cannot read {path} (corrupt or truncated?): {_first_line(exc)}") from exc
    if img.GetDimension() != 3:
        raise ImageReadError(f"{what}: {path} is a {img.GetDimension()}-D image; a 3-D volume is required")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{what}: {path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "a scalar volume is required")
    if min(img.GetSize()) < 1:
        raise ImageReadError(f"{what}: {path} is empty (size {img.GetSize()})")
    return img


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with file/line noise; the description is usually the last informative line.
    desc = [ln for ln in lines if ln.lower().startswith(("description", "itk::error"))]
    return (desc[-1] if desc else (lines[-1] if lines else type(exc).__name__))[:300]


def write_image_atomic(image: Any, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write a SimpleITK image via a temp file in the same folder + os.replace (never half-written)."""
    sitk = _sitk()
    path = Path(path)
    ext = image_extension(path)
    if ext is None:
        raise DataError(f"cannot write {path}: unsupported extension ({', '.join(IMAGE_EXTENSIONS)})")
    if ext in (".mhd", ".nhdr"):
        raise DataError(f"cannot write {path} atomically: {ext} has a separate data file; use .mha/.nrrd")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:-len(ext)]}.", suffix=ext, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, compress)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def geometry(image: Any) -> dict[str, Any]:
    """Plain-data geometry of a SimpleITK image (ITK/LPS convention): size (i, j, k), spacing, origin, direction."""
    return {
        "size": [int(x) for x in image.GetSize()],
        "spacing": [float(x) for x in image.GetSpacing()],
        "origin": [float(x) for x in image.GetOrigin()],
        "direction": [float(x) for x in image.GetDirection()],
    }


def same_geometry(a: Any, b: Any, tol: float = 1e-4) -> bool:
    """Same size, and spacing/origin/direction equal within tol (relative to the spacing for the origin)."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return False
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if np.any(np.abs(sa - sb) > tol * np.maximum(sa, sb)):
        return False
    if np.any(np.abs(np.array(a.GetDirection()) - np.array(b.GetDirection())) > tol):
        return False
    return bool(np.all(np.abs(np.array(a.GetOrigin()) - np.array(b.GetOrigin())) <= tol * sa.min()))


def physical_extent(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (min, max corners, mm) of the voxel extents (voxel edges, not centres)."""
    size = np.array(image.GetSize(), dtype=np.float64)
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    d = np.array(image.GetDirection()).reshape(3, 3)
    pts = np.array(image.GetOrigin()) + (corners * np.array(image.GetSpacing())) @ d.T
    return pts.min(axis=0), pts.max(axis=0)


def format_extent(lo: np.ndarray, hi: np.ndarray) -> str:
    return "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(lo, hi, strict=True)) + "] mm"


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case. `art`/`pv`/`mask` are image files or DICOM series folders (None if absent)."""

    case_id: str
    art: Path | None
    pv: Path | None
    mask: Path | None
    art_series_uid: str | None = None
    pv_series_uid: str | None = None

    def missing(self) -> list[str]:
        return [role for role in ("art", "pv", "mask") if getattr(self, role) is None]


def _role_of(entry: Path) -> tuple[str, str] | None:
    """(case_id, role) for a case file or DICOM folder name, else None."""
    m = _ROLE_RE.match(entry.name)
    if not m:
        return None
    ext = m.group("ext")
    if entry.is_dir():
        if ext:  # a folder named like a file is not a DICOM series folder
            return None
    elif not ext or image_extension(entry.name) != ext.lower() or entry.name.startswith("."):
        return None
    role = {v: k for k, v in ROLE_SUFFIX.items()}[m.group("role")]
    return m.group("case"), role


def _scan(folder: Path, found: dict[str, dict[str, list[Path]]]) -> None:
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        r = _role_of(entry)
        if r is not None:
            found.setdefault(r[0], {}).setdefault(r[1], []).append(entry)


SERIES_CSV = "series.csv"
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def read_series_csv(path: str | os.PathLike[str], case_ids: set[str]) -> dict[str, dict[str, str]]:
    """{case_id: {"art": uid, "pv": uid}} from a CSV with columns case_id, art_series_uid, pv_series_uid (either UID
    may be empty). Picks the DICOM series of a phase folder that holds several; errors name the row and column."""
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the series table: {exc}") from exc
    need = {"case_id", "art_series_uid", "pv_series_uid"}
    if not rows or need - set(header):
        raise DataError(f"{path}: needs a header with columns {sorted(need)} and at least one row")
    out: dict[str, dict[str, str]] = {}
    for i, row in enumerate(rows, start=2):
        cid = (row.get("case_id") or "").strip()
        if cid not in case_ids:
            raise DataError(f"{path} line {i}: case {cid!r} is not in the case folder")
        if cid in out:
            raise DataError(f"{path} line {i}: case {cid!r} listed twice")
        uids = {}
        for role in ("art", "pv"):
            uid = (row.get(f"{role}_series_uid") or "").strip()
            if uid and not _UID_RE.match(uid):
                raise DataError(f"{path} line {i}: {role}_series_uid {uid!r} is not a DICOM UID")
            if uid:
                uids[role] = uid
        out[cid] = uids
    return out


def find_cases(folder: str | os.PathLike[str], allow_incomplete: bool = False) -> list[CaseFiles]:
    """Cases in `folder` (side by side) and in its direct subfolders (one per case), sorted by case_id.

    A phase given as a DICOM folder with several series takes its series UID from `folder/series.csv`
    (case_id, art_series_uid, pv_series_uid) when that file exists.
    Raises DataError when a case has two files for one role, a case appears twice, or (unless allow_incomplete)
    a case lacks its ART, PV or mask; FileNotFoundError when the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"case folder not found: {folder}")
    found: dict[str, dict[str, list[Path]]] = {}
    _scan(folder, found)
    for sub in sorted(folder.iterdir()):
        # One subfolder per case: the folder's name is the case id and holds that case's files.
        if sub.is_dir() and not sub.name.startswith(".") and _role_of(sub) is None:
            inner: dict[str, dict[str, list[Path]]] = {}
            _scan(sub, inner)
            for cid, roles in inner.items():
                if cid in found:
                    raise DataError(f"case {cid!r} appears twice: in {folder} and in {sub}")
                found[cid] = roles
    cases = []
    for cid in sorted(found):
        roles = found[cid]
        for role, paths in roles.items():
            if len(paths) > 1:
                raise DataError(f"case {cid!r}: several {role.upper()} inputs: {', '.join(p.name for p in paths)}")
        case = CaseFiles(cid, *(roles.get(r, [None])[0] for r in ("art", "pv", "mask")))
        if case.missing() and not allow_incomplete:
            names = {"art": "ART (CASE_0000)", "pv": "PV (CASE_0001)", "mask": "mask (CASE_mask)"}
            raise DataError(f"case {cid!r} in {folder}: missing {', '.join(names[m] for m in case.missing())}")
        cases.append(case)
    if (folder / SERIES_CSV).is_file():
        uids = read_series_csv(folder / SERIES_CSV, {c.case_id for c in cases})
        cases = [replace(c, art_series_uid=uids.get(c.case_id, {}).get("art"),
                         pv_series_uid=uids.get(c.case_id, {}).get("pv")) for c in cases]
    return cases
