"""Live figures of the loop: latency per stage, agreement INT8 vs FP32, accuracy."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STAGES = ("capture_wait", "preprocess", "int8", "fp32", "frame")


@dataclass
class LoopStats:
    frames: int = 0
    dropped: int = 0
    window: bool = False
    shadow_frames: int = 0
    agree: int = 0
    flips: list[dict[str, Any]] = field(default_factory=list)
    confidence_change: list[float] = field(default_factory=list)
    labelled: int = 0
    int8_correct: int = 0
    fp32_labelled: int = 0
    fp32_correct: int = 0
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    started: float = 0.0
    ended: float = 0.0

    def percentiles(self, stage: str) -> dict[str, float]:
        values = self.latency_ms.get(stage) or [float("nan")]
        p = np.percentile(values, [50, 90, 99])
        return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "count": len(self.latency_ms.get(stage, []))}

    @property
    def fps(self) -> float:
        return self.frames / max(1e-9, self.ended - self.started)

    @property
    def agreement(self) -> float | None:
        return self.agree / self.shadow_frames if self.shadow_frames else None

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "dropped_frames": self.dropped, "window": self.window, "fps": self.fps, "seconds": self.ended - self.started,
            "latency_ms": {stage: self.percentiles(stage) for stage in STAGES},
            "shadow_frames": self.shadow_frames, "top1_agreement": self.agreement,
            "class_flips": len(self.flips), "flips": self.flips[:100],
            "mean_confidence_change": float(np.mean(self.confidence_change)) if self.confidence_change else None,
            "labelled_frames": self.labelled,
            "int8_accuracy": self.int8_correct / self.labelled if self.labelled else None,
            "fp32_accuracy": self.fp32_correct / self.fp32_labelled if self.fp32_labelled else None,
        }
