"""DICOM studies as PACS exports them: find the series of a study folder and pick ART and PV by rules.

    sel = select_phases("exports/STUDY1")            # shipped rules (series_rules.json), or rules=PATH / dict
    sel.art.series_uid, sel.art.files, sel.pv.description

The rules (a JSON file users can copy and edit; see its `_comment`) match SeriesDescription / ProtocolName against
ordered patterns per phase, after removing excluded series (subtractions, delayed phases, reformats, ...), and fall
back to the contrast timing tags (AcquisitionTime - ContrastBolusStartTime). A phase with no matching series, or
with several at the deciding pattern, is a DataError listing the candidate series, so the user can name the right
one in series.csv. Headers are read through SimpleITK (GDCM); pixel data is not touched here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

DEFAULT_RULES_PATH = Path(__file__).with_name("series_rules.json")
PHASES = ("art", "pv")
_TAGS = {"SeriesInstanceUID": "0020|000e", "StudyInstanceUID": "0020|000d", "Modality": "0008|0060",
         "SeriesDescription": "0008|103e", "ProtocolName": "0018|1030", "AcquisitionTime": "0008|0032",
         "SeriesTime": "0008|0031", "ContrastBolusStartTime": "0018|1042", "SeriesNumber": "0020|0011"}
_NORMALISE = re.compile(r"[_\-./+()]+")


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series of a study: its files (sorted by name) and the header fields the rules look at."""

    series_uid: str
    folder: Path
    files: tuple[Path, ...]
    description: str = ""
    protocol: str = ""
    modality: str = ""
    series_number: str = ""
    delay_s: float | None = None   # AcquisitionTime - ContrastBolusStartTime, when both are present
    tags: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def label(self) -> str:
        """One-line description for error messages."""
        parts = [self.series_uid, f"'{self.description}'" if self.description else "(no description)"]
        if self.protocol and self.protocol != self.description:
            parts.append(f"protocol '{self.protocol}'")
        if self.delay_s is not None:
            parts.append(f"{self.delay_s:.0f} s after contrast")
        parts.append(f"{len(self.files)} file(s)")
        return " ".join(parts)


@dataclass(frozen=True)
class PhaseSelection:
    """The picked ART and PV series of a study, why each was picked, and every series found."""

    study: Path
    art: SeriesInfo
    pv: SeriesInfo
    reasons: dict[str, str]
    series: tuple[SeriesInfo, ...]


def _sitk() -> Any:
    from .io import _sitk as sitk

    return sitk()


def _time_s(text: str) -> float | None:
    """Seconds since midnight of a DICOM TM value (HHMMSS.FFFFFF, or HH:MM:SS in old files), else None."""
    t = text.strip().replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", t)
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if h > 23 or mi > 59 or s > 60:
        return None
    return h * 3600 + mi * 60 + s + float(m.group(4) or 0.0)


def read_header(path: Path) -> dict[str, str] | None:
    """The header fields of _TAGS of one DICOM file with pixel data, or None for anything else (not DICOM, SR, ...)."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    out = {}
    for name, key in _TAGS.items():
        out[name] = reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
    out["_size"] = ",".join(str(x) for x in reader.GetSize())
    return out


def scan_study(study_dir: str | os.PathLike[str]) -> list[SeriesInfo]:
    """Every DICOM image series under `study_dir` (any depth), grouped by SeriesInstanceUID, sorted by series number
    then UID. Files that are not DICOM images are skipped."""
    study = Path(study_dir)
    if not study.is_dir():
        raise FileNotFoundError(f"DICOM study folder not found: {study}")
    groups: dict[str, list[tuple[Path, dict[str, str]]]] = {}
    for root, dirs, files in os.walk(study):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.lower() in ("dicomdir", "series.csv"):
                continue
            p = Path(root) / name
            hdr = read_header(p)
            if hdr is None or not hdr["SeriesInstanceUID"]:
                continue
            groups.setdefault(hdr["SeriesInstanceUID"], []).append((p, hdr))
    out = []
    for uid, items in groups.items():
        first = items[0][1]
        acq, bolus = _time_s(first["AcquisitionTime"] or first["SeriesTime"]), _time_s(first["ContrastBolusStartTime"])
        delay = None if acq is None or bolus is None else (acq - bolus) % 86400.0  # past midnight wraps
        folders = {p.parent for p, _ in items}
        out.append(SeriesInfo(series_uid=uid, folder=items[0][0].parent if len(folders) == 1 else study,
                              files=tuple(sorted(p for p, _ in items)), description=first["SeriesDescription"],
                              protocol=first["ProtocolName"], modality=first["Modality"],
                              series_number=first["SeriesNumber"], delay_s=delay, tags=first))
    out.sort(key=lambda s: (int(s.series_number) if s.series_number.isdigit() else 1 << 30, s.series_uid))
    return out


def load_rules(rules: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The phase rules as a checked dict: the shipped defaults (None), a JSON file, or a dict of the same shape."""
    src = "shipped defaults" if rules is None else ("dict" if isinstance(rules, Mapping) else str(rules))
    if isinstance(rules, Mapping):
        d: Any = dict(rules)
    else:
        path = DEFAULT_RULES_PATH if rules is None else Path(rules)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"series rules {path}: not a readable JSON file: {exc}") from exc
    try:
        fields_ = [str(x) for x in d.get("text_fields", ["SeriesDescription", "ProtocolName"])]
        unknown = [f for f in fields_ if f not in _TAGS]
        if unknown:
            raise ValueError(f"unknown text_fields {unknown} (known: {sorted(_TAGS)})")
        out = {"text_fields": fields_, "modalities": [str(m).upper() for m in d.get("modalities", ["MR"])],
               "exclude": [re.compile(p) for p in d.get("exclude", [])], "phases": {}}
        for phase in PHASES:
            ph = d["phases"][phase]
            lo, hi = (float(x) for x in ph.get("delay_s", (0.0, -1.0)))
            out["phases"][phase] = {"patterns": [re.compile(p) for p in ph["patterns"]], "delay_s": (lo, hi)}
    except (KeyError, TypeError, ValueError, AttributeError, re.error) as exc:
        raise DataError(f"series rules ({src}): malformed: {type(exc).__name__}: {exc}") from exc
    return out


def _text(s: SeriesInfo, fields_: list[str]) -> str:
    vals = [s.tags.get(f, "") for f in fields_]
    return " | ".join(_NORMALISE.sub(" ", v.lower()).strip() for v in vals if v)


def pick_phase(series: list[SeriesInfo], phase: str, rules: dict[str, Any]) -> tuple[list[SeriesInfo], str]:
    """(the series the rules pick for `phase`, the rule that decided). Several series = ambiguous, none = missing."""
    ph = rules["phases"][phase]
    for pat in ph["patterns"]:
        hits = [s for s in series if pat.search(_text(s, rules["text_fields"]))]
        if hits:
            return hits, f"description matches {pat.pattern!r}"
    lo, hi = ph["delay_s"]
    hits = [s for s in series if s.delay_s is not None and lo <= s.delay_s <= hi]
    return hits, f"contrast timing {lo:g}-{hi:g} s"


def select_phases(study_dir: str | os.PathLike[str], rules: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                  overrides: Mapping[str, str] | None = None, case_id: str | None = None) -> PhaseSelection:
    """ART and PV series of a DICOM study folder. `overrides` ({"art": uid, "pv": uid}, e.g. from series.csv) wins
    over the rules. Raises DataError listing the candidates when a phase is missing or ambiguous."""
    study = Path(study_dir)
    who = f"case {case_id!r}: " if case_id else ""
    r = load_rules(rules)
    found = scan_study(study)
    if not found:
        raise DataError(f"{who}no DICOM image series in study folder {study}")
    by_uid = {s.series_uid: s for s in found}
    usable = [s for s in found if not r["modalities"] or (s.modality or "").upper() in r["modalities"]]
    usable = [s for s in usable if not any(p.search(_text(s, r["text_fields"])) for p in r["exclude"])]
    picked: dict[str, SeriesInfo] = {}
    reasons: dict[str, str] = {}
    overrides = dict(overrides or {})
    for phase in PHASES:
        uid = overrides.get(phase)
        if uid:
            if uid not in by_uid:
                raise DataError(f"{who}{phase.upper()} series {uid} named in series.csv is not in {study} "
                                f"(series found: {'; '.join(s.label() for s in found)})")
            picked[phase], reasons[phase] = by_uid[uid], "series.csv"
            continue
        hits, why = pick_phase(usable, phase, r)
        listing = "; ".join(s.label() for s in found)
        if not hits:
            raise DataError(f"{who}no {phase.upper()} series in study {study} by the series rules (series found: "
                            f"{listing}); name it in series.csv (case_id, art_series_uid, pv_series_uid) or edit "
                            "the rules (--series-rules)")
        if len(hits) > 1:
            raise DataError(f"{who}{len(hits)} candidate {phase.upper()} series in study {study} ({why}): "
                            f"{'; '.join(s.label() for s in hits)}; name the one to use in series.csv "
                            "(case_id, art_series_uid, pv_series_uid)")
        picked[phase], reasons[phase] = hits[0], why
    if picked["art"].series_uid == picked["pv"].series_uid:
        raise DataError(f"{who}the same series {picked['art'].label()} was picked as ART and PV in {study}; name "
                        "both in series.csv (case_id, art_series_uid, pv_series_uid)")
    return PhaseSelection(study=study, art=picked["art"], pv=picked["pv"], reasons=reasons, series=tuple(found))
