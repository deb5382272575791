"""``make bench-camera``: the loop's stages timed alone, and its end-to-end FPS, on replay
clips from the val split at 640×480 and 224×224, side by side in one run."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.artifacts import read_json, write_json
from pipeline.device.camera import loop
from pipeline.device.camera.clip import make_clip
from pipeline.config import Config
from pipeline.workstation.data import open_dataset
from pipeline.runners.registry import open_model

SIZES = ((640, 480), (224, 224))


def run(cfg: Config) -> Path:
    model, reference = loop.default_models(cfg)
    split = open_dataset(cfg.data).split("val")
    rows = []
    for size in SIZES:
        clip = make_clip(split, cfg.run_dir / "bench" / f"clip-{size[0]}x{size[1]}.avi",
                         cfg.camera.clip_images, cfg.camera.frames_per_image, size, cfg.run.seed,
                         cfg.camera.clip_motion)
        rows.append({"size": f"{size[0]}x{size[1]}", **stage_times(clip, model, reference, cfg),
                     **loop_fps(clip, cfg)})
    path = write_json(cfg.run_dir / "bench" / "camera.json", {"model": str(model), "reference": str(reference),
                                                              "rows": rows})
    print(f"{'frames':<9} {'decode':>8} {'preproc':>8} {'INT8':>8} {'FP32':>8} {'loop FPS':>9} {'agree':>7}  (ms per frame)")
    for r in rows:
        print(f"{r['size']:<9} {r['decode_ms']:>8.2f} {r['preprocess_ms']:>8.2f} {r['int8_ms']:>8.2f} "
              f"{r['fp32_ms']:>8.2f} {r['loop_fps']:>9.1f} {r['agreement']:>7.2%}")
    return path


def stage_times(clip: Path, model: Path, reference: Path, cfg: Config) -> dict[str, float]:
    """Median milliseconds per frame of each stage run alone over the whole clip."""
    reader, frames, decode = cv2.VideoCapture(str(clip)), [], []
    while True:
        t0 = time.perf_counter()
        ok, frame = reader.read()
        if not ok:
            break
        decode.append(time.perf_counter() - t0)
        frames.append(frame)
    reader.release()
    int8, info = open_model(model, cfg.evaluate.threads)
    fp32, _ = open_model(reference, cfg.evaluate.threads)
    prep, inputs = [], []
    for frame in frames:
        t0 = time.perf_counter()
        inputs.append(loop.prepare(frame, info.preprocessing))
        prep.append(time.perf_counter() - t0)
    return {"frames": len(frames), "decode_ms": _median_ms(decode), "preprocess_ms": _median_ms(prep),
            "int8_ms": _median_ms(_timed(int8, inputs)), "fp32_ms": _median_ms(_timed(fp32, inputs))}


def loop_fps(clip: Path, cfg: Config) -> dict[str, Any]:
    summary = cfg.run_dir / "bench" / f"{clip.stem}.loop.json"
    cam = dataclasses.replace(cfg.camera, source=f"replay:{clip}", headless=True, summary=str(summary))
    record = read_json(loop.run(dataclasses.replace(cfg, camera=cam)))
    return {"loop_fps": record["fps"], "agreement": record["top1_agreement"] or 0.0,
            "int8_accuracy": record["int8_accuracy"], "fp32_accuracy": record["fp32_accuracy"]}


def _timed(runner: Any, inputs: list[np.ndarray]) -> list[float]:
    for x in inputs[:5]:
        runner.run(x)  # warm-up
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        runner.run(x)
        times.append(time.perf_counter() - t0)
    return times


def _median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds) * 1e3) if seconds else float("nan")
