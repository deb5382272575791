"""Building a TensorRT engine from ONNX with the TensorRT 10 Python API (and 11's changes).

Written against the real API (names checked against NVIDIA's binding wheels in the
tests): ``create_network``, the ONNX parser with every error printed, an optimisation
profile, ``set_memory_pool_limit``, a timing cache, DLA settings and
``build_serialized_network``. TensorRT 11 removed the FP16/INT8 builder flags and the
implicit calibrator: those are reached only behind feature checks, never a version string.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_path
from pipeline.errors import ConfigError, ExportError, MissingDependencyError
from targets.profile import TargetProfile


@dataclass(frozen=True)
class BuildRequest:
    """One engine: which ONNX, at which precision, for which profile and input size."""

    onnx_path: Path
    precision: str
    profile: TargetProfile
    input_size: int
    timing_cache: Path | None = None
    calibrator: Any = None


def build_engine(trt: Any, request: BuildRequest) -> bytes:
    """The serialized plan (plain bytes: trtexec, Triton and DeepStream load it as is)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parse_onnx(trt, network, logger, request.onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.profile.workspace_mb << 20)
    if hasattr(config, "builder_optimization_level"):  # TensorRT 8.6+; JetPack 5's 8.5 has none
        config.builder_optimization_level = request.profile.optimization_level
    add_shapes(builder, config, network, request)
    set_precision(trt, config, request)
    set_dla(trt, builder, config, request.profile)
    cache = load_timing_cache(config, request.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{request.onnx_path}: TensorRT could not build an engine for "
                          f"{request.profile.name} ({request.precision}); see TensorRT's log above")
    save_timing_cache(config, cache, request.timing_cache)
    return bytes(plan)


def network_flags(trt: Any) -> int:
    """Explicit batch: a flag before TensorRT 10 (JetPack 5's 8.5), the default in 10 (where
    the flag is deprecated and ignored), gone in 11. Set where the flag exists."""
    creation = trt.NetworkDefinitionCreationFlag
    return 1 << int(creation.EXPLICIT_BATCH.value) if hasattr(creation, "EXPLICIT_BATCH") else 0


def parse_onnx(trt: Any, network: Any, logger: Any, path: Path) -> None:
    """Parse the ONNX file; every parser error is printed, the first one raised."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse(Path(path).read_bytes()):
        return
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    for error in errors:
        print(f"TensorRT ONNX parser: {error}")
    raise ExportError(f"{path}: TensorRT's ONNX parser failed with {len(errors)} error(s): "
                      f"{errors[0] if errors else 'no message'}")


def add_shapes(builder: Any, config: Any, network: Any, request: BuildRequest) -> None:
    """One optimisation profile over the dynamic batch axis: min/opt/max from the profile."""
    p, s = request.profile, request.input_size
    shapes = [(batch, 3, s, s) for batch in (p.min_batch, p.opt_batch, p.max_batch)]
    optimisation = builder.create_optimization_profile()
    optimisation.set_shape(network.get_input(0).name, *shapes)
    config.add_optimization_profile(optimisation)


def set_precision(trt: Any, config: Any, request: BuildRequest) -> None:
    """TensorRT 10 needs the INT8/FP16 flags; TensorRT 11 has none and takes the precision
    from the Q/DQ network itself. Found by feature, not by version."""
    flags = trt.BuilderFlag
    if request.precision == "fp16" and not hasattr(flags, "FP16"):
        raise MissingDependencyError(f"this TensorRT ({_version(trt)}) has no FP16 builder flag; "
                                     f"build int8 (Q/DQ) or fp32 engines")
    if request.precision in ("fp16", "int8") and hasattr(flags, "FP16"):
        config.set_flag(flags.FP16)  # layers left unquantized may run in FP16
    if request.precision == "int8" and hasattr(flags, "INT8"):
        config.set_flag(flags.INT8)
    if request.calibrator is not None:
        if not hasattr(config, "int8_calibrator"):
            raise MissingDependencyError(f"this TensorRT ({_version(trt)}) has no implicit "
                                         f"calibration; use the Q/DQ model (model.int8.onnx)")
        config.int8_calibrator = request.calibrator


def set_dla(trt: Any, builder: Any, config: Any, profile: TargetProfile) -> None:
    """Run on a DLA core where the profile asks for one and the device has it."""
    if profile.dla_core < 0:
        return
    if builder.num_DLA_cores <= profile.dla_core:
        raise ConfigError(f"{profile.name}: dla_core {profile.dla_core} asked for, this device "
                          f"has {builder.num_DLA_cores} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = profile.dla_core
    if profile.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def load_timing_cache(config: Any, path: Path | None) -> Any:
    """Reuse measured kernel timings across builds (minutes saved on a Jetson)."""
    if path is None:
        return None
    blob = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # made on another GPU: TensorRT refuses it (its log says why), so start afresh
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def save_timing_cache(config: Any, cache: Any, path: Path | None) -> None:
    if path is None or cache is None:
        return
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))


def _version(trt: Any) -> str:
    return getattr(trt, "__version__", "unknown version")
