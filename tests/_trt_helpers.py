"""Helpers of the TensorRT / Triton tests: locating the plugin harness, and a protobuf schema of the subset of
Triton's ModelConfig that cmir's config.pbtxt uses (field names and types as documented by Triton), so that the
written config is parsed by protobuf's own text-format parser rather than by our code."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
HARNESS_NAME = "cmir_trt_plugin_harness"
HARNESS_ENV = "CMIR_TRT_HARNESS"


def find_harness() -> Path | None:
    """$CMIR_TRT_HARNESS, else the newest harness in the build trees (build/<wheel tag>/ from `make install`)."""
    env = os.environ.get(HARNESS_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    found = [p for p in (REPO_ROOT / "build").glob(f"*/{HARNESS_NAME}") if p.is_file() and os.access(p, os.X_OK)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# Triton's DataType and instance-group Kind enums (values as in Triton's model_config.proto).
_DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
               "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
               "TYPE_BF16"]
_KINDS = ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]


def triton_model_config_class() -> Any:
    """A protobuf message class for the ModelConfig subset: name, platform, max_batch_size,
    default_model_filename, input/output (name, data_type, dims), dynamic_batching (preferred_batch_size,
    max_queue_delay_microseconds), instance_group (count, kind, gpus)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="cmir_tests_triton_subset.proto", package="cmir_tests",
                                             syntax="proto3")
    dt = fdp.enum_type.add(name="DataType")
    for i, n in enumerate(_DATA_TYPES):
        dt.value.add(name=n, number=i)

    def add_msg(name: str, fields: list[tuple[str, int, int, str | None]]) -> Any:
        m = fdp.message_type.add(name=name)
        for number, (fname, ftype, label, type_name) in enumerate(fields, start=1):
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    add_msg("ModelInput", [("name", F.TYPE_STRING, opt, None), ("data_type", F.TYPE_ENUM, opt, ".cmir_tests.DataType"),
                           ("dims", F.TYPE_INT64, rep, None)])
    add_msg("ModelOutput", [("name", F.TYPE_STRING, opt, None),
                            ("data_type", F.TYPE_ENUM, opt, ".cmir_tests.DataType"), ("dims", F.TYPE_INT64, rep, None)])
    add_msg("ModelDynamicBatching", [("preferred_batch_size", F.TYPE_INT32, rep, None),
                                     ("max_queue_delay_microseconds", F.TYPE_UINT64, opt, None)])
    group = add_msg("ModelInstanceGroup", [("count", F.TYPE_INT32, opt, None),
                                           ("kind", F.TYPE_ENUM, opt, ".cmir_tests.ModelInstanceGroup.Kind"),
                                           ("gpus", F.TYPE_INT32, rep, None)])
    kind = group.enum_type.add(name="Kind")
    for i, n in enumerate(_KINDS):
        kind.value.add(name=n, number=i)
    add_msg("ModelConfig", [("name", F.TYPE_STRING, opt, None), ("platform", F.TYPE_STRING, opt, None),
                            ("max_batch_size", F.TYPE_INT32, opt, None),
                            ("default_model_filename", F.TYPE_STRING, opt, None),
                            ("input", F.TYPE_MESSAGE, rep, ".cmir_tests.ModelInput"),
                            ("output", F.TYPE_MESSAGE, rep, ".cmir_tests.ModelOutput"),
                            ("dynamic_batching", F.TYPE_MESSAGE, opt, ".cmir_tests.ModelDynamicBatching"),
                            ("instance_group", F.TYPE_MESSAGE, rep, ".cmir_tests.ModelInstanceGroup")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("cmir_tests.ModelConfig"))


def parse_triton_config(text: str) -> Any:
    """Parse config.pbtxt text (raises google.protobuf.text_format.ParseError on unknown fields or bad syntax)."""
    from google.protobuf import text_format

    return text_format.Parse(text, triton_model_config_class()())


class FakeTRT:
    """A recording stand-in for the part of TensorRT's Python API that cmir_trt.tensorrt.build_engine uses (as
    documented for TensorRT 10/11); its ONNX parser reads the real graph with onnx. Knobs make each failure
    TensorRT can report happen. Install with monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(v).module())."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.calls: dict[str, Any] = {"profiles": [], "pool": None, "flags": None, "loaded": []}
        self.parse_ok = True
        self.build_ok = True
        self.load_ok = True
        self.creators = {"CMIRInvolution", "CMIRCrossModalAttention"}
        self.engine_bytes = bytes(range(256)) * 7

    def module(self) -> types.ModuleType:
        fake = self
        m = types.ModuleType("tensorrt")
        m.__version__ = self.version

        class Logger:
            VERBOSE, WARNING = 0, 2

            def __init__(self, level: int) -> None:
                self.level = level

        class Flag:
            STRONGLY_TYPED = 1 if fake.version.startswith("10.") else 0

        class MemoryPoolType:
            WORKSPACE = "workspace"

        class Tensor:
            def __init__(self, name: str, shape: list[int]) -> None:
                self.name, self.shape, self.dtype = name, shape, "DataType.FLOAT"

        class Network:
            def __init__(self) -> None:
                self.inputs: list[Tensor] = []
                self.outputs: list[Tensor] = []

            num_inputs = property(lambda self: len(self.inputs))
            num_outputs = property(lambda self: len(self.outputs))

            def get_input(self, i: int) -> Tensor:
                return self.inputs[i]

            def get_output(self, i: int) -> Tensor:
                return self.outputs[i]

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network = network
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                if not fake.parse_ok:
                    self.num_errors = 1
                    return False
                import onnx

                g = onnx.load_model(path).graph

                def dims(v: Any) -> list[int]:
                    return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]

                self.network.inputs = [Tensor(v.name, dims(v)) for v in g.input]
                self.network.outputs = [Tensor(v.name, dims(v)) for v in g.output]
                return True

            def get_error(self, i: int) -> str:
                return "In node 3 (CMIRInvolution): plugin not found"

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple] = {}

            def set_shape(self, name: str, lo: list[int], opt: list[int], hi: list[int]) -> None:
                self.shapes[name] = (list(lo), list(opt), list(hi))

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls["pool"] = (pool, size)

            def add_optimization_profile(self, p: Profile) -> None:
                fake.calls["profiles"].append(p.shapes)

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                fake.calls["flags"] = flags
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                return fake.engine_bytes if fake.build_ok else None

        class Registry:
            def load_library(self, path: str) -> object | None:
                fake.calls["loaded"].append(path)
                return object() if fake.load_ok else None

            def get_creator(self, name: str, version: str, namespace: str) -> object | None:
                return object() if name in fake.creators and (version, namespace) == ("1", "cmir") else None

        registry = Registry()
        m.Logger, m.NetworkDefinitionCreationFlag, m.MemoryPoolType = Logger, Flag, MemoryPoolType
        m.OnnxParser, m.Builder = OnnxParser, Builder
        m.get_plugin_registry = lambda: registry
        return m
