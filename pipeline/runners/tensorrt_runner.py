"""TensorRT on the Runner interface: name-based I/O, pycuda buffers, one stream, CUDA events.

Uses only TensorRT 10's tensor API (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``);
the bindings API is gone from TensorRT 10. Host buffers are page-locked so copies run
asynchronously, and host→device, compute and device→host are timed apart with CUDA events.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import StaleArtifactError

NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
               "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}


class TensorRTRunner:
    """One engine, one execution context, one CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, trt: Any, cuda: Any, precision: str = "int8") -> None:
        self.precision, self.trt, self.cuda = precision, trt, cuda
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise StaleArtifactError(f"{engine_path}: TensorRT cannot deserialize it (built by another "
                                     f"TensorRT version or for another GPU?); rebuild it (make engine)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = cuda.Stream()
        self.events = [cuda.Event() for _ in range(4)]
        self.buffers: dict[str, tuple[Any, Any]] = {}
        self.last_timing: dict[str, float] = {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, S, S) → logits (N, classes); timings of the call in ``last_timing``."""
        source, target = self.inputs[0], self.outputs[0]
        self.context.set_input_shape(source, tuple(batch.shape))
        host_in, device_in = self._buffer(source, tuple(batch.shape))
        np.copyto(host_in, batch.astype(host_in.dtype, copy=False))
        host_out, device_out = self._buffer(target, tuple(self.context.get_tensor_shape(target)))
        self.context.set_tensor_address(source, int(device_in))
        self.context.set_tensor_address(target, int(device_out))
        start, copied_in, computed, copied_out = self.events
        start.record(self.stream)
        self.cuda.memcpy_htod_async(device_in, host_in, self.stream)
        copied_in.record(self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise StaleArtifactError("TensorRT execute_async_v3 failed; see TensorRT's log")
        computed.record(self.stream)
        self.cuda.memcpy_dtoh_async(host_out, device_out, self.stream)
        copied_out.record(self.stream)
        self.stream.synchronize()
        self.last_timing = {"h2d_ms": copied_in.time_since(start), "compute_ms": computed.time_since(copied_in),
                            "d2h_ms": copied_out.time_since(computed)}
        return np.array(host_out)

    def close(self) -> None:
        self.buffers.clear()
        self.context = None
        self.engine = None

    def _buffer(self, name: str, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """Page-locked host and device memory for ``name`` at ``shape``, reused while it fits."""
        held = self.buffers.get(name)
        if held is None or held[0].shape != shape:
            dtype = NUMPY_TYPES[self.engine.get_tensor_dtype(name).name]
            host = self.cuda.pagelocked_empty(shape, dtype)
            self.buffers[name] = (host, self.cuda.mem_alloc(host.nbytes))
        return self.buffers[name]


def open_engine(path: Path, trt: Any, cuda: Any) -> tuple[TensorRTRunner, Any]:
    """Check the engine belongs to this machine and its ONNX, then open it with its
    description (classes, preprocessing) taken from the ONNX it was built from."""
    from pipeline.artifacts import read_json, sidecar_path
    from pipeline.engine import check_engine, machine_identity
    from pipeline.onnx_meta import read_metadata
    from pipeline.preprocess import Preprocessing
    from pipeline.runners.registry import ModelInfo
    from targets.detect import detect_platform

    record = read_json(sidecar_path(path))
    onnx_path = Path(record["inputs"]["onnx"]["path"])
    check_engine(path, machine_identity(trt, cuda, detect_platform()), onnx_path)
    meta = read_metadata(onnx_path)
    info = ModelInfo(Path(path), "tensorrt", record["precision"], tuple(meta["classes"]),
                     tuple(meta.get("class_names", meta["classes"])),
                     Preprocessing.from_dict(meta["preprocessing"]))
    return TensorRTRunner(path, trt, cuda, record["precision"]), info
