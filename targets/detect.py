"""What machine this is: Jetson model, L4T/JetPack release, TensorRT, GPU.

Everything is read from files under ``root`` (``/`` on a real machine), so tests run the
same code on small fake sysfs/etc trees. ``nvidia-smi`` is asked only on the real root,
for a desktop GPU's compute capability.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError
from targets.profile import TargetProfile, load_profiles

# Where the machine's own files are read from: "/" on a real machine; the device
# simulation points it at a fake Jetson tree (device-tree model, L4T release, nvpmodel).
SYSROOT_VARIABLE = "EDGERESNET_SYSROOT"

# L4T release (major.minor[.patch]) -> JetPack, from NVIDIA's JetPack archive.
JETPACK = {"35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3",
           "35.6": "5.1.4", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1", "36.4.3": "6.2",
           "36.4.4": "6.2.1"}
# GPU name fragment -> compute capability, for when nvidia-smi cannot be asked.
CAPABILITY = (("RTX 50", 12.0), ("RTX 40", 8.9), ("RTX 30", 8.6), ("RTX 20", 7.5), ("GTX 16", 7.5),
              ("RTX A", 8.6), ("L40", 8.9), ("L4", 8.9), ("A100", 8.0), ("A30", 8.0), ("A10", 8.6),
              ("H100", 9.0), ("H200", 9.0), ("GH200", 9.0), ("B200", 10.0), ("T4", 7.5), ("V100", 7.0))


@dataclass(frozen=True)
class Platform:
    """The facts detection found; ``None`` where a fact is absent on this machine."""

    jetson_model: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    tensorrt: str | None = None
    gpu_name: str | None = None
    compute_capability: float | None = None

    @property
    def is_jetson(self) -> bool:
        return self.jetson_model is not None


def system_root() -> Path:
    """``/``, unless ``EDGERESNET_SYSROOT`` names a stand-in tree (the device simulation)."""
    return Path(os.environ.get(SYSROOT_VARIABLE) or "/")


def detect_platform(root: Path | None = None) -> Platform:
    """Read the machine's identity from ``root`` (default: :func:`system_root`)."""
    root = Path(root) if root is not None else system_root()
    model = _jetson_model(root)
    l4t = _l4t_release(root)
    gpu, capability = _desktop_gpu(root) if model is None else (model, None)
    return Platform(model, l4t, _jetpack(l4t), _tensorrt_version(), gpu, capability)


def match_profile(platform: Platform, profiles: dict[str, TargetProfile]) -> tuple[TargetProfile | None, str]:
    """The profile this machine is, and why (or why none)."""
    if platform.is_jetson:
        for profile in profiles.values():
            if profile.kind == "jetson" and profile.device_model.lower() in platform.jetson_model.lower():
                return profile, (f"device-tree model '{platform.jetson_model}' contains "
                                 f"'{profile.device_model}'")
        return None, f"Jetson '{platform.jetson_model}' has no profile in targets/"
    if platform.gpu_name:
        return _match_gpu(platform, profiles)
    cpu = profiles.get("cpu")
    return cpu, "no NVIDIA GPU found (no /proc/driver/nvidia/gpus): the CPU, on the runtime make bench chooses"


def target_profile(name: str, fit: bool = True, platform: Platform | None = None) -> TargetProfile:
    """The one place a TARGET becomes a profile: every stage and Make target goes through
    here, so ``jetson`` (the Jetson this is) names the same profile, and the same
    ``engines/<profile>/`` folder, everywhere. ``fit`` False only resolves the alias (a
    report can be written off the device); True also checks the profile fits this machine."""
    return resolve_target(name, load_profiles(), platform or detect_platform(), fit)


def resolve_target(name: str, profiles: dict[str, TargetProfile], platform: Platform,
                   fit: bool = True) -> TargetProfile:
    """``jetson`` means "the Jetson this is"; a named GPU profile must fit this machine."""
    if name == "jetson":
        if not platform.is_jetson:
            raise ConfigError("TARGET=jetson: this machine is not a Jetson (no "
                              "/proc/device-tree/model). Copy the bundle to the device "
                              "(make bundle TARGET=jetson) and run `make engine TARGET=jetson` there")
        profile, why = match_profile(platform, profiles)
        if profile is None:
            raise ConfigError(f"TARGET=jetson: {why}")
        return profile
    if name not in profiles:
        raise ConfigError(f"unknown target '{name}'; choose one of: {', '.join(profiles)}, or jetson")
    return _check_fits(profiles[name], platform) if fit else profiles[name]


def _check_fits(profile: TargetProfile, platform: Platform) -> TargetProfile:
    if profile.kind == "jetson" and not (platform.is_jetson and
                                         profile.device_model.lower() in platform.jetson_model.lower()):
        found = platform.jetson_model or "not a Jetson"
        raise ConfigError(f"TARGET={profile.name}: this machine is {found}; build Jetson engines on "
                          f"the device itself (make bundle, copy, make engine TARGET=jetson there)")
    if profile.kind in ("desktop", "datacenter"):
        if platform.gpu_name is None or platform.is_jetson:
            raise ConfigError(f"TARGET={profile.name}: no desktop NVIDIA GPU found on this machine")
        if (platform.compute_capability or 0) < profile.compute_capability:
            raise ConfigError(f"TARGET={profile.name}: {platform.gpu_name} has compute capability "
                              f"{platform.compute_capability}, the profile needs >= {profile.compute_capability}")
    return profile


def _match_gpu(platform: Platform, profiles: dict[str, TargetProfile]) -> tuple[TargetProfile | None, str]:
    capability = platform.compute_capability or 0
    gpus = sorted((p for p in profiles.values() if p.kind in ("desktop", "datacenter")),
                  key=lambda p: -p.compute_capability)
    for profile in gpus:
        if capability >= profile.compute_capability:
            return profile, (f"{platform.gpu_name} (compute capability {capability}) >= "
                             f"{profile.compute_capability}")
    return None, f"{platform.gpu_name} (compute capability {capability}) is older than every GPU profile"


def _jetson_model(root: Path) -> str | None:
    path = root / "proc" / "device-tree" / "model"
    if not path.is_file():
        return None
    text = path.read_bytes().rstrip(b"\0").decode("ascii", "replace").strip()
    return text if "jetson" in text.lower() else None


def _l4t_release(root: Path) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` → ``36.4.3``."""
    path = root / "etc" / "nv_tegra_release"
    if not path.is_file():
        return None
    found = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", path.read_text(errors="replace"))
    return f"{found.group(1)}.{found.group(2)}" if found else None


def _jetpack(l4t: str | None) -> str | None:
    if l4t is None:
        return None
    parts = l4t.split(".")
    for length in (3, 2):
        key = ".".join(parts[:length])
        if key in JETPACK:
            return JETPACK[key]
    return None


def _desktop_gpu(root: Path) -> tuple[str | None, float | None]:
    infos = sorted((root / "proc" / "driver" / "nvidia" / "gpus").glob("*/information"))
    if not infos:
        return None, None
    found = re.search(r"^Model:\s*(.+)$", infos[0].read_text(errors="replace"), re.M)
    name = found.group(1).strip() if found else "NVIDIA GPU"
    return name, _capability(name, root)


def _capability(name: str, root: Path) -> float | None:
    if root == Path("/") and shutil.which("nvidia-smi"):  # only on the real machine
        result = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20)
        if result.returncode == 0 and result.stdout.strip():
            return float(result.stdout.split()[0])
    return next((cap for fragment, cap in CAPABILITY if fragment in name), None)


def _tensorrt_version() -> str | None:
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
