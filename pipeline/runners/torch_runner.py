"""PyTorch, the reference every conversion is checked against."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchRunner:
    """An ``nn.Module`` in eval mode, fp32, on the CPU."""

    precision = "fp32"

    def __init__(self, model: nn.Module, name: str = "torch") -> None:
        self.name = name
        self.model = model.eval()

    @torch.no_grad()
    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    def close(self) -> None:
        pass
