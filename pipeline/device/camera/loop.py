"""``python -m pipeline camera``: classify live frames with the INT8 model and check it
against the FP32 reference on every Nth frame, on the same input.

Every frame goes through the deployment preprocessing (``Preprocessing.prepare``, the
code evaluation and calibration use) after OpenCV's BGR is turned into RGB; a parity check
on the first frame proves the loop's path and the evaluation path (file → PIL) agree. The
summary JSON is written however the loop ends: end of file, lost camera, q/Esc, Ctrl-C.
"""
from __future__ import annotations

import os
import queue
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.artifacts import provenance, write_json
from pipeline.device.camera.capture import END, Capture
from pipeline.device.camera.clip import CODECS
from pipeline.device.camera.preview import MjpegPreview
from pipeline.device.camera.sources import FrameSource, open_source
from pipeline.device.camera.stats import LoopStats
from pipeline.config import CameraConfig, Config
from pipeline.errors import DataError, PipelineError
from pipeline.preprocess import Preprocessing, read_rgb
from pipeline.runners.compare import softmax
from pipeline.runners.base import ModelInfo, Runner
from pipeline.runners.registry import open_model
from targets.detect import target_profile


def run(cfg: Config) -> Path:
    cam = cfg.camera
    model_path, reference_path = default_models(cfg)
    runner, info = open_model(model_path, cfg.evaluate.threads)
    reference, ref_info = open_model(reference_path, cfg.evaluate.threads)
    require_same_classes(info, ref_info)
    source = open_source(cam.source)
    if source.classes is not None and list(info.classes) != source.classes:
        raise DataError(f"{cam.source}: labels name {len(source.classes)} classes, the model has "
                        f"{len(info.classes)}; this clip was made for another model")
    summary_path = Path(cam.summary) if cam.summary else cfg.run_dir / "camera" / f"{int(time.time())}.json"
    stats = LoopStats()
    status = "ended"
    try:
        status = classify(source, cam, runner, reference, info, stats)
    except KeyboardInterrupt:
        status = "interrupted"
    except PipelineError as exc:
        status = f"error: {exc}"
        raise
    finally:
        stats.ended = stats.ended or time.perf_counter()
        record = {**provenance("camera", {"model": model_path, "reference": reference_path}),
                  "source": cam.source, "status": status, "shadow_every": cam.shadow_every, **stats.summary()}
        write_json(summary_path, record)
        print_summary(record, summary_path)
    return summary_path


def default_models(cfg: Config) -> tuple[Path, Path]:
    """The target's INT8 model and its FP32 reference, unless given."""
    out, cam = cfg.run_dir, cfg.camera
    profile = target_profile(cfg.engine.target)
    if profile.runtime == "onnxruntime":
        defaults = (out / "model.int8.cpu.onnx", out / "model.fp32.onnx")
    else:
        folder = out / "engines" / profile.name
        defaults = (folder / f"model.{profile.precision}.engine", folder / "model.fp32.engine")
    return Path(cam.model or defaults[0]), Path(cam.reference or defaults[1])


def require_same_classes(info: ModelInfo, ref: ModelInfo) -> None:
    if info.classes != ref.classes:
        raise DataError(f"{info.path} has {len(info.classes)} classes, {ref.path} has "
                        f"{len(ref.classes)}; model and reference must come from one run")


def classify(source: FrameSource, cam: CameraConfig, runner: Runner, reference: Runner,
             info: ModelInfo, stats: LoopStats) -> str:
    capture = Capture(source, (lambda: open_source(cam.source)) if source.live else None, cam.retries)
    capture.start()
    writer, show = None, _has_display() and not cam.headless
    stats.window = show
    preview = MjpegPreview(cam.preview_port, cam.preview_host) if cam.preview_port >= 0 else None
    if preview is not None:
        print(f"preview: {preview.url}", flush=True)
    smoothed: list[np.ndarray] = []
    print(f"camera: reading {source.spec} ({'live' if source.live else 'in order'}); q/Esc or Ctrl-C ends",
          flush=True)
    stats.started = time.perf_counter()
    try:
        while not cam.max_frames or stats.frames < cam.max_frames:
            t0 = time.perf_counter()
            try:
                item = capture.get(timeout=cam.timeout_s)
            except queue.Empty:
                return "lost: no frame within the timeout"
            if item is END:
                return "lost camera" if capture.lost else "ended"
            if isinstance(item, Exception):
                raise item
            frame, label = item
            stats.latency_ms["capture_wait"].append((time.perf_counter() - t0) * 1e3)
            if stats.frames == 0:
                check_preprocessing_parity(frame, info.preprocessing)
            result = process(frame, label, cam, runner, reference, info, stats, smoothed)
            stats.latency_ms["frame"].append((time.perf_counter() - t0) * 1e3)
            annotated = overlay(frame, result, stats)
            writer = write_frame(writer, cam.video_out, annotated)
            if preview is not None:
                preview.publish(annotated)
            if show and _window(annotated):
                return "stopped by user"
        return "max frames"
    finally:
        stats.ended = time.perf_counter()
        capture.stop()
        stats.dropped = capture.dropped
        if writer is not None:
            writer.release()
        if preview is not None:
            preview.close()
        if show:
            cv2.destroyAllWindows()


def process(frame: np.ndarray, label: str | None, cam: CameraConfig, runner: Runner, reference: Runner,
            info: ModelInfo, stats: LoopStats, smoothed: list[np.ndarray]) -> dict[str, Any]:
    """One frame: INT8 (and the FP32 shadow on every Nth); accuracy and agreement use the
    raw INT8 output, the displayed label the temporally smoothed one."""
    expect_frame(frame, cam.source)
    t0 = time.perf_counter()
    x = prepare(frame, info.preprocessing)
    t1 = time.perf_counter()
    probs = softmax(runner.run(x)[0])
    t2 = time.perf_counter()
    stats.latency_ms["preprocess"].append((t1 - t0) * 1e3)
    stats.latency_ms["int8"].append((t2 - t1) * 1e3)
    top = int(probs.argmax())
    truth = _label_index(label, info)
    if truth is not None:
        stats.labelled += 1
        stats.int8_correct += int(top == truth)
    if stats.frames % cam.shadow_every == 0:
        shadow(x, probs, top, truth, reference, info, stats)
    stats.frames += 1
    shown = probs if not smoothed else cam.smoothing * smoothed[0] + (1 - cam.smoothing) * probs
    smoothed[:] = [shown]
    best = np.argsort(-shown)[: cam.top_k]
    return {"class": info.class_names[best[0]], "confidence": float(shown[best[0]]),
            "top_k": [(info.class_names[i], float(shown[i])) for i in best]}


def shadow(x: np.ndarray, probs: np.ndarray, top: int, truth: int | None, reference: Runner,
           info: ModelInfo, stats: LoopStats) -> None:
    """The FP32 reference on the same input: agreement, flips, confidence change."""
    t0 = time.perf_counter()
    ref = softmax(reference.run(x)[0])
    stats.latency_ms["fp32"].append((time.perf_counter() - t0) * 1e3)
    ref_top = int(ref.argmax())
    stats.shadow_frames += 1
    stats.agree += int(ref_top == top)
    stats.confidence_change.append(float(probs[top] - ref[ref_top]))
    if ref_top != top:
        stats.flips.append({"frame": stats.frames, "int8": info.class_names[top],
                            "fp32": info.class_names[ref_top]})
    if truth is not None:
        stats.fp32_labelled += 1
        stats.fp32_correct += int(ref_top == truth)


def prepare(frame: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """BGR frame → the model's float32 (1, 3, S, S) input, by the deployment definition."""
    return pre.normalize(pre.prepare(frame, order="BGR")[None])


def check_preprocessing_parity(frame: np.ndarray, pre: Preprocessing, tolerance: float = 1e-6) -> None:
    """The loop's path (OpenCV BGR frame) against the evaluation path (a file decoded by read_rgb)
    on the same pixels; a colour-order or resize mismatch stops the loop with the reason."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.png"
        cv2.imwrite(str(path), frame)
        offline = pre.normalize(pre.prepare(read_rgb(path))[None])
    live = prepare(frame, pre)
    if np.abs(live - offline).max() > tolerance:
        swapped = np.abs(live[:, ::-1] - offline).max() <= tolerance
        reason = "colour order (BGR vs RGB)" if swapped else "resize/crop or normalisation"
        raise DataError(f"preprocessing parity failed: the live path differs from evaluation by "
                        f"{np.abs(live - offline).max():.3g} ({reason})")


def expect_frame(frame: np.ndarray, spec: str) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 8:
        raise DataError(f"{spec}: frame of unexpected size or channels {frame.shape}; expected (H, W, 3)")


def overlay(frame: np.ndarray, result: dict[str, Any], stats: LoopStats) -> np.ndarray:
    out = frame.copy()
    p = stats.percentiles("frame")
    agreement = stats.agreement
    lines = [f"{result['class']} {result['confidence']:.0%}",
             f"{stats.frames / max(1e-9, time.perf_counter() - stats.started):.1f} FPS  "
             f"p50 {p['p50']:.1f} ms  p99 {p['p99']:.1f} ms",
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
    lat = record["latency_ms"]
    agree = record["top1_agreement"]
    print(f"camera: {record['frames']} frames, {record['fps']:.1f} FPS, frame p50 {lat['frame']['p50']:.1f} ms, "
          f"INT8 p50 {lat['int8']['p50']:.2f} ms, FP32 p50 {lat['fp32']['p50']:.2f} ms, agreement "
          f"{'-' if agree is None else format(agree, '.2%')}, accuracy INT8 "
          f"{'-' if record['int8_accuracy'] is None else format(record['int8_accuracy'], '.2%')} "
          f"({record['status']}) -> {path}")


def _label_index(label: str | None, info: ModelInfo) -> int | None:
    if label is None:
        return None
    for names in (info.classes, info.class_names):
        if label in names:
            return list(names).index(label)
    return None


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _window(frame: np.ndarray) -> bool:
    cv2.imshow("edgeresnet", frame)
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)
