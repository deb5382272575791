"""The implicit TensorRT INT8 calibrator (entropy by default, min-max selectable).

Explicit Q/DQ is the path that works on TensorRT 10 and 11; this calibrator stays for
TensorRT 10 targets that need implicit calibration (DLA on JetPack 6). It feeds the
manifest's images, preprocessed exactly as for quantization, in batches through pycuda
device buffers, and reads/writes TensorRT's calibration cache so a device calibrates once.
TensorRT 11 removed the calibrator classes: asking for one there is refused, by feature.

TensorRT checks only its own header on a cache it is handed, so a cache left from another
ONNX or another calibration set would be used as is, with scales measured on other data
(or for other tensors). Each cache is therefore keyed by the ONNX's and the set's hashes
(``<cache>.json``, written with it) and a mismatched one is refused before the build.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np

from pipeline.artifacts import atomic_path, read_json, sha256_file, write_json
from pipeline.errors import ConfigError, MissingDependencyError, StaleArtifactError
from pipeline.optional import import_optional, import_pycuda

CALIBRATORS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def open_calibrator(algorithm: str, inputs: np.ndarray, batch_size: int, cache_path: Path,
                    key: Dict[str, str]) -> Any:
    """The calibrator for this machine's TensorRT, with pycuda buffers (imported here)."""
    trt = import_optional("tensorrt", "for implicit INT8 calibration",
                          "on a Jetson it comes with JetPack; elsewhere pip install tensorrt")
    cuda = import_pycuda("to feed calibration batches to the GPU")
    return make_calibrator(trt, cuda, algorithm, inputs, batch_size, cache_path, key)


def make_calibrator(trt: Any, cuda: Any, algorithm: str, inputs: np.ndarray, batch_size: int,
                    cache_path: Path, key: Dict[str, str]) -> Any:
    """A calibrator over ``inputs`` (float32 (N, 3, S, S)), given the two modules; a cache
    already at ``cache_path`` must carry ``key`` (see :func:`cache_key`)."""
    if algorithm not in CALIBRATORS:
        raise ConfigError(f"calibrator: expected one of {', '.join(CALIBRATORS)}, got {algorithm!r}")
    base = getattr(trt, CALIBRATORS[algorithm], None)
    if base is None:  # TensorRT 11 removed implicit calibration
        raise MissingDependencyError(f"this TensorRT ({getattr(trt, '__version__', '?')}) has no "
                                     f"{CALIBRATORS[algorithm]}; use the Q/DQ model (model.int8.onnx)")
    require_cache_key(Path(cache_path), key)
    return _calibrator_class(base)(cuda, inputs, batch_size, Path(cache_path), dict(key))


def cache_key(onnx_path: Path, set_sha256: str, algorithm: str) -> Dict[str, str]:
    """What a calibration cache is valid for: this ONNX, this calibration set, this algorithm."""
    return {"onnx_sha256": sha256_file(onnx_path), "calibration_sha256": set_sha256, "algorithm": algorithm}


def key_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".json")


def require_cache_key(cache_path: Path, key: Dict[str, str]) -> None:
    """Refuse a cache made from another ONNX, calibration set or algorithm (or of unknown
    origin): TensorRT would use its scales without a word."""
    if not cache_path.is_file():
        return
    recorded = read_json(key_path(cache_path)) if key_path(cache_path).is_file() else {}
    different = [name for name in key if recorded.get(name) != key[name]]
    if different:
        raise StaleArtifactError(f"{cache_path}: made for another {different[0].split('_')[0]} "
                                 f"({str(recorded.get(different[0]))[:12]}, this build has "
                                 f"{key[different[0]][:12]}); delete it to calibrate afresh")


def _calibrator_class(base: type) -> type:
    class Calibrator(base):  # type: ignore[misc, valid-type]
        """Batches from host memory to one device buffer; cache read and written as bytes."""

        def __init__(self, cuda: Any, inputs: np.ndarray, batch_size: int, cache_path: Path,
                     key: Dict[str, str]) -> None:
            base.__init__(self)
            self.cuda, self.inputs, self.size, self.cache_path = cuda, inputs, batch_size, cache_path
            self.key = key
            self.position = 0
            self.device = cuda.mem_alloc(inputs[:batch_size].nbytes)

        def get_batch_size(self) -> int:
            return self.size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.position + self.size > len(self.inputs):
                return None
            batch = np.ascontiguousarray(self.inputs[self.position:self.position + self.size])
            self.cuda.memcpy_htod(self.device, batch)
            self.position += self.size
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return self.cache_path.read_bytes() if self.cache_path.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            with atomic_path(self.cache_path) as tmp:
                tmp.write_bytes(bytes(cache))
                write_json(key_path(self.cache_path), self.key)

    return Calibrator
