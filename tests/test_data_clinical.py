"""Clinical schema (fit/normalise/serialise) and the clinical CSV reader of cmir_trt.data.

Reference: numpy float64 mean/std and (x - mean) / std; error messages must name the case and the column.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmir_trt.data import CLINICAL_FEATURES, ClinicalDataError, ClinicalSchema, read_clinical_csv

HEADER = "case_id,age,sex,log10_afp,log10_pivka,hbv,cirrhosis,albi"


def _raw(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(30, 80, n), rng.integers(0, 2, n), rng.uniform(0, 4, n), rng.uniform(0.5, 4, n),
                     rng.integers(0, 2, n), rng.integers(0, 2, n), rng.uniform(10, 80, n),
                     rng.uniform(-3.5, -1.5, n)], 1)


def test_feature_order_and_mask_feature() -> None:
    assert CLINICAL_FEATURES == ("age", "sex", "log10_afp", "log10_pivka", "hbv", "cirrhosis", "diameter_mm", "albi")
    s = ClinicalSchema()
    assert s.from_mask == ("diameter_mm",) and "diameter_mm" not in s.csv_columns and len(s.csv_columns) == 7


def test_fit_and_normalise_match_float64_reference() -> None:
    raw = _raw(37)
    s = ClinicalSchema().fit(raw)
    np.testing.assert_allclose(s.mean, raw.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.std, raw.std(0), rtol=1e-12)
    other = _raw(5, seed=1)
    got = s.normalise(other)
    assert got.dtype == np.float32 and got.shape == (5, 8)
    np.testing.assert_allclose(got, (other - raw.mean(0)) / raw.std(0), rtol=1e-6, atol=1e-6)
    # a constant feature gets std floored, stays finite
    raw[:, 4] = 1.0
    s2 = ClinicalSchema().fit(raw)
    assert s2.std[4] == pytest.approx(1e-6) and np.isfinite(s2.normalise(raw)).all()


def test_round_trip_through_json() -> None:
    s = ClinicalSchema().fit(_raw(10))
    back = ClinicalSchema.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    np.testing.assert_array_equal(back.normalise(_raw(3, 2)), s.normalise(_raw(3, 2)))
    sub = ClinicalSchema(features=("age", "diameter_mm"))
    assert ClinicalSchema.from_dict(sub.to_dict()).features == ("age", "diameter_mm") and not sub.fitted
    with pytest.raises(ClinicalDataError, match="unknown field"):
        ClinicalSchema.from_dict({"features": ["age"], "colour": 1})


def test_normalise_errors_name_case_and_feature() -> None:
    s = ClinicalSchema().fit(_raw(10))
    with pytest.raises(ClinicalDataError, match=r"shape \[N, 8\]"):
        s.normalise(np.zeros((2, 7)))
    bad = _raw(3)
    bad[1, 2] = np.nan
    with pytest.raises(ClinicalDataError, match=r"case 'b', column 'log10_afp'.*NaN"):
        s.normalise(bad, ["a", "b", "c"])
    bad = _raw(3)
    bad[2, 0] = 150
    with pytest.raises(ClinicalDataError, match=r"row 2, column 'age': value 150 outside the valid range \[0, 120\]"):
        s.normalise(bad)
    with pytest.raises(ClinicalDataError, match="no normalisation statistics"):
        ClinicalSchema().normalise(_raw(2))


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "clinical.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_read_clinical_csv_values(tmp_path: Path) -> None:
    p = _write(tmp_path, f"{HEADER},diameter_mm,notes\nA,61,1,2.5,1.25,1,0,-2.75,99,x\nB, 44 ,0,0.5,3,0,1,-3.1,5,y\n")
    got = read_clinical_csv(p, ClinicalSchema())
    assert got == {"A": {"age": 61.0, "sex": 1.0, "log10_afp": 2.5, "log10_pivka": 1.25, "hbv": 1.0,
                         "cirrhosis": 0.0, "albi": -2.75},
                   "B": {"age": 44.0, "sex": 0.0, "log10_afp": 0.5, "log10_pivka": 3.0, "hbv": 0.0,
                         "cirrhosis": 1.0, "albi": -3.1}}  # diameter_mm from the CSV is ignored (mask measures it)
    assert list(read_clinical_csv(p, case_ids=["B"])) == ["B"]
    row = ClinicalSchema().assemble(got["A"], {"diameter_mm": 31.5}, "A")
    np.testing.assert_array_equal(row, [61, 1, 2.5, 1.25, 1, 0, 31.5, -2.75])


@pytest.mark.parametrize("text, pattern", [
    ("case_id,age,sex,log10_afp,log10_pivka,hbv,albi\nA,1,1,1,1,1,-2\n", r"missing column\(s\) \['cirrhosis'\]"),
    (f"{HEADER}\nA,61,1,high,1,1,0,-2\n", r"case 'A', column 'log10_afp': 'high' is not a number"),
    (f"{HEADER}\nA,61,1,1,NaN,1,0,-2\n", r"case 'A', column 'log10_pivka': value is 'NaN'"),
    (f"{HEADER}\nA,61,1,1,1,1,0,-2\nB,61,3,1,1,1,0,-2\n", r"case 'B', column 'sex': value 3 outside the valid"),
    (f"{HEADER}\nA,61,1,1,1,1,0,-2\nA,62,1,1,1,1,0,-2\n", r"case 'A' appears more than once"),
    (f"{HEADER}\nA,61,1,1,1,1,0\n", r"line 2: case 'A': 7 fields, the header has 8"),
    ("age,sex\n1,1\n", r"no 'case_id' column"),
    ("case_id;age;sex\nA;1;1\n", r"no 'case_id' column .*semicolon- or tab-separated\?"),
    ("", r"empty CSV"),
    (f"{HEADER}\nA,,1,1,1,1,0,-2\n", r"case 'A', column 'age': '' is not a number"),
])
def test_bad_csv(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ClinicalDataError, match=pattern):
        read_clinical_csv(_write(tmp_path, text), ClinicalSchema())


def test_missing_case_and_file(tmp_path: Path) -> None:
    p = _write(tmp_path, f"{HEADER}\nA,61,1,1,1,1,0,-2\n")
    with pytest.raises(ClinicalDataError, match=r"no row for case\(s\) \['Z9'\]"):
        read_clinical_csv(p, ClinicalSchema(), ["A", "Z9"])
    with pytest.raises(FileNotFoundError):
        read_clinical_csv(tmp_path / "none.csv", ClinicalSchema())
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ClinicalDataError, match="not a readable CSV"):
        read_clinical_csv(tmp_path / "bin.csv", ClinicalSchema())


def test_import_needs_only_numpy() -> None:
    # The GPU machine has no SimpleITK: importing cmir_trt.data (and the CLI) must not pull in the heavy libraries.
    import subprocess
    import sys

    code = ("import sys, cmir_trt.data; "
            "print(sorted(m for m in ('SimpleITK', 'scipy', 'matplotlib', 'tqdm') if m in sys.modules)); "
            "import cmir_trt.cli; cmir_trt.cli.build_parser(); print('SimpleITK' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "False"]
