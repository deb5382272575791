"""The Polygraphy cross-check: NVIDIA's Polygraphy (real, from PyPI) runs the runners over
the run's real labelled images and our code counts agreement, flips and differences.

TensorRT cannot run here, so the Polygraphy runners are ONNX Runtime's (OnnxrtRunner, a
real Polygraphy runner): what is tested is the data, Polygraphy's Comparator and the
comparison. The TensorRT rows run only where TensorRT is (marker ``tensorrt``)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.device import crosscheck
from pipeline.errors import ConfigError
from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner


def test_polygraphy_runs_each_runner_over_the_same_real_batches(quantized_run) -> None:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    run = quantized_run.run_dir
    int8, fp32 = run / "model.int8.onnx", run / "model.fp32.onnx"
    labels, batches = crosscheck.image_batches(quantized_run, int8, 8)
    assert len(labels) % 8 == 0 and len(batches) == len(labels) // 8
    assert batches[0]["input"].shape == (8, 3, 32, 32) and batches[0]["input"].dtype == np.float32
    runners = {"engine": OnnxrtRunner(SessionFromOnnx(str(fp32))),
               "onnxruntime": OnnxrtRunner(SessionFromOnnx(str(int8)))}
    logits = crosscheck.run_all(runners, batches)
    inputs = np.concatenate([b["input"] for b in batches])
    direct = OnnxRuntimeRunner(int8).run(inputs)  # our own runner on the same images
    np.testing.assert_allclose(logits["onnxruntime"], direct, rtol=1e-5, atol=1e-5)
    rows = crosscheck.compare(logits, labels)
    assert rows["onnxruntime"]["agreement"] == 1.0 and rows["onnxruntime"]["flips"] == 0
    fp32_top1 = OnnxRuntimeRunner(fp32).run(inputs).argmax(1)
    assert rows["engine"]["flips"] == int((fp32_top1 != direct.argmax(1)).sum())
    assert rows["engine"]["top1"] == pytest.approx(float((fp32_top1 == labels).mean()))
    assert 0 < rows["engine"]["max_abs_diff"] < 5 and rows["engine"]["agreement"] > 0.95


def test_the_cpu_target_has_no_engine_to_cross_check(quantized_run) -> None:
    with pytest.raises(ConfigError, match="target cpu runs no TensorRT engine"):
        crosscheck.run(quantized_run)


@pytest.mark.tensorrt
def test_the_engine_agrees_with_onnx_runtime_through_polygraphy(quantized_run) -> None:
    """Where TensorRT, pycuda and a GPU exist: build the desktop engines, then cross-check."""
    pytest.importorskip("tensorrt")
    from pipeline.device import engine

    cfg = dataclasses.replace(quantized_run, engine=dataclasses.replace(quantized_run.engine, target="desktop"))
    engine.run(cfg)
    record = crosscheck.run(cfg)
    assert record.is_file()
