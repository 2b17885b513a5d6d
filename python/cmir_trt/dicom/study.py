"""SYNTHETIC two-phase MR studies as DICOM: an ART and a PV MR series (one file per slice) and a SEG of the tumour.

The volumes come from SimpleITK images (the synthetic cohort of cmir_trt.data.synth, or any test image); geometry is
kept exactly (ITK and DICOM both use LPS patient coordinates). UIDs are derived from the case id and seed, so the
same inputs give the same study, series and instance UIDs and byte-identical MR files (the SEG carries highdicom's
creation time stamps). Everything written here is labelled SYNTHETIC (patient name, descriptions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from ._common import MR_IMAGE_STORAGE, dataset_bytes, stable_uid, write_dataset

# Series descriptions the shipped phase rules recognise (arterial / portal venous).
ART_DESCRIPTION = "SYNTHETIC t1 vibe arterial"
PV_DESCRIPTION = "SYNTHETIC t1 vibe portal venous"
SEG_LABEL = "tumor"


@dataclass
class StudyFiles:
    """Where one written study lives: the study folder, its series folders and files, and its UIDs."""

    folder: Path
    study_uid: str
    patient_id: str
    art_series_uid: str
    pv_series_uid: str
    art_files: list[Path] = field(default_factory=list)
    pv_files: list[Path] = field(default_factory=list)
    seg_file: Path | None = None

    @property
    def files(self) -> list[Path]:
        return [*self.art_files, *self.pv_files, *([self.seg_file] if self.seg_file else [])]


def _base_dataset(study: dict[str, str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName = study["patient_name"]
    ds.PatientID = study["patient_id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = study.get("patient_sex", "")
    ds.StudyInstanceUID = study["study_uid"]
    ds.StudyDate = study["date"]
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = study["accession"]
    ds.StudyDescription = "SYNTHETIC liver MRI (cmir_trt phantom)"
    ds.Manufacturer = "cmir_trt synthetic phantom"
    return ds


def mr_series_datasets(image: Any, study: dict[str, str], series_uid: str, series_number: int, description: str,
                       acquisition_time: str, frame_of_reference_uid: str) -> list[Any]:
    """One MR Image Storage dataset per slice of a 3-D SimpleITK image (int16 voxels, any direction)."""
    import SimpleITK as sitk
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    arr = sitk.GetArrayFromImage(image)
    if arr.ndim != 3:
        raise ValueError(f"{description}: a 3-D image is required, got {arr.ndim}-D")
    arr = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    sp = [float(s) for s in image.GetSpacing()]
    out = []
    for k in range(arr.shape[0]):
        ds = _base_dataset(study)
        sop_uid = stable_uid("mr", series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.PatientPosition = "FFS"
        ds.Laterality = ""  # type 2C; the liver is unpaired (dciodvfy wants it present)
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "4.0"
        ds.EchoTime = "2.0"
        ds.EchoTrainLength = "1"
        ds.ContrastBolusAgent = "SYNTHETIC gadolinium"
        ds.AcquisitionDate = study["date"]
        ds.AcquisitionTime = acquisition_time
        ds.ContentDate = study["date"]
        ds.ContentTime = acquisition_time
        ds.InstanceNumber = k + 1
        pos = np.array(image.TransformIndexToPhysicalPoint((0, 0, k)), dtype=np.float64)
        ds.ImagePositionPatient = [f"{x:.6f}" for x in pos]
        ds.ImageOrientationPatient = [f"{x:.8f}" for x in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{sp[1]:.8g}", f"{sp[0]:.8g}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{sp[2]:.8g}"
        ds.SpacingBetweenSlices = f"{sp[2]:.8g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = arr[k].tobytes()
        out.append(ds)
    return out


def seg_dataset(mask: Any, art_datasets: list[Any], series_uid: str, label: str = SEG_LABEL,
                extra_segments: dict[str, Any] | None = None) -> Any:
    """A binary DICOM SEG of `mask` (a SimpleITK image on the ART grid, > 0.5 = tumour) referencing the ART slices.

    Segment 1 is `label`; extra_segments ({label: mask image}) adds further segments (tests use it for several)."""
    import highdicom as hd
    import SimpleITK as sitk
    from pydicom.sr.codedict import codes

    arrays = [sitk.GetArrayFromImage(mask) > 0.5]
    labels = [label]
    for name, img in (extra_segments or {}).items():
        arrays.append(sitk.GetArrayFromImage(img) > 0.5)
        labels.append(name)
    pixels = np.stack(arrays, axis=-1).astype(np.uint8)  # [frames, rows, cols, segments]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm if i == 0 else codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, name in enumerate(labels)]
    seg = hd.seg.Segmentation(
        source_images=art_datasets, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series_uid, series_number=100,
        sop_instance_uid=stable_uid("seg", series_uid), instance_number=1,
        manufacturer="cmir_trt synthetic phantom", manufacturer_model_name="cmir_trt synth",
        software_versions="1", device_serial_number="0", series_description="SYNTHETIC tumour segmentation",
        content_label="TUMOR", content_description="SYNTHETIC tumour mask")
    return seg


def write_study(out_dir: str | os.PathLike[str], case_id: str, art: Any, pv: Any, mask: Any | None, seed: int = 0,
                study_uid: str | None = None, patient_id: str | None = None) -> StudyFiles:
    """Write one SYNTHETIC study: OUT/ART/*.dcm, OUT/PV/*.dcm and (if mask) OUT/SEG/seg.dcm.

    `mask` must be on the ART grid. The study folder is staged and renamed into place (never half-written)."""
    import shutil
    import tempfile

    out = Path(out_dir)
    patient_id = patient_id or case_id
    study_uid = study_uid or stable_uid("study", case_id, seed)
    study = {"patient_name": f"SYNTHETIC^{case_id}", "patient_id": patient_id, "study_uid": study_uid,
             "date": "20260101", "accession": case_id[:16]}
    frame_uid = stable_uid("for", study_uid)
    files = StudyFiles(out, study_uid, patient_id, stable_uid("series", study_uid, "art"),
                       stable_uid("series", study_uid, "pv"))
    art_ds = mr_series_datasets(art, study, files.art_series_uid, 5, ART_DESCRIPTION, "120030", frame_uid)
    pv_ds = mr_series_datasets(pv, study, files.pv_series_uid, 6, PV_DESCRIPTION, "120110", frame_uid)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for sub, dss in (("ART", art_ds), ("PV", pv_ds)):
            for ds in dss:
                write_dataset(ds, stage / sub / f"{ds.InstanceNumber:04d}.dcm")
        if mask is not None:
            seg = seg_dataset(mask, art_ds, stable_uid("series", study_uid, "seg"))
            atomic_write_bytes(stage / "SEG" / "seg.dcm", dataset_bytes(seg))
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    files.art_files = sorted((out / "ART").glob("*.dcm"))
    files.pv_files = sorted((out / "PV").glob("*.dcm"))
    files.seg_file = (out / "SEG" / "seg.dcm") if mask is not None else None
    return files


COHORT_ENTRIES = ("nifti", "dicom", "clinical.csv", "manifest.csv")


def write_dicom_cohort(out_dir: str | os.PathLike[str], preset: str = "tiny", seed: int = 0, scale: float = 1.0,
                       strength: float = 1.0, workers: int = 1, progress: bool = True) -> Path:
    """The SYNTHETIC cohort of cmir_trt.data.synth as DICOM studies.

    OUT/nifti/    the cohort as generate_cohort writes it (the source of the volumes)
    OUT/dicom/CASE/{ART,PV,SEG}/   one study per case (PatientID = AccessionNumber = case id)
    OUT/clinical.csv, OUT/manifest.csv   copies of the cohort's (case_id = PatientID), for `dicom-node --clinical`
    A folder holding anything else is refused. Returns OUT."""
    import shutil

    import SimpleITK as sitk

    from ..data import generate_cohort, read_manifest

    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder")
        other = sorted(p.name for p in out.iterdir() if p.name not in COHORT_ENTRIES and not p.name.startswith("."))
        if other:
            raise ValueError(f"{out} holds files that are not a DICOM synth cohort ({', '.join(other[:5])}); "
                             "refusing to write into it")
    nifti = generate_cohort(out / "nifti", preset=preset, seed=seed, scale=scale, progress=progress,
                            strength=strength, workers=workers)
    rows = read_manifest(nifti / "manifest.csv")
    ids = [str(r["case_id"]) for r in rows]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="synth DICOM studies (synthetic)", unit="study")
        except ImportError:
            bar = None
    try:
        for cid in ids:
            imgs = [sitk.ReadImage(str(nifti / cid / f"{cid}{s}.nii.gz")) for s in ("_0000", "_0001", "_mask")]
            write_study(out / "dicom" / cid, cid, *imgs, seed=seed)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    for name in ("clinical.csv", "manifest.csv"):
        atomic_write_bytes(out / name, (nifti / name).read_bytes())
    keep = set(ids)
    for d in (out / "dicom").iterdir():  # studies of an earlier, larger cohort in this folder
        if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
            shutil.rmtree(d)
    return out
