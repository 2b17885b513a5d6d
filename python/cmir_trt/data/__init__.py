"""cmir_trt.data: from files on disk to the model's three inputs and back, plus a SYNTHETIC multi-centre cohort.

Imports here need only numpy; SimpleITK, scipy and matplotlib are imported inside the functions that use them
(the GPU machine has no SimpleITK).
"""

from __future__ import annotations

from .clinical import (
    CLINICAL_FEATURES,
    DEFAULT_RANGES,
    ClinicalSchema,
    ClinicalTable,
    read_clinical_csv,
    read_clinical_table,
)
from .cohort import Cohort, load_cohort, read_manifest
from .errors import ClinicalDataError, DataError, GeometryError, ImageReadError, MaskError
from .integrity import verify_image_file
from .io import IMAGE_EXTENSIONS, CaseFiles, find_cases, read_dicom_files, read_image, write_image_atomic
from .orient import Reorientation, canonical
from .preprocess import (
    PREPROCESS_VERSION,
    PreparedCase,
    PreprocessParams,
    heatmap_image,
    place_back,
    prepare_case,
    prepare_images,
    read_case_images,
    resample_onto,
    write_channels_png,
    write_heatmap,
)
from .series import PhaseSelection, SeriesInfo, select_phases
from .synth import CENTRES, GRADES, PRESETS, SPLITS, cohort_plan, generate_cohort

__all__ = [
    "CENTRES", "CLINICAL_FEATURES", "DEFAULT_RANGES", "GRADES", "IMAGE_EXTENSIONS", "PREPROCESS_VERSION", "PRESETS",
    "SPLITS", "CaseFiles", "ClinicalDataError", "ClinicalSchema", "ClinicalTable", "Cohort", "DataError",
    "GeometryError", "ImageReadError", "MaskError", "PhaseSelection", "PreparedCase", "PreprocessParams",
    "Reorientation", "SeriesInfo", "canonical", "cohort_plan", "find_cases", "generate_cohort", "heatmap_image",
    "load_cohort", "place_back", "prepare_case", "prepare_images", "read_case_images", "read_clinical_csv",
    "read_clinical_table", "read_dicom_files", "read_image", "read_manifest", "resample_onto", "select_phases",
    "verify_image_file", "write_channels_png", "write_heatmap", "write_image_atomic",
]
