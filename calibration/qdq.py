"""Explicit Q/DQ ONNX under TensorRT's rules, and the rewrite that gets NNCF's output there.

TensorRT's explicit quantization accepts only signed INT8 with zero point 0, per-tensor
activation scales and per-channel weight scales on the output-channel axis
(https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html).
NNCF's defaults put UINT8 (zero point 0) after ReLUs, which is right for ONNX Runtime on
x86 CPUs but refused by TensorRT. A UINT8 zero-point-0 quantizer covers [0, 255·s]; INT8
with scale 255·s/127 covers the same non-negative range at 7 bits, which is what
TensorRT itself does with non-negative tensors, so the rewrite costs (almost) nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from pipeline.onnx_meta import fresh_name, load_onnx
from pipeline.errors import StaleArtifactError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0, "MatMul": 1}


def output_axis(layer: onnx.NodeProto) -> int | None:
    """The weight axis that indexes output channels (Gemm's depends on ``transB``)."""
    if layer.op_type == "Gemm":
        return 0 if _attr(layer, "transB", 0) else 1
    return WEIGHT_AXIS.get(layer.op_type)


@dataclass(frozen=True)
class Violation:
    node: str
    rule: str

    def __str__(self) -> str:
        return f"{self.node}: {self.rule}"


def to_tensorrt_rules(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every UINT8 zero-point-0 Q/DQ pair to INT8 zero point 0, scale × 255/127.

    Returns the new model and how many quantizers were rewritten. A UINT8 quantizer with a
    non-zero zero point (asymmetric) cannot be expressed for TensorRT and is refused.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())  # leave the input intact
    inits = {init.name: init for init in model.graph.initializer}
    renamed: dict[tuple[str, str], tuple[str, str]] = {}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and len(node.input) == 3 and _is_uint8(inits.get(node.input[2])):
            key = (node.input[1], node.input[2])
            if key not in renamed:
                renamed[key] = _signed_pair(model, inits, *key)
            node.input[1], node.input[2] = renamed[key]
            if node.op_type == "QuantizeLinear":
                _set_elem_type(model, node.output[0], TensorProto.INT8)
    _drop_unused_initializers(model)
    return model, len(renamed)


def float_layers(model: onnx.ModelProto) -> list[str]:
    """Conv/Gemm layers whose weights are not dequantized: those accuracy control kept in
    float. Read from the file itself, so the engine builder can pin them to FP32 without
    trusting a record that travelled beside it."""
    dequantized = {out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return [n.name or n.output[0] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] not in dequantized]


def check_tensorrt_qdq(model: onnx.ModelProto) -> list[Violation]:
    """Every way ``model``'s Q/DQ nodes break TensorRT's rules (empty: conformant)."""
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    consumers = _consumers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    problems: list[Violation] = []
    qdq = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    if not qdq:
        return [Violation(model.graph.name or "graph", "no QuantizeLinear/DequantizeLinear nodes")]
    for node in qdq:
        problems += _check_node(node, inits, consumers, producers)
    return problems


def require_tensorrt_qdq(path: Path) -> int:
    """Check a file; raise naming the first violations. Returns the number of Q/DQ nodes."""
    return sum(n.op_type in QDQ_OPS for n in load_tensorrt_qdq(path).graph.node)


def load_tensorrt_qdq(path: Path) -> onnx.ModelProto:
    """The model in a file, once it is checked against TensorRT's rules (raising naming the
    first violations), for callers that go on reading it."""
    model = load_onnx(path)
    problems = check_tensorrt_qdq(model)
    if problems:
        listed = "; ".join(str(p) for p in problems[:3])
        raise StaleArtifactError(f"{path}: {len(problems)} Q/DQ node(s) break TensorRT's rules "
                                 f"({listed})")
    return model


def _check_node(node: onnx.NodeProto, inits: dict[str, np.ndarray],
                consumers: dict[str, list[onnx.NodeProto]],
                producers: dict[str, onnx.NodeProto]) -> list[Violation]:
    name = node.name or node.output[0]
    scale = inits.get(node.input[1])
    if scale is None:
        return [Violation(name, "scale is not a constant initializer")]
    out = []
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        out.append(Violation(name, "scales must be finite and positive"))
    zero = inits.get(node.input[2]) if len(node.input) == 3 else None
    if zero is not None and (zero.dtype != np.int8 or np.any(zero != 0)):
        out.append(Violation(name, f"zero point must be INT8 0, got {zero.dtype} {zero.flatten()[:3]}"))
    out += _check_granularity(node, name, scale, inits, consumers, producers)
    return out


def _weight_of(node: onnx.NodeProto, inits: dict[str, np.ndarray],
               producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """The constant a quantizer works on (directly, or through its QuantizeLinear partner)."""
    source = node.input[0]
    if source in inits:
        return inits[source]
    parent = producers.get(source)
    if parent is not None and parent.op_type == "QuantizeLinear" and parent.input[0] in inits:
        return inits[parent.input[0]]
    return None


def _check_granularity(node: onnx.NodeProto, name: str, scale: np.ndarray, inits: dict[str, np.ndarray],
                       consumers: dict[str, list[onnx.NodeProto]],
                       producers: dict[str, onnx.NodeProto]) -> list[Violation]:
    weight = _weight_of(node, inits, producers)
    if weight is None:  # an activation
        return [] if scale.size == 1 else [Violation(name, "activation scales must be per-tensor")]
    if scale.size == 1:
        return []
    axis = _attr(node, "axis", 1)
    users = _final_users(node, consumers)
    expected = {output_axis(u) for u in users} - {None}
    axis = axis % weight.ndim
    if expected and axis not in expected:
        return [Violation(name, f"per-channel weight scales on axis {axis}, expected the "
                                f"output-channel axis {sorted(expected)[0]}")]
    if scale.size != weight.shape[axis]:
        return [Violation(name, f"{scale.size} scales for {weight.shape[axis]} channels")]
    return []


def _final_users(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto]:
    """The layers a weight quantizer feeds, looking through its DequantizeLinear partner."""
    users = consumers.get(node.output[0], [])
    return [u for user in users
            for u in (consumers.get(user.output[0], []) if user.op_type in QDQ_OPS else [user])]


def _signed_pair(model: onnx.ModelProto, inits: dict[str, TensorProto], scale_name: str,
                 zero_name: str) -> tuple[str, str]:
    zero = numpy_helper.to_array(inits[zero_name])
    if np.any(zero != 0):
        raise StaleArtifactError(f"{zero_name}: asymmetric UINT8 quantizer (zero point "
                                 f"{zero.flatten()[0]}) cannot follow TensorRT's rules")
    scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32) * np.float32(255.0 / 127.0)
    names = (fresh_name(inits, f"{scale_name}_s8"), fresh_name(inits, f"{zero_name}_s8"))
    inits.update({name: None for name in names})  # taken: a scale shared by two pairs gets two names
    model.graph.initializer.extend([numpy_helper.from_array(scale, names[0]),
                                    numpy_helper.from_array(zero.astype(np.int8), names[1])])
    return names


def _set_elem_type(model: onnx.ModelProto, name: str, elem_type: int) -> None:
    """Keep recorded shape information true: the quantized tensor is now INT8."""
    for info in model.graph.value_info:
        if info.name == name:
            info.type.tensor_type.elem_type = elem_type


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _is_uint8(init: TensorProto | None) -> bool:
    return init is not None and init.data_type == TensorProto.UINT8


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    table: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default
