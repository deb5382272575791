"""One Runner interface for every backend: evaluation, parity checks, benchmarks and the
camera loop see only this, so comparing FP32 with INT8, or PyTorch with TensorRT, is the
same code whichever runtimes are on the machine."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Protocol, Tuple

import numpy as np

from pipeline.preprocess import Preprocessing


class Runner(Protocol):
    """Runs a model on a float32 (N, 3, S, S) batch and returns (N, classes) logits."""

    name: str
    precision: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself: a model is always scored with the classes and
    preprocessing it was trained with, never ones re-typed by the caller."""

    path: Path
    runtime: str
    precision: str
    classes: Tuple[str, ...]
    class_names: Tuple[str, ...]
    preprocessing: Preprocessing

    @classmethod
    def from_metadata(cls, path: Path, runtime: str, precision: str, meta: Dict[str, Any]) -> "ModelInfo":
        """From our ONNX ``metadata_props`` as :func:`pipeline.onnx_meta.read_metadata` gives them."""
        return cls(Path(path), runtime, precision, tuple(meta["classes"]), tuple(meta["class_names"]),
                   Preprocessing.from_dict(meta["preprocessing"]))
