"""Our ``metadata_props`` in ONNX files: classes, preprocessing, model and provenance.

Kept free of torch so the device side (TensorRT engines, camera) can read a model's
description with onnx alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Container, Dict, List, Tuple

import onnx

from pipeline.errors import ConfigError, StaleArtifactError
from pipeline.preprocess import Preprocessing

META_PREFIX = "edgeresnet."
DESCRIBES = ("classes", "preprocessing")  # what every model of ours says about itself


def load_onnx(path: Path, external_data: bool = True) -> onnx.ModelProto:
    """An ONNX file, or one line naming it: missing, a folder, or not ONNX (truncated,
    another format) are the user's to fix, not a traceback."""
    path = Path(path)
    if not path.is_file():
        raise StaleArtifactError(f"{path}: {'is a folder' if path.is_dir() else 'not found'}, expected an ONNX model")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # protobuf's DecodeError, onnx's own, OSError on external data
        raise StaleArtifactError(f"{path}: not a readable ONNX model ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None


def read_metadata(path: Path, require: Tuple[str, ...] = DESCRIBES) -> Dict[str, Any]:
    """Our ``metadata_props`` of an ONNX file, JSON values decoded; the keys in ``require``
    must be there (a model exported elsewhere lacks them: imported models come with them)."""
    meta: Dict[str, Any] = {}
    for prop in load_onnx(path, external_data=False).metadata_props:
        if prop.key.startswith(META_PREFIX):
            key = prop.key[len(META_PREFIX):]
            meta[key] = prop.value if key.endswith("sha256") else _decoded(path, key, prop.value)
    missing = [k for k in require if k not in meta]
    if missing:
        raise StaleArtifactError(f"{path}: ONNX metadata lacks '{META_PREFIX}{missing[0]}' (not exported by "
                                 f"this pipeline?)")
    meta.setdefault("class_names", meta.get("classes"))
    if "preprocessing" in meta:
        try:
            Preprocessing.from_dict(meta["preprocessing"])
        except ConfigError as exc:
            raise StaleArtifactError(f"{path}: ONNX metadata '{META_PREFIX}preprocessing' is malformed ({exc})") from None
    return meta


def _decoded(path: Path, key: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise StaleArtifactError(f"{path}: ONNX metadata '{META_PREFIX}{key}' is not valid JSON") from None


def set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    """Replace our entries (others are kept), and name us as the producer."""
    keep = [p for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in values.items():
        proto.metadata_props.add(key=META_PREFIX + key, value=value)
    proto.producer_name = "edgeresnet"


def graph_inputs(graph: onnx.GraphProto) -> List[onnx.ValueInfoProto]:
    """A graph's real inputs: older exporters list the initializers among them too."""
    weights = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in weights]


def fresh_name(taken: Container[str], name: str) -> str:
    """``name``, or ``name_2``, ``name_3``... where ``taken`` already has it: a tensor added
    to a graph must not alias one already there."""
    fresh, index = name, 1
    while fresh in taken:
        index += 1
        fresh = f"{name}_{index}"
    return fresh


def onnx_precision(path: Path) -> str:
    """``fp32``, ``int8`` (signed Q/DQ, TensorRT rules) or ``int8-cpu`` (UINT8 activations)."""
    model = load_onnx(path, external_data=False)
    zero_types = {init.name: init.data_type for init in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not qdq:
        return "fp32"
    uint8 = any(len(n.input) == 3 and zero_types.get(n.input[2]) == onnx.TensorProto.UINT8 for n in qdq)
    return "int8-cpu" if uint8 else "int8"
