"""Capture in its own thread. A live source keeps only the newest frame (the loop never
works on stale video; dropped frames are counted); a file is read in order, every frame.
A live source that stops is reopened with back-off, then reported as lost.

What the thread hands over last (the file's last frames, an exception) always reaches the
loop before END: END waits for room like any item and never displaces one. Only ``stop()``
lets the thread give up on a full queue, because then the loop no longer reads it."""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from pipeline.device.camera.sources import FrameSource

END = object()   # the capture's last item: the source has ended
DONE = object()  # what a stopping stage's Handoff.get returns: nothing more will come


class Handoff:
    """A bounded queue between two stages. Live, a new item replaces one the next stage has
    not taken yet (counted in ``dropped``): the newest frame wins. From a file, every item
    waits for room, in order. A stage that is stopping gives up rather than wait for a
    reader that has gone.

    Built on ``queue.SimpleQueue`` (C) with a semaphore for room rather than ``queue.Queue``:
    a hand-off between two threads costs 65 us against 145 us (p50; p99 165 against 290,
    measured on the 2-core VM at 50 hand-offs a second, issue 15), and a frame crosses three."""

    def __init__(self, live: bool, stopping: threading.Event, size: int = 4) -> None:
        self.size = 1 if live else size
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.room = threading.Semaphore(self.size)
        self.live, self.stopping, self.dropped = live, stopping, 0

    def put(self, item: object, final: bool = False) -> None:
        if self.live and not final:
            try:
                self.items.get_nowait()  # the reader may take it first: then nothing is dropped
                self.dropped += 1
                self.room.release()
            except queue.Empty:
                pass
        while not self.room.acquire(timeout=0.1):
            if self.stopping.is_set():
                return
        self.items.put(item)

    def get(self, timeout: float | None = None) -> object:
        """The next item; DONE once the stage is stopping, or after ``timeout`` seconds
        (None: wait, in short steps so stop and Ctrl-C get through)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                item = self.items.get(timeout=0.1)
            except queue.Empty:
                if self.stopping.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    return DONE
                continue
            self.room.release()
            return item


class Capture(threading.Thread):
    """Reads ``source`` until it ends or ``stop()``; ``get()`` hands frames to the loop.
    The thread owns the source: it releases it when it ends, and releases a source it
    replaces by a reopened one."""

    def __init__(self, source: FrameSource, reopen: Callable[[], FrameSource] | None = None,
                 retries: int = 3, backoff_s: float = 0.5, join_s: float = 5.0) -> None:
        super().__init__(daemon=True, name="capture")
        self.source, self.reopen, self.retries, self.backoff_s = source, reopen, retries, backoff_s
        self.join_s = join_s
        self.stopping = threading.Event()
        self.out = Handoff(source.live, self.stopping, size=8)
        self.reconnects, self.lost = 0, False
        self._open: FrameSource | None = source  # not yet released
        self._release_lock = threading.Lock()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for frame, label in self.source.frames:
                    if self.stopping.is_set():
                        break
                    # stamped as it leaves the camera: the loop's capture-to-label latency starts here
                    self._put((frame, label, time.perf_counter()), newest_only=self.source.live)
                ended = not self.source.live or not self.source.reopen  # a paced source ends for good
                if self.stopping.is_set() or ended or not self._reconnect():
                    break
        except Exception as exc:  # handed to the loop, which reports it with the summary
            self._put(exc)
        finally:
            self._put(END)
            self._release()

    def get(self, timeout: float = 10.0) -> tuple[np.ndarray, str | None, float] | object:
        """(frame, label, the perf_counter time it was captured), an exception, or END (also
        once stopped); ``queue.Empty`` when nothing came within ``timeout``."""
        item = self.out.get(timeout)
        if item is DONE:
            if self.stopping.is_set():
                return END
            raise queue.Empty
        return item

    def stop(self) -> bool:
        """End the thread and release the source; True once both are done. A thread in a
        ``put`` gives up within 0.1 s; one in a camera's read ends when the read returns
        (the stream's read timeout bounds that, see ``open_source``). The source is not
        released under a read still running after ``join_s``: OpenCV's capture is not
        thread-safe, and the thread releases it itself when the read returns."""
        self.stopping.set()
        if self.ident is not None:  # started
            self.join(timeout=self.join_s)
            if self.is_alive():
                return False
        self._release()
        return True

    @property
    def dropped(self) -> int:
        """Live frames replaced by a newer one before the loop took them."""
        return self.out.dropped

    def _put(self, item: object, newest_only: bool = False) -> None:
        """Queue ``item`` for the loop, waiting for room; a live frame first takes the place
        of a stale one. Gives up only once stopping: nobody reads any more."""
        self.out.put(item, final=not newest_only)

    def _reconnect(self) -> bool:
        """Release the stream that stopped (a V4L2 device opens again only once let go), then
        reopen with back-off; False (lost) after ``retries`` failures or with no ``reopen``."""
        self._release()
        for attempt in range(self.retries if self.reopen else 0):
            if self.stopping.wait(self.backoff_s * 2 ** attempt):
                return False
            try:
                source = self.reopen()
            except Exception:  # noqa: BLE001 - any failure to reopen counts as one try
                continue
            with self._release_lock:
                self.source = self._open = source
            self.reconnects += 1
            return True
        self.lost = True
        return False

    def _release(self) -> None:
        """Release the current source once, whoever comes first: the thread or ``stop()``."""
        with self._release_lock:
            source, self._open = self._open, None
        if source is not None:
            source.close()
