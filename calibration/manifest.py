"""The calibration manifest: the exact files, labels and bytes an INT8 model was made from.

Quantization, engines built on a device and the report all name the calibration set by
its hash; a manifest whose files changed since it was written is refused rather than
silently giving a different INT8 model.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.artifacts import read_json, sha256_file, write_json
from pipeline.errors import StaleArtifactError

FORMAT = "edgeresnet.calibration-manifest/1"


@dataclass(frozen=True)
class CalibrationItem:
    path: str
    label: int
    sha256: str


@dataclass(frozen=True)
class CalibrationManifest:
    """A seeded, class-balanced selection from a training split, with content hashes."""

    source: str
    classes: tuple[str, ...]
    seed: int
    items: tuple[CalibrationItem, ...]

    @property
    def set_sha256(self) -> str:
        """One hash for the whole set: the items' labels and content, in order."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(f"{item.label}:{item.sha256}\n".encode())
        return digest.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"format": FORMAT, **data, "count": len(self.items), "set_sha256": self.set_sha256}


def make_manifest(source: Path, classes: tuple[str, ...], seed: int, files: list[Path],
                  labels: list[int]) -> CalibrationManifest:
    """Hash every chosen file now, so later changes to it can be detected."""
    items = tuple(CalibrationItem(str(f), int(label), sha256_file(f)) for f, label in zip(files, labels))
    return CalibrationManifest(str(source), tuple(classes), seed, items)


def write_manifest(manifest: CalibrationManifest, path: Path) -> Path:
    return write_json(path, manifest.to_dict())


def load_manifest(path: Path, verify: bool = True) -> CalibrationManifest:
    """Read a manifest; with ``verify``, every file must still have its recorded bytes."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StaleArtifactError(f"{path}: not a calibration manifest (no '{FORMAT}' format tag)")
    try:
        manifest = CalibrationManifest(
            source=data["source"], classes=tuple(data["classes"]), seed=int(data["seed"]),
            items=tuple(CalibrationItem(**item) for item in data["items"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise StaleArtifactError(f"{path}: calibration manifest is missing or has a malformed field ({exc})") from None
    if not manifest.items:
        raise StaleArtifactError(f"{path}: calibration manifest lists no images; run calibrate again")
    if verify:
        verify_files(manifest, path)
    return manifest


def verify_files(manifest: CalibrationManifest, path: Path) -> None:
    """Refuse a manifest whose images are gone or were changed since it was written."""
    for item in manifest.items:
        file = Path(item.path)
        if not file.is_file():
            raise StaleArtifactError(f"{path}: calibration image {file} is missing")
        if sha256_file(file) != item.sha256:
            raise StaleArtifactError(f"{path}: calibration image {file} changed since the "
                                     f"manifest was written (hash differs); run calibrate again")
