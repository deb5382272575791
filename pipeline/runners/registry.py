"""Open any model file as a Runner, with what it says about itself.

The file's type decides the default backend: ``.pt`` → PyTorch (workstation), ``.onnx`` →
ONNX Runtime, ``.engine`` → TensorRT; ``runtime`` picks another one that reads the same
type (``.onnx`` → OpenVINO). Backends are looked up by module name and imported only
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
    """Which files a runtime reads, where its opener lives, what to say when it is missing,
    and the precisions it can run a file in besides the file's own (``open_model``'s
    ``precision``)."""

    suffix: str
    module: str
    opener: str
    why: str
    how: str
    precisions: Tuple[str, ...] = ()


RUNTIMES = {
    "torch": Backend(".pt", "pipeline.workstation.torch_runner", "open_checkpoint", "to run a PyTorch checkpoint",
                     "checkpoints run on the workstation (make setup); deploy the ONNX or engine"),
    "onnxruntime": Backend(".onnx", "pipeline.runners.onnxruntime_runner", "open_onnx",
                           "to run an ONNX model on the CPU",
                           "pip install onnxruntime (on a Jetson, build a TensorRT engine instead: make engine)"),
    "openvino": Backend(".onnx", "pipeline.runners.openvino_runner", "open_onnx",
                        "to run an ONNX model with OpenVINO", "pip install openvino (make setup installs it)",
                        ("bf16",)),
    "tensorrt": Backend(".engine", "pipeline.runners.tensorrt_runner", "open_engine_file", "to run a TensorRT engine",
                        "TensorRT engines run on the NVIDIA machine they were built on"),
}
DEFAULT_RUNTIME = {".pt": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt"}


def open_model(path: Path, threads: int = 0, runtime: str = "", precision: str = "") -> Tuple[Runner, ModelInfo]:
    """A runner for ``path`` and its description: on ``runtime`` (default: the file type's),
    in ``precision`` (default: the file's own; e.g. ``bf16`` on OpenVINO). Unknown suffixes
    and runtimes list the choices."""
    path = Path(path)
    backend = _backend(path, runtime)
    if precision and precision not in backend.precisions:
        raise ConfigError(f"{path}: {runtime or DEFAULT_RUNTIME[path.suffix]} runs this file as it is"
                          + (f" or in {', '.join(backend.precisions)}" if backend.precisions else "")
                          + f", not in {precision!r}")
    if not path.is_file():
        raise StaleArtifactError(f"{path}: model not found")
    module = import_optional(backend.module, backend.why, backend.how)
    opener = getattr(module, backend.opener)
    return opener(path, threads, precision) if precision else opener(path, threads)


def _backend(path: Path, runtime: str) -> Backend:
    if path.suffix not in DEFAULT_RUNTIME:
        raise ConfigError(f"{path}: unknown model type '{path.suffix}'; expected one of "
                          f"{', '.join(DEFAULT_RUNTIME)}")
    if runtime and runtime not in RUNTIMES:
        raise ConfigError(f"{path}: unknown runtime '{runtime}'; expected one of {', '.join(RUNTIMES)}")
    backend = RUNTIMES[runtime or DEFAULT_RUNTIME[path.suffix]]
    if backend.suffix != path.suffix:
        readers = [name for name, b in RUNTIMES.items() if b.suffix == path.suffix]
        raise ConfigError(f"{path}: {runtime} does not read {path.suffix} files; {', '.join(readers)} does")
    return backend


@dataclass(frozen=True)
class ModelSpec:
    """A model file as one runtime runs it, under the label its results are filed by
    (``<runtime>-<precision>``: eval/ and bench/ JSON, report rows): the same file on two
    runtimes, or in two precisions, is two rows."""

    label: str
    path: Path
    runtime: str = ""    # "": the file type's default
    precision: str = ""  # "": the file's own

    def open(self, threads: int = 0) -> Tuple[Runner, ModelInfo]:
        return open_model(self.path, threads, self.runtime, self.precision)
