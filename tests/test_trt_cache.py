"""TensorRT calibration caches: the text format, and turning one into Q/DQ ONNX."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest

from calibration.insert import insert_qdq
from calibration.qdq import check_tensorrt_qdq
from calibration.trt_cache import CalibrationCache, decode_scale, format_cache, parse_cache, read_cache, write_cache
from pipeline.errors import StaleArtifactError

# The layout TensorRT 10 writes: header, then "<tensor>: <big-endian float32 hex>".
REAL_LAYOUT = "TRT-100300-EntropyCalibration2\ninput: 3c010a14\n/conv1/Conv_output_0: 3d8f5c29\n"


def test_parses_the_layout_tensorrt_writes() -> None:
    cache = parse_cache(REAL_LAYOUT)
    assert cache.version == "100300" and cache.algorithm == "EntropyCalibration2"
    assert cache.scales["input"] == struct.unpack(">f", bytes.fromhex("3c010a14"))[0]
    assert np.isclose(cache.scales["/conv1/Conv_output_0"], 0.07)


def test_round_trip_is_byte_exact(tmp_path: Path) -> None:
    path = write_cache(parse_cache(REAL_LAYOUT), tmp_path / "calib.cache")
    assert path.read_text() == REAL_LAYOUT
    assert read_cache(path) == parse_cache(REAL_LAYOUT)


@pytest.mark.parametrize("text, where", [
    ("", ":1"), ("hello\n", ":1"), ("TRT-100300-Nonsense\n", ":1"),
    ("TRT-100300-MinMaxCalibration\ninput 3c010a14\n", ":2"),
    ("TRT-100300-MinMaxCalibration\ninput: 3c01\n", ":2"),
])
def test_malformed_caches_name_the_line(text: str, where: str) -> None:
    with pytest.raises(StaleArtifactError, match=f"cache{where}"):
        parse_cache(text, "cache")


def test_scale_codec() -> None:
    assert decode_scale(format_cache(CalibrationCache("1", "MinMaxCalibration", {"t": 0.5})).split(": ")[1].strip()) == 0.5


def test_cache_scales_become_tensorrt_conformant_qdq(digits_run) -> None:
    """Scales for the real exported digits model's conv inputs → a checked Q/DQ graph."""
    model = onnx.load(str(digits_run.run_dir / "model.fp32.onnx"))
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    scales = {n.input[0]: 0.05 for n in convs[:-1]}  # the last layer has no scale: stays float
    quantized, layers, missing = insert_qdq(model, scales)
    assert len(layers) == len(convs) - 1 and missing == [convs[-1].input[0]]
    assert check_tensorrt_qdq(quantized) == []
    onnx.checker.check_model(quantized)
