"""OpenVINO on the CPU: the ONNX files read directly, no conversion step.

It runs the signed, TensorRT-conformant ``model.int8.onnx`` at full INT8 speed on x86
CPUs with VNNI/AMX, where ONNX Runtime needs the UINT8 rendering, so the INT8 model
measured on a CPU can be byte for byte the one engines are built from.

Precision is always explicit: OpenVINO's default on a CPU with AMX or AVX512-BF16 runs
float layers in BF16, which would make an "FP32 reference" silently something else. Every
file runs with ``INFERENCE_PRECISION_HINT=f32`` (the INT8 files' float layers too, as in
ONNX Runtime), unless BF16 is asked for by name: then it is its own labelled precision.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np
import openvino as ov

from pipeline.errors import ConfigError, StaleArtifactError
from pipeline.onnx_meta import onnx_precision, read_metadata
from pipeline.runners.base import ModelInfo

BF16 = "bf16"  # the FP32 file run with OpenVINO's BF16 inference precision


class OpenVinoRunner:
    """One compiled model with one infer request, latency hint and one stream; threads set
    explicitly (``threads`` 0: one per core) and not pinned to cores, since the camera
    loop's other stages and other runners share those cores."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int = 0, core: "ov.Core | None" = None) -> None:
        self.name = "openvino"
        self.precision = precision
        self.threads = threads or os.cpu_count() or 1
        core = core or ov.Core()
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": "bf16" if precision == BF16 else "f32"}
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with its own text for bad models
            raise StaleArtifactError(f"{path}: OpenVINO cannot load it ({_first_line(exc)})") from None
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.request = self.compiled.create_infer_request()
        # The first call sets up OpenVINO's NumPy bridge (a pybind11 call_once): made here, in
        # the opening thread, because the camera's INT8 and shadow threads making their first
        # calls at once deadlocked in it (seen: both stages hung in infer for minutes).
        shape = [d.get_length() if d.is_static else 1 for d in self.compiled.input(0).get_partial_shape()]
        self.run(np.zeros(shape, np.float32))

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return self.request.get_output_tensor(0).data.copy()  # the request's buffer is reused

    def close(self) -> None:
        self.request = self.compiled = None


def has_bf16(core: "ov.Core | None" = None) -> bool:
    """Whether this CPU runs BF16 natively (AVX512-BF16 or AMX), as OpenVINO reports it."""
    return "BF16" in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def open_onnx(path: Path, threads: int = 0, precision: str = "") -> Tuple[OpenVinoRunner, ModelInfo]:
    """The registry's opener for ``.onnx`` files on OpenVINO; ``precision`` ``bf16`` runs an
    FP32 file in BF16 (refused on a CPU without it, and for INT8 files; the registry refuses
    any other precision before this is called)."""
    own = onnx_precision(path)
    if precision == BF16:
        core = ov.Core()
        if own != "fp32":
            raise ConfigError(f"{path}: bf16 runs an FP32 model in BF16; this one is {own}")
        if not has_bf16(core):
            raise ConfigError(f"{path}: this CPU has no BF16 (OpenVINO lists "
                              f"{', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))})")
        return OpenVinoRunner(path, BF16, threads, core), _info(path, BF16)
    return OpenVinoRunner(path, own, threads), _info(path, own)


def _info(path: Path, precision: str) -> ModelInfo:
    return ModelInfo.from_metadata(path, "openvino", precision, read_metadata(path))


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
