"""The calibration set as preprocessed tensors, so the implicit calibrator can run where the
images are not: on a device, from a bundle.

The manifest names images by absolute workstation paths; a device has none of them. What
the calibrator needs is the images after resize and crop (uint8, (N, 3, S, S): a quarter of
float32's size, and normalisation is exact and cheap to redo), written once on the
workstation from the manifest and carried in the bundle. ``calibration/tensors.json`` ties
them to the manifest's ``set_sha256`` and to the file's own hash, so the tensors a cache
is keyed by are the very set the INT8 model was made from. Read with
``allow_pickle=False``: a crafted file cannot run code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from calibration.manifest import load_manifest
from pipeline.artifacts import atomic_path, read_json, sha256_file, write_json
from pipeline.errors import DataError, StaleArtifactError
from pipeline.preprocess import Preprocessing, load_images

TENSORS = "calibration/tensors.npy"
RECORD = "calibration/tensors.json"
MANIFEST = "calibration/manifest.json"


def write_tensors(run_dir: Path, pre: Preprocessing) -> Path:
    """Decode and prepare the manifest's images (the files it hashed) into ``tensors.npy``."""
    manifest = load_manifest(run_dir / MANIFEST)
    images = load_images([Path(item.path) for item in manifest.items], pre.prepare, desc="calibration tensors")
    out = run_dir / TENSORS
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
    write_json(run_dir / RECORD, {"set_sha256": manifest.set_sha256, "count": int(len(images)),
                                  "shape": list(images.shape), "input_size": pre.input_size,
                                  "sha256": sha256_file(out)})
    return out


def ensure_tensors(run_dir: Path, pre: Preprocessing) -> Path:
    """The run's calibration tensors, written from the manifest unless they already match it."""
    record_path = run_dir / RECORD
    if (run_dir / TENSORS).is_file() and record_path.is_file():
        if read_json(record_path).get("set_sha256") == read_json(run_dir / MANIFEST).get("set_sha256"):
            return run_dir / TENSORS
    return write_tensors(run_dir, pre)


def load_tensors(run_dir: Path, pre: Preprocessing) -> Tuple[np.ndarray, Dict[str, Any]]:
    """float32 (N, 3, S, S), normalised as the model expects, and their record; refused when
    the file is not the set the manifest names, or not what its record says it is."""
    path, record_path = run_dir / TENSORS, run_dir / RECORD
    if not path.is_file() or not record_path.is_file():
        raise StaleArtifactError(f"{path}: no calibration tensors in this run; the implicit calibrator "
                                 f"needs them (on the workstation: make bundle with a calibrator profile)")
    record = read_json(record_path)
    expected = read_json(run_dir / MANIFEST).get("set_sha256")
    if record.get("set_sha256") != expected or sha256_file(path) != record.get("sha256"):
        raise StaleArtifactError(f"{path}: not the calibration set of {run_dir / MANIFEST} "
                                 f"(set or file hash differs); rebuild the bundle")
    images = _read_uint8(path, pre.input_size)
    return pre.normalize(images), record


def _read_uint8(path: Path, size: int) -> np.ndarray:
    try:
        images = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a plain NumPy array file ({exc})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, size, size) or not len(images):
        raise DataError(f"{path}: expected uint8 (N, 3, {size}, {size}) images, got {images.dtype} "
                        f"{tuple(images.shape)}")
    return images
