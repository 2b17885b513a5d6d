"""Exceptions of the data path. All derive from ValueError so the CLI prints them as one clear line."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used (bad image, bad mask, bad CSV, inconsistent case)."""


class ImageReadError(DataError):
    """An image file or DICOM series that cannot be read, or is not a 3-D scalar volume."""


class GeometryError(DataError):
    """Phases or mask whose physical geometry cannot be reconciled (e.g. no overlap)."""


class MaskError(DataError):
    """A tumour mask that is empty or has no component of the requested rank."""


class ClinicalDataError(DataError):
    """A clinical CSV/array that breaks the schema (missing column, non-numeric, NaN, out of range, ...)."""
