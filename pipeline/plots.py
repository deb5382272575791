"""Plots people would rather look at than tables; Matplotlib's Agg backend, no display."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from pipeline.artifacts import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss and top-1 per epoch (train dashed, val solid, as in the residual-learning paper)."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["loss"] for h in history], "--", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_acc.plot(epochs, [100 * h["train_top1"] for h in history], "--", label="train top-1")
    ax_acc.plot(epochs, [100 * h["val_top1"] for h in history], "-", label="val top-1")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def plot_quantization(samples: dict[str, "np.ndarray"], top1: dict[str, float | None], path: Path) -> Path:
    """Latency distributions (batch 1, ms) and top-1 per model, side by side."""
    plt = pyplot()
    fig, (ax_lat, ax_acc) = plt.subplots(1, 2, figsize=(14, 5))
    ax_lat.boxplot(list(samples.values()), showfliers=True)
    ax_lat.set_xticks(range(1, len(samples) + 1), list(samples), rotation=35, ha="right")
    ax_lat.set_ylabel("latency per image (ms), batch 1")
    ax_lat.set_title("CPU latency per runtime and model")
    labels = [k for k, v in top1.items() if v is not None]
    bars = ax_acc.bar(labels, [100 * top1[k] for k in labels], color="tab:blue")
    ax_acc.tick_params(axis="x", rotation=35)
    ax_acc.bar_label(bars, fmt="%.2f")
    low = min((100 * top1[k] for k in labels), default=0)
    ax_acc.set_ylim(max(0, low - 5), 100)
    ax_acc.set_ylabel("val top-1 (%)")
    ax_acc.set_title("accuracy per precision")
    for ax in (ax_lat, ax_acc):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def plot_report(summary: dict[str, Any], past: list[dict[str, Any]], folder: Path) -> list[Path]:
    """The report's figures: latency distributions, accuracy per precision, per-class
    accuracy change of the deployed model, and the history of its main figures."""
    plt = pyplot()
    rows = summary["rows"]
    written = []
    timed = [r for r in rows if r.get("samples_ms")]
    if timed:
        fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(timed)), 4.5))
        ax.boxplot([r["samples_ms"] for r in timed], showfliers=False)
        ax.set_xticks(range(1, len(timed) + 1), [r["label"] for r in timed], rotation=30, ha="right")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"latency distribution (deployed: {summary.get('deployed') or 'none'})")
        written.append(_save(plt, fig, folder / "latency.png"))
    scored = [r for r in rows if r.get("top1") is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(scored)), 4.5))
        bars = ax.bar([r["label"] for r in scored], [100 * r["top1"] for r in scored])
        ax.bar_label(bars, fmt="%.2f")
        ax.set_ylim(max(0, min(100 * r["top1"] for r in scored) - 5), 100)
        ax.set_ylabel("top-1 (%)")
        ax.set_title("accuracy per precision")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        written.append(_save(plt, fig, folder / "accuracy.png"))
    written += _per_class_change(plt, rows, summary.get("reference"), summary.get("deployed"), folder)
    written += _history(plt, past, summary.get("deployed"), folder)
    return written


def _per_class_change(plt: Any, rows: list[dict[str, Any]], reference: str | None, deployed: str | None,
                      folder: Path) -> list[Path]:
    by_label = {r["label"]: r for r in rows}
    fp32 = by_label.get(reference or "onnxruntime-fp32", {}).get("per_class")
    int8 = by_label.get(deployed or "", {}).get("per_class")
    if not fp32 or not int8:
        return []
    names = list(fp32)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [100 * (int8[n] - fp32[n]) for n in names], color="tab:orange")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("INT8 - FP32 (points)")
    ax.set_title(f"per-class accuracy change ({deployed})")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return [_save(plt, fig, folder / "per_class.png")]


def _history(plt: Any, past: list[dict[str, Any]], deployed: str | None, folder: Path) -> list[Path]:
    points = []
    for entry in past:
        row = {r["label"]: r for r in entry["summary"]["rows"]}.get(deployed or "")
        if row:
            points.append((entry["id"], row.get("top1"), row.get("p99"), entry["accepted"]))
    if len(points) < 2:
        return []
    fig, (ax_acc, ax_lat) = plt.subplots(1, 2, figsize=(10, 3.5))
    ids = [p[0] for p in points]
    ax_acc.plot(ids, [100 * p[1] if p[1] is not None else None for p in points], "o-")
    ax_lat.plot(ids, [p[2] for p in points], "o-", color="tab:red")
    for ax, title in ((ax_acc, "top-1 (%)"), (ax_lat, "p99 latency (ms)")):
        ax.set_xlabel("report id")
        ax.set_xticks(ids)
        ax.set_title(f"{title}, {deployed}")
        ax.grid(alpha=0.3)
    return [_save(plt, fig, folder / "history.png")]


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


def plot_search(rows: list[dict[str, Any]], best: str, path: Path) -> Path:
    """Each quantization candidate's agreement with FP32 on the tuning half, with its 95%
    interval: overlapping intervals say the ranking between them is not settled."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.5))
    for y, row in enumerate(rows):
        value, (low, high) = 100 * row["top1_agreement"], row["top1_agreement_ci95"]
        color = "tab:green" if row["candidate"] == best else "tab:blue"
        ax.errorbar(value, y, xerr=[[value - 100 * low], [100 * high - value]], fmt="o", color=color, capsize=3)
    ax.set_yticks(range(len(rows)), [r["candidate"] for r in rows])
    ax.invert_yaxis()
    ax.axvline(99.5, color="tab:red", linestyle="--", linewidth=1, label="99.5%")
    ax.set_xlabel("top-1 agreement with FP32 on the tuning half (%), 95% interval")
    ax.set_title("signed INT8 file: quantization settings compared (best in green)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_degradation(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """The paper's figure: plain (left) and residual (right), train dashed, val solid."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, family in zip(axes, ("plain", "resnet")):
        for name, colour in ((f"{family}20", "tab:orange"), (f"{family}56", "tab:red")):
            c = curves[name]
            epochs = range(1, len(c["train_error"]) + 1)
            ax.plot(epochs, [100 * v for v in c["train_error"]], "--", color=colour, label=f"{name} train")
            ax.plot(epochs, [100 * v for v in c["val_error"]], "-", color=colour, label=f"{name} val")
        ax.set_title("plain" if family == "plain" else "ResNet")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("error (%)")
    return _save(plt, fig, Path(path))


def plot_residual_norms(norms: list[float], path: Path) -> Path:
    """||F(x)|| / ||x|| per residual block of the trained resnet56."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.bar(range(1, len(norms) + 1), norms)
    ax.set_xlabel("block (input to output)")
    ax.set_ylabel("||F(x)|| / ||x||")
    ax.set_title("resnet56: size of each residual branch's output relative to its input")
    ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, Path(path))


def plot_served_latency(levels: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Client-side latency percentiles and throughput of a served model per concurrency
    level: where queueing starts to cost latency without buying throughput."""
    plt = pyplot()
    fig, (ax_lat, ax_tput) = plt.subplots(1, 2, figsize=(11, 4))
    concurrency = [lv["concurrency"] for lv in levels]
    for key, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^:")):
        ax_lat.plot(concurrency, [lv[key] for lv in levels], style, label=key[:-3])
    ax_lat.set_ylabel("latency per request (ms)")
    ax_lat.legend()
    bars = ax_tput.bar([str(c) for c in concurrency], [lv["throughput"] for lv in levels], color="tab:blue")
    ax_tput.bar_label(bars, fmt="%.0f")
    ax_tput.set_ylabel("throughput (images/s)")
    for ax in (ax_lat, ax_tput):
        ax.set_xlabel("concurrent requests")
        ax.grid(alpha=0.3)
    ax_lat.set_xscale("log", base=2)
    ax_lat.set_xticks(concurrency, [str(c) for c in concurrency])
    fig.suptitle(title)
    return _save(plt, fig, Path(path))
