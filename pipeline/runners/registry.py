"""Open any model file as a Runner, with what it says about itself.

The file's type decides the backend: ``.pt`` → PyTorch (workstation), ``.onnx`` → ONNX
Runtime, ``.engine`` → TensorRT. Backends are looked up by module name and imported only
when a file of their type is opened, so the device side, which has neither torch nor ONNX
Runtime, opens engines through the same call, and a missing backend is one clear error
naming the package instead of an ImportError at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from pipeline.errors import ConfigError, StaleArtifactError
from pipeline.optional import import_optional
from pipeline.runners.base import ModelInfo, Runner


@dataclass(frozen=True)
class Backend:
    """Where a file type's opener lives, and what to say when its runtime is missing."""

    module: str
    opener: str
    why: str
    how: str


BACKENDS = {
    ".pt": Backend("pipeline.workstation.torch_runner", "open_checkpoint", "to run a PyTorch checkpoint",
                   "checkpoints run on the workstation (make setup); deploy the ONNX or engine"),
    ".onnx": Backend("pipeline.runners.onnxruntime_runner", "open_onnx", "to run an ONNX model on the CPU",
                     "pip install onnxruntime (on a Jetson, build a TensorRT engine instead: make engine)"),
    ".engine": Backend("pipeline.runners.tensorrt_runner", "open_engine_file", "to run a TensorRT engine",
                       "TensorRT engines run on the NVIDIA machine they were built on"),
}


def open_model(path: Path, threads: int = 0) -> Tuple[Runner, ModelInfo]:
    """A runner for ``path`` and its description; unknown suffixes list the choices."""
    path = Path(path)
    backend = BACKENDS.get(path.suffix)
    if backend is None:
        raise ConfigError(f"{path}: unknown model type '{path.suffix}'; expected one of "
                          f"{', '.join(BACKENDS)}")
    if not path.is_file():
        raise StaleArtifactError(f"{path}: model not found")
    module = import_optional(backend.module, backend.why, backend.how)
    return getattr(module, backend.opener)(path, threads)
