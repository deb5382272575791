"""Engine building against the TensorRT EMULATOR (tests/emulator: TensorRT cannot be
installed without an NVIDIA GPU, so an emulator that enforces its contract and runs the
plan's ONNX with ONNX Runtime stands in), and everything around it for real: sidecar
identity checks, refusals, the bundle round trip, a device side without torch."""
from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest

from pipeline.runners import tensorrt_runner
from pipeline.device import engine
from pipeline.artifacts import sidecar_path
from pipeline.errors import ConfigError, ExportError, MissingDependencyError, StaleArtifactError
from pipeline.device.tensorrt_build import BuildRequest, build_engine
from targets.detect import Platform
from targets.profile import get_profile

IDENTITY = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt": "10.3.0",
            "cuda": "12.6", "jetpack": "6.2"}


def request_for(run, profile: str, precision: str = "int8", **changes) -> BuildRequest:
    onnx_path = run.run_dir / ("model.int8.onnx" if precision == "int8" else "model.fp32.onnx")
    target = dataclasses.replace(get_profile(profile), **changes)
    return BuildRequest(onnx_path, precision, target, 32, run.run_dir / "timing.cache")


def built_config(trt: types.ModuleType):
    """The IBuilderConfig of the last build_serialized_network call."""
    return [c for c in trt.CALLS if c[0] == "build_serialized_network"][-1][2]


def logged(trt: types.ModuleType, fragment: str) -> bool:
    return any(fragment in message for _, message in trt.LOG)


def test_int8_build_on_tensorrt_10_sets_what_the_api_documents(quantized_run, trt_emulator) -> None:
    trt = trt_emulator.trt
    (quantized_run.run_dir / "timing.cache").unlink(missing_ok=True)
    built = build_engine(trt, request_for(quantized_run, "jetson-orin-nano"))
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(built.plan) is not None
    config = built_config(trt)
    # explicit Q/DQ on 10.x: strongly typed, no precision flags (NVIDIA's guidance; 11 agrees)
    assert config.flags == 0 and built.semantics.to_dict() == {"typing": "strong", "flags": [],
                                                               "unquantized": "fp32"}
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 1024 << 20
    assert config.builder_optimization_level == get_profile("jetson-orin-nano").optimization_level
    profile, = config._profiles
    assert profile.get_shape("input") == [(1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32)]
    assert config.default_device_type == trt.DeviceType.GPU
    assert ("create_network", 0b11) in trt.CALLS  # explicit batch (set where the flag exists) + strong typing
    # the timing cache is written, and a second build reads it back (hits, no errors)
    assert (quantized_run.run_dir / "timing.cache").stat().st_size > 0
    trt.LOG.clear()
    build_engine(trt, request_for(quantized_run, "jetson-orin-nano"))
    assert logged(trt, "timing cache: ") and not logged(trt, "timing cache: 0 hits")
    assert not [m for severity, m in trt.LOG if severity == "ERROR"]


def test_tensorrt_11_gets_no_precision_flags_and_refuses_fp16(quantized_run, trt_emulator, monkeypatch) -> None:
    monkeypatch.setenv("EDGERESNET_TRT_EMULATE", "11.4.0")
    trt11 = trt_emulator.reload().trt
    (quantized_run.run_dir / "timing.cache").unlink(missing_ok=True)  # TensorRT 10's cache
    built = build_engine(trt11, request_for(quantized_run, "desktop"))
    assert trt11.Runtime(trt11.Logger()).deserialize_cuda_engine(built.plan) is not None
    assert built_config(trt11).flags == 0 and ("create_network", 0b10) in trt11.CALLS
    assert built.semantics.typing == "strong"
    with pytest.raises(MissingDependencyError, match="FP16 builder flag, which this TensorRT \\(11.4.0\\) no longer"):
        build_engine(trt11, request_for(quantized_run, "desktop", "fp16"))
    trt11.NUM_DLA_CORES[0] = 2  # a DLA needs weak typing: TensorRT 11.4 has none (and no DLA on JetPack)
    with pytest.raises(MissingDependencyError, match="the DLA \\(core 1\\).*no longer has"):
        build_engine(trt11, request_for(quantized_run, "jetson-agx-orin", **DLA_STATIC))


DLA_STATIC = {"dla_core": 1, "min_batch": 8, "opt_batch": 8, "max_batch": 8}


def test_dla_runs_the_int8_engine_with_fallbacks_listed_and_the_fp32_reference_on_the_gpu(
        quantized_run, trt_emulator) -> None:
    """The DLA has no FP32: the INT8 engine goes to the DLA (weakly typed, INT8 + FP16 flags,
    GPU_FALLBACK) with the layers it cannot run listed, the FP32 reference to the GPU."""
    trt = trt_emulator.trt
    trt.NUM_DLA_CORES[0] = 2
    profile = dataclasses.replace(get_profile("jetson-agx-orin"), **DLA_STATIC)
    path = engine.build_one(trt, quantized_run.run_dir, profile, "int8", IDENTITY)
    config = built_config(trt)
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    assert config.get_flag(trt.BuilderFlag.GPU_FALLBACK) and config.get_flag(trt.BuilderFlag.INT8)
    record = json.loads(sidecar_path(path).read_text())
    assert record["device"] == "DLA1" and record["dla_core"] == 1
    assert record["precision_semantics"] == {"typing": "weak", "flags": ["INT8", "FP16"], "unquantized": "fp16"}
    # the emulated DLA runs no reduction and no Gemm: the pooling mean and the classifier head
    # fall back, and the inspector shows the DLA part as one foreign node, then the GPU layers
    assert record["gpu_fallback_layers"] == ["node_mean", "node_linear"]
    assert record["engine_layers"][0].startswith("{ForeignNode[")
    assert set(record["gpu_fallback_layers"]) <= set(record["engine_layers"])
    reference = engine.build_one(trt, quantized_run.run_dir, profile, "fp32", IDENTITY)
    config = built_config(trt)
    assert config.default_device_type == trt.DeviceType.GPU and config.flags == 0
    record = json.loads(sidecar_path(reference).read_text())
    assert record["device"] == "GPU" and record["dla_core"] == -1 and not record["gpu_fallback_layers"]
    assert record["precision_semantics"]["typing"] == "strong"
    trt.NUM_DLA_CORES[0] = 1
    with pytest.raises(ConfigError, match="dla_core 1 asked for, this device has 1 DLA core"):
        build_engine(trt, request_for(quantized_run, "jetson-agx-orin", **DLA_STATIC))


def test_a_dla_profile_with_a_dynamic_batch_is_refused() -> None:
    """TensorRT's DLA runs static shapes only: a dynamic batch would put every layer on the GPU."""
    with pytest.raises(ConfigError, match="DLA runs static shapes only"):
        dataclasses.replace(get_profile("jetson-agx-orin"), dla_core=0)


def test_dla_without_gpu_fallback_fails_the_build_naming_the_layer(quantized_run, trt_emulator) -> None:
    trt = trt_emulator.trt
    trt.NUM_DLA_CORES[0] = 2
    request = request_for(quantized_run, "jetson-agx-orin", gpu_fallback=False, **DLA_STATIC)
    with pytest.raises(ExportError, match="could not build"):
        build_engine(trt, request)
    assert logged(trt, "cannot run on DLA") and logged(trt, "GPU_FALLBACK is not set")


@pytest.mark.parametrize("version, typing, flags, network", [
    ("8.5.2", "weak", ["INT8"], 0b01),     # no strong typing: INT8 alone, the rest FP32
    ("10.3.0", "strong", [], 0b11),        # STRONGLY_TYPED, no precision flags
    ("11.4.0", "strong", [], 0b10)])       # every network strongly typed (the flag is kept)
def test_every_version_builds_int8_with_the_same_numerics(version, typing, flags, network, quantized_run,
                                                          trt_emulator, monkeypatch) -> None:
    """Same Q/DQ ONNX, same semantics: INT8 where Q/DQ says, FP32 elsewhere, on 8.5, 10.3, 11.4."""
    monkeypatch.setenv("EDGERESNET_TRT_EMULATE", version)
    trt = trt_emulator.reload().trt
    request = dataclasses.replace(request_for(quantized_run, "jetson-orin-nano"), timing_cache=None)
    built = build_engine(trt, request)
    assert built.semantics.to_dict() == {"typing": typing, "flags": flags, "unquantized": "fp32"}
    assert ("create_network", network) in trt.CALLS
    assert sorted(built_config(trt)._flag_names()) == sorted(flags)
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(built.plan)._header["typing"] == typing


def test_fp16_for_unquantized_layers_is_weak_typing_and_refused_on_11(quantized_run, trt_emulator,
                                                                      monkeypatch) -> None:
    trt = trt_emulator.trt
    built = build_engine(trt, request_for(quantized_run, "jetson-orin-nano", unquantized_fp16=True))
    assert built.semantics.to_dict() == {"typing": "weak", "flags": ["INT8", "FP16"], "unquantized": "fp16"}
    monkeypatch.setenv("EDGERESNET_TRT_EMULATE", "11.4.0")
    trt11 = trt_emulator.reload().trt
    with pytest.raises(MissingDependencyError, match="unquantized_fp16.*no longer has"):
        build_engine(trt11, request_for(quantized_run, "jetson-orin-nano", unquantized_fp16=True))


def test_parser_errors_are_printed_and_raised(tmp_path: Path, quantized_run, trt_emulator, capsys) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    request = dataclasses.replace(request_for(quantized_run, "desktop"), onnx_path=bad)
    with pytest.raises(ExportError, match="ONNX parser failed with 1 error"):
        build_engine(trt_emulator.trt, request)
    assert "TensorRT ONNX parser: (parse): MODEL_DESERIALIZE_FAILED" in capsys.readouterr().out


def test_engine_and_sidecar_then_identity_checks(quantized_run, trt_emulator) -> None:
    trt = trt_emulator.trt
    profile = get_profile("jetson-orin-nano")
    path = engine.build_one(trt, quantized_run.run_dir, profile, "int8", IDENTITY)
    assert path == quantized_run.run_dir / "engines" / "jetson-orin-nano" / "model.int8.engine"
    # plain plan bytes, nothing prepended: TensorRT's runtime loads the file as it is
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(path.read_bytes()) is not None
    record = json.loads(sidecar_path(path).read_text())
    assert record["identity"] == IDENTITY and record["precision"] == "int8"
    assert record["shapes"]["max"] == [8, 3, 32, 32] and record["calibration_sha256"]
    onnx_path = quantized_run.run_dir / "model.int8.onnx"
    assert tensorrt_runner.check_engine(path, IDENTITY, onnx_path)["target"] == "jetson-orin-nano"
    with pytest.raises(StaleArtifactError, match="built for gpu 'Orin \\(nvgpu\\)'.*rebuild it here"):
        tensorrt_runner.check_engine(path, {**IDENTITY, "gpu": "NVIDIA GeForce RTX 4090"})
    with pytest.raises(StaleArtifactError, match="built for tensorrt '10.3.0'"):
        tensorrt_runner.check_engine(path, {**IDENTITY, "tensorrt": "10.7.0"})
    changed = path.parent / "changed.onnx"
    changed.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(StaleArtifactError, match="changed since the engine was built"):
        tensorrt_runner.check_engine(path, IDENTITY, changed)


def test_cpu_target_needs_no_engine(quantized_run, capsys) -> None:
    """It says what bench chose on this machine (the quantized run was benched)."""
    chosen = json.loads((quantized_run.run_dir / "deploy" / "cpu.json").read_text())
    assert engine.run(quantized_run).name == ("model.int8.onnx" if chosen["label"].endswith("-int8")
                                              else "model.int8.cpu.onnx")
    assert f"it deploys {chosen['label']}" in capsys.readouterr().out


@pytest.mark.parametrize("target, fragment", [("jetson", "not a Jetson.*make bundle TARGET=jetson"),
                                              ("desktop", "no desktop NVIDIA GPU found")])
def test_gpu_targets_are_refused_on_this_machine(quantized_run, target: str, fragment: str) -> None:
    cfg = dataclasses.replace(quantized_run, engine=dataclasses.replace(quantized_run.engine, target=target))
    with pytest.raises(ConfigError, match=fragment):
        engine.run(cfg)


def test_missing_tensorrt_says_what_to_do() -> None:
    with pytest.raises(MissingDependencyError, match="comes with JetPack.*make setup-device"):
        tensorrt_runner.import_tensorrt(Platform(jetson_model="NVIDIA Jetson Orin Nano Developer Kit"))
    with pytest.raises(MissingDependencyError, match="pip install tensorrt-cu12"):
        tensorrt_runner.import_tensorrt(Platform(gpu_name="NVIDIA GeForce RTX 4090", compute_capability=8.9))


def test_tensorrt_runner_name_based_io_matches_onnx_runtime(quantized_run, trt_emulator) -> None:
    """Build → deserialize → set_input_shape/set_tensor_address/execute_async_v3 with
    page-locked and device buffers on one stream; the emulated engine computes with ONNX
    Runtime on the bytes in emulated device memory, so the runner must hand back ONNX
    Runtime's logits for the same batch."""
    import numpy as np

    from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
    from pipeline.runners.tensorrt_runner import open_engine

    trt = trt_emulator.trt
    path = engine.build_one(trt, quantized_run.run_dir, get_profile("jetson-orin-nano"), "fp32", IDENTITY)
    runner, info = open_engine(path, trt, trt_emulator.cuda)
    assert info.runtime == "tensorrt" and info.precision == "fp32" and info.preprocessing.input_size == 32
    reference = OnnxRuntimeRunner(quantized_run.run_dir / "model.fp32.onnx")
    rng = np.random.default_rng(0)
    for batch in (4, 1, 4):  # shape changes re-allocate, repeats reuse
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(runner.run(x), reference.run(x), rtol=1e-6, atol=1e-6)
    assert set(runner.last_timing) == {"h2d_ms", "compute_ms", "d2h_ms"}
    assert all(value >= 0 for value in runner.last_timing.values())
    assert ("set_input_shape", "input", (4, 3, 32, 32)) in trt.CALLS
    assert [c for c in trt.CALLS if c[0] == "execute_async_v3"][-1] == ("execute_async_v3", runner.stream.handle)
    runner.close()


def test_an_engine_from_another_machine_is_refused_at_open(quantized_run, trt_emulator) -> None:
    from pipeline.runners.tensorrt_runner import open_engine

    other = {**IDENTITY, "gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    path = engine.build_one(trt_emulator.trt, quantized_run.run_dir, get_profile("desktop"), "fp32", other)
    with pytest.raises(StaleArtifactError, match="built for gpu 'NVIDIA GeForce RTX 4090'"):
        open_engine(path, trt_emulator.trt, trt_emulator.cuda)


def test_evaluating_an_engine_without_tensorrt_names_what_is_missing(quantized_run, trt_emulator) -> None:
    from pipeline.runners.registry import open_model

    path = engine.build_one(trt_emulator.trt, quantized_run.run_dir, get_profile("desktop"), "fp32", IDENTITY)
    trt_emulator.close()  # this machine has no TensorRT
    with pytest.raises(MissingDependencyError, match="tensorrt is needed"):
        open_model(path)


@pytest.mark.tensorrt
def test_real_engine_agrees_with_onnx_runtime(quantized_run) -> None:
    """Where TensorRT and a GPU exist: a real INT8 engine against ONNX Runtime's INT8 model."""
    real_trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (no NVIDIA GPU here)")
    pytest.importorskip("pycuda.autoinit", reason="pycuda/CUDA is not available")
    real_cuda = pytest.importorskip("pycuda.driver")
    import numpy as np

    from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
    from pipeline.runners.tensorrt_runner import TensorRTRunner
    from targets.detect import detect_platform

    identity = tensorrt_runner.machine_identity(real_trt, real_cuda, detect_platform())
    path = engine.build_one(real_trt, quantized_run.run_dir, get_profile("desktop"), "int8", identity)
    runner = TensorRTRunner(path, real_trt, real_cuda)
    reference = OnnxRuntimeRunner(quantized_run.run_dir / "model.int8.onnx")
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    a, b = runner.run(x), reference.run(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99 and np.abs(a - b).max() < 0.5


def test_a_calibrator_profile_calibrates_from_the_run_tensors_with_a_keyed_cache(quantized_run,
                                                                                 trt_emulator) -> None:
    """Implicit calibration (DLA on JetPack 6): the FP32 ONNX and config.int8_calibrator, which
    the (emulated) builder really drives with the run's calibration tensors (written from the
    manifest here, carried by the bundle to a device); the cache is keyed by the ONNX's and
    the set's hashes and a mismatched one is refused."""
    from calibration.tensors import TENSORS
    from calibration.trt_cache import read_cache
    from calibration.trt_calibrator import key_path
    from pipeline.artifacts import read_json, sha256_file

    trt, run = trt_emulator.trt, quantized_run.run_dir
    profile = dataclasses.replace(get_profile("jetson-orin-nx"), calibrator="entropy")
    cache_path = run / "engines" / profile.name / "calibration.cache"
    cache_path.unlink(missing_ok=True)
    path = engine.build_one(trt, run, profile, "int8", IDENTITY)
    config = built_config(trt)
    assert config.int8_calibrator is not None and config.get_flag(trt.BuilderFlag.INT8)
    manifest = read_json(run / "calibration" / "manifest.json")
    assert config.int8_calibrator.position == manifest["count"]  # every image went to the device
    cache = read_cache(cache_path)
    assert cache.algorithm == "EntropyCalibration2" and cache.version == "100300" and cache.scales["input"] > 0
    record = json.loads(sidecar_path(path).read_text())
    assert record["inputs"]["onnx"]["path"].endswith("model.fp32.onnx")
    assert record["calibration"] == {"method": "implicit calibrator", "cache": f"engines/{profile.name}/calibration.cache",
                                     "cache_sha256": sha256_file(cache_path), "algorithm": "entropy",
                                     "onnx_sha256": sha256_file(run / "model.fp32.onnx"),
                                     "calibration_sha256": manifest["set_sha256"]}
    assert (run / TENSORS).is_file()
    trt.LOG.clear()
    engine.build_one(trt, run, profile, "int8", IDENTITY)  # the keyed cache is reused: no calibration
    assert not logged(trt, "calibrated ")
    key = read_json(key_path(cache_path))
    key_path(cache_path).write_text(json.dumps({**key, "calibration_sha256": "0" * 64}))
    with pytest.raises(StaleArtifactError, match="calibration.cache: made for another calibration"):
        engine.build_one(trt, run, profile, "int8", IDENTITY)
    key_path(cache_path).unlink()
    with pytest.raises(StaleArtifactError, match="made for another onnx"):  # a cache of unknown origin
        engine.build_one(trt, run, profile, "int8", IDENTITY)
    cache_path.unlink()


def test_weak_fp16_typing_changes_the_numbers_and_strong_typing_keeps_onnx_runtimes(quantized_run,
                                                                                    trt_emulator) -> None:
    """Why the semantics matter: the strongly typed INT8 engine computes what ONNX Runtime
    computes on the Q/DQ file (the accuracy we report); the weakly typed one with FP16 allowed
    (``unquantized_fp16``) rounds the unquantized layers through FP16 (EMULATED: Cast pairs
    in ONNX Runtime), so its logits move while its answers barely do."""
    import numpy as np

    from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
    from pipeline.runners.tensorrt_runner import TensorRTRunner

    from pipeline.device.crosscheck import image_batches

    trt, run = trt_emulator.trt, quantized_run.run_dir
    _, batches = image_batches(quantized_run, run / "model.int8.onnx", 8)  # real val images
    x = np.concatenate([b["input"] for b in batches])
    expected = OnnxRuntimeRunner(run / "model.int8.onnx").run(x)
    logits = {}
    for name, changes in (("strong", {}), ("weak", {"unquantized_fp16": True})):
        path = run / f"model.int8.{name}.engine"
        path.write_bytes(build_engine(trt, request_for(quantized_run, "jetson-orin-nano", **changes)).plan)
        logits[name] = TensorRTRunner(path, trt, trt_emulator.cuda).run(x)
        path.unlink()
    np.testing.assert_allclose(logits["strong"], expected, rtol=1e-6, atol=1e-6)
    moved = np.abs(logits["weak"] - expected).max()
    assert 1e-4 < moved < 0.5 and (logits["weak"].argmax(1) == expected.argmax(1)).mean() >= 0.98


def run_with_a_float_layer(run, tmp_path: Path) -> tuple[Path, str]:
    """A run folder whose model.int8.onnx has one convolution left in float, as accuracy
    control leaves them: its weights a plain FP32 initializer, no DequantizeLinear."""
    import onnx
    from onnx import numpy_helper

    from calibration.qdq import float_layers

    model = onnx.load(str(run.run_dir / "model.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.name != "node_conv1"
                and producers.get(n.input[1]) is not None)
    dq = producers[conv.input[1]]
    q = producers.get(dq.input[0])
    weight = inits[q.input[0]] if q is not None and q.op_type == "QuantizeLinear" else \
        inits[dq.input[0]].astype("float32") * inits[dq.input[1]].reshape(-1, 1, 1, 1)
    model.graph.initializer.append(numpy_helper.from_array(weight.astype("float32"), conv.name + "_w32"))
    conv.input[1] = conv.name + "_w32"
    out = tmp_path / "float-layer"
    out.mkdir()
    onnx.save(model, str(out / "model.int8.onnx"))
    assert float_layers(model) == [conv.name]
    return out, conv.name


def plan_header(trt: types.ModuleType, plan: bytes) -> dict:
    """The emulated plan's header (the emulator's own record of what the builder was told)."""
    import struct

    start = len(trt._PLAN_MAGIC)
    size, = struct.unpack(">I", plan[start:start + 4])
    return json.loads(plan[start + 4:start + 4 + size])


def test_float_layers_stay_fp32_where_fp16_is_allowed(quantized_run, trt_emulator, tmp_path: Path) -> None:
    """A DLA build allows FP16 in unquantized layers: the layer accuracy control kept in float
    is pinned to FP32 (OBEY_PRECISION_CONSTRAINTS) and placed on the GPU, and the sidecar says so."""
    trt = trt_emulator.trt
    trt.NUM_DLA_CORES[0] = 2
    out, name = run_with_a_float_layer(quantized_run, tmp_path)
    profile = dataclasses.replace(get_profile("jetson-agx-orin"), **DLA_STATIC)
    path = engine.build_one(trt, out, profile, "int8", IDENTITY)
    config = built_config(trt)
    assert config.get_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS) and config.get_flag(trt.BuilderFlag.FP16)
    record = json.loads(sidecar_path(path).read_text())
    assert record["float_layers"]["layers"] == [name] and record["float_layers"]["tensorrt_layers"] == [name]
    assert "OBEY_PRECISION_CONSTRAINTS" in record["float_layers"]["how"]
    assert name in record["gpu_fallback_layers"]
    header = plan_header(trt, path.read_bytes())
    assert header["fp32_layers"] == [name] and header["layers"][name] == "GPU"
    # a name TensorRT's network does not have is refused, not silently left to FP16
    request = BuildRequest(out / "model.int8.onnx", "int8", profile, 32, float_layers=("no_such_layer",))
    with pytest.raises(ExportError, match="float layer no_such_layer is not in TensorRT's network"):
        build_engine(trt, request)


def test_strong_typing_keeps_float_layers_fp32_with_no_flags(quantized_run, trt_emulator, tmp_path: Path) -> None:
    trt = trt_emulator.trt
    out, name = run_with_a_float_layer(quantized_run, tmp_path)
    path = engine.build_one(trt, out, get_profile("jetson-orin-nano"), "int8", IDENTITY)
    assert built_config(trt).flags == 0
    record = json.loads(sidecar_path(path).read_text())
    assert record["float_layers"] == {"layers": [name], "how": "strong typing"}
