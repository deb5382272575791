"""``make bench-quant``: FP32 vs both INT8 renderings vs the peer, on every CPU runtime
(ONNX Runtime and OpenVINO, BF16 where the CPU has it), side by side in one run.

Accuracy comes from the run's ``eval/`` files and is shown on the reporting half of val,
which no quantization choice was made on (agreement with FP32 and top-1 change, each with
its 95% interval), beside the method that made each INT8 file and the layers it kept in
float; ``quant-search``'s comparison on the tuning half follows when it has run. Latency is
measured here, batch 1, the same threads for every model, in interleaved rounds so that a
slow spell of the machine hits every model alike (ONNX Runtime's pools do not spin while
another model runs). Ratios, against ONNX Runtime's FP32, not absolute times, are the claim.
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
    methods = _methods(out)
    search = out / "bench" / "quant-search.json"
    record = {"threads": threads, "batch": 1, "rows": rows, "methods": methods,
              "search": read_json(search) if search.is_file() else None}
    path = write_json(out / "bench" / "quant.json", record)
    plot_quantization(samples, {r["model"]: r["top1"] for r in rows}, out / "bench" / "quant.png")
    print_rows(rows)
    print_methods(methods)
    if record["search"]:
        print_search(record["search"])
    return path


def _row(label: str, path: Path, samples: dict[str, np.ndarray], base_ms: float, out: Path) -> dict[str, Any]:
    stats = summarize(samples[label], 1, label)
    evaluation = out / "eval" / f"{label}.json"
    acc = read_json(evaluation) if evaluation.is_file() else {}
    versus = acc.get("versus_reference", {})
    return {"model": label, "file": path.name, "top1": acc.get("top1"),
            "top1_drop": versus.get("top1_drop"), "top1_drop_ci95": versus.get("top1_drop_ci95"),
            "agreement": versus.get("top1_agreement"), "agreement_ci95": versus.get("top1_agreement_ci95"),
            "flips": versus.get("flips"), "reporting": acc.get("halves", {}).get("reporting"),
            "tuning": acc.get("halves", {}).get("tuning"),
            "latency_ms": stats.to_dict(), "latency_ratio_vs_fp32": stats.median / base_ms,
            "size_mb": path.stat().st_size / 1e6}


def _methods(out: Path) -> dict[str, dict[str, Any]]:
    """Per INT8 file: how it was made, in how long, and the layers it keeps in float."""
    found = {}
    for name in ("quantize.json", "quantize.ort.json"):
        if (out / name).is_file():
            record = read_json(out / name)
            for rendering in record.get("renderings", {}).values():
                found[Path(rendering["path"]).name] = {
                    "method": record.get("settings") or record["method"], "seconds": record["seconds"],
                    "float_layers": record.get("float_layers", [])}
    return found


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One line per row: accuracy on the reporting half (never tuned on), as evaluate gives
    it, agreement and top-1 change with their 95% intervals; then latency."""
    reporting = next((r["reporting"]["images"] for r in rows if r.get("reporting")), 0)
    print(f"reporting half of val: {reporting} images no quantization choice was made on")
    print(f"{'model':<22} {'file':<20} {'top-1':>7} {'agree [95%]':>24} {'flips':>5} {'top-1 change [95%]':>24} "
          f"{'p50 ms':>8} {'x ORT FP32':>10} {'MB':>6}")
    for r in rows:
        half = r.get("reporting") or {}
        print(f"{r['model']:<22} {r['file']:<20} {_fmt(r['top1'], '7.2%')} {agreement_text(half):>24} "
              f"{_fmt(half.get('flips'), '5d')} {change_text(half):>24} {r['latency_ms']['median']:>8.2f} "
              f"{r['latency_ratio_vs_fp32']:>10.2f} {r['size_mb']:>6.1f}")


def agreement_text(figures: dict[str, Any]) -> str:
    if figures.get("top1_agreement") is None:
        return "-"
    low, high = figures["top1_agreement_ci95"]
    return f"{figures['top1_agreement']:.2%} [{low:.2%}, {high:.2%}]"


def change_text(figures: dict[str, Any]) -> str:
    """The top-1 change in points (the negative of the drop) and its interval."""
    if figures.get("top1_drop") is None:
        return "-"
    change, upper, lower = (0.0 - 100 * v for v in (figures["top1_drop"], *figures["top1_drop_ci95"]))
    return f"{change:+.2f} [{lower:+.2f}, {upper:+.2f}] pt"


def versus_text(row: dict[str, Any]) -> str:
    """A search candidate's agreement change over the setting it challenged, with its interval."""
    versus = row["versus_incumbent"]
    if versus["against"] == row["candidate"]:
        return "(the start: NNCF's defaults, the configured size)"
    low, high = versus["change_ci95"]
    return f"vs {versus['against']}: {100 * versus['change']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] pt"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_methods(methods: dict[str, dict[str, Any]]) -> None:
    for name, made in methods.items():
        kept = ", ".join(made["float_layers"]) or "none"
        print(f"{name}: {made['method']} ({made['seconds']:.0f} s); float layers: {kept}")


def print_search(search: dict[str, Any]) -> None:
    """quant-search's candidates on the tuning half, the chosen one marked."""
    print(f"quant-search on the tuning half ({search['tuning']['images']} images), signed file, ONNX Runtime "
          f"(* kept: a change is kept only when significantly better than the setting it challenged):")
    for row in search["rows"]:
        mark = "*" if row["candidate"] == search["best"]["candidate"] else " "
        print(f" {mark} {row['candidate']:<30} {agreement_text(row):>24} {row['flips']:>5} {change_text(row):>24}  "
              f"{versus_text(row)}")
