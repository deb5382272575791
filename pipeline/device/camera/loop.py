"""``python -m pipeline camera``: classify live frames with the INT8 model and check it
against the FP32 reference on every Nth frame, on the same input.

Every frame goes through the deployment preprocessing (``Preprocessing.prepare``, the
code evaluation and calibration use) after OpenCV's BGR is turned into RGB; a parity check
on the first frame holds the loop's path to an independent reference of that definition
(``check_preprocessing_parity``). The summary JSON is written however the loop ends: end of
file, lost camera, q/Esc, Ctrl-C.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.artifacts import provenance, write_json
from pipeline.device.camera import parity
from pipeline.device.camera.capture import Capture
from pipeline.device.camera.clip import CODECS
from pipeline.device.camera.preview import MjpegPreview
from pipeline.device.camera.sources import FrameSource, open_source
from pipeline.device.camera.stages import Budget, Result, prepare, run_stages
from pipeline.device.camera.stats import LoopStats, write_session
from pipeline.config import CameraConfig, Config
from pipeline.errors import DataError, PipelineError
from pipeline.imagefolder import class_mapping
from pipeline.preprocess import Preprocessing
from pipeline.runners.base import ModelInfo, Runner
from pipeline.device.deployment import deployment
from pipeline.runners.registry import ModelSpec
from targets.detect import target_profile


def run(cfg: Config) -> Path:
    cam = cfg.camera
    model, ref_model = default_models(cfg)
    budget = Budget.from_config(cam)  # threads per stage: INT8, the FP32 shadow, OpenCV
    runner, info = model.open(budget.int8)
    reference, ref_info = ref_model.open(budget.fp32)
    require_same_classes(info, ref_info)
    print(f"models: {info.precision} on {info.runtime} ({model.path.name}), FP32 shadow {ref_info.precision} on "
          f"{ref_info.runtime} ({ref_model.path.name})", flush=True)
    source = in_model_labels(open_source(cam.source, cam.timeout_s), info)
    started, stats = time.time(), LoopStats()
    status = "error: the loop did not start"
    try:
        status = classify(source, cam, runner, reference, info, stats)
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception as exc:  # any failure is an error, not "ended": a busy preview port is an OSError
        status = f"error: {exc}" if isinstance(exc, PipelineError) else f"error: {type(exc).__name__}: {exc}"
        raise
    finally:
        stats.ended = stats.ended or time.perf_counter()
        stats.started = stats.started or stats.ended  # failed before the first frame: no time, no FPS
        record = {**provenance("camera", {"model": model.path, "reference": ref_model.path}),
                  "source": cam.source, "status": status, "shadow_every": cam.shadow_every,
                  "runtime": info.runtime, "reference_runtime": ref_info.runtime,
                  "precision": info.precision, "reference_precision": ref_info.precision, **stats.summary()}
        summary_path = (write_json(Path(cam.summary), record) if cam.summary
                        else write_session(cfg.run_dir / "camera", started, record))
        print_summary(record, summary_path)
    return summary_path


def default_models(cfg: Config) -> tuple[ModelSpec, ModelSpec]:
    """The target's deployed model and its FP32 reference (a CPU target: the runtime bench
    chose, the reference in true f32 on it), unless given (``camera.runtime`` for both)."""
    cam = cfg.camera
    chosen = None if cam.model and cam.reference else deployment(cfg.run_dir, target_profile(cfg.engine.target))
    model = ModelSpec("model", Path(cam.model), cam.runtime) if cam.model else chosen.model
    reference = ModelSpec("reference", Path(cam.reference), cam.runtime) if cam.reference else chosen.reference
    return model, reference


def in_model_labels(source: FrameSource, info: ModelInfo) -> FrameSource:
    """A labelled clip's labels as the model's class ids: a clip made from folders named
    otherwise (WordNet ids, readable names) is matched to the model's labels by name, as
    evaluation matches them; a label the model cannot name is refused with the list."""
    if source.classes is None or list(info.classes) == source.classes:
        return source
    mapping = class_mapping(source.classes, source.classes, info.classes, info.class_names, source.spec)
    ids = {name: info.classes[i] for name, i in zip(source.classes, mapping)}
    frames = ((frame, ids.get(label, label) if label is not None else None) for frame, label in source.frames)
    return dataclasses.replace(source, frames=frames, classes=list(info.classes))


def require_same_classes(info: ModelInfo, ref: ModelInfo) -> None:
    if info.classes != ref.classes:
        raise DataError(f"{info.path} has {len(info.classes)} classes, {ref.path} has "
                        f"{len(ref.classes)}; model and reference must come from one run")


def classify(source: FrameSource, cam: CameraConfig, runner: Runner, reference: Runner,
             info: ModelInfo, stats: LoopStats) -> str:
    """Capture, inference, the FP32 shadow and the output overlapped (see stages.py); the
    output stage runs here, where OpenCV's window must live."""
    try:  # before the capture exists: a busy port then leaves no source to release
        preview = MjpegPreview(cam.preview_port, cam.preview_host) if cam.preview_port >= 0 else None
    except BaseException:
        source.close()
        raise
    if preview is not None:
        print(f"preview: {preview.url}", flush=True)
    reopen = (lambda: open_source(cam.source, cam.timeout_s)) if source.live else None
    capture = Capture(source, reopen, cam.retries)
    show = _has_display() and not cam.headless
    stats.window = show
    writer: list = []

    def output(result: Result) -> bool:
        annotated = overlay(result.frame, result.shown, stats)
        if cam.video_out:
            writer[:] = [write_frame(writer[0] if writer else None, cam.video_out, annotated)]
        if preview is not None:
            preview.publish(annotated)
        return show and _window(annotated)

    print(f"camera: reading {source.spec} ({'live' if source.live else 'in order'}); q/Esc or Ctrl-C ends",
          flush=True)
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(Budget.from_config(cam).opencv)  # process-wide: restored when the loop ends
    try:
        parity_check = ParityCheck(info.preprocessing, source.size)  # before the camera starts
        warm = warm_output(info, source.size)
        status = run_stages(capture, runner, reference, info, cam, stats, parity_check.first_frame, output, warm)
        parity_check.at_end()
        return status
    finally:
        stats.ended = stats.ended or time.perf_counter()
        capture.stop()
        cv2.setNumThreads(opencv_threads)
        stats.dropped = capture.dropped
        for item in writer:
            item.release()
        if preview is not None:
            preview.close()
        if show:
            cv2.destroyAllWindows()


def warm_output(info: ModelInfo, frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """A frame of the camera's size (where the source says it), with the output stage's
    first call done on it here, in the thread the output runs in; the other stages warm on
    it in theirs (``run_stages``). First calls are slow (allocations, OpenCV's font at the
    frame's scale, numpy's percentile): the first frame's label took 27-41 ms instead of 9
    when only the runtimes were warmed, and in the main thread (measured, issue 15)."""
    width, height = frame_size or (64, 64)
    frame = parity.probe_frame(height, width)
    scratch = LoopStats(started=time.perf_counter())  # the session's own figures stay untouched
    scratch.latency_ms["frame"].append(0.0)
    overlay(frame, {"class": info.class_names[0], "confidence": 0.0}, scratch)
    return frame


class ParityCheck:
    """When the preprocessing parity check runs. The reference takes about 0.2 s at 640x480;
    run beside the loop on the first frame it delayed the first live frames by up to 50 ms
    (measured, issue 15). So where the source says its frame size, the probe frame is checked
    before the camera starts (no live frame waits for it) and the first frame, kept, when
    the session ends. Where the size is not known, or the first frame has another, both are
    checked beside the loop as the first frame arrives."""

    def __init__(self, pre: Preprocessing, frame_size: tuple[int, int] | None) -> None:
        self.pre, self.size = pre, frame_size
        self.first: np.ndarray | None = None
        if frame_size is not None:
            width, height = frame_size
            _check_parity((("a probe frame", parity.probe_frame(height, width)),), pre)

    def first_frame(self, frame: np.ndarray) -> None:
        """Called beside the loop with the first frame."""
        self.first = frame
        if frame.ndim == 3 and self.size != (frame.shape[1], frame.shape[0]):
            self.size = None  # the probe checked at start had another size: check both now
            check_preprocessing_parity(frame, self.pre)

    def at_end(self) -> None:
        """The first frame itself, once the loop has ended normally."""
        if self.first is not None and self.size is not None:
            _check_parity((("the first frame", self.first),), self.pre)


def check_preprocessing_parity(frame: np.ndarray, pre: Preprocessing, tolerance: float = 1e-5,
                               live: parity.LivePath | None = None) -> None:
    """The loop's path (``live``, by default the stages' ``prepare`` of an OpenCV BGR frame)
    against an independent reference (:mod:`pipeline.device.camera.parity`: the evaluation
    path's decoder, then torchvision's resize, crop and normalisation written anew), on the
    first frame and on a generated probe frame of its size (a flat first frame would hide
    a resize fault). The reference is torch's fixed point, bit for bit, so ``tolerance``
    covers only float32 rounding (measured: 6e-7). A mismatch stops the loop with one line
    naming the cause: colour order, normalisation, interpolation, or resize/crop."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        return  # not a frame: the stages name it
    _check_parity((("the first frame", frame), ("a probe frame", parity.probe_frame(*frame.shape[:2]))),
                  pre, tolerance, live)


def _check_parity(images: tuple[tuple[str, np.ndarray], ...], pre: Preprocessing, tolerance: float = 1e-5,
                  live: parity.LivePath | None = None) -> None:
    live = live or prepare
    for name, image in images:
        cause = parity.mismatch(live(image, pre), parity.evaluation_rgb(image), pre, tolerance)
        if cause:
            raise DataError(f"preprocessing parity failed on {name} ({image.shape[1]}x{image.shape[0]}): {cause}")


OVERLAY_WINDOW = 300  # frames the overlay's latency figures cover


def overlay(frame: np.ndarray, result: dict[str, Any], stats: LoopStats) -> np.ndarray:
    out = frame.copy()
    recent = stats.latency_ms["frame"][-OVERLAY_WINDOW:]  # the last few seconds, not the whole session
    p50, p99 = np.percentile(recent, [50, 99]) if recent else (float("nan"), float("nan"))
    agreement = stats.agreement
    lines = [f"{result['class']} {result['confidence']:.0%}",
             f"{stats.frames / max(1e-9, time.perf_counter() - stats.started):.1f} FPS  "
             f"p50 {p50:.1f} ms  p99 {p99:.1f} ms",
             f"INT8 vs FP32 agree {agreement:.1%}" if agreement is not None else "INT8 vs FP32: -"]
    scale = max(0.35, min(1.0, frame.shape[1] / 900))
    step = int(28 * scale) + 4
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for t in lines) + 16
    box = out[: step * len(lines) + 8, : width]
    box[...] = (box * 0.4).astype(out.dtype)  # darken behind the text so it reads on any scene
    for i, text in enumerate(lines):
        cv2.putText(out, text, (8, step * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def write_frame(writer: cv2.VideoWriter | None, path: str, frame: np.ndarray) -> cv2.VideoWriter | None:
    if not path:
        return None
    if writer is None:
        fourcc = cv2.VideoWriter_fourcc(*CODECS.get(Path(path).suffix, "mp4v"))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(path, fourcc, 15.0, (frame.shape[1], frame.shape[0]))
    writer.write(frame)
    return writer


def print_summary(record: dict[str, Any], path: Path) -> None:
    """One line; a figure the session has none of (a stage that never ran: null) shows as '-'."""
    def show(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lat = record["latency_ms"]
    print(f"camera: {record['frames']} frames, {record['fps']:.1f} FPS, frame p50 {show(lat['frame']['p50'], '.1f')} "
          f"ms, INT8 p50 {show(lat['int8']['p50'], '.2f')} ms, FP32 p50 {show(lat['fp32']['p50'], '.2f')} ms, "
          f"agreement {show(record['top1_agreement'], '.2%')}, accuracy INT8 {show(record['int8_accuracy'], '.2%')} "
          f"({record['status']}) -> {path}")


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _window(frame: np.ndarray) -> bool:
    cv2.imshow("edgeresnet", frame)
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)
