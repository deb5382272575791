"""Capture in its own thread. A live source keeps only the newest frame (the loop never
works on stale video; dropped frames are counted); a file is read in order, every frame.
A live source that stops is reopened with back-off, then reported as lost."""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from pipeline.device.camera.sources import FrameSource

END = object()


class Capture(threading.Thread):
    """Reads ``source`` until it ends or ``stop()``; ``get()`` hands frames to the loop."""

    def __init__(self, source: FrameSource, reopen: Callable[[], FrameSource] | None = None,
                 retries: int = 3, backoff_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.source, self.reopen, self.retries, self.backoff_s = source, reopen, retries, backoff_s
        self.frames: queue.Queue = queue.Queue(maxsize=1 if source.live else 8)
        self.dropped, self.reconnects, self.lost = 0, 0, False
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for frame, label in self.source.frames:
                    if self.stopping.is_set():
                        break
                    self._put((frame, label))
                if self.stopping.is_set() or not self.source.live or not self._reconnect():
                    break
        except Exception as exc:  # handed to the loop, which reports it with the summary
            self._put(exc)
        finally:
            self._put(END, force=True)
            if self.source is not None:
                self.source.close()

    def get(self, timeout: float = 10.0) -> tuple[np.ndarray, str | None] | object:
        return self.frames.get(timeout=timeout)

    def stop(self) -> None:
        self.stopping.set()

    def _put(self, item: object, force: bool = False) -> None:
        if self.source.live and not force:
            try:  # keep only the newest frame
                self.frames.get_nowait()
                self.dropped += 1
            except queue.Empty:
                pass
        while not self.stopping.is_set() or force:
            try:
                self.frames.put(item, timeout=0.1)
                return
            except queue.Full:
                if force:
                    self.frames.get_nowait()

    def _reconnect(self) -> bool:
        for attempt in range(self.retries):
            time.sleep(self.backoff_s * 2 ** attempt)
            try:
                self.source = self.reopen() if self.reopen else None
            except Exception:  # noqa: BLE001 - any failure to reopen counts as one try
                continue
            if self.source is not None:
                self.reconnects += 1
                return True
        self.lost = True
        return False
