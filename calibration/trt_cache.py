"""TensorRT's INT8 calibration cache: read, write, and turn into per-tensor scales.

The implicit calibrator (DLA on JetPack 6 still needs it) writes a text cache: a header
``TRT-<version>-<algorithm>``, then one ``tensor: <hex>`` line per tensor, where the hex
is the big-endian IEEE float32 *scale* (dynamic range / 127). Reading it here lets a
cache made on a device become the portable Q/DQ artifact.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifacts import write_text
from pipeline.errors import StaleArtifactError

ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration", "EntropyCalibration", "LegacyCalibration")


@dataclass(frozen=True)
class CalibrationCache:
    """Per-tensor activation scales with the header that says who made them."""

    version: str
    algorithm: str
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def header(self) -> str:
        return f"TRT-{self.version}-{self.algorithm}"


def parse_cache(text: str, source: str = "cache") -> CalibrationCache:
    """Parse the cache text; a malformed header or line is refused naming ``source``:line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise StaleArtifactError(f"{source}:1: expected a 'TRT-<version>-<algorithm>' header")
    version, _, algorithm = lines[0][len("TRT-"):].rpartition("-")
    if algorithm not in ALGORITHMS or not version:
        raise StaleArtifactError(f"{source}:1: unknown calibration header {lines[0]!r}")
    scales = {}
    for number, line in enumerate(lines[1:], 2):
        name, sep, value = line.rpartition(":")
        try:
            scales[name.strip()] = decode_scale(value.strip())
        except ValueError:
            raise StaleArtifactError(f"{source}:{number}: expected 'tensor: <8 hex digits>', "
                                     f"got {line!r}") from None
        if not sep or not name.strip():
            raise StaleArtifactError(f"{source}:{number}: expected 'tensor: <8 hex digits>', got {line!r}")
    return CalibrationCache(version, algorithm, scales)


def format_cache(cache: CalibrationCache) -> str:
    """The text TensorRT writes and reads back."""
    body = [f"{name}: {encode_scale(scale)}" for name, scale in cache.scales.items()]
    return "\n".join([cache.header, *body]) + "\n"


def read_cache(path: Path) -> CalibrationCache:
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise StaleArtifactError(f"{path}: calibration cache not found") from None
    except UnicodeDecodeError:
        raise StaleArtifactError(f"{path}: not a text calibration cache") from None
    return parse_cache(text, str(path))


def write_cache(cache: CalibrationCache, path: Path) -> Path:
    return write_text(path, format_cache(cache))


def decode_scale(hex_text: str) -> float:
    """``3c010a14`` → the float32 whose big-endian bytes those are."""
    if len(hex_text) != 8:
        raise ValueError(hex_text)
    return struct.unpack(">f", bytes.fromhex(hex_text))[0]


def encode_scale(scale: float) -> str:
    return struct.pack(">f", scale).hex()
