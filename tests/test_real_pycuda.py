"""Our TensorRT runner's CUDA side against the REAL pycuda on a real NVIDIA GPU, and the
pycuda emulator held to what the real one does. Marked ``gpu``: skipped where pycuda or a
GPU is missing (this machine, CI); run on a GPU machine with
``python -m pytest -q tests/test_real_pycuda.py -s``.

TensorRT itself is not there either, so the engine here is a stand-in of a few lines that
answers the TensorRT calls the runner makes and, on ``execute_async_v3``, enqueues real GPU
work on the runner's own stream: a device-to-device copy from the input address to the
output address the runner set (an "identity" model). Page-locked buffers, asynchronous
copies, mapped (zero-copy) host memory, the stream and the events are all real.

Mapped memory is checked on any GPU that can map host memory (the GPU writes and reads a
host array through its device pointer); the comparison of mapped and copied speed needs an
integrated GPU and is marked ``jetson`` as well. None of these has been run on a Jetson yet.
"""
from __future__ import annotations

import time
import types
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

@pytest.fixture(scope="module")
def real():
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (no NVIDIA GPU here)")
    pytest.importorskip("pycuda.autoinit", reason="no CUDA device")
    return cuda


class StandInEngine:
    """Answers the TensorRT calls TensorRTRunner makes for an identity model (N, 3, S, S) →
    (N, 3·S·S) with an optimisation profile of batch 1..8."""

    def __init__(self, cuda, streams: dict, size: int) -> None:
        self.cuda, self.streams, self.size = cuda, streams, size
        self.num_io_tensors = 2
        self.shape = None
        self.addresses: dict = {}

    def get_tensor_name(self, index: int) -> str:
        return ("input", "logits")[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "input" else "OUTPUT"

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        return tuple((b, 3, self.size, self.size) for b in (1, 1, 8))

    def get_tensor_dtype(self, name: str):
        return types.SimpleNamespace(name="FLOAT")

    def create_execution_context(self) -> "StandInEngine":
        return self

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        if not 1 <= shape[0] <= 8:
            return False
        self.shape = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        return self.shape if name == "input" else (self.shape[0], 3 * self.size * self.size)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, handle: int) -> bool:
        nbytes = int(np.prod(self.shape)) * 4
        self.cuda.memcpy_dtod_async(self.addresses["logits"], self.addresses["input"], nbytes, self.streams[handle])
        return True


class StandInLogger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


def stand_in_tensorrt(engine: StandInEngine) -> types.SimpleNamespace:
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda blob: engine)
    return types.SimpleNamespace(Logger=StandInLogger, Runtime=lambda log: runtime,
                                 TensorIOMode=types.SimpleNamespace(INPUT="INPUT"))


def stand_in_runner(real, tmp_path: Path, memory: str):
    """Our TensorRTRunner on real pycuda, its engine the identity stand-in."""
    from pipeline.runners.tensorrt_runner import TensorRTRunner

    streams: dict = {}

    def stream():
        made = real.Stream()
        streams[made.handle] = made
        return made

    cuda = types.SimpleNamespace(**{n: getattr(real, n) for n in dir(real) if not n.startswith("_")})
    cuda.Stream = stream
    engine = StandInEngine(real, streams, 32)
    plan = tmp_path / "model.int8.engine"
    plan.write_bytes(b"stand-in")
    return TensorRTRunner(plan, stand_in_tensorrt(engine), cuda, memory=memory)


TIMED = {"copied": {"h2d_ms", "compute_ms", "d2h_ms"}, "mapped": {"compute_ms"}}


@pytest.mark.parametrize("memory", ["copied", "mapped"])
def test_the_runner_on_real_pycuda_computes_on_the_gpu_and_splits_batches(real, tmp_path: Path,
                                                                          memory: str) -> None:
    device = real.Context.get_device()
    if memory == "mapped" and not device.get_attribute(real.device_attribute.CAN_MAP_HOST_MEMORY):
        pytest.skip(f"{device.name()} cannot map host memory")
    runner = stand_in_runner(real, tmp_path, memory)
    assert runner.memory == memory
    x = np.random.default_rng(0).standard_normal((20, 3, 32, 32)).astype(np.float32)
    out = runner.run(x)  # 20 images, profile max 8: three chunks through the GPU
    np.testing.assert_array_equal(out, x.reshape(20, -1))
    assert set(runner.last_timing) == TIMED[memory]
    assert all(v >= 0 for v in runner.last_timing.values())
    print(f"real pycuda runner timings, {memory} memory (ms):", runner.last_timing)
    runner.close()


def test_mapped_host_memory_is_written_and_read_by_the_gpu(real) -> None:
    """What the emulator claims of mapped memory, on the real library: the device pointer
    of a DEVICEMAP allocation addresses the host array's own bytes, both ways."""
    device = real.Context.get_device()
    if not device.get_attribute(real.device_attribute.CAN_MAP_HOST_MEMORY):
        pytest.skip(f"{device.name()} cannot map host memory")
    host = real.pagelocked_empty((256,), np.uint8, mem_flags=real.host_alloc_flags.DEVICEMAP)
    host[:] = 0
    pointer = host.base.get_device_pointer()
    real.memset_d8(pointer, 0xAB, 128)  # the GPU writes the first half, straight into host memory
    real.Context.synchronize()
    assert (host[:128] == 0xAB).all() and (host[128:] == 0).all()
    host[:] = np.arange(256, dtype=np.uint8)  # the CPU writes; the GPU reads it with no copy in
    device_copy = real.mem_alloc(256)
    real.memcpy_dtod(device_copy, pointer, 256)
    back = np.empty(256, np.uint8)
    real.memcpy_dtoh(back, device_copy)
    np.testing.assert_array_equal(back, np.arange(256, dtype=np.uint8))
    plain = real.pagelocked_empty((256,), np.uint8)
    try:  # the emulator refuses this (CUDA's documented contract); record what this driver does
        print(f"get_device_pointer without DEVICEMAP: 0x{plain.base.get_device_pointer():x} "
              f"(host 0x{plain.ctypes.data:x}): this driver maps all page-locked memory")
    except real.LogicError as error:
        print(f"get_device_pointer without DEVICEMAP: {error}")
    print(f"{device.name()}: INTEGRATED={device.get_attribute(real.device_attribute.INTEGRATED)}, "
          f"mapped pointer 0x{pointer:x}, host 0x{host.ctypes.data:x}")


@pytest.mark.jetson
def test_on_an_integrated_gpu_auto_maps_and_both_strategies_are_timed(real, tmp_path: Path) -> None:
    """Only a Jetson can say whether zero-copy pays: print both strategies' times per batch."""
    device = real.Context.get_device()
    if not device.get_attribute(real.device_attribute.INTEGRATED):
        pytest.skip(f"{device.name()} is a discrete GPU")
    assert stand_in_runner(real, tmp_path, "auto").memory == "mapped"
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    for memory in ("mapped", "copied"):
        runner = stand_in_runner(real, tmp_path, memory)
        runner.run(x)  # warm-up: buffers allocated
        times = []
        for _ in range(200):
            start = time.perf_counter()
            runner.run(x)
            times.append((time.perf_counter() - start) * 1000)
        print(f"{device.name()} {memory}: median {np.median(times):.3f} ms per batch of 8, "
              f"last device timing {runner.last_timing}")
        runner.close()


def test_the_emulator_refuses_what_real_pycuda_refuses(real, trt_emulator) -> None:
    """Each behaviour the emulator claims, observed on the real library: results only
    after synchronising, and the error for reading an event that has not happened yet."""
    fake = trt_emulator.cuda
    errors = {}
    busy = [real.mem_alloc(1 << 31) for _ in range(2)]  # 2 GiB copies keep the real GPU busy
    for cuda, label in ((real, "real"), (fake, "emulator")):
        stream = cuda.Stream()
        host = cuda.pagelocked_empty((4,), np.float32)
        host[:] = 7.0
        device = cuda.mem_alloc(host.nbytes)
        cuda.memcpy_htod(device, np.zeros(4, np.float32))
        start, end = cuda.Event(), cuda.Event()
        start.record(stream)
        if label == "real":  # queue ~20 ms of copying so nothing has finished when we look
            for _ in range(10):
                real.memcpy_dtod_async(busy[1], busy[0], 1 << 31, stream)
        cuda.memcpy_dtoh_async(host, device, stream)
        end.record(stream)
        assert np.all(host == 7.0), f"{label}: the copy back showed before the stream ran"
        with pytest.raises(Exception) as early:
            end.time_since(start)
        print(f"{label}: time_since before completion -> {type(early.value).__module__}."
              f"{type(early.value).__name__}: {early.value}")
        assert "not ready" in str(early.value)
        errors[label] = type(early.value).__name__
        stream.synchronize()
        assert np.all(host == 0.0) and end.time_since(start) >= 0
    assert errors["real"] == errors["emulator"], errors
