"""PyTorch, the reference every conversion is checked against."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.runners.base import ModelInfo


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


def open_checkpoint(path: Path, threads: int = 0) -> tuple[TorchRunner, ModelInfo]:
    """The registry's opener for ``.pt`` checkpoints (weights-only load, see checkpoint.py)."""
    from pipeline.workstation.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    info = ModelInfo(Path(path), "torch", "fp32", tuple(ckpt.classes), tuple(ckpt.class_names),
                     ckpt.preprocessing)
    return TorchRunner(ckpt.build()), info
