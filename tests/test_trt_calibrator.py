"""The implicit TensorRT calibrator, driven the way TensorRT's builder drives it, against
the TensorRT and pycuda EMULATORS (tests/emulator): batches land in emulated device
memory, and the emulated builder itself calls the calibrator during an INT8 build."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.trt_cache import read_cache
from calibration.trt_calibrator import key_path, make_calibrator, open_calibrator
from pipeline.errors import ConfigError, MissingDependencyError, StaleArtifactError
from tests.test_emulator import tiny_model

KEY = {"onnx_sha256": "a" * 64, "calibration_sha256": "b" * 64, "algorithm": "entropy"}


def drive_calibration(calibrator, names: list[str], cuda, shape: tuple) -> list[np.ndarray]:
    """What the builder does with a calibrator: read the cache, else pull batches until
    ``get_batch`` returns None (reading each from device memory), then hand back a cache."""
    if calibrator.read_calibration_cache():
        return []
    batches = []
    size = calibrator.get_batch_size()
    assert isinstance(size, int) and size > 0
    while (pointers := calibrator.get_batch(names)) is not None:
        assert len(pointers) == len(names) and all(isinstance(p, int) for p in pointers)
        landed = np.empty((size, *shape), np.float32)
        cuda.memcpy_dtoh(landed, pointers[0])
        batches.append(landed)
    calibrator.write_calibration_cache(memoryview(b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n"))
    return batches


def test_batches_reach_the_device_in_order_then_the_cache_is_written(tmp_path: Path, trt_emulator) -> None:
    trt, cuda = trt_emulator.trt, trt_emulator.cuda
    inputs = np.arange(10 * 3 * 4 * 4, dtype=np.float32).reshape(10, 3, 4, 4)
    cache = tmp_path / "calib.cache"
    calibrator = make_calibrator(trt, cuda, "entropy", inputs, 4, cache, KEY)
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2)
    assert calibrator.get_algorithm() == trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2
    batches = drive_calibration(calibrator, ["input"], cuda, (3, 4, 4))
    assert len(batches) == 2  # 10 images in batches of 4: the partial batch is not sent
    np.testing.assert_array_equal(batches[0], inputs[0:4])
    np.testing.assert_array_equal(batches[1], inputs[4:8])
    # the device buffer holds exactly one batch: one image more lies outside the allocation
    with pytest.raises(cuda.LogicError, match="cuMemcpyDtoH failed: invalid argument"):
        cuda.memcpy_dtoh(np.empty((5, 3, 4, 4), np.float32), calibrator.device)
    assert read_cache(cache).algorithm == "EntropyCalibration2"
    assert json.loads(key_path(cache).read_text()) == KEY  # written with the cache


def test_an_existing_cache_skips_calibration(tmp_path: Path, trt_emulator) -> None:
    trt, cuda = trt_emulator.trt, trt_emulator.cuda
    cache = tmp_path / "calib.cache"
    cache.write_text("TRT-100300-MinMaxCalibration\ninput: 3c010a14\n")
    key = {**KEY, "algorithm": "minmax"}
    key_path(cache).write_text(json.dumps(key))
    calibrator = make_calibrator(trt, cuda, "minmax", np.zeros((4, 3, 2, 2), np.float32), 2, cache, key)
    assert isinstance(calibrator, trt.IInt8MinMaxCalibrator)
    assert drive_calibration(calibrator, ["input"], cuda, (3, 2, 2)) == [] and calibrator.position == 0


@pytest.mark.parametrize("change, fragment", [({"onnx_sha256": "c" * 64}, "made for another onnx \\(aaaaaaaaaaaa"),
                                              ({"calibration_sha256": "d" * 64}, "made for another calibration"),
                                              ({"algorithm": "minmax"}, "made for another algorithm")])
def test_a_cache_made_for_another_onnx_set_or_algorithm_is_refused(tmp_path: Path, trt_emulator, change,
                                                                  fragment) -> None:
    """TensorRT checks only its own header: a cache from other data would be used silently."""
    cache = tmp_path / "calib.cache"
    cache.write_text("TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
    key_path(cache).write_text(json.dumps(KEY))
    with pytest.raises(StaleArtifactError, match=f"calib.cache: {fragment}.*delete it to calibrate afresh"):
        make_calibrator(trt_emulator.trt, trt_emulator.cuda, KEY["algorithm"] if "algorithm" not in change else
                        change["algorithm"], np.zeros((2, 3, 2, 2), np.float32), 1, cache, {**KEY, **change})
    key_path(cache).unlink()  # a cache whose origin is unknown is refused too
    with pytest.raises(StaleArtifactError, match="made for another onnx"):
        make_calibrator(trt_emulator.trt, trt_emulator.cuda, "entropy", np.zeros((2, 3, 2, 2), np.float32), 1,
                        cache, KEY)


def test_the_builder_drives_the_calibrator_and_writes_scales(tmp_path: Path, trt_emulator) -> None:
    """An INT8 build with our calibrator: TensorRT reads each batch from device memory and
    writes a cache whose input scale is the calibration data's range / 127 (min-max)."""
    import dataclasses

    from pipeline.device.tensorrt_build import BuildRequest, build_engine
    from targets.profile import get_profile

    trt, cuda = trt_emulator.trt, trt_emulator.cuda
    inputs = np.random.default_rng(1).standard_normal((6, 3, 4, 4)).astype(np.float32)
    cache = tmp_path / "calib.cache"
    calibrator = make_calibrator(trt, cuda, "minmax", inputs, 2, cache, KEY)
    profile = dataclasses.replace(get_profile("jetson-orin-nano"), min_batch=1, opt_batch=2, max_batch=4)
    tiny_model(tmp_path / "tiny.onnx")
    built = build_engine(trt, BuildRequest(tmp_path / "tiny.onnx", "int8", profile, 4, calibrator=calibrator))
    assert built.plan and calibrator.position == 6
    assert built.semantics.to_dict() == {"typing": "weak", "flags": ["INT8"], "unquantized": "fp32"}
    scales = read_cache(cache)
    assert scales.algorithm == "MinMaxCalibration" and set(scales.scales) >= {"input", "conv", "relu", "output"}
    assert scales.scales["input"] == pytest.approx(np.abs(inputs).max() / 127, rel=1e-6)
    # a second build reads the cache back instead of calibrating again
    again = make_calibrator(trt, cuda, "minmax", inputs, 2, cache, KEY)
    build_engine(trt, BuildRequest(tmp_path / "tiny.onnx", "int8", profile, 4, calibrator=again))
    assert again.position == 0


def test_a_calibrator_that_skips_the_base_init_is_refused(trt_emulator) -> None:
    """pybind11 refuses a Python subclass whose __init__ does not call the base __init__."""
    trt = trt_emulator.trt

    class Forgetful(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            self.size = 1

    with pytest.raises(TypeError, match="IInt8EntropyCalibrator2.__init__\\(\\) must be called"):
        Forgetful()


def test_tensorrt_without_implicit_calibration_is_refused(tmp_path: Path, trt_emulator, monkeypatch) -> None:
    """TensorRT 11 has no calibrator classes: found by feature, not by version string."""
    monkeypatch.setenv("EDGERESNET_TRT_EMULATE", "11.4.0")
    emulated = trt_emulator.reload()
    with pytest.raises(MissingDependencyError, match="has no IInt8EntropyCalibrator2"):
        make_calibrator(emulated.trt, emulated.cuda, "entropy", np.zeros((2, 3, 2, 2), np.float32), 1,
                        tmp_path / "c", KEY)


def test_unknown_algorithm_lists_the_choices(tmp_path: Path, trt_emulator) -> None:
    with pytest.raises(ConfigError, match="entropy, minmax"):
        make_calibrator(trt_emulator.trt, trt_emulator.cuda, "percentile", np.zeros((2, 3, 2, 2), np.float32), 1,
                        tmp_path / "c", KEY)


def test_missing_tensorrt_is_named() -> None:
    with pytest.raises(MissingDependencyError, match="tensorrt is needed for implicit INT8 calibration"):
        open_calibrator("entropy", np.zeros((2, 3, 2, 2), np.float32), 1, Path("c"), KEY)
