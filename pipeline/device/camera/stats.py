"""Live figures of the loop: latency per stage, agreement INT8 vs FP32, accuracy."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import write_json
from pipeline.errors import ArtifactWriteError

# frame: the inference stage's time per frame; output: overlay, writer, preview, window;
# capture_to_label: from a frame leaving the camera to its label on screen (what a user feels)
STAGES = ("capture_wait", "preprocess", "int8", "fp32", "frame", "output", "capture_to_label")


@dataclass
class LoopStats:
    frames: int = 0
    dropped: int = 0
    shown: int = 0              # results the output stage drew
    prepared_dropped: int = 0   # live inputs replaced by a newer one before INT8 took them
    results_dropped: int = 0    # live results replaced by a newer one before they were drawn
    shadow_skipped: int = 0     # FP32 offers skipped because the shadow was still busy
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

    def percentiles(self, stage: str) -> dict[str, float | None]:
        """p50/p90/p99 of ``stage``; None for a stage that never ran (NaN is not JSON: strict
        parsers, and the report's history, refuse it)."""
        values = self.latency_ms.get(stage, [])
        if not values:
            return {"p50": None, "p90": None, "p99": None, "count": 0}
        p = np.percentile(values, [50, 90, 99])
        return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "count": len(values)}

    @property
    def fps(self) -> float:
        return self.frames / max(1e-9, self.ended - self.started)

    @property
    def agreement(self) -> float | None:
        return self.agree / self.shadow_frames if self.shadow_frames else None

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "dropped_frames": self.dropped + self.prepared_dropped,
            "dropped_at": {"capture": self.dropped, "preprocess": self.prepared_dropped},
            "window": self.window, "fps": self.fps, "seconds": self.ended - self.started,
            "latency_ms": {stage: self.percentiles(stage) for stage in STAGES},
            "shown_frames": self.shown, "results_dropped": self.results_dropped,
            "shadow_frames": self.shadow_frames, "shadow_skipped": self.shadow_skipped,
            "top1_agreement": self.agreement,
            "class_flips": len(self.flips), "flips": self.flips[:100],
            "mean_confidence_change": float(np.mean(self.confidence_change)) if self.confidence_change else None,
            "labelled_frames": self.labelled,
            "int8_accuracy": self.int8_correct / self.labelled if self.labelled else None,
            "fp32_accuracy": self.fp32_correct / self.fp32_labelled if self.fp32_labelled else None,
        }


def write_session(folder: Path, started: float, record: dict[str, Any]) -> Path:
    """Write a session's summary as ``<start, unix seconds>-<n>.json`` in ``folder``: the
    names sort by start time, and ``n`` is the first free one, so two sessions started in
    the same second (or by two processes) never share a file and neither overwrites the other."""
    return write_json(claim_name(folder, int(started)), record)


def claim_name(folder: Path, stamp: int) -> Path:
    """Create ``<stamp>-<n>.json`` empty with O_EXCL, the first ``n`` nobody holds; creation is
    the claim, atomic across processes. The caller writes the summary over it at once
    (``write_json`` renames into place), and the report skips an empty one."""
    n = 0
    while True:
        path = folder / f"{stamp}-{n:03d}.json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise ArtifactWriteError(f"{path}: cannot write here ({exc.strerror or exc})") from None
