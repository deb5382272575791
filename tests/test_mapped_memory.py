"""Mapped (zero-copy) host memory on an integrated GPU, through the pycuda and TensorRT
EMULATORS: the runner picks it on a Jetson-like GPU (EDGERESNET_EMULATED_INTEGRATED=1),
makes no copies and allocates no device memory, and hands back exactly the logits of the
copied strategy and of ONNX Runtime; a discrete GPU keeps the copies; a GPU that cannot map
host memory refuses a forced "mapped"; bench measures both strategies on an integrated GPU.

Whether zero-copy is *faster* on a given Jetson only hardware can tell: the emulator's
timings are ONNX Runtime's on this CPU. tests/test_real_pycuda.py checks mapped memory on a
real GPU (marked ``gpu``); neither has been run on a Jetson here.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.device import bench, engine, evaluate, report
from pipeline.errors import ConfigError
from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
from pipeline.runners.tensorrt_runner import open_engine
from targets.profile import get_profile
from tests.sim.jetson_root import BOARDS, write_root
from tests.test_emulator import IDENTITY, context_for, reference, tiny_model


def emulate(trt_emulator, monkeypatch, integrated: str, can_map: str = "1"):
    monkeypatch.setenv("EDGERESNET_EMULATED_INTEGRATED", integrated)
    monkeypatch.setenv("EDGERESNET_EMULATED_CAN_MAP_HOST_MEMORY", can_map)
    return trt_emulator.reload()


@pytest.fixture
def integrated(trt_emulator, monkeypatch):
    return emulate(trt_emulator, monkeypatch, "1")


@pytest.fixture
def fp32_engine(quantized_run, integrated) -> Path:
    return engine.build_one(integrated.trt, quantized_run.run_dir, get_profile("jetson-orin-nano"), "fp32", IDENTITY)


# --- the pycuda emulator's mapped memory -------------------------------------------------------

def test_the_emulated_gpu_reads_and_writes_mapped_host_memory_when_the_stream_runs(integrated) -> None:
    trt, cuda = integrated.trt, integrated.cuda
    device = cuda.Context.get_device()
    assert device.get_attribute(cuda.device_attribute.INTEGRATED) == 1
    assert device.get_attribute(cuda.device_attribute.CAN_MAP_HOST_MEMORY) == 1
    blob = tiny_model()
    _, context = context_for(trt, blob)
    mapped = cuda.host_alloc_flags.DEVICEMAP
    x = cuda.pagelocked_empty((4, 3, 4, 4), np.float32, mem_flags=mapped)
    y = cuda.pagelocked_empty((4, 2), np.float32, mem_flags=mapped)
    assert isinstance(x.base, cuda.PagelockedHostAllocation)  # as pycuda's arrays hold it
    context.set_input_shape("input", x.shape)
    context.set_tensor_address("input", x.base.get_device_pointer())
    context.set_tensor_address("output", y.base.get_device_pointer())
    stream = cuda.Stream()
    x[...] = 0.0
    assert context.execute_async_v3(stream.handle)
    late = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    x[...] = late  # written after the enqueue, before the GPU runs: the GPU sees these bytes
    assert np.isnan(y).all()  # nothing has run yet
    stream.synchronize()
    np.testing.assert_array_equal(y, reference(blob, late))


def test_get_device_pointer_fails_on_memory_that_is_not_mapped(integrated, trt_emulator, monkeypatch) -> None:
    cuda = integrated.cuda
    plain = cuda.pagelocked_empty((4,), np.float32)
    with pytest.raises(cuda.LogicError, match="cuMemHostGetDevicePointer failed: invalid argument - not mapped"):
        plain.base.get_device_pointer()
    mapped = cuda.pagelocked_empty((4,), np.float32, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
    mapped.base.free()
    with pytest.raises(cuda.LogicError, match="cuMemHostGetDevicePointer failed: invalid argument"):
        mapped.base.get_device_pointer()
    cuda = emulate(trt_emulator, monkeypatch, "0", can_map="0").cuda
    unmappable = cuda.pagelocked_empty((4,), np.float32, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
    with pytest.raises(cuda.LogicError, match="cannot map host memory"):
        unmappable.base.get_device_pointer()


# --- the runner's choice -----------------------------------------------------------------------

def test_an_integrated_gpu_runs_mapped_with_no_copies_and_the_same_logits(quantized_run, integrated,
                                                                          fp32_engine) -> None:
    trt, cuda = integrated.trt, integrated.cuda
    x = np.random.default_rng(6).standard_normal((12, 3, 32, 32)).astype(np.float32)  # two chunks of <= 8
    expected = OnnxRuntimeRunner(quantized_run.run_dir / "model.fp32.onnx").run(x)
    free_before, copies_before = cuda.mem_get_info()[0], len(cuda._copies)
    runner, _ = open_engine(fp32_engine, trt, cuda)
    assert runner.memory == "mapped"
    mapped = runner.run(x)
    assert cuda._copies[copies_before:] == []  # not one memcpy
    assert cuda.mem_get_info()[0] == free_before  # and no device memory: the GPU works in host memory
    assert set(runner.last_timing) == {"compute_ms"} and runner.last_timing["compute_ms"] >= 0

    copied_runner, _ = open_engine(fp32_engine, trt, cuda, memory="copied")
    copied = copied_runner.run(x)
    assert copied_runner.memory == "copied"
    assert cuda._copies[copies_before:] == ["cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync"] * 2
    assert set(copied_runner.last_timing) == {"h2d_ms", "compute_ms", "d2h_ms"}
    np.testing.assert_array_equal(mapped, copied)
    np.testing.assert_allclose(mapped, expected, rtol=1e-6, atol=1e-6)
    runner.close()
    copied_runner.close()


def test_a_mapped_runner_that_forgets_to_synchronise_fails(integrated, fp32_engine, monkeypatch) -> None:
    """No copy back means no copy to wait for: only the stream's synchronisation makes the
    GPU's writes into the host buffer exist."""
    runner, _ = open_engine(fp32_engine, integrated.trt, integrated.cuda)
    monkeypatch.setattr(integrated.cuda.Stream, "synchronize", lambda self: None)
    with pytest.raises(integrated.cuda.RuntimeError, match="device not ready"):
        runner.run(np.zeros((2, 3, 32, 32), np.float32))
    assert np.isnan(runner.buffers[runner.outputs[0]][0]).all()  # the GPU has not written it


def test_a_discrete_gpu_keeps_page_locked_buffers_and_copies(quantized_run, trt_emulator, monkeypatch) -> None:
    emulated = emulate(trt_emulator, monkeypatch, "0")
    path = engine.build_one(emulated.trt, quantized_run.run_dir, get_profile("jetson-orin-nano"), "fp32", IDENTITY)
    runner, _ = open_engine(path, emulated.trt, emulated.cuda)
    assert runner.memory == "copied"
    runner.run(np.zeros((2, 3, 32, 32), np.float32))
    assert emulated.cuda._copies[-2:] == ["cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync"]
    forced, _ = open_engine(path, emulated.trt, emulated.cuda, memory="mapped")  # a discrete GPU can map
    assert forced.memory == "mapped"


def test_mapped_memory_is_refused_where_the_gpu_cannot_map_host_memory(quantized_run, trt_emulator,
                                                                       monkeypatch) -> None:
    emulated = emulate(trt_emulator, monkeypatch, "1", can_map="0")
    path = engine.build_one(emulated.trt, quantized_run.run_dir, get_profile("jetson-orin-nano"), "fp32", IDENTITY)
    with pytest.raises(ConfigError, match=r"memory 'mapped': Orin \(nvgpu\) cannot map host memory "
                                          r"\(CAN_MAP_HOST_MEMORY is 0\); use 'copied' or 'auto'"):
        open_engine(path, emulated.trt, emulated.cuda, memory="mapped")
    assert open_engine(path, emulated.trt, emulated.cuda)[0].memory == "copied"  # auto does not insist
    with pytest.raises(ConfigError, match="memory: expected one of auto, mapped, copied, got 'zero-copy'"):
        open_engine(path, emulated.trt, emulated.cuda, memory="zero-copy")


# --- bench and report on an integrated GPU -----------------------------------------------------

@pytest.fixture
def on_an_integrated_jetson(quantized_run, integrated, tmp_path, monkeypatch):
    """A copy of the quantized digits run on a fake Orin Nano whose GPU is integrated."""
    monkeypatch.setenv("EDGERESNET_SYSROOT", str(write_root(tmp_path / "root", BOARDS["orin-nano"])))
    root = tmp_path / "runs"
    shutil.copytree(quantized_run.run_dir, root / quantized_run.run_name,
                    ignore=shutil.ignore_patterns("engines", "camera", "bench", "eval"))
    return dataclasses.replace(
        quantized_run, run=dataclasses.replace(quantized_run.run, root=str(root)),
        engine=dataclasses.replace(quantized_run.engine, target="jetson"),
        evaluate=dataclasses.replace(quantized_run.evaluate, bench_runs=20),
        report=dataclasses.replace(quantized_run.report, history=str(tmp_path / "reports" / "history.sqlite")))


def test_bench_measures_each_engine_mapped_and_copied_and_the_report_keeps_both(on_an_integrated_jetson) -> None:
    cfg = on_an_integrated_jetson
    engine.run(cfg)
    evaluate.run(cfg)
    bench.run(cfg)
    records = {p.stem: json.loads(p.read_text()) for p in (cfg.run_dir / "bench").glob("tensorrt-*.json")}
    assert set(records) == {"tensorrt-int8", "tensorrt-int8-copied", "tensorrt-fp32", "tensorrt-fp32-copied"}
    for label, record in records.items():
        copied = label.endswith("-copied")
        assert record["memory"] == ("copied" if copied else "mapped")
        assert record["precision"] == label.split("-")[1] and record["runtime"] == "tensorrt"
        assert set(record["device_ms"]) == ({"h2d_ms", "compute_ms", "d2h_ms"} if copied else {"compute_ms"})
        assert len(record["samples_ms"]) == 20
    summary = json.loads(report.run(cfg).read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    assert summary["deployed"] == "tensorrt-int8" and summary["failures"] == []
    assert rows["tensorrt-int8"]["top1"] is not None and rows["tensorrt-int8-copied"]["p50"] is not None
