"""``python -m pipeline targets``: every profile, what this machine is, and which fits."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from targets.detect import Platform, detect_platform, match_profile
from targets.profile import TargetProfile, load_profiles


def run(cfg: Config, root: Path | None = None) -> None:
    platform = detect_platform(root)
    profiles = load_profiles()
    match, why = match_profile(platform, profiles)
    print(describe_platform(platform))
    print()
    print(f"{'':2}{'target':<18} {'kind':<10} {'runtime':<11} {'prec':<5} {'DLA':<4} description")
    for profile in profiles.values():
        mark = "* " if match is not None and profile.name == match.name else "  "
        print(f"{mark}{profile.name:<18} {profile.kind:<10} {profile.runtime:<11} "
              f"{profile.precision:<5} {_dla(profile):<4} {profile.description}")
    print()
    print(f"this machine: {match.name if match else 'no matching profile'} ({why})")


def describe_platform(platform: Platform) -> str:
    facts = [("Jetson", platform.jetson_model), ("L4T", platform.l4t), ("JetPack", platform.jetpack),
             ("GPU", None if platform.is_jetson else platform.gpu_name),
             ("compute capability", platform.compute_capability), ("TensorRT", platform.tensorrt)]
    return "\n".join(f"{name + ':':<20}{value if value is not None else 'not found'}" for name, value in facts)


def _dla(profile: TargetProfile) -> str:
    if not profile.has_dla:
        return "-"
    return str(profile.dla_core) if profile.dla_core >= 0 else "off"
