"""Calibration images as the model will see them in deployment, fed to the quantizer.

The images go through the model's own preprocessing (from the ONNX metadata, which came
from the checkpoint), so calibration ranges are those of deployment inputs.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from calibration.manifest import CalibrationManifest
from pipeline.errors import DataError
from pipeline.preprocess import Preprocessing, load_images
from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner


def calibration_inputs(manifest: CalibrationManifest, pre: Preprocessing, workers: int = 2) -> np.ndarray:
    """float32 (N, 3, S, S): every manifest image, preprocessed and normalised."""
    files = [Path(item.path) for item in manifest.items]
    return pre.normalize(load_images(files, pre.prepare, workers, "calibration images"))


def batches(inputs: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(inputs), size):
        yield inputs[start:start + size]


def require_finite_outputs(onnx_path: Path, inputs: np.ndarray, threads: int = 0) -> None:
    """Refuse to calibrate a model whose FP32 outputs on these inputs are NaN or infinite:
    its activation ranges would be meaningless and the INT8 model silently broken."""
    runner = OnnxRuntimeRunner(onnx_path, threads=threads)
    try:
        for index, batch in enumerate(batches(inputs, 32)):
            logits = runner.run(batch)
            if not np.all(np.isfinite(logits)):
                raise DataError(f"{onnx_path}: NaN or infinite outputs on calibration batch "
                                f"{index} (images {index * 32}..{index * 32 + len(batch) - 1}); "
                                f"the FP32 model is broken, retrain or re-export it")
    finally:
        runner.close()
