"""The deepstream stage: ``make deepstream TARGET=<t>`` writes ``build/<run>/deepstream/``, all
DeepStream's ``nvinfer`` needs to run the run's classifier:

- ``model.int8.onnx`` and ``model.fp32.onnx``: the run's models with the normalisation nvinfer
  cannot express folded into the graph and a Softmax on the logits (see
  :mod:`pipeline.device.fold_normalization`);
- ``engines/<profile>/model.<precision>.engine`` (+ sidecar): built by our own builder from the
  folded model, on the machine that will run it, so ``model-engine-file`` names an engine that
  exists (nvinfer would otherwise build one itself, and for a ``network-mode=1`` model without
  a calibration file it falls back to FP16 with a warning);
- ``labels.txt``: nvinfer's classifier label format, every class of the one output on one line;
- ``config_infer_primary.txt`` (``config_infer_secondary.txt`` for ``process_mode = 2``): the
  ``[property]`` group of a GLib key file, paths relative to its folder as nvinfer resolves them;
- ``deepstream.json``: what was made from what, and what was folded.

The folder is written whole or not at all: built in a temporary folder beside it, then renamed.
Property names and meanings: "Gst-nvinfer File Configuration Specifications" in the DeepStream
developer guide, https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html,
and the parser that reads them (``gstnvinfer_property_parser.cpp`` in DeepStream's sources).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import onnx

from calibration.qdq import require_tensorrt_qdq
from pipeline.artifacts import atomic_folder, provenance, read_json, sidecar_path, write_json, write_text
from pipeline.config import Config, DeepStreamConfig
from pipeline.device.engine import build_one
from pipeline.device.fold_normalization import NvinferNormalization, fold_for_nvinfer, split_normalization
from pipeline.errors import ConfigError, StaleArtifactError
from pipeline.onnx_meta import graph_inputs, load_onnx, read_metadata
from pipeline.optional import import_pycuda
from pipeline.preprocess import Preprocessing
from pipeline.runners.tensorrt_runner import import_tensorrt, machine_identity
from targets.detect import detect_platform, target_profile
from targets.profile import TargetProfile

FOLDER = "deepstream"
RECORD = "deepstream.json"
LABELS = "labels.txt"
MODELS = ("model.fp32.onnx", "model.int8.onnx")
CONFIG_FILES = {1: "config_infer_primary.txt", 2: "config_infer_secondary.txt"}
# nvinfer's enums, as its documentation numbers them
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
NETWORK_TYPE_CLASSIFIER = 1
COLOR_FORMAT_RGB = 0  # our models take RGB (1 would be BGR, 2 GRAY)
# Our interpolation -> (scaling-filter: NvBufSurfTransform_Inter, scaling-compute-hw or None).
# Algo1 is cubic on the GPU but a 5-tap filter on a Jetson's VIC, so bicubic pins the GPU (1).
SCALING = {"nearest": (0, None), "bilinear": (1, None), "bicubic": (2, 1)}
LABEL_SEPARATOR = ";"


def run(cfg: Config) -> Path:
    """Fold, build, label and configure; returns the nvinfer config file."""
    out = cfg.run_dir
    platform = detect_platform()
    profile = target_profile(cfg.engine.target, platform=platform)
    refuse_profile(profile)
    sources = [out / name for name in MODELS]
    meta = read_metadata(sources[1])
    pre = Preprocessing.from_dict(meta["preprocessing"])
    norm = split_normalization(pre)
    trt = import_tensorrt(platform)
    identity = machine_identity(trt, import_pycuda("for the GPU's identity and buffers"), platform)
    final = out / FOLDER
    with atomic_folder(final) as tmp:
        for source in sources:
            write_folded(source, tmp / source.name, norm)
        engine = build_folded_engine(trt, tmp, profile, identity, (final, out))
        renamed = write_labels(tmp / LABELS, meta["class_names"])
        config = write_config(cfg.deepstream, tmp, profile, norm, engine, pre.interpolation, len(meta["class_names"]))
        write_json(tmp / RECORD, deepstream_record(sources, profile, norm, config.name, engine.relative_to(tmp),
                                                   renamed))
    say_written(final, config.name, profile, norm, renamed)
    return final / config.name


def refuse_profile(profile: TargetProfile) -> None:
    """nvinfer runs TensorRT engines: a CPU target has none. An implicit-calibrator profile
    builds INT8 from the FP32 ONNX and calibration tensors of our own normalisation, which the
    folded model does not take; DeepStream's engine comes from the explicit Q/DQ model."""
    if profile.on_cpu:
        raise ConfigError(f"deepstream: target {profile.name} runs a CPU runtime, no TensorRT; DeepStream's "
                          f"nvinfer needs a TensorRT target (e.g. --target jetson or desktop)")
    if profile.calibrator:
        raise ConfigError(f"deepstream: target {profile.name} builds INT8 with the implicit calibrator "
                          f"({profile.calibrator}); DeepStream's engine is built from the explicit Q/DQ model: "
                          f"use a profile without calibrator")


def write_folded(source: Path, target: Path, norm: NvinferNormalization) -> Path:
    """The folded twin of ``source``, checked by onnx (and a Q/DQ one by TensorRT's rules)."""
    folded = fold_for_nvinfer(load_onnx(source), norm, where=str(source))
    try:
        onnx.checker.check_model(folded)
    except onnx.checker.ValidationError as exc:
        raise StaleArtifactError(f"{source}: the folded model fails onnx.checker "
                                 f"({str(exc).splitlines()[0]})") from None
    onnx.save(folded, str(target))
    if any(n.op_type == "QuantizeLinear" for n in folded.graph.node):
        require_tensorrt_qdq(target)  # the checker `check-qdq` runs
    return target


def build_folded_engine(trt: Any, tmp: Path, profile: TargetProfile, identity: Dict[str, Any],
                        caches: Sequence[Path]) -> Path:
    """The target's engine from the folded model in ``tmp`` (INT8: the Q/DQ one), by the same
    builder as ``make engine``; its sidecar names the folder the engine will end up in."""
    seed_timing_cache(profile, tmp, caches)
    engine = build_one(trt, tmp, profile, profile.precision, identity)
    repoint_sidecar(engine, tmp, tmp.parent / FOLDER)
    return engine


def write_labels(path: Path, names: Sequence[str]) -> Dict[str, str]:
    """labels.txt; returns the names that had to change (see :func:`labels_line`)."""
    line, renamed = labels_line(names)
    write_text(path, line + "\n")
    return renamed


def write_config(ds: DeepStreamConfig, tmp: Path, profile: TargetProfile, norm: NvinferNormalization,
                 engine: Path, interpolation: str, classes: int) -> Path:
    """The nvinfer config for the engine's own ONNX, named for its process mode."""
    onnx_name = read_json(sidecar_path(engine))["onnx_file"]
    shape = model_shape(tmp / onnx_name, classes)
    props = nvinfer_properties(ds, profile, norm, shape, onnx_name, engine.relative_to(tmp), interpolation)
    return write_text(tmp / CONFIG_FILES[ds.process_mode], render_keyfile(props, header(profile, norm)))


def seed_timing_cache(profile: TargetProfile, tmp: Path, sources: Sequence[Path]) -> None:
    """Start from the timing cache of the last DeepStream build or of ``make engine`` on this
    machine (kernel timings: minutes on a Jetson); one made on another GPU is refused by
    TensorRT and the build starts afresh."""
    if not profile.timing_cache:
        return
    relative = Path("engines") / profile.name / profile.timing_cache
    found = next((s / relative for s in sources if (s / relative).is_file()), None)
    if found is not None:
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, tmp / relative)


def repoint_sidecar(engine: Path, tmp: Path, final: Path) -> None:
    """The engine's sidecar names its ONNX where it will be, not in the temporary folder."""
    record = read_json(sidecar_path(engine))
    for entry in record.get("inputs", {}).values():
        entry["path"] = str(final / Path(entry["path"]).resolve().relative_to(tmp.resolve()))
    write_json(sidecar_path(engine), record)


def labels_line(names: Sequence[str]) -> Tuple[str, Dict[str, str]]:
    """nvinfer's classifier labels: one line per output layer, its labels separated by ';'
    (``parseLabelsFile`` splits on every ';' and knows no escape), so a ';' or line break in a
    name becomes ',' or ' '. Returns the line and the names that had to change."""
    cleaned = [" ".join(str(n).replace(LABEL_SEPARATOR, ",").splitlines()) for n in names]
    return LABEL_SEPARATOR.join(cleaned), {str(n): c for n, c in zip(names, cleaned) if c != n}


def model_shape(path: Path, classes: int) -> Dict[str, Any]:
    """Input/output names, the network's C, H, W, and the classes of its output."""
    graph = load_onnx(path, external_data=False).graph
    image = graph_inputs(graph)[0]
    chw = [d.dim_value for d in image.type.tensor_type.shape.dim[1:]]
    if min(chw) < 1:
        raise StaleArtifactError(f"{path}: input '{image.name}' needs a fixed size (3, H, W), got {chw}")
    out_dim = graph.output[0].type.tensor_type.shape.dim[1]
    if out_dim.HasField("dim_value") and out_dim.dim_value != classes:
        raise StaleArtifactError(f"{path}: output '{graph.output[0].name}' has {out_dim.dim_value} classes, "
                                 f"the metadata names {classes}")
    return {"input": image.name, "output": graph.output[0].name, "chw": chw, "classes": classes}


def nvinfer_properties(ds: DeepStreamConfig, profile: TargetProfile, norm: NvinferNormalization,
                       shape: Dict[str, Any], onnx_name: str, engine: Path, interpolation: str) -> List[Tuple[str, Any]]:
    """The ``[property]`` keys, in the order a reader expects them; detector-only keys
    (cluster-mode, num-detected-classes, [class-attrs-*]) are left out."""
    scaling_filter, compute_hw = SCALING[interpolation]
    props: List[Tuple[str, Any]] = [
        ("gpu-id", ds.gpu_id), ("gie-unique-id", ds.gie_id),
        ("net-scale-factor", norm.net_scale_factor), ("offsets", list(norm.offsets)),
        ("model-color-format", COLOR_FORMAT_RGB),
        ("onnx-file", onnx_name), ("model-engine-file", engine.as_posix()), ("labelfile-path", LABELS),
        ("infer-dims", shape["chw"]), ("batch-size", profile.max_batch),
        ("network-mode", NETWORK_MODE[profile.precision]), ("network-type", NETWORK_TYPE_CLASSIFIER),
        ("process-mode", ds.process_mode), ("classifier-threshold", ds.classifier_threshold),
        ("output-blob-names", [shape["output"]]),
        ("maintain-aspect-ratio", int(ds.maintain_aspect_ratio)),
        ("scaling-filter", scaling_filter), ("workspace-size", profile.workspace_mb)]
    if ds.maintain_aspect_ratio:
        props.append(("symmetric-padding", 1))  # centred, as our centre crop is
    if compute_hw is not None:
        props.append(("scaling-compute-hw", compute_hw))
    if profile.dla_core >= 0:
        props += [("enable-dla", 1), ("use-dla-core", profile.dla_core)]
    return props + secondary_properties(ds)


def secondary_properties(ds: DeepStreamConfig) -> List[Tuple[str, Any]]:
    """A secondary classifier's filter: which detector's objects, of which of its classes."""
    props: List[Tuple[str, Any]] = []
    if ds.process_mode == 2 and ds.operate_on_gie_id >= 0:
        props.append(("operate-on-gie-id", ds.operate_on_gie_id))
    if ds.process_mode == 2 and ds.operate_on_class_ids:
        props.append(("operate-on-class-ids", list(ds.operate_on_class_ids)))
    return props


def render_keyfile(props: List[Tuple[str, Any]], comments: Sequence[str]) -> str:
    """A GLib key file with one ``[property]`` group: '#' comments, ``key=value``, lists
    separated by ';', string escapes as GKeyFile reads them."""
    lines = [f"# {c}" for c in comments] + ["[property]"]
    lines += [f"{key}={keyfile_value(value)}" for key, value in props]
    return "\n".join(lines) + "\n"


def keyfile_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ";".join(keyfile_value(v).replace(";", "\\;") for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same double
    text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "\\s" + text[1:] if text.startswith(" ") else text


def header(profile: TargetProfile, norm: NvinferNormalization) -> List[str]:
    folded = ("per-channel factor " + ", ".join(f"{f:.6g}" for f in norm.channel_scale) + " folded into the graph"
              if norm.folds else "nothing folded (the same std on every channel)")
    return ["DeepStream nvinfer config written by edgeresnet (python -m pipeline deepstream)",
            f"target {profile.name}; y = net-scale-factor * (x - offsets[c]), then {folded};",
            "the models end in a Softmax, so classifier-threshold is a probability.",
            "nvinfer resizes the whole frame (or object) to infer-dims: no centre crop as in training."]


def deepstream_record(sources: Sequence[Path], profile: TargetProfile, norm: NvinferNormalization,
                      config: str, engine: Path, renamed: Dict[str, str]) -> Dict[str, Any]:
    record = provenance("deepstream", {src.name: src for src in sources})
    record.update(target=profile.name, precision=profile.precision, config=config,
                  engine=engine.as_posix(), normalization=norm.to_dict(), folded=norm.folds,
                  renamed_labels=renamed)
    return record


def say_written(final: Path, config: str, profile: TargetProfile, norm: NvinferNormalization,
                renamed: Dict[str, str]) -> None:
    what = "per-channel std folded into the graph" if norm.folds else "nothing to fold"
    print(f"wrote {final / config} for {profile.name} ({profile.precision} engine, net-scale-factor "
          f"{norm.net_scale_factor:.6g}, offsets {', '.join(f'{o:.6g}' for o in norm.offsets)}; {what})")
    if renamed:
        print(f"{len(renamed)} label(s) had ';' or line breaks replaced for nvinfer (see {final / RECORD})")
