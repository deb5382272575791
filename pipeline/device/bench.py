"""``make bench``: latency of every model this machine can run for the target, with one
harness: fixed batch and shape, warm-up by time and count, then timed runs in interleaved
rounds (a slow spell of the machine hits every model alike). On a GPU the TensorRT
runner's CUDA-event timings (copies apart) are recorded beside the wall-clock figures.
On an integrated GPU (a Jetson) each engine runs both ways in the same rounds: with mapped
(zero-copy) memory under its own label, as the deployed loop runs it, and with page-locked
buffers plus device copies under ``<label>-copied``; which wins depends on the board.
On a CPU target every installed CPU runtime runs every INT8 rendering and the FP32 file
(and BF16 where the CPU has it) in the same rounds, and the target's deployment is chosen
from these figures (``deploy/<target>.json``, see deployment.py).
Writes ``bench/<label>.json`` (``<runtime>-<precision>[-copied]``) with the statistics,
every sample and the ``memory`` strategy (None for runtimes without device buffers)."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Dict, NamedTuple, Tuple

import numpy as np

from pipeline.artifacts import write_json
from pipeline.config import Config
from pipeline.errors import DataError
from pipeline.device.deployment import choose_cpu, cpu_models, split_label, write_choice
from pipeline.device.latency import measure_latency, summarize
from pipeline.runners.registry import ModelSpec
from targets.detect import target_profile
from targets.profile import TargetProfile

ROUNDS = 10
COPIED = "-copied"  # label suffix of an engine measured with copied memory beside its mapped run


class Opened(NamedTuple):
    """A model open for timing: its file, its runner and what it says about itself."""

    path: Path
    runner: Any
    info: Any


def run(cfg: Config) -> Path:
    profile = target_profile(cfg.engine.target)
    models = available_models(cfg.run_dir, profile)
    if not models:
        raise DataError(f"{cfg.run_dir}: no model to benchmark; run make demo first")
    threads = cfg.evaluate.threads or os.cpu_count() or 1
    opened = open_models(models, threads)
    try:
        samples, extra = time_interleaved(opened, cfg.evaluate.bench_runs, cfg.bench.batch)
    finally:
        close_models(opened)
    written, p50 = [], {}
    for label, model in opened.items():
        stats = summarize(samples[label], cfg.bench.batch, label)
        p50[label] = stats.median
        record = {"model": str(model.path), "label": label, "target": profile.name, **label_parts(label),
                  "memory": getattr(model.runner, "memory", None), "batch": cfg.bench.batch, "threads": threads,
                  "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                  "cpu": platform.processor() or platform.machine(), "latency_ms": stats.to_dict(),
                  "device_ms": extra.get(label), "samples_ms": [round(v, 4) for v in samples[label]],
                  "size_mb": model.path.stat().st_size / 1e6}
        written.append(write_json(cfg.run_dir / "bench" / f"{label}.json", record))
        print(f"{label:<22} p50 {stats.median:7.2f} ms  p99 {stats.p99:7.2f} ms  {stats.throughput:8.1f} img/s")
    if profile.on_cpu:
        choice = choose_cpu(profile, p50)
        print(f"target {profile.name} deploys {choice['label']}: {choice['why']}\n"
              f"  (recorded in {write_choice(cfg.run_dir, choice)})")
    return written[-1]


def label_parts(label: str) -> Dict[str, str]:
    """runtime and precision of a label; the ``-copied`` twin has its engine's precision."""
    runtime, precision = split_label(label[:-len(COPIED)] if label.endswith(COPIED) else label)
    return {"runtime": runtime, "precision": precision}


def available_models(out: Path, profile: TargetProfile) -> Dict[str, ModelSpec]:
    """label (``<runtime>-<precision>``) → model, for the target's models that exist: the
    target's engines on a TensorRT target, the run's checkpoint and ONNX files on every
    installed CPU runtime on a CPU target."""
    if profile.on_cpu:
        return cpu_models(out)
    folder = out / "engines" / profile.name
    candidates = {f"tensorrt-{p}": ModelSpec(f"tensorrt-{p}", folder / f"model.{p}.engine")
                  for p in ("fp32", "fp16", "int8")}
    return {label: spec for label, spec in candidates.items() if spec.path.is_file()}


def interleaved_latency(models: Dict[str, ModelSpec], threads: int, runs: int,
                        batch_size: int = 1) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """``runs`` timings per model taken in ROUNDS alternating rounds, plus device timings."""
    opened = open_models(models, threads)
    try:
        return time_interleaved(opened, runs, batch_size)
    finally:
        close_models(opened)


def open_models(models: Dict[str, ModelSpec], threads: int) -> Dict[str, Opened]:
    """Each model opened as it deploys; an engine that chose mapped memory (an integrated
    GPU) is opened a second time with copied memory, as ``<label>-copied``."""
    opened: Dict[str, Opened] = {}
    for label, spec in models.items():
        runner, info = spec.open(threads)
        opened[label] = Opened(spec.path, runner, info)
        if getattr(runner, "memory", None) == "mapped":
            opened[label + COPIED] = Opened(spec.path, *open_copied(spec.path))
    return opened


def open_copied(path: Path) -> Tuple[Any, Any]:
    """The engine with page-locked buffers and device copies (imported here: the ``cpu``
    target never needs the TensorRT runner)."""
    from pipeline.runners.tensorrt_runner import open_engine_file

    return open_engine_file(path, memory="copied")


def close_models(opened: Dict[str, Opened]) -> None:
    for model in opened.values():
        model.runner.close()


def time_interleaved(opened: Dict[str, Opened], runs: int,
                     batch_size: int = 1) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """``runs`` timings per opened model in ROUNDS alternating rounds, and each runner's
    last device timing (``last_timing``) where it has one."""
    size = next(iter(opened.values())).info.preprocessing.input_size
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size)).astype(np.float32)
    parts: Dict[str, list] = {label: [] for label in opened}
    device: Dict[str, Any] = {}
    for _ in range(ROUNDS):
        for label, model in opened.items():
            parts[label].append(measure_latency(model.runner, batch, max(1, runs // ROUNDS), warmup_s=0.2)[1])
            if getattr(model.runner, "last_timing", None):
                device[label] = dict(model.runner.last_timing)
    return {label: np.concatenate(chunks) for label, chunks in parts.items()}, device
