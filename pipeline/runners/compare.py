"""Parity between two runners on the same inputs, as Polygraphy's comparator does for
classifiers: the largest logit difference and the top-1 agreement, both recorded.

Closeness is judged per value as ``|a - b| <= atol + rtol * |a|`` (numpy's ``isclose``):
a purely absolute bound fails a healthy export of a model whose logits are large.

A NaN or infinite logit is an error, not a difference: NaN compares false with everything,
so the maxima below would read it as no difference at all and pass a broken model."""
from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import NormalDist
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.errors import StaleArtifactError
from pipeline.runners.base import Runner

Z95 = NormalDist().inv_cdf(0.975)  # two-sided 95%: 1.95996...


class NonFiniteLogitsError(StaleArtifactError):
    """A model that returned NaN or infinite logits: its outputs cannot be compared or scored."""


@dataclass(frozen=True)
class Parity:
    """How far runner ``b`` is from reference ``a`` over ``images`` inputs."""

    images: int
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float
    tolerance_ratio: float   # max of |a - b| / (atol + rtol * |a|); <= 1 means within tolerance
    top1_agreement: float
    reference_top1: float | None = None
    candidate_top1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_runners(reference: Runner, candidate: Runner,
                    batches: Iterable[tuple[np.ndarray, np.ndarray]],
                    atol: float = 1e-3, rtol: float = 1e-3,
                    names: Sequence[str] | None = None) -> Parity:
    """Run both on every (inputs, labels) batch and summarise the differences.

    ``names`` (reference, candidate) say which model an error is about; by default the
    runners' names. A NaN or infinite logit raises :class:`NonFiniteLogitsError`."""
    ref_name, cand_name = names or (f"reference {reference.name}", f"candidate {candidate.name}")
    worst = {"abs": 0.0, "rel": 0.0, "ratio": 0.0}
    err_sum, values, agree, hits_a, hits_b, count = 0.0, 0, 0, 0, 0, 0
    for index, (inputs, labels) in enumerate(batches):
        a = reference.run(inputs).astype(np.float64)
        require_finite(a, ref_name, index, count)
        b = candidate.run(inputs).astype(np.float64)
        require_finite(b, cand_name, index, count)
        _update_worst(worst, a, np.abs(a - b), atol, rtol)
        err_sum, values = err_sum + float(np.abs(a - b).sum()), values + a.size
        top_a, top_b = a.argmax(1), b.argmax(1)
        agree += int((top_a == top_b).sum())
        hits_a, hits_b = hits_a + int((top_a == labels).sum()), hits_b + int((top_b == labels).sum())
        count += len(labels)
    n = max(1, count)
    return Parity(count, worst["abs"], err_sum / max(1, values), worst["rel"], worst["ratio"],
                  agree / n, hits_a / n, hits_b / n)


def require_finite(logits: np.ndarray, name: str, batch: int, first: int) -> None:
    """Refuse NaN or infinite ``logits`` of batch number ``batch`` (inputs ``first``...)."""
    if np.isfinite(logits).all():
        return
    kinds = [k for k, present in (("NaN", np.isnan(logits).any()), ("infinite", np.isinf(logits).any()))
             if present]
    raise NonFiniteLogitsError(f"{name}: {' and '.join(kinds)} logits on batch {batch} (inputs "
                               f"{first}..{first + len(logits) - 1})")


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of the proportion ``hits / n``. Agreement lives near 100%,
    where the normal approximation's interval runs past 1 and is too narrow; Wilson's does
    not (at n = 1,000 and 99% it is 98.2–99.5%)."""
    if n <= 0:
        return 0.0, 1.0
    p, zz = hits / n, z * z
    denom = 1 + zz / n
    centre = (p + zz / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_change_interval(lost: int, gained: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of the top-1 drop ``(lost - gained) / n`` of a candidate scored on the same
    ``n`` images as its reference: paired, so only the images one got right and the other
    wrong count (``lost``: the reference's hits the candidate missed; ``gained``: the reverse)."""
    if n <= 0:
        return 0.0, 0.0
    drop = (lost - gained) / n
    half = z * math.sqrt(max(0.0, (lost + gained) - (lost - gained) ** 2 / n)) / n
    return drop - half, drop + half


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _update_worst(worst: dict[str, float], a: np.ndarray, diff: np.ndarray,
                  atol: float, rtol: float) -> None:
    scale = np.abs(a)
    worst["abs"] = max(worst["abs"], float(diff.max()))
    worst["rel"] = max(worst["rel"], float((diff / np.maximum(scale, 1e-12)).max()))
    bound = atol + rtol * scale
    ratio = np.where(bound > 0, diff / np.where(bound > 0, bound, 1), np.where(diff > 0, np.inf, 0))
    worst["ratio"] = max(worst["ratio"], float(ratio.max()))
