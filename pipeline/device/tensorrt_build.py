"""Building a TensorRT engine from ONNX with the TensorRT 10 Python API (and 8.5's and 11's
differences, found by feature, never by version string).

Precision semantics are decided here, once, and recorded in the engine's sidecar. NVIDIA's
guidance for explicit quantization is a *strongly typed* network without precision flags
("Use explicit quantization with Strong Typing. Precision-control build flags are not
required and should not be specified", TensorRT's Explicit Quantization guide): the Q/DQ
nodes say what runs in INT8 and every other layer runs in the ONNX's own type, FP32. That
is what ONNX Runtime computes when we measure the Q/DQ model, and what TensorRT 11 (every
network strongly typed, no FP16/INT8 flags) does. So:

- 10.x and 11: ``STRONGLY_TYPED``, no precision flags.
- 8.5 (JetPack 5) has no strong typing: the INT8 flag alone (explicit Q/DQ needs it before
  10), no FP16 flag, so unquantized layers stay FP32: the same numerics.
- Weak typing only where something needs builder flags: an FP16 engine, a DLA engine (the
  DLA runs FP16/INT8 only), the implicit calibrator, or a profile that asks for FP16 in the
  layers Q/DQ leaves in float (``unquantized_fp16``). TensorRT 11 has no such flags: refused
  there, with the reason.

The FP32 reference never goes to a DLA (it has no FP32). On a DLA build the layers the DLA
cannot run (``can_run_on_DLA``, before the build) are listed as GPU fallbacks, and the
engine inspector's layer list is kept beside them where the version has one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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
    timing_cache: Optional[Path] = None
    calibrator: Any = None
    float_layers: Tuple[str, ...] = ()   # ONNX layers quantization kept in float (accuracy control)

    @property
    def on_dla(self) -> bool:
        """Only a reduced-precision engine goes to the DLA; the FP32 reference stays on the GPU."""
        return self.precision != "fp32" and self.profile.dla_core >= 0


@dataclass(frozen=True)
class Semantics:
    """What the builder was allowed to do with precision: the sidecar's record of it."""

    typing: str                    # "strong": types from the network; "weak": builder flags choose
    flags: List[str] = field(default_factory=list)
    unquantized: str = "fp32"      # what layers outside Q/DQ run in (fp16: TensorRT may choose)

    def to_dict(self) -> Dict[str, Any]:
        return {"typing": self.typing, "flags": list(self.flags), "unquantized": self.unquantized}


@dataclass(frozen=True)
class BuildResult:
    """The serialized plan (plain bytes: trtexec, Triton and DeepStream load it as is) and
    what the sidecar must say about it."""

    plan: bytes
    semantics: Semantics
    dla_core: int                  # -1: the GPU
    fallback_layers: List[str] = field(default_factory=list)
    engine_layers: Optional[List[str]] = None
    float_layers: Dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return f"DLA{self.dla_core}" if self.dla_core >= 0 else "GPU"


def build_engine(trt: Any, request: BuildRequest) -> BuildResult:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    semantics = precision_semantics(trt, request)
    network = builder.create_network(network_flags(trt, semantics))
    parse_onnx(trt, network, logger, request.onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.profile.workspace_mb << 20)
    if hasattr(config, "builder_optimization_level"):  # TensorRT 8.6+; JetPack 5's 8.5 has none
        config.builder_optimization_level = request.profile.optimization_level
    add_shapes(builder, config, network, request)
    set_precision(trt, config, request, semantics)
    kept = keep_float(trt, config, network, request, semantics)
    fallback = set_dla(trt, builder, config, network, request)
    cache = load_timing_cache(config, request.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{request.onnx_path}: TensorRT could not build an engine for "
                          f"{request.profile.name} ({request.precision}); see TensorRT's log above")
    save_timing_cache(config, cache, request.timing_cache)
    core = request.profile.dla_core if request.on_dla else -1
    return BuildResult(bytes(plan), semantics, core, fallback, engine_layers(trt, logger, bytes(plan)), kept)


def precision_semantics(trt: Any, request: BuildRequest) -> Semantics:
    """Strong typing wherever nothing needs builder flags; see the module docstring."""
    needs = weak_typing_reasons(request)
    if needs:
        flags = (["INT8"] if request.precision == "int8" else []) + \
                (["FP16"] if request.precision == "fp16" or request.on_dla or request.profile.unquantized_fp16 else [])
        missing = [f for f in flags if not hasattr(trt.BuilderFlag, f)]
        if missing:
            raise MissingDependencyError(
                f"{request.profile.name}: {needs[0]} needs the {missing[0]} builder flag, which this TensorRT "
                f"({_version(trt)}) no longer has (every network is strongly typed); build the Q/DQ INT8 "
                f"engine on the GPU, or use TensorRT 10")
        return Semantics("weak", flags, "fp16" if "FP16" in flags else "fp32")
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return Semantics("strong")
    # TensorRT 8.5: explicit Q/DQ needs the INT8 flag; without FP16 the rest stays FP32
    return Semantics("weak", ["INT8"] if request.precision == "int8" else [])


def weak_typing_reasons(request: BuildRequest) -> List[str]:
    """Why this engine needs builder precision flags, if it does."""
    reasons = []
    if request.precision == "fp16":
        reasons.append("an FP16 engine from the FP32 model")
    if request.on_dla:
        reasons.append(f"the DLA (core {request.profile.dla_core}), which runs only FP16 and INT8 layers,")
    if request.calibrator is not None:
        reasons.append("implicit INT8 calibration")
    if request.precision == "int8" and request.profile.unquantized_fp16:
        reasons.append("unquantized_fp16 (FP16 in the layers Q/DQ leaves in float)")
    return reasons


def network_flags(trt: Any, semantics: Semantics) -> int:
    """Explicit batch: a flag before TensorRT 10 (JetPack 5's 8.5), the default in 10 (where
    the flag is deprecated and ignored), gone in 11. Strong typing where chosen (10 and 11)."""
    creation, flags = trt.NetworkDefinitionCreationFlag, 0
    if hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH.value)
    if semantics.typing == "strong" and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED.value)
    return flags


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


def set_precision(trt: Any, config: Any, request: BuildRequest, semantics: Semantics) -> None:
    """The flags the semantics allow, and the implicit calibrator where one is given."""
    for flag in semantics.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if request.calibrator is not None:
        if not hasattr(config, "int8_calibrator"):
            raise MissingDependencyError(f"this TensorRT ({_version(trt)}) has no implicit "
                                         f"calibration; use the Q/DQ model (model.int8.onnx)")
        config.int8_calibrator = request.calibrator


def keep_float(trt: Any, config: Any, network: Any, request: BuildRequest, semantics: Semantics) -> Dict[str, Any]:
    """The layers accuracy control left in float run in FP32 on every TensorRT version. Strong
    typing (10, 11) and 8.5 without the FP16 flag already run them in the ONNX's FP32; where
    weak typing allows FP16 (a DLA build, ``unquantized_fp16``), each is pinned to FP32 with
    OBEY_PRECISION_CONSTRAINTS, and on a DLA build placed on the GPU (the DLA has no FP32)."""
    names = list(request.float_layers)
    if not names or semantics.unquantized != "fp16":
        how = "strong typing" if semantics.typing == "strong" else "no FP16 flag"
        return {"layers": names, "how": how} if names else {}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    pinned = [layer for layer in layers if any(_made_from(layer.name, name) for name in names)]
    missing = [n for n in names if not any(_made_from(layer.name, n) for layer in pinned)]
    if missing:
        raise ExportError(f"{request.onnx_path}: float layer {missing[0]} is not in TensorRT's network "
                          f"(the ONNX parser named its layers otherwise)")
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    for layer in pinned:
        layer.precision = trt.DataType.FLOAT
        for index in range(layer.num_outputs):
            layer.set_output_type(index, trt.DataType.FLOAT)
        if request.on_dla:
            config.set_device_type(layer, trt.DeviceType.GPU)
    where = ", on the GPU" if request.on_dla else ""
    return {"layers": names, "how": f"FP32 precision constraints (OBEY_PRECISION_CONSTRAINTS){where}",
            "tensorrt_layers": [layer.name for layer in pinned]}


def _made_from(layer: str, node: str) -> bool:
    """TensorRT's ONNX parser names a node's first layer after the node, and further ones
    with a ``_<n>`` suffix."""
    return layer == node or (layer.startswith(node + "_") and layer[len(node) + 1:].isdigit())


def set_dla(trt: Any, builder: Any, config: Any, network: Any, request: BuildRequest) -> List[str]:
    """Put the engine on the profile's DLA core (never the FP32 reference); returns the
    layers TensorRT says the DLA cannot run, which run on the GPU (GPU_FALLBACK)."""
    profile = request.profile
    if not request.on_dla:
        return []
    if builder.num_DLA_cores <= profile.dla_core:
        raise ConfigError(f"{profile.name}: dla_core {profile.dla_core} asked for, this device "
                          f"has {builder.num_DLA_cores} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = profile.dla_core
    if profile.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return [layer.name for layer in layers if not config.can_run_on_DLA(layer)]


def engine_layers(trt: Any, logger: Any, plan: bytes) -> Optional[List[str]]:
    """The built engine's layers as the engine inspector names them (a DLA subgraph is one
    ``{ForeignNode[...]}`` layer), or None where the engine cannot be inspected here."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None or not hasattr(engine, "create_engine_inspector"):
        return None
    text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    layers = json.loads(text).get("Layers", [])
    return [layer if isinstance(layer, str) else str(layer.get("Name", layer)) for layer in layers]


def load_timing_cache(config: Any, path: Optional[Path]) -> Any:
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


def save_timing_cache(config: Any, cache: Any, path: Optional[Path]) -> None:
    if path is None or cache is None:
        return
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))


def _version(trt: Any) -> str:
    return getattr(trt, "__version__", "unknown version")
