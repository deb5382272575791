"""The two sides stay apart: the import contract in .importlinter holds, and it bites.

The device side (pipeline/device, the runners it uses, targets, the shared foundations)
must import on a Jetson: no torch, torchvision, NNCF, ONNX Runtime, PIL or workstation
module, not even inside a function. import-linter reads every import statement, so a lazy
``import torch`` in a device module breaks the contract as surely as one at the top.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("pipeline", "calibration", "targets")


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(tree / ".importlinter")], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def tree_copy(tmp_path: Path) -> Path:
    """The three packages and the contract, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_import_contracts_hold() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_a_lazy_torch_import_on_the_device_side_breaks_the_contract(tree_copy: Path) -> None:
    report = tree_copy / "pipeline" / "device" / "report.py"
    report.write_text(report.read_text() + "\n\ndef _sneaky():\n    import torch\n    return torch\n")
    result = lint(tree_copy)
    assert result.returncode != 0
    assert "pipeline.device is not allowed to import torch" in result.stdout
    assert "pipeline.device.report -> torch" in result.stdout


def test_the_device_side_reaching_a_workstation_module_breaks_the_contract(tree_copy: Path) -> None:
    bench = tree_copy / "pipeline" / "device" / "bench.py"
    bench.write_text(bench.read_text() + "\nfrom pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner\n")
    result = lint(tree_copy)
    assert "pipeline.device is not allowed to import pipeline.runners.onnxruntime_runner" in result.stdout
    assert "pipeline.device is not allowed to import onnxruntime" in result.stdout


def test_an_import_cycle_between_runners_breaks_the_contract(tree_copy: Path) -> None:
    runner = tree_copy / "pipeline" / "runners" / "tensorrt_runner.py"
    runner.write_text(runner.read_text() + "\nfrom pipeline.runners import registry  # noqa\n")
    base = tree_copy / "pipeline" / "runners" / "base.py"
    base.write_text(base.read_text() + "\nfrom pipeline.runners import tensorrt_runner  # noqa\n")
    result = lint(tree_copy)
    assert result.returncode != 0 and "No import cycles between sibling modules BROKEN" in result.stdout


def device_side_files() -> list[Path]:
    files = [p for p in (ROOT / "pipeline").rglob("*.py") if "workstation" not in p.parts]
    files = [p for p in files if p.name not in ("onnxruntime_runner.py",)]
    return files + sorted((ROOT / "targets").glob("*.py")) + [
        ROOT / "calibration" / name for name in ("manifest.py", "qdq.py", "select.py", "trt_cache.py",
                                                 "trt_calibrator.py")]


@pytest.mark.parametrize("version", ["3.8", "3.10"])
def test_device_side_compiles_on_jetpacks_python(version: str, tmp_path: Path) -> None:
    """JetPack 5 ships Python 3.8, JetPack 6 Python 3.10: the device side must parse there
    (the device simulation then runs it)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")))
    python = found[-1] if found else shutil.which(f"python{version}")
    if python is None:
        pytest.skip(f"no Python {version} on this machine (pyenv install {version})")
    code = ("import sys, py_compile\n"
            "for f in sys.argv[1:]:\n"
            "    py_compile.compile(f, cfile=f + '.pyc-check', doraise=True)\n")
    copies = []
    for path in device_side_files():
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy)
        copies.append(str(copy))
    result = subprocess.run([python, "-c", code, *copies], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
