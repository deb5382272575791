"""A paced synthetic camera: ``paced://<fps>?frames=N&size=WxH``.

Measuring what a user feels (capture to label, frames dropped) needs a source that behaves
like a camera: frames arrive on the source's clock whether the loop is ready or not, and a
late loop must drop, not queue. A file is read as fast as the loop asks, so it cannot show
either. This source produces N frames at a fixed rate (a moving pattern, so no two frames
are alike), is *live* (the capture keeps only the newest frame), and knows exactly how
many it produced, so the loop's drop count can be checked to the frame.
"""
from __future__ import annotations

import re
import time
from typing import Iterator, Optional, Tuple

import numpy as np

from pipeline.errors import DataError

SPEC = re.compile(r"paced://(?P<fps>[0-9]{1,4}(?:\.[0-9]+)?)(?:\?(?P<query>.*))?$")
LIMITS = {"frames": (1, 1_000_000), "width": (8, 8192), "height": (8, 8192)}


class PacedFrames:
    """The frames of one paced source; ``produced`` counts what left the 'sensor'."""

    def __init__(self, fps: float, frames: int, size: Tuple[int, int]) -> None:
        self.fps, self.frames, self.size = fps, frames, size
        self.produced = 0
        width, height = size
        y, x = np.mgrid[0:height, 0:width]
        self.base = ((x * 255 // max(1, width - 1)) ^ (y * 255 // max(1, height - 1))).astype(np.uint8)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, Optional[str]]]:
        start = time.perf_counter()
        for index in range(self.frames):
            wait = start + index / self.fps - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self.produced += 1
            yield self._frame(index), None

    def _frame(self, index: int) -> np.ndarray:
        shifted = np.roll(self.base, index * 4, axis=1)
        frame = np.dstack([shifted, np.roll(shifted, 32, axis=0), 255 - shifted])
        frame[0, :4, 0] = np.frombuffer(np.uint32(index).tobytes(), np.uint8)  # which frame this is
        return frame


def frame_index(frame: np.ndarray) -> int:
    """The index a paced frame carries in its first four pixels (blue channel)."""
    return int(np.frombuffer(np.ascontiguousarray(frame[0, :4, 0]).tobytes(), np.uint32)[0])


def parse_paced(spec: str) -> PacedFrames:
    """``paced://60?frames=300&size=640x480`` (frames default 300, size 640x480)."""
    match = SPEC.match(spec)
    if match is None or not 0 < float(match["fps"]) <= 1000:
        raise DataError(f"{spec}: expected paced://<fps 0-1000>?frames=N&size=WxH")
    values = {"frames": 300, "width": 640, "height": 480}
    for pair in filter(None, (match["query"] or "").split("&")):
        key, _, value = pair.partition("=")
        if key == "size" and re.fullmatch(r"[0-9]{1,5}x[0-9]{1,5}", value):
            values["width"], values["height"] = (int(v) for v in value.split("x"))
        elif key == "frames" and value.isdigit():
            values["frames"] = int(value)
        else:
            raise DataError(f"{spec}: bad parameter {pair!r} (frames=N, size=WxH)")
    for key, (low, high) in LIMITS.items():
        if not low <= values[key] <= high:
            raise DataError(f"{spec}: {key} must be from {low} to {high}, got {values[key]}")
    return PacedFrames(float(match["fps"]), values["frames"], (values["width"], values["height"]))
