"""The implicit TensorRT calibrator, driven the way TensorRT's builder drives it, against
the strict fake (tests/fake_tensorrt.py) and a recording stand-in for pycuda.driver."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from calibration.trt_cache import read_cache
from calibration.trt_calibrator import make_calibrator, open_calibrator
from pipeline.errors import ConfigError, MissingDependencyError
from tests import fake_tensorrt


def drive_calibration(calibrator: fake_tensorrt.IInt8Calibrator, names: list[str]) -> list[list[int]]:
    """What the builder does with a calibrator: read the cache, else pull batches until
    ``get_batch`` returns None, then hand back a cache to write."""
    if calibrator.read_calibration_cache():
        return []
    batches = []
    size = calibrator.get_batch_size()
    assert isinstance(size, int) and size > 0
    while (pointers := calibrator.get_batch(names)) is not None:
        assert len(pointers) == len(names) and all(isinstance(p, int) for p in pointers)
        batches.append(pointers)
    calibrator.write_calibration_cache(b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
    return batches


class FakeCuda:
    """The two pycuda.driver calls the calibrator makes, recorded."""

    def __init__(self) -> None:
        self.allocations: list[int] = []
        self.copies: list[tuple[int, bytes]] = []

    def mem_alloc(self, nbytes: int) -> int:
        self.allocations.append(nbytes)
        return 0x7F0000 + len(self.allocations)

    def memcpy_htod(self, device: int, host) -> None:  # noqa: ANN001 - numpy array
        assert host.flags["C_CONTIGUOUS"], "pycuda copies contiguous host memory only"
        self.copies.append((int(device), host.tobytes()))


def test_batches_reach_the_device_in_order_then_the_cache_is_written(tmp_path: Path) -> None:
    cuda = FakeCuda()
    inputs = np.arange(10 * 3 * 4 * 4, dtype=np.float32).reshape(10, 3, 4, 4)
    cache = tmp_path / "calib.cache"
    calibrator = make_calibrator(fake_tensorrt, cuda, "entropy", inputs, 4, cache)
    assert isinstance(calibrator, fake_tensorrt.IInt8EntropyCalibrator2)
    batches = drive_calibration(calibrator, ["input"])
    assert len(batches) == 2  # 10 images in batches of 4: the partial batch is not sent
    assert cuda.allocations == [4 * 3 * 4 * 4 * 4]
    assert [c[1] for c in cuda.copies] == [inputs[0:4].tobytes(), inputs[4:8].tobytes()]
    assert read_cache(cache).algorithm == "EntropyCalibration2"


def test_an_existing_cache_skips_calibration(tmp_path: Path) -> None:
    cache = tmp_path / "calib.cache"
    cache.write_text("TRT-100300-MinMaxCalibration\ninput: 3c010a14\n")
    cuda = FakeCuda()
    calibrator = make_calibrator(fake_tensorrt, cuda, "minmax", np.zeros((4, 3, 2, 2), np.float32), 2, cache)
    assert isinstance(calibrator, fake_tensorrt.IInt8MinMaxCalibrator)
    assert drive_calibration(calibrator, ["input"]) == [] and cuda.copies == []


def test_tensorrt_without_implicit_calibration_is_refused(tmp_path: Path) -> None:
    """TensorRT 11 has no calibrator classes: found by feature, not by version string."""
    trt11 = SimpleNamespace(__version__="11.4.0")
    with pytest.raises(MissingDependencyError, match="has no IInt8EntropyCalibrator2"):
        make_calibrator(trt11, FakeCuda(), "entropy", np.zeros((2, 3, 2, 2), np.float32), 1, tmp_path / "c")


def test_unknown_algorithm_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="entropy, minmax"):
        make_calibrator(fake_tensorrt, FakeCuda(), "percentile", np.zeros((2, 3, 2, 2), np.float32), 1, tmp_path / "c")


def test_missing_tensorrt_is_named() -> None:
    with pytest.raises(MissingDependencyError, match="tensorrt is needed for implicit INT8 calibration"):
        open_calibrator("entropy", np.zeros((2, 3, 2, 2), np.float32), 1, Path("c"))
