"""ONNX Runtime on the CPU: the host runtime for the FP32 model and the INT8 Q/DQ models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.errors import ExportError


class OnnxRuntimeRunner:
    """One inference session; ``threads`` 0 lets ONNX Runtime choose."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int = 0) -> None:
        self.name = "onnxruntime"
        self.precision = precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise ExportError(f"{path}: ONNX Runtime cannot load it ({exc})") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def close(self) -> None:
        self.session = None
