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
    fig, (ax_lat, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_lat.boxplot(list(samples.values()), showfliers=True)
    ax_lat.set_xticks(range(1, len(samples) + 1), list(samples))
    ax_lat.set_ylabel("latency per image (ms), batch 1")
    ax_lat.set_title("ONNX Runtime CPU latency")
    labels = [k for k, v in top1.items() if v is not None]
    bars = ax_acc.bar(labels, [100 * top1[k] for k in labels], color="tab:blue")
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
