"""The engine stage: ``make engine TARGET=<t>`` builds ``engines/<t>/model.<precision>.engine``.

Engines are tied to the GPU and the TensorRT version, so they are built only on the
machine that runs them: the target is checked against what detection finds, and the
sidecar ``.engine.json`` records the machine's identity so a mismatched engine is refused
at load time. The FP32 reference engine is built beside the INT8 one.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_path, provenance, read_json, sha256_file, sidecar_path, write_json
from pipeline.config import Config
from pipeline.device.tensorrt_build import BuildRequest, build_engine
from pipeline.onnx_meta import read_metadata
from pipeline.optional import import_pycuda
from pipeline.preprocess import Preprocessing, load_images
from pipeline.runners.tensorrt_runner import import_tensorrt, machine_identity
from targets.detect import detect_platform, target_profile
from targets.profile import TargetProfile


def run(cfg: Config) -> Path:
    """Build the target's engines (or say which ONNX the cpu target deploys)."""
    out = cfg.run_dir
    platform = detect_platform()  # once: on a desktop it asks nvidia-smi
    profile = target_profile(cfg.engine.target, platform=platform)
    if profile.runtime == "onnxruntime":
        model = out / "model.int8.cpu.onnx"
        print(f"target {profile.name} runs ONNX Runtime: it deploys {model}; no engine to build")
        return model
    trt = import_tensorrt(platform)
    cuda = import_pycuda("for the GPU's identity and buffers")
    identity = machine_identity(trt, cuda, platform)
    built = [build_one(trt, out, profile, precision, identity)
             for precision in dict.fromkeys((profile.precision, "fp32"))]
    return built[0]


def build_one(trt: Any, out: Path, profile: TargetProfile, precision: str, identity: dict[str, Any],
              calibrator: Any = None) -> Path:
    """One engine. INT8 comes from the Q/DQ ONNX, or (profile ``calibrator`` set: implicit
    calibration, e.g. DLA on JetPack 6) from the FP32 ONNX with the calibration set."""
    implicit = precision == "int8" and bool(profile.calibrator)
    onnx_path = out / ("model.int8.onnx" if precision == "int8" and not implicit else "model.fp32.onnx")
    if precision == "int8" and not implicit:
        from calibration.qdq import require_tensorrt_qdq
        require_tensorrt_qdq(onnx_path)
    size = int(read_metadata(onnx_path)["preprocessing"]["input_size"])
    folder = out / "engines" / profile.name
    engine = folder / f"model.{precision}.engine"
    cache = folder / profile.timing_cache if profile.timing_cache else None
    if implicit and calibrator is None:
        calibrator = implicit_calibrator(out, onnx_path, profile, folder)
    start = time.perf_counter()
    plan = build_engine(trt, BuildRequest(onnx_path, precision, profile, size, cache, calibrator))
    seconds = time.perf_counter() - start
    with atomic_path(engine) as tmp:
        tmp.write_bytes(plan)
        write_json(sidecar_path(engine), engine_record(onnx_path, out, profile, precision, identity,
                                                       size, seconds))
    print(f"built {engine} ({precision}, {profile.name}) in {seconds:.0f} s")
    return engine


def implicit_calibrator(out: Path, onnx_path: Path, profile: TargetProfile, folder: Path) -> Any:
    """TensorRT's implicit calibrator over the run's manifest, caching to the engine folder."""
    from calibration.manifest import load_manifest
    from calibration.trt_calibrator import open_calibrator

    pre = Preprocessing.from_dict(read_metadata(onnx_path)["preprocessing"])
    files = [Path(item.path) for item in load_manifest(out / "calibration" / "manifest.json").items]
    inputs = pre.normalize(load_images(files, pre.prepare, desc="calibration images"))
    batch = max(1, min(profile.opt_batch, len(inputs)))
    return open_calibrator(profile.calibrator, inputs, batch, folder / "calibration.cache")


def engine_record(onnx_path: Path, out: Path, profile: TargetProfile, precision: str,
                  identity: dict[str, Any], size: int, seconds: float) -> dict[str, Any]:
    """The sidecar: identity, precision, DLA, shapes, ONNX and calibration hashes."""
    record = provenance("engine", {"onnx": onnx_path})
    manifest = out / "calibration" / "manifest.json"
    record.update(identity=identity, target=profile.name, precision=precision,
                  onnx_file=str(onnx_path.resolve().relative_to(out.resolve())),
                  dla_core=profile.dla_core, gpu_fallback=profile.gpu_fallback,
                  shapes={k: [b, 3, size, size] for k, b in (("min", profile.min_batch),
                          ("opt", profile.opt_batch), ("max", profile.max_batch))},
                  onnx_sha256=sha256_file(onnx_path),
                  calibration_sha256=read_json(manifest)["set_sha256"] if manifest.is_file() else None,
                  build_seconds=seconds)
    return record
