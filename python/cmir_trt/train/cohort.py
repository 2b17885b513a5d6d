"""From a cohort folder (cmir_trt.data layout) to a trained checkpoint with its full metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .loop import TrainData, TrainResult, fit


def cohort_description(data_dir: Path, cohort: Any) -> dict[str, Any]:
    """The checkpoint's "training_data" entry: what the model was trained on (and whether it was synthetic)."""
    splits = np.asarray(cohort.splits)
    used = np.isin(splits, ["train", "internal"])
    desc: dict[str, Any] = {
        "description": "",
        "synthetic": bool(cohort.synthetic),
        "data_dir": data_dir.name,  # the folder name only: absolute paths differ between machines
        "centres": sorted(set(np.asarray(cohort.centres)[used].tolist())),
        "n_cases": int(used.sum()),
        "n_train": int((splits == "train").sum()),
        "n_internal": int((splits == "internal").sum()),
        "n_pos_train": int(np.asarray(cohort.labels)[splits == "train"].sum()),
        "n_pos_internal": int(np.asarray(cohort.labels)[splits == "internal"].sum()),
        "external_centres": sorted(set(np.asarray(cohort.centres)[splits == "external"].tolist())),
    }
    meta_path = data_dir / "cohort.json"
    if cohort.synthetic and meta_path.is_file():
        try:
            params = json.loads(meta_path.read_text(encoding="utf-8")).get("params", {})
        except (OSError, ValueError):
            params = {}
        desc["generator"] = {k: params[k] for k in ("preset", "seed", "scale", "strength", "version") if k in params}
        desc["description"] = (f"SYNTHETIC cmir_trt cohort (preset {params.get('preset')}, seed {params.get('seed')}, "
                               f"scale {params.get('scale')}, strength {params.get('strength')})")
    else:
        desc["description"] = f"cohort folder {data_dir.name}"
    return desc


def train_from_directory(data_dir: str | os.PathLike[str], cfg: TrainConfig, out: str | os.PathLike[str],
                         resume: bool = False, progress: bool | None = None,
                         log: Callable[[str], None] | None = None, mask_label: int | None = None) -> TrainResult:
    """Load and preprocess the cohort at cfg.image_size, fit the clinical normalisation on the training split, train
    (train split; early stopping and threshold on the internal split) and write the checkpoint `out`."""
    from ..data import ClinicalSchema, PreprocessParams, load_cohort

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    params = PreprocessParams(image_size=cfg.image_size, mask_label=mask_label)
    cohort = load_cohort(data_dir, params, progress=bool(progress))
    train_mask = np.asarray(cohort.splits) == "train"
    schema = ClinicalSchema(features=tuple(cohort.features)).fit(cohort.clinical_raw[train_mask])
    clinical = schema.normalise(cohort.clinical_raw, list(cohort.case_ids))
    data = TrainData(cohort.art, cohort.pv, clinical, cohort.labels, cohort.splits)
    meta = {
        "clinical_schema": schema.to_dict(),
        "preprocess": params.to_dict(),
        "training_data": cohort_description(data_dir, cohort),
    }
    return fit(data, cfg, out, meta, resume=resume, progress=progress, synthetic=bool(cohort.synthetic), log=log)
