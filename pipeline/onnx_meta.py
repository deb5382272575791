"""Our ``metadata_props`` in ONNX files: classes, preprocessing, model and provenance.

Kept free of torch so the device side (TensorRT engines, camera) can read a model's
description with onnx alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

META_PREFIX = "edgeresnet."


def read_metadata(path: Path) -> dict[str, Any]:
    """Our ``metadata_props`` of an ONNX file, JSON values decoded."""
    proto = onnx.load(str(path), load_external_data=False)
    meta = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(META_PREFIX):
            key = prop.key[len(META_PREFIX):]
            meta[key] = prop.value if key.endswith("sha256") else json.loads(prop.value)
    return meta


def set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    """Replace our entries (others are kept), and name us as the producer."""
    keep = [p for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in values.items():
        proto.metadata_props.add(key=META_PREFIX + key, value=value)
    proto.producer_name = "edgeresnet"


def onnx_precision(path: Path) -> str:
    """``fp32``, ``int8`` (signed Q/DQ, TensorRT rules) or ``int8-cpu`` (UINT8 activations)."""
    model = onnx.load(str(path), load_external_data=False)
    zero_types = {init.name: init.data_type for init in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not qdq:
        return "fp32"
    uint8 = any(len(n.input) == 3 and zero_types.get(n.input[2]) == onnx.TensorProto.UINT8 for n in qdq)
    return "int8-cpu" if uint8 else "int8"
