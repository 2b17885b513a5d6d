"""End to end through the CLI: synth tiny -> train 1 epoch -> evaluate (two names, DeLong) -> ablate (two variants).
The report is checked against an independent recomputation from predictions.csv (scikit-learn, numpy)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cmir_trt.cli import main
from cmir_trt.model import CheckpointError, load_checkpoint

pytestmark = pytest.mark.slow

SMALL = ["--epochs", "1", "--batch-size", "4", "--image-size", "32", "--width", "0.125", "--cmam-dim", "32",
         "--cmam-heads", "2", "--threads", "2", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from cmir_trt.data import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "tiny"
    generate_cohort(out, preset="tiny", seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("model") / "m.pt"
    assert main(["train", "--data", str(tiny), "--out", str(ckpt), *SMALL]) == 0
    return ckpt


def test_train_writes_loadable_checkpoint(trained):
    model = load_checkpoint(trained)
    meta = model.metadata
    assert meta["training_data"]["synthetic"] is True
    assert meta["training_data"]["centres"] == ["RRSH"]
    assert set(meta) >= {"clinical_schema", "preprocess", "threshold", "training_data", "seed", "versions"}
    assert meta["preprocess"]["image_size"] == 32 == model.config.image_size
    assert len(meta["clinical_schema"]["mean"]) == model.config.num_clinical


def test_evaluate_report_matches_predictions(tiny, trained, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["evaluate", "--model", str(trained), "--model", str(trained), "--name", "a", "--name", "b",
               "--data", str(tiny), "--out", str(out), "--bootstrap", "200", "--threads", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    thr = load_checkpoint(trained).metadata["threshold"]
    assert rep["synthetic"] is True
    with open(out / "predictions.csv", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == "a"]
    assert len(rows) == 26
    for g in rep["groups"]:
        split, _, centre = g["key"].partition(":")
        sel = [r for r in rows if r["split"] == split and (not centre or r["centre"] == centre)]
        y = np.array([int(r["label"]) for r in sel])
        p = np.array([float(r["probability"]) for r in sel])
        res = rep["models"][0]["centres"][g["key"]]
        assert res["threshold"] == thr  # the checkpoint's internal-split threshold, unchanged everywhere
        assert [int(r["decision"]) for r in sel] == [int(v >= thr) for v in p]
        assert res["n"] == len(sel)
        assert res["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)  # csv probabilities are exact
        assert res["sen"] == pytest.approx(np.mean(p[y == 1] >= thr), abs=1e-12)
    # the same model under two names: DeLong p = 1 everywhere
    assert all(c["p_value"] == 1.0 for c in rep["delong"][0]["centres"].values())
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# CMIR evaluation on SYNTHETIC data")
    assert (out / "roc_internal.png").is_file()


def test_ablate_two_variants(tiny, tmp_path, capsys):
    out = tmp_path / "abl"
    rc = main(["ablate", "--data", str(tiny), "--out", str(out), "--variants", "S1,full", "--bootstrap", "50",
               "--no-plots", *SMALL])
    assert rc == 0
    with open(out / "table2.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["S1", "full"]
    assert all(r["split"] == "internal" and r["synthetic"] == "True" for r in rows)
    assert "synthetic" in (out / "table2.md").read_text(encoding="utf-8").lower()
    assert load_checkpoint(out / "S1.pt").config.variant == "S1"
    # a second run with the same settings reuses the checkpoints instead of training again
    capsys.readouterr()
    assert main(["ablate", "--data", str(tiny), "--out", str(out), "--variants", "S1,full", "--bootstrap", "50",
                 "--no-plots", *SMALL]) == 0
    assert capsys.readouterr().out.count("reusing") == 2


def test_bad_checkpoint_is_refused(tiny, tmp_path, capsys):
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    rc = main(["evaluate", "--model", str(bad), "--data", str(tiny), "--out", str(tmp_path / "r")])
    assert rc == 1
    assert "not a readable cmir checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()
