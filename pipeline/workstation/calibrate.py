"""The calibrate stage: choose the INT8 calibration set and write its manifest.

Reads the training split only. Every chosen image is decoded once here, so a corrupt file
stops this stage (naming it) instead of failing half-way through quantization.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from calibration.manifest import make_manifest, write_manifest
from calibration.select import refuse_held_out, select_calibration_set
from pipeline.config import Config
from pipeline.workstation.data import ImageSplit, open_dataset
from pipeline.errors import DataError
from pipeline.preprocess import read_rgb


def run(cfg: Config) -> Path:
    """Write ``build/<run>/calibration/manifest.json`` and return its path."""
    if cfg.data.path:
        refuse_held_out(Path(cfg.data.path))
    split = open_dataset(cfg.data).split("train")
    chosen = select_calibration_set(split, cfg.calibrate.images, cfg.run.seed)
    chosen = _readable(split, chosen, cfg.calibrate.skip_bad_images)
    files = [split.files[i] for i in chosen]
    labels = [split.labels[i] for i in chosen]
    manifest = make_manifest(split.root, split.classes, cfg.run.seed, files, labels)
    path = write_manifest(manifest, cfg.run_dir / "calibration" / "manifest.json")
    print(f"calibration set: {len(files)} images from {split.root} "
          f"({len(split.classes)} classes), sha256 {manifest.set_sha256[:12]} -> {path}")
    return path


def _readable(split: ImageSplit, chosen: list[int], skip_bad: bool) -> list[int]:
    """Decode each chosen image; bad ones stop the stage unless ``skip_bad_images``."""
    bad: list[tuple[int, str]] = []
    for index in chosen:
        try:
            read_rgb(split.files[index])
        except DataError as exc:
            bad.append((index, str(exc)))
    if bad and not skip_bad:
        names = ", ".join(str(split.files[i]) for i, _ in bad[:5])
        raise DataError(f"{len(bad)} unreadable calibration image(s): {names} "
                        f"(first: {bad[0][1]}); remove them or pass --skip-bad-images")
    for _, message in bad:
        warnings.warn(f"skipped: {message}", stacklevel=2)
    skipped = {i for i, _ in bad}
    return [i for i in chosen if i not in skipped]
