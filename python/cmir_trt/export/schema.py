"""The one plugin / custom-op schema (export/plugin_schema.json), read at run time (no torch).

The TensorRT plugins read the same file through a header generated at build time, so the exporter and the plugins
cannot disagree on names, versions, namespace, fields or layouts. This module only reads and checks the file; it
does not define any op itself.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_ENV = "CMIR_PLUGIN_SCHEMA"
SCHEMA_NAME = "plugin_schema.json"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38


class SchemaError(ValueError):
    """The plugin schema is missing, malformed, or an attribute violates it."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # "int32" | "float32"
    default: int | float
    min: float
    max: float
    odd: bool = False

    def check(self, value: Any, op: str) -> int | float:
        """The value as the schema's type, or SchemaError naming op, field and bound."""
        if self.type == "int32":
            if isinstance(value, bool) or not isinstance(value, int):
                raise SchemaError(f"{op}.{self.name} must be an int32, got {value!r}")
            if not INT32_MIN <= value <= INT32_MAX:
                raise SchemaError(f"{op}.{self.name} = {value} is outside the int32 range")
            if self.odd and value % 2 == 0:
                raise SchemaError(f"{op}.{self.name} must be odd, got {value}")
            out: int | float = int(value)
        elif self.type == "float32":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SchemaError(f"{op}.{self.name} must be a float32, got {value!r}")
            if not math.isfinite(float(value)) or abs(float(value)) > FLOAT32_MAX:
                raise SchemaError(f"{op}.{self.name} = {value} is not a finite float32")
            out = float(value)
        else:  # pragma: no cover - guarded by load
            raise SchemaError(f"{op}.{self.name}: unknown field type {self.type!r}")
        if not self.min <= out <= self.max:
            raise SchemaError(f"{op}.{self.name} = {out} is outside the schema range [{self.min}, {self.max}]")
        return out


@dataclass(frozen=True)
class PluginSpec:
    name: str
    version: str
    namespace: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fields: tuple[FieldSpec, ...]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def node_attributes(self, **values: Any) -> dict[str, int | float | str]:
        """All attributes of a custom node: every schema field (checked) plus plugin_namespace / plugin_version.

        Exactly the schema's fields are accepted: the TensorRT ONNX parser passes only attributes named in the
        plugin creator's field names, so an extra attribute would be silently dropped there.
        """
        unknown = set(values) - set(self.field_names)
        if unknown:
            raise SchemaError(f"{self.name}: attributes {sorted(unknown)} are not fields of the schema "
                              f"(fields: {list(self.field_names)})")
        attrs: dict[str, int | float | str] = {}
        for f in self.fields:
            attrs[f.name] = f.check(values.get(f.name, f.default), self.name)
        attrs["plugin_namespace"] = self.namespace
        attrs["plugin_version"] = self.version
        return attrs


@dataclass(frozen=True)
class PluginSchema:
    path: Path
    schema_version: int
    namespace: str
    domain: str
    plugins: dict[str, PluginSpec]

    def __getitem__(self, name: str) -> PluginSpec:
        try:
            return self.plugins[name]
        except KeyError:
            raise SchemaError(f"plugin {name!r} is not in {self.path} (has {sorted(self.plugins)})") from None


def _candidates() -> list[Path]:
    env = os.environ.get(SCHEMA_ENV)
    if env:
        return [Path(env)]
    here = Path(__file__).resolve().parent
    # Installed wheel (copied next to this module) first, then the source tree (editable install / checkout).
    return [here / SCHEMA_NAME, here.parents[2] / "export" / SCHEMA_NAME]


def schema_path() -> Path:
    for p in _candidates():
        if p.is_file():
            return p
    raise SchemaError(f"plugin schema not found (looked at {[str(p) for p in _candidates()]}; set {SCHEMA_ENV})")


def _require(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d or not isinstance(d[key], kind):
        raise SchemaError(f"{where}: field {key!r} missing or not {kind}")
    return d[key]


def parse_schema(data: Any, path: Path) -> PluginSchema:
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: top level must be an object")
    where = str(path)
    namespace = _require(data, "namespace", str, where)
    domain = _require(data, "onnx_domain", str, where)
    plugins: dict[str, PluginSpec] = {}
    for i, p in enumerate(_require(data, "plugins", list, where)):
        pw = f"{where}: plugins[{i}]"
        if not isinstance(p, dict):
            raise SchemaError(f"{pw} must be an object")
        fields = []
        for j, f in enumerate(_require(p, "fields", list, pw)):
            fw = f"{pw}.fields[{j}]"
            if not isinstance(f, dict):
                raise SchemaError(f"{fw} must be an object")
            ftype = _require(f, "type", str, fw)
            if ftype not in ("int32", "float32"):
                raise SchemaError(f"{fw}: type must be int32 or float32, got {ftype!r}")
            fields.append(FieldSpec(name=_require(f, "name", str, fw), type=ftype,
                                    default=_require(f, "default", (int, float), fw),
                                    min=float(f.get("min", -FLOAT32_MAX)), max=float(f.get("max", FLOAT32_MAX)),
                                    odd=bool(f.get("odd", False))))
        spec = PluginSpec(name=_require(p, "name", str, pw), version=str(_require(p, "version", (str, int), pw)),
                          namespace=namespace, domain=domain,
                          inputs=tuple(_require(t, "name", str, pw) for t in _require(p, "inputs", list, pw)),
                          outputs=tuple(_require(t, "name", str, pw) for t in _require(p, "outputs", list, pw)),
                          fields=tuple(fields))
        if spec.name in plugins:
            raise SchemaError(f"{pw}: duplicate plugin name {spec.name!r}")
        plugins[spec.name] = spec
    return PluginSchema(path=path, schema_version=int(data.get("schema_version", 1)), namespace=namespace,
                        domain=domain, plugins=plugins)


@functools.cache
def _load_cached(path: str, mtime_ns: int) -> PluginSchema:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"cannot read plugin schema {p}: {exc}") from exc
    return parse_schema(data, p)


def load_schema(path: str | os.PathLike[str] | None = None) -> PluginSchema:
    """The parsed schema (cached per file and modification time)."""
    p = Path(path) if path is not None else schema_path()
    if not p.is_file():
        raise SchemaError(f"plugin schema not found: {p}")
    return _load_cached(str(p.resolve()), p.stat().st_mtime_ns)


INVOLUTION_PLUGIN = "CMIRInvolution"
CMAM_PLUGIN = "CMIRCrossModalAttention"
