"""The TensorRT and pycuda EMULATORS (tests/emulator) refuse what the real ones refuse,
with real data: a tiny ONNX model built here, and the session's exported and quantized
digits model (``quantized_run``). Where our runner meets the contract, its numbers must be
ONNX Runtime's; where a runner breaks it (no synchronisation), the emulator must show it."""
from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.device import engine
from pipeline.device.tensorrt_build import BuildRequest, build_engine
from pipeline.errors import StaleArtifactError
from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
from pipeline.runners.tensorrt_runner import TensorRTRunner, open_engine
from targets.profile import get_profile

IDENTITY = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt": "10.3.0", "cuda": "12.6.0",
            "jetpack": "6.2"}
SHAPES = ((1, 3, 4, 4), (2, 3, 4, 4), (8, 3, 4, 4))


def tiny_model(path: Path | None = None) -> bytes:
    """Conv → ReLU → global pool → Flatten: (N, 3, 4, 4) → (N, 2), the batch dynamic."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
         helper.make_node("Flatten", ["pool"], ["output"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    blob = model.SerializeToString()
    if path is not None:
        path.write_bytes(blob)
    return blob


def parsed(trt, blob: bytes, flags: int = 1):
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    return builder, network, parser, parser.parse(blob)


def build(trt, blob: bytes, shapes=SHAPES, configure=None):
    builder, network, _, ok = parsed(trt, blob)
    assert ok
    config = builder.create_builder_config()
    if shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape("input", *shapes)
        config.add_optimization_profile(profile)
    if configure is not None:
        configure(config)
    return builder.build_serialized_network(network, config)


def context_for(trt, blob: bytes, shapes=SHAPES):
    engine_ = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(build(trt, blob, shapes))
    return engine_, engine_.create_execution_context()


def errors(trt) -> list[str]:
    return [message for severity, message in trt.LOG if severity == "ERROR"]


def reference(blob: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    return onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


# --- execution contexts ---------------------------------------------------------------------

def test_a_shape_outside_the_profile_is_refused_and_nothing_is_recorded(trt_emulator) -> None:
    trt = trt_emulator.trt
    engine_, context = context_for(trt, tiny_model())
    assert engine_.get_tensor_shape("input") == (-1, 3, 4, 4)  # -1 on the dynamic batch axis
    assert engine_.get_tensor_profile_shape("input", 0) == [(1, 3, 4, 4), (2, 3, 4, 4), (8, 3, 4, 4)]
    for refused in [(9, 3, 4, 4), (3, 3, 5, 4), (3, 3, 4), (0, 3, 4, 4)]:
        assert context.set_input_shape("input", refused) is False
        assert context.get_tensor_shape("input") == (-1, 3, 4, 4)
        assert context.get_tensor_shape("output") == (-1, 2)
    assert any("does not satisfy any optimization profiles" in m for m in errors(trt))
    assert any("Static dimension mismatch" in m for m in errors(trt))
    assert context.set_input_shape("input", (3, 3, 4, 4)) is True
    assert context.get_tensor_shape("output") == (3, 2)  # resolved once the input shape is set


def test_execute_refuses_a_missing_shape_address_or_stream(trt_emulator) -> None:
    trt, cuda = trt_emulator.trt, trt_emulator.cuda
    _, context = context_for(trt, tiny_model())
    stream = cuda.Stream()
    assert context.execute_async_v3(stream.handle) is False
    assert "dimensions are not specified: input" in errors(trt)[-1]
    context.set_input_shape("input", (2, 3, 4, 4))
    assert context.execute_async_v3(stream.handle) is False
    assert "Address is not set for input tensor input" in errors(trt)[-1]
    device_in, device_out = cuda.mem_alloc(2 * 48 * 4), cuda.mem_alloc(2 * 2 * 4)
    context.set_tensor_address("input", int(device_in))
    assert context.execute_async_v3(stream.handle) is False
    assert "Address is not set for output tensor output" in errors(trt)[-1]
    context.set_tensor_address("output", int(device_out))
    assert context.execute_async_v3(0xDEAD00) is False  # not a stream
    assert context.execute_async_v3(stream.handle) is True


def test_results_exist_only_after_the_stream_is_synchronised(trt_emulator) -> None:
    trt, cuda = trt_emulator.trt, trt_emulator.cuda
    blob = tiny_model()
    _, context = context_for(trt, blob)
    x = cuda.pagelocked_empty((4, 3, 4, 4), np.float32)
    x[...] = np.random.default_rng(1).standard_normal(x.shape)
    y = cuda.pagelocked_empty((4, 2), np.float32)
    device_in, device_out = cuda.mem_alloc(x.nbytes), cuda.mem_alloc(y.nbytes)
    stream, start, end = cuda.Stream(), cuda.Event(), cuda.Event()
    context.set_input_shape("input", x.shape)
    context.set_tensor_address("input", int(device_in))
    context.set_tensor_address("output", int(device_out))
    start.record(stream)
    cuda.memcpy_htod_async(device_in, x, stream)
    assert context.execute_async_v3(stream.handle)
    cuda.memcpy_dtoh_async(y, device_out, stream)
    end.record(stream)
    assert np.isnan(y).all() and not end.query()  # queued, not run: the host buffer is untouched
    stream.synchronize()
    np.testing.assert_allclose(y, reference(blob, np.array(x)), rtol=1e-6, atol=1e-6)
    assert end.query() and end.time_since(start) >= 0


def test_time_since_before_completion_raises_like_pycuda(trt_emulator) -> None:
    cuda = trt_emulator.cuda
    stream, start, end, never = cuda.Stream(), cuda.Event(), cuda.Event(), cuda.Event()
    start.record(stream)
    end.record(stream)
    with pytest.raises(cuda.RuntimeError, match="cuEventElapsedTime failed: device not ready"):
        end.time_since(start)
    with pytest.raises(cuda.LogicError, match="cuEventElapsedTime failed: invalid resource handle"):
        never.time_since(start)
    end.synchronize()  # runs the stream up to the marker
    assert start.query() and end.time_since(start) >= 0


def test_async_copies_need_page_locked_memory(trt_emulator) -> None:
    cuda = trt_emulator.cuda
    stream, device = cuda.Stream(), cuda.mem_alloc(64)
    with pytest.raises(cuda.LogicError, match="src must be page-locked memory, see, e.g. pagelocked_empty"):
        cuda.memcpy_htod_async(device, np.zeros(16, np.float32), stream)
    with pytest.raises(cuda.LogicError, match="dest must be page-locked memory"):
        cuda.memcpy_dtoh_async(np.empty(16, np.float32), device, stream)
    pinned = cuda.pagelocked_zeros(32, np.float32)
    cuda.memcpy_htod_async(device, pinned[:16], stream)  # a view of page-locked memory is page-locked
    cuda.memcpy_htod(device, np.ones(16, np.float32))  # synchronous copies take pageable memory
    stream.synchronize()


def test_device_memory_is_bounded_and_freed_with_its_allocation(trt_emulator) -> None:
    trt, cuda = trt_emulator.trt, trt_emulator.cuda
    device = cuda.mem_alloc(16)
    with pytest.raises(cuda.LogicError, match="cuMemcpyHtoD failed: invalid argument"):
        cuda.memcpy_htod(device, np.zeros(5, np.float32))  # 20 bytes into 16
    device.free()
    with pytest.raises(cuda.LogicError, match="invalid argument"):
        cuda.memcpy_dtoh(np.empty(4, np.float32), device)
    # an address kept without its DeviceAllocation points at freed memory, as in pycuda
    _, context = context_for(trt, tiny_model())
    context.set_input_shape("input", (1, 3, 4, 4))
    context.set_tensor_address("input", int(cuda.mem_alloc(48 * 4)))
    gc.collect()
    context.set_tensor_address("output", int(cuda.mem_alloc(2 * 4)))
    stream = cuda.Stream()
    assert context.execute_async_v3(stream.handle)
    with pytest.raises(cuda.LogicError, match="illegal memory access"):
        stream.synchronize()
    with pytest.raises(cuda.LogicError, match="illegal memory access"):  # sticky, as CUDA's errors are
        cuda.mem_alloc(4)


# --- our runner against the contract ---------------------------------------------------------

@pytest.fixture
def fp32_engine(quantized_run, trt_emulator) -> Path:
    return engine.build_one(trt_emulator.trt, quantized_run.run_dir, get_profile("jetson-orin-nano"), "fp32",
                            IDENTITY)


def test_a_runner_that_forgets_to_synchronise_fails(quantized_run, trt_emulator, fp32_engine,
                                                    monkeypatch) -> None:
    trt, cuda = trt_emulator.trt, trt_emulator.cuda
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    expected = OnnxRuntimeRunner(quantized_run.run_dir / "model.fp32.onnx").run(x)
    runner, _ = open_engine(fp32_engine, trt, cuda)
    np.testing.assert_allclose(runner.run(x), expected, rtol=1e-6, atol=1e-6)

    forgetful, _ = open_engine(fp32_engine, trt, cuda)
    monkeypatch.setattr(cuda.Stream, "synchronize", lambda self: None)  # the runner's one sync, gone
    with pytest.raises(cuda.RuntimeError, match="device not ready"):  # its timing asks too early
        forgetful.run(x)
    host_out = forgetful.buffers[forgetful.outputs[0]][0]
    assert not np.allclose(host_out, expected, equal_nan=False)  # what it would have returned
    assert np.isnan(host_out).all()  # the output copy has not landed


def test_the_runner_splits_a_batch_into_the_profiles_max(quantized_run, trt_emulator, fp32_engine) -> None:
    trt = trt_emulator.trt
    runner, _ = open_engine(fp32_engine, trt, trt_emulator.cuda)
    assert runner.max_batch == 8
    x = np.random.default_rng(3).standard_normal((32, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(runner.run(x), OnnxRuntimeRunner(quantized_run.run_dir / "model.fp32.onnx").run(x),
                               rtol=1e-6, atol=1e-6)
    shapes = [c[2] for c in trt.CALLS if c[0] == "set_input_shape"]
    assert shapes == [(8, 3, 32, 32)] * 4


def test_a_short_batch_is_padded_and_a_refused_shape_names_the_shape_and_the_profile(quantized_run,
                                                                                     trt_emulator) -> None:
    """A static-shape engine (the DLA's: min = opt = max) takes only full batches: the last
    short chunk is padded and its padding's outputs dropped; a shape outside the profile is
    one error naming it and the profile."""
    trt = trt_emulator.trt
    profile = dataclasses.replace(get_profile("jetson-orin-nano"), min_batch=8, opt_batch=8, max_batch=8)
    path = engine.build_one(trt, quantized_run.run_dir, profile, "fp32", IDENTITY)
    runner, _ = open_engine(path, trt, trt_emulator.cuda)
    x = np.random.default_rng(4).standard_normal((13, 3, 32, 32)).astype(np.float32)
    trt.CALLS.clear()
    np.testing.assert_allclose(runner.run(x), OnnxRuntimeRunner(quantized_run.run_dir / "model.fp32.onnx").run(x),
                               rtol=1e-6, atol=1e-6)
    assert [c[2] for c in trt.CALLS if c[0] == "set_input_shape"] == [(8, 3, 32, 32)] * 2
    with pytest.raises(StaleArtifactError, match=r"refused input shape \(8, 3, 64, 64\); the engine's profile "
                                                 r"accepts min \(8, 3, 32, 32\), opt \(8, 3, 32, 32\), "
                                                 r"max \(8, 3, 32, 32\)"):
        runner.run(np.zeros((8, 3, 64, 64), np.float32))


def test_an_int8_engine_computes_what_onnx_runtime_computes(quantized_run, trt_emulator) -> None:
    trt = trt_emulator.trt
    path = engine.build_one(trt, quantized_run.run_dir, get_profile("jetson-orin-nano"), "int8", IDENTITY)
    runner, _ = open_engine(path, trt, trt_emulator.cuda)
    x = np.random.default_rng(4).standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(runner.run(x), OnnxRuntimeRunner(quantized_run.run_dir / "model.int8.onnx").run(x),
                               rtol=1e-6, atol=1e-6)


# --- plans are tied to the TensorRT version and the GPU --------------------------------------

@pytest.mark.parametrize("env", [{"EDGERESNET_TRT_EMULATE": "8.5.2"},
                                 {"EDGERESNET_EMULATED_GPU": "NVIDIA GeForce RTX 4090", "EDGERESNET_EMULATED_CC": "8.9"}])
def test_a_plan_from_another_version_or_gpu_is_refused(tmp_path: Path, trt_emulator, monkeypatch, env) -> None:
    plan = tmp_path / "model.fp32.engine"
    plan.write_bytes(build(trt_emulator.trt, tiny_model()))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    other = trt_emulator.reload()
    assert other.trt.Runtime(other.trt.Logger(other.trt.Logger.ERROR)).deserialize_cuda_engine(plan.read_bytes()) is None
    assert any("please rebuild" in m for m in errors(other.trt))
    with pytest.raises(StaleArtifactError, match="cannot deserialize it"):
        TensorRTRunner(plan, other.trt, other.cuda)


def test_bytes_that_are_no_plan_deserialize_to_none_and_a_same_sm_gpu_only_warns(trt_emulator, monkeypatch) -> None:
    trt = trt_emulator.trt
    assert trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(b"not a plan") is None
    plan = build(trt, tiny_model())
    monkeypatch.setenv("EDGERESNET_EMULATED_GPU", "Orin (nvgpu) 16GB")  # same compute capability 8.7
    other = trt_emulator.reload().trt
    assert other.Runtime(other.Logger(other.Logger.ERROR)).deserialize_cuda_engine(plan) is not None
    assert any("across different models of devices" in m for _, m in other.LOG)


# --- building -------------------------------------------------------------------------------

def test_the_parser_reports_and_never_raises(trt_emulator) -> None:
    trt = trt_emulator.trt
    _, _, parser, ok = parsed(trt, b"\x08\x07 certainly not protobuf \xff\xff")
    assert ok is False and parser.num_errors == 1
    assert parser.get_error(0).code() == trt.ErrorCode.MODEL_DESERIALIZE_FAILED
    unknown = helper.make_model(helper.make_graph(
        [helper.make_node("NoSuchOp", ["input"], ["output"])], "bad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1])]))
    _, network, parser, ok = parsed(trt, unknown.SerializeToString())
    assert ok is False and parser.get_error(0).code() == trt.ErrorCode.UNSUPPORTED_NODE
    _, network, parser, ok = parsed(trt, tiny_model())
    assert ok and parser.parse(tiny_model()) is False  # a second parse into a filled network


def test_the_builder_refuses_what_tensorrt_refuses(trt_emulator) -> None:
    trt = trt_emulator.trt
    blob = tiny_model()
    assert build(trt, blob, shapes=None) is None
    assert "no optimization profile has been defined" in errors(trt)[-1]
    assert build(trt, blob, shapes=((1, 4, 4, 4), (2, 4, 4, 4), (8, 4, 4, 4))) is None
    assert "for dimension number 1 in profile 0 does not match network definition" in errors(trt)[-1]
    profile = trt.Builder(trt.Logger()).create_optimization_profile()
    with pytest.raises(RuntimeError, match="Shape provided for opt is inconsistent with other shapes"):
        profile.set_shape("input", (4, 3, 4, 4), (2, 3, 4, 4), (8, 3, 4, 4))
    with pytest.raises(RuntimeError, match="Shape provided for max is inconsistent"):
        trt.Builder(trt.Logger()).create_optimization_profile().set_shape("input", (1, 3, 4, 4), (2, 3, 4, 4),
                                                                          (8, 3, 4))


def test_dla_builds_only_what_the_dla_runs(trt_emulator) -> None:
    trt = trt_emulator.trt
    trt.NUM_DLA_CORES[0] = 1
    blob, static = tiny_model(), ((2, 3, 4, 4),) * 3

    def on_dla(core: int, *flags):
        def configure(config) -> None:
            config.default_device_type, config.DLA_core = trt.DeviceType.DLA, core
            for flag in flags:
                config.set_flag(flag)
        return configure

    assert build(trt, blob, static, on_dla(1, trt.BuilderFlag.FP16)) is None  # no such core
    assert build(trt, blob, static, on_dla(0)) is None  # FP32 does not run on a DLA
    assert build(trt, blob, SHAPES, on_dla(0, trt.BuilderFlag.FP16)) is None  # dynamic shapes neither
    assert build(trt, blob, static, on_dla(0, trt.BuilderFlag.FP16)) is not None
    assert build(trt, blob, SHAPES, on_dla(0, trt.BuilderFlag.FP16, trt.BuilderFlag.GPU_FALLBACK)) is not None
    assert "falls back to the GPU" in trt.LOG[-1][1]


def test_removed_and_misspelled_api_raises_attribute_error(trt_emulator) -> None:
    trt = trt_emulator.trt
    builder = trt.Builder(trt.Logger())
    config = builder.create_builder_config()
    engine_, context = context_for(trt, tiny_model())
    for owner, name in [(builder, "build_engine"), (config, "max_workspace_size"),
                        (context, "execute_async_v2"), (engine_, "num_bindings"),
                        (engine_, "get_binding_shape"), (builder, "max_batch_size")]:
        with pytest.raises(AttributeError):
            getattr(owner, name)
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1 << 30


def test_tensorrt_8_5_needs_explicit_batch_and_has_no_optimization_level(tmp_path: Path, trt_emulator,
                                                                          monkeypatch) -> None:
    monkeypatch.setenv("EDGERESNET_TRT_EMULATE", "8.5.2")
    emulated = trt_emulator.reload()
    trt = emulated.trt
    _, network, parser, ok = parsed(trt, tiny_model(), flags=0)
    assert ok is False and network.has_implicit_batch_dimension
    assert "only supports TensorRT INetworkDefinitions with an explicit batch dimension" in str(parser.get_error(0))
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert not hasattr(config, "builder_optimization_level")
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    # our builder sets EXPLICIT_BATCH and skips the optimisation level: the engine runs
    onnx_path = tmp_path / "tiny.onnx"
    tiny_model(onnx_path)
    profile = dataclasses.replace(get_profile("jetson-xavier-nx"), min_batch=1, opt_batch=2, max_batch=8)
    path = tmp_path / "engines" / "model.fp32.engine"
    path.parent.mkdir()
    path.write_bytes(build_engine(trt, BuildRequest(onnx_path, "fp32", profile, 4)).plan)
    runner = TensorRTRunner(path, trt, emulated.cuda)
    x = np.random.default_rng(5).standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(runner.run(x), reference(onnx_path.read_bytes(), x), rtol=1e-6, atol=1e-6)


def test_a_timing_cache_from_another_gpu_is_replaced_not_fatal(tmp_path: Path, trt_emulator, monkeypatch) -> None:
    """TensorRT refuses (set_timing_cache returns False) a cache made on another GPU; our
    builder then starts a fresh one instead of failing when it saves the cache."""
    onnx_path, cache = tmp_path / "tiny.onnx", tmp_path / "timing.cache"
    tiny_model(onnx_path)
    request = BuildRequest(onnx_path, "fp32", get_profile("jetson-orin-nano"), 4, cache)
    monkeypatch.setenv("EDGERESNET_EMULATED_GPU", "NVIDIA GeForce RTX 4090")
    monkeypatch.setenv("EDGERESNET_EMULATED_CC", "8.9")
    build_engine(trt_emulator.reload().trt, request)
    monkeypatch.delenv("EDGERESNET_EMULATED_GPU")
    monkeypatch.delenv("EDGERESNET_EMULATED_CC")
    trt = trt_emulator.reload().trt
    assert build_engine(trt, request)
    assert any("not used (ignore_mismatch=False)" in m for m in errors(trt))
    trt.LOG.clear()
    build_engine(trt, request)  # the cache now belongs to this GPU
    assert not errors(trt) and any("timing cache: " in m and "0 hits" not in m for _, m in trt.LOG)
