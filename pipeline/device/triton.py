"""The triton stage: ``make triton TARGET=<t>`` writes ``build/<run>/model_repository/``.

Triton Inference Server is how most NVIDIA datacenter (and many Jetson) deployments
serve a model, so the run's artifacts are laid out as a Triton model repository:

- ``<name>_<precision>_trt/``: the target's engine as ``1/model.plan`` (the plan's bytes
  as TensorRT wrote them: Triton's TensorRT backend deserializes the file as it is),
  platform ``tensorrt_plan``; left out on the ``cpu`` target, which builds no engine;
- ``<name>_fp32_onnx/`` and ``<name>_int8_onnx/``: ``model.fp32.onnx`` and
  ``model.int8.onnx`` for the ONNX Runtime backend (``onnxruntime_onnx``), on the GPU of a
  GPU target and on the CPU of the cpu target.

Every ``config.pbtxt`` takes its input and output names, dims and types from the ONNX
graph itself (batch axis excluded), ``max_batch_size`` from the target profile (the
engine's optimisation profile ends there), dynamic batching, the class names as the
output's ``labels.txt``, and the preprocessing a client must apply as ``parameters``.
The repository is built in a temporary folder beside it and renamed into place, so a
failure never leaves a half-written repository that Triton would try to load.
Runs on the device (Python 3.8/3.10, NumPy 1.x): onnx and the standard library only.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import onnx

from pipeline.artifacts import atomic_folder, check_input_unchanged, provenance, read_json, sidecar_path, write_json
from pipeline.config import Config, TritonConfig
from pipeline.device.deployment import deployment
from pipeline.errors import ConfigError, PipelineError, StaleArtifactError
from pipeline.onnx_meta import META_PREFIX, graph_inputs, load_onnx, read_metadata
from targets.detect import target_profile
from targets.profile import TargetProfile

REPOSITORY = "model_repository"
LABELS = "labels.txt"
VERSION = "1"
ONNX_MODELS = (("fp32", "model.fp32.onnx"), ("int8", "model.int8.onnx"))
DATA_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32"}  # the only type an image classifier of ours takes and gives
PREPROCESSING_KEY = META_PREFIX + "preprocessing"   # the config parameter a client reads its preprocessing from
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class TritonModelError(PipelineError):
    """A model whose inputs or outputs a Triton image-classifier config cannot describe."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as config.pbtxt declares it: dims without the batch axis."""

    name: str
    dims: Tuple[int, ...]
    data_type: str = "TYPE_FP32"


@dataclass(frozen=True)
class ModelEntry:
    """One model folder of the repository: what is copied into ``1/`` and how it runs."""

    name: str
    platform: str
    source: Path
    filename: str
    kind: str
    input: TensorSpec
    output: TensorSpec


@dataclass(frozen=True)
class Batching:
    """What every model of the repository shares: the profile's max batch and the batcher."""

    max_batch: int
    preferred: Tuple[int, ...]
    max_queue_delay_us: int


def run(cfg: Config) -> Path:
    """Write the target's model repository; returns its folder."""
    out = cfg.run_dir
    profile = target_profile(cfg.engine.target, fit=False)  # packaging: the engine was built (and checked) already
    name = model_name(cfg.run_name)
    entries = onnx_entries(out, name, onnx_kind(cfg.triton, profile))
    plan = plan_entry(out, name, profile)
    if plan is None:
        print(f"target {profile.name} runs a CPU runtime: no TensorRT engine, so the repository holds the "
              f"ONNX Runtime models only")
    else:
        entries.insert(0, plan)
    meta = read_metadata(out / "model.fp32.onnx")
    labels = class_labels(meta["class_names"])
    for entry in entries:
        check_labels(entry, labels)
    batching = batching_for(cfg.triton, profile)
    parameters = client_parameters(meta["preprocessing"])
    folder = write_repository(out / REPOSITORY, entries, labels, batching, parameters, cfg.triton.instances)
    write_json(sidecar_path(folder), repository_record(entries, profile, batching))
    print(f"wrote {folder}: {', '.join(e.name for e in entries)} (max batch {batching.max_batch}, {profile.name})")
    return folder


def repository_record(entries: Sequence[ModelEntry], profile: TargetProfile, batching: Batching) -> Dict[str, object]:
    """``model_repository.json`` beside the repository: what each model folder holds, made
    from which file (with its hash), for which target."""
    record = provenance("triton", {entry.name: entry.source for entry in entries})
    record.update(target=profile.name, max_batch_size=batching.max_batch, preferred_batch=list(batching.preferred),
                  models={e.name: {"platform": e.platform, "kind": e.kind, "input": [e.input.name, list(e.input.dims)],
                                   "output": [e.output.name, list(e.output.dims)]} for e in entries})
    return record


def model_name(run_name: str) -> str:
    """The run's name in the characters Triton (and PyTriton) accept in a model name:
    letters, digits, ``_``, ``.`` and ``-``, never starting with a dot (a hidden folder)."""
    name = _NAME_CHARS.sub("_", run_name).lstrip(".-_")
    return name or "model"


def onnx_kind(settings: TritonConfig, profile: TargetProfile) -> str:
    """``KIND_GPU`` for the ONNX models of a GPU target (what Triton users there expect),
    ``KIND_CPU`` on the cpu target; ``triton.onnx_kind`` can fix either."""
    if settings.onnx_kind != "auto":
        return f"KIND_{settings.onnx_kind.upper()}"
    return "KIND_CPU" if profile.on_cpu else "KIND_GPU"


def onnx_entries(out: Path, name: str, kind: str) -> List[ModelEntry]:
    """The FP32 and INT8 ONNX models for the ONNX Runtime backend; both must exist."""
    entries = []
    for precision, filename in ONNX_MODELS:
        path = out / filename
        if not path.is_file():
            raise StaleArtifactError(f"{path}: not found; run make quantize first")
        inp, outp = interface(path)
        entries.append(ModelEntry(f"{name}_{precision}_onnx", "onnxruntime_onnx", path, "model.onnx", kind,
                                  inp, outp))
    return entries


def plan_entry(out: Path, name: str, profile: TargetProfile) -> Optional[ModelEntry]:
    """The target's engine for the TensorRT backend (None on a CPU target), its I/O read
    from the ONNX it was built from, which must not have changed since."""
    if profile.on_cpu:
        return None
    engine = deployment(out, profile).model.path
    if not engine.is_file():
        raise StaleArtifactError(f"{engine}: not built; run make engine TARGET={profile.name} first")
    record = read_json(sidecar_path(engine))
    onnx_path = out / str(record.get("onnx_file", "model.int8.onnx"))
    check_input_unchanged(record, "onnx", onnx_path, engine)
    inp, outp = interface(onnx_path)
    return ModelEntry(f"{name}_{profile.precision}_trt", "tensorrt_plan", engine, "model.plan", "KIND_GPU",
                      inp, outp)


# --- reading the model -----------------------------------------------------------------------


def interface(path: Path) -> Tuple[TensorSpec, TensorSpec]:
    """The (batch, 3, H, W) float input and (batch, classes) float output of an ONNX
    classifier, batch axis dropped; anything else is refused naming the file."""
    graph = load_onnx(path, external_data=False).graph
    inputs = graph_inputs(graph)
    if len(inputs) != 1 or len(graph.output) != 1:
        raise TritonModelError(f"{path}: expected one input and one output, got {len(inputs)} and "
                               f"{len(graph.output)}")
    return image_input(path, inputs[0]), class_output(path, graph.output[0])


def image_input(path: Path, value: onnx.ValueInfoProto) -> TensorSpec:
    dims = _dims(value)
    shape = "x".join(str(d) if d is not None else "?" for d in dims)
    data_type = DATA_TYPES.get(value.type.tensor_type.elem_type)
    if data_type is None or len(dims) != 4 or dims[1] != 3:
        raise TritonModelError(f"{path}: input '{value.name}' is not a (batch, 3, H, W) float image "
                               f"(shape {shape or 'unknown'}, {_type_name(value)}); Triton's image "
                               f"classifier config needs one")
    if dims[2] is None or dims[3] is None:
        raise TritonModelError(f"{path}: input '{value.name}' has a dynamic height or width ({shape}); "
                               f"export it at a fixed size (the engine and the labels assume one)")
    if dims[0] is not None:
        raise TritonModelError(f"{path}: input '{value.name}' has a fixed batch of {dims[0]}; export it "
                               f"with a dynamic batch axis for Triton's batching")
    return TensorSpec(value.name, tuple(dims[1:]), data_type)


def class_output(path: Path, value: onnx.ValueInfoProto) -> TensorSpec:
    dims = _dims(value)
    data_type = DATA_TYPES.get(value.type.tensor_type.elem_type)
    if data_type is None or len(dims) != 2 or dims[1] is None:
        shape = "x".join(str(d) if d is not None else "?" for d in dims)
        raise TritonModelError(f"{path}: output '{value.name}' is not (batch, classes) float logits "
                               f"(shape {shape or 'unknown'}, {_type_name(value)})")
    return TensorSpec(value.name, (dims[1],), data_type)


def _dims(value: onnx.ValueInfoProto) -> List[Optional[int]]:
    """Each axis's size, None where it is symbolic or unknown."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim]


def _type_name(value: onnx.ValueInfoProto) -> str:
    return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()


def class_labels(names: Sequence[str]) -> List[str]:
    """One readable class name per line (``class_names`` of our metadata; a name with a
    line break would shift every later label, so breaks become spaces)."""
    return [" ".join(str(name).split()) or str(i) for i, name in enumerate(names)]


def check_labels(entry: ModelEntry, labels: Sequence[str]) -> None:
    if entry.output.dims[0] != len(labels):
        raise TritonModelError(f"{entry.source}: output '{entry.output.name}' has {entry.output.dims[0]} classes, "
                               f"the model's metadata names {len(labels)}")


def client_parameters(preprocessing: Dict[str, object]) -> Dict[str, str]:
    """The preprocessing a client must apply (resize, crop, mean/std), as our ONNX
    metadata records it, so a client reads it back from the config instead of re-typing it."""
    return {PREPROCESSING_KEY: json.dumps(preprocessing, sort_keys=True)}


def batching_for(settings: TritonConfig, profile: TargetProfile) -> Batching:
    """The profile's max batch (the engine's optimisation profile ends there) and the
    dynamic batcher's preferred sizes, none above it."""
    too_big = [size for size in settings.preferred_batch if size > profile.max_batch]
    if too_big:
        raise ConfigError(f"triton.preferred_batch: expected sizes up to target {profile.name}'s max_batch "
                          f"{profile.max_batch}, got {too_big[0]}")
    return Batching(profile.max_batch, tuple(sorted(set(settings.preferred_batch))), settings.max_queue_delay_us)


# --- writing the repository ------------------------------------------------------------------


def config_text(entry: ModelEntry, batching: Batching, parameters: Dict[str, str], instances: int = 1) -> str:
    """config.pbtxt in protobuf text format (Triton's ``ModelConfig`` message)."""
    lines = [f"name: {quote(entry.name)}", f"platform: {quote(entry.platform)}",
             f"max_batch_size: {batching.max_batch}",
             "input [", "  {", f"    name: {quote(entry.input.name)}", f"    data_type: {entry.input.data_type}",
             "    format: FORMAT_NCHW", f"    dims: {_list(entry.input.dims)}", "  }", "]",
             "output [", "  {", f"    name: {quote(entry.output.name)}", f"    data_type: {entry.output.data_type}",
             f"    dims: {_list(entry.output.dims)}", f"    label_filename: {quote(LABELS)}", "  }", "]",
             "instance_group [", "  {", f"    count: {instances}", f"    kind: {entry.kind}", "  }", "]",
             "dynamic_batching {"]
    if batching.preferred:
        lines.append(f"  preferred_batch_size: {_list(batching.preferred)}")
    if batching.max_queue_delay_us:
        lines.append(f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}")
    lines.append("}")
    for key, value in parameters.items():
        lines += ["parameters {", f"  key: {quote(key)}", f"  value: {{ string_value: {quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def quote(text: str) -> str:
    """A protobuf text-format string literal: UTF-8 as it is, quotes, backslashes and
    control characters escaped."""
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _list(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def write_repository(final: Path, entries: Sequence[ModelEntry], labels: Sequence[str], batching: Batching,
                     parameters: Dict[str, str], instances: int = 1) -> Path:
    """Build the repository in a temporary folder and swap it in whole (``atomic_folder``)."""
    with atomic_folder(Path(final)) as staging:
        for entry in entries:
            write_model(staging / entry.name, entry, labels, batching, parameters, instances)
    return Path(final)


def write_model(folder: Path, entry: ModelEntry, labels: Sequence[str], batching: Batching,
                parameters: Dict[str, str], instances: int) -> None:
    version = folder / VERSION
    version.mkdir(parents=True)
    shutil.copyfile(entry.source, version / entry.filename)
    for name in external_data_files(entry.source):
        shutil.copyfile(entry.source.parent / name, version / name)
    (folder / LABELS).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    (folder / "config.pbtxt").write_text(config_text(entry, batching, parameters, instances), encoding="utf-8")


def external_data_files(path: Path) -> List[str]:
    """The files an ONNX model keeps its weights in beside it (over 2 GB, or imported so),
    which Triton's ONNX Runtime backend reads from the version folder; a plan has none."""
    if path.suffix != ".onnx":
        return []
    names = set()
    for tensor in load_onnx(path, external_data=False).graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(entry.value for entry in tensor.external_data if entry.key == "location")
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts or not (path.parent / name).is_file():
            raise StaleArtifactError(f"{path}: external weights '{name}' are not a file beside the model")
    return sorted(names)
