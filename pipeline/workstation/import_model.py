"""The import stage: a classifier this project did not train enters the pipeline.

Most users arrive with a model trained elsewhere (torchvision, timm, their own). ``import``
turns it into the run's ``model.fp32.onnx`` carrying our metadata (labels, preprocessing,
where it came from), so calibrate, quantize, evaluate, bundle, engine, camera, bench and
report take it unchanged. What cannot be deployed is refused here, with the reason, rather
than deep inside a TensorRT build on the device: an input that is not one image batch, a
spatial size neither the graph nor the preprocessing fixes, operators TensorRT's ONNX
parser lacks, a graph already quantized, an output that is not one score per label.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.artifacts import atomic_path, provenance, sha256_file, sidecar_path, write_json
from pipeline.config import Config, config_to_dict
from pipeline.errors import ConfigError, ExportError
from pipeline.imagefolder import for_model
from pipeline.onnx_meta import graph_inputs, load_onnx, set_metadata
from pipeline.preprocess import Preprocessing
from pipeline.runners.compare import require_finite
from pipeline.workstation.data import open_dataset
from pipeline.workstation.export import parity_inputs

# ImageNet's normalisation and resize-then-crop ratio (torchvision's classification presets)
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_ratio": 0.875, "size": 224}
# Operators the ONNX parser of TensorRT 8.x (JetPack 5; 10 adds a few) does not support
# (onnx-tensorrt docs/operators.md, "N"), and operators of models quantized elsewhere: the
# pipeline quantizes an FP32 graph itself.
UNSUPPORTED_OPS = frozenset({
    "BitShift", "Compress", "ConcatFromSequence", "ConvInteger", "Det", "DynamicQuantizeLinear", "Hardmax",
    "IsInf", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MeanVarianceNormalization", "Mod", "Multinomial",
    "NegativeLogLikelihoodLoss", "NonZero", "OneHot", "QLinearConv", "QLinearMatMul", "RandomNormal",
    "RandomNormalLike", "Reciprocal", "RoiAlign", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
    "SequenceErase", "SequenceInsert", "SequenceLength", "Shrink", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringNormalizer", "TfIdfVectorizer", "Unique"})
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
MIN_OPSET = 13  # per-channel QuantizeLinear (axis) needs opset 13


def run(cfg: Config) -> Path:
    """Write ``build/<run>/model.fp32.onnx`` (and its sidecar) from the imported model."""
    imp = cfg.imported
    if not (imp.onnx or imp.torchvision) or not imp.classes:
        raise ConfigError("import: give --onnx FILE (or --torchvision NAME --weights FILE) and --classes labels.txt")
    classes, names = read_labels(Path(imp.classes))
    out = cfg.run_dir
    refuse_trained_run(out)
    target = out / "model.fp32.onnx"
    val = open_dataset(cfg.data).split("val")
    parity: dict[str, Any] | None = None
    if imp.onnx:
        source = Path(imp.onnx)
        proto, pre = onnx_model(source, imp.preprocessing)
    else:
        source, proto, pre = Path(imp.weights), None, torchvision_preprocessing(imp.preprocessing)
    images = parity_inputs(for_model(val, classes, names), pre, cfg)  # one decode: parity and smoke test
    with atomic_path(target) as tmp:
        if proto is None:
            parity = export_torchvision(cfg, source, len(classes), images, tmp)
            proto = onnx.load(str(tmp))
        check_deployable(proto, len(classes), pre, source)
        set_metadata(proto, import_metadata(classes, names, pre, imp.torchvision or source.stem, source))
        onnx.save(proto, str(tmp))
        smoke = smoke_test(tmp, images, pre, len(classes), source)
        record = provenance("import", {"source": source})
        record.update(onnx_sha256=sha256_file(tmp), imported=imp.torchvision or "onnx", classes=len(classes),
                      input={"name": proto.graph.input[0].name, "shape": ["batch", 3, pre.input_size, pre.input_size]},
                      output={"name": proto.graph.output[0].name, "shape": ["batch", len(classes)]},
                      smoke=smoke, config=config_to_dict(cfg), **({"parity": parity} if parity else {}))
        write_json(sidecar_path(target), record)
    print(f"imported {source} -> {target}: {len(classes)} labels, input {pre.input_size}x{pre.input_size}, "
          f"top-1 {smoke['top1']:.2%} on {smoke['images']} val images ({smoke['data_classes']} of the data's classes)")
    return target


def read_labels(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Class ids and readable names, in output order: one label a line, or ``id<TAB>name``
    (ImageNet's WordNet ids beside their names). Duplicate names (ImageNet has two
    ``crane``s) get their index appended to the id, so every id is unique."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the labels file ({exc})") from None
    rows = [line.split("\t", 1) for line in lines if line]
    if not rows:
        raise ConfigError(f"{path}: no labels (expected one label a line, or id<TAB>name)")
    names = tuple(row[-1].strip() for row in rows)
    ids = [row[0].strip() if len(row) == 2 else row[0] for row in rows]
    seen: dict[str, int] = {}
    for i, label in enumerate(ids):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            ids[i] = f"{label} ({i})"
    return tuple(ids), names


def refuse_trained_run(out: Path) -> None:
    """An import never overwrites a run this pipeline trained (its model.pt would then
    describe another model than model.fp32.onnx)."""
    if (out / "model.pt").is_file():
        raise ConfigError(f"{out}: holds a trained model (model.pt); import into a new run (--run NAME)")


def onnx_model(path: Path, preprocessing: str) -> tuple[onnx.ModelProto, Preprocessing]:
    """The file, upgraded to an opset with per-channel Q/DQ, its spatial size fixed."""
    proto = load_onnx(path)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, 17)
        except Exception as exc:  # the converter raises many types; the user needs the reason
            raise ExportError(f"{path}: opset {opset} is older than {MIN_OPSET} (needed for per-channel INT8) "
                              f"and could not be converted ({str(exc).splitlines()[0]})") from None
    size = spatial_size(proto, path)
    pre = preprocessing_for(preprocessing, size, path)
    fix_input_shape(proto, pre.input_size)
    return proto, pre


def spatial_size(proto: onnx.ModelProto, path: Path) -> int | None:
    """The input's square H = W, or None where the graph leaves it dynamic."""
    inputs = graph_inputs(proto.graph)
    if len(inputs) != 1:
        raise ExportError(f"{path}: {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an image "
                          f"classifier takes one (batch, 3, H, W) image tensor")
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        raise ExportError(f"{path}: input '{inputs[0].name}' is {_describe(tensor)}; expected a float32 "
                          f"(batch, 3, H, W) image tensor")
    if dims[2] != dims[3]:
        raise ExportError(f"{path}: input '{inputs[0].name}' is {dims[2]}x{dims[3]}; the pipeline's "
                          f"preprocessing makes square crops (H = W)")
    return dims[2]


def _describe(tensor: onnx.TypeProto.Tensor) -> str:
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    return f"{onnx.TensorProto.DataType.Name(tensor.elem_type).lower()} {tuple(dims)}"


def preprocessing_for(spec: str, size: int | None, path: Path) -> Preprocessing:
    """``imagenet`` (ImageNet mean/std, shorter side to size/0.875, centre crop to the
    graph's size, 224 where the graph leaves it open) or a JSON file of
    :class:`Preprocessing` fields, whose ``input_size`` may be left to the graph and the
    rest to the preset."""
    if spec == "imagenet":
        crop = size or IMAGENET["size"]
        return Preprocessing(crop, round(crop / IMAGENET["crop_ratio"]), IMAGENET["mean"], IMAGENET["std"])
    data = _read_json_object(Path(spec))
    given = data.get("input_size")
    if size is None and given is None:
        raise ExportError(f"{path}: the input's height and width are dynamic and {spec} gives no input_size; "
                          f"give one (the size the model was trained at)")
    if size is not None and given is not None and given != size:
        raise ExportError(f"{path}: the graph takes {size}x{size} images but {spec} says input_size {given}")
    crop = int(given or size)
    data = {"resize": round(crop / IMAGENET["crop_ratio"]), "mean": IMAGENET["mean"], "std": IMAGENET["std"],
            **data, "input_size": crop}  # fields left out are the ImageNet preset's
    try:
        return Preprocessing.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{spec}: {exc}") from None


def torchvision_preprocessing(spec: str) -> Preprocessing:
    """A torchvision classifier takes any size: the preprocessing names it (224 for ``imagenet``)."""
    return preprocessing_for(spec, None, Path(spec))


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable preprocessing JSON file ({exc}); or give 'imagenet'") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of preprocessing fields, got {type(data).__name__}")
    return data


def fix_input_shape(proto: onnx.ModelProto, size: int) -> None:
    """Spatial dims fixed to the preprocessing's size; the batch axis made dynamic, as
    engines' profiles and Triton's dynamic batching need (checked later by running batch 2)."""
    dims = graph_inputs(proto.graph)[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "batch"
    for dim in dims[2:]:
        dim.Clear()
        dim.dim_value = size
    for output in proto.graph.output:
        out_dims = output.type.tensor_type.shape.dim
        if out_dims:
            out_dims[0].Clear()
            out_dims[0].dim_param = "batch"


def check_deployable(proto: onnx.ModelProto, classes: int, pre: Preprocessing, path: Path) -> None:
    """What TensorRT's parser and our Q/DQ rules need: known standard operators, no
    quantization already in the graph, and one (batch, classes) output."""
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise ExportError(f"{path}: custom-domain operators TensorRT cannot parse: {', '.join(foreign[:5])}")
    ops = {n.op_type for n in _all_nodes(proto.graph)}
    if ops & QUANTIZED_OPS:
        raise ExportError(f"{path}: already quantized (QuantizeLinear/DequantizeLinear); import the FP32 model, "
                          f"the pipeline quantizes it")
    unsupported = sorted(ops & UNSUPPORTED_OPS)
    if unsupported:
        raise ExportError(f"{path}: operators TensorRT's ONNX parser does not support: {', '.join(unsupported)}")
    if len(proto.graph.output) != 1:
        raise ExportError(f"{path}: {len(proto.graph.output)} outputs; a classifier gives one (batch, classes) "
                          f"tensor of scores")
    output = onnx.shape_inference.infer_shapes(proto).graph.output[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in output.shape.dim]
    if output.HasField("shape") and (len(dims) != 2 or dims[1] not in (None, classes)):
        raise ExportError(f"{path}: output '{proto.graph.output[0].name}' has shape {dims}; the labels file names "
                          f"{classes} classes, expected (batch, {classes})")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: fails onnx.checker at input size {pre.input_size} "
                          f"({str(exc).splitlines()[0]})") from None


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, those in If/Loop/Scan bodies included."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                nodes.extend(_all_nodes(sub))
    return nodes


def import_metadata(classes: tuple[str, ...], names: tuple[str, ...], pre: Preprocessing, model: str,
                    source: Path) -> dict[str, str]:
    """The same keys an exported model carries, with where the model came from."""
    return {"classes": json.dumps(list(classes)), "class_names": json.dumps(list(names)),
            "preprocessing": json.dumps(pre.to_dict()),
            "model": json.dumps({"name": model, "imported": {"file": source.name, "sha256": sha256_file(source)}})}


def smoke_test(path: Path, images: tuple[np.ndarray, np.ndarray], pre: Preprocessing, classes: int,
               name: Path) -> dict[str, Any]:
    """The model (``path``, imported from ``name``) run on real val ``images`` (inputs,
    labels) by ONNX Runtime, one at a time and two at once: finite scores, one per label, a
    batch of two equal to two batches of one (a graph that baked batch 1 into a Reshape
    fails here, not in an engine build), and top-1 on the data's classes."""
    from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner

    x, labels = images
    runner = OnnxRuntimeRunner(path)
    try:
        logits = np.concatenate([_run(runner, x[i:i + 1], name, "cannot run it on "
                                      f"{pre.input_size}x{pre.input_size} images") for i in range(len(x))])
        pairs = _run(runner, x[:2], name, "fails on a batch of 2: the graph depends on its batch size "
                                          "(re-export it with a dynamic batch axis)")
    finally:
        runner.close()
    require_finite(logits, str(name), 0, 0)
    if logits.ndim != 2 or logits.shape[1] != classes:
        raise ExportError(f"{name}: gives scores of shape {logits.shape[1:]} an image; the labels file names "
                          f"{classes} classes")
    if len(x) >= 2 and not np.allclose(pairs, logits[:2], rtol=1e-3, atol=1e-4):
        raise ExportError(f"{name}: a batch of 2 gives other scores than two batches of 1; the graph "
                          f"depends on its batch size (re-export it with a dynamic batch axis)")
    return {"images": len(x), "top1": float((logits.argmax(1) == labels).mean()),
            "data_classes": len(set(labels.tolist()))}


def _run(runner: Any, batch: np.ndarray, name: Path, failure: str) -> np.ndarray:
    try:
        return runner.run(batch)
    except Exception as exc:  # ONNX Runtime's errors name the node; the user needs that line
        raise ExportError(f"{name}: ONNX Runtime {failure} ({str(exc).splitlines()[0][:200]})") from None


def export_torchvision(cfg: Config, weights: Path, classes: int, images: tuple[np.ndarray, np.ndarray],
                       out: Path) -> dict[str, Any]:
    """A torchvision architecture with the user's state dict (all of it: no fresh head),
    exported as our own models are and checked against PyTorch on real val ``images``."""
    from pipeline.workstation.export import check_parity, save_onnx
    from pipeline.workstation.models.weights import load_weights

    model = torchvision_model(cfg.imported.torchvision, classes)
    load_weights(model, weights, fresh_head=False)
    model.eval()
    save_onnx(model, images[0].shape[-1], out, cfg.export.opset, {}, weights)
    parity = check_parity(model, out, *images, cfg.export, name=out, reference=f"{weights} (PyTorch)")
    return parity.to_dict()


def torchvision_model(name: str, classes: int) -> Any:
    """torchvision's builder by name, without weights (they come from the user's file)."""
    from torchvision import models

    if name not in models.list_models(module=models):
        raise ConfigError(f"imported.torchvision: '{name}' is not a torchvision classifier; e.g. "
                          f"mobilenet_v3_small, efficientnet_b0, resnet50, convnext_tiny")
    return models.get_model(name, weights=None, num_classes=classes)
