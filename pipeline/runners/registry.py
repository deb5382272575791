"""Open any model file as a Runner, with what it says about itself.

The file decides the runtime (``.pt`` → torch, ``.onnx`` → ONNX Runtime; TensorRT engines
in their own issue), and its own metadata gives the classes and preprocessing, so a model
is always evaluated with the preprocessing it was trained with.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from pipeline.errors import ConfigError, StaleArtifactError
from pipeline.preprocess import Preprocessing
from pipeline.runners.base import Runner


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself."""

    path: Path
    runtime: str
    precision: str
    classes: tuple[str, ...]
    class_names: tuple[str, ...]
    preprocessing: Preprocessing


def open_model(path: Path, threads: int = 0) -> tuple[Runner, ModelInfo]:
    """A runner for ``path`` and its description; unknown suffixes list the choices."""
    path = Path(path)
    opener = OPENERS.get(path.suffix)
    if opener is None:
        raise ConfigError(f"{path}: unknown model type '{path.suffix}'; expected one of "
                          f"{', '.join(OPENERS)}")
    if not path.is_file():
        raise StaleArtifactError(f"{path}: model not found")
    return opener(path, threads)


def _open_checkpoint(path: Path, threads: int) -> tuple[Runner, ModelInfo]:
    from pipeline.checkpoint import load_checkpoint
    from pipeline.runners.torch_runner import TorchRunner

    ckpt = load_checkpoint(path)
    info = ModelInfo(path, "torch", "fp32", tuple(ckpt.classes), tuple(ckpt.class_names),
                     ckpt.preprocessing)
    return TorchRunner(ckpt.build()), info


def _open_onnx(path: Path, threads: int) -> tuple[Runner, ModelInfo]:
    from pipeline.onnx_meta import read_metadata
    from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner

    meta = read_metadata(path)
    missing = [k for k in ("classes", "preprocessing") if k not in meta]
    if missing:
        raise StaleArtifactError(f"{path}: ONNX metadata lacks '{missing[0]}' (not exported by "
                                 f"this pipeline?)")
    precision = onnx_precision(path)
    info = ModelInfo(path, "onnxruntime", precision, tuple(meta["classes"]),
                     tuple(meta.get("class_names", meta["classes"])),
                     Preprocessing.from_dict(meta["preprocessing"]))
    return OnnxRuntimeRunner(path, precision, threads), info


def onnx_precision(path: Path) -> str:
    """``fp32``, ``int8`` (signed Q/DQ, TensorRT rules) or ``int8-cpu`` (UINT8 activations)."""
    model = onnx.load(str(path), load_external_data=False)
    zero_types = {init.name: init.data_type for init in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not qdq:
        return "fp32"
    uint8 = any(len(n.input) == 3 and zero_types.get(n.input[2]) == onnx.TensorProto.UINT8 for n in qdq)
    return "int8-cpu" if uint8 else "int8"


def _open_engine(path: Path, threads: int) -> tuple[Runner, ModelInfo]:
    from pipeline.engine import import_tensorrt
    from pipeline.optional import import_pycuda
    from pipeline.runners.tensorrt_runner import open_engine
    from targets.detect import detect_platform

    trt = import_tensorrt(detect_platform())
    cuda = import_pycuda("for TensorRT's device buffers")
    return open_engine(path, trt, cuda)


OPENERS: dict[str, Callable[[Path, int], tuple[Runner, ModelInfo]]] = {
    ".pt": _open_checkpoint,
    ".onnx": _open_onnx,
    ".engine": _open_engine,
}
