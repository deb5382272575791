"""ONNX Runtime on the CPU: the host runtime for the FP32 model and the INT8 Q/DQ models."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np
import onnxruntime as ort

from pipeline.errors import StaleArtifactError
from pipeline.onnx_meta import onnx_precision, read_metadata
from pipeline.runners.base import ModelInfo


class OnnxRuntimeRunner:
    """One inference session, all graph optimisations on, threads set explicitly
    (``threads`` 0: one per core) so latency figures say what they were measured with."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int = 0) -> None:
        self.name = "onnxruntime"
        self.precision = precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no idle spinning: a session waiting for its next batch must not burn the cores that
        # another runner or the camera loop's other stages are using (DESIGN, Runtimes)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = options.intra_op_num_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise StaleArtifactError(f"{path}: ONNX Runtime cannot load it ({exc})") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def close(self) -> None:
        self.session = None


def open_onnx(path: Path, threads: int = 0) -> Tuple[OnnxRuntimeRunner, ModelInfo]:
    """The registry's opener for ``.onnx`` files."""
    precision = onnx_precision(path)
    info = ModelInfo.from_metadata(path, "onnxruntime", precision, read_metadata(path))
    return OnnxRuntimeRunner(path, precision, threads), info
