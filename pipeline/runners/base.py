"""One Runner interface for every backend: evaluation, parity checks, benchmarks and the
camera loop see only this, so comparing FP32 with INT8, or PyTorch with TensorRT, is the
same code whichever runtimes are on the machine."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    """Runs a model on a float32 (N, 3, S, S) batch and returns (N, classes) logits."""

    name: str
    precision: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
