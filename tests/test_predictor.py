"""cmir_trt.Predictor: one case (folder, prefix, CaseFiles, images already read), a folder case by case, the result
object vs. an independent assembly of the same pipeline (prepare_case + schema + Engine), and what `cmir-trt predict`
writes (CASE.json == CaseResult.to_json() plus file names)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import CLINICAL_HEADER, clinical_row, phantom, small_models, write_case, write_cases

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return small_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("cases"), 3)


def _model(models):
    ckpt, plan = models
    return plan if plan is not None else ckpt


def _reference(model_path, case_dir: Path, cid: str):
    """The pipeline assembled by hand from the library pieces: what Predictor must reproduce."""
    from cmir_trt import Engine
    from cmir_trt.data import ClinicalSchema, PreprocessParams, find_cases, prepare_case, read_clinical_csv

    eng = Engine(model_path)
    schema = ClinicalSchema.from_dict(eng.metadata["clinical_schema"])
    params = PreprocessParams.from_dict(dict(eng.metadata["preprocess"]))
    case = next(c for c in find_cases(case_dir) if c.case_id == cid)
    prep = prepare_case(case, params)
    raw = schema.assemble(read_clinical_csv(case_dir / "clinical.csv", schema)[cid], {"diameter_mm": prep.diameter_mm})
    pred = eng.predict(prep.art[None], prep.pv[None], schema.normalise(raw[None]))
    return float(pred.probability[0, 0]), float(pred.logit[0, 0]), pred.heatmap[0, 0], prep


def test_predict_case_matches_hand_assembled_pipeline(models, cases):
    from cmir_trt import CaseResult, Predictor
    from cmir_trt.data import find_cases, read_clinical_csv

    p = Predictor(_model(models), threads=1)
    assert p.synthetic is True and p.threshold == pytest.approx(0.45) and p.model_id.startswith("cmir-full-")
    assert p.params.image_size == 32 and p.params.margin_mm == 8.0 and p.schema.fitted
    clin = read_clinical_csv(cases / "clinical.csv", p.schema)
    ref_p, ref_l, ref_hm, ref_prep = _reference(_model(models), cases, "CASE1")
    case_files = next(c for c in find_cases(cases) if c.case_id == "CASE1")
    # three ways to name the same case, plus the images already read
    results = [p.predict_case(cases / "CASE1", clin["CASE1"]), p.predict_case(case_files, clin["CASE1"]),
               p.predict_images("CASE1", *(sitk.ReadImage(str(cases / f"CASE1{s}.nii.gz"))
                                            for s in ("_0000", "_0001", "_mask")), clinical=clin["CASE1"])]
    for r in results:
        assert isinstance(r, CaseResult) and r.case_id == "CASE1"
        assert abs(r.probability - ref_p) <= 1e-6 and abs(r.logit - ref_l) <= 1e-5
        assert r.decision == ("MVI+" if r.probability >= 0.45 else "MVI-") and r.threshold == pytest.approx(0.45)
        np.testing.assert_allclose(r.heatmap_roi, ref_hm, atol=1e-6)
        np.testing.assert_array_equal(r.prepared.art, ref_prep.art)
        art = sitk.ReadImage(str(cases / "CASE1_0000.nii.gz"))
        assert r.heatmap.GetSize() == art.GetSize()
        np.testing.assert_allclose(r.heatmap.GetOrigin(), art.GetOrigin())
        np.testing.assert_allclose(r.heatmap.GetDirection(), art.GetDirection())
        hm = sitk.GetArrayFromImage(r.heatmap)
        assert hm.max() > 0 and set(np.flatnonzero(hm.any(axis=(1, 2)))) <= set(r.prepared.slices)
    # clinical values given as strings (a CSV row read elsewhere) are accepted and checked like a CSV row
    as_text = {k: str(v) for k, v in clin["CASE1"].items()}
    assert abs(p.predict_case(cases / "CASE1", as_text).probability - ref_p) <= 1e-6


def test_predict_case_errors_are_one_line_data_errors(models, cases, tmp_path):
    from cmir_trt import Predictor
    from cmir_trt.data import ClinicalDataError, DataError, read_clinical_csv

    p = Predictor(_model(models), threads=1)
    clin = read_clinical_csv(cases / "clinical.csv", p.schema)["CASE0"]
    with pytest.raises(ClinicalDataError, match=r"case 'CASE0': the model needs clinical values \(age, sex"):
        p.predict_case(cases / "CASE0")
    with pytest.raises(ClinicalDataError, match=r"case 'CASE0', column 'age': 'old' is not a number"):
        p.predict_case(cases / "CASE0", {**clin, "age": "old"})
    with pytest.raises(ClinicalDataError, match=r"lack \['albi'\]"):
        p.predict_case(cases / "CASE0", {k: v for k, v in clin.items() if k != "albi"})
    with pytest.raises(DataError, match=r"case 'NOPE': no files NOPE_0000/_0001/_mask"):
        p.predict_case(cases / "NOPE", clin)
    empty = tmp_path / "empty_mask"
    art, pv, mask = phantom(seed=5)
    write_case(empty, "E", (art, pv, sitk.Image(mask.GetSize(), sitk.sitkUInt8)))
    sitk_mask = sitk.ReadImage(str(empty / "E_mask.nii.gz"))
    with pytest.raises(DataError, match=r"case 'E': the tumour mask is empty") as ei:
        p.predict_images("E", art, pv, sitk_mask, clinical=clin)
    assert "\n" not in str(ei.value)


def test_predict_folder_case_by_case(models, tmp_path):
    from cmir_trt import CaseFailure, CaseResult, Predictor

    root = write_cases(tmp_path / "cases", 4, seed0=10)
    lines = (root / "clinical.csv").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace(lines[2].split(",")[3], "n/a", 1)  # CASE1: log10_afp not a number
    (root / "clinical.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "CASE3_0001.nii.gz").write_bytes((root / "CASE3_0001.nii.gz").read_bytes()[:500])  # truncated PV
    p = Predictor(_model(models), threads=1)
    items = {it.case_id: it for it in p.predict_folder(root)}
    assert sorted(items) == ["CASE0", "CASE1", "CASE2", "CASE3"]
    assert isinstance(items["CASE0"], CaseResult) and isinstance(items["CASE2"], CaseResult)
    assert isinstance(items["CASE1"], CaseFailure)
    assert items["CASE1"].error == f"{root / 'clinical.csv'}: case 'CASE1', column 'log10_afp': 'n/a' is not a number"
    assert isinstance(items["CASE3"], CaseFailure) and "truncated" in items["CASE3"].error
    assert "CASE3_0001.nii.gz" in items["CASE3"].error
    # no clinical.csv beside the cases: every case fails with the reason, nothing raises
    (root / "clinical.csv").unlink()
    fails = list(p.predict_folder(root))
    assert all(isinstance(f, CaseFailure) and "clinical CSV not found" in f.error for f in fails)
    # an explicitly given CSV that does not exist stops the run
    with pytest.raises(FileNotFoundError, match="clinical CSV not found"):
        list(p.predict_folder(root, clinical_csv=tmp_path / "absent.csv"))


def test_cli_json_is_to_json_plus_file_names(models, cases, tmp_path, capsys):
    from cmir_trt import Predictor
    from cmir_trt.cli import main
    from cmir_trt.data import read_clinical_csv

    model = _model(models)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), "-i", str(cases), "-o", str(out), "--threads", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    p = Predictor(model, threads=1)
    clin = read_clinical_csv(cases / "clinical.csv", p.schema)
    with open(out / "summary.csv", encoding="utf-8") as f:
        summary = {r["case_id"]: r for r in csv.DictReader(f)}
    for cid in ("CASE0", "CASE1", "CASE2"):
        written = json.loads((out / f"{cid}.json").read_text(encoding="utf-8"))
        assert written.pop("heatmap_nifti") == f"{cid}_heatmap.nii.gz"
        assert written.pop("heatmap_png") == f"{cid}_heatmap.png"
        expect = json.loads(json.dumps(p.predict_case(cases / cid, clin[cid]).to_json()))
        assert written == expect
        assert float(summary[cid]["probability"]) == pytest.approx(expect["probability"], abs=1e-6)
        hm = sitk.ReadImage(str(out / f"{cid}_heatmap.nii.gz"))
        np.testing.assert_allclose(sitk.GetArrayFromImage(hm),
                                   sitk.GetArrayFromImage(p.predict_case(cases / cid, clin[cid]).heatmap))


def test_grading_model_result(tmp_path, cases):
    from cmir_trt import Predictor
    from cmir_trt.data import read_clinical_csv

    ckpt, _ = small_models(tmp_path / "m3", num_classes=3)
    p = Predictor(ckpt, threads=1)
    r = p.predict_case(cases / "CASE0", read_clinical_csv(cases / "clinical.csv", p.schema)["CASE0"])
    assert len(r.probabilities) == 3 and abs(sum(r.probabilities) - 1.0) <= 1e-5
    assert r.probability == pytest.approx(r.probabilities[1] + r.probabilities[2], abs=1e-12)
    assert r.decision == ("M0", "M1", "M2")[int(np.argmax(r.probabilities))]
    pc = min(max(r.probability, 1e-12), 1 - 1e-12)  # log-odds of P(MVI), finite at p = 0 or 1
    assert r.logit == pytest.approx(np.log(pc / (1 - pc)), abs=1e-9)
    js = r.to_json()
    assert js["probability_mvi"] == r.probability and len(js["probability"]) == 3


def test_precision_and_settings(models, cases, tmp_path, capsys):
    from cmir_trt import Predictor
    from cmir_trt.cli import main

    model = _model(models)
    rc = main(["predict", "--model", str(model), "-i", str(cases), "-o", str(tmp_path / "o"),
               "--precision", "bf16", "--no-progress"])
    err = capsys.readouterr().err
    if str(model).endswith(".pt"):  # a checkpoint runs on the torch CPU backend: fp32 only
        want = "precision='bf16' (bf16 on the CPU: the native engine, a .plan file)"
    else:
        from cmir_trt._native import load_core

        ok, why = load_core().bf16_supported()
        want = None if ok else f"precision='bf16' refused: {why}"
    if want is not None:  # refused in one line, before any output
        assert rc == 1 and err.startswith("cmir-trt predict: error: ") and want in err and err.count("\n") == 1
        assert not (tmp_path / "o").exists()
        with pytest.raises(ValueError, match="bf16") as ei:
            Predictor(model, precision="bf16")
        assert "\n" not in str(ei.value)
    else:  # a CPU with bf16: it runs, says so in every result, and warns that this plan records no bf16 check
        assert rc == 0, err
        assert "records no parity check of precision bf16" in err
        js = json.loads((tmp_path / "o" / "CASE0.json").read_text(encoding="utf-8"))
        assert js["precision"] == "bf16"
        assert Predictor(model, precision="bf16").precision_validated is None
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(_model(models), precision="fp64")
    p = Predictor(_model(models), threshold=0.9, mask_label=2, threads=1)
    assert p.threshold == 0.9 and p.threshold_source == "given" and p.params.mask_label == 2
    assert p.params.to_dict()["mask_label"] == 2 and "synthetic" in repr(p).lower()
    for bad in (1.5, float("nan"), "high"):
        with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
            Predictor(_model(models), threshold=bad)
    assert Predictor(_model(models), threshold=np.float32(0.25)).threshold == 0.25


def test_clinical_header_constant_matches_schema():
    from cmir_trt.data import ClinicalSchema

    assert CLINICAL_HEADER.split(",")[1:] == list(ClinicalSchema().csv_columns)
    assert clinical_row("X", 0).count(",") == CLINICAL_HEADER.count(",")


def test_prepare_inputs_and_result_halves_batch_like_predict_case(models, cases):
    """The two halves of predict_images (for callers that batch or run the engine elsewhere) give the same result
    as predict_case when two cases go through the engine as one batch."""
    from cmir_trt import Predictor
    from cmir_trt.data import read_clinical_csv

    p = Predictor(_model(models), threads=1)
    clin = read_clinical_csv(cases / "clinical.csv", p.schema)
    ids = ["CASE0", "CASE2"]
    halves = [p.prepare_inputs(cid, *(sitk.ReadImage(str(cases / f"{cid}{s}.nii.gz"))
                                      for s in ("_0000", "_0001", "_mask")), clinical=clin[cid]) for cid in ids]
    art = np.stack([prep.art for prep, _ in halves])
    pv = np.stack([prep.pv for prep, _ in halves])
    x = np.concatenate([c for _, c in halves])
    out = p.engine.predict(art, pv, x)
    for n, cid in enumerate(ids):
        r = p.result(halves[n][0], out.probability[n], out.logit[n], out.heatmap[n, 0])
        ref = p.predict_case(cases / cid, clin[cid])
        assert r.case_id == cid and abs(r.probability - ref.probability) <= 1e-5 and r.decision == ref.decision
        np.testing.assert_allclose(sitk.GetArrayFromImage(r.heatmap), sitk.GetArrayFromImage(ref.heatmap), atol=1e-5)
