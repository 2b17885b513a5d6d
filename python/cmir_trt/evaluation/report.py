"""Multi-centre evaluation report: per model and centre group ACC/AUC/SEN/SPE with stratified-bootstrap 95% CIs,
Brier score and reliability curve, DeLong p-values between models; written as report.md/.csv/.json and PNG plots.

Centre groups (the source study's Table 3 columns): `train` (all training-split cases), `internal` (the internal
validation split) and one group per external centre (`external:<centre>`). The decision threshold of each model is
fixed beforehand (Youden's J on the internal split, stored in the checkpoint) and applied unchanged to every group.

Nothing here imports torch: it works on arrays of predictions.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text
from .calibration import brier_score, reliability_curve
from .delong import delong_test
from .metrics import DEFAULT_RESAMPLES, METRICS, check_binary, metrics_with_ci

SPLITS = ("train", "internal", "external")
METRIC_NAMES = {"acc": "ACC", "auc": "AUC", "sen": "SEN", "spe": "SPE"}


@dataclass
class ModelPredictions:
    """One model's probabilities for every case of a cohort, in the cohort's case order."""

    name: str
    probability: np.ndarray  # [N] float, P(MVI+)
    threshold: float
    threshold_source: str = "checkpoint"
    info: dict[str, Any] = field(default_factory=dict)  # checkpoint path, sha256, variant, ... (plain data)


@dataclass
class CaseTable:
    """The cases being evaluated: ids, centres, splits and 0/1 labels, all [N]."""

    case_ids: Sequence[str]
    centres: Sequence[str]
    splits: Sequence[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.case_ids)
        if not (len(self.centres) == len(self.splits) == len(self.labels) == n):
            raise ValueError("case_ids, centres, splits and labels differ in length")
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split name(s) {bad}; expected {SPLITS}")
        self.labels = np.asarray(self.labels).astype(np.int64)
        if not np.all((self.labels == 0) | (self.labels == 1)):
            raise ValueError("labels must be 0/1 (MVI-/MVI+)")

    def groups(self) -> dict[str, np.ndarray]:
        """Ordered centre groups -> boolean masks: train, internal, then each external centre (sorted)."""
        splits = np.asarray(self.splits)
        centres = np.asarray(self.centres)
        out: dict[str, np.ndarray] = {}
        for name in ("train", "internal"):
            mask = splits == name
            if mask.any():
                out[name] = mask
        for c in sorted(set(centres[splits == "external"].tolist())):
            out[f"external:{c}"] = (splits == "external") & (centres == c)
        return out


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_json_float(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_float(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return _json_float(v.item())
    return v


def build_report(cases: CaseTable, models: Sequence[ModelPredictions], synthetic: bool,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, n_bins: int = 10,
                 data_description: str = "") -> dict[str, Any]:
    """All numbers of the report as a plain dict (the content of report.json)."""
    if not models:
        raise ValueError("no models to evaluate")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    groups = cases.groups()
    if not groups:
        raise ValueError("no cases in any split")
    n = len(cases.case_ids)
    out_models = []
    for m in models:
        prob = np.asarray(m.probability, dtype=np.float64)
        if prob.shape != (n,):
            raise ValueError(f"model {m.name!r}: {prob.shape} probabilities for {n} cases")
        check_binary(cases.labels, prob, f"probabilities of model {m.name!r}")
        if not math.isfinite(m.threshold):
            raise ValueError(f"model {m.name!r}: threshold must be finite, got {m.threshold}")
        per_group: dict[str, Any] = {}
        for gi, (g, mask) in enumerate(groups.items()):
            y, p = cases.labels[mask], prob[mask]
            # the same seed per group for every model: resamples are paired across models
            r = metrics_with_ci(y, p, m.threshold, n_resamples=n_resamples, seed=seed + gi)
            r["brier"] = brier_score(y, p)
            r["reliability"] = reliability_curve(y, p, n_bins)
            r["synthetic"] = bool(synthetic)
            per_group[g] = r
        out_models.append({"name": m.name, "threshold": float(m.threshold), "threshold_source": m.threshold_source,
                           "synthetic": bool(synthetic), "info": dict(m.info), "centres": per_group})
    delong = []
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            pa = np.asarray(models[i].probability, dtype=np.float64)
            pb = np.asarray(models[j].probability, dtype=np.float64)
            res = {}
            for g, mask in groups.items():
                y = cases.labels[mask]
                if y.min() == y.max():
                    res[g] = {"auc_a": math.nan, "auc_b": math.nan, "difference": math.nan, "z": math.nan,
                              "p_value": math.nan}
                    continue
                d = delong_test(y, pa[mask], pb[mask])
                res[g] = {"auc_a": d.auc_a, "auc_b": d.auc_b, "difference": d.difference, "z": d.z,
                          "p_value": d.p_value}
            delong.append({"model_a": models[i].name, "model_b": models[j].name, "centres": res})
    group_info = []
    splits = np.asarray(cases.splits)
    centres = np.asarray(cases.centres)
    for g, mask in groups.items():
        group_info.append({"key": g, "split": g.split(":")[0], "centres": sorted(set(centres[mask].tolist())),
                           "n": int(mask.sum()), "n_pos": int(cases.labels[mask].sum())})
    del splits
    return _json_float({
        "title": ("CMIR evaluation on SYNTHETIC data (not clinical performance)" if synthetic
                  else "CMIR evaluation"),
        "synthetic": bool(synthetic),
        "data": data_description,
        "ci": {"method": "stratified bootstrap percentile", "level": 0.95, "n_resamples": int(n_resamples),
               "seed": int(seed)},
        "decision_rule": "MVI+ if probability >= threshold (Youden's J on the internal split, fixed for all centres)",
        "groups": group_info,
        "models": out_models,
        "delong": delong,
    })


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _fmt_ci(r: dict[str, Any], key: str) -> str:
    lo, hi = r.get(f"{key}_ci") or (None, None)
    return f"{_fmt(r.get(key))} ({_fmt(lo)}-{_fmt(hi)})"


def _p(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return "<0.001" if v < 1e-3 else f"{v:.3f}"


def metric_table_md(report: dict[str, Any], group: str, row_label: str = "Model") -> str:
    """Markdown table: one row per model, ACC/AUC/SEN/SPE (95% CI) on one centre group (Table 2 layout)."""
    head = f"| {row_label} | n | " + " | ".join(f"{METRIC_NAMES[k]} (95% CI)" for k in METRICS) + " | Brier |\n"
    head += "|---|---:|" + "---:|" * len(METRICS) + "---:|\n"
    rows = []
    for m in report["models"]:
        r = m["centres"].get(group)
        if r is None:
            continue
        rows.append(f"| {m['name']} | {r['n']} | " + " | ".join(_fmt_ci(r, k) for k in METRICS) +
                    f" | {_fmt(r['brier'])} |")
    return head + "\n".join(rows) + "\n"


def centre_table_md(report: dict[str, Any], row_label: str = "Model") -> str:
    """Markdown table in the Table 3 layout: one row per model, per centre AUC (95% CI) and SEN/SPE."""
    groups = [g["key"] for g in report["groups"]]
    head = f"| {row_label} | threshold | " + " | ".join(f"{g}: AUC (95% CI) | {g}: SEN/SPE" for g in groups) + " |\n"
    head += "|---|---:|" + "---:|---:|" * len(groups) + "\n"
    rows = []
    for m in report["models"]:
        cells = []
        for g in groups:
            r = m["centres"][g]
            cells.append(_fmt_ci(r, "auc"))
            cells.append(f"{_fmt(r['sen'])}/{_fmt(r['spe'])}")
        rows.append(f"| {m['name']} | {_fmt(m['threshold'], 4)} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def report_markdown(report: dict[str, Any]) -> str:
    syn = report["synthetic"]
    lines = [f"# {report['title']}", ""]
    if syn:
        lines += ["**SYNTHETIC DATA** — every number below was measured on a generated cohort; it says nothing "
                  "about clinical performance.", ""]
    if report.get("data"):
        lines += [f"Data: {report['data']}", ""]
    ci = report["ci"]
    lines += [f"95% CIs: {ci['method']}, {ci['n_resamples']} resamples, seed {ci['seed']}. "
              f"Decision rule: {report['decision_rule']}.", ""]
    lines += ["## Groups", "", "| group | centres | n | MVI+ |", "|---|---|---:|---:|"]
    for g in report["groups"]:
        lines.append(f"| {g['key']} | {', '.join(g['centres'])} | {g['n']} | {g['n_pos']} |")
    lines += ["", "## All centres (Table 3 layout" + (", synthetic" if syn else "") + ")", "",
              centre_table_md(report)]
    for g in report["groups"]:
        lines += [f"## {g['key']}" + (" (synthetic)" if syn else ""), "", metric_table_md(report, g["key"])]
    if report["delong"]:
        lines += ["## DeLong test of AUC differences" + (" (synthetic)" if syn else ""), "",
                  "| model A | model B | " + " | ".join(f"{g['key']}: ΔAUC, p" for g in report["groups"]) + " |",
                  "|---|---|" + "---:|" * len(report["groups"])]
        for d in report["delong"]:
            cells = []
            for g in report["groups"]:
                r = d["centres"][g["key"]]
                diff = r["difference"]
                cells.append("n/a" if diff is None else f"{diff:+.3f}, p={_p(r['p_value'])}")
            lines.append(f"| {d['model_a']} | {d['model_b']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Models", ""]
    for m in report["models"]:
        info = ", ".join(f"{k}={v}" for k, v in m["info"].items())
        lines.append(f"- **{m['name']}**: threshold {m['threshold']:.6f} ({m['threshold_source']}); {info}")
    lines.append("")
    return "\n".join(lines)


def report_csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model; per centre group columns `<group> <METRIC>`, `... ci_low`, `... ci_high`, Brier."""
    rows = []
    for m in report["models"]:
        row: dict[str, Any] = {"model": m["name"], "synthetic": m["synthetic"], "threshold": m["threshold"]}
        for g in report["groups"]:
            r = m["centres"][g["key"]]
            row[f"{g['key']} n"] = r["n"]
            for k in METRICS:
                lo, hi = r[f"{k}_ci"]
                row[f"{g['key']} {METRIC_NAMES[k]}"] = r[k]
                row[f"{g['key']} {METRIC_NAMES[k]} ci_low"] = lo
                row[f"{g['key']} {METRIC_NAMES[k]} ci_high"] = hi
            row[f"{g['key']} Brier"] = r["brier"]
        rows.append(row)
    return rows


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    buf = io.StringIO()
    cols = list(columns or (rows[0].keys() if rows else []))
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def predictions_rows(cases: CaseTable, models: Sequence[ModelPredictions], synthetic: bool) -> list[dict[str, Any]]:
    rows = []
    for m in models:
        for i, cid in enumerate(cases.case_ids):
            p = float(m.probability[i])
            # repr is the shortest exact decimal: re-reading gives back p, so decision == (probability >= threshold)
            rows.append({"model": m.name, "case_id": cid, "centre": cases.centres[i], "split": cases.splits[i],
                         "label": int(cases.labels[i]), "probability": repr(p),
                         "decision": int(p >= m.threshold), "synthetic": bool(synthetic)})
    return rows


def write_report(out_dir: str | os.PathLike[str], cases: CaseTable, models: Sequence[ModelPredictions],
                 synthetic: bool, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, plots: bool = True,
                 data_description: str = "") -> dict[str, Any]:
    """Compute the report and write predictions.csv, report.{md,csv,json} (+ roc_*.png, calibration_*.png)."""
    out = Path(out_dir)
    report = build_report(cases, models, synthetic, n_resamples, seed, data_description=data_description)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.csv", csv_text(predictions_rows(cases, models, synthetic)))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.csv", csv_text(report_csv_rows(report)))
    atomic_write_text(out / "report.md", report_markdown(report))
    if plots:
        from .plots import write_plots

        report["plots"] = write_plots(out, cases, models, synthetic)
    return report
