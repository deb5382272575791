"""``make bench-quant``: FP32 vs both INT8 renderings vs the peer, on every CPU runtime
(ONNX Runtime and OpenVINO, BF16 where the CPU has it), side by side in one run.

Accuracy comes from the run's ``eval/`` files; latency is measured here, batch 1, the
same threads for every model, in interleaved rounds so that a slow spell of the machine
hits every model alike (ONNX Runtime's pools do not spin while another model runs).
Ratios, against ONNX Runtime's FP32, not absolute times, are the claim.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import read_json, write_json
from pipeline.config import Config
from pipeline.errors import DataError
from pipeline.device.bench import interleaved_latency
from pipeline.device.deployment import cpu_models
from pipeline.device.latency import summarize
from pipeline.plots import plot_quantization

BASE = "onnxruntime-fp32"


def run(cfg: Config) -> Path:
    out = cfg.run_dir
    models = {label: spec for label, spec in cpu_models(out).items() if spec.path.suffix == ".onnx"}
    if BASE not in models or len(models) < 2:
        raise DataError(f"{out}: bench-quant needs model.fp32.onnx and INT8 models; run make quantize")
    threads = cfg.evaluate.threads or 2
    samples, _ = interleaved_latency(models, threads, cfg.evaluate.bench_runs)
    base = summarize(samples[BASE], 1, BASE).median
    rows = [_row(label, spec.path, samples, base, out) for label, spec in models.items()]
    record = {"threads": threads, "batch": 1, "rows": rows, "quantize_seconds": _quantize_seconds(out)}
    path = write_json(out / "bench" / "quant.json", record)
    plot_quantization(samples, {r["model"]: r["top1"] for r in rows}, out / "bench" / "quant.png")
    print_rows(rows)
    return path


def _row(label: str, path: Path, samples: dict[str, np.ndarray], base_ms: float, out: Path) -> dict[str, Any]:
    stats = summarize(samples[label], 1, label)
    evaluation = out / "eval" / f"{label}.json"
    acc = read_json(evaluation) if evaluation.is_file() else {}
    versus = acc.get("versus_reference", {})
    return {"model": label, "file": path.name, "top1": acc.get("top1"),
            "top1_drop": versus.get("top1_drop"), "top1_drop_ci95": versus.get("top1_drop_ci95"),
            "agreement": versus.get("top1_agreement"), "agreement_ci95": versus.get("top1_agreement_ci95"),
            "flips": versus.get("flips"),
            "latency_ms": stats.to_dict(), "latency_ratio_vs_fp32": stats.median / base_ms,
            "size_mb": path.stat().st_size / 1e6}


def _quantize_seconds(out: Path) -> dict[str, float]:
    found = {}
    for name, key in (("quantize.json", "nncf"), ("quantize.ort.json", "onnxruntime")):
        if (out / name).is_file():
            found[key] = read_json(out / name)["seconds"]
    return found


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One line per row; agreement with its 95% interval and flip count, as evaluate gives them."""
    print(f"{'model':<22} {'file':<20} {'top-1':>7} {'drop':>7} {'agree [95%]':>22} {'flips':>5} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'x ORT FP32':>10} {'MB':>6}")
    for r in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        ci = r["agreement_ci95"]
        agree = fmt(r["agreement"], ".2%") + (f" [{ci[0]:.2%}, {ci[1]:.2%}]" if ci else "")
        print(f"{r['model']:<22} {r['file']:<20} {fmt(r['top1'], '7.2%')} "
              f"{fmt(None if r['top1_drop'] is None else 100 * r['top1_drop'], '6.2f')}p {agree:>22} "
              f"{fmt(r['flips'], '5d')} {r['latency_ms']['median']:>8.2f} {r['latency_ms']['p99']:>8.2f} "
              f"{r['latency_ratio_vs_fp32']:>10.2f} {r['size_mb']:>6.1f}")
