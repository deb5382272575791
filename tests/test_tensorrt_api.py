"""Our TensorRT code and its test EMULATORS, held to NVIDIA's real binding names and to
pycuda's real source.

The binding wheels cannot be imported without libnvinfer, but ``tensorrt.so`` inside
them holds every class, method and enum name of that TensorRT version as a C string.
``make setup`` downloads them into .venv/trt-bindings (see the Makefile), beside pycuda's
source distribution, whose ``pycuda/driver.py`` and ``src/`` (the Boost.Python wrapper)
name everything ``pycuda.driver`` exposes. No 8.5 wheel exists (JetPack 5's TensorRT): the
8.6.1 wheel stands in for it, with the names 8.6 added listed in NEW_IN_8_6.
"""
from __future__ import annotations

import ast
import re
import tarfile
import types
import zipfile
from enum import Enum
from functools import lru_cache
from pathlib import Path

import pytest

from calibration.trt_calibrator import CALIBRATORS
from tests.conftest import ROOT

WHEELS = ROOT / ".venv" / "trt-bindings"
EMULATOR = ROOT / "tests" / "emulator"
CALIBRATOR_METHODS = ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache")
PYCUDA_SDIST_HOW = ("pip download --no-deps --no-binary=:all: --no-build-isolation pycuda==2025.1.2 "
                    "-d .venv/trt-bindings")
TEST_HOOKS = {"CALLS", "LOG", "NUM_DLA_CORES"}  # module-level lists of the emulator, not TensorRT API
# The binding wheel of each TensorRT major version the tests read (the Makefile's TRT_BINDINGS).
# 8.x has no CUDA suffix (tensorrt_bindings-8.6.1-...), 10 and 11 do (tensorrt_cu12_bindings-...).
BINDING_WHEELS = {"8": "tensorrt-bindings==8.6.1", "10": "tensorrt-cu12-bindings==10.3.0",
                  "11": "tensorrt-cu13-bindings==11.4.0.106"}


@lru_cache(maxsize=None)
def names(major: str) -> frozenset[str]:
    """Identifier strings of that version's tensorrt.so, plus the last part of C++-qualified
    names: the linker keeps ``DataType`` only as the tail of ``nvinfer1::DataType``."""
    wheels = sorted(w for pattern in (f"tensorrt_cu1*_bindings-{major}.*.whl", f"tensorrt_bindings-{major}.*.whl")
                    for w in WHEELS.glob(pattern))
    if not wheels:
        pytest.skip(f"no TensorRT {major}.x binding wheel in {WHEELS}: run `make setup` (in an existing "
                    f"venv: .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.11 "
                    f"-d .venv/trt-bindings {BINDING_WHEELS[major]})")
    blob = zipfile.ZipFile(wheels[0]).read("tensorrt_bindings/tensorrt.so")
    found = set()
    for word in blob.split(b"\0"):
        if re.fullmatch(rb"[A-Za-z_][A-Za-z0-9_]{1,80}", word):
            found.add(word.decode())
        elif re.fullmatch(rb"[A-Za-z_]\w*(::[A-Za-z_]\w*)+", word):
            found.add(word.decode().rsplit("::", 1)[1])
    return frozenset(found)


def present(name: str, table: frozenset[str]) -> bool:
    """The linker merges string tails (INT8 lives inside UINT8): a suffix counts."""
    return name in table or any(t.endswith(name) for t in table if len(t) > len(name))


def source_names(path: Path, module_level: bool = False) -> set[str]:
    """Public names a module defines: classes, functions, methods, class attributes (as
    ../shared/tools/trt_oracle.py reads a fake), and optionally module-level assignments."""
    tree = ast.parse(path.read_text())
    found = {n.name for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        for statement in cls.body:
            if isinstance(statement, ast.Assign):
                found.update(t.id for t in statement.targets if isinstance(t, ast.Name))
    if module_level:
        for statement in tree.body:
            if isinstance(statement, ast.Assign):
                found.update(t.id for t in statement.targets if isinstance(t, ast.Name))
    return {n for n in found if not n.startswith("_")}


def module_names(module: types.ModuleType) -> set[str]:
    """Every public name the imported module exposes: its classes (with their attributes,
    enum members and nested classes) and functions; module-level data is left out."""
    found = set()
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        found |= _class_names(value) if isinstance(value, type) else {name} if callable(value) else set()
    return found


def _class_names(cls: type) -> set[str]:
    found = {cls.__name__} | (set(cls.__members__) if issubclass(cls, Enum) else set())
    for attribute, value in vars(cls).items():
        if not attribute.startswith("_") and attribute not in getattr(cls, "__members__", {}):
            found.add(attribute)
            if isinstance(value, type):
                found |= _class_names(value)
    return found


# --- the TensorRT emulator ---------------------------------------------------------------

def test_the_emulator_source_exposes_only_real_tensorrt_10_names() -> None:
    """What trt_oracle.py --fake checks: every public name the emulator's source defines."""
    defined = source_names(EMULATOR / "tensorrt" / "__init__.py")
    missing = sorted(n for n in defined if not present(n, names("10")))
    assert not missing, f"the emulator has names TensorRT 10.3 lacks: {missing}"
    assert {"IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "execute_async_v3"} <= defined
    assert not defined & TEST_HOOKS


@pytest.mark.parametrize("version, wheel", [("10.3.0", "10"), ("11.4.0", "11"),
                                            ("8.5.2", "8")])  # no 8.5 wheel: 8.6.1 stands in, less NEW_IN_8_6
def test_each_emulated_version_exposes_only_real_names(version: str, wheel: str, trt_emulator,
                                                       monkeypatch) -> None:
    """The imported module in each mode, enum members and properties included, against the
    real wheel of that version."""
    monkeypatch.setenv("EDGERESNET_TRT_EMULATE", version)
    trt = trt_emulator.reload().trt
    exposed = module_names(trt)
    missing = sorted(n for n in exposed if not present(n, names(wheel)))
    assert not missing, f"emulated TensorRT {version} has names its wheel lacks: {missing}"
    assert trt.__version__ == version and not exposed & TEST_HOOKS


def test_the_11_mode_lacks_what_tensorrt_11_removed(trt_emulator, monkeypatch) -> None:
    table = names("11")
    for name in REMOVED_IN_11 - {"INT8"}:
        assert name not in table, f"{name} is in TensorRT 11.4 after all"
    monkeypatch.setenv("EDGERESNET_TRT_EMULATE", "11.4.0")
    trt = trt_emulator.reload().trt
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
    assert not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert not hasattr(config, "int8_calibrator") and not hasattr(trt, "IInt8EntropyCalibrator2")
    assert not hasattr(trt, "IInt8MinMaxCalibrator")


def test_the_8_5_mode_lacks_what_tensorrt_8_6_added(trt_emulator, monkeypatch) -> None:
    """8.6.1 is the nearest real wheel to 8.5: what 8.6 added must not be emulated in 8.5."""
    table = names("8")
    misspelled = sorted(n for n in NEW_IN_8_6 if not present(n, table))
    assert not misspelled, f"NEW_IN_8_6 lists names TensorRT 8.6.1 lacks: {misspelled}"
    for name in ABSENT_IN_8_5 - NEW_IN_8_6:  # came after 8.6
        assert not present(name, table), f"{name} is in TensorRT 8.6.1 after all"
    monkeypatch.setenv("EDGERESNET_TRT_EMULATE", "8.5.2")
    trt = trt_emulator.reload().trt
    emulated = sorted(module_names(trt) & ABSENT_IN_8_5)
    assert not emulated, f"emulated TensorRT 8.5 has names 8.5 lacks: {emulated}"
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert not hasattr(config, "builder_optimization_level") and not hasattr(config, "hardware_compatibility_level")
    assert not hasattr(trt.DataType, "FP8") and not hasattr(trt.DataType, "BF16")
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    assert hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and hasattr(trt.BuilderFlag, "INT8")


def test_the_setup_downloads_every_binding_wheel_the_tests_read() -> None:
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^TRT_BINDINGS\s*:=(.*)$", makefile, re.MULTILINE)
    assert listed, "the Makefile has no TRT_BINDINGS"
    assert set(BINDING_WHEELS.values()) <= set(listed.group(1).split()), listed.group(0)


def test_calibrator_names_we_use_exist_in_tensorrt_10() -> None:
    table = names("10")
    for name in (*CALIBRATORS.values(), *CALIBRATOR_METHODS):
        assert present(name, table), name


def test_tensorrt_11_removed_implicit_calibration_so_we_check_by_feature() -> None:
    table = names("11")
    assert "IInt8EntropyCalibrator2" not in table and "IInt8MinMaxCalibrator" not in table
    source = (ROOT / "calibration" / "trt_calibrator.py").read_text()
    assert "getattr(trt, CALIBRATORS[algorithm], None)" in source


# Names TensorRT 11 removed; our code may reach them only behind a feature check.
# (Layer precision constraints went with weak typing: the builder pins float layers only in a
# weakly typed FP16 build, which needs the FP16 flag it checks for first.)
REMOVED_IN_11 = {"FP16", "INT8", "int8_calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                 "OBEY_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH", "precision", "set_output_type"}
# Python API names TensorRT 8.6 added: every name NVIDIA's Python bindings source
# (NVIDIA/TensorRT python/src) binds at tag v8.6.1 and not at tag 8.5.2 (the OSS release of
# 8.5.2.2, JetPack 5.1's TensorRT), keyword-argument names left out. The 8.6.1 wheel has
# them; 8.5 does not, so the emulator's 8.5 mode must not, and our code reaches them only
# behind a feature check. (A name 8.5 already had elsewhere cannot be told apart here:
# 8.6 also gave OnnxParser flags/set_flag/get_flag/clear_flag/clear_flags.)
NEW_IN_8_6 = frozenset({
    # IBuilderConfig
    "builder_optimization_level", "hardware_compatibility_level", "HardwareCompatibilityLevel", "AMPERE_PLUS",
    "max_aux_streams", "plugins_to_serialize",
    # BuilderFlag, DataType (and the module's alias trt.fp8), MemoryPoolType, PreviewFeature, TensorFormat
    "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "fp8", "TACTIC_DRAM", "PROFILE_SHARING_0806", "DHWC",
    # Runtime, ICudaEngine, IExecutionContext
    "engine_host_code_allowed", "load_runtime", "tempfile_control_flags", "temporary_directory",
    "TempfileControlFlag", "ALLOW_IN_MEMORY_FILES", "ALLOW_TEMPORARY_FILES", "num_aux_streams", "set_aux_streams",
    # INetworkDefinition, ILayer, LayerType, UnaryOperation and the new layers
    "builder", "metadata", "add_cast", "ICastLayer", "CAST", "to_type", "add_normalization", "INormalizationLayer",
    "NORMALIZATION", "epsilon", "compute_precision", "add_reverse_sequence", "IReverseSequenceLayer",
    "REVERSE_SEQUENCE", "batch_axis", "sequence_axis", "ISINF",
    # IAlgorithmIOInfo, IPluginRegistry, OnnxParser
    "vectorized_dim", "components_per_element", "load_library", "deregister_library", "parent_search_enabled",
    "OnnxParserFlag", "NATIVE_INSTANCENORM", "get_used_vc_plugin_libraries",
})
# Names TensorRT 8.5 (JetPack 5) does not have yet; likewise behind a feature check. The ones
# after 8.6 (not in the 8.6.1 wheel) are found from our sources by the tests; these are examples.
ABSENT_IN_8_5 = NEW_IN_8_6 | {"STRONGLY_TYPED", "BF16", "INT64", "INT4"}


def trt_names_used(path: Path) -> set[str]:
    """Attribute names our TensorRT code reaches on the module or on TensorRT objects."""
    tree = ast.parse(path.read_text())
    skip = {"profile", "request", "path", "parent", "name"} | set(dir(Path))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and not n.attr.startswith("_") and n.attr not in skip and not _on_other_module(n)}


def _on_other_module(node: ast.Attribute) -> bool:
    """numpy (np.*), pycuda (cuda.*, self.cuda.*) and json are not TensorRT."""
    base = node.value
    if isinstance(base, ast.Name):
        return base.id in ("np", "cuda", "Path", "json")
    return isinstance(base, ast.Attribute) and base.attr == "cuda"


def feature_checked(path: Path) -> set[str]:
    """Names a module checks for before use: the string constant given as the name in
    ``hasattr(obj, "NAME")`` or ``getattr(obj, "NAME", default)``."""
    return _names_in_calls(path, (("hasattr", 2), ("getattr", 3)))


def _names_in_calls(path: Path, forms: tuple) -> set[str]:
    """String constants passed as the name (2nd argument) to the (function, argument count) forms."""
    tree = ast.parse(path.read_text())
    return {call.args[1].value for call in ast.walk(tree)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and (call.func.id, len(call.args)) in forms
            and isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str)}


# Our TensorRT code, and the attribute names in it that are ours (or numpy's, str's, pycuda's), not TensorRT's.
BUILDER = "pipeline/device/tensorrt_build.py"
RUNNER = "pipeline/runners/tensorrt_runner.py"
CALIBRATOR = "calibration/trt_calibrator.py"
OWN_NAMES = {
    BUILDER: {"onnx_path", "precision", "input_size", "timing_cache", "calibrator", "workspace_mb",
              "optimization_level", "min_batch", "opt_batch", "max_batch", "dla_core", "gpu_fallback",
              "read_bytes", "is_file", "append", "startswith",
              "on_dla", "unquantized_fp16", "typing", "unquantized", "float_layers",
              "isdigit"},  # BuildRequest, TargetProfile, Semantics, str
    RUNNER: {"precision", "trt", "cuda", "engine", "context", "inputs", "outputs", "stream", "events",
             "buffers", "last_timing", "astype", "dtype", "shape", "copy", "clear", "get", "nbytes",
             "from_dict", "record", "synchronize", "time_since",  # ours, or pycuda's stream/event
             "max_batch", "min_batch", "from_metadata", "is_jetson", "jetpack", "join",  # ours: runner, ModelInfo, Platform, str
             "compute_capability",  # pycuda's Device
             "get_device", "get_attribute", "INTEGRATED", "CAN_MAP_HOST_MEMORY", "DEVICEMAP",
             "get_device_pointer",  # pycuda's context, device attributes, mapped host memory
             "base"},  # numpy's ndarray.base: pycuda's PagelockedHostAllocation
    CALIBRATOR: {"cuda", "inputs", "size", "cache_path", "position", "device", "key", "nbytes", "join", "split"},
}


@pytest.mark.parametrize("module", [BUILDER, RUNNER, CALIBRATOR])
def test_names_tensorrt_8_5_lacks_are_reached_only_behind_feature_checks(module: str) -> None:
    """JetPack 5 (TensorRT 8.5): every TensorRT name our code reaches exists in 8.6.1 and is
    not new in 8.6, or the module checks for it (hasattr/getattr with that name); a name
    8.6.1 lacks must be a real later one (10.3 or 11.4)."""
    source = ROOT / module
    # getattr(obj, "NAME") without a default raises like obj.NAME: a use, not a check
    used = (trt_names_used(source) | _names_in_calls(source, (("getattr", 2),))) - OWN_NAMES[module]
    table = names("8")
    lacking = {n for n in used if n in NEW_IN_8_6 or not present(n, table)}
    unknown = sorted(n for n in lacking if not present(n, table) and not present(n, names("10"))
                     and not present(n, names("11")))
    assert not unknown, f"{module} reaches names no TensorRT version has: {unknown}"
    unchecked = sorted(lacking - feature_checked(source))
    assert not unchecked, f"{module} reaches names TensorRT 8.5 lacks without a feature check: {unchecked}"


@pytest.mark.parametrize("module", [BUILDER, RUNNER, CALIBRATOR])
def test_feature_checks_name_real_names(module: str) -> None:
    """A misspelled feature check is silently false forever: every name checked for exists in
    one of the TensorRT wheels (or in pycuda)."""
    checked = {n for n in feature_checked(ROOT / module) if not n.startswith("__")}
    unknown = {n for n in checked if not any(present(n, names(major)) for major in ("8", "10", "11"))}
    unknown = sorted(unknown - pycuda_names()) if unknown else []
    assert not unknown, f"{module} checks for names no TensorRT (nor pycuda) has: {unknown}"


def test_builder_names_exist_in_10_and_in_11_unless_guarded() -> None:
    source = ROOT / BUILDER
    used = trt_names_used(source) - OWN_NAMES[BUILDER]
    missing10 = sorted(n for n in used if not present(n, names("10")))
    assert not missing10, f"not in TensorRT 10.3: {missing10}"
    missing11 = sorted(n for n in used - REMOVED_IN_11 if not present(n, names("11")))
    assert not missing11, f"not in TensorRT 11.4: {missing11}"
    text = source.read_text()
    # precision flags (FP16, INT8: gone in 11) are named in data and checked before any is set
    assert "missing = [f for f in flags if not hasattr(trt.BuilderFlag, f)]" in text
    assert 'hasattr(config, "int8_calibrator")' in text
    assert 'hasattr(config, "builder_optimization_level")' in text  # TensorRT 8.5 lacks it
    assert 'hasattr(creation, "EXPLICIT_BATCH")' in text


def test_runner_names_exist_in_8_6_10_and_11() -> None:
    used = trt_names_used(ROOT / RUNNER)
    ours = OWN_NAMES[RUNNER]
    for major in ("8", "10", "11"):
        missing = sorted(n for n in used - ours if not present(n, names(major)))
        assert not missing, f"not in TensorRT {major}: {missing}"
    assert not (used - ours) & ABSENT_IN_8_5


# --- the pycuda emulator -------------------------------------------------------------------

@lru_cache(maxsize=None)
def pycuda_names() -> frozenset[str]:
    """What pycuda's sdist defines: Python names in pycuda/{__init__,driver,autoinit}.py and
    the names its Boost.Python wrapper registers (string literals and DEF_SIMPLE_*/
    DECLARE_EXC macro arguments in src/cpp and src/wrapper)."""
    sdists = sorted(WHEELS.glob("pycuda-*.tar.gz"))
    if not sdists:
        pytest.skip(f"no pycuda sdist in {WHEELS}: run `make setup` ({PYCUDA_SDIST_HOW})")
    found: set[str] = set()
    with tarfile.open(sdists[-1]) as archive:
        for member in archive.getmembers():
            inner = member.name.split("/", 1)[-1]
            if inner in ("pycuda/__init__.py", "pycuda/driver.py", "pycuda/autoinit.py"):
                found |= _python_names(archive.extractfile(member).read().decode())
            elif inner.startswith(("src/cpp/", "src/wrapper/")) and inner.endswith((".cpp", ".hpp")):
                text = archive.extractfile(member).read().decode("utf-8", "replace")
                found |= set(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', text))
                found |= set(re.findall(r"\b(?:DEF_SIMPLE_\w+|DECLARE_EXC)\(\s*([A-Za-z_]\w*)", text))
    return frozenset(found)


def _python_names(text: str) -> set[str]:
    tree = ast.parse(text)
    found = {n.name for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    found |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return found


@pytest.mark.parametrize("module", ["__init__.py", "driver.py", "autoinit.py"])
def test_the_pycuda_emulator_exposes_only_real_pycuda_names(module: str) -> None:
    defined = source_names(EMULATOR / "pycuda" / module, module_level=True)
    missing = sorted(defined - pycuda_names())
    assert not missing, f"the pycuda emulator's {module} has names pycuda lacks: {missing}"


def test_the_imported_pycuda_emulator_exposes_only_real_names(trt_emulator) -> None:
    missing = sorted(module_names(trt_emulator.cuda) - pycuda_names())
    assert not missing, f"pycuda.driver (emulated) exposes names pycuda lacks: {missing}"
    assert {"mem_alloc", "pagelocked_empty", "memcpy_htod_async", "memcpy_dtoh_async", "Stream", "Event",
            "LogicError", "RuntimeError", "time_since", "handle"} <= module_names(trt_emulator.cuda)


def test_pycuda_names_our_code_uses_exist_in_pycuda() -> None:
    """cuda.* / self.cuda.* in our TensorRT runner, calibrator and engine stage."""
    used = set()
    for path in ("pipeline/runners/tensorrt_runner.py", "calibration/trt_calibrator.py", "pipeline/device/engine.py"):
        tree = ast.parse((ROOT / path).read_text())
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                 and ((isinstance(n.value, ast.Name) and n.value.id == "cuda")
                      or (isinstance(n.value, ast.Attribute) and n.value.attr == "cuda"))}
    assert {"mem_alloc", "pagelocked_empty", "Stream", "Event"} <= used
    missing = sorted(used - pycuda_names())
    assert not missing, f"our code calls pycuda names that do not exist: {missing}"
