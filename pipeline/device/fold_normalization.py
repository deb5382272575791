"""Fold the part of our normalisation that DeepStream's nvinfer cannot express into the graph.

nvinfer normalises with ``y = net-scale-factor * (x - offsets[c])``: one scalar scale and
per-channel offsets ("Gst-nvinfer", DeepStream developer guide,
https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html).
Ours is ``(x * scale - mean[c]) / std[c]`` with a per-channel std, and

    (x * scale - mean[c]) / std[c] = [scale / s] * (x - mean[c] / scale) * [s / std[c]]

for any scalar ``s``. With ``s = max(std)`` nvinfer takes the mean and all of the scale one
scalar can carry, and the graph multiplies each channel by ``s / std[c]`` (all 1 when the std
is the same on every channel: then nothing is folded). The split is exact; only float
rounding differs. The factor is a Mul on the graph input, before the first QuantizeLinear of a
Q/DQ model, so the quantizer sees the very values it was calibrated on.

nvinfer's default classifier parser compares the output with ``classifier-threshold`` as if
it were a probability, so a Softmax is appended on the logits (unless the model ends in one).
Input and output names, the dynamic batch and our metadata stay; the metadata's
preprocessing becomes the folded model's own (same mean, std ``s`` on every channel), and
``edgeresnet.deepstream`` records what was folded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline.errors import StaleArtifactError
from pipeline.onnx_meta import META_PREFIX, fresh_name, graph_inputs, set_metadata
from pipeline.preprocess import Preprocessing


@dataclass(frozen=True)
class NvinferNormalization:
    """What nvinfer computes (``net_scale_factor``, ``offsets``) and the per-channel factor the
    graph applies after it, so the network sees exactly our normalised input."""

    net_scale_factor: float
    offsets: Tuple[float, float, float]
    channel_scale: Tuple[float, float, float]

    @property
    def folds(self) -> bool:
        """Whether the graph needs a per-channel factor (the std differs between channels)."""
        return any(f != 1.0 for f in self.channel_scale)

    def to_dict(self) -> Dict[str, Any]:
        return {"net_scale_factor": self.net_scale_factor, "offsets": list(self.offsets),
                "channel_scale": list(self.channel_scale)}


def split_normalization(pre: Preprocessing) -> NvinferNormalization:
    """Our per-channel normalisation as nvinfer's scalar scale and offsets plus the rest."""
    common = max(pre.std)
    return NvinferNormalization(net_scale_factor=_tidy(pre.scale / common),
                                offsets=tuple(_tidy(m / pre.scale) for m in pre.mean),
                                channel_scale=tuple(common / s for s in pre.std))


def _tidy(value: float) -> float:
    """12 significant digits (123.675, not 123.67500000000001): nvinfer reads these as float32,
    whose 7 digits this rounding leaves untouched."""
    return float(f"{value:.12g}")


def folded_preprocessing(pre: Preprocessing, norm: NvinferNormalization) -> Preprocessing:
    """The folded model's own preprocessing: nvinfer's y, in our terms (same mean, one std)."""
    common = pre.scale / norm.net_scale_factor
    return Preprocessing.from_dict({**pre.to_dict(), "std": [common] * 3})


def fold_for_nvinfer(model: onnx.ModelProto, norm: NvinferNormalization, softmax: bool = True,
                     where: str = "model") -> onnx.ModelProto:
    """A copy of ``model`` that takes nvinfer's ``y`` and (``softmax``) outputs probabilities.

    ``where`` names the file in errors. Raises :class:`StaleArtifactError` for a model nvinfer's
    classifier cannot take: not one (N, 3, H, W) input and one (N, classes) output."""
    folded = onnx.ModelProto.FromString(model.SerializeToString())
    image, output = _image_io(folded.graph, where)
    record: Dict[str, Any] = {**norm.to_dict(), "input": image, "output": output, "softmax": False}
    if norm.folds:
        _prepend_channel_scale(folded.graph, image, norm.channel_scale)
    if softmax and _producer(folded.graph, output) != "Softmax":
        _append_softmax(folded.graph, output)
        record["softmax"] = True
    _record(folded, norm, record, where)
    return folded


def _image_io(graph: onnx.GraphProto, where: str) -> Tuple[str, str]:
    """The names of the one image input and the one (batch, classes) output."""
    inputs = graph_inputs(graph)
    if len(inputs) != 1 or len(graph.output) != 1:
        raise StaleArtifactError(f"{where}: nvinfer's classifier needs one input and one output, the model has "
                                 f"{len(inputs)} and {len(graph.output)}")
    dims = _dims(inputs[0])
    if len(dims) != 4 or dims[1] != 3:
        raise StaleArtifactError(f"{where}: input '{inputs[0].name}' is {dims}, expected (batch, 3, H, W)")
    if len(_dims(graph.output[0])) != 2:
        raise StaleArtifactError(f"{where}: output '{graph.output[0].name}' is {_dims(graph.output[0])}, "
                                 f"expected (batch, classes) for nvinfer's classifier parser")
    return inputs[0].name, graph.output[0].name


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]


def _prepend_channel_scale(graph: onnx.GraphProto, image: str, scale: Tuple[float, float, float]) -> None:
    """``image * scale[c]`` feeds every node that read the image (the first QuantizeLinear of
    a Q/DQ model, the first convolution of an FP32 one)."""
    scaled = _fresh(graph, f"{image}_channel_scaled")
    factor = _fresh(graph, "deepstream_channel_scale")
    _rename_uses(graph, image, scaled)
    graph.initializer.append(numpy_helper.from_array(np.asarray(scale, np.float32).reshape(1, 3, 1, 1), factor))
    graph.node.insert(0, helper.make_node("Mul", [image, factor], [scaled], name="deepstream_channel_scale"))


def _append_softmax(graph: onnx.GraphProto, output: str) -> None:
    """Softmax over the classes, written to the output's own name (the logits get a new one)."""
    logits = _fresh(graph, f"{output}_before_softmax")
    for node in graph.node:
        node.output[:] = [logits if o == output else o for o in node.output]
    _rename_uses(graph, output, logits)
    graph.node.append(helper.make_node("Softmax", [logits], [output], name="deepstream_softmax", axis=1))


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]


def _producer(graph: onnx.GraphProto, tensor: str) -> Optional[str]:
    return next((n.op_type for n in graph.node if tensor in n.output), None)


def _fresh(graph: onnx.GraphProto, name: str) -> str:
    """``name``, or ``name_2``... if the graph already uses it anywhere (tensor or node)."""
    taken: Set[str] = {i.name for i in graph.input} | {o.name for o in graph.output}
    taken |= {init.name for init in graph.initializer} | {v.name for v in graph.value_info}
    taken |= {t for n in graph.node for t in list(n.input) + list(n.output)} | {n.name for n in graph.node}
    return fresh_name(taken, name)


def _record(model: onnx.ModelProto, norm: NvinferNormalization, record: Dict[str, Any], where: str) -> None:
    """Our metadata kept, the preprocessing made the folded model's, and the fold recorded."""
    ours = {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}
    if "preprocessing" not in ours:
        raise StaleArtifactError(f"{where}: ONNX metadata lacks '{META_PREFIX}preprocessing' (not exported by "
                                 f"this pipeline?)")
    original = Preprocessing.from_dict(json.loads(ours["preprocessing"]))
    record["original_preprocessing"] = original.to_dict()
    ours["preprocessing"] = json.dumps(folded_preprocessing(original, norm).to_dict())
    ours["deepstream"] = json.dumps(record)
    set_metadata(model, ours)
