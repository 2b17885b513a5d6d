"""Clinical features: the schema (names, valid ranges, normalisation statistics) and the CSV reader.

The normalisation statistics are fitted once on the training cohort and stored with the model (checkpoint
metadata), never recomputed at prediction time. `diameter_mm` is measured from the tumour mask by the preprocessing
(`PreparedCase.diameter_mm`), not read from the CSV: a CSV column of that name is ignored.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClinicalDataError

# Model order of the default 8 features (DESIGN.md section 1).
CLINICAL_FEATURES: tuple[str, ...] = (
    "age", "sex", "log10_afp", "log10_pivka", "hbv", "cirrhosis", "diameter_mm", "albi",
)

# Physically/clinically plausible ranges; a value outside is a data-entry error, not an outlier.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "age": (0.0, 120.0),            # years
    "sex": (0.0, 1.0),              # 1 = male, 0 = female
    "log10_afp": (-2.0, 7.0),       # log10 of AFP in ng/mL
    "log10_pivka": (-1.0, 7.0),     # log10 of PIVKA-II in mAU/mL
    "hbv": (0.0, 1.0),              # HBV infection 0/1
    "cirrhosis": (0.0, 1.0),        # cirrhosis 0/1
    "diameter_mm": (0.0, 400.0),    # largest axial tumour diameter, from the mask
    "albi": (-6.0, 2.0),            # ALBI score
}
MASK_FEATURES: tuple[str, ...] = ("diameter_mm",)
_STD_FLOOR = 1e-6


@dataclass
class ClinicalSchema:
    """Feature names (model order), valid ranges, which features come from the mask, and the fitted mean/std.

    `fit(raw)` sets mean/std in place and returns self; `normalise(raw)` checks the values and returns
    (raw - mean) / std as float32.
    """

    features: tuple[str, ...] = CLINICAL_FEATURES
    ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RANGES))
    from_mask: tuple[str, ...] = MASK_FEATURES
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.features = tuple(str(f) for f in self.features)
        self.from_mask = tuple(str(f) for f in self.from_mask)
        if len(set(self.features)) != len(self.features):
            raise ClinicalDataError(f"clinical schema: duplicate feature names in {self.features}")
        missing = [f for f in self.features if f not in self.ranges]
        if missing:
            raise ClinicalDataError(f"clinical schema: no valid range for feature(s) {missing}")
        self.ranges = {k: (float(v[0]), float(v[1])) for k, v in self.ranges.items()}
        for name, (lo, hi) in self.ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ClinicalDataError(f"clinical schema: bad range for {name!r}: [{lo}, {hi}]")
        unknown = [f for f in self.from_mask if f not in self.features]
        if unknown:
            raise ClinicalDataError(f"clinical schema: from_mask names unknown feature(s) {unknown}")
        for attr in ("mean", "std"):
            val = getattr(self, attr)
            if val is not None:
                val = tuple(float(x) for x in val)
                if len(val) != len(self.features) or not all(math.isfinite(x) for x in val):
                    raise ClinicalDataError(f"clinical schema: {attr} must be {len(self.features)} finite numbers")
                setattr(self, attr, val)
        if self.std is not None and min(self.std) <= 0:
            raise ClinicalDataError("clinical schema: std must be > 0")

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def csv_columns(self) -> tuple[str, ...]:
        """The features read from the clinical CSV (all but those measured from the mask)."""
        return tuple(f for f in self.features if f not in self.from_mask)

    @property
    def fitted(self) -> bool:
        return self.mean is not None and self.std is not None

    def check(self, raw: np.ndarray, case_ids: Sequence[str] | None = None) -> np.ndarray:
        """raw as float64 [N, F] after checking shape, finiteness and ranges (errors name case and feature)."""
        arr = np.asarray(raw)
        if arr.ndim == 1 and arr.shape[0] == self.num_features:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.num_features:
            raise ClinicalDataError(f"clinical array must have shape [N, {self.num_features}] "
                                    f"({', '.join(self.features)}), got {tuple(np.shape(raw))}")
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ClinicalDataError(f"clinical array is not numeric: {exc}") from exc

        def who(i: int) -> str:
            return f"case {case_ids[i]!r}" if case_ids is not None else f"row {i}"

        bad = ~np.isfinite(arr)
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            raise ClinicalDataError(f"{who(i)}, column {self.features[j]!r}: value is {arr[i, j]} (NaN/inf)")
        for j, name in enumerate(self.features):
            lo, hi = self.ranges[name]
            out = (arr[:, j] < lo) | (arr[:, j] > hi)
            if out.any():
                i = int(np.flatnonzero(out)[0])
                raise ClinicalDataError(f"{who(i)}, column {name!r}: value {arr[i, j]:g} outside the valid "
                                        f"range [{lo:g}, {hi:g}]")
        return arr

    def fit(self, raw: np.ndarray) -> ClinicalSchema:
        """Set mean/std (population std, floored at 1e-6 so constant features stay finite) from raw [N, F]."""
        arr = self.check(raw)
        if arr.shape[0] < 2:
            raise ClinicalDataError(f"clinical schema: need at least 2 cases to fit, got {arr.shape[0]}")
        self.mean = tuple(float(x) for x in arr.mean(axis=0))
        self.std = tuple(float(max(x, _STD_FLOOR)) for x in arr.std(axis=0))
        return self

    def normalise(self, raw: np.ndarray, case_ids: Sequence[str] | None = None) -> np.ndarray:
        """(raw - mean) / std as float32 [N, F]; raw is checked first."""
        if not self.fitted:
            raise ClinicalDataError("clinical schema has no normalisation statistics: call fit() on the "
                                    "training cohort or load the schema stored with the model")
        arr = self.check(raw, case_ids)
        out = (arr - np.asarray(self.mean)) / np.asarray(self.std)
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "ranges": {k: [lo, hi] for k, (lo, hi) in self.ranges.items() if k in self.features},
            "from_mask": list(self.from_mask),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClinicalSchema:
        if not isinstance(d, dict):
            raise ClinicalDataError(f"clinical schema must be a dict, got {type(d).__name__}")
        known = {"features", "ranges", "from_mask", "mean", "std"}
        unknown = set(d) - known
        if unknown:
            raise ClinicalDataError(f"clinical schema: unknown field(s) {sorted(unknown)}")
        try:
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in d.get("ranges", DEFAULT_RANGES).items()}
            return cls(features=tuple(d.get("features", CLINICAL_FEATURES)), ranges=ranges,
                       from_mask=tuple(d.get("from_mask", MASK_FEATURES)), mean=d.get("mean"), std=d.get("std"))
        except (TypeError, IndexError, AttributeError) as exc:
            raise ClinicalDataError(f"clinical schema: malformed dict: {exc}") from exc

    def assemble(self, values: dict[str, float], measured: dict[str, float], case_id: str = "?") -> np.ndarray:
        """One raw row [F] (float64) in schema order from CSV values and mask measurements."""
        row = np.empty(self.num_features, dtype=np.float64)
        for j, name in enumerate(self.features):
            src = measured if name in self.from_mask else values
            if name not in src:
                where = "mask measurement" if name in self.from_mask else "clinical CSV"
                raise ClinicalDataError(f"case {case_id!r}, column {name!r}: missing from the {where}")
            row[j] = float(src[name])
        return self.check(row[None], [case_id])[0]


@dataclass
class ClinicalTable:
    """A clinical CSV read row by row: `values` {case_id: {column: value}} of the good rows, `errors`
    {case_id: one-line message} of the rows that cannot be used (each names the file, case, column and value)."""

    path: Path
    values: dict[str, dict[str, float]]
    errors: dict[str, str]
    unassigned: list[str] = field(default_factory=list)  # problems of rows without a case id (line numbers named)

    def row(self, case_id: str) -> dict[str, float]:
        """The case's values, or ClinicalDataError with the row's problem (or that it has no row)."""
        if case_id in self.errors:
            raise ClinicalDataError(self.errors[case_id])
        if case_id not in self.values:
            raise ClinicalDataError(f"{self.path}: no row for case {case_id!r}")
        return self.values[case_id]


def read_clinical_table(path: str | os.PathLike[str], schema: ClinicalSchema | None = None) -> ClinicalTable:
    """The clinical CSV with per-row checks: a bad value fails only its own case. File-level problems (unreadable,
    no header, no case_id column, a schema column missing, duplicate columns) raise ClinicalDataError; a missing
    file raises FileNotFoundError."""
    schema = schema or ClinicalSchema()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clinical CSV not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(n, r) for n, r in enumerate(csv.reader(f), start=1)]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise ClinicalDataError(f"{path}: not a readable CSV file: {exc}") from exc
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ClinicalDataError(f"{path}: empty CSV (expected a header with 'case_id' and {schema.csv_columns})")
    header = [c.strip() for c in rows[0][1]]
    if "case_id" not in header:
        hint = " (semicolon- or tab-separated? the file must be comma-separated)" \
            if len(header) == 1 and any(c in header[0] for c in ";\t") else ""
        raise ClinicalDataError(f"{path}: no 'case_id' column (header: {header}){hint}")
    missing = [c for c in schema.csv_columns if c not in header]
    if missing:
        raise ClinicalDataError(f"{path}: missing column(s) {missing} (the model's schema needs "
                                f"{list(schema.csv_columns)})")
    dup_cols = sorted({c for c in header if header.count(c) > 1 and c in (*schema.csv_columns, "case_id")})
    if dup_cols:
        raise ClinicalDataError(f"{path}: duplicate column(s) {dup_cols}")
    idx = {c: header.index(c) for c in ("case_id", *schema.csv_columns)}
    values: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    first_line: dict[str, int] = {}
    unassigned: list[str] = []
    for lineno, r in rows[1:]:
        cid = r[idx["case_id"]].strip() if len(r) > idx["case_id"] else ""
        if not cid:  # belongs to no case: reported by the strict reader, ignored case by case
            unassigned.append(f"{path}, line {lineno}: empty case_id")
            continue
        if cid in first_line:
            errors[cid] = f"{path}: case {cid!r} appears more than once (lines {first_line[cid]} and {lineno})"
            values.pop(cid, None)
            continue
        first_line[cid] = lineno
        if len(r) != len(header):
            errors[cid] = f"{path}, line {lineno}: case {cid!r}: {len(r)} fields, the header has {len(header)}"
            continue
        try:
            values[cid] = _row_values(path, cid, r, idx, schema)
        except ClinicalDataError as exc:
            errors[cid] = str(exc)
    return ClinicalTable(path, values, errors, unassigned)


def _row_values(path: Path, cid: str, r: list[str], idx: dict[str, int], schema: ClinicalSchema) -> dict[str, float]:
    vals: dict[str, float] = {}
    for col in schema.csv_columns:
        text = r[idx[col]].strip()
        try:
            v = float(text)
        except ValueError:
            raise ClinicalDataError(f"{path}: case {cid!r}, column {col!r}: {text!r} is not a number") from None
        if not math.isfinite(v):
            raise ClinicalDataError(f"{path}: case {cid!r}, column {col!r}: value is {text!r} (NaN/inf)")
        lo, hi = schema.ranges[col]
        if not lo <= v <= hi:
            raise ClinicalDataError(f"{path}: case {cid!r}, column {col!r}: value {v:g} outside the valid "
                                    f"range [{lo:g}, {hi:g}]")
        vals[col] = v
    return vals


def clinical_values(values: Mapping[str, Any], schema: ClinicalSchema, case_id: str) -> dict[str, float]:
    """A caller's clinical mapping (numbers or numeric strings) checked like a CSV row: the schema's CSV columns,
    numeric, finite, in range. Mask-derived features are not taken from it."""
    row = ["" if values.get(c) is None else str(values.get(c)) for c in schema.csv_columns]
    absent = [c for c in schema.csv_columns if values.get(c) is None]
    if absent:
        raise ClinicalDataError(f"case {case_id!r}: clinical values lack {absent} (the model's schema needs "
                                f"{list(schema.csv_columns)})")
    idx = {c: i for i, c in enumerate(schema.csv_columns)}
    return _row_values(Path("clinical values"), case_id, row, idx, schema)


def read_clinical_csv(path: str | os.PathLike[str], schema: ClinicalSchema | None = None,
                      case_ids: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """Raw values {case_id: {column: value}} for the schema's CSV columns (mask-derived features excluded), all
    rows required to be good (training, evaluation): the first bad row raises.

    Checks: a `case_id` column and every schema column present, no duplicate case, each value numeric, finite and
    within the schema's range; with `case_ids`, every listed case present (only those are returned).
    Errors are ClinicalDataError naming the file, case and column. `read_clinical_table` is the per-case variant.
    """
    table = read_clinical_table(path, schema)
    path = table.path
    wanted = list(case_ids) if case_ids is not None else None
    if table.unassigned:
        raise ClinicalDataError(table.unassigned[0])
    bad = [c for c in (wanted if wanted is not None else table.errors) if c in table.errors]
    if bad:
        raise ClinicalDataError(table.errors[bad[0]])
    out = table.values
    if wanted is not None:
        absent = [c for c in wanted if c not in out]
        if absent:
            raise ClinicalDataError(f"{path}: no row for case(s) {absent[:10]}{' ...' if len(absent) > 10 else ''}")
        out = {c: out[c] for c in wanted}
    return out
