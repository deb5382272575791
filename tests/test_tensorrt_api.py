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
