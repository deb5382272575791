"""The deployment bundle: train on a workstation, build the engine on the Jetson.

``make bundle TARGET=jetson`` packs what the device needs (ONNX models, calibration
manifest, labels, the target profiles, checksums) into one archive;
``make engine TARGET=jetson BUNDLE=file`` on the device checks every checksum before it
unpacks anything, so a truncated copy never becomes a half-built run.
"""
from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from pipeline.artifacts import atomic_path, sha256_file
from pipeline.config import Config
from pipeline.errors import StaleArtifactError
from pipeline.onnx_meta import read_metadata
from targets.profile import PROFILE_DIR

RUN_FILES = ("model.fp32.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "calibration/manifest.json",
             "quantize.json", "model.fp32.onnx.json")


def run(cfg: Config) -> Path:
    out = cfg.run_dir / f"bundle-{cfg.engine.target}.tar.gz"
    path = make_bundle(cfg.run_dir, out)
    print(f"bundle {path}: copy it to the device and run `make engine TARGET=jetson RUN={cfg.run_name} BUNDLE=<path to>/{path.name}` there")
    return path


def make_bundle(run_dir: Path, out: Path) -> Path:
    """Archive the run's deployable files, the profiles, labels and SHA256SUMS."""
    files = {name: run_dir / name for name in RUN_FILES if (run_dir / name).is_file()}
    if "model.fp32.onnx" not in files:
        raise StaleArtifactError(f"{run_dir}: nothing to bundle (no model.fp32.onnx); run make demo first")
    files.update({f"targets/{p.name}": p for p in sorted(PROFILE_DIR.glob("*.toml"))})
    labels = "\n".join(read_metadata(files["model.fp32.onnx"])["class_names"]) + "\n"
    sums = "".join(f"{sha256_file(p)}  {name}\n" for name, p in files.items())
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, path in files.items():
            tar.add(path, arcname=name)
        _add_text(tar, "labels.txt", labels)
        _add_text(tar, "SHA256SUMS", sums)
    return out


def unpack_bundle(bundle: Path, run_dir: Path) -> list[str]:
    """Verify every checksum in a scratch folder, then move the files into ``run_dir``."""
    with tempfile.TemporaryDirectory(dir=run_dir.parent if run_dir.parent.is_dir() else None) as scratch:
        names = _extract(bundle, Path(scratch))
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = run_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(scratch) / name), target)
    return names


def _extract(bundle: Path, scratch: Path) -> list[str]:
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StaleArtifactError(f"{bundle}: not a readable bundle ({exc})") from None
    sums = scratch / "SHA256SUMS"
    if not sums.is_file():
        raise StaleArtifactError(f"{bundle}: no SHA256SUMS inside; not an edgeresnet bundle")
    names = []
    for line in sums.read_text().splitlines():
        digest, name = line.split("  ", 1)
        if not (scratch / name).is_file() or sha256_file(scratch / name) != digest:
            raise StaleArtifactError(f"{bundle}: {name} is missing or damaged (checksum differs); "
                                     f"copy the bundle again")
        names.append(name)
    return [n for n in names if not n.startswith("targets/")] + ["labels.txt"]


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
