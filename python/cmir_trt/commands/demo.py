"""`cmir-trt demo`: the whole deployment path on one synthetic case, end to end.

model (models/cmir-demo.pt when present, else a freshly initialised UNTRAINED model) -> plan in a cache folder ->
one synthetic case (ART/PV/mask NIfTI + clinical CSV) -> `predict` with the native engine -> JSON + heatmaps.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

HELP = "run the native engine end to end on a synthetic case (built-in demo model; research use only)"
REPO_MODEL = Path(__file__).resolve().parents[3] / "models" / "cmir-demo.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"checkpoint or plan (default: {REPO_MODEL.name} if present, else "
                                                 "an untrained model)")
    p.add_argument("--out", default=None, help="output folder (default: CACHE/demo-output)")
    p.add_argument("--cache", default=None, help="cache folder for the plan (default: $XDG_CACHE_HOME/cmir_trt)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic case")


def _cache_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cmir_trt"


def write_synthetic_case(folder: Path, seed: int, schema: Any, case_id: str = "DEMO001") -> None:
    """One SYNTHETIC case: a bright, slightly lobulated lesion in a noisy liver-like volume (ART, PV on a shifted
    grid-identical volume, mask) as NIfTI, and a clinical CSV row within the schema's ranges."""
    import numpy as np
    import SimpleITK as sitk

    from ..data import write_image_atomic
    rng = np.random.default_rng(seed)
    nz, n = 16, 96
    zz, yy, xx = np.mgrid[:nz, :n, :n].astype(np.float64)
    c = np.array([48.0, 46.0]) + rng.uniform(-4, 4, 2)
    ang = np.arctan2(yy - c[1], xx - c[0])
    radius = 11 * (1 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6)))
    r = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + ((zz - nz / 2) * 2.5) ** 2)
    mask = (r < radius).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, gain in (("0000", 1.8), ("0001", 1.3)):
        vol = 120 + 15 * rng.standard_normal((nz, n, n)) + gain * 70 * mask * (1 - 0.3 * (r / radius) ** 2)
        img = sitk.GetImageFromArray(vol.astype(np.float32))
        img.SetSpacing((0.8, 0.8, 2.5))
        write_image_atomic(img, folder / f"{case_id}_{suffix}.nii.gz")
    m = sitk.GetImageFromArray(mask)
    m.SetSpacing((0.8, 0.8, 2.5))
    write_image_atomic(m, folder / f"{case_id}_mask.nii.gz")
    typical = {"age": 58, "sex": 1, "log10_afp": 2.1, "log10_pivka": 2.4, "hbv": 1, "cirrhosis": 1, "albi": -2.6}
    cols = list(schema.csv_columns)
    vals = []
    for col in cols:
        lo, hi = schema.ranges[col]
        v = typical.get(col, (lo + hi) / 2)
        vals.append(f"{min(max(v, lo), hi):g}")
    text = "case_id," + ",".join(cols) + "\n" + case_id + "," + ",".join(vals) + "\n"
    (folder / "clinical.csv").write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    import hashlib
    import json

    from .. import cli
    from ..data import ClinicalSchema
    from ..export.plan import read_plan_metadata

    cache = _cache_dir(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    src = Path(args.model) if args.model else (REPO_MODEL if REPO_MODEL.is_file() else None)
    untrained = src is None
    if src is not None and src.suffix == ".plan":
        plan = src
        print(f"model: {src} (plan)")
    else:
        import torch

        from ..export.plan import export_plan
        from ..model import CMIRConfig, build_model
        from ..model.checkpoint import file_sha256

        if untrained:
            print("model: models/cmir-demo.pt not found -> a freshly initialised, UNTRAINED model "
                  "(its probabilities mean nothing)")
            torch.manual_seed(0)
            model = build_model(CMIRConfig(variant="full", width=0.25)).eval()
            model.metadata = {"training_data": {"description": "untrained (random initialisation)",  # type: ignore
                                                "synthetic": False}, "threshold": 0.5}
            tag = "untrained-full-w0.25-seed0"
            plan = cache / f"demo-{tag}.plan"
            if not plan.is_file():
                export_plan(model, plan, model_id="cmir-demo-untrained")
        else:
            assert src is not None
            sha = file_sha256(src)
            plan = cache / f"demo-{sha[:16]}.plan"
            print(f"model: {src} (checkpoint sha256 {sha[:12]}…)")
            if not plan.is_file():
                export_plan(str(src), plan)
        print(f"plan:  {plan}")
    meta = read_plan_metadata(plan)
    schema_d = meta.get("clinical_schema")
    schema = ClinicalSchema.from_dict(schema_d) if isinstance(schema_d, dict) else ClinicalSchema()
    case_dir = cache / f"demo-case-{args.seed}-{hashlib.sha256(json.dumps(schema_d).encode()).hexdigest()[:8]}"
    if not (case_dir / "clinical.csv").is_file():
        write_synthetic_case(case_dir, args.seed, schema)
    print(f"case:  {case_dir} (one SYNTHETIC case)")
    out = Path(args.out) if args.out else cache / "demo-output"
    argv = ["predict", "--model", str(plan), "--input", str(case_dir), "--out", str(out), "--backend", "native",
            "--no-progress"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    rc = cli.main(argv)
    for js in sorted(out.glob("*.json")):
        res = json.loads(js.read_text(encoding="utf-8"))
        prob = res["probability"]
        ptxt = f"{prob:.4f}" if isinstance(prob, float) else ", ".join(f"{p:.4f}" for p in prob)
        print(f"\n{res['case_id']}: probability {ptxt} -> {res['decision']} (threshold {res['threshold']:g}, "
              f"model {res['model']}{', UNTRAINED' if untrained else ''}"
              f"{', trained on SYNTHETIC data' if res.get('synthetic_training_data') and not untrained else ''})")
        print(f"  JSON:    {js}")
        print(f"  heatmap: {out / res['heatmap_nifti']}" + (f", {out / res['heatmap_png']}" if 'heatmap_png' in res
                                                             else ""))
        print(f"  {res['disclaimer']}")
    return rc
