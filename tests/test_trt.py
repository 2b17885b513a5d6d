"""TensorRT part without TensorRT: one clear error from every entry point, the schema-header generator checked
against the JSON by a compiled program, and the CMake option's skip/fail behaviour. (The plugin harness is in
test_trt_harness.py; building and running a real engine needs TensorRT, which no machine here has.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "export" / "plugin_schema.json"
GEN = REPO / "cuda" / "plugins" / "gen_plugin_schema.py"


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import tensorrt` fails, whatever this machine has installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def _any_file(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    p.write_bytes(b"\x00" * 64)
    return p


def test_build_engine_without_tensorrt(no_tensorrt: None, tmp_path: Path) -> None:
    from cmir_trt.tensorrt import TensorRTNotInstalledError, build_engine

    with pytest.raises(TensorRTNotInstalledError, match=r"^TensorRT is not installed: "):
        build_engine(_any_file(tmp_path, "m.onnx"), tmp_path / "m.engine", max_batch=4)
    assert not (tmp_path / "m.engine").exists()


def test_backend_and_plugin_loader_without_tensorrt(no_tensorrt: None, tmp_path: Path) -> None:
    from cmir_trt.tensorrt import TensorRTBackend, TensorRTNotInstalledError, load_plugin_library

    with pytest.raises(TensorRTNotInstalledError, match=r"^TensorRT is not installed: "):
        TensorRTBackend(_any_file(tmp_path, "m.engine"))
    with pytest.raises(TensorRTNotInstalledError, match=r"^TensorRT is not installed: "):
        load_plugin_library(_any_file(tmp_path, "libx.so"))


def test_engine_facade_without_tensorrt(no_tensorrt: None, tmp_path: Path) -> None:
    import cmir_trt

    with pytest.raises(RuntimeError, match="TensorRT is not installed"):
        cmir_trt.Engine(_any_file(tmp_path, "m.engine"), device="cuda", backend="tensorrt")


@pytest.mark.parametrize("kwargs, match", [
    ({"min_batch": 0}, "min_batch"),
    ({"max_batch": -2}, "max_batch"),
    ({"min_batch": 4, "max_batch": 2}, "min_batch <= opt_batch <= max_batch"),
    ({"opt_batch": 9, "max_batch": 8}, "min_batch <= opt_batch <= max_batch"),
    ({"workspace_mib": 0}, "workspace_mib"),
    ({"max_batch": True}, "max_batch"),
])
def test_build_arguments_checked_first(no_tensorrt: None, tmp_path: Path, kwargs: dict, match: str) -> None:
    from cmir_trt.tensorrt import build_engine

    with pytest.raises(ValueError, match=match):
        build_engine(_any_file(tmp_path, "m.onnx"), tmp_path / "m.engine", **kwargs)
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")


def test_plugin_library_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmir_trt.tensorrt import PLUGIN_LIBRARY_ENV, find_plugin_library

    with pytest.raises(FileNotFoundError, match="not found"):
        find_plugin_library(tmp_path / "nope.so")
    lib = _any_file(tmp_path, "libcmir_trt_plugins.so")
    assert find_plugin_library(lib) == lib
    monkeypatch.setenv(PLUGIN_LIBRARY_ENV, str(lib))
    assert find_plugin_library() == lib
    monkeypatch.setenv(PLUGIN_LIBRARY_ENV, str(tmp_path / "gone.so"))
    with pytest.raises(FileNotFoundError, match=PLUGIN_LIBRARY_ENV):
        find_plugin_library()


def test_import_needs_neither_torch_nor_tensorrt(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['tensorrt'] = None\n"
        "import cmir_trt, cmir_trt.tensorrt as t\n"
        "from cmir_trt.export.triton import render_config\n"
        "assert t.tensorrt_version() is None\n"
        "try:\n"
        f"    t.build_engine({str(_any_file(tmp_path, 'm.onnx'))!r}, 'x.engine')\n"
        "except t.TensorRTNotInstalledError as e:\n"
        "    print('OK', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK TensorRT is not installed: ")


def test_cli_build_without_tensorrt(tmp_path: Path) -> None:
    onnx_file = _any_file(tmp_path, "m.onnx")
    code = ("import sys; sys.modules['tensorrt'] = None\n"
            "from cmir_trt.cli import main\n"
            f"sys.exit(main(['build', '--onnx', {str(onnx_file)!r}, '--out', {str(tmp_path / 'm.engine')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmir-trt build: error: TensorRT is not installed: ")
    assert not (tmp_path / "m.engine").exists()


def test_build_info_consistent_with_library() -> None:
    import cmir_trt

    info = cmir_trt.build_info()
    assert isinstance(info["tensorrt_plugins"], bool)
    if info["tensorrt_plugins"]:
        assert Path(info["tensorrt_plugin_library"]).is_file()


# ---------------------------------------------------------------- schema header generator

def _gen(schema: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GEN), str(schema), str(out)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_generated_header_matches_schema(tmp_path: Path) -> None:
    """Compile a program against the generated header and compare what it prints with the JSON itself."""
    header = tmp_path / "cmir_plugin_schema.h"
    assert _gen(SCHEMA, header).returncode == 0
    prog = tmp_path / "dump.cpp"
    prog.write_text("""
#include <cstdio>
#include "cmir_plugin_schema.h"
using namespace cmir_plugins::schema;
template <typename NS> void dump(const char* name, const char* version, int nin, int nout, const FieldSpec* f, int n) {
  std::printf("plugin %s %s %d %d\\n", name, version, nin, nout);
  for (int i = 0; i < n; ++i)
    std::printf("field %s %s %.17g %.17g %.17g %d\\n", f[i].name, f[i].type == FieldType::kInt32 ? "int32" : "float32",
                f[i].default_value, f[i].min_value, f[i].max_value, f[i].odd ? 1 : 0);
}
struct A {}; struct B {};
int main() {
  std::printf("namespace %s\\n", kNamespace);
  dump<A>(involution::kName, involution::kVersion, involution::kNbInputs, involution::kNbOutputs,
          involution::kFields, involution::kNbFields);
  dump<B>(cross_modal_attention::kName, cross_modal_attention::kVersion, cross_modal_attention::kNbInputs,
          cross_modal_attention::kNbOutputs, cross_modal_attention::kFields, cross_modal_attention::kNbFields);
  static_assert(involution::kKernelSize == 0 && cross_modal_attention::kEps == 2, "field indices follow the JSON");
}
""", encoding="utf-8")
    exe = tmp_path / "dump"
    cc = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{tmp_path}", str(prog), "-o",
                         str(exe)], capture_output=True, text=True, timeout=120)
    assert cc.returncode == 0, cc.stderr
    got = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30).stdout.splitlines()
    data = json.loads(SCHEMA.read_text(encoding="utf-8"))
    want = [f"namespace {data['namespace']}"]
    for p in data["plugins"]:
        want.append(f"plugin {p['name']} {p['version']} {len(p['inputs'])} {len(p['outputs'])}")
        for f in p["fields"]:
            want.append(f"field {f['name']} {f['type']} {float(f['default']):.17g} {float(f['min']):.17g} "
                        f"{float(f['max']):.17g} {int(bool(f.get('odd', False)))}")
    assert got == want


def test_generator_rewrites_only_on_change(tmp_path: Path) -> None:
    header = tmp_path / "h.h"
    assert _gen(SCHEMA, header).returncode == 0
    os.utime(header, (1_000_000, 1_000_000))
    assert _gen(SCHEMA, header).returncode == 0
    assert header.stat().st_mtime == 1_000_000  # unchanged content: no rebuild of the plugins


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["plugins"][0]["fields"][0].__setitem__("default", 4), "not odd"),
    (lambda d: d["plugins"][0]["fields"][1].__setitem__("default", 99), "outside"),
    (lambda d: d["plugins"][1]["fields"][0].__setitem__("type", "int64"), "type must be one of"),
    (lambda d: d["plugins"].append(dict(d["plugins"][0])), "duplicate plugin"),
    (lambda d: d.__setitem__("schema_version", 2), "schema_version"),
    (lambda d: d["plugins"][0]["fields"][0].__setitem__("min", float("nan")), "finite"),
    (lambda d: d["plugins"][0].__setitem__("name", "Bad Name"), "bad or duplicate plugin name"),
])
def test_generator_rejects_bad_schema(tmp_path: Path, mutate, match: str) -> None:  # noqa: ANN001
    data = json.loads(SCHEMA.read_text(encoding="utf-8"))
    mutate(data)
    bad = tmp_path / "schema.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "h.h"
    proc = _gen(bad, out)
    assert proc.returncode == 1 and match in proc.stderr
    assert not out.exists()


def test_generator_rejects_truncated_json(tmp_path: Path) -> None:
    bad = tmp_path / "schema.json"
    bad.write_text(SCHEMA.read_text(encoding="utf-8")[:200], encoding="utf-8")
    proc = _gen(bad, tmp_path / "h.h")
    assert proc.returncode == 1 and "JSONDecodeError" in proc.stderr


# ---------------------------------------------------------------- CMake option

def _configure(tmp_path: Path, *defs: str) -> subprocess.CompletedProcess:
    import pybind11

    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    return subprocess.run([cmake, "-S", str(REPO), "-B", str(tmp_path / "b"), "-DCMIR_CUDA=OFF",
                           f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                           *defs], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None and not (Path(sys.executable).parent / "cmake").exists(),
                    reason="no cmake")
def test_cmake_tensorrt_option(tmp_path: Path) -> None:
    """AUTO without usable headers prints one line and configures; ON fails; a bad value fails."""
    auto = _configure(tmp_path, "-DCMIR_TENSORRT=AUTO", f"-DTensorRT_INCLUDE_DIR={tmp_path}")
    assert auto.returncode == 0, auto.stderr
    lines = [ln for ln in auto.stdout.splitlines() if "TensorRT plugins" in ln]
    assert lines == [f"-- cmir_trt: TensorRT plugins skipped: TensorRT_INCLUDE_DIR={tmp_path} has no NvInfer.h"]
    shutil.rmtree(tmp_path / "b")
    on = _configure(tmp_path, "-DCMIR_TENSORRT=ON", f"-DTensorRT_INCLUDE_DIR={tmp_path}")
    assert on.returncode != 0 and "CMIR_TENSORRT=ON but the TensorRT plugins cannot be built" in on.stderr
    shutil.rmtree(tmp_path / "b")
    bad = _configure(tmp_path, "-DCMIR_TENSORRT=maybe")
    assert bad.returncode != 0 and "CMIR_TENSORRT must be AUTO, ON or OFF" in bad.stderr
