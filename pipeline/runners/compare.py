"""Parity between two runners on the same inputs, as Polygraphy's comparator does for
classifiers: the largest logit difference and the top-1 agreement, both recorded."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.runners.base import Runner


@dataclass(frozen=True)
class Parity:
    """How far runner ``b`` is from reference ``a`` over ``images`` inputs."""

    images: int
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float
    reference_top1: float | None = None
    candidate_top1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_runners(reference: Runner, candidate: Runner,
                    batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Parity:
    """Run both on every (inputs, labels) batch and summarise the differences."""
    max_err, err_sum, values, agree, hits_a, hits_b, count = 0.0, 0.0, 0, 0, 0, 0, 0
    for inputs, labels in batches:
        a, b = reference.run(inputs), candidate.run(inputs)
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        max_err, err_sum, values = max(max_err, float(diff.max())), err_sum + float(diff.sum()), values + diff.size
        top_a, top_b = a.argmax(1), b.argmax(1)
        agree += int((top_a == top_b).sum())
        hits_a, hits_b, count = hits_a + int((top_a == labels).sum()), hits_b + int((top_b == labels).sum()), count + len(labels)
    return Parity(count, max_err, err_sum / max(1, values), agree / max(1, count),
                  hits_a / max(1, count), hits_b / max(1, count))
