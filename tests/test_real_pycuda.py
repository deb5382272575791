"""Our TensorRT runner's CUDA side against the REAL pycuda on a real NVIDIA GPU, and the
pycuda emulator held to what the real one does. Marked ``gpu``: skipped where pycuda or a
GPU is missing (this machine, CI); run on a GPU machine with
``python -m pytest -q tests/test_real_pycuda.py -s``.

TensorRT itself is not there either, so the engine here is a stand-in of a few lines that
answers the TensorRT calls the runner makes and, on ``execute_async_v3``, enqueues real GPU
work on the runner's own stream: a device-to-device copy from the input address to the
output address the runner set (an "identity" model). Page-locked buffers, asynchronous
copies, the stream and the events are all real.
"""
from __future__ import annotations

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


def test_the_runner_on_real_pycuda_computes_on_the_gpu_and_splits_batches(real, tmp_path: Path) -> None:
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
    runner = TensorRTRunner(plan, stand_in_tensorrt(engine), cuda)
    x = np.random.default_rng(0).standard_normal((20, 3, 32, 32)).astype(np.float32)
    out = runner.run(x)  # 20 images, profile max 8: three chunks through the GPU
    np.testing.assert_array_equal(out, x.reshape(20, -1))
    assert set(runner.last_timing) == {"h2d_ms", "compute_ms", "d2h_ms"}
    assert all(v >= 0 for v in runner.last_timing.values())
    print("real pycuda runner timings (ms):", runner.last_timing)
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
