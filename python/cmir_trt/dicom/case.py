"""A DICOM study folder as one cmir case: ART and PV picked by the series rules, the mask from a SEG on ART.

    case = load_study("store/studies/1.2.3")            # phases by cmir_trt.data.series rules, SEG segment "tumor"
    result = predictor.predict_images(case.case_id, case.art, case.pv, case.mask, clinical)

The SEG must reference the ART series; when several SEGs do, the case is refused naming them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.errors import DataError, MaskError
from ._common import SEGMENTATION_STORAGE, read_dataset, sort_by_position
from .seg import pick_segment, referenced_series, seg_mask


@dataclass
class DicomCase:
    case_id: str
    study_uid: str
    patient_id: str
    accession: str
    art: Any             # SimpleITK images
    pv: Any
    mask: Any
    art_files: list[Path]
    pv_files: list[Path]
    seg_file: Path | None
    segment_number: int | None

    def clinical_keys(self) -> list[str]:
        """Keys under which a clinical CSV row may name this study, most specific first."""
        return [k for k in (self.study_uid, self.accession, self.patient_id) if k]


def safe_name(text: str) -> str:
    """A file-name-safe version of an identifier (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _read_series(files: list[Path], what: str, uid: str) -> tuple[Any, list[Path]]:
    """The series as a checked 3-D image (the reader `cmir-trt predict` uses) and its files along the normal."""
    from ..data.io import read_dicom_files

    img = read_dicom_files(files, what, f"series {uid}")
    heads = [read_dataset(p, what, stop_before_pixels=True) for p in files]
    by_id = {id(ds): p for ds, p in zip(heads, files, strict=True)}
    return img, [by_id[id(ds)] for ds in sort_by_position(heads)]


def find_segs(study_dir: Path) -> list[tuple[Path, Any]]:
    """Every SEG instance under the study folder (headers only)."""
    out = []
    for root, dirs, files in os.walk(study_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = Path(root) / name
            try:
                import pydicom

                ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            except Exception:  # noqa: BLE001, S112 - anything pydicom cannot read is not a SEG of ours
                continue
            if str(getattr(ds, "SOPClassUID", "")) == SEGMENTATION_STORAGE:
                out.append((p, ds))
    return out


def study_seg_mask(study_dir: str | os.PathLike[str], art_image: Any, art_series_uid: str,
                   segment: int | str | None = None, case_id: str = "?") -> tuple[Any, Path, int]:
    """The tumour mask of a study from its one SEG that references the ART series: (mask on the ART grid, SEG file,
    segment number). MaskError when no SEG, or several, reference ART."""
    study = Path(study_dir)
    segs = find_segs(study)
    on_art = [(p, ds) for p, ds in segs if art_series_uid in referenced_series(ds)]
    if not on_art:
        found = ", ".join(f"{p.name} (on {', '.join(referenced_series(ds)) or 'no series'})" for p, ds in segs)
        raise MaskError(f"case {case_id!r}: no SEG references the ART series {art_series_uid}"
                        + (f"; SEGs found: {found}" if found else " (the study holds no SEG)"))
    if len(on_art) > 1:
        raise MaskError(f"case {case_id!r}: {len(on_art)} SEGs reference the ART series "
                        f"({', '.join(str(p.relative_to(study)) for p, _ in on_art)}); keep one")
    seg_file, ds = on_art[0]
    seg_no = pick_segment(ds, segment, f"case {case_id!r} SEG {seg_file.name}").number
    return seg_mask(seg_file, art_image, art_series_uid, seg_no, case_id=case_id), seg_file, seg_no


def load_study(study_dir: str | os.PathLike[str], case_id: str | None = None, rules: Any = None,
               segment: int | str | None = None, mask: Any = None) -> DicomCase:
    """Read one study folder: ART/PV by the phase rules, the mask from the SEG that references ART (or `mask`,
    a SimpleITK image, when given). Errors are DataError subclasses naming the case and the problem."""
    from ..data.series import select_phases

    study = Path(study_dir)
    sel = select_phases(study, rules=rules, case_id=case_id)
    art_files, pv_files = [Path(p) for p in sel.art.files], [Path(p) for p in sel.pv.files]
    first = read_dataset(art_files[0], "ART", stop_before_pixels=True)
    patient_id = str(getattr(first, "PatientID", "") or "")
    cid = case_id or safe_name(patient_id or str(first.StudyInstanceUID))
    art, art_files = _read_series(art_files, f"case {cid!r} ART", sel.art.series_uid)
    pv, pv_files = _read_series(pv_files, f"case {cid!r} PV", sel.pv.series_uid)
    seg_file, seg_no = None, None
    if mask is None:
        mask, seg_file, seg_no = study_seg_mask(study, art, sel.art.series_uid, segment, cid)
    elif not hasattr(mask, "GetSize"):
        raise DataError(f"case {cid!r}: mask must be a SimpleITK image")
    return DicomCase(case_id=cid, study_uid=str(first.StudyInstanceUID), patient_id=patient_id,
                     accession=str(getattr(first, "AccessionNumber", "") or ""), art=art, pv=pv, mask=mask,
                     art_files=art_files, pv_files=pv_files, seg_file=seg_file, segment_number=seg_no)
