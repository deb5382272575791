"""Target profiles: what an engine for one kind of device is built with and held to.

One TOML file per profile in this folder. A profile that asks for something its device
cannot give (a DLA on a device without one, INT8 on a GPU without INT8 kernels) is
refused when it is loaded, naming the file and the field: never downgraded silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import build_dataclass, read_toml
from pipeline.errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent
# Lowest compute capability with the kernels for each precision (TensorRT support matrix).
MIN_CAPABILITY = {"int8": 6.1, "fp16": 5.3, "fp32": 0.0}
CPU_RUNTIMES = ("onnxruntime", "openvino", "auto")
INT8_RENDERINGS = ("int8", "int8-cpu")  # model.int8.onnx (TensorRT rules), model.int8.cpu.onnx (UINT8 activations)


@dataclass(frozen=True)
class TargetProfile:
    """Runtime, precision, DLA, builder settings, input shapes and the report's budgets."""

    name: str
    description: str
    kind: str                      # cpu, jetson, desktop, datacenter
    runtime: str = "tensorrt"      # tensorrt; on a CPU: onnxruntime, openvino, or auto (the fastest `bench` measured)
    precision: str = "int8"        # int8, fp16, fp32
    compute_capability: float = 0.0  # the device's (Jetson) or the lowest accepted (GPUs)
    device_model: str = ""         # device-tree model substring that identifies a Jetson
    has_dla: bool = False
    dla_core: int = -1             # -1: GPU only
    gpu_fallback: bool = True
    calibrator: str = ""           # "": explicit Q/DQ; entropy/minmax: implicit (TensorRT 10)
    unquantized_fp16: bool = False  # let layers Q/DQ leaves in float run in FP16 (weak typing: 8.5/10)
    workspace_mb: int = 1024
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    optimization_level: int = 3
    timing_cache: str = ""
    max_accuracy_drop: float = 0.005
    min_agreement: float = 0.99    # INT8 vs FP32 top-1 agreement the report requires
    latency_p99_ms: float = 0.0    # 0: no latency budget
    int8_rendering: str = "auto"   # CPU runtimes: int8 (model.int8.onnx, the engines' file), int8-cpu, or auto
    same_file_margin: float = 0.10  # auto: model.int8.onnx is deployed unless int8-cpu is this much faster

    @property
    def on_cpu(self) -> bool:
        """Whether this target runs a CPU runtime (no engine is built for it)."""
        return self.runtime != "tensorrt"

    def __post_init__(self) -> None:
        _choice("kind", self.kind, ("cpu", "jetson", "desktop", "datacenter"))
        _choice("runtime", self.runtime, ("tensorrt",) + CPU_RUNTIMES)
        _choice("int8_rendering", self.int8_rendering, ("auto",) + INT8_RENDERINGS)
        _choice("precision", self.precision, tuple(MIN_CAPABILITY))
        _choice("calibrator", self.calibrator, ("", "entropy", "minmax"))
        self._check_device()
        self._check_shapes()

    def _check_device(self) -> None:
        if self.dla_core >= 0 and not self.has_dla:
            raise ConfigError(f"dla_core: this device has no DLA (has_dla = false), got {self.dla_core}")
        if self.runtime == "tensorrt" and self.compute_capability < MIN_CAPABILITY[self.precision]:
            raise ConfigError(f"precision: {self.precision} needs compute capability >= "
                              f"{MIN_CAPABILITY[self.precision]}, this GPU has {self.compute_capability}")
        if self.kind == "jetson" and not self.device_model:
            raise ConfigError("device_model: a Jetson profile must name its device-tree model")
        if self.on_cpu and (self.has_dla or self.calibrator or self.unquantized_fp16):
            raise ConfigError(f"runtime: {self.runtime} profiles take no DLA, TensorRT calibrator or unquantized_fp16")
        if self.on_cpu and self.precision not in ("int8", "fp32"):
            raise ConfigError(f"precision: CPU runtimes deploy int8 or fp32, got {self.precision!r}")
        if (self.runtime == "tensorrt") != (self.kind != "cpu"):
            raise ConfigError(f"runtime: a {self.kind} target runs "
                              + ("a CPU runtime" if self.kind == "cpu" else "tensorrt") + f", got {self.runtime!r}")
        if self.dla_core >= 0 and not self.min_batch == self.opt_batch == self.max_batch:
            # TensorRT's DLA runs static shapes only: a dynamic batch sends every layer to the GPU
            raise ConfigError(f"dla_core: the DLA runs static shapes only; set min_batch = opt_batch = "
                              f"max_batch (got {self.min_batch}/{self.opt_batch}/{self.max_batch})")

    def _check_shapes(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"min/opt/max_batch: expected 1 <= min <= opt <= max, got "
                              f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"optimization_level: expected 0..5, got {self.optimization_level}")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement: expected 0..1, got {self.min_agreement}")
        if not 0 <= self.same_file_margin < 1:
            raise ConfigError(f"same_file_margin: expected 0 <= x < 1, got {self.same_file_margin}")
        if self.workspace_mb < 1:
            raise ConfigError(f"workspace_mb: expected a positive size, got {self.workspace_mb}")


def load_profile(path: Path) -> TargetProfile:
    """Read one profile; every refusal names the file and the field."""
    path = Path(path)
    raw = read_toml(path)
    raw.setdefault("name", path.stem)
    return build_dataclass(TargetProfile, raw, str(path))


def load_profiles(folder: Path = PROFILE_DIR) -> dict[str, TargetProfile]:
    """Every ``*.toml`` profile in ``folder``, by name."""
    profiles = [load_profile(p) for p in sorted(Path(folder).glob("*.toml"))]
    return {p.name: p for p in profiles}


def get_profile(name: str, folder: Path = PROFILE_DIR) -> TargetProfile:
    """A profile by name; an unknown name lists the choices."""
    profiles = load_profiles(folder)
    if name not in profiles:
        raise ConfigError(f"unknown target '{name}'; choose one of: {', '.join(profiles)}, or jetson")
    return profiles[name]


def _choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{field}: expected one of {listed}, got {value!r}")
