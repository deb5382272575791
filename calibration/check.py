"""``python -m pipeline check-qdq --model FILE``: the TensorRT-rules checker as a command."""
from __future__ import annotations

from pathlib import Path

from calibration.qdq import require_tensorrt_qdq
from pipeline.config import Config
from pipeline.errors import ConfigError


def run(cfg: Config) -> Path:
    if not cfg.evaluate.model:
        raise ConfigError("check-qdq: give the model with --model FILE")
    path = Path(cfg.evaluate.model)
    nodes = require_tensorrt_qdq(path)
    print(f"{path}: {nodes} Q/DQ nodes, all within TensorRT's rules")
    return path
