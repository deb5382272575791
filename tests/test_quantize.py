"""calibrate → quantize → evaluate on a trained digits model, through the real NNCF and
ONNX Runtime."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest

from calibration.qdq import check_tensorrt_qdq
from pipeline import calibrate, evaluate, quantize
from pipeline.config import EvaluateConfig
from pipeline.runners.registry import onnx_precision
from tests.test_cli import cli


@pytest.fixture(scope="module")
def quantized(digits_run):
    cfg = dataclasses.replace(digits_run, calibrate=dataclasses.replace(digits_run.calibrate, images=100))
    calibrate.run(cfg)
    quantize.run(cfg)
    evaluate.run(cfg)
    return cfg


def test_manifest_is_balanced_and_from_train(quantized) -> None:
    manifest = json.loads((quantized.run_dir / "calibration" / "manifest.json").read_text())
    assert manifest["count"] == 100
    assert all("/train/" in item["path"] for item in manifest["items"])
    assert {item["label"] for item in manifest["items"]} == set(range(10))


def test_two_renderings_of_one_calibration(quantized) -> None:
    out = quantized.run_dir
    trt = onnx.load(str(out / "model.int8.onnx"))
    cpu = onnx.load(str(out / "model.int8.cpu.onnx"))
    assert check_tensorrt_qdq(trt) == []
    assert check_tensorrt_qdq(cpu), "the cpu rendering keeps UINT8 activations"
    assert onnx_precision(out / "model.int8.onnx") == "int8"
    assert onnx_precision(out / "model.int8.cpu.onnx") == "int8-cpu"
    record = json.loads((out / "quantize.json").read_text())
    assert record["calibration"]["images"] == 100
    assert record["uint8_quantizers_made_int8"] > 0
    assert record["renderings"]["tensorrt"]["qdq_nodes"] == record["renderings"]["cpu"]["qdq_nodes"] > 0


def test_int8_is_as_accurate_as_fp32(quantized) -> None:
    folder = quantized.run_dir / "eval"
    fp32 = json.loads((folder / "onnxruntime-fp32.json").read_text())
    for name in ("onnxruntime-int8.json", "onnxruntime-int8-cpu.json"):
        int8 = json.loads((folder / name).read_text())
        versus = int8["versus_reference"]
        assert int8["images"] == fp32["images"] == 360
        assert abs(fp32["top1"] - int8["top1"]) <= 0.02, name
        assert versus["top1_agreement"] >= 0.97
        assert len(versus["flipped"]) == round((1 - versus["top1_agreement"]) * 360)
        assert sum(map(sum, int8["confusion"])) == 360


def test_check_qdq_command(quantized) -> None:
    ok = cli("check-qdq", "--model", str(quantized.run_dir / "model.int8.onnx"))
    assert ok.returncode == 0 and "within TensorRT's rules" in ok.stdout
    bad = cli("check-qdq", "--model", str(quantized.run_dir / "model.int8.cpu.onnx"))
    assert bad.returncode == 2 and "zero point must be INT8 0" in bad.stderr


def test_evaluate_any_model_on_any_labelled_folder(quantized, tmp_path: Path) -> None:
    val = Path(quantized.data.root) / "digits" / "val"
    cfg = dataclasses.replace(quantized, evaluate=EvaluateConfig(
        model=str(quantized.run_dir / "model.int8.onnx"), out=str(tmp_path / "e.json")),
        data=dataclasses.replace(quantized.data, path=str(val)))
    evaluate.run(cfg)
    result = json.loads((tmp_path / "e.json").read_text())
    offline = json.loads((quantized.run_dir / "eval" / "onnxruntime-int8.json").read_text())
    assert result["top1"] == offline["top1"]
