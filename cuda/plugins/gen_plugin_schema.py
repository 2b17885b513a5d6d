#!/usr/bin/env python3
"""Generate the C++ header of the plugin schema from export/plugin_schema.json (run by CMake at build time).

The TensorRT plugins take their names, versions, namespace and field specs (types, defaults, ranges) from the
generated header, so they cannot drift from what the ONNX exporter writes. Standard library only: it runs wherever
CMake finds a Python interpreter. Usage: gen_plugin_schema.py SCHEMA.json OUT.h
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from typing import Any

_TYPES = {"int32": "FieldType::kInt32", "float32": "FieldType::kFloat32"}
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SchemaError(ValueError):
    pass


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _snake(name: str) -> str:
    # CMIRCrossModalAttention -> cross_modal_attention (the "CMIR" prefix dropped)
    base = name[4:] if name.startswith("CMIR") else name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()


def _cstr(s: str) -> str:
    if not isinstance(s, str) or any(ord(ch) < 32 or ord(ch) > 126 or ch in '"\\' for ch in s):
        raise SchemaError(f"string {s!r} must be printable ASCII without quotes or backslashes")
    return f'"{s}"'


def _num(v: Any, what: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SchemaError(f"{what} must be a finite number, got {v!r}")
    return repr(float(v))


def _field(plugin: str, f: dict[str, Any]) -> str:
    name = f.get("name")
    if not isinstance(name, str) or not _IDENT.match(name):
        raise SchemaError(f"{plugin}: bad field name {name!r}")
    ftype = f.get("type")
    if ftype not in _TYPES:
        raise SchemaError(f"{plugin}.{name}: type must be one of {sorted(_TYPES)}, got {ftype!r}")
    for key in ("default", "min", "max"):
        if key not in f:
            raise SchemaError(f"{plugin}.{name}: missing {key!r}")
    lo, hi, default = (float(_num(f[k], f"{plugin}.{name}.{k}")) for k in ("min", "max", "default"))
    if not lo <= default <= hi:
        raise SchemaError(f"{plugin}.{name}: default {default} outside [{lo}, {hi}]")
    if ftype == "int32":
        for k in ("min", "max", "default"):
            if float(f[k]) != int(f[k]) or not -(2**31) <= int(f[k]) < 2**31:
                raise SchemaError(f"{plugin}.{name}.{k} must be an int32, got {f[k]!r}")
    odd = bool(f.get("odd", False))
    if odd and int(default) % 2 == 0:
        raise SchemaError(f"{plugin}.{name}: default {default} is not odd")
    return (f"    FieldSpec{{{_cstr(name)}, {_TYPES[ftype]}, {_num(f['default'], name)}, {_num(f['min'], name)}, "
            f"{_num(f['max'], name)}, {'true' if odd else 'false'}}},")


def render(schema: dict[str, Any]) -> str:
    if schema.get("schema_version") != 1:
        raise SchemaError(f"unsupported schema_version {schema.get('schema_version')!r} (this generator reads 1)")
    plugins = schema.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise SchemaError("'plugins' must be a non-empty list")
    out = [
        "// Generated from export/plugin_schema.json by cuda/plugins/gen_plugin_schema.py at build time. Do not edit.",
        "#pragma once",
        "#include <cstdint>",
        "",
        "namespace cmir_plugins {",
        "namespace schema {",
        "",
        "enum class FieldType : int32_t { kInt32 = 0, kFloat32 = 1 };",
        "",
        "// One plugin field: its name, storage type, default and inclusive range (odd: value must be odd).",
        "struct FieldSpec {",
        "  const char* name;",
        "  FieldType type;",
        "  double default_value;",
        "  double min_value;",
        "  double max_value;",
        "  bool odd;",
        "};",
        "",
        f"inline constexpr char kNamespace[] = {_cstr(schema['namespace'])};",
        f"inline constexpr char kOnnxDomain[] = {_cstr(schema.get('onnx_domain', ''))};",
        "",
    ]
    seen = set()
    for p in plugins:
        name = p.get("name")
        if not isinstance(name, str) or not _IDENT.match(name) or name in seen:
            raise SchemaError(f"bad or duplicate plugin name {name!r}")
        seen.add(name)
        fields = p.get("fields", [])
        if not fields:
            raise SchemaError(f"{name}: at least one field is needed")
        names = [f.get("name") for f in fields]
        if len(set(names)) != len(names):
            raise SchemaError(f"{name}: duplicate field names {names}")
        ns = _snake(name)
        out += [
            f"// {name}: {len(p.get('inputs', []))} inputs, {len(p.get('outputs', []))} outputs.",
            f"namespace {ns} {{",
            f"inline constexpr char kName[] = {_cstr(name)};",
            f"inline constexpr char kVersion[] = {_cstr(str(p['version']))};",
            f"inline constexpr int32_t kNbInputs = {len(p.get('inputs', []))};",
            f"inline constexpr int32_t kNbOutputs = {len(p.get('outputs', []))};",
            f"inline constexpr int32_t kNbFields = {len(fields)};",
            "// Index of each field in kFields (and in a plugin's value array).",
            "enum Field : int32_t {",
            *[f"  k{_camel(f['name'])} = {i}," for i, f in enumerate(fields)],
            "};",
            "inline constexpr FieldSpec kFields[kNbFields] = {",
            *[_field(name, f) for f in fields],
            "};",
            f"}}  // namespace {ns}",
            "",
        ]
    out += ["}  // namespace schema", "}  // namespace cmir_plugins", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: gen_plugin_schema.py SCHEMA.json OUT.h", file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    try:
        with open(src, encoding="utf-8") as fh:
            text = render(json.load(fh))
    except (OSError, json.JSONDecodeError, SchemaError, KeyError, TypeError) as exc:
        print(f"gen_plugin_schema.py: {src}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    # Rewrite only on change (no needless rebuilds), atomically (a parallel build never sees half a header).
    try:
        with open(dst, encoding="utf-8") as fh:
            if fh.read() == text:
                return 0
    except OSError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".schema.", dir=os.path.dirname(os.path.abspath(dst)))
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
