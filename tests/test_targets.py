"""Target profiles and device detection, on small fake sysfs/etc trees the tests write."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from targets.detect import detect_platform, match_profile, resolve_target
from targets.listing import run as list_targets
from targets.profile import PROFILE_DIR, get_profile, load_profile, load_profiles

JETSONS = {  # device-tree model string as the devices report it -> profile
    "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super": "jetson-orin-nano",
    "NVIDIA Jetson Orin NX Engineering Reference Developer Kit": "jetson-orin-nx",
    "Jetson AGX Orin Developer Kit": "jetson-agx-orin",
    "NVIDIA Jetson Xavier NX Developer Kit": "jetson-xavier-nx",
}


def jetson_tree(root: Path, model: str, release: str = "# R36 (release), REVISION: 4.3, GCID: 38968081, "
                "BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025") -> Path:
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\0")
    (root / "etc").mkdir()
    (root / "etc" / "nv_tegra_release").write_text(release + "\n")
    return root


def desktop_tree(root: Path, model: str) -> Path:
    gpu = root / "proc" / "driver" / "nvidia" / "gpus" / "0000:01:00.0"
    gpu.mkdir(parents=True)
    gpu.joinpath("information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 130\nBus Type: \t PCIe\n")
    return root


def test_every_shipped_profile_loads() -> None:
    profiles = load_profiles()
    assert set(profiles) == {"cpu", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin",
                             "jetson-xavier-nx", "desktop", "datacenter"}
    assert profiles["cpu"].runtime == "auto" and profiles["cpu"].on_cpu  # bench chooses the CPU runtime
    assert not profiles["jetson-orin-nano"].has_dla and profiles["jetson-agx-orin"].has_dla


@pytest.mark.parametrize("model, expected", JETSONS.items())
def test_each_jetson_is_detected_and_matched(tmp_path: Path, model: str, expected: str) -> None:
    platform = detect_platform(jetson_tree(tmp_path, model))
    assert platform.is_jetson and platform.l4t == "36.4.3" and platform.jetpack == "6.2"
    profile, why = match_profile(platform, load_profiles())
    assert profile is not None and profile.name == expected, why
    assert resolve_target("jetson", load_profiles(), platform).name == expected


def test_jetpack_5_release_is_read(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path, "NVIDIA Jetson Xavier NX Developer Kit",
                       "# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref")
    assert detect_platform(root).jetpack == "5.1.3"


@pytest.mark.parametrize("gpu, expected", [("NVIDIA GeForce RTX 4090", "desktop"),
                                           ("NVIDIA H100 80GB HBM3", "datacenter"),
                                           ("NVIDIA GeForce RTX 3060", "desktop")])
def test_desktop_gpus_pick_the_newest_profile_they_meet(tmp_path: Path, gpu: str, expected: str) -> None:
    platform = detect_platform(desktop_tree(tmp_path, gpu))
    assert not platform.is_jetson and platform.gpu_name == gpu
    profile, _ = match_profile(platform, load_profiles())
    assert profile.name == expected
    assert resolve_target(expected, load_profiles(), platform).name == expected


def test_an_old_gpu_is_refused_for_desktop(tmp_path: Path) -> None:
    platform = detect_platform(desktop_tree(tmp_path, "NVIDIA GeForce RTX 2080"))
    with pytest.raises(ConfigError, match="compute capability 7.5, the profile needs >= 8.0"):
        resolve_target("desktop", load_profiles(), platform)


def test_no_gpu_is_the_cpu_target(tmp_path: Path) -> None:
    profile, why = match_profile(detect_platform(tmp_path), load_profiles())
    assert profile.name == "cpu" and "no NVIDIA GPU" in why


def test_building_for_a_jetson_elsewhere_says_what_to_do(tmp_path: Path) -> None:
    elsewhere = detect_platform(desktop_tree(tmp_path, "NVIDIA GeForce RTX 4090"))
    with pytest.raises(ConfigError, match="not a Jetson.*make bundle TARGET=jetson"):
        resolve_target("jetson", load_profiles(), elsewhere)
    with pytest.raises(ConfigError, match="TARGET=jetson-orin-nx: this machine is not a Jetson"):
        resolve_target("jetson-orin-nx", load_profiles(), elsewhere)


def test_another_jetson_model_is_refused(tmp_path: Path) -> None:
    nano = detect_platform(jetson_tree(tmp_path, "NVIDIA Jetson Orin Nano Developer Kit"))
    with pytest.raises(ConfigError, match="this machine is NVIDIA Jetson Orin Nano"):
        resolve_target("jetson-agx-orin", load_profiles(), nano)


@pytest.mark.parametrize("extra, fragment", [
    ("dla_cores = 1\n", "unknown key 'dla_cores'"),
    ("has_dla = false\ndla_core = 0\n", "dla_core: this device has no DLA"),
    ("compute_capability = 5.3\n", "precision: int8 needs compute capability >= 6.1"),
    ("precision = \"int4\"\n", "precision: expected one of"),
    ("max_batch = 0\n", "min/opt/max_batch"),
])
def test_a_bad_profile_is_refused_naming_file_and_field(tmp_path: Path, extra: str, fragment: str) -> None:
    base = (PROFILE_DIR / "jetson-orin-nano.toml").read_text()
    lines = [line for line in base.splitlines() if line.split("=")[0].strip() not in
             {k.split("=")[0].strip() for k in extra.splitlines()}]
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_unknown_target_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown target 'tx2'; choose one of: cpu, datacenter"):
        get_profile("tx2")


def test_targets_command_marks_this_machine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    list_targets(None, jetson_tree(tmp_path, "Jetson AGX Orin Developer Kit"))
    out = capsys.readouterr().out
    assert "* jetson-agx-orin" in out and "JetPack:            6.2" in out
    assert "this machine: jetson-agx-orin (device-tree model 'Jetson AGX Orin Developer Kit'" in out
