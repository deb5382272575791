"""The bundle: what crosses from the workstation to the device, packed and unpacked for real.

Bundles travel between machines, so unpacking treats them as hostile: crafted archives
are built here (links, climbing names, unlisted files, damaged bytes) and each must be
refused before anything reaches the run or anywhere else.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.config import BundleConfig
from pipeline.device import bundle as bundle_stage
from pipeline.device import evaluate
from pipeline.errors import StaleArtifactError
from pipeline.imagefolder import laid_out_split, scan_split
from tests.conftest import ROOT

SMALL = BundleConfig(eval_images=40, clip_images=4, clip_frames=2, clip_size=(64, 48))


@pytest.fixture(scope="module")
def archive(quantized_run, tmp_path_factory) -> Path:
    val = laid_out_split(quantized_run.data, "val")
    out = tmp_path_factory.mktemp("bundle") / "bundle-jetson.tar.gz"
    return bundle_stage.make_bundle(quantized_run.run_dir, out, "jetson", val, SMALL, seed=0)


def test_a_bundle_carries_models_a_balanced_eval_set_and_a_clip(quantized_run, archive, tmp_path) -> None:
    device = tmp_path / "device" / "run"
    names = bundle_stage.unpack_bundle(archive, device)
    assert {"model.int8.onnx", "model.fp32.onnx", "labels.txt", "bundle.json", "clip/replay.avi",
            "clip/replay.labels.json"} <= set(names)
    assert "model.int8.cpu.onnx" not in names  # a Jetson builds engines; the UINT8 rendering is for CPUs
    for name in ("model.int8.onnx", "model.fp32.onnx"):
        assert (device / name).read_bytes() == (quantized_run.run_dir / name).read_bytes()
    split = scan_split(device / "evalset", tuple(str(d) for d in range(10)))
    assert len(split) == 40 and sorted(set(split.labels)) == list(range(10))
    assert all(split.labels.count(label) == 4 for label in range(10))  # class-balanced
    record = json.loads((device / "bundle.json").read_text())
    assert record["target"] == "jetson" and record["eval_set"]["images"] == 40
    assert len(record["bundle_sha256"]) == 64 and bundle_stage.is_device_run(device)
    clip_labels = json.loads((device / "clip" / "replay.labels.json").read_text())
    assert len(clip_labels["labels"]) == 8 and clip_labels["classes"] == [str(d) for d in range(10)]


def test_the_cpu_target_bundle_carries_the_uint8_rendering(quantized_run, tmp_path) -> None:
    val = laid_out_split(quantized_run.data, "val")
    cpu = bundle_stage.make_bundle(quantized_run.run_dir, tmp_path / "b.tar.gz", "cpu", val, SMALL)
    with tarfile.open(cpu) as tar:
        assert "model.int8.cpu.onnx" in tar.getnames()


def test_the_same_bundle_again_is_a_no_op_and_another_run_is_refused(quantized_run, archive, tmp_path) -> None:
    device = tmp_path / "run"
    bundle_stage.unpack_bundle(archive, device)
    before = {p: p.stat().st_mtime_ns for p in device.rglob("*")}
    assert bundle_stage.unpack_bundle(archive, device) == []
    assert {p: p.stat().st_mtime_ns for p in device.rglob("*")} == before
    other = tmp_path / "other.tar.gz"
    other.write_bytes(archive.read_bytes() + b"\0" * 1024)  # gzip ignores trailing zeros: same files
    with pytest.raises(StaleArtifactError, match="already holds another bundle"):
        bundle_stage.unpack_bundle(other, device)
    workstation_run = quantized_run.run_dir
    with pytest.raises(StaleArtifactError, match=r"already holds another run \(bench, best.pt"):
        bundle_stage.unpack_bundle(archive, workstation_run)
    assert not (workstation_run / "bundle.json").exists()


def rewrite(archive: Path, out: Path, change) -> Path:
    """A copy of ``archive`` with its members passed through ``change(info, data)``, which
    returns a list of (info, data) to write instead (empty: drop it)."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""
            for info, payload in change(member, data):
                info.size = len(payload)
                dst.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return out


def _damage(info, data):
    if info.name == "model.int8.onnx":
        data = data[:-10] + b"0123456789"
    return [(info, data)]


def _extra(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = ""):
    """A change that adds one crafted member right after labels.txt."""
    def change(info, payload):
        if info.name != "labels.txt":
            return [(info, payload)]
        extra = tarfile.TarInfo(name)
        extra.type, extra.linkname = kind, linkname
        return [(info, payload), (extra, data)]
    return change


_climbing_name = _extra("evalset/../../../escaped.txt", b"owned")
_symlink = _extra("evalset/link", kind=tarfile.SYMTYPE, linkname="../../../../tmp")
_absolute = _extra("/tmp/edgeresnet-absolute.txt", b"owned")
_unlisted = _extra("extra.py", b"print('not listed')")
_hardlink = _extra("evalset/hard", kind=tarfile.LNKTYPE, linkname="../../../../etc/passwd")


def _twice(info, data):
    return [(info, data), (info, b"second copy")] if info.name == "labels.txt" else [(info, data)]


def _bad_sums_line(info, data):
    if info.name == "SHA256SUMS":
        return [(info, b"not a checksum line\n" + data)]
    return [(info, data)]


def _sums_not_utf8(info, data):
    return [(info, b"\xff\xfe" + data)] if info.name == "SHA256SUMS" else [(info, data)]


def _record_not_an_object(info, data):
    if info.name == "bundle.json":
        return [(info, b"[1, 2]")]
    if info.name == "SHA256SUMS":
        import hashlib

        lines = [line for line in data.decode().splitlines() if not line.endswith("  bundle.json")]
        lines.append(f"{hashlib.sha256(b'[1, 2]').hexdigest()}  bundle.json")
        return [(info, ("\n".join(lines) + "\n").encode())]
    return [(info, data)]


def _device_node(info, data):
    change = _extra("evalset/null", kind=tarfile.CHRTYPE)
    rows = change(info, data)
    if len(rows) == 2:
        rows[1][0].devmajor, rows[1][0].devminor = 1, 3
    return rows


@pytest.mark.parametrize("change, fragment", [
    (_damage, "model.int8.onnx is missing or damaged"),
    (_climbing_name, "is not a plain relative path"),
    (_symlink, "is not a regular file"),
    (_hardlink, "is not a regular file"),
    (_device_node, "is not a regular file"),
    (_absolute, "is not a plain relative path"),
    (_unlisted, "extra.py is not listed in SHA256SUMS"),
    (_twice, "member 'labels.txt' appears twice"),
    (_bad_sums_line, "SHA256SUMS line 1 is not '<sha256>  <name>'"),
    (_sums_not_utf8, "SHA256SUMS is not UTF-8 text"),
    (_record_not_an_object, "bundle.json is not a JSON object"),
], ids=["damaged", "climbing-name", "symlink", "hardlink", "device", "absolute", "unlisted", "duplicate",
        "bad-sums-line", "sums-not-utf8", "record-not-object"])
def test_a_crafted_bundle_is_refused_before_anything_is_written(archive, tmp_path, change, fragment) -> None:
    crafted = rewrite(archive, tmp_path / "crafted.tar.gz", change)
    device = tmp_path / "deep" / "a" / "b" / "run"
    with pytest.raises(StaleArtifactError, match=fragment):
        bundle_stage.unpack_bundle(crafted, device)
    assert not device.exists()
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not Path("/tmp/edgeresnet-absolute.txt").exists()
    assert [p.name for p in (tmp_path / "deep" / "a" / "b").iterdir()] == []  # no scratch left behind


def test_a_device_run_is_scored_on_the_bundled_images(quantized_run, archive, tmp_path) -> None:
    """On the cpu target (ONNX Runtime is here), evaluate in an unpacked run reads the
    bundle's labelled images, and gives the figures a direct evaluation of them gives."""
    run = dataclasses.replace(quantized_run, run=dataclasses.replace(quantized_run.run, root=str(tmp_path)))
    bundle_stage.unpack_bundle(archive, run.run_dir)
    int8 = json.loads(evaluate.run(run).read_text())  # the last one written: the peer-less int8 JSON
    assert Path(int8["data"]) == run.run_dir / "evalset" and int8["images"] == 40
    direct = dataclasses.replace(run, evaluate=dataclasses.replace(
        run.evaluate, model=str(run.run_dir / "model.int8.onnx"), out=str(tmp_path / "direct.json")),
        data=dataclasses.replace(run.data, path=str(run.run_dir / "evalset")))
    evaluate.run(direct)
    assert json.loads((tmp_path / "direct.json").read_text())["top1"] == int8["top1"]


def test_unpack_is_a_stage_and_refuses_a_missing_bundle(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pipeline", "unpack", "--config", "configs/digits.toml",
                             "--set", f'run.root="{tmp_path}"', "--bundle", str(tmp_path / "nope.tar.gz")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "nope.tar.gz: bundle not found" in result.stderr
    assert not any(tmp_path.iterdir())


def make_dry(*args: str, root: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(["make", "-n", *args, f"EDGERESNET_SYSROOT={root}", "DEVICE_VENV=.venv"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_make_on_the_device_uses_only_the_bundle_and_the_resolved_profile(archive, tmp_path) -> None:
    """With a bundle (or in a run unpacked from one) Make has no rule that trains, exports or
    quantizes, and TARGET=jetson becomes the detected board's engines/<profile>/ folder."""
    from tests.sim.jetson_root import BOARDS, write_root

    root = write_root(tmp_path / "orin", BOARDS["orin-nano"])
    common = ("TARGET=jetson", "RUN=r", f"BUILD={tmp_path / 'build'}")
    fresh = make_dry("engine", "evaluate", "bench", "report", *common, f"BUNDLE={archive}", root=root)
    stages = [line.split(" -m pipeline ")[1].split()[0] for line in fresh.splitlines() if " -m pipeline " in line]
    assert stages == ["unpack", "engine", "evaluate", "bench", "report"], fresh
    run_dir = tmp_path / "build" / "r"
    bundle_stage.unpack_bundle(archive, run_dir)
    engines = run_dir / "engines" / "jetson-orin-nano"
    engines.mkdir(parents=True)
    (engines / "model.fp32.engine").write_bytes(b"built")  # newer than the bundle's files
    later = make_dry("evaluate", "bench", *common, root=root)
    assert [line.split(" -m pipeline ")[1].split()[0] for line in later.splitlines()
            if " -m pipeline " in line] == ["evaluate", "bench"], later
    (run_dir / "model.int8.onnx").touch()  # a newer model would retrain on a workstation, not here
    assert "pipeline train" not in make_dry("engine", *common, root=root)


def test_a_decompression_bomb_is_refused_at_its_header(tmp_path) -> None:
    """64 MiB of zeros compress to a few dozen KiB; the declared size is refused before the
    data is inflated, and the CLI takes the limit from bundle.max_unpacked_mb."""
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("model.fp32.onnx")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 1 << 20
    device = tmp_path / "run"
    with pytest.raises(StaleArtifactError, match="unpacks to more than 16 MiB .*bundle.max_unpacked_mb"):
        bundle_stage.unpack_bundle(bomb, device, limit_bytes=16 << 20)
    assert not device.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pipeline", "unpack", "--config", "configs/digits.toml",
                             "--set", f'run.root="{tmp_path}"', "--set", "bundle.max_unpacked_mb=8",
                             "--bundle", str(bomb)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unpacks to more than 8 MiB" in result.stderr


def test_a_calibrator_profile_calibrates_on_the_device_from_the_bundled_tensors(quantized_run, tmp_path,
                                                                               trt_emulator) -> None:
    """The device's manifest names workstation paths; the bundle carries the preprocessed set,
    and the implicit calibrator (TensorRT EMULATOR: ONNX Runtime measures the ranges) runs from
    it. Crafted tensors (a pickled array, other bytes) are refused, nothing executed."""
    import numpy as np

    from calibration import tensors
    from pipeline.artifacts import read_json, sha256_file, sidecar_path
    from pipeline.device import engine
    from pipeline.errors import DataError
    from pipeline.preprocess import Preprocessing
    from pipeline.onnx_meta import read_metadata
    from targets.profile import get_profile

    val = laid_out_split(quantized_run.data, "val")
    archive = bundle_stage.make_bundle(quantized_run.run_dir, tmp_path / "b.tar.gz", "jetson-orin-nx", val, SMALL,
                                       calibration=True)
    device = tmp_path / "device" / "run"
    assert {tensors.TENSORS, tensors.RECORD} <= set(bundle_stage.unpack_bundle(archive, device))
    manifest = read_json(device / tensors.MANIFEST)
    profile = dataclasses.replace(get_profile("jetson-orin-nx"), calibrator="minmax")
    path = engine.build_one(trt_emulator.trt, device, profile, "int8", {"gpu": "Orin"})
    record = read_json(sidecar_path(path))["calibration"]
    assert record["calibration_sha256"] == manifest["set_sha256"] and record["algorithm"] == "minmax"
    assert record["onnx_sha256"] == sha256_file(device / "model.fp32.onnx")
    pre = Preprocessing.from_dict(read_metadata(device / "model.fp32.onnx")["preprocessing"])
    images, _ = tensors.load_tensors(device, pre)
    assert images.dtype == np.float32 and len(images) == manifest["count"]
    crafted = device / tensors.TENSORS
    np.save(crafted, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (device / tensors.RECORD).write_text(json.dumps({**read_json(device / tensors.RECORD),
                                                     "sha256": sha256_file(crafted)}))
    with pytest.raises(DataError, match="tensors.npy: not a plain NumPy array file"):
        tensors.load_tensors(device, pre)
    np.save(crafted, np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(StaleArtifactError, match="not the calibration set"):
        tensors.load_tensors(device, pre)
