"""Typed configuration: frozen dataclasses loaded from TOML, overridden by ``--set``.

Every stage reads one :class:`Config`. Unknown keys and values of the wrong type are
refused when the file is read, naming the file and key, so a typo never silently falls
back to a default. The resolved configuration is written beside the artifacts it made
(:func:`dump_toml`), and can be fed back with ``--config`` to reproduce them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Tuple

from pipeline.errors import ConfigError

try:  # Python 3.11+; JetPack's Python (3.8, 3.10) reads TOML with tomli, the same parser
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised by the device simulation
    import tomli as tomllib  # type: ignore[no-redef]


def _require(condition: bool, key: str, expected: str, got: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, "one of " + ", ".join(choices), value)


@dataclass(frozen=True)
class RunConfig:
    """Where a run's artifacts go: ``<root>/<name>/``."""

    name: str = ""
    root: str = "build"
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Which images: a named dataset (``name``) or any ImageFolder tree (``path``)."""

    name: str = "digits"
    path: str = ""
    root: str = "build/datasets"
    download: bool = False
    workers: int = 2

    def __post_init__(self) -> None:
        _require(self.workers >= 1, "data.workers", "an integer >= 1", self.workers)

    @property
    def ident(self) -> str:
        """A short name for the data, used in default run names."""
        return Path(self.path).resolve().name if self.path else self.name


@dataclass(frozen=True)
class ModelConfig:
    """The architecture; empty/zero options mean the family's default."""

    name: str = "resnet20"
    shortcut: str = ""
    width: int = 0
    zero_init_residual: bool = False
    weights: str = ""

    def __post_init__(self) -> None:
        _one_of("model.shortcut", self.shortcut, ("", "A", "B"))
        _require(self.width >= 0, "model.width", "an integer >= 0", self.width)

    def options(self) -> dict[str, Any]:
        """The options given explicitly, as ``build_model`` keyword arguments."""
        given = {"shortcut": self.shortcut, "width": self.width,
                 "zero_init_residual": self.zero_init_residual}
        return {k: v for k, v in given.items() if v}


@dataclass(frozen=True)
class ImportConfig:
    """A classifier this project did not train (``import``): ``onnx`` a file, or
    ``torchvision`` an architecture name with ``weights`` a local state dict; ``classes`` a
    labels file (one label a line, or ``id<TAB>name``); ``preprocessing`` ``imagenet`` or
    a JSON file of :class:`~pipeline.preprocess.Preprocessing` fields."""

    onnx: str = ""
    torchvision: str = ""
    weights: str = ""
    classes: str = ""
    preprocessing: str = "imagenet"

    def __post_init__(self) -> None:
        _require(not (self.onnx and self.torchvision), "imported.onnx/torchvision", "one of them, not both",
                 (self.onnx, self.torchvision))


@dataclass(frozen=True)
class PreprocessConfig:
    """Deployment preprocessing; ``resize`` 0 means ``input_size / 0.875``."""

    input_size: int = 32
    resize: int = 0
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        _require(8 <= self.input_size <= 4096, "preprocess.input_size", "an integer in 8..4096", self.input_size)
        _require(0 <= self.resize <= 8192, "preprocess.resize", "0 (input_size / 0.875) or a size up to 8192",
                 self.resize)
        _require(len(self.mean) == 3 and len(self.std) == 3, "preprocess.mean/std",
                 "three values each", (self.mean, self.std))
        _require(all(s > 0 for s in self.std), "preprocess.std", "positive values", self.std)
        _one_of("preprocess.interpolation", self.interpolation, ("bilinear", "bicubic", "nearest"))


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. ``sizes`` ramps the crop size over epochs (progressive resizing)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_fraction: float = 0.25
    label_smoothing: float = 0.0
    augment: str = "pad-crop"
    pad: int = 4
    crop_scale_min: float = 0.35
    flip: bool = False
    sizes: Tuple[int, ...] = ()
    cache_size: int = 0
    precision: str = "auto"
    channels_last: bool = True
    device: str = "auto"
    threads: int = 0
    resume: bool = False
    dist_timeout_s: float = 1800.0  # under torchrun: how long a rank waits for the others (data preparation included)
    sync_batchnorm: bool = True  # under torchrun: BatchNorm statistics of the global batch, as one process has

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", "an integer >= 1", self.epochs)
        _require(self.batch_size >= 1, "train.batch_size", "an integer >= 1", self.batch_size)
        _require(self.lr > 0, "train.lr", "a positive number", self.lr)
        _require(self.dist_timeout_s > 0, "train.dist_timeout_s", "a positive number of seconds", self.dist_timeout_s)
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", "0 <= x < 1", self.label_smoothing)
        _require(0 < self.warmup_fraction < 1, "train.warmup_fraction", "0 < x < 1", self.warmup_fraction)
        _require(0 < self.crop_scale_min <= 1, "train.crop_scale_min", "0 < x <= 1", self.crop_scale_min)
        _one_of("train.schedule", self.schedule, ("onecycle", "cosine"))
        _one_of("train.augment", self.augment, ("pad-crop", "random-resized-crop", "none"))
        _one_of("train.precision", self.precision, ("auto", "fp32", "bf16", "fp64"))
        _one_of("train.device", self.device, ("auto", "cpu", "cuda"))
        _require(all(s >= 8 for s in self.sizes), "train.sizes", "crop sizes >= 8", self.sizes)
        _require(0 <= self.momentum < 1, "train.momentum", "0 <= x < 1", self.momentum)
        _require(self.weight_decay >= 0, "train.weight_decay", "a number >= 0", self.weight_decay)
        _require(self.pad >= 0 and self.cache_size >= 0, "train.pad/cache_size", "integers >= 0",
                 (self.pad, self.cache_size))
        _require(self.threads >= 0, "train.threads", "0 (one per core) or a positive count", self.threads)


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export and its parity check against PyTorch."""

    opset: int = 18
    parity_images: int = 256
    atol: float = 1e-3
    rtol: float = 1e-3
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        _require(self.opset >= 17, "export.opset", "an opset >= 17", self.opset)
        _require(self.parity_images >= 1, "export.parity_images", "an integer >= 1", self.parity_images)
        _require(0 <= self.min_agreement <= 1, "export.min_agreement", "0 <= x <= 1", self.min_agreement)
        _require(self.atol >= 0 and self.rtol >= 0, "export.atol/rtol", "values >= 0", (self.atol, self.rtol))


@dataclass(frozen=True)
class CalibrateConfig:
    """The INT8 calibration set: ``images`` 0 means 512, or the whole split when smaller."""

    images: int = 0
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        _require(self.images >= 0, "calibrate.images", "0 (default) or a positive count", self.images)


# NNCF's activation range estimators, by what they are (quantize._range_estimator maps them)
ACTIVATION_RANGES = ("mean_minmax", "minmax", "percentile", "histogram")


@dataclass(frozen=True)
class QuantizeConfig:
    """Post-training INT8 quantization.

    ``bias_correction`` is off by default: on the Imagenette ResNet-18, NNCF's fast bias
    correction lowered INT8-vs-FP32 top-1 agreement from 99.69% to 98.70% (see the README).
    ``activation_range``, ``weights`` (and ``calibrate.images``) are the settings
    ``quant-search`` compares on the tuning half of val; the defaults are what won there on
    Imagenette (README, "Choosing the INT8 settings"). Accuracy control keeps layers in
    float until the signed file's top-1 drop (``max_drop``) or its disagreement with FP32
    (``max_disagreement``) on the tuning half is within budget; ``control_images`` 0 uses
    the whole tuning half. Where post-training INT8 misses the budget, ``qat_steps`` > 0
    tries quantization-aware fine-tuning (that many steps of ``qat_batch`` training images)
    before keeping layers in float.
    """

    method: str = "nncf"
    bias_correction: str = "off"
    activation_range: str = "mean_minmax"
    weights: str = "per_channel"
    cache: str = ""
    max_drop: float = 0.0
    max_disagreement: float = 0.0
    control_images: int = 0
    qat_steps: int = 0
    qat_lr: float = 1e-4
    qat_batch: int = 32

    def __post_init__(self) -> None:
        _one_of("quantize.method", self.method, ("nncf", "onnxruntime"))
        _one_of("quantize.bias_correction", self.bias_correction, ("off", "fast"))
        _one_of("quantize.activation_range", self.activation_range, ACTIVATION_RANGES)
        _one_of("quantize.weights", self.weights, ("per_channel", "per_tensor"))
        for key in ("max_drop", "max_disagreement"):
            _require(0 <= getattr(self, key) < 1, f"quantize.{key}", "0 (off) or a fraction in (0, 1)",
                     getattr(self, key))
        _require(not (self.max_drop and self.max_disagreement), "quantize.max_drop",
                 "one accuracy budget at a time (max_drop or max_disagreement)", self.max_drop)
        _require(self.control_images >= 0, "quantize.control_images", "0 (the whole tuning half) or a count",
                 self.control_images)
        _require(self.qat_steps >= 0 and self.qat_batch >= 1 and self.qat_lr > 0, "quantize.qat_steps",
                 "qat_steps >= 0, qat_batch >= 1 and qat_lr > 0", (self.qat_steps, self.qat_batch, self.qat_lr))


@dataclass(frozen=True)
class EvaluateConfig:
    """Scoring on the val split; ``model`` set scores that one file (any labelled folder)."""

    model: str = ""
    runtime: str = ""             # for ``model``: "" the file type's runtime, or e.g. openvino for an ONNX file
    out: str = ""
    batch_size: int = 32
    threads: int = 0
    bench_runs: int = 200

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "evaluate.batch_size", "an integer >= 1", self.batch_size)
        _require(self.threads >= 0, "evaluate.threads", "0 (one per core) or a positive count", self.threads)
        _require(self.bench_runs >= 1, "evaluate.bench_runs", "an integer >= 1", self.bench_runs)


@dataclass(frozen=True)
class EngineConfig:
    """TensorRT engines: ``target`` a profile name in targets/ or ``jetson`` (detected);
    ``bundle`` the archive ``unpack`` turns into a device run."""

    target: str = "cpu"
    bundle: str = ""


@dataclass(frozen=True)
class BundleConfig:
    """What a bundle carries beside the models, so the device can score its own engines:
    ``eval_images`` labelled val images (class-balanced, seeded) and a small replay clip."""

    eval_images: int = 300
    clip_images: int = 30
    clip_frames: int = 5
    clip_size: Tuple[int, int] = (320, 240)
    max_unpacked_mb: int = 8192   # unpack refuses an archive declaring more (a decompression bomb)

    def __post_init__(self) -> None:
        _require(self.eval_images >= 1, "bundle.eval_images", "an integer >= 1", self.eval_images)
        _require(self.clip_images >= 1 and self.clip_frames >= 1, "bundle.clip_images/clip_frames",
                 "integers >= 1", (self.clip_images, self.clip_frames))
        _require(min(self.clip_size) >= 8, "bundle.clip_size", "a width and height >= 8", self.clip_size)
        _require(self.max_unpacked_mb >= 1, "bundle.max_unpacked_mb", "an integer >= 1", self.max_unpacked_mb)


@dataclass(frozen=True)
class CameraConfig:
    """The live loop (``source``) and replay clips (``make-clip``)."""

    source: str = ""
    model: str = ""
    reference: str = ""
    runtime: str = ""             # for model/reference given: "" the file type's runtime, or e.g. openvino
    shadow_every: int = 10
    headless: bool = False
    video_out: str = ""
    preview_port: int = -1        # -1: no MJPEG preview; 0: any free port
    preview_host: str = "127.0.0.1"
    smoothing: float = 0.0        # temporal smoothing of probabilities (EMA weight of the past)
    top_k: int = 3
    summary: str = ""
    max_frames: int = 0
    retries: int = 3
    timeout_s: float = 10.0
    out: str = ""
    clip_images: int = 100
    frames_per_image: int = 10
    clip_size: Tuple[int, int] = (640, 480)
    clip_motion: float = 0.1      # drift/zoom of replay clips, as a fraction of the view
    int8_threads: int = 0         # threads per stage; 0: the cores the other stages leave
    fp32_threads: int = 1         # the FP32 shadow's (it skips frames rather than stall INT8)
    opencv_threads: int = 1       # OpenCV's pool: decode, resize, drawing

    def __post_init__(self) -> None:
        _require(self.shadow_every >= 1, "camera.shadow_every", "an integer >= 1", self.shadow_every)
        _require(0 <= self.smoothing < 1, "camera.smoothing", "0 <= x < 1", self.smoothing)
        _require(-1 <= self.preview_port <= 65535, "camera.preview_port",
                 "-1 (off), 0 (any free port) or a port up to 65535", self.preview_port)
        _require(min(self.int8_threads, self.fp32_threads, self.opencv_threads) >= 0,
                 "camera.int8_threads/fp32_threads/opencv_threads", "0 (automatic) or a positive count",
                 (self.int8_threads, self.fp32_threads, self.opencv_threads))
        _require(self.retries >= 0 and self.max_frames >= 0 and self.clip_images >= 0,
                 "camera.retries/max_frames/clip_images", "integers >= 0",
                 (self.retries, self.max_frames, self.clip_images))
        _require(self.timeout_s > 0 and self.top_k >= 1, "camera.timeout_s/top_k", "a positive timeout, top_k >= 1",
                 (self.timeout_s, self.top_k))
        _require(min(self.clip_size) >= 8, "camera.clip_size", "a width and height >= 8", self.clip_size)
        _require(0 <= self.clip_motion < 1, "camera.clip_motion", "0 <= x < 1", self.clip_motion)
        _require(self.frames_per_image >= 1, "camera.frames_per_image", "an integer >= 1",
                 self.frames_per_image)


@dataclass(frozen=True)
class DeepStreamConfig:
    """The ``nvinfer`` config of the ``deepstream`` stage: a primary classifier on whole frames
    (``process_mode`` 1) or a secondary one on the objects of the detector ``operate_on_gie_id``
    (``process_mode`` 2; -1: any), optionally only those of ``operate_on_class_ids``.
    ``classifier_threshold`` compares the Softmax probability the folded model outputs."""

    process_mode: int = 1
    gie_id: int = 1
    operate_on_gie_id: int = -1
    operate_on_class_ids: Tuple[int, ...] = ()
    classifier_threshold: float = 0.5
    gpu_id: int = 0
    maintain_aspect_ratio: bool = True   # letterbox (symmetric padding) instead of stretching

    def __post_init__(self) -> None:
        _require(self.process_mode in (1, 2), "deepstream.process_mode", "1 (primary) or 2 (secondary)",
                 self.process_mode)
        _require(self.gie_id >= 1 and self.gpu_id >= 0, "deepstream.gie_id/gpu_id", "gie_id >= 1 and gpu_id >= 0",
                 (self.gie_id, self.gpu_id))
        _require(0 <= self.classifier_threshold < 1, "deepstream.classifier_threshold",
                 "a probability 0 <= x < 1", self.classifier_threshold)
        _require(self.operate_on_gie_id >= -1 and self.operate_on_gie_id != self.gie_id,
                 "deepstream.operate_on_gie_id", "-1 (any) or another element's gie id", self.operate_on_gie_id)
        _require(all(c >= 0 for c in self.operate_on_class_ids), "deepstream.operate_on_class_ids",
                 "class ids >= 0", self.operate_on_class_ids)
        _require(self.process_mode == 2 or (self.operate_on_gie_id == -1 and not self.operate_on_class_ids),
                 "deepstream.operate_on_gie_id/operate_on_class_ids", "only with process_mode = 2 (secondary)",
                 (self.operate_on_gie_id, self.operate_on_class_ids))


@dataclass(frozen=True)
class BenchConfig:
    """Latency measurement: the batch every model is timed at."""

    batch: int = 1

    def __post_init__(self) -> None:
        _require(self.batch >= 1, "bench.batch", "an integer >= 1", self.batch)


@dataclass(frozen=True)
class TritonConfig:
    """The Triton model repository (``triton``) and the served-model benchmark (``bench-triton``).

    ``preferred_batch`` () leaves Triton's dynamic batcher to form the largest batch it can
    from what is queued (its documented default); ``onnx_kind`` auto puts the ONNX Runtime
    models on the GPU of a GPU target and on the CPU of the cpu target. ``bench-triton``
    serves ``serve_model`` (model.int8.onnx or model.fp32.onnx) and sends one image a
    request at each concurrency, each level stopped at ``bench_requests`` or
    ``bench_seconds``, whichever comes first."""

    preferred_batch: Tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    instances: int = 1
    onnx_kind: str = "auto"
    serve_model: str = "int8"
    threads: int = 0              # ONNX Runtime threads of the served runner; 0: one per core
    bench_concurrency: Tuple[int, ...] = (1, 4, 16)
    bench_requests: int = 400
    bench_seconds: float = 10.0
    bench_protocol: str = "grpc"
    bench_images: int = 64        # distinct val images the requests cycle through

    def __post_init__(self) -> None:
        _require(all(s >= 1 for s in self.preferred_batch), "triton.preferred_batch", "batch sizes >= 1",
                 self.preferred_batch)
        _require(self.max_queue_delay_us >= 0 and self.threads >= 0, "triton.max_queue_delay_us/threads",
                 "integers >= 0", (self.max_queue_delay_us, self.threads))
        _require(self.instances >= 1 and self.bench_requests >= 1 and self.bench_images >= 1,
                 "triton.instances/bench_requests/bench_images", "integers >= 1",
                 (self.instances, self.bench_requests, self.bench_images))
        _one_of("triton.onnx_kind", self.onnx_kind, ("auto", "gpu", "cpu"))
        _one_of("triton.serve_model", self.serve_model, ("int8", "fp32"))
        _one_of("triton.bench_protocol", self.bench_protocol, ("grpc", "http"))
        _require(bool(self.bench_concurrency) and all(c >= 1 for c in self.bench_concurrency),
                 "triton.bench_concurrency", "a list of concurrency levels >= 1", self.bench_concurrency)
        _require(self.bench_seconds > 0, "triton.bench_seconds", "a positive time limit", self.bench_seconds)


@dataclass(frozen=True)
class ReportConfig:
    """The regression report: ``baseline`` a history id (0: last accepted on this target)."""

    baseline: int = 0
    accept: bool = False
    accept_regression: bool = False  # --accept on a report that failed its gate needs this too
    history: str = "build/reports/history.sqlite"
    min_noise: float = 0.10       # p99 may rise this much (or the runs' own spread) before it counts
    accuracy_tolerance: float = 0.005

    def __post_init__(self) -> None:
        _require(self.baseline >= 0, "report.baseline", "0 (last accepted) or a report id", self.baseline)
        _require(self.min_noise >= 0 and self.accuracy_tolerance >= 0, "report.min_noise/accuracy_tolerance",
                 "values >= 0", (self.min_noise, self.accuracy_tolerance))


@dataclass(frozen=True)
class Config:
    """The whole pipeline's configuration, one section a stage or concern."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    imported: ImportConfig = field(default_factory=ImportConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    deepstream: DeepStreamConfig = field(default_factory=DeepStreamConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)

    @property
    def run_name(self) -> str:
        """The run's folder name: given, or derived from the data and model."""
        return self.run.name or f"{self.data.ident}-{self.model.name}"

    @property
    def run_dir(self) -> Path:
        return Path(self.run.root) / self.run_name


def load_config(path: Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (TOML; defaults where absent), apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw = read_toml(Path(path))
    for item in sets:
        _apply_set(raw, item)
    try:
        return _build(Config, raw, "", source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict (tuples as lists), for checkpoints, sidecars and :func:`dump_toml`."""
    return _plain(dataclasses.asdict(cfg))


def build_dataclass(cls: type, raw: dict[str, Any], source: str) -> Any:
    """Any frozen config dataclass from a TOML table, with the same checks as :class:`Config`
    (unknown keys and wrong types refused, naming ``source`` and the key)."""
    try:
        return _build(cls, raw, "", source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_from_dict(data: dict[str, Any], source: str = "checkpoint") -> Config:
    """Rebuild a :class:`Config` saved by :func:`config_to_dict` (e.g. inside a checkpoint)."""
    return _build(Config, data, "", source)


def dump_toml(cfg: Config) -> str:
    """TOML text of the resolved configuration; ``load_config`` reads it back unchanged."""
    lines: list[str] = []
    for section, values in config_to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _apply_set(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    section, name = key.strip().split(".", 1)
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raise ConfigError(f"--set {item!r}: {section} is not a section")
    raw[section][name] = _parse_value(text.strip())


def _parse_value(text: str) -> Any:
    """TOML value syntax (``3``, ``true``, ``[1, 2]``, ``"x"``); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{prefix}]: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"[{prefix}]" if prefix else "top level"
        raise ConfigError(f"unknown key '{_join(prefix, unknown[0])}' "
                          f"(known in {where}: {', '.join(sorted(names))})")
    values = {k: _coerce(hints[k], v, _join(prefix, k), source) for k, v in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, source)
    origin = typing.get_origin(hint)
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), key, "a list", value)
        args = typing.get_args(hint)
        item = args[0]
        if args[-1] is not Ellipsis:
            _require(len(value) == len(args), key, f"a list of {len(args)} values", value)
        return tuple(_coerce(item, v, key, source) for v in value)
    if hint is float:  # TOML allows inf and nan; no setting of ours means anything with them
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number", value)
        _require(math.isfinite(value), key, "a finite number", value)
        return float(value)
    if hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        return value
    if hint is bool:
        _require(isinstance(value, bool), key, "true or false", value)
        return value
    if hint is str:
        _require(isinstance(value, str), key, "a string", value)
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # a bug in this module, not in the file


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} as TOML")


__all__ = [
    "Config", "RunConfig", "DataConfig", "ModelConfig", "PreprocessConfig", "TrainConfig",
    "ExportConfig", "CalibrateConfig", "QuantizeConfig", "EvaluateConfig", "load_config", "build_dataclass", "read_toml", "config_to_dict", "config_from_dict", "dump_toml",
]
