"""TensorRT on the Runner interface: name-based I/O, pycuda buffers, one stream, CUDA events.

Uses only the tensor API TensorRT 8.5 introduced and 10 kept (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); the bindings API is gone from TensorRT 10. A batch larger than the
engine's optimisation profile allows is split into chunks the profile accepts: an engine
built for at most 8 images refuses 32.

Two buffer strategies, chosen once at open (``memory``):

- ``copied``: page-locked host buffers plus device buffers, asynchronous copies both ways;
  host→device, compute and device→host are timed apart with CUDA events. Right for a
  discrete GPU, whose memory is across PCIe.
- ``mapped`` (zero-copy): a Jetson's GPU shares the host's memory, so a device copy of a
  page-locked buffer holds the same bytes twice and the copies move them within one DRAM.
  The host buffers are allocated mapped (``host_alloc_flags.DEVICEMAP``) and TensorRT gets
  their device pointers; nothing is copied and only the compute is timed. Which is faster
  depends on the board (how the CPU caches page-locked memory, the GPU's access pattern),
  so ``bench`` measures both on an integrated GPU.

``auto`` picks ``mapped`` where the GPU is integrated and can map host memory, else
``copied``. No context flag is needed for mapped memory: CUDA deprecated
``CU_CTX_MAP_HOST`` in 11.0 (JetPack 5 ships CUDA 11.4) because every context behaves as
though it were set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from pipeline.artifacts import read_json, sha256_file, sidecar_path
from pipeline.errors import ConfigError, StaleArtifactError
from pipeline.onnx_meta import read_metadata
from pipeline.optional import import_optional, import_pycuda
from pipeline.runners.base import ModelInfo
from targets.detect import Platform, detect_platform

NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
               "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}
IDENTITY_KEYS = ("gpu", "compute_capability", "tensorrt")
MEMORY_MODES = ("auto", "mapped", "copied")


class TensorRTRunner:
    """One engine, one execution context, one CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, trt: Any, cuda: Any, precision: str = "int8",
                 memory: str = "auto") -> None:
        self.precision, self.trt, self.cuda, self.path = precision, trt, cuda, Path(engine_path)
        self.memory = choose_memory(cuda, memory)  # "mapped" or "copied", fixed for the runner's life
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise StaleArtifactError(f"{engine_path}: TensorRT cannot deserialize it (built by another "
                                     f"TensorRT version or for another GPU?); rebuild it (make engine)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        low, _, high = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.stream = cuda.Stream()
        self.events = [cuda.Event() for _ in range(4)]
        self.buffers: Dict[str, Tuple[Any, Any]] = {}
        self.last_timing: Dict[str, float] = {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, S, S) → logits (N, classes), in chunks the profile accepts;
        ``last_timing`` holds the last chunk's times in ms: ``h2d_ms``, ``compute_ms`` and
        ``d2h_ms`` with copied memory, only ``compute_ms`` with mapped memory (there are no
        copies to time, and a 0 would read as a measurement)."""
        chunks = [self._run_padded(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def _run_padded(self, batch: np.ndarray) -> np.ndarray:
        """A static-shape engine (a DLA's: min = max) takes only full batches: a short last
        chunk is padded with zeros and their outputs dropped."""
        short = self.min_batch - len(batch)
        if short <= 0:
            return self._run_chunk(batch)
        padded = np.concatenate([batch, np.zeros((short, *batch.shape[1:]), batch.dtype)])
        return self._run_chunk(padded)[:len(batch)]

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
        if self.memory == "mapped":
            self.last_timing = self._execute_mapped()
        else:
            self.last_timing = self._execute_copied(host_in, device_in, host_out, device_out)
        return np.array(host_out)  # a copy: the next chunk reuses the buffer

    def _execute_copied(self, host_in: np.ndarray, device_in: Any, host_out: np.ndarray,
                        device_out: Any) -> Dict[str, float]:
        """Copy in, compute, copy out on the stream; the three times apart."""
        start, copied_in, computed, copied_out = self.events
        start.record(self.stream)
        self.cuda.memcpy_htod_async(device_in, host_in, self.stream)
        copied_in.record(self.stream)
        self._enqueue_inference()
        computed.record(self.stream)
        self.cuda.memcpy_dtoh_async(host_out, device_out, self.stream)
        copied_out.record(self.stream)
        self.stream.synchronize()  # the outputs exist only once the stream has run
        return {"h2d_ms": copied_in.time_since(start), "compute_ms": computed.time_since(copied_in),
                "d2h_ms": copied_out.time_since(computed)}

    def _execute_mapped(self) -> Dict[str, float]:
        """Compute straight from and into the mapped host buffers: nothing to copy."""
        start, computed = self.events[0], self.events[2]
        start.record(self.stream)
        self._enqueue_inference()
        computed.record(self.stream)
        self.stream.synchronize()  # the GPU writes the host buffer itself, done only once the stream has run
        return {"compute_ms": computed.time_since(start)}

    def _enqueue_inference(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise StaleArtifactError(f"{self.path}: TensorRT execute_async_v3 failed; see TensorRT's log")

    def close(self) -> None:
        self.buffers.clear()
        self.context = None
        self.engine = None

    def _buffer(self, name: str, shape: Tuple[int, ...]) -> Tuple[Any, Any]:
        """Host memory and its device address for ``name`` at ``shape``, reused while it fits."""
        held = self.buffers.get(name)
        if held is None or held[0].shape != shape:
            dtype = NUMPY_TYPES[self.engine.get_tensor_dtype(name).name]
            self.buffers[name] = self._allocate(shape, dtype)
        return self.buffers[name]

    def _allocate(self, shape: Tuple[int, ...], dtype: Any) -> Tuple[Any, Any]:
        """Mapped: one page-locked buffer the GPU addresses directly. Copied: a page-locked
        buffer (so copies run asynchronously) and device memory of the same size."""
        if self.memory == "mapped":
            host = self.cuda.pagelocked_empty(shape, dtype, mem_flags=self.cuda.host_alloc_flags.DEVICEMAP)
            return host, host.base.get_device_pointer()  # base: pycuda's PagelockedHostAllocation
        host = self.cuda.pagelocked_empty(shape, dtype)
        return host, self.cuda.mem_alloc(host.nbytes)

    def _profile_text(self, name: str) -> str:
        low, opt, high = self.engine.get_tensor_profile_shape(name, 0)
        return f"min {tuple(low)}, opt {tuple(opt)}, max {tuple(high)}"


def choose_memory(cuda: Any, requested: str = "auto") -> str:
    """``mapped`` or ``copied`` for the current context's GPU (see the module's docstring);
    a request the GPU cannot honour is refused, never downgraded."""
    if requested not in MEMORY_MODES:
        raise ConfigError(f"memory: expected one of {', '.join(MEMORY_MODES)}, got {requested!r}")
    device = cuda.Context.get_device()
    can_map = bool(device.get_attribute(cuda.device_attribute.CAN_MAP_HOST_MEMORY))
    if requested == "mapped" and not can_map:
        raise ConfigError(f"memory 'mapped': {device.name()} cannot map host memory (CAN_MAP_HOST_MEMORY "
                          f"is 0); use 'copied' or 'auto'")
    if requested != "auto":
        return requested
    integrated = bool(device.get_attribute(cuda.device_attribute.INTEGRATED))
    return "mapped" if integrated and can_map else "copied"


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


def open_engine(path: Path, trt: Any, cuda: Any, platform: Optional[Platform] = None,
                memory: str = "auto") -> Tuple[TensorRTRunner, ModelInfo]:
    """Check the engine belongs to this machine and its ONNX, then open it with its
    description (classes, preprocessing) taken from the ONNX it was built from."""
    record = read_json(sidecar_path(path))
    onnx_path = engine_onnx(path, record)
    check_engine(path, machine_identity(trt, cuda, platform or detect_platform()), onnx_path)
    info = ModelInfo.from_metadata(path, "tensorrt", record["precision"], read_metadata(onnx_path))
    return TensorRTRunner(path, trt, cuda, record["precision"], memory), info


def open_engine_file(path: Path, threads: int = 0, memory: str = "auto") -> Tuple[TensorRTRunner, ModelInfo]:
    """The registry's opener for ``.engine`` files: this machine's TensorRT and pycuda."""
    platform = detect_platform()
    trt = import_tensorrt(platform)
    cuda = import_pycuda("for TensorRT's device buffers")
    return open_engine(path, trt, cuda, platform, memory)
