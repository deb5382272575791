"""A small, strict recording fake of the TensorRT 10 Python API names our code uses.

TensorRT cannot be installed on machines without an NVIDIA GPU, so this stands in for
it in tests. It exposes only names that NVIDIA's real 10.3 bindings hold
(tests/test_tensorrt_api.py checks every public name here against them), and records
the calls made on it so tests can check them against the documented API.
"""
from __future__ import annotations

__version__ = "10.3.0"


class IInt8Calibrator:
    """Base of the calibrators; TensorRT calls these four methods while building."""

    def __init__(self) -> None:
        self.calls: list[str] = []


class IInt8EntropyCalibrator2(IInt8Calibrator):
    pass


class IInt8MinMaxCalibrator(IInt8Calibrator):
    pass
