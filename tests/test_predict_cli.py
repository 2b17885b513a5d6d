"""`cmir-trt predict` end to end: a folder of synthetic cases (one broken) -> JSON, summary CSV, heatmaps; native and
torch backends agree; `cmir-trt demo` runs the native engine."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from _engine_helpers import export, native_core, small_model

from cmir_trt.cli import main

sitk = pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from cmir_trt.commands.demo import write_synthetic_case
    from cmir_trt.data import ClinicalSchema

    root = tmp_path_factory.mktemp("cases")
    schema = ClinicalSchema()
    rows = []
    for i in range(3):
        d = tmp_path_factory.mktemp(f"c{i}")
        write_synthetic_case(d, seed=i, schema=schema, case_id=f"CASE{i}")
        for f in d.iterdir():
            if f.name == "clinical.csv":
                rows.append(f.read_text(encoding="utf-8").splitlines()[1])
                header = f.read_text(encoding="utf-8").splitlines()[0]
            else:
                f.rename(root / f.name)
    (root / "CASE2_0000.nii.gz").write_bytes(b"this is not a NIfTI file")  # a broken case
    (root / "clinical.csv").write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    native_core()
    from cmir_trt.data import ClinicalSchema
    from cmir_trt.model.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("models")
    schema = ClinicalSchema()
    raw = np.array([[50, 1, 2, 2, 1, 1, 20, -2.5], [65, 0, 3, 3, 0, 1, 35, -2.0]], dtype=np.float64)
    schema.fit(raw)
    meta = {"clinical_schema": schema.to_dict(), "preprocess": {"image_size": 64, "margin_mm": 8.0},
            "threshold": 0.45, "training_data": {"synthetic": True, "description": "test"}}
    model = small_model("full", image_size=64, width=0.125, seed=3)
    ckpt = save_checkpoint(d / "m.pt", model, meta)
    return ckpt, export(str(ckpt), d / "m.plan")


def test_predict_native_and_torch(cohort, models, tmp_path, capsys):
    ckpt, plan = models
    outs = {}
    for backend, model in (("native", plan), ("torch", ckpt)):
        out = tmp_path / backend
        rc = main(["predict", "--model", str(model), "--input", str(cohort), "--out", str(out), "--threads", "2",
                   "--no-progress"])
        assert rc == 1  # one case failed, the others ran
        outs[backend] = out
        err = capsys.readouterr().err
        assert "CASE2: FAILED" in err
        with open(out / "summary.csv", encoding="utf-8") as f:
            rows = {r["case_id"]: r for r in csv.DictReader(f)}
        assert rows["CASE2"]["status"] == "error" and rows["CASE2"]["error"]
        assert rows["CASE0"]["status"] == rows["CASE1"]["status"] == "ok"
        assert not list(out.glob("CASE2*")), "a failed case must leave no files"
        assert not list(out.glob(".*")), "no temporary files left behind"
        for cid in ("CASE0", "CASE1"):
            res = json.loads((out / f"{cid}.json").read_text(encoding="utf-8"))
            assert res["threshold"] == pytest.approx(0.45) and res["synthetic_training_data"] is True
            assert res["decision"] == ("MVI+" if res["probability"] >= 0.45 else "MVI-")
            assert res["disclaimer"] == "research use only, not for diagnostic use"
            assert res["model"].startswith("cmir-full-") and res["backend"] == backend
            assert res["preprocessing"]["params"]["margin_mm"] == 8.0 and res["clinical_normalised"] is True
            hm = sitk.ReadImage(str(out / res["heatmap_nifti"]))
            art = sitk.ReadImage(str(cohort / f"{cid}_0000.nii.gz"))
            assert hm.GetSize() == art.GetSize() and np.allclose(hm.GetSpacing(), art.GetSpacing())
            v = sitk.GetArrayFromImage(hm)
            assert 0.0 <= v.min() and v.max() <= 1.0 and v.max() > 0
            assert (out / res["heatmap_png"]).stat().st_size > 1000
    for cid in ("CASE0", "CASE1"):
        a = json.loads((outs["native"] / f"{cid}.json").read_text(encoding="utf-8"))
        b = json.loads((outs["torch"] / f"{cid}.json").read_text(encoding="utf-8"))
        assert abs(a["probability"] - b["probability"]) <= 1e-5


def test_predict_errors(models, tmp_path, capsys):
    _, plan = models
    assert main(["predict", "--model", str(plan), "--input", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert "input folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", str(plan), "--input", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 1
    assert "no cases found" in capsys.readouterr().err


def test_demo_runs_native_engine(tmp_path, capsys):
    native_core()
    rc = main(["demo", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--threads", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "native backend" in text and "probability" in text and "DEMO001.json" in text
    res = json.loads((tmp_path / "out" / "DEMO001.json").read_text(encoding="utf-8"))
    assert 0.0 <= res["probability"] <= 1.0 and res["backend"] == "native"
