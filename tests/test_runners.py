"""The parity comparison that every conversion check relies on."""
from __future__ import annotations

import numpy as np
import pytest
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


def _poisoned(value: float) -> nn.Module:
    """The same linear model with one output's bias set to ``value`` (NaN or inf)."""
    layer = _linear(1.0)
    with torch.no_grad():
        layer[1].bias[2] = value
    return layer


def test_nan_logits_of_the_candidate_are_an_error_naming_it_and_the_batch() -> None:
    """max(0, nan) is 0: without the check a NaN model would pass with perfect parity."""
    from pipeline.errors import StaleArtifactError

    with pytest.raises(StaleArtifactError, match=r"^candidate torch-nan: NaN logits on batch 0 \(inputs 0\.\.7\)"):
        compare_runners(TorchRunner(_linear(1.0)), TorchRunner(_poisoned(float("nan")), name="torch-nan"),
                        _batches())


def test_infinite_logits_of_the_reference_name_it_and_the_batch() -> None:
    from pipeline.errors import StaleArtifactError

    def batches():
        for index, (inputs, labels) in enumerate(_batches()):
            if index == 1:
                inputs[3, 0, 0, 0] = np.inf  # one image of the second batch
            yield inputs, labels

    with pytest.raises(StaleArtifactError, match=r"^model\.pt \(PyTorch\): (NaN and )?infinite logits "
                                                 r"on batch 1 \(inputs 8\.\.15\)"):
        compare_runners(TorchRunner(_linear(1.0)), TorchRunner(_linear(1.0)), batches(),
                        names=("model.pt (PyTorch)", "model.onnx (ONNX Runtime)"))


def test_infinite_bias_is_reported_as_infinite() -> None:
    from pipeline.errors import StaleArtifactError

    with pytest.raises(StaleArtifactError, match=r"candidate torch: infinite logits on batch 0"):
        compare_runners(TorchRunner(_linear(1.0)), TorchRunner(_poisoned(float("inf"))), _batches())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_latency_sample_is_an_error_naming_the_model(bad: float) -> None:
    from pipeline.device.latency import summarize
    from pipeline.errors import PipelineError

    samples = np.array([1.0, 1.2, bad, 0.9])
    assert summarize(samples[[0, 1, 3]], 1).median == 1.0
    with pytest.raises(PipelineError, match=r"^onnxruntime-int8: latency sample 2 of 4 is (nan|inf) ms"):
        summarize(samples, 1, label="onnxruntime-int8")



def test_wilson_interval_matches_scipys() -> None:
    from scipy.stats import binomtest

    from pipeline.runners.compare import wilson_interval

    for hits, n in ((990, 1000), (2908, 2925), (1000, 1000), (0, 10), (7, 9)):
        expected = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(hits, n) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert wilson_interval(1000, 1000)[1] == 1.0 and wilson_interval(1000, 1000)[0] < 1.0


def test_paired_change_interval_is_the_mean_difference_plus_minus_its_error() -> None:
    """Computed from the per-image differences (candidate right minus reference right)."""
    from pipeline.runners.compare import Z95, paired_change_interval

    rng = np.random.default_rng(3)
    ref_right = rng.random(2000) < 0.86
    cand_right = np.where(rng.random(2000) < 0.01, ~ref_right, ref_right)
    lost, gained = int((ref_right & ~cand_right).sum()), int((cand_right & ~ref_right).sum())
    drop = ref_right.astype(float) - cand_right.astype(float)
    half = Z95 * drop.std() / np.sqrt(len(drop))
    assert paired_change_interval(lost, gained, 2000) == pytest.approx((drop.mean() - half, drop.mean() + half))
    assert paired_change_interval(0, 0, 500) == (0.0, 0.0)
