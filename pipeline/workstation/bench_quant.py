"""``make bench-quant``: FP32 vs both INT8 renderings vs the peer, side by side in one run.

Accuracy comes from the run's ``eval/`` files; latency is measured here, batch 1, the
same threads for every model, in interleaved rounds so that a slow spell of the machine
hits every model alike. Ratios, not absolute times, are the claim.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import read_json, write_json
from pipeline.config import Config
from pipeline.errors import DataError
from pipeline.device.evaluate import RUN_MODELS
from pipeline.device.bench import interleaved_latency
from pipeline.device.latency import summarize
from pipeline.plots import plot_quantization

def run(cfg: Config) -> Path:
    out = cfg.run_dir
    models = {label: out / name for name, label in RUN_MODELS.items()
              if name.endswith(".onnx") and (out / name).is_file()}  # ONNX Runtime, side by side
    if "fp32" not in models or len(models) < 2:
        raise DataError(f"{out}: bench-quant needs model.fp32.onnx and INT8 models; run make quantize")
    samples, _ = interleaved_latency(models, cfg.evaluate.threads or 2, cfg.evaluate.bench_runs)
    rows = [_row(label, path, samples, out) for label, path in models.items()]
    record = {"threads": cfg.evaluate.threads or 2, "batch": 1, "rows": rows,
              "quantize_seconds": _quantize_seconds(out)}
    path = write_json(out / "bench" / "quant.json", record)
    plot_quantization(samples, {r["model"]: r["top1"] for r in rows}, out / "bench" / "quant.png")
    print_rows(rows)
    return path


def _row(label: str, path: Path, samples: dict[str, np.ndarray], out: Path) -> dict[str, Any]:
    stats = summarize(samples[label], 1, label)
    base = summarize(samples["fp32"], 1, "fp32")
    evaluation = out / "eval" / f"onnxruntime-{label}.json"
    acc = read_json(evaluation) if evaluation.is_file() else {}
    versus = acc.get("versus_reference", {})
    return {"model": label, "file": path.name, "top1": acc.get("top1"),
            "top1_drop": versus.get("top1_drop"), "agreement": versus.get("top1_agreement"),
            "latency_ms": stats.to_dict(), "latency_ratio_vs_fp32": stats.median / base.median,
            "size_mb": path.stat().st_size / 1e6}


def _quantize_seconds(out: Path) -> dict[str, float]:
    found = {}
    for name, key in (("quantize.json", "nncf"), ("quantize.ort.json", "onnxruntime")):
        if (out / name).is_file():
            found[key] = read_json(out / name)["seconds"]
    return found


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<9} {'top-1':>7} {'drop':>7} {'agree':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'x FP32':>7} {'MB':>6}")
    for r in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{r['model']:<9} {fmt(r['top1'], '7.2%')} {fmt(None if r['top1_drop'] is None else 100 * r['top1_drop'], '6.2f')}p "
              f"{fmt(r['agreement'], '7.2%')} {r['latency_ms']['median']:>8.2f} {r['latency_ms']['p99']:>8.2f} "
              f"{r['latency_ratio_vs_fp32']:>7.2f} {r['size_mb']:>6.1f}")
