"""The machine a report was measured on: CPU, GPU, library versions, and on a Jetson the
power mode, whether clocks are locked, GPU/EMC clocks and temperatures.

Latency means nothing without these: a Jetson in a low power mode, or with dynamic clocks,
is several times slower. Everything is read from files under ``root`` so tests use fake
sysfs trees.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any

from targets.detect import detect_platform, system_root

PACKAGES = ("onnxruntime", "openvino", "torch", "opencv-python", "onnx", "nncf", "tensorrt")


def describe_environment(root: Path | None = None) -> dict[str, Any]:
    root = Path(root) if root is not None else system_root()
    platform = detect_platform(root)
    env: dict[str, Any] = {"cpu": cpu_model(root), "cores": os.cpu_count(),
                           "gpu": platform.gpu_name, "compute_capability": platform.compute_capability,
                           "jetson": platform.jetson_model, "jetpack": platform.jetpack,
                           "versions": {p: _version(p) for p in PACKAGES},
                           "driver": _read(root / "proc/driver/nvidia/version")}
    if platform.is_jetson:
        env["jetson_state"] = jetson_state(root)
    return env


def cpu_model(root: Path) -> str | None:
    text = _read(root / "proc/cpuinfo") or ""
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else None


def jetson_state(root: Path) -> dict[str, Any]:
    """nvpmodel mode, GPU/EMC clocks, clocks locked (current == max) and temperatures."""
    gpu = _devfreq(root)
    emc = _int(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate")
    emc_max = _int(root / "sys/kernel/debug/bpmp/debug/clk/emc/max_rate")
    locked = bool(gpu and gpu["cur"] == gpu["max"] and (emc is None or emc == emc_max))
    return {"power_mode": _power_mode(root), "gpu_clock_hz": gpu and gpu["cur"],
            "gpu_clock_max_hz": gpu and gpu["max"], "emc_clock_hz": emc, "clocks_locked": locked,
            "temperatures_c": _temperatures(root)}


def _power_mode(root: Path) -> str | None:
    text = _read(root / "var/lib/nvpmodel/status")
    found = re.search(r"pmode:(\d+)", text or "")
    return found.group(1) if found else None


def _devfreq(root: Path) -> dict[str, int] | None:
    for folder in sorted((root / "sys/class/devfreq").glob("*")):
        if (folder / "device/of_node/name").is_file() and "gpu" in _read(folder / "device/of_node/name"):
            cur, top = _int(folder / "cur_freq"), _int(folder / "max_freq")
            if cur is not None and top is not None:
                return {"cur": cur, "max": top}
    return None


def _temperatures(root: Path) -> dict[str, float]:
    temps = {}
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        kind, value = _read(zone / "type"), _int(zone / "temp")
        if kind and value is not None:
            temps[kind.strip()] = value / 1000.0
    return temps


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
