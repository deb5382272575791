"""A FAKE of the pycuda.driver calls our TensorRT code makes, for tests only (no GPU here).

Device memory is a dict of numpy arrays keyed by address, so the fake TensorRT engine
(tests/fake_tensorrt.py) reads and writes the same buffers the runner copied.
"""
from __future__ import annotations

import numpy as np

DEVICE: dict[int, np.ndarray] = {}


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.address = 0x10000 + len(DEVICE) * 0x1000000  # distinct per allocation
        DEVICE[self.address] = np.zeros(nbytes // 4, np.float32)

    def __int__(self) -> int:
        return self.address


class Stream:
    def __init__(self) -> None:
        self.handle = 0xC0FFEE
        self.pending = 0

    def synchronize(self) -> None:
        self.pending = 0


class Event:
    def __init__(self) -> None:
        self.tick = 0.0

    def record(self, stream: Stream) -> None:
        stream.pending += 1
        self.tick = float(stream.pending)

    def synchronize(self) -> None:
        pass

    def time_since(self, start: "Event") -> float:
        return self.tick - start.tick


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


def pagelocked_empty(shape: tuple, dtype: type) -> np.ndarray:
    return np.empty(shape, dtype)


def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream) -> None:
    assert src.flags["C_CONTIGUOUS"]
    DEVICE[int(dest)][: src.size] = src.ravel()


def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream) -> None:
    dest[...] = DEVICE[int(src)][: dest.size].reshape(dest.shape)


class Device:
    """The device a fake engine was "built" on: matches tests/test_engine.py's IDENTITY."""

    def __init__(self, ordinal: int) -> None:
        self.ordinal = ordinal

    def name(self) -> str:
        return "Orin (nvgpu)"

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)


def get_version() -> tuple[int, int, int]:
    return (12, 6, 0)
