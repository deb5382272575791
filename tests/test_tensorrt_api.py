"""Our TensorRT code and its test EMULATORS, held to NVIDIA's real binding names and to
pycuda's real source.

The binding wheels cannot be imported without libnvinfer, but ``tensorrt.so`` inside
them holds every class, method and enum name of that TensorRT version as a C string.
``make setup`` downloads them into .venv/trt-bindings (see the Makefile), beside pycuda's
source distribution, whose ``pycuda/driver.py`` and ``src/`` (the Boost.Python wrapper)
name everything ``pycuda.driver`` exposes.
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


@lru_cache(maxsize=None)
def names(major: str) -> frozenset[str]:
    """Identifier strings of that version's tensorrt.so, plus the last part of C++-qualified
    names: the linker keeps ``DataType`` only as the tail of ``nvinfer1::DataType``."""
    wheels = sorted(WHEELS.glob(f"tensorrt_cu1*_bindings-{major}*.whl"))
    if not wheels:
        pytest.skip(f"no TensorRT {major}.x binding wheel in {WHEELS}: run `make setup`")
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
                                            ("8.5.2", "10")])  # no 8.5 binding wheel exists: 10.3 stands in
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
REMOVED_IN_11 = {"FP16", "INT8", "int8_calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                 "OBEY_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH"}
# Names TensorRT 8.5 (JetPack 5) does not have yet; likewise behind a feature check.
ABSENT_IN_8_5 = {"builder_optimization_level", "STRONGLY_TYPED"}


def trt_names_used(path: Path) -> set[str]:
    """Attribute names our TensorRT code reaches on the module or on TensorRT objects."""
    tree = ast.parse(path.read_text())
    skip = {"profile", "request", "path", "parent", "name"} | set(dir(Path))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and not n.attr.startswith("_") and n.attr not in skip and not _on_other_module(n)}


def _on_other_module(node: ast.Attribute) -> bool:
    """numpy (np.*) and pycuda (cuda.*, self.cuda.*) are not TensorRT."""
    base = node.value
    if isinstance(base, ast.Name):
        return base.id in ("np", "cuda", "Path")
    return isinstance(base, ast.Attribute) and base.attr == "cuda"


def test_builder_names_exist_in_10_and_in_11_unless_guarded() -> None:
    source = ROOT / "pipeline" / "device" / "tensorrt_build.py"
    ours = {"onnx_path", "precision", "input_size", "timing_cache", "calibrator", "workspace_mb",
            "optimization_level", "min_batch", "opt_batch", "max_batch", "dla_core", "gpu_fallback",
            "read_bytes", "is_file", "append", "startswith"}
    used = trt_names_used(source) - ours
    missing10 = sorted(n for n in used if not present(n, names("10")))
    assert not missing10, f"not in TensorRT 10.3: {missing10}"
    missing11 = sorted(n for n in used - REMOVED_IN_11 if not present(n, names("11")))
    assert not missing11, f"not in TensorRT 11.4: {missing11}"
    text = source.read_text()
    assert 'hasattr(flags, "FP16")' in text and 'hasattr(config, "int8_calibrator")' in text
    assert 'hasattr(config, "builder_optimization_level")' in text  # TensorRT 8.5 lacks it
    assert 'hasattr(creation, "EXPLICIT_BATCH")' in text


def test_runner_names_exist_in_10_and_11() -> None:
    used = trt_names_used(ROOT / "pipeline" / "runners" / "tensorrt_runner.py")
    ours = {"precision", "trt", "cuda", "engine", "context", "inputs", "outputs", "stream", "events",
            "buffers", "last_timing", "astype", "dtype", "shape", "copy", "clear", "get", "nbytes",
            "from_dict", "record", "synchronize", "time_since",  # ours, or pycuda's stream/event
            "max_batch", "from_metadata", "is_jetson", "jetpack", "join",  # ours: runner, ModelInfo, Platform, str
            "compute_capability"}  # pycuda's Device
    for major in ("10", "11"):
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
