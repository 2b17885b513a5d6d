"""A regular (non-editable) wheel holds the deployment files the package reads at run time.

Building a wheel is too slow for CI's two cores, so the test runs CMake on the real install rules of CMakeLists.txt
that copy files from export/ (no targets, no compiler), installs them beside a copy of the Python package in a folder
away from the source tree, and checks that the package's locators find every file there: the Triton templates and
the standalone engine builder (export/triton.py), the custom-op schema (export/schema.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = sorted(p.name for p in (REPO / "export" / "triton").glob("*.in"))


def _export_install_rules() -> list[str]:
    """The install(...) calls of CMakeLists.txt that read from export/ (balanced parentheses, comments dropped)."""
    text = "\n".join(line.split("#", 1)[0] for line in (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
                     .splitlines())
    calls = []
    for m in re.finditer(r"\binstall\s*\(", text):
        depth, i = 0, m.end() - 1
        while True:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
            if depth == 0:
                break
        call = text[m.start():i]
        if "/export/" in call:
            calls.append(call)
    return calls


def test_templates_exist() -> None:
    assert {"config.pbtxt.in", "python_model.pbtxt.in", "preprocess.pbtxt.in", "ensemble.pbtxt.in",
            "model.py.in"} <= set(TEMPLATES)


def test_installed_package_finds_its_deployment_files(tmp_path: Path) -> None:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    rules = _export_install_rules()
    assert rules, "CMakeLists.txt installs nothing from export/"
    proj = tmp_path / "proj"
    proj.mkdir()
    body = "\n".join(r.replace("${CMAKE_SOURCE_DIR}", REPO.as_posix()) for r in rules)
    (proj / "CMakeLists.txt").write_text(f"cmake_minimum_required(VERSION 3.24)\nproject(layout NONE)\n{body}\n",
                                         encoding="utf-8")
    site = tmp_path / "site"
    for cmd in ([cmake, "-S", str(proj), "-B", str(proj / "b")],
                [cmake, "--install", str(proj / "b"), "--prefix", str(site)]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
    # The Python package as wheel.packages puts it, beside the installed files (no source tree above it).
    shutil.copytree(REPO / "python" / "cmir_trt", site / "cmir_trt", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    code = (
        "import json\n"
        "from cmir_trt.export import schema, triton\n"
        f"names = {TEMPLATES!r}\n"
        "print(json.dumps({'templates': [str(triton.template_path(n)) for n in names],\n"
        "                  'builder': str(triton._standalone_builder()), 'schema': str(schema.schema_path())}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CMIR_TRITON_TEMPLATE", "CMIR_PLUGIN_SCHEMA")}
    env["PYTHONPATH"] = str(site)
    # -S: no site-packages, so the editable install's import hook cannot send `cmir_trt` back to the source tree
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    paths = [*found["templates"], found["builder"], found["schema"]]
    for p in paths:
        assert Path(p).is_relative_to(site / "cmir_trt" / "export"), f"{p} is not the installed copy"
    for name, p in zip(TEMPLATES, found["templates"], strict=True):
        assert Path(p).read_bytes() == (REPO / "export" / "triton" / name).read_bytes()
    assert Path(found["builder"]).read_bytes() == (REPO / "export" / "build_engine.py").read_bytes()
