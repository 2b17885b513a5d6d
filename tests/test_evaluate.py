"""Multi-centre report: threshold fixed on the internal split and applied unchanged to external centres, report
fields, DeLong between models, files written completely, synthetic labelling. Independent references: direct
numpy counting, scikit-learn and delong_test on the same arrays."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cmir_trt.evaluation import CaseTable, ModelPredictions, build_report, delong_test, write_report, youden_threshold


def _cohort(seed: int = 0):
    """train/internal at RRSH, two external centres whose score distribution is shifted (a calibration drift)."""
    rng = np.random.default_rng(seed)
    blocks = [("RRSH", "train", 60), ("RRSH", "internal", 41), ("AAA", "external", 37), ("BBB", "external", 53)]
    ids, centres, splits, labels, good, weak = [], [], [], [], [], []
    for c, s, n in blocks:
        y = (rng.random(n) < 0.4).astype(int)
        y[:2] = [0, 1]
        shift = {"AAA": 0.8, "BBB": -0.6}.get(c, 0.0)
        z = 1.8 * y + rng.normal(size=n) + shift
        good += list(1 / (1 + np.exp(-z)))
        weak += list(1 / (1 + np.exp(-(0.4 * y + rng.normal(size=n) + shift))))
        ids += [f"{c}_{s}_{i:03d}" for i in range(n)]
        centres += [c] * n
        splits += [s] * n
        labels += list(y)
    return CaseTable(ids, centres, splits, np.array(labels)), np.array(good), np.array(weak)


def test_internal_threshold_is_applied_unchanged_to_externals(tmp_path):
    cases, good, _ = _cohort()
    internal = np.asarray(cases.splits) == "internal"
    thr = youden_threshold(cases.labels[internal], good[internal])
    m = ModelPredictions("good", good, thr)
    report = write_report(tmp_path, cases, [m], synthetic=True, n_resamples=200, plots=False)
    assert report["models"][0]["threshold"] == thr
    for g in report["groups"]:
        mask = cases.groups()[g["key"]]
        y, p = cases.labels[mask], good[mask]
        r = report["models"][0]["centres"][g["key"]]
        assert r["threshold"] == thr
        assert r["sen"] == pytest.approx(np.mean(p[y == 1] >= thr), abs=1e-12)
        assert r["spe"] == pytest.approx(np.mean(p[y == 0] < thr), abs=1e-12)
        assert r["acc"] == pytest.approx(np.mean((p >= thr) == y), abs=1e-12)
        assert r["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    # the shifted external centres have their own (different) Youden optimum, which must NOT have been used
    for c in ("AAA", "BBB"):
        mask = np.asarray(cases.centres) == c
        assert youden_threshold(cases.labels[mask], good[mask]) != pytest.approx(thr, abs=1e-3)
    with open(tmp_path / "predictions.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(cases.case_ids)
    for row, p in zip(rows, good, strict=True):
        assert int(row["decision"]) == int(p >= thr)
        assert float(row["probability"]) == p
    assert set(rows[0]) >= {"case_id", "centre", "label", "probability", "decision"}


def test_report_json_fields_and_groups(tmp_path):
    cases, good, weak = _cohort(1)
    models = [ModelPredictions("good", good, 0.5), ModelPredictions("weak", weak, 0.5)]
    write_report(tmp_path, cases, models, synthetic=True, n_resamples=100, plots=False)
    rep = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert rep["synthetic"] is True and "SYNTHETIC" in rep["title"]
    assert [g["key"] for g in rep["groups"]] == ["train", "internal", "external:AAA", "external:BBB"]
    assert rep["ci"]["n_resamples"] == 100
    for m in rep["models"]:
        assert m["synthetic"] is True and m["threshold"] == 0.5
        for g in rep["groups"]:
            r = m["centres"][g["key"]]
            for key in ("n", "auc", "auc_ci", "acc", "acc_ci", "sen", "sen_ci", "spe", "spe_ci", "threshold",
                        "synthetic", "brier"):
                assert key in r, key
            assert r["n"] == g["n"]
            for k in ("auc", "acc", "sen", "spe"):
                lo, hi = r[f"{k}_ci"]
                assert 0 <= lo <= r[k] <= hi <= 1
    # DeLong per centre equals a direct call on the same cases
    (d,) = rep["delong"]
    assert (d["model_a"], d["model_b"]) == ("good", "weak")
    for g, mask in cases.groups().items():
        ref = delong_test(cases.labels[mask], good[mask], weak[mask])
        assert d["centres"][g]["p_value"] == pytest.approx(ref.p_value, abs=1e-12)
        assert d["centres"][g]["difference"] == pytest.approx(ref.difference, abs=1e-12)
    assert min(d["centres"][g]["p_value"] for g in d["centres"]) < 0.05  # good is clearly better somewhere
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in md and "DeLong" in md and "external:BBB" in md
    with open(tmp_path / "report.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["good", "weak"] and rows[0]["synthetic"] == "True"
    assert float(rows[0]["internal AUC"]) == pytest.approx(rep["models"][0]["centres"]["internal"]["auc"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_not_synthetic_has_no_synthetic_banner():
    cases, good, _ = _cohort(2)
    rep = build_report(cases, [ModelPredictions("m", good, 0.5)], synthetic=False, n_resamples=50)
    assert rep["synthetic"] is False and "SYNTHETIC" not in rep["title"]


def test_bootstrap_paired_across_models():
    # the same seed per centre group for every model: identical predictions give identical CIs
    cases, good, _ = _cohort(3)
    rep = build_report(cases, [ModelPredictions("a", good, 0.5), ModelPredictions("b", good.copy(), 0.5)],
                       synthetic=True, n_resamples=100)
    a, b = rep["models"]
    assert a["centres"] == b["centres"]
    assert all(d["p_value"] == 1.0 for d in rep["delong"][0]["centres"].values())


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    cases, good, weak = _cohort(4)
    rep = write_report(tmp_path, cases, [ModelPredictions("good", good, 0.5), ModelPredictions("weak", weak, 0.5)],
                       synthetic=True, n_resamples=20)
    assert sorted(rep["plots"]) == sorted(f"{k}_{g}.png" for k in ("roc", "calibration")
                                          for g in ("train", "internal", "external_AAA", "external_BBB"))
    for name in rep["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mutate,msg", [
    (lambda c, p: (c, p[:-1]), "probabilities"),
    (lambda c, p: (c, np.where(np.arange(p.size) == 3, np.nan, p)), "non-finite"),
])
def test_bad_predictions_rejected(mutate, msg):
    cases, good, _ = _cohort(5)
    cases, good = mutate(cases, good)
    with pytest.raises(ValueError, match=msg):
        build_report(cases, [ModelPredictions("m", good, 0.5)], synthetic=True, n_resamples=10)


def test_bad_case_table():
    with pytest.raises(ValueError, match="split"):
        CaseTable(["a", "b"], ["X", "X"], ["train", "validation"], np.array([0, 1]))
    with pytest.raises(ValueError, match="0/1"):
        CaseTable(["a", "b"], ["X", "X"], ["train", "train"], np.array([0, 2]))
    cases, good, _ = _cohort(6)
    with pytest.raises(ValueError, match="unique"):
        build_report(cases, [ModelPredictions("m", good, 0.5), ModelPredictions("m", good, 0.5)], True, 10)
