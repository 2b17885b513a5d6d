"""Score a cohort folder with one or more checkpoints (PyTorch reference model; imports torch)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import youden_threshold
from .report import CaseTable, ModelPredictions


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [p.stem for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.stem}" if names.count(p.stem) > 1 else p.stem for p in paths]


def predict_directory(model_paths: Sequence[str | os.PathLike[str]], data_dir: str | os.PathLike[str],
                      names: Sequence[str] | None = None, batch_size: int = 64, threads: int = 2,
                      progress: bool = False, mask_label: int | None = None
                      ) -> tuple[CaseTable, list[ModelPredictions], bool]:
    """Every case of the cohort scored once per model: (cases, predictions, synthetic).

    Each model sees the cohort prepared with its own stored preprocessing parameters and clinical normalisation.
    Its threshold is the one stored in the checkpoint (Youden's J on its internal-validation split at training
    time); a checkpoint without one gets Youden's J on this cohort's internal split, and the report says so.
    `mask_label` overrides the models' stored tumour label (for a cohort whose masks label liver and tumour).
    """
    import torch

    from ..data import ClinicalSchema, PreprocessParams, load_cohort
    from ..model import load_checkpoint
    from ..train.loop import deterministic, predict_proba

    paths = [Path(p) for p in model_paths]
    if not paths:
        raise ValueError("no --model given")
    names = list(names) if names else _unique_names(paths)
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, one per model: {names}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    cohorts: dict[str, Any] = {}
    cases: CaseTable | None = None
    synthetic = False
    preds = []
    for name, path in zip(names, paths, strict=True):
        model = load_checkpoint(path)
        meta: dict[str, Any] = model.metadata  # type: ignore[assignment]
        if model.config.num_classes != 1:
            raise ValueError(f"{path}: evaluation reports MVI+/- metrics; this is a {model.config.num_classes}-class "
                             "grading model")
        params = PreprocessParams.from_dict(meta["preprocess"]) if "preprocess" in meta else \
            PreprocessParams(image_size=model.config.image_size)
        if mask_label is not None:
            params = dataclasses.replace(params, mask_label=mask_label)
        if params.image_size != model.config.image_size:
            raise ValueError(f"{path}: preprocessing image_size {params.image_size} != model image_size "
                             f"{model.config.image_size}")
        if "clinical_schema" not in meta:
            raise ValueError(f"{path}: checkpoint has no clinical_schema (normalisation statistics)")
        schema = ClinicalSchema.from_dict(meta["clinical_schema"])
        key = params.key() + repr(schema.features)
        if key not in cohorts:
            cohorts[key] = load_cohort(data_dir, params, schema=ClinicalSchema(features=schema.features),
                                       progress=progress)
        cohort = cohorts[key]
        table = CaseTable(list(cohort.case_ids), list(cohort.centres), list(cohort.splits), cohort.labels)
        if cases is None:
            cases, synthetic = table, bool(cohort.synthetic)
        elif list(cases.case_ids) != list(table.case_ids):
            raise ValueError("cohort case order differs between models' preprocessing (manifest changed?)")
        clinical = schema.normalise(cohort.clinical_raw, list(cohort.case_ids))
        with deterministic(threads), torch.inference_mode():
            prob = predict_proba(model, cohort.art, cohort.pv, clinical, batch_size)
        if not np.all(np.isfinite(prob)):
            raise ValueError(f"{path}: the model produced non-finite probabilities on {data_dir}")
        if isinstance(meta.get("threshold"), (int, float)):
            thr, src = float(meta["threshold"]), "checkpoint (Youden's J on the training run's internal split)"
        else:
            internal = np.asarray(table.splits) == "internal"
            if not internal.any():
                raise ValueError(f"{path}: checkpoint has no threshold and the data has no internal split")
            thr = youden_threshold(table.labels[internal], prob[internal])
            src = "Youden's J on the internal split of the evaluated data (checkpoint had none)"
        td = meta.get("training_data", {}) if isinstance(meta.get("training_data"), dict) else {}
        info = {"checkpoint": path.name, "sha256": getattr(model, "checkpoint_sha256", "")[:16],
                "variant": model.config.variant, "image_size": model.config.image_size,
                "trained_on_synthetic": td.get("synthetic")}
        preds.append(ModelPredictions(name, prob, thr, src, info))
    assert cases is not None
    return cases, preds, synthetic
