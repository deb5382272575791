"""Our TensorRT code and its test fake, held to NVIDIA's real binding names.

The binding wheels cannot be imported without libnvinfer, but ``tensorrt.so`` inside
them holds every class, method and enum name of that TensorRT version as a C string.
``make setup`` downloads them into .venv/trt-bindings (see the Makefile).
"""
from __future__ import annotations

import ast
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import pytest

from calibration.trt_calibrator import CALIBRATORS
from tests.conftest import ROOT

WHEELS = ROOT / ".venv" / "trt-bindings"
CALIBRATOR_METHODS = ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache")


@lru_cache(maxsize=None)
def names(major: str) -> frozenset[str]:
    wheels = sorted(WHEELS.glob(f"tensorrt_cu1*_bindings-{major}*.whl"))
    if not wheels:
        pytest.skip(f"no TensorRT {major}.x binding wheel in {WHEELS}: run `make setup`")
    blob = zipfile.ZipFile(wheels[0]).read("tensorrt_bindings/tensorrt.so")
    return frozenset(w.decode() for w in blob.split(b"\0")
                     if re.fullmatch(rb"[A-Za-z_][A-Za-z0-9_]{1,80}", w))


def present(name: str, table: frozenset[str]) -> bool:
    """The linker merges string tails (INT8 lives inside UINT8): a suffix counts."""
    return name in table or any(t.endswith(name) for t in table if len(t) > len(name))


def fake_public_names() -> set[str]:
    tree = ast.parse((ROOT / "tests" / "fake_tensorrt.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
            found.add(node.name)
    return found


def test_the_fake_exposes_only_real_tensorrt_10_names() -> None:
    table = names("10")
    missing = sorted(n for n in fake_public_names() - {"calls"} if not present(n, table))
    assert not missing, f"the fake has names TensorRT 10.3 lacks: {missing}"
    assert {"IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator"} <= fake_public_names()


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
REMOVED_IN_11 = {"FP16", "int8_calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                 "OBEY_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH"}


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
    source = ROOT / "pipeline" / "tensorrt_build.py"
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


def test_runner_names_exist_in_10_and_11() -> None:
    used = trt_names_used(ROOT / "pipeline" / "runners" / "tensorrt_runner.py")
    ours = {"precision", "trt", "cuda", "engine", "context", "inputs", "outputs", "stream", "events",
            "buffers", "last_timing", "astype", "dtype", "shape", "copy", "clear", "get", "nbytes",
            "from_dict", "record", "synchronize", "time_since"}  # ours, or pycuda's stream/event
    for major in ("10", "11"):
        missing = sorted(n for n in used - ours if not present(n, names(major)))
        assert not missing, f"not in TensorRT {major}: {missing}"
