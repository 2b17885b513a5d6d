"""cmir_trt.Predictor: the one per-case pipeline every front door uses (DESIGN.md section 6).

    p = Predictor("model.plan")                        # loads the model once: engine, preprocessing, schema, threshold
    r = p.predict_case("cases/P001", {"age": 61, ...}) # a case folder, an nnU-Net prefix or a CaseFiles
    r.probability, r.decision, r.heatmap               # heatmap: SimpleITK image on the stored ART grid
    for item in p.predict_folder("cases/"):            # CaseResult or CaseFailure, case by case
        ...

Model settings come from the model file (plan or checkpoint metadata): preprocessing parameters, the clinical
schema with its fitted normalisation, the decision threshold, the synthetic-training flag. Errors about a case are
cmir_trt.data.DataError (or a subclass) with one line naming the case and the problem. Research use only, not for
diagnostic use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .data.errors import ClinicalDataError, DataError

DISCLAIMER = "research use only, not for diagnostic use"
SYNTHETIC_NOTE = "this model was trained on SYNTHETIC data; its outputs say nothing about real patients"
GRADE_NAMES = ("M0", "M1", "M2")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class CaseResult:
    """The prediction for one case. `probability` is P(MVI) (for a 3-class grading model, P(M1) + P(M2)), `logit`
    its logit for binary models (for grading models the log-odds of `probability`); `probabilities`/`logits` hold
    every class. `heatmap` is the model's localisation map on the stored ART grid (SimpleITK image)."""

    case_id: str
    probability: float
    logit: float
    decision: str
    threshold: float
    model_id: str | None
    synthetic: bool
    heatmap: Any
    prepared: Any
    probabilities: tuple[float, ...] = ()
    logits: tuple[float, ...] = ()
    backend: str = ""
    precision: str = "fp32"
    clinical_normalised: bool = True
    heatmap_roi: np.ndarray | None = field(default=None, repr=False)  # the S x S map the model produced
    source: dict[str, Any] = field(default_factory=dict)              # e.g. the DICOM series picked for ART/PV
    params_dict: dict[str, Any] = field(default_factory=dict, repr=False)  # the preprocessing parameters used

    def to_json(self) -> dict[str, Any]:
        """The JSON-able result `cmir-trt predict` writes as CASE.json (without the output file names)."""
        res: dict[str, Any] = {"case_id": self.case_id, "model": self.model_id, "backend": self.backend,
                               "precision": self.precision}
        if len(self.probabilities) <= 1:
            res.update(probability=self.probability, logit=self.logit, threshold=self.threshold,
                       decision=self.decision)
        else:
            res.update(probability=list(self.probabilities), logit=list(self.logits), threshold=self.threshold,
                       decision=self.decision, probability_mvi=self.probability)
        if self.synthetic:
            res["synthetic_training_data"] = True
            res["note"] = SYNTHETIC_NOTE
        res["disclaimer"] = DISCLAIMER
        prep = self.prepared
        res["preprocessing"] = {"slices": list(prep.slices), "diameter_mm": prep.diameter_mm,
                                "params": self.params_dict, "reoriented": bool(prep.info.get("reoriented"))}
        if self.source:
            res["inputs"] = self.source
        res["clinical_normalised"] = bool(self.clinical_normalised)
        return res


@dataclass(frozen=True)
class CaseFailure:
    """A case that could not be predicted, with the one-line reason."""

    case_id: str
    error: str


def model_settings(meta: dict[str, Any], spec: dict[str, Any]) -> tuple[Any, Any, bool]:
    """(ClinicalSchema, PreprocessParams, clinical normalised?) from a model's metadata, checked against its inputs."""
    from .data import ClinicalSchema, PreprocessParams

    schema_d = meta.get("clinical_schema") or (meta.get("checkpoint_metadata") or {}).get("clinical_schema")
    schema = ClinicalSchema.from_dict(schema_d) if isinstance(schema_d, dict) else ClinicalSchema()
    if spec["num_clinical"] and schema.num_features != spec["num_clinical"]:
        raise ValueError(f"the model expects {spec['num_clinical']} clinical features but its clinical schema lists "
                         f"{schema.num_features} ({', '.join(schema.features)})")
    pre_d = meta.get("preprocess") or (meta.get("checkpoint_metadata") or {}).get("preprocess") or {}
    pdict = dict(pre_d)
    if pdict.get("image_size", spec["image_size"]) != spec["image_size"]:
        raise ValueError(f"the model's preprocessing image_size {pdict['image_size']} differs from its input size "
                         f"{spec['image_size']}")
    pdict["image_size"] = spec["image_size"]
    return schema, PreprocessParams.from_dict(pdict), schema.fitted


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, (DataError, ValueError)) else f"{type(exc).__name__}: {text}"


def precision_validation(metadata: dict[str, Any], precision: str) -> tuple[bool | None, str | None]:
    """(validated?, a note for the user) from a plan's "precisions" metadata (written by `cmir-trt export --format
    plan`): fp32 without a record is the default and needs no note; any other precision without a passed check gets
    one."""
    rec = (metadata.get("precisions") or {}).get(precision) if isinstance(metadata.get("precisions"), dict) else None
    if isinstance(rec, dict) and rec.get("validated") is True:
        return True, None
    if isinstance(rec, dict):
        return False, (f"precision {precision} did not pass this model's export-time parity check "
                       f"({rec.get('reason', 'no reason recorded')}); check it with `cmir-trt validate`")
    if precision == "fp32":
        return None, None
    return None, (f"this model file records no parity check of precision {precision} (export it again with "
                  "`cmir-trt export --format plan`, or run `cmir-trt validate`)")


class Predictor:
    """A model loaded once with its settings; `predict_*` may be called from several threads at once."""

    def __init__(self, model_path: str | os.PathLike[str], device: str = "cpu", threads: int | None = None,
                 backend: str = "auto", threshold: float | None = None, mask_label: int | None = None,
                 precision: str = "fp32", series_rules: Any = None, seg_segment: int | str | None = None) -> None:
        from .data.series import load_rules
        from .engine import Engine

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threshold is not None:
            try:
                ok = 0.0 <= float(threshold) <= 1.0  # NaN fails too
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        self.series_rules = load_rules(series_rules)  # checked now: a bad rules file fails before any case
        if seg_segment is not None and not ((isinstance(seg_segment, int) and not isinstance(seg_segment, bool)
                                             and seg_segment >= 1)
                                            or (isinstance(seg_segment, str) and seg_segment.strip())):
            raise ValueError(f"seg_segment must be a segment number >= 1 or a label, got {seg_segment!r}")
        # The SEG segment used as the mask of DICOM studies without a mask file (None: the only one, or the tumour)
        self.seg_segment = seg_segment
        kwargs: dict[str, Any] = {} if precision == "fp32" else {"precision": precision}
        self.engine = Engine(model_path, device=device, backend=backend, threads=threads, **kwargs)
        self.precision = precision
        meta, spec = self.engine.metadata, self.engine.input_spec
        # Did the plan's export-time parity check pass in this precision? (None: the model file records no check.)
        self.precision_validated, self.precision_note = precision_validation(meta, precision)
        self.metadata: dict[str, Any] = meta
        self.spec: dict[str, Any] = spec
        self.schema, params, self.clinical_normalised = model_settings(meta, spec)
        if mask_label is not None:
            params = replace(params, mask_label=int(mask_label))
        self.params = params
        if threshold is not None:
            self.threshold, self.threshold_source = float(threshold), "given"
        elif meta.get("threshold") is not None:
            self.threshold, self.threshold_source = float(meta["threshold"]), "model"
        else:
            self.threshold, self.threshold_source = 0.5, "default (the model stores none)"
        self.model_id: str | None = meta.get("model_id")
        self.synthetic = bool(meta.get("synthetic"))
        self.num_clinical = int(spec["num_clinical"] or 0)

    def __repr__(self) -> str:
        return (f"Predictor(model={self.model_id!r}, backend={self.engine.backend!r}, threshold={self.threshold:g}"
                f"{', SYNTHETIC' if self.synthetic else ''})")

    # ------------------------------------------------------------------------------------------------ one case
    def resolve_case(self, case: Any, masks: str | os.PathLike[str] | None = None) -> Any:
        """A CaseFiles from a CaseFiles, a case folder (its files or a DICOM study), or an nnU-Net prefix
        (`dir/CASE` for dir/CASE_0000.<ext>, ...)."""
        from .data.io import CaseFiles, _holds_dicom, _scan, find_cases

        if isinstance(case, CaseFiles):
            return case
        if not isinstance(case, (str, os.PathLike)):
            raise TypeError(f"case must be a CaseFiles, a folder or a path prefix, got {type(case).__name__}")
        path = Path(case)
        if path.is_dir():
            inner: dict[str, dict[str, list[Path]]] = {}
            _scan(path, inner)
            if any(r in roles for roles in inner.values() for r in ("art", "pv")):
                found = find_cases(path, allow_incomplete=True, masks=masks)
                if len(found) != 1:
                    raise DataError(f"{path} holds {len(found)} cases; use predict_folder, or pass one case")
                return found[0]
            if _holds_dicom(path):  # a DICOM study: mask STUDY_mask.<ext> inside or beside it, or STUDY.<ext> in masks
                places = [(path, f"{path.name}_mask"), (path.parent, f"{path.name}_mask")]
                if masks is not None:
                    places.append((Path(masks), path.name))
                hits = [p for where, stem in places if where.is_dir() for p in sorted(where.iterdir())
                        if p.is_file() and _ext_ok(p, stem)]
                return CaseFiles(path.name, None, None, hits[0] if hits else None, study=path)
            raise DataError(f"{path}: neither a case folder (CASE_0000/CASE_0001/CASE_mask) nor a DICOM study")
        cid = path.name
        if not path.parent.is_dir():
            raise FileNotFoundError(f"case not found: {path}")
        found = [c for c in find_cases(path.parent, allow_incomplete=True, masks=masks) if c.case_id == cid]
        if not found:
            raise DataError(f"case {cid!r}: no files {cid}_0000/_0001/_mask in {path.parent}")
        return found[0]

    def predict_case(self, case: Any, clinical: Mapping[str, Any] | None = None) -> CaseResult:
        """Read, check and preprocess one case, and predict it. `clinical`: the schema's CSV columns (e.g. age,
        sex, log10_afp, ...) for models with clinical inputs; the tumour diameter is measured from the mask. A DICOM
        study without a mask file takes its mask from its DICOM SEG on ART (segment `seg_segment`)."""
        from .data.preprocess import read_case_images

        cf = self.resolve_case(case)
        art, pv, mask, source = read_case_images(cf, self.series_rules, self.seg_segment)
        source = {k: v for k, v in source.items() if k != "selection"}
        return self.predict_images(cf.case_id, art, pv, mask, clinical, _source=source)

    def predict_images(self, case_id: str, art_img: Any, pv_img: Any, mask_img: Any,
                       clinical: Mapping[str, Any] | None = None, _source: dict[str, Any] | None = None) -> CaseResult:
        """predict_case on SimpleITK images already read (ART, PV, tumour mask)."""
        prep, x_clin = self.prepare_inputs(case_id, art_img, pv_img, mask_img, clinical)
        if _source:
            prep.info.update(_source)
        pred = self.engine.predict(prep.art[None].astype(np.float32), prep.pv[None].astype(np.float32), x_clin)
        return self.result(prep, pred.probability[0], pred.logit[0], pred.heatmap[0, 0], source=_source)

    def prepare_inputs(self, case_id: str, art_img: Any, pv_img: Any, mask_img: Any,
                       clinical: Mapping[str, Any] | None = None) -> tuple[Any, np.ndarray]:
        """The first half of predict_images, for callers that run the engine themselves (batching, Triton's
        preprocessing model): (PreparedCase, clinical row float32 [1, F]); the image inputs are
        prepared.art[None] and prepared.pv[None]."""
        from .data.preprocess import prepare_images

        x_clin = np.zeros((1, self.num_clinical), np.float32)
        values = None
        if self.num_clinical:  # checked before the images: a bad row costs no preprocessing
            if clinical is None:
                raise ClinicalDataError(f"case {case_id!r}: the model needs clinical values "
                                        f"({', '.join(self.schema.csv_columns)})")
            from .data.clinical import clinical_values

            values = clinical_values(clinical, self.schema, case_id)
        prep = prepare_images(case_id, art_img, pv_img, mask_img, self.params)
        if values is not None:
            raw = self.schema.assemble(values, {"diameter_mm": prep.diameter_mm}, case_id)
            x_clin = (self.schema.normalise(raw[None], [case_id]) if self.clinical_normalised
                      else raw[None]).astype(np.float32)
        return prep, x_clin

    def result(self, prep: Any, probability: Any, logit: Any, heatmap: Any,
               source: dict[str, Any] | None = None) -> CaseResult:
        """The second half of predict_images: a CaseResult from one case's engine outputs (probability and logit
        [K], heatmap [S, S]) and its PreparedCase."""
        from .data.preprocess import heatmap_image

        probs = np.asarray(probability, dtype=np.float64).reshape(-1)
        logits = np.asarray(logit, dtype=np.float64).reshape(-1)
        if probs.size == 1:
            p, lg = float(probs[0]), float(logits[0])
            decision = "MVI+" if p >= self.threshold else "MVI-"
        else:
            k = int(np.argmax(probs))
            p = float(probs[1:].sum())
            pc = min(max(p, 1e-12), 1 - 1e-12)
            lg = float(np.log(pc / (1 - pc)))
            decision = GRADE_NAMES[k] if k < len(GRADE_NAMES) else str(k)
        hm = np.asarray(heatmap, dtype=np.float32).reshape(prep.art.shape[-2:])
        return CaseResult(case_id=prep.case_id, probability=p, logit=lg, decision=decision, threshold=self.threshold,
                          model_id=self.model_id, synthetic=self.synthetic, heatmap=heatmap_image(prep, hm),
                          prepared=prep, probabilities=tuple(float(x) for x in probs),
                          logits=tuple(float(x) for x in logits), backend=self.engine.backend,
                          precision=self.precision,
                          clinical_normalised=bool(self.clinical_normalised or not self.num_clinical),
                          heatmap_roi=hm, source=dict(source or {}), params_dict=self.params.to_dict())

    # ------------------------------------------------------------------------------------------------ a folder
    def folder_cases(self, folder: str | os.PathLike[str], masks: str | os.PathLike[str] | None = None) -> list[Any]:
        """The cases of a folder (CaseFiles, sorted by id); DataError when there are none."""
        from .data.io import find_cases

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"input folder not found: {folder}")
        cases = find_cases(folder, allow_incomplete=True, masks=masks)
        if not cases:
            raise DataError(f"no cases found in {folder} (expected CASE_0000.<ext>, CASE_0001.<ext>, "
                            "CASE_mask.<ext>, or DICOM study folders)")
        return cases

    def clinical_table(self, folder: str | os.PathLike[str], clinical_csv: str | os.PathLike[str] | None = None
                       ) -> tuple[Any, str | None]:
        """(ClinicalTable or None, a message failing every case or None). An explicitly given CSV that cannot be
        used raises; one found beside the cases fails the cases instead (each case reports why)."""
        from .data.clinical import read_clinical_table

        if not self.num_clinical:
            return None, None
        path = Path(clinical_csv) if clinical_csv is not None else Path(folder) / "clinical.csv"
        try:
            return read_clinical_table(path, self.schema), None
        except (DataError, FileNotFoundError) as exc:
            if clinical_csv is not None:
                raise
            return None, str(exc)

    def predict_folder(self, folder: str | os.PathLike[str], clinical_csv: str | os.PathLike[str] | None = None,
                       masks: str | os.PathLike[str] | None = None, cases: list[Any] | None = None
                       ) -> Iterator[CaseResult | CaseFailure]:
        """Predict every case of a folder, yielding a CaseResult or a CaseFailure per case, in case-id order.
        Folder-level problems (no such folder, no cases, an explicit clinical CSV that cannot be read) raise."""
        if cases is None:
            cases = self.folder_cases(folder, masks)
        table, table_error = self.clinical_table(folder, clinical_csv)
        for cf in cases:
            try:
                clinical = None
                if self.num_clinical:
                    if table is None:
                        raise ClinicalDataError(f"case {cf.case_id!r}: {table_error}")
                    clinical = table.row(cf.case_id)
                yield self.predict_case(cf, clinical)
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop the others; it is reported
                yield CaseFailure(cf.case_id, _one_line(exc))


def _ext_ok(p: Path, stem: str) -> bool:
    from .data.io import image_extension

    ext = image_extension(p.name)
    return ext is not None and p.name == stem + ext
