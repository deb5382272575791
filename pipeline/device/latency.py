"""Latency as trtexec reports it: warm-up by time and count, then timed runs, then
min/mean/median/p90/p95/p99/max, standard deviation and throughput."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.runners.base import Runner


class LatencyError(PipelineError):
    """A timing that is not a number of milliseconds (NaN or infinite)."""


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per batch over ``runs`` timed runs."""

    batch: int
    runs: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    throughput: float  # images per second

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(runner: Runner, batch: np.ndarray, runs: int = 200, warmup_s: float = 1.0,
                    warmup_runs: int = 10) -> tuple[LatencyStats, np.ndarray]:
    """Time ``runner.run(batch)``; returns the statistics and every sample (ms)."""
    start = time.perf_counter()
    done = 0
    while done < warmup_runs or time.perf_counter() - start < warmup_s:
        runner.run(batch)
        done += 1
    samples = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        runner.run(batch)
        samples[i] = (time.perf_counter() - t0) * 1e3
    return summarize(samples, len(batch), label=runner.name), samples


def summarize(samples_ms: np.ndarray, batch: int, label: str = "latency") -> LatencyStats:
    """The statistics of ``samples_ms``; ``label`` names the model in errors. A NaN sample
    would make every figure NaN, and NaN passes every budget comparison (``nan > x`` is
    false), so non-finite samples are refused."""
    require_finite_samples(samples_ms, label)
    p = np.percentile(samples_ms, [50, 90, 95, 99])
    mean = float(samples_ms.mean())
    return LatencyStats(batch, len(samples_ms), float(samples_ms.min()), mean, float(p[0]),
                        float(p[1]), float(p[2]), float(p[3]), float(samples_ms.max()),
                        float(samples_ms.std()), batch * 1e3 / mean)


def require_finite_samples(samples_ms: np.ndarray, label: str) -> None:
    bad = np.flatnonzero(~np.isfinite(samples_ms))
    if bad.size:
        raise LatencyError(f"{label}: latency sample {bad[0]} of {len(samples_ms)} is "
                           f"{samples_ms[bad[0]]} ms ({bad.size} not finite); the timings are broken")
