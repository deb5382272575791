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
