"""Q/DQ nodes from known activation scales (e.g. a TensorRT calibration cache).

Places quantizers where TensorRT wants them for convolutions and fully connected layers:
the activation input per tensor (scale from the cache) and the weights per output
channel (max |w| / 127), all signed INT8 with zero point 0, so the result passes
:func:`calibration.qdq.check_tensorrt_qdq`.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibration.qdq import output_axis

QUANTIZED_OPS = ("Conv", "Gemm")


def insert_qdq(model: onnx.ModelProto, scales: dict[str, float]) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """Quantize every Conv/Gemm whose input has a scale. Returns the model, the layers
    quantized and the activation tensors that had no scale (left in float)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {init.name: init for init in model.graph.initializer}
    nodes, done, missing = [], [], []
    for node in model.graph.node:
        x, w = node.input[0], node.input[1] if len(node.input) > 1 else ""
        if node.op_type in QUANTIZED_OPS and w in inits and x in scales:
            label, axis = node.name or node.output[0], output_axis(node)
            nodes += _pair(model, x, np.float32(scales[x]), None, f"{label}_act")
            nodes += _pair(model, w, _weight_scales(inits[w], axis), axis, f"{label}_w")
            node.input[0], node.input[1] = f"{label}_act_dq", f"{label}_w_dq"
            done.append(label)
        elif node.op_type in QUANTIZED_OPS:
            missing.append(x)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, done, missing


def _pair(model: onnx.ModelProto, tensor: str, scale: np.ndarray, axis: int | None,
          prefix: str) -> list[onnx.NodeProto]:
    zero = np.zeros(np.shape(scale), np.int8)
    model.graph.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), f"{prefix}_scale"),
                                    numpy_helper.from_array(zero, f"{prefix}_zero")])
    extra = {} if axis is None else {"axis": axis}
    inputs = [f"{prefix}_scale", f"{prefix}_zero"]
    return [helper.make_node("QuantizeLinear", [tensor, *inputs], [f"{prefix}_q"], name=f"{prefix}_q", **extra),
            helper.make_node("DequantizeLinear", [f"{prefix}_q", *inputs], [f"{prefix}_dq"],
                             name=f"{prefix}_dq", **extra)]


def _weight_scales(init: onnx.TensorProto, axis: int) -> np.ndarray:
    weight = numpy_helper.to_array(init)
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    return np.maximum(np.abs(weight).max(axis=reduce) / 127.0, 1e-12).astype(np.float32)

