"""The engine stage: ``make engine TARGET=<t>`` builds ``engines/<t>/model.<precision>.engine``.

Engines are tied to the GPU and the TensorRT version, so they are built only on the
machine that runs them: the target is checked against what detection finds, and the
sidecar ``.engine.json`` records the machine's identity so a mismatched engine is refused
at load time. The FP32 reference engine is built beside the INT8 one, always on the GPU
(a DLA has no FP32), and the sidecar says how each engine was typed, where it runs, which
layers fell back from the DLA, and which calibration it came from.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

from pipeline.artifacts import atomic_path, provenance, read_json, sha256_file, sidecar_path, write_json
from pipeline.config import Config
from pipeline.device.bundle import is_device_run
from pipeline.device.deployment import deployment
from pipeline.errors import StaleArtifactError
from pipeline.device.tensorrt_build import BuildRequest, BuildResult, build_engine
from pipeline.onnx_meta import read_metadata
from pipeline.optional import import_pycuda
from pipeline.preprocess import Preprocessing
from pipeline.runners.tensorrt_runner import import_tensorrt, machine_identity
from targets.detect import detect_platform, target_profile
from targets.profile import TargetProfile


def run(cfg: Config) -> Path:
    """Build the target's engines (or say which ONNX the cpu target deploys)."""
    out = cfg.run_dir
    platform = detect_platform()  # once: on a desktop it asks nvidia-smi
    profile = target_profile(cfg.engine.target, platform=platform)
    if profile.on_cpu:
        return say_cpu_deployment(out, profile)
    trt = import_tensorrt(platform)
    cuda = import_pycuda("for the GPU's identity and buffers")
    identity = machine_identity(trt, cuda, platform)
    built = [build_one(trt, out, profile, precision, identity)
             for precision in dict.fromkeys((profile.precision, "fp32"))]
    return built[0]


def say_cpu_deployment(out: Path, profile: TargetProfile) -> Path:
    """A CPU target builds no engine: say what it deploys (bench's choice on this machine),
    or, before bench has chosen, what it will choose among."""
    try:
        chosen = deployment(out, profile)
    except StaleArtifactError as exc:
        print(f"target {profile.name} runs a CPU runtime: no engine to build. {exc}")
        return out / "model.int8.onnx"
    print(f"target {profile.name} runs a CPU runtime: no engine to build; it deploys {chosen.model.label} "
          f"({chosen.model.path}): {chosen.why}")
    return chosen.model.path


def build_one(trt: Any, out: Path, profile: TargetProfile, precision: str, identity: Dict[str, Any],
              calibrator: Any = None) -> Path:
    """One engine. INT8 comes from the Q/DQ ONNX, or (profile ``calibrator`` set: implicit
    calibration, e.g. DLA on JetPack 6) from the FP32 ONNX with the calibration tensors."""
    implicit = precision == "int8" and bool(profile.calibrator)
    onnx_path = out / ("model.int8.onnx" if precision == "int8" and not implicit else "model.fp32.onnx")
    kept: tuple = ()
    if precision == "int8" and not implicit:
        from calibration.qdq import float_layers, load_tensorrt_qdq
        kept = tuple(float_layers(load_tensorrt_qdq(onnx_path)))
    size = int(read_metadata(onnx_path)["preprocessing"]["input_size"])
    folder = out / "engines" / profile.name
    engine = folder / f"model.{precision}.engine"
    cache = folder / profile.timing_cache if profile.timing_cache else None
    if implicit and calibrator is None:
        calibrator = implicit_calibrator(out, onnx_path, profile, folder)
    start = time.perf_counter()
    built = build_engine(trt, BuildRequest(onnx_path, precision, profile, size, cache, calibrator, kept))
    seconds = time.perf_counter() - start
    record = engine_record(onnx_path, out, profile, precision, identity, size, seconds)
    record.update(build_facts(built, calibrator, precision, out))
    with atomic_path(engine) as tmp:
        tmp.write_bytes(built.plan)
        write_json(sidecar_path(engine), record)
    fallback = f", {len(built.fallback_layers)} layer(s) fall back to the GPU" if built.fallback_layers else ""
    print(f"built {engine} ({precision}, {built.device}, {built.semantics.typing}ly typed{fallback}, "
          f"{profile.name}) in {seconds:.0f} s")
    return engine


def implicit_calibrator(out: Path, onnx_path: Path, profile: TargetProfile, folder: Path) -> Any:
    """TensorRT's implicit calibrator over the run's calibration tensors (written from the
    manifest on the workstation, carried in the bundle to a device), its cache keyed by the
    ONNX's and the set's hashes."""
    from calibration.tensors import ensure_tensors, load_tensors
    from calibration.trt_calibrator import cache_key, open_calibrator

    pre = Preprocessing.from_dict(read_metadata(onnx_path)["preprocessing"])
    if not is_device_run(out):
        ensure_tensors(out, pre)
    inputs, record = load_tensors(out, pre)
    batch = max(1, min(profile.opt_batch, len(inputs)))
    key = cache_key(onnx_path, record["set_sha256"], profile.calibrator)
    return open_calibrator(profile.calibrator, inputs, batch, folder / "calibration.cache", key)


def build_facts(built: BuildResult, calibrator: Any, precision: str, out: Path) -> Dict[str, Any]:
    """What the sidecar adds from the build: precision semantics, device and DLA fallbacks,
    the engine's layers, and for implicit INT8 the calibration cache and its key."""
    facts: Dict[str, Any] = {"precision_semantics": built.semantics.to_dict(), "device": built.device,
                             "dla_core": built.dla_core, "gpu_fallback_layers": built.fallback_layers,
                             "engine_layers": built.engine_layers, "float_layers": built.float_layers}
    if calibrator is not None:
        cache = Path(calibrator.cache_path)
        facts["calibration"] = {"method": "implicit calibrator",
                                "cache": str(cache.resolve().relative_to(out.resolve())),
                                "cache_sha256": sha256_file(cache) if cache.is_file() else None, **calibrator.key}
    elif precision == "int8":
        facts["calibration"] = {"method": "explicit Q/DQ (model.int8.onnx)"}
    return facts


def engine_record(onnx_path: Path, out: Path, profile: TargetProfile, precision: str,
                  identity: Dict[str, Any], size: int, seconds: float) -> Dict[str, Any]:
    """The sidecar: identity, precision, DLA, shapes, ONNX and calibration hashes."""
    record = provenance("engine", {"onnx": onnx_path})
    manifest = out / "calibration" / "manifest.json"
    record.update(identity=identity, target=profile.name, precision=precision,
                  onnx_file=str(onnx_path.resolve().relative_to(out.resolve())), gpu_fallback=profile.gpu_fallback,
                  shapes={k: [b, 3, size, size] for k, b in (("min", profile.min_batch),
                          ("opt", profile.opt_batch), ("max", profile.max_batch))},
                  onnx_sha256=sha256_file(onnx_path),
                  calibration_sha256=read_json(manifest)["set_sha256"] if manifest.is_file() else None,
                  build_seconds=seconds)
    return record
