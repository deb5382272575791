"""The implicit TensorRT INT8 calibrator (entropy by default, min-max selectable).

Explicit Q/DQ is the path that works on TensorRT 10 and 11; this calibrator stays for
TensorRT 10 targets that need implicit calibration (DLA on JetPack 6). It feeds the
manifest's images, preprocessed exactly as for quantization, in batches through pycuda
device buffers, and reads/writes TensorRT's calibration cache so a device calibrates once.
TensorRT 11 removed the calibrator classes: asking for one there is refused, by feature.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, MissingDependencyError
from pipeline.optional import import_optional, import_pycuda

CALIBRATORS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def open_calibrator(algorithm: str, inputs: np.ndarray, batch_size: int, cache_path: Path) -> Any:
    """The calibrator for this machine's TensorRT, with pycuda buffers (imported here)."""
    trt = import_optional("tensorrt", "for implicit INT8 calibration",
                          "on a Jetson it comes with JetPack; elsewhere pip install tensorrt")
    cuda = import_pycuda("to feed calibration batches to the GPU")
    return make_calibrator(trt, cuda, algorithm, inputs, batch_size, cache_path)


def make_calibrator(trt: Any, cuda: Any, algorithm: str, inputs: np.ndarray, batch_size: int,
                    cache_path: Path) -> Any:
    """A calibrator over ``inputs`` (float32 (N, 3, S, S)), given the two modules."""
    if algorithm not in CALIBRATORS:
        raise ConfigError(f"calibrator: expected one of {', '.join(CALIBRATORS)}, got {algorithm!r}")
    base = getattr(trt, CALIBRATORS[algorithm], None)
    if base is None:  # TensorRT 11 removed implicit calibration
        raise MissingDependencyError(f"this TensorRT ({getattr(trt, '__version__', '?')}) has no "
                                     f"{CALIBRATORS[algorithm]}; use the Q/DQ model (model.int8.onnx)")
    return _calibrator_class(base)(cuda, inputs, batch_size, Path(cache_path))


def _calibrator_class(base: type) -> type:
    class Calibrator(base):  # type: ignore[misc, valid-type]
        """Batches from host memory to one device buffer; cache read and written as bytes."""

        def __init__(self, cuda: Any, inputs: np.ndarray, batch_size: int, cache_path: Path) -> None:
            base.__init__(self)
            self.cuda, self.inputs, self.size, self.cache_path = cuda, inputs, batch_size, cache_path
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
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".partial")
            tmp.write_bytes(bytes(cache))
            tmp.replace(self.cache_path)

    return Calibrator
