"""Image IO through SimpleITK (NIfTI, NRRD, MHA/MHD, DICOM series) and the case-folder convention.

Geometry (origin, spacing, direction; LPS as ITK uses it) is kept end to end: volumes travel as SimpleITK images
until the ROI is cut. SimpleITK is imported inside functions so that `import cmir_trt.data` works without it.

Case folder convention (nnU-Net style, cases side by side; one subfolder per case also accepted):
    CASE_0000.<ext>  arterial phase (ART)        or a DICOM series folder CASE_0000/
    CASE_0001.<ext>  portal-venous phase (PV)    or a DICOM series folder CASE_0001/
    CASE_mask.<ext>  tumour mask on the ART grid (or a DICOM folder CASE_mask/)
    clinical.csv     case_id + the schema's feature columns
    STUDY/           a DICOM study as a PACS exports it (ART/PV picked by data.series rules), STUDY_mask.<ext>
                     or, without a mask file, the study's DICOM SEG that references the ART series
with <ext> one of .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd. Masks may also come from a separate folder in nnU-Net's
output naming (CASE.<ext>). Every file is checked against its header before it is read (data.integrity).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_via
from .errors import DataError, ImageReadError
from .integrity import dicom_truncation, nifti_nonfinite, verify_image_file

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
    ImageReadError (naming the path and `what`) for anything unreadable, truncated (the file holds less data than
    its header promises), 2-D, single-slice, 4-D or multi-component, and for DICOM series whose slices disagree in
    orientation or size or are not evenly spaced (see read_dicom_files).
    """
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        damaged = damaged_dicom_files(path, recursive=False)
        if damaged:
            raise ImageReadError(damaged_message(what, path, damaged))
        ids = dicom_series_ids(path)
        if not ids:
            raise ImageReadError(f"{what}: no DICOM series in folder {path}")
        if series_uid is None:
            if len(ids) > 1:
                raise ImageReadError(f"{what}: folder {path} holds {len(ids)} DICOM series; name the one to use in "
                                     f"{SERIES_CSV} beside the cases (case_id, art_series_uid, pv_series_uid): "
                                     f"{', '.join(ids)}")
            series_uid = ids[0]
        elif series_uid not in ids:
            raise ImageReadError(f"{what}: DICOM series {series_uid} not in {path} (found {', '.join(ids)})")
        files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series_uid)]
        return read_dicom_files(files, what, f"series {series_uid}")
    if image_extension(path) is None:
        raise ImageReadError(f"{what}: {path.name} is not a supported image file "
                             f"({', '.join(IMAGE_EXTENSIONS)} or a DICOM folder)")
    verify_image_file(path, what)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(f"{what}: cannot read {path} (corrupt or truncated?): {_first_line(exc)}") from exc
    img = _check_volume(img, f"{what}: {path}")
    if image_extension(path) in (".nii", ".nii.gz"):
        img = _restore_nonfinite(img, nifti_nonfinite(path))
    return img


def _restore_nonfinite(img: Any, found: tuple[np.ndarray, np.ndarray] | None) -> Any:
    """Put back the NaN/inf voxels ITK's NIfTI reader silently turned into 0, so the preprocessing's check for
    non-finite voxels in the ROI sees them (one outside the ROI stays harmless)."""
    if found is None:
        return img
    bad, values = found
    sitk = _sitk()
    arr = sitk.GetArrayFromImage(img)
    if bad.shape != arr.shape or not np.issubdtype(arr.dtype, np.floating):
        return img
    arr[bad] = values
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _check_volume(img: Any, where: str) -> Any:
    if img.GetDimension() != 3:
        raise ImageReadError(f"{where} is a {img.GetDimension()}-D image; a 3-D volume is required")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{where} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "a scalar volume is required")
    if min(img.GetSize()) < 2:
        raise ImageReadError(f"{where} is a single-slice volume (size {tuple(img.GetSize())}); a 3-D volume with at "
                             "least 2 voxels along each axis is required")
    return img


# Slice spacing of a DICOM series may vary by this much (relative to the median spacing, plus 0.01 mm) before the
# series is refused: rounding in ImagePositionPatient stays far below it, a missing slice (2x) far above it.
SLICE_SPACING_TOL = 0.05
_DICOM_GEOMETRY = {"position": "0020|0032", "orientation": "0020|0037", "series_uid": "0020|000e",
                   "frames": "0028|0008"}


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def damaged_dicom_files(folder: str | os.PathLike[str], recursive: bool = True) -> list[tuple[Path, str]]:
    """(file, why) of every DICOM Part-10 file in the folder that is incomplete (data_integrity.dicom_truncation):
    GDCM's series scanner silently skips a slice it cannot parse, so a cut-short slice must fail its series here.
    Complete objects without pixel data (SR, KO, PR) are not damaged; they are simply not image series."""
    folder = Path(folder)
    paths = sorted(folder.rglob("*") if recursive else folder.iterdir())
    bad = []
    for p in paths:
        if not p.is_file() or p.name.startswith("."):
            continue
        why = dicom_truncation(p)
        if why is not None:
            bad.append((p, why))
    return bad


def damaged_message(what: str, where: Path, damaged: list[tuple[Path, str]]) -> str:
    first, why = damaged[0]
    return (f"{what}: {len(damaged)} damaged DICOM file(s) in {where} (truncated?): {first.name}: {why}"
            + (f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""))


def _floats(text: str, n: int) -> np.ndarray | None:
    try:
        vals = [float(x) for x in text.replace(" ", "").split("\\") if x != ""]
    except ValueError:
        return None
    return np.array(vals, dtype=np.float64) if len(vals) == n and np.all(np.isfinite(vals)) else None


def read_dicom_files(files: list[Path] | tuple[Path, ...], what: str = "image", label: str = "series") -> Any:
    """One DICOM series (its files) as a 3-D image, after checking that it is one regular volume: every slice has
    the same size and ImageOrientationPatient, there is one slice per position, positions lie on a line along the
    slice normal, and the spacing is uniform within SLICE_SPACING_TOL (a missing slice is refused). Slices are
    ordered by their position along the normal, not by file name or instance number."""
    sitk = _sitk()
    if not files:
        raise ImageReadError(f"{what}: DICOM {label} has no files")
    heads = []
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise ImageReadError(f"{what}: DICOM {label}: cannot read {f} (damaged or truncated?): "
                                 f"{_first_line(exc)}") from exc
        meta = {k: (reader.GetMetaData(t).strip() if reader.HasMetaDataKey(t) else "")
                for k, t in _DICOM_GEOMETRY.items()}
        heads.append((Path(f), tuple(reader.GetSize()), tuple(reader.GetSpacing()), meta))
    if len(heads) == 1:
        f, size, _, _ = heads[0]
        if len(size) < 3 or size[2] < 2:
            raise ImageReadError(f"{what}: DICOM {label} is a single slice ({f.name}); a 3-D volume is required")
        try:  # one multi-frame file: GDCM builds the volume from its per-frame geometry
            return _check_volume(sitk.ReadImage(str(f)), f"{what}: DICOM {label}")
        except RuntimeError as exc:
            raise ImageReadError(f"{what}: DICOM {label}: cannot read {f}: {_first_line(exc)}") from exc
    sizes = sorted({h[1][:2] for h in heads})
    if len(sizes) > 1:
        raise ImageReadError(f"{what}: DICOM {label}: slices differ in size (columns x rows "
                             f"{', '.join(f'{a}x{b}' for a, b in sizes)}); not one volume")
    spacings = np.array([h[2][:2] for h in heads], dtype=np.float64)
    if np.abs(spacings - spacings[0]).max() > 1e-3 * spacings[0].max():
        found = sorted({f"{a:.4g}x{b:.4g}" for a, b in spacings})
        raise ImageReadError(f"{what}: DICOM {label}: slices differ in pixel spacing ({', '.join(found)} mm); not one "
                             "volume")
    if any(len(h[1]) > 2 and h[1][2] > 1 for h in heads):
        raise ImageReadError(f"{what}: DICOM {label}: several multi-frame files; not one volume")
    iops, ipps = [], []
    for f, _, _, meta in heads:
        iop, ipp = _floats(meta["orientation"], 6), _floats(meta["position"], 3)
        if iop is None or ipp is None:
            raise ImageReadError(f"{what}: DICOM {label}: {f.name} has no valid ImagePositionPatient / "
                                 "ImageOrientationPatient; cannot place its slices in space")
        iops.append(iop)
        ipps.append(ipp)
    iop_arr = np.array(iops)
    distinct = np.unique(np.round(iop_arr, 3), axis=0)
    if np.abs(iop_arr - iop_arr[0]).max() > 1e-3:
        raise ImageReadError(f"{what}: DICOM {label}: slices disagree in orientation ({len(distinct)} different "
                             "ImageOrientationPatient values, e.g. projections or a localiser); not one volume")
    row, col = iop_arr[0, :3], iop_arr[0, 3:]
    normal = np.cross(row, col)
    pos = np.array(ipps)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along, pos = along[order], pos[order]
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        n_pos = len(np.unique(np.round(along, 2)))
        raise ImageReadError(f"{what}: DICOM {label}: {len(heads)} slices at only {n_pos} positions (several "
                             "volumes in one series: time points, echoes or b-values?); not one volume")
    med = float(np.median(steps))
    if np.abs(steps - med).max() > SLICE_SPACING_TOL * med + 0.01:
        raise ImageReadError(f"{what}: DICOM {label}: non-uniform slice spacing ({steps.min():.3f} to "
                             f"{steps.max():.3f} mm, median {med:.3f}; tolerance {SLICE_SPACING_TOL:.0%}): a missing "
                             "slice?")
    inplane = pos - np.outer(pos @ normal, normal)
    px = min(heads[0][2][:2])
    if np.abs(inplane - inplane[0]).max() > 0.5 * px:
        raise ImageReadError(f"{what}: DICOM {label}: slice positions drift in-plane by up to "
                             f"{np.abs(inplane - inplane[0]).max():.2f} mm (tilted/sheared stack); not supported")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(heads[i][0]) for i in order])
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{what}: cannot read DICOM {label}: {_first_line(exc)}") from exc
    return _check_volume(img, f"{what}: DICOM {label}")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with file/line noise; the description is usually the last informative line.
    desc = [ln for ln in lines if ln.lower().startswith(("description", "itk::error"))]
    return (desc[-1] if desc else (lines[-1] if lines else type(exc).__name__))[:300]


def write_image_atomic(image: Any, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write a SimpleITK image via a temp file in the same folder + os.replace (never half-written)."""
    path = Path(path)
    ext = image_extension(path)
    if ext is None:
        raise DataError(f"cannot write {path}: unsupported extension ({', '.join(IMAGE_EXTENSIONS)})")
    if ext in (".mhd", ".nhdr"):
        raise DataError(f"cannot write {path} atomically: {ext} has a separate data file; use .mha/.nrrd")
    atomic_write_via(path, lambda tmp: _sitk().WriteImage(image, tmp, compress), suffix=ext)
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
    """The files of one case. `art`/`pv`/`mask` are image files or DICOM series folders (None if absent).

    A DICOM study folder as a PACS exports it (many series) is `study`: ART and PV are then picked from it by the
    series rules (data.series.select_phases) when the case is read, with `art_series_uid`/`pv_series_uid` (from
    series.csv) taking precedence."""

    case_id: str
    art: Path | None
    pv: Path | None
    mask: Path | None
    art_series_uid: str | None = None
    pv_series_uid: str | None = None
    study: Path | None = None

    def missing(self) -> list[str]:
        # A study's phases are picked from its series, and without a mask file its mask is the study's DICOM SEG on
        # ART (read_case_images says so clearly when there is none): nothing of a study is missing up front.
        if self.study is not None:
            return []
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


def _holds_dicom(folder: Path, limit: int = 200) -> bool:
    """Does the folder (any depth) hold a DICOM file? Looks at up to `limit` files."""
    n = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            p = Path(root) / name
            if name.lower().endswith(".dcm") or _is_dicom_file(p):
                return True
            n += 1
            if n >= limit:
                return False
    return False


def _one_study(folder: Path, subfolders: list[Path]) -> bool:
    """Do the DICOM files directly in `folder` and in its subfolders all belong to one study (StudyInstanceUID)?"""
    from .series import read_header

    if len(subfolders) < 2:
        return False
    uids = set()
    for sub in subfolders:
        for root, dirs, files in os.walk(sub):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            hdr = next((h for h in (read_header(Path(root) / n) for n in sorted(files) if not n.startswith("."))
                        if h and h["StudyInstanceUID"]), None)
            if hdr:
                uids.add(hdr["StudyInstanceUID"])
                break
    return len(uids) == 1


def _mask_files(masks: Path) -> dict[str, list[Path]]:
    """{case_id: [files]} of a masks folder in nnU-Net's output naming (CASE.<ext>)."""
    if not masks.is_dir():
        raise FileNotFoundError(f"masks folder not found: {masks}")
    out: dict[str, list[Path]] = {}
    for entry in sorted(masks.iterdir()):
        ext = image_extension(entry.name)
        if entry.name.startswith(".") or not entry.is_file() or ext is None:
            continue
        out.setdefault(entry.name[:-len(ext)], []).append(entry)
    return out


def find_cases(folder: str | os.PathLike[str], allow_incomplete: bool = False,
               masks: str | os.PathLike[str] | None = None) -> list[CaseFiles]:
    """Cases in `folder` (side by side) and in its direct subfolders (one per case), sorted by case_id.

    A direct subfolder holding DICOM files but no CASE_0000/CASE_0001 inputs is a DICOM study (as a PACS exports
    it): its name is the case id, ART and PV are picked from its series when the case is read, and its mask is
    `STUDY_mask.<ext>` beside or inside it (or in `masks`). `masks`: a folder of tumour masks in nnU-Net's output
    naming, `CASE.<ext>` (instead of `CASE_mask.<ext>` beside the images).
    A phase given as a DICOM folder with several series takes its series UID from `folder/series.csv`
    (case_id, art_series_uid, pv_series_uid) when that file exists.
    Raises DataError when a case has two files for one role, a case appears twice, or (unless allow_incomplete)
    a case lacks its ART, PV or mask; FileNotFoundError when the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"case folder not found: {folder}")
    found: dict[str, dict[str, list[Path]]] = {}
    studies: dict[str, Path] = {}
    _scan(folder, found)
    for sub in sorted(folder.iterdir()):
        # One subfolder per case: the folder's name is the case id and holds that case's files.
        if sub.is_dir() and not sub.name.startswith(".") and _role_of(sub) is None:
            inner: dict[str, dict[str, list[Path]]] = {}
            _scan(sub, inner)
            has_phase = any(r in roles for roles in inner.values() for r in ("art", "pv"))
            if not has_phase and _holds_dicom(sub):
                studies[sub.name] = sub
                roles = found.setdefault(sub.name, {})
                for path in inner.get(sub.name, {}).get("mask", []):
                    roles.setdefault("mask", []).append(path)
                continue
            for cid, roles in inner.items():
                if cid in found:
                    raise DataError(f"case {cid!r} appears twice: in {folder} and in {sub}")
                found[cid] = roles
    no_phase = not any(r in roles for roles in found.values() for r in ("art", "pv"))
    if no_phase and ((not found and _holds_dicom(folder)) or _one_study(folder, list(studies.values()))):
        # The folder given is itself one study (flat files, or its subfolders are the series of one study): one case
        mask = [p for p in folder.iterdir() if p.is_file() and image_extension(p.name)
                and p.name == f"{folder.name}_mask{image_extension(p.name)}"]
        found, studies = {folder.name: {"mask": mask} if mask else {}}, {folder.name: folder}
    if masks is not None:
        for cid, paths in _mask_files(Path(masks)).items():
            if cid in found:
                found[cid].setdefault("mask", []).extend(paths)
    cases = []
    for cid in sorted(found):
        roles = found[cid]
        for role, paths in roles.items():
            if len(paths) > 1:
                raise DataError(f"case {cid!r}: several {role.upper()} inputs: {', '.join(str(p) for p in paths)}")
        if cid in studies and ("art" in roles or "pv" in roles):
            raise DataError(f"case {cid!r}: both a DICOM study folder {studies[cid]} and phase files")
        case = CaseFiles(cid, *(roles.get(r, [None])[0] for r in ("art", "pv", "mask")), study=studies.get(cid))
        if case.missing() and not allow_incomplete:
            names = {"art": "ART (CASE_0000)", "pv": "PV (CASE_0001)", "mask": "mask (CASE_mask)"}
            raise DataError(f"case {cid!r} in {folder}: missing {', '.join(names[m] for m in case.missing())}")
        cases.append(case)
    if (folder / SERIES_CSV).is_file():
        uids = read_series_csv(folder / SERIES_CSV, {c.case_id for c in cases})
        cases = [replace(c, art_series_uid=uids.get(c.case_id, {}).get("art"),
                         pv_series_uid=uids.get(c.case_id, {}).get("pv")) for c in cases]
    return cases
