"""A cohort folder (cases + clinical.csv + manifest.csv) prepared once into model-ready numpy arrays, cached.

The cache is an .npz under <data_dir>/.cache/, keyed by a hash of the preprocessing parameters (and
PREPROCESS_VERSION), the clinical schema's columns, and the bytes of manifest.csv and clinical.csv. Any change to
these gives a new key; a cache file that cannot be read is rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_via
from .clinical import ClinicalSchema, read_clinical_csv
from .errors import DataError
from .io import CaseFiles, find_cases
from .preprocess import PreprocessParams, prepare_case
from .synth import GRADES, SPLITS


@dataclass
class Cohort:
    case_ids: np.ndarray      # str [N]
    centres: np.ndarray       # str [N]
    splits: np.ndarray        # str [N]: train | internal | external
    labels: np.ndarray        # int64 [N]: MVI 0/1
    grades: np.ndarray        # int64 [N]: 0/1/2 = M0/M1/M2
    art: np.ndarray           # float32 [N, 3, S, S]
    pv: np.ndarray            # float32 [N, 3, S, S]
    masks: np.ndarray         # uint8 [N, 3, S, S]: the tumour component in the ROI
    clinical_raw: np.ndarray  # float64 [N, F], schema order, unnormalised (diameter_mm from the mask)
    features: tuple[str, ...]
    synthetic: bool

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: np.ndarray) -> Cohort:
        """The cases selected by a boolean mask or an index array."""
        idx = np.asarray(index)
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for f in fields(self):
            if f.name not in ("features", "synthetic"):
                kw[f.name] = kw[f.name][idx]
        return Cohort(**kw)

    def split(self, name: str) -> Cohort:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.subset(self.splits == name)


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of manifest.csv: case_id, centre, split, mvi (0/1), grade (M0/M1/M2); errors name case and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    need = ["case_id", "centre", "split", "mvi", "grade"]
    if not rows:
        raise DataError(f"{path}: manifest is empty")
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    out, seen = [], set()
    for r in rows:
        cid = (r["case_id"] or "").strip()
        if not cid or cid in seen:
            raise DataError(f"{path}: empty or duplicate case_id {cid!r}")
        seen.add(cid)
        if r["split"] not in SPLITS:
            raise DataError(f"{path}: case {cid!r}, column 'split': {r['split']!r} not one of {SPLITS}")
        if r["mvi"] not in ("0", "1"):
            raise DataError(f"{path}: case {cid!r}, column 'mvi': {r['mvi']!r} is not 0 or 1")
        if r["grade"] not in GRADES:
            raise DataError(f"{path}: case {cid!r}, column 'grade': {r['grade']!r} not one of {GRADES}")
        if (r["grade"] == "M0") != (r["mvi"] == "0"):
            raise DataError(f"{path}: case {cid!r}: grade {r['grade']} contradicts mvi {r['mvi']}")
        out.append({"case_id": cid, "centre": r["centre"], "split": r["split"], "mvi": int(r["mvi"]),
                    "grade": GRADES.index(r["grade"])})
    return out


def _cache_key(data_dir: Path, params: PreprocessParams, schema: ClinicalSchema, cases: list[CaseFiles]) -> str:
    h = hashlib.sha256()
    h.update(params.key().encode())
    h.update(repr((schema.features, schema.from_mask)).encode())
    for name in ("manifest.csv", "clinical.csv", "cohort.json"):
        if (data_dir / name).is_file():
            h.update(name.encode() + (data_dir / name).read_bytes())
    # Image files by name, size and modification time: an edited or replaced scan invalidates the cache.
    for case in cases:
        for f in (case.art, case.pv, case.mask):
            if f is None:
                continue
            for q in sorted(f.rglob("*")) if f.is_dir() else [f]:
                st = q.stat()
                h.update(f"{q.relative_to(data_dir)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_via(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")  # np.savez appends .npz otherwise


_ARRAYS = ("case_ids", "centres", "splits", "labels", "grades", "art", "pv", "masks", "clinical_raw")


def load_cohort(data_dir: str | os.PathLike[str], params: PreprocessParams | None = None, cache: bool = True,
                schema: ClinicalSchema | None = None, progress: bool = False) -> Cohort:
    """Every case of manifest.csv prepared (prepare_case) into arrays, in manifest order; cached as .npz."""
    data_dir = Path(data_dir)
    params = params or PreprocessParams()
    schema = schema or ClinicalSchema()
    manifest = read_manifest(data_dir / "manifest.csv")
    if not (data_dir / "clinical.csv").is_file():
        raise FileNotFoundError(f"clinical CSV not found: {data_dir / 'clinical.csv'}")
    synthetic = (data_dir / "cohort.json").is_file()
    ids = [m["case_id"] for m in manifest]
    found = {c.case_id: c for c in find_cases(data_dir, allow_incomplete=True)}
    absent = [cid for cid in ids if cid not in found]
    if absent:
        raise DataError(f"{data_dir}: no image files for case(s) {absent[:10]} listed in manifest.csv")
    cases = {cid: found[cid] for cid in ids}
    key = _cache_key(data_dir, params, schema, list(cases.values()))
    cache_path = data_dir / ".cache" / f"cohort_{key}.npz"
    if cache and cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in _ARRAYS}
            return Cohort(**arrays, features=schema.features, synthetic=synthetic)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            pass  # unreadable cache: rebuild it below

    clinical = read_clinical_csv(data_dir / "clinical.csv", schema, ids)
    it: Any = ids
    if progress:
        try:
            from tqdm import tqdm

            it = tqdm(ids, desc="preparing cases" + (" (synthetic)" if synthetic else ""), unit="case")
        except ImportError:
            pass
    art, pv, masks, raw = [], [], [], []
    for cid in it:
        p = prepare_case(cases[cid], params)
        art.append(p.art)
        pv.append(p.pv)
        masks.append(p.mask)
        raw.append(schema.assemble(clinical[cid], {"diameter_mm": p.diameter_mm}, cid))
    arrays = {
        "case_ids": np.array(ids, dtype=str),
        "centres": np.array([m["centre"] for m in manifest], dtype=str),
        "splits": np.array([m["split"] for m in manifest], dtype=str),
        "labels": np.array([m["mvi"] for m in manifest], dtype=np.int64),
        "grades": np.array([m["grade"] for m in manifest], dtype=np.int64),
        "art": np.stack(art).astype(np.float32),
        "pv": np.stack(pv).astype(np.float32),
        "masks": np.stack(masks).astype(np.uint8),
        "clinical_raw": np.stack(raw).astype(np.float64),
    }
    if cache:
        try:
            _save_npz_atomic(cache_path, arrays)
        except OSError:
            pass  # a read-only cohort folder still loads, just without a cache
    return Cohort(**arrays, features=schema.features, synthetic=synthetic)
