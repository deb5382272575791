"""``python -m pipeline cache-to-qdq --cache FILE``: a TensorRT calibration cache made on a
device becomes a Q/DQ ONNX (TensorRT rules) beside the run's FP32 model."""
from __future__ import annotations

from pathlib import Path

import onnx

from calibration.insert import insert_qdq
from calibration.qdq import check_tensorrt_qdq
from calibration.trt_cache import read_cache
from pipeline.artifacts import atomic_path, provenance, sidecar_path, write_json
from pipeline.config import Config
from pipeline.onnx_meta import load_onnx
from pipeline.errors import ConfigError, StaleArtifactError


def run(cfg: Config) -> Path:
    if not cfg.quantize.cache:
        raise ConfigError("cache-to-qdq: give the calibration cache with --cache FILE")
    cache_path, fp32_path = Path(cfg.quantize.cache), cfg.run_dir / "model.fp32.onnx"
    out = cfg.run_dir / "model.int8.from-cache.onnx"
    cache = read_cache(cache_path)
    model, layers, missing = insert_qdq(load_onnx(fp32_path), cache.scales)
    if not layers:
        raise StaleArtifactError(f"{cache_path}: no tensor of {fp32_path} has a scale in this cache "
                                 f"(made for another model?)")
    problems = check_tensorrt_qdq(model)
    if problems:
        raise StaleArtifactError(f"{out}: breaks TensorRT's rules ({problems[0]})")
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
        record = provenance("cache-to-qdq", {"fp32": fp32_path, "cache": cache_path})
        record.update(cache_header=cache.header, layers_quantized=len(layers), unscaled_inputs=missing)
        write_json(sidecar_path(out), record)
    print(f"{out}: {len(layers)} layers quantized from {cache.header}"
          + (f"; {len(missing)} left in float (no scale): {', '.join(missing[:5])}" if missing else ""))
    return out
