"""TensorRT on the Runner interface: name-based I/O, pycuda buffers, one stream, CUDA events.

Uses only the tensor API TensorRT 8.5 introduced and 10 kept (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); the bindings API is gone from TensorRT 10. Host buffers are
page-locked so copies run asynchronously, and host→device, compute and device→host are
timed apart with CUDA events. A batch larger than the engine's optimisation profile allows
is split into chunks the profile accepts: an engine built for at most 8 images refuses 32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from pipeline.artifacts import read_json, sha256_file, sidecar_path
from pipeline.errors import StaleArtifactError
from pipeline.onnx_meta import read_metadata
from pipeline.optional import import_optional, import_pycuda
from pipeline.runners.base import ModelInfo
from targets.detect import Platform, detect_platform

NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
               "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}
IDENTITY_KEYS = ("gpu", "compute_capability", "tensorrt")


class TensorRTRunner:
    """One engine, one execution context, one CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, trt: Any, cuda: Any, precision: str = "int8") -> None:
        self.precision, self.trt, self.cuda, self.path = precision, trt, cuda, Path(engine_path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise StaleArtifactError(f"{engine_path}: TensorRT cannot deserialize it (built by another "
                                     f"TensorRT version or for another GPU?); rebuild it (make engine)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])
        self.stream = cuda.Stream()
        self.events = [cuda.Event() for _ in range(4)]
        self.buffers: Dict[str, Tuple[Any, Any]] = {}
        self.last_timing: Dict[str, float] = {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, S, S) → logits (N, classes), in chunks the profile accepts;
        ``last_timing`` holds the copy and compute times of the last chunk."""
        chunks = [self._run_chunk(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def _run_chunk(self, batch: np.ndarray) -> np.ndarray:
        source, target = self.inputs[0], self.outputs[0]
        if not self.context.set_input_shape(source, tuple(batch.shape)):
            raise StaleArtifactError(f"{self.path}: TensorRT refused input shape {tuple(batch.shape)}; the "
                                     f"engine's profile accepts {self._profile_text(source)}")
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
            raise StaleArtifactError(f"{self.path}: TensorRT execute_async_v3 failed; see TensorRT's log")
        computed.record(self.stream)
        self.cuda.memcpy_dtoh_async(host_out, device_out, self.stream)
        copied_out.record(self.stream)
        self.stream.synchronize()  # the outputs exist only once the stream has run
        self.last_timing = {"h2d_ms": copied_in.time_since(start), "compute_ms": computed.time_since(copied_in),
                            "d2h_ms": copied_out.time_since(computed)}
        return np.array(host_out)

    def close(self) -> None:
        self.buffers.clear()
        self.context = None
        self.engine = None

    def _buffer(self, name: str, shape: Tuple[int, ...]) -> Tuple[Any, Any]:
        """Page-locked host and device memory for ``name`` at ``shape``, reused while it fits."""
        held = self.buffers.get(name)
        if held is None or held[0].shape != shape:
            dtype = NUMPY_TYPES[self.engine.get_tensor_dtype(name).name]
            host = self.cuda.pagelocked_empty(shape, dtype)
            self.buffers[name] = (host, self.cuda.mem_alloc(host.nbytes))
        return self.buffers[name]

    def _profile_text(self, name: str) -> str:
        low, opt, high = self.engine.get_tensor_profile_shape(name, 0)
        return f"min {tuple(low)}, opt {tuple(opt)}, max {tuple(high)}"


def import_tensorrt(platform: Platform) -> Any:
    """TensorRT, or an error that says where it comes from on this kind of machine."""
    how = ("on a Jetson TensorRT comes with JetPack: create the environment with the system's "
           "site packages (make setup-device)" if platform.is_jetson
           else "install TensorRT for this GPU (pip install tensorrt-cu12 or tensorrt-cu13)")
    return import_optional("tensorrt", "to build and run TensorRT engines", how)


def machine_identity(trt: Any, cuda: Any, platform: Platform) -> Dict[str, Any]:
    """What an engine is tied to: GPU, compute capability, TensorRT (and CUDA, JetPack)."""
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return {"gpu": device.name(), "compute_capability": f"{major}.{minor}",
            "tensorrt": getattr(trt, "__version__", "unknown"),
            "cuda": ".".join(map(str, cuda.get_version())), "jetpack": platform.jetpack}


def engine_onnx(engine: Path, record: Dict[str, Any]) -> Path:
    """The ONNX an engine was built from: recorded relative to the run folder, so a run
    copied elsewhere still finds it."""
    run_dir = Path(engine).resolve().parent.parent.parent  # <run>/engines/<target>/model.x.engine
    return run_dir / record["onnx_file"]


def check_engine(engine: Path, identity: Dict[str, Any], onnx_path: Optional[Path] = None) -> Dict[str, Any]:
    """Refuse an engine built on another machine or from an ONNX that has changed since."""
    record = read_json(sidecar_path(engine))
    built = record.get("identity", {})
    for key in IDENTITY_KEYS:
        if str(built.get(key)) != str(identity.get(key)):
            raise StaleArtifactError(f"{engine}: built for {key} {built.get(key)!r}, this machine has "
                                     f"{identity.get(key)!r}; rebuild it here (make engine)")
    if onnx_path is not None and onnx_path.is_file() and sha256_file(onnx_path) != record.get("onnx_sha256"):
        raise StaleArtifactError(f"{engine}: {onnx_path} changed since the engine was built; "
                                 f"rebuild it (make engine) instead of loading a stale engine")
    return record


def open_engine(path: Path, trt: Any, cuda: Any, platform: Optional[Platform] = None) -> Tuple[TensorRTRunner, ModelInfo]:
    """Check the engine belongs to this machine and its ONNX, then open it with its
    description (classes, preprocessing) taken from the ONNX it was built from."""
    record = read_json(sidecar_path(path))
    onnx_path = engine_onnx(path, record)
    check_engine(path, machine_identity(trt, cuda, platform or detect_platform()), onnx_path)
    info = ModelInfo.from_metadata(path, "tensorrt", record["precision"], read_metadata(onnx_path))
    return TensorRTRunner(path, trt, cuda, record["precision"]), info


def open_engine_file(path: Path, threads: int = 0) -> Tuple[TensorRTRunner, ModelInfo]:
    """The registry's opener for ``.engine`` files: this machine's TensorRT and pycuda."""
    platform = detect_platform()
    trt = import_tensorrt(platform)
    cuda = import_pycuda("for TensorRT's device buffers")
    return open_engine(path, trt, cuda, platform)
