"""DICOM results of one case: a Comprehensive SR (TID 1500 measurement report) and a Secondary Capture overlay.

SR: one measurement group for the tumour (referencing the SEG segment when there is one, else image-level) with
  - "Probability of microvascular invasion" (NUM, no units) and "Decision threshold" (NUM),
  - "Microvascular invasion" (CODE: Present/Absent for binary models, the grade M0/M1/M2 for grading models),
  - the algorithm (TID 4019: name CMIR, version = model id, parameters: threshold, cmir_trt version, training data),
  - comments: "Research use only, not for diagnostic use." and, for models trained on synthetic data, a SYNTHETIC
    warning.
  Evidence: the ART and PV series and the SEG. The private coding scheme 99CMIR names concepts DICOM has no code for.
SC: the ART slice of largest tumour area, the heatmap (jet, alpha 0.45) and the mask contour (red), upscaled to at
  least 256 px, with the disclaimer burned in (BurnedInAnnotation YES).
Both go into the source study (its Study Instance UID) as new series; their UIDs derive from the source instances and
the model, so the same inputs give the same UIDs (a result re-made after a crash replaces, never duplicates).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_write_bytes
from . import DISCLAIMER, MANUFACTURER
from ._common import dataset_bytes, read_dataset, sort_by_position, stable_uid

SCHEME = "99CMIR"
PROB_CODE = ("MVIPROB", "Probability of microvascular invasion")
THRESH_CODE = ("MVITHR", "Decision threshold")
MVI_CODE = ("MVI", "Microvascular invasion")
SYNTHETIC_NOTE = "Model trained on SYNTHETIC data: this output says nothing about real patients."
SR_SERIES_NUMBER = 901
SC_SERIES_NUMBER = 902


@dataclass(frozen=True)
class DicomResultFiles:
    sr: Path
    sc: Path
    sr_uid: str
    sc_uid: str


def _code(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def _probability(result: Any) -> float:
    prob = getattr(result, "probability", None)
    return float(prob if np.ndim(prob) == 0 else np.asarray(prob).reshape(-1)[1:].sum())


def _decision_code(decision: str) -> Any:
    from pydicom.sr.codedict import codes

    if decision == "MVI+":
        return codes.SCT.Present
    if decision == "MVI-":
        return codes.SCT.Absent
    return _code(f"GRADE{decision}", f"MVI grade {decision}")


def build_sr(result: Any, art: list[Any], pv: list[Any], seg: Any | None, segment_number: int | None = None) -> Any:
    """The Comprehensive SR of `result` (a cmir_trt CaseResult) for a study whose ART/PV slices and SEG are given as
    pydicom datasets (headers suffice)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    key = [result.model_id, *(str(d.SOPInstanceUID) for d in (*art, *pv)), seg.SOPInstanceUID if seg else ""]
    series_uid = stable_uid("sr-series", *key)
    prob = _probability(result)
    threshold = float(result.threshold)
    params = [f"threshold={threshold:g}", f"cmir_trt={__version__}",
              "training_data=SYNTHETIC" if result.synthetic else "training_data=as documented with the model"]
    algo = hd.sr.AlgorithmIdentification(name="CMIR", version=str(result.model_id)[:64], parameters=params,
                                         manufacturer=MANUFACTURER)
    measurements = [
        hd.sr.Measurement(name=_code(*PROB_CODE), value=prob, unit=codes.UCUM.NoUnits, algorithm_id=algo),
        hd.sr.Measurement(name=_code(*THRESH_CODE), value=threshold, unit=codes.UCUM.NoUnits),
    ]
    evaluations = [hd.sr.QualitativeEvaluation(name=_code(*MVI_CODE), value=_decision_code(str(result.decision)))]
    tracking = hd.sr.TrackingIdentifier(uid=stable_uid("tracking", *key), identifier="CMIR tumour")
    common = dict(tracking_identifier=tracking, finding_type=codes.SCT.Neoplasm, algorithm_id=algo,
                  finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Liver)], measurements=measurements,
                  qualitative_evaluations=evaluations)
    if seg is not None:
        ref = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
            segment_number=int(segment_number or 1),
            source_series=hd.sr.SourceSeriesForSegmentation(str(art[0].SeriesInstanceUID)))
        group: Any = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=ref, **common)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    notes = [DISCLAIMER] + ([SYNTHETIC_NOTE] if result.synthetic else [])
    for text in notes:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=stable_uid("device", result.model_id), name="CMIR", manufacturer_name=MANUFACTURER,
            model_name=str(result.model_id)[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=[group])
    evidence = [*art, *pv, *([seg] if seg is not None else [])]
    desc = "CMIR MVI result" + (" (SYNTHETIC model)" if result.synthetic else "") + " - research use only"
    return hd.sr.ComprehensiveSR(
        evidence=evidence, content=report[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=stable_uid("sr", *key), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description=desc[:64])


def _orientation_letters(v: np.ndarray) -> str:
    names = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, +y, +z of LPS
    order = np.argsort(-np.abs(v))
    return "".join(names[a][0 if v[a] > 0 else 1] for a in order if abs(v[a]) > 0.25) or "L"


def overlay_rgb(art_slice: np.ndarray, heat: np.ndarray, mask: np.ndarray, window: tuple[float, float],
                min_size: int = 256) -> tuple[np.ndarray, int]:
    """RGB uint8 overlay (gray ART, jet heatmap where > 1e-3 at alpha 0.45, red mask contour), upscaled by an
    integer factor to at least `min_size` pixels on its long side. Returns (image [rows, cols, 3], factor)."""
    from matplotlib import colormaps

    lo, hi = window
    gray = np.clip((np.asarray(art_slice, np.float64) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    h = np.asarray(heat, np.float64)
    hm = np.clip(h / max(1.0, float(h.max())), 0.0, 1.0)
    colour = colormaps["jet"](hm)[..., :3]
    on = (h > 1e-3)[..., None]
    rgb = np.where(on, 0.55 * rgb + 0.45 * colour, rgb)
    factor = max(1, int(np.ceil(min_size / max(gray.shape))))
    rgb = np.kron(rgb, np.ones((factor, factor, 1)))
    m = np.kron(np.asarray(mask, bool), np.ones((factor, factor), bool))
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    rgb[m & ~inner] = (1.0, 0.0, 0.0)
    return np.rint(rgb * 255).astype(np.uint8), factor


def _burn_text(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    for n, line in enumerate(lines):
        draw.text((4, 4 + 12 * n), line, fill=(255, 255, 0))
    return np.asarray(im)


def stored_slice(prep: Any, k: int) -> int | None:
    """The index, in the stored ART series (slices ordered along their normal), of slice k of the canonical grid
    the preprocessing used; None when the canonical slices cut across the stored ones (slice axis permuted)."""
    r = prep.orientation
    if r.perm[2] != 2:
        return None
    nk = int(prep.geometry["size"][2])
    return nk - 1 - k if r.flip[2] else k


def build_sc(result: Any, art: list[Any]) -> Any:
    """The heatmap Secondary Capture for `result`: the slice the model centred on, in the canonical (reoriented)
    grid the preprocessing used, so image, heatmap and contour line up whatever the stored orientation. `art`: the
    ART series' headers ordered along the slice normal (sort_by_position); when the slice shown is one stored slice,
    the SC names it in its Source Image Sequence."""
    import highdicom as hd
    import SimpleITK as sitk

    from ..data.orient import canonical

    prep = result.prepared
    k = int(prep.slices[1])
    # A copy, not a view: the reoriented heatmap is a temporary image, and a view would outlive its buffer.
    heat = sitk.GetArrayFromImage(canonical(result.heatmap)[0])[k]
    st = prep.stats["art"]
    rgb, factor = overlay_rgb(prep.art_slice, heat, prep.mask_slice, (st["p_lo"], st["p_hi"]))
    prob = _probability(result)
    lines = [f"CMIR p(MVI)={prob:.3f} {result.decision} (thr {float(result.threshold):g})",
             "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"] + (["MODEL TRAINED ON SYNTHETIC DATA"]
                                                              if result.synthetic else [])
    rgb = _burn_text(rgb, lines)
    geom = getattr(prep, "canonical_geometry", None) or prep.geometry
    d = np.array(geom["direction"], dtype=np.float64).reshape(3, 3)
    sp_i, sp_j = float(geom["spacing"][0]), float(geom["spacing"][1])
    key = [result.model_id, *(str(ds.SOPInstanceUID) for ds in art), "sc"]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=art[0], pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=stable_uid("sc-series", *key),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=stable_uid("sc", *key), instance_number=1,
        manufacturer=MANUFACTURER, pixel_spacing=(sp_j / factor, sp_i / factor),
        patient_orientation=(_orientation_letters(d[:, 0]), _orientation_letters(d[:, 1])),
        transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.SeriesDescription = ("CMIR heatmap" + (" (SYNTHETIC model)" if result.synthetic else "")
                            + " - research use only")[:64]
    sc.BurnedInAnnotation = "YES"
    # General Series: Laterality is type 2C; the liver is not a paired organ, so it is present and empty.
    sc.Laterality = ""
    sc.ImageComments = DISCLAIMER
    ks = stored_slice(prep, k)
    if ks is not None and len(art) == int(prep.geometry["size"][2]):
        from pydicom.dataset import Dataset

        src = Dataset()
        src.ReferencedSOPClassUID = art[ks].SOPClassUID
        src.ReferencedSOPInstanceUID = art[ks].SOPInstanceUID
        sc.SourceImageSequence = [src]
    return sc


def write_dicom_results(result: Any, art_files: list[Path], pv_files: list[Path], seg_file: Path | None,
                        out_dir: str | os.PathLike[str], segment_number: int | None = None) -> DicomResultFiles:
    """Build and write (atomically) OUT/<case>_sr.dcm and OUT/<case>_sc.dcm for a DICOM case."""
    art = sort_by_position(read_dataset(p, "ART slice", stop_before_pixels=True) for p in art_files)
    pv = sort_by_position(read_dataset(p, "PV slice", stop_before_pixels=True) for p in pv_files)
    seg = read_dataset(seg_file, "SEG", stop_before_pixels=True) if seg_file is not None else None
    sr = build_sr(result, art, pv, seg, segment_number)
    sc = build_sc(result, art)
    out = Path(out_dir)
    sr_path = atomic_write_bytes(out / f"{result.case_id}_sr.dcm", dataset_bytes(sr))
    sc_path = atomic_write_bytes(out / f"{result.case_id}_sc.dcm", dataset_bytes(sc))
    return DicomResultFiles(sr_path, sc_path, str(sr.SOPInstanceUID), str(sc.SOPInstanceUID))


def read_sr(path: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """The CMIR values of an SR written by build_sr: probability, threshold, decision (code meaning), algorithm
    version (model id), comments. Reads the content tree directly (no highdicom), so tests check the file itself."""
    ds = read_dataset(path, "SR") if isinstance(path, (str, os.PathLike)) else path
    out: dict[str, Any] = {"comments": []}

    def walk(items: Any) -> None:
        for it in items:
            name = it.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in it else None
            code = (str(name.CodingSchemeDesignator), str(name.CodeValue)) if name is not None else None
            if it.ValueType == "NUM" and code == (SCHEME, PROB_CODE[0]):
                out["probability"] = float(it.MeasuredValueSequence[0].NumericValue)
            elif it.ValueType == "NUM" and code == (SCHEME, THRESH_CODE[0]):
                out["threshold"] = float(it.MeasuredValueSequence[0].NumericValue)
            elif it.ValueType == "CODE" and code == (SCHEME, MVI_CODE[0]):
                out["decision"] = str(it.ConceptCodeSequence[0].CodeMeaning)
            elif it.ValueType == "TEXT" and code == ("DCM", "111003"):  # Algorithm Version
                out["model_id"] = str(it.TextValue)
            elif it.ValueType == "TEXT" and code == ("DCM", "121106"):
                out["comments"].append(str(it.TextValue))
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return out
