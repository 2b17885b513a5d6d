"""`cmir-trt predict --dicom-out DIR`: the SR and heatmap SC of a case whose phases came from DICOM.

A DICOM study folder (ART/PV picked by the series rules) or DICOM series folders (CASE_0000/, CASE_0001/) get
DIR/<case>_sr.dcm and DIR/<case>_sc.dcm in the source study; NIfTI cases get nothing here (their JSON/NIfTI/PNG
outputs are the results). When the mask came from the study's SEG, the SR's measurement group references that
segment; with a mask file it is image-level (it references the ART/PV series as evidence).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .results import DicomResultFiles, write_dicom_results


def _series_files(folder: Path, uid: str | None) -> list[Path]:
    import SimpleITK as sitk

    ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())
    uid = uid or (ids[0] if len(ids) == 1 else None)
    if uid is None:
        raise ValueError(f"{folder}: {len(ids)} DICOM series; cannot tell which one the case used")
    return [Path(p) for p in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]


def dicom_sources(case: Any, series_rules: Any = None) -> tuple[list[Path], list[Path]] | None:
    """(ART files, PV files) of a CaseFiles whose phases are DICOM, else None."""
    if getattr(case, "study", None) is not None:
        from ..data.series import select_phases

        overrides = {k: v for k, v in (("art", case.art_series_uid), ("pv", case.pv_series_uid)) if v}
        sel = select_phases(case.study, series_rules, overrides=overrides, case_id=case.case_id)
        return [Path(p) for p in sel.art.files], [Path(p) for p in sel.pv.files]
    if case.art is not None and case.pv is not None and Path(case.art).is_dir() and Path(case.pv).is_dir():
        return _series_files(Path(case.art), case.art_series_uid), _series_files(Path(case.pv), case.pv_series_uid)
    return None


def write_case_dicom(result: Any, case: Any, out_dir: str | os.PathLike[str],
                     series_rules: Any = None) -> DicomResultFiles | None:
    """Write the case's SR + SC into out_dir (atomically; neither is left behind if the other fails); None for a
    case without DICOM phases."""
    src = dicom_sources(case, series_rules)
    if src is None:
        return None
    out = Path(out_dir)
    names = [out / f"{result.case_id}_sr.dcm", out / f"{result.case_id}_sc.dcm"]
    seg = (getattr(result, "source", None) or {}).get("mask_seg")  # set by read_case_images
    try:
        if seg:
            return write_dicom_results(result, src[0], src[1], Path(seg["file"]), out, int(seg["segment_number"]))
        return write_dicom_results(result, src[0], src[1], None, out)
    except BaseException:
        for p in names:
            if p.exists():
                p.unlink()
        raise
