"""Fake Jetson system trees: the files our detection and environment report read.

A Jetson says what it is in ``/proc/device-tree/model`` and ``/etc/nv_tegra_release``, its
power mode in ``/var/lib/nvpmodel/status``, its clocks under ``/sys/class/devfreq`` and
``/sys/kernel/debug/bpmp``, its temperatures under ``/sys/class/thermal``. The device
simulation points ``EDGERESNET_SYSROOT`` at such a tree; tests use it too. The boards are
described as JetPack ships them (L4T release, Python, TensorRT, CUDA).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Board:
    """One Jetson as JetPack ships it, and the target profile it must resolve to."""

    name: str
    model: str          # /proc/device-tree/model
    release: str        # /etc/nv_tegra_release
    jetpack: str
    python: str         # the system Python JetPack's TensorRT is built for
    tensorrt: str
    gpu: str            # what CUDA calls the integrated GPU
    capability: str
    cuda: str
    profile: str


BOARDS = {
    "orin-nano": Board("orin-nano", "NVIDIA Jetson Orin Nano Developer Kit",
                       "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                       "DATE: Wed Jan  8 01:49:37 UTC 2025", "6.2", "3.10", "10.3.0", "Orin (nvgpu)", "8.7",
                       "12.6.0", "jetson-orin-nano"),
    "xavier-nx": Board("xavier-nx", "NVIDIA Jetson Xavier NX Developer Kit",
                       "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                       "DATE: Tue Aug  1 19:57:35 UTC 2023", "5.1.2", "3.8", "8.5.2", "Xavier", "7.2",
                       "11.4.0", "jetson-xavier-nx"),
}


def write_root(root: Path, board: Board, clocks_locked: bool = True) -> Path:
    """Write ``board``'s identity, power mode, clocks and temperatures under ``root``."""
    root = Path(root)
    _write(root / "proc/device-tree/model", board.model + "\0")
    _write(root / "etc/nv_tegra_release", board.release + "\n")
    _write(root / "var/lib/nvpmodel/status", "pmode:0000\n")
    gpu = root / "sys/class/devfreq/17000000.gpu"
    top = 1020000000
    _write(gpu / "device/of_node/name", "gpu")
    _write(gpu / "cur_freq", f"{top if clocks_locked else 306000000}\n")
    _write(gpu / "max_freq", f"{top}\n")
    _write(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate", "3199000000\n")
    _write(root / "sys/kernel/debug/bpmp/debug/clk/emc/max_rate", "3199000000\n")
    for index, (kind, milli) in enumerate((("cpu-thermal", 45500), ("gpu-thermal", 44000))):
        _write(root / f"sys/class/thermal/thermal_zone{index}/type", kind + "\n")
        _write(root / f"sys/class/thermal/thermal_zone{index}/temp", f"{milli}\n")
    return root


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
