"""The parity comparison that every conversion check relies on."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.runners import compare_runners
from pipeline.workstation.torch_runner import TorchRunner


def _linear(scale: float, bias_shift: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with torch.no_grad():
        layer[1].weight.mul_(scale)
        layer[1].bias.add_(bias_shift)
    return layer


def _batches(n: int = 3):
    rng = np.random.default_rng(0)
    for _ in range(n):
        yield rng.standard_normal((8, 3, 2, 2)).astype(np.float32), rng.integers(0, 4, 8)


def test_identical_models_agree_exactly() -> None:
    parity = compare_runners(TorchRunner(_linear(1.0)), TorchRunner(_linear(1.0)), _batches())
    assert parity.images == 24
    assert parity.max_abs_error == 0 and parity.tolerance_ratio == 0 and parity.top1_agreement == 1
    assert parity.reference_top1 == parity.candidate_top1


def test_an_offset_beyond_atol_is_out_of_tolerance() -> None:
    parity = compare_runners(TorchRunner(_linear(1.0)), TorchRunner(_linear(1.0, 0.01)), _batches(),
                             atol=1e-3, rtol=0.0)
    assert np.isclose(parity.max_abs_error, 0.01, rtol=1e-4)
    assert parity.tolerance_ratio > 1


def test_large_logits_are_judged_relative_to_their_size() -> None:
    """A 1e-5 relative error on logits of ~1e5 is fine, though it is ~1 in absolute terms."""
    parity = compare_runners(TorchRunner(_linear(1e5)), TorchRunner(_linear(1e5 * (1 + 1e-5))),
                             _batches(), atol=1e-3, rtol=1e-3)
    assert parity.max_abs_error > 0.1
    assert parity.tolerance_ratio <= 1 and parity.top1_agreement == 1
