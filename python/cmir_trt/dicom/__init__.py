"""cmir_trt.dicom: the DICOM side of cmir_trt (needs the `dicom` extra: pydicom, highdicom, pynetdicom).

- study: SYNTHETIC two-phase MR studies (ART and PV MR series + a SEG of the tumour) written from SimpleITK images;
- seg: a DICOM SEG segment as a tumour mask on the ART grid;
- results: the Comprehensive SR (MVI probability, decision, threshold, model) and the heatmap Secondary Capture;
- case: a received/exported study folder -> ART, PV, mask images and the files they came from;
- jobs, node: the durable job table and the C-STORE node (`cmir-trt dicom-node`).

Submodules import pydicom/highdicom at their top; `import cmir_trt.dicom` itself imports nothing heavy.
"""

from __future__ import annotations

DISCLAIMER = "Research use only, not for diagnostic use."
MANUFACTURER = "cmir_trt"
