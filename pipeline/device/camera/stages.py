"""The camera loop's stages, overlapped: capture/decode, inference, the FP32 shadow and the
output each run in their own thread with their own thread budget.

Why: run serially, a frame costs the sum of its stages, and on a Jetson or a 2-core PC the
inference is the smaller part of that sum; decoding the next frame, drawing and writing
the last one and the shadow's FP32 run can all happen while the INT8 model works, since
OpenCV and the runtimes release the GIL. Why budgets: an ONNX Runtime session, by default,
takes a thread per core and spins them while idle; two sessions and OpenCV's pool on 2
cores fight each other and the loop runs several times slower than its stages (measured,
issue 15). So each stage gets an explicit number of threads, and no pool spins idle.

- **Inference** (this module's worker): takes the newest frame from the capture thread,
  prepares it, runs INT8, and hands the result to the output stage; every Nth frame it
  *offers* the same input to the shadow.
- **Shadow**: the FP32 reference on its own thread. An offer it cannot take at once (still
  busy with the last one) is skipped and counted, so FP32 never stalls the INT8 path.
- **Output** (the caller's thread, where OpenCV's window must live): overlay, video writer,
  MJPEG preview, window; the capture-to-label latency a user feels is measured here.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from pipeline.config import CameraConfig
from pipeline.device.camera.capture import DONE, END, Capture, Handoff
from pipeline.device.camera.stats import LoopStats
from pipeline.errors import DataError
from pipeline.preprocess import Preprocessing
from pipeline.runners.base import ModelInfo, Runner
from pipeline.runners.compare import softmax

GIL_SWITCH_S = 0.0002
SHADOW_NICE = 10  # nice levels the FP32 shadow's thread runs below the INT8 path's, so it yields the cores


@dataclass(frozen=True)
class Budget:
    """Threads per stage: the INT8 runtime's, the FP32 shadow's, OpenCV's (decode, resize,
    drawing). 0 in the configuration means: what is left of the cores for INT8, one each
    for the others."""

    int8: int
    fp32: int
    opencv: int

    @classmethod
    def from_config(cls, cam: CameraConfig, cores: Optional[int] = None) -> "Budget":
        cores = cores or os.cpu_count() or 1
        fp32 = cam.fp32_threads or 1
        opencv = cam.opencv_threads or 1
        return cls(cam.int8_threads or max(1, cores - fp32), fp32, opencv)


@dataclass
class Result:
    """One classified frame on its way to the output stage."""

    frame: np.ndarray
    shown: Dict[str, Any]
    captured_at: float


class Shadow(threading.Thread):
    """The FP32 reference, one offer at a time; the stats it writes are its own."""

    def __init__(self, reference: Runner, info: ModelInfo, stats: LoopStats, live: bool, warm: np.ndarray) -> None:
        super().__init__(daemon=True, name="fp32-shadow")
        self.reference, self.info, self.stats, self.live, self.warm = reference, info, stats, live, warm
        self.jobs: queue.Queue = queue.Queue(maxsize=1 if live else 4)
        self.error: Optional[BaseException] = None
        self.ready = threading.Event()

    def offer(self, job: Tuple[int, np.ndarray, np.ndarray, int, Optional[int]]) -> bool:
        """Take (frame index, input, INT8 probabilities, INT8 top, truth). Live, a shadow
        still busy skips it (counted): the INT8 path never waits. A file has no clock to keep,
        so every offer is taken, a few queued, and the FP32 figures do not depend on timing."""
        if not self.live:
            while self.error is None:
                try:
                    self.jobs.put(job, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False
        try:
            self.jobs.put_nowait(job)
            return True
        except queue.Full:
            self.stats.shadow_skipped += 1
            return False

    def run(self) -> None:
        lower_priority(SHADOW_NICE)
        try:
            warm_once(self.ready, lambda: self.reference.run(self.warm))
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                self._compare(*job)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            self.error = exc

    def close(self) -> None:
        while self.is_alive():
            try:
                self.jobs.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.join(timeout=30)

    def _compare(self, index: int, x: np.ndarray, probs: np.ndarray, top: int, truth: Optional[int]) -> None:
        t0 = time.perf_counter()
        ref = softmax(self.reference.run(x)[0])
        stats = self.stats
        stats.latency_ms["fp32"].append((time.perf_counter() - t0) * 1e3)
        ref_top = int(ref.argmax())
        stats.shadow_frames += 1
        stats.agree += int(ref_top == top)
        stats.confidence_change.append(float(probs[top] - ref[ref_top]))
        if ref_top != top:
            stats.flips.append({"frame": index, "int8": self.info.class_names[top],
                                "fp32": self.info.class_names[ref_top]})
        if truth is not None:
            stats.fp32_labelled += 1
            stats.fp32_correct += int(ref_top == truth)


@dataclass
class Prepared:
    """A frame and the model's input made from it."""

    frame: np.ndarray
    label: Optional[str]
    captured_at: float
    x: np.ndarray


class Preprocess(threading.Thread):
    """Frames from the capture thread → the model's input, beside the INT8 stage, so the
    INT8 runtime's thread does nothing but INT8. Its last item says how the frames ended."""

    def __init__(self, capture: Capture, info: ModelInfo, cam: CameraConfig, stats: LoopStats,
                 first_frame: Callable[[np.ndarray], None], stopping: threading.Event, warm: np.ndarray) -> None:
        super().__init__(daemon=True, name="preprocess")
        self.capture, self.info, self.cam, self.stats, self.first_frame = capture, info, cam, stats, first_frame
        self.out = Handoff(capture.source.live, stopping)
        self.stopping, self.warm = stopping, warm
        self.check: Optional[threading.Thread] = None
        self.check_error: Optional[BaseException] = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            warm_once(self.ready, lambda: prepare(self.warm, self.info.preprocessing))
            status = self._prepare_all()
            self._raise_check(wait=True)
            self.out.put(status, final=True)
        except BaseException as exc:  # noqa: BLE001 - handed downstream, raised by the output stage
            self.out.put(exc, final=True)

    def _prepare_all(self) -> str:
        """Every frame until the source ends; the status string is the stage's last word."""
        stats, pre = self.stats, self.info.preprocessing
        while not self.stopping.is_set():
            t0 = time.perf_counter()
            try:
                item = self.capture.get(timeout=self.cam.timeout_s)
            except queue.Empty:
                return "lost: no frame within the timeout"
            if item is END:
                return "lost camera" if self.capture.lost else "ended"
            if isinstance(item, BaseException):
                raise item
            frame, label, captured_at = item
            stats.latency_ms["capture_wait"].append((time.perf_counter() - t0) * 1e3)
            expect_frame(frame, self.cam.source)
            if self.check is None:
                self._start_check(frame)
            self._raise_check()
            t1 = time.perf_counter()
            x = prepare(frame, pre)
            stats.latency_ms["preprocess"].append((time.perf_counter() - t1) * 1e3)
            self.out.put(Prepared(frame, label, captured_at, x))
        return "stopped"

    def _start_check(self, frame: np.ndarray) -> None:
        """The first frame's parity check, beside the loop: it takes a fifth of a second at
        640x480, long enough for a live camera to drop frames if the loop waited for it. A
        failure stops the loop at the next frame, and at the end at the latest."""
        def check() -> None:
            try:
                self.first_frame(frame)
            except BaseException as exc:  # noqa: BLE001 - raised by this stage
                self.check_error = exc

        self.check = threading.Thread(target=check, daemon=True, name="parity-check")
        self.check.start()

    def _raise_check(self, wait: bool = False) -> None:
        if wait and self.check is not None:
            self.check.join()
        if self.check_error is not None:
            raise self.check_error


class Inference(threading.Thread):
    """Prepared inputs → INT8 → results for the output stage (and offers to the shadow)."""

    def __init__(self, source: Handoff, runner: Runner, info: ModelInfo, shadow: Shadow,
                 cam: CameraConfig, stats: LoopStats, stopping: threading.Event, warm: np.ndarray) -> None:
        super().__init__(daemon=True, name="int8-inference")
        self.source, self.runner, self.info, self.shadow = source, runner, info, shadow
        self.cam, self.stats, self.stopping, self.warm = cam, stats, stopping, warm
        self.ready = threading.Event()
        # live sources: the output stage always shows the newest result; files: every one, in order
        self.results = Handoff(source.live, stopping)
        self.status = "ended"
        self.smoothed: List[np.ndarray] = []

    def run(self) -> None:
        try:
            warm_once(self.ready, lambda: self.runner.run(self.warm))
            self.status = self._classify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the output stage, which raises it
            self.results.put(exc, final=True)
        finally:
            self.results.put(DONE, final=True)

    def _classify_all(self) -> str:
        cam, stats = self.cam, self.stats
        while not cam.max_frames or stats.frames < cam.max_frames:
            item = self.source.get()
            if item is DONE:
                return "stopped"
            if isinstance(item, str):  # how the frames ended
                return item
            if isinstance(item, BaseException):
                raise item
            t0 = time.perf_counter()
            shown, job = self._classify(item)
            stats.latency_ms["frame"].append((time.perf_counter() - t0) * 1e3)
            self.results.put(Result(item.frame, shown, item.captured_at))
            if job is not None:  # after the hand-off: waking the shadow must not delay the label
                self.shadow.offer(job)
        return "max frames"

    def _classify(self, item: Prepared) -> Tuple[Dict[str, Any], Optional[tuple]]:
        """INT8 on one frame: what to show, and the shadow's job on every Nth frame. Accuracy
        and agreement use the raw output, the displayed label the temporally smoothed one."""
        cam, info, stats = self.cam, self.info, self.stats
        t1 = time.perf_counter()
        probs = softmax(self.runner.run(item.x)[0])
        stats.latency_ms["int8"].append((time.perf_counter() - t1) * 1e3)
        top, truth = int(probs.argmax()), label_index(item.label, info)
        if truth is not None:
            stats.labelled += 1
            stats.int8_correct += int(top == truth)
        job = (stats.frames, item.x, probs, top, truth) if stats.frames % cam.shadow_every == 0 else None
        stats.frames += 1
        shown = probs if not self.smoothed else cam.smoothing * self.smoothed[0] + (1 - cam.smoothing) * probs
        self.smoothed[:] = [shown]
        best = np.argsort(-shown)[: cam.top_k]
        return {"class": info.class_names[best[0]], "confidence": float(shown[best[0]]),
                "top_k": [(info.class_names[i], float(shown[i])) for i in best]}, job


def run_stages(capture: Capture, runner: Runner, reference: Runner, info: ModelInfo, cam: CameraConfig,
               stats: LoopStats, first_frame: Callable[[np.ndarray], None],
               show: Callable[[Result], bool], warm: np.ndarray) -> str:
    """Run preprocessing, inference and the shadow in their threads and the output stage
    here until the frames end, ``max_frames``, or ``show`` returns True (the user quit).
    The capture starts (and ``stats.started`` is set) once every stage has done its work
    once on ``warm``, a frame of the camera's size, in its own thread: a thread's first
    call costs up to twice a later one (measured, issue 15), and it should not be a
    camera frame that pays it."""
    stopping = threading.Event()
    switch = sys.getswitchinterval()
    # A stage leaving ONNX Runtime or OpenCV must get the GIL back at once, not after the
    # default 5 ms another stage may hold it for: process-wide, restored when the loop ends.
    sys.setswitchinterval(GIL_SWITCH_S)
    x = prepare(warm, info.preprocessing)
    shadow = Shadow(reference, info, stats, capture.source.live, x)
    preprocess = Preprocess(capture, info, cam, stats, first_frame, stopping, warm)
    inference = Inference(preprocess.out, runner, info, shadow, cam, stats, stopping, x)
    for stage in (shadow, preprocess, inference):
        stage.start()
    try:
        for stage in (shadow, preprocess, inference):
            stage.ready.wait()
        capture.start()
        stats.started = time.perf_counter()
        return _output(inference, shadow, stats, show)
    finally:
        stats.ended = time.perf_counter()  # before the joins below: shutting down is not the session's time
        stopping.set()
        capture.stop()  # wakes a preprocess stage waiting for a frame
        for stage in (preprocess, inference):
            stage.join(timeout=30)
        shadow.close()
        sys.setswitchinterval(switch)
        stats.results_dropped = inference.results.dropped
        stats.prepared_dropped = preprocess.out.dropped


def _output(inference: Inference, shadow: Shadow, stats: LoopStats, show: Callable[[Result], bool]) -> str:
    while True:
        item = inference.results.get()
        if item is DONE:
            _raise_from(shadow)
            return inference.status
        if isinstance(item, BaseException):
            raise item
        _raise_from(shadow)
        t0 = time.perf_counter()
        quit_now = show(item)
        done = time.perf_counter()
        stats.latency_ms["output"].append((done - t0) * 1e3)
        stats.latency_ms["capture_to_label"].append((done - item.captured_at) * 1e3)
        stats.shown += 1
        if quit_now:
            return "stopped by user"


def _raise_from(shadow: Shadow) -> None:
    if shadow.error is not None:
        raise shadow.error


def warm_once(ready: threading.Event, work: Callable[[], object]) -> None:
    """A stage's first call, in its own thread, then ``ready``; set even when the work
    fails, so the loop does not wait for a stage whose error is on its way downstream."""
    try:
        work()
    finally:
        ready.set()


def lower_priority(by: int) -> None:
    """Lower the calling thread's scheduling priority by ``by`` nice levels, to at most 19
    (Linux: a thread is a task with its own nice value). Why: on 2 cores the shadow's
    12-28 ms FP32 runs took turns with the INT8 path's stages; at a lower priority the
    scheduler gives the cores to those first and the shadow the time they leave. Best
    effort: elsewhere, or where the system refuses, the thread keeps its priority."""
    if sys.platform.startswith("linux"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
        except OSError:
            pass


def prepare(frame: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """BGR frame → the model's float32 (1, 3, S, S) input, by the deployment definition."""
    return pre.normalize(pre.prepare(frame, order="BGR")[None])


def expect_frame(frame: np.ndarray, spec: str) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 8:
        raise DataError(f"{spec}: frame of unexpected size or channels {frame.shape}; expected (H, W, 3)")


def label_index(label: Optional[str], info: ModelInfo) -> Optional[int]:
    if label is None:
        return None
    for names in (info.classes, info.class_names):
        if label in names:
            return list(names).index(label)
    return None
