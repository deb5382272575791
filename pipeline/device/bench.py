"""``make bench``: latency of every model this machine can run for the target, with one
harness: fixed batch and shape, warm-up by time and count, then timed runs in interleaved
rounds (a slow spell of the machine hits every model alike). On a GPU the TensorRT
runner's CUDA-event timings (copies apart) are recorded beside the wall-clock figures.
Writes ``bench/<runtime>-<precision>.json`` with the statistics and every sample."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Dict

import numpy as np

from pipeline.artifacts import write_json
from pipeline.config import Config
from pipeline.errors import DataError
from pipeline.device.latency import measure_latency, summarize
from pipeline.runners.registry import open_model
from targets.detect import target_profile
from targets.profile import TargetProfile

ROUNDS = 10


def run(cfg: Config) -> Path:
    profile = target_profile(cfg.engine.target)
    models = available_models(cfg.run_dir, profile)
    if not models:
        raise DataError(f"{cfg.run_dir}: no model to benchmark; run make demo first")
    threads = cfg.evaluate.threads or os.cpu_count() or 1
    samples, extra = interleaved_latency(models, threads, cfg.evaluate.bench_runs, cfg.bench.batch)
    written = []
    for label, path in models.items():
        stats = summarize(samples[label], cfg.bench.batch, label)
        record = {"model": str(path), "label": label, "target": profile.name,
                  "runtime": label.split("-")[0], "precision": label.split("-", 1)[1], "batch": cfg.bench.batch, "threads": threads,
                  "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                  "cpu": platform.processor() or platform.machine(), "latency_ms": stats.to_dict(),
                  "device_ms": extra.get(label), "samples_ms": [round(v, 4) for v in samples[label]],
                  "size_mb": path.stat().st_size / 1e6}
        written.append(write_json(cfg.run_dir / "bench" / f"{label}.json", record))
        print(f"{label:<22} p50 {stats.median:7.2f} ms  p99 {stats.p99:7.2f} ms  {stats.throughput:8.1f} img/s")
    return written[-1]


def available_models(out: Path, profile: TargetProfile) -> Dict[str, Path]:
    """label (``<runtime>-<precision>``) → file, for the target's models that exist: the
    target's engines on a TensorRT target, the run's checkpoint and ONNX models on ``cpu``."""
    if profile.runtime == "tensorrt":
        folder = out / "engines" / profile.name
        candidates = {f"tensorrt-{p}": folder / f"model.{p}.engine" for p in ("fp32", "fp16", "int8")}
    else:
        candidates = {"torch-fp32": out / "model.pt", "onnxruntime-fp32": out / "model.fp32.onnx",
                      "onnxruntime-int8": out / "model.int8.onnx",
                      "onnxruntime-int8-cpu": out / "model.int8.cpu.onnx"}
    return {label: path for label, path in candidates.items() if path.is_file()}


def interleaved_latency(models: dict[str, Path], threads: int, runs: int,
                        batch_size: int = 1) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``runs`` timings per model taken in ROUNDS alternating rounds, plus device timings."""
    opened = {label: open_model(path, threads) for label, path in models.items()}
    size = next(iter(opened.values()))[1].preprocessing.input_size
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size)).astype(np.float32)
    parts: dict[str, list[np.ndarray]] = {label: [] for label in models}
    device: dict[str, Any] = {}
    for _ in range(ROUNDS):
        for label, (runner, _) in opened.items():
            parts[label].append(measure_latency(runner, batch, max(1, runs // ROUNDS), warmup_s=0.2)[1])
            if getattr(runner, "last_timing", None):
                device[label] = dict(runner.last_timing)
    for runner, _ in opened.values():
        runner.close()
    return {label: np.concatenate(chunks) for label, chunks in parts.items()}, device
