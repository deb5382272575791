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


def plot_latency(samples: dict[str, "np.ndarray"], path: Path) -> Path:
    """Latency distributions side by side, one box per model (batch 1, milliseconds)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot(list(samples.values()), showfliers=True)
    ax.set_xticks(range(1, len(samples) + 1), list(samples))
    ax.set_ylabel("latency per image (ms), batch 1")
    ax.set_title("ONNX Runtime CPU latency: FP32 vs INT8")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
