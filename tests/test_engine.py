"""Engine building against the strict TensorRT fake (tests/fake_tensorrt.py: a FAKE, since
TensorRT cannot be installed without an NVIDIA GPU), and everything around it for real:
sidecar identity checks, refusals, the bundle round trip, a device side without torch."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest

from pipeline import bundle as bundle_stage
from pipeline import engine
from pipeline.artifacts import sidecar_path
from pipeline.errors import ConfigError, ExportError, MissingDependencyError, StaleArtifactError
from pipeline.tensorrt_build import BuildRequest, build_engine
from targets.detect import Platform
from targets.profile import get_profile
from tests import fake_tensorrt as fake_trt
from tests.conftest import ROOT

IDENTITY = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt": "10.3.0",
            "cuda": "12.6", "jetpack": "6.2"}


@pytest.fixture(autouse=True)
def fresh_fake():
    fake_trt.CALLS.clear()
    fake_trt.NUM_DLA_CORES[0] = 0
    yield


def request_for(run, profile: str, precision: str = "int8", **changes) -> BuildRequest:
    onnx_path = run.run_dir / ("model.int8.onnx" if precision == "int8" else "model.fp32.onnx")
    target = dataclasses.replace(get_profile(profile), **changes)
    return BuildRequest(onnx_path, precision, target, 32, run.run_dir / "timing.cache")


def tensorrt_11() -> types.ModuleType:
    """TensorRT 11 as the builder sees it: no FP16/INT8 flags, no implicit calibration."""
    module = types.ModuleType("tensorrt")
    module.__dict__.update({k: v for k, v in vars(fake_trt).items() if not k.startswith("__")})
    module.__version__ = "11.4.0"
    module.BuilderFlag = types.SimpleNamespace(GPU_FALLBACK=fake_trt.BuilderFlag.GPU_FALLBACK)
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(
        STRONGLY_TYPED=fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return module


def test_int8_build_on_tensorrt_10_sets_what_the_api_documents(quantized_run) -> None:
    plan = build_engine(fake_trt, request_for(quantized_run, "jetson-orin-nano"))
    assert plan.startswith(b"fake-plan:")
    (_, network, config), = [c for c in fake_trt.CALLS if c[0] == "build_serialized_network"]
    assert config.flags == {fake_trt.BuilderFlag.INT8, fake_trt.BuilderFlag.FP16}
    assert config.pools[fake_trt.MemoryPoolType.WORKSPACE] == 1024 << 20
    assert config.profiles[0].shapes["input"] == ((1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32))
    assert config.default_device_type == fake_trt.DeviceType.GPU
    assert (quantized_run.run_dir / "timing.cache").read_bytes() == b"fake-timing-cache"
    assert ("create_network", 1) in fake_trt.CALLS  # explicit batch, set where the flag exists


def test_tensorrt_11_gets_no_precision_flags_and_refuses_fp16(quantized_run) -> None:
    trt11 = tensorrt_11()
    build_engine(trt11, request_for(quantized_run, "desktop"))
    (_, _, config), = [c for c in fake_trt.CALLS if c[0] == "build_serialized_network"]
    assert config.flags == set() and ("create_network", 0) in fake_trt.CALLS
    with pytest.raises(MissingDependencyError, match="no FP16 builder flag"):
        build_engine(trt11, request_for(quantized_run, "desktop", "fp16"))


def test_dla_is_used_where_the_device_has_one(quantized_run) -> None:
    fake_trt.NUM_DLA_CORES[0] = 2
    build_engine(fake_trt, request_for(quantized_run, "jetson-agx-orin", dla_core=1))
    (_, _, config), = [c for c in fake_trt.CALLS if c[0] == "build_serialized_network"]
    assert config.default_device_type == fake_trt.DeviceType.DLA and config.DLA_core == 1
    assert fake_trt.BuilderFlag.GPU_FALLBACK in config.flags
    fake_trt.NUM_DLA_CORES[0] = 1
    with pytest.raises(ConfigError, match="dla_core 1 asked for, this device has 1 DLA core"):
        build_engine(fake_trt, request_for(quantized_run, "jetson-agx-orin", dla_core=1))


def test_parser_errors_are_printed_and_raised(tmp_path: Path, quantized_run, capsys) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    request = dataclasses.replace(request_for(quantized_run, "desktop"), onnx_path=bad)
    with pytest.raises(ExportError, match="ONNX parser failed with 1 error"):
        build_engine(fake_trt, request)
    assert "TensorRT ONNX parser: ModelImporter" in capsys.readouterr().out


def test_engine_and_sidecar_then_identity_checks(quantized_run) -> None:
    profile = get_profile("jetson-orin-nano")
    path = engine.build_one(fake_trt, quantized_run.run_dir, profile, "int8", IDENTITY)
    assert path == quantized_run.run_dir / "engines" / "jetson-orin-nano" / "model.int8.engine"
    assert path.read_bytes().startswith(b"fake-plan:")  # plain plan bytes, nothing prepended
    record = json.loads(sidecar_path(path).read_text())
    assert record["identity"] == IDENTITY and record["precision"] == "int8"
    assert record["shapes"]["max"] == [8, 3, 32, 32] and record["calibration_sha256"]
    onnx_path = quantized_run.run_dir / "model.int8.onnx"
    assert engine.check_engine(path, IDENTITY, onnx_path)["target"] == "jetson-orin-nano"
    with pytest.raises(StaleArtifactError, match="built for gpu 'Orin \\(nvgpu\\)'.*rebuild it here"):
        engine.check_engine(path, {**IDENTITY, "gpu": "NVIDIA GeForce RTX 4090"})
    with pytest.raises(StaleArtifactError, match="built for tensorrt '10.3.0'"):
        engine.check_engine(path, {**IDENTITY, "tensorrt": "10.7.0"})
    changed = path.parent / "changed.onnx"
    changed.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(StaleArtifactError, match="changed since the engine was built"):
        engine.check_engine(path, IDENTITY, changed)


def test_cpu_target_needs_no_engine(quantized_run, capsys) -> None:
    assert engine.run(quantized_run).name == "model.int8.cpu.onnx"
    assert "deploys" in capsys.readouterr().out


@pytest.mark.parametrize("target, fragment", [("jetson", "not a Jetson.*make bundle TARGET=jetson"),
                                              ("desktop", "no desktop NVIDIA GPU found")])
def test_gpu_targets_are_refused_on_this_machine(quantized_run, target: str, fragment: str) -> None:
    cfg = dataclasses.replace(quantized_run, engine=dataclasses.replace(quantized_run.engine, target=target))
    with pytest.raises(ConfigError, match=fragment):
        engine.run(cfg)


def test_missing_tensorrt_says_what_to_do() -> None:
    with pytest.raises(MissingDependencyError, match="comes with JetPack.*make setup-device"):
        engine.import_tensorrt(Platform(jetson_model="NVIDIA Jetson Orin Nano Developer Kit"))
    with pytest.raises(MissingDependencyError, match="pip install tensorrt-cu12"):
        engine.import_tensorrt(Platform(gpu_name="NVIDIA GeForce RTX 4090", compute_capability=8.9))


def test_bundle_round_trip_and_damage(quantized_run, tmp_path: Path) -> None:
    archive = bundle_stage.make_bundle(quantized_run.run_dir, tmp_path / "b.tar.gz")
    device = tmp_path / "device" / "run"
    names = bundle_stage.unpack_bundle(archive, device)
    assert {"model.int8.onnx", "model.fp32.onnx", "calibration/manifest.json", "labels.txt"} <= set(names)
    assert (device / "model.int8.onnx").read_bytes() == (quantized_run.run_dir / "model.int8.onnx").read_bytes()
    assert (device / "labels.txt").read_text().splitlines()[:2] == ["0", "1"]
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(damaged, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "model.int8.onnx":
                data = data[:-10] + b"0123456789"
            member.size = len(data)
            import io
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(StaleArtifactError, match="model.int8.onnx is missing or damaged"):
        bundle_stage.unpack_bundle(damaged, tmp_path / "other")
    assert not (tmp_path / "other" / "model.int8.onnx").exists()


BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'nncf'):
            raise ImportError(f'{name} is not on this device')
sys.meta_path.insert(0, Block())
sys.argv = ['pipeline'] + sys.argv[1:]
import runpy
runpy.run_module('pipeline', run_name='__main__')
"""


def test_device_side_commands_run_without_torch_or_nncf(quantized_run) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--config", "configs/digits.toml", "--set", f'run.root="{quantized_run.run.root}"',
              "--set", f'data.root="{quantized_run.data.root}"']
    for args in (["targets"], ["engine", *common, "--target", "cpu"], ["bundle", *common],
                 ["engine", *common, "--target", "jetson"]):
        result = subprocess.run([sys.executable, "-c", BLOCK, *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert "is not on this device" not in result.stderr, (args, result.stderr[-800:])
        expected = 2 if args[-1] == "jetson" else 0
        assert result.returncode == expected, (args, result.stderr[-800:])


def test_tensorrt_runner_name_based_io_matches_onnx_runtime(quantized_run) -> None:
    """Build (fake) → deserialize → set_input_shape/set_tensor_address/execute_async_v3 with
    page-locked and device buffers; the fake engine computes with ONNX Runtime, so the
    runner must hand back exactly ONNX Runtime's logits for the same batch."""
    import numpy as np

    from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
    from pipeline.runners.tensorrt_runner import open_engine
    from tests import fake_pycuda as cuda

    path = engine.build_one(fake_trt, quantized_run.run_dir, get_profile("jetson-orin-nano"), "fp32", IDENTITY)
    runner, info = open_engine(path, fake_trt, cuda)
    assert info.runtime == "tensorrt" and info.precision == "fp32" and info.preprocessing.input_size == 32
    reference = OnnxRuntimeRunner(quantized_run.run_dir / "model.fp32.onnx")
    rng = np.random.default_rng(0)
    for batch in (4, 1, 4):  # shape changes re-allocate, repeats reuse
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(runner.run(x), reference.run(x), rtol=1e-6, atol=1e-6)
    assert set(runner.last_timing) == {"h2d_ms", "compute_ms", "d2h_ms"}
    assert ("set_input_shape", "input", (4, 3, 32, 32)) in fake_trt.CALLS
    assert [c for c in fake_trt.CALLS if c[0] == "execute_async_v3"][-1] == ("execute_async_v3", 0xC0FFEE)
    runner.close()


def test_an_engine_from_another_machine_is_refused_at_open(quantized_run) -> None:
    from pipeline.runners.tensorrt_runner import open_engine
    from tests import fake_pycuda as cuda

    other = {**IDENTITY, "gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    path = engine.build_one(fake_trt, quantized_run.run_dir, get_profile("desktop"), "fp32", other)
    with pytest.raises(StaleArtifactError, match="built for gpu 'NVIDIA GeForce RTX 4090'"):
        open_engine(path, fake_trt, cuda)


def test_evaluating_an_engine_without_tensorrt_names_what_is_missing(quantized_run) -> None:
    from pipeline.runners.registry import open_model

    path = engine.build_one(fake_trt, quantized_run.run_dir, get_profile("desktop"), "fp32", IDENTITY)
    with pytest.raises(MissingDependencyError, match="tensorrt is needed"):
        open_model(path)


@pytest.mark.tensorrt
def test_real_engine_agrees_with_onnx_runtime(quantized_run) -> None:
    """Where TensorRT and a GPU exist: a real INT8 engine against ONNX Runtime's INT8 model."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (no NVIDIA GPU here)")
    pytest.importorskip("pycuda.autoinit", reason="pycuda/CUDA is not available")
    import numpy as np
    import pycuda.driver as real_cuda
    import tensorrt as real_trt

    from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
    from pipeline.runners.tensorrt_runner import TensorRTRunner
    from targets.detect import detect_platform

    identity = engine.machine_identity(real_trt, real_cuda, detect_platform())
    path = engine.build_one(real_trt, quantized_run.run_dir, get_profile("desktop"), "int8", identity)
    runner = TensorRTRunner(path, real_trt, real_cuda)
    reference = OnnxRuntimeRunner(quantized_run.run_dir / "model.int8.onnx")
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    a, b = runner.run(x), reference.run(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99 and np.abs(a - b).max() < 0.5


def test_a_calibrator_profile_builds_int8_from_fp32_with_the_calibrator(quantized_run) -> None:
    """Implicit calibration (DLA on JetPack 6): the FP32 ONNX and config.int8_calibrator."""
    import numpy as np

    from calibration.trt_calibrator import make_calibrator
    from tests.test_trt_calibrator import FakeCuda

    profile = dataclasses.replace(get_profile("jetson-orin-nx"), calibrator="entropy")
    folder = quantized_run.run_dir / "engines" / profile.name
    calibrator = make_calibrator(fake_trt, FakeCuda(), "entropy", np.zeros((4, 3, 32, 32), np.float32), 2,
                                 folder / "calibration.cache")
    path = engine.build_one(fake_trt, quantized_run.run_dir, profile, "int8", IDENTITY, calibrator)
    (_, _, config), = [c for c in fake_trt.CALLS if c[0] == "build_serialized_network"]
    assert config.int8_calibrator is calibrator and fake_trt.BuilderFlag.INT8 in config.flags
    record = json.loads(sidecar_path(path).read_text())
    assert record["inputs"]["onnx"]["path"].endswith("model.fp32.onnx")


def test_engine_stage_unpacks_a_bundle_first(quantized_run, tmp_path: Path) -> None:
    archive = bundle_stage.make_bundle(quantized_run.run_dir, tmp_path / "b.tar.gz")
    device = dataclasses.replace(quantized_run, run=dataclasses.replace(quantized_run.run, root=str(tmp_path / "dev")),
                                 engine=dataclasses.replace(quantized_run.engine, target="cpu", bundle=str(archive)))
    deployed = engine.run(device)
    assert deployed == tmp_path / "dev" / quantized_run.run_name / "model.int8.cpu.onnx" and deployed.is_file()
