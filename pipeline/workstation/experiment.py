"""``make experiment-degradation``: why the residual block exists, shown with this code.

Trains plain20, plain56, resnet20 and resnet56 (CIFAR family) with one recipe and seed on
the same data, plots training error (dashed) and val error (solid) per epoch, plain and
residual side by side as in the residual-learning paper's figure, states the outcome
from the numbers, and measures for the trained resnet56 how large each block's residual
branch output is relative to its input (the paper's "residual responses are small").
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.workstation import train
from pipeline.artifacts import write_json
from pipeline.workstation.checkpoint import load_checkpoint
from pipeline.config import Config
from pipeline.workstation.data import open_dataset
from pipeline.preprocess import Preprocessing, load_images

MODELS = ("plain20", "plain56", "resnet20", "resnet56")


def run(cfg: Config) -> Path:
    out = cfg.run_dir
    curves = {name: train_one(cfg, name) for name in MODELS}
    outcome = state_outcome(curves)
    norms = residual_norms(out / "resnet56" / "model.pt", cfg)
    from pipeline.plots import plot_degradation, plot_residual_norms

    plot_degradation(curves, out / "degradation.png")
    plot_residual_norms(norms, out / "residual_norms.png")
    path = write_json(out / "degradation.json", {"models": list(MODELS), "curves": curves, "outcome": outcome,
                                                 "residual_norms": norms})
    for line in outcome["statements"]:
        print(line)
    return path


def train_one(cfg: Config, name: str) -> dict[str, list[float]]:
    """Train ``name`` with the shared recipe into ``<run>/<name>/``; the error curves."""
    run = dataclasses.replace(cfg.run, root=str(cfg.run_dir), name=name)
    model = dataclasses.replace(cfg.model, name=name)
    train.run(dataclasses.replace(cfg, run=run, model=model))
    history = load_checkpoint(Path(run.root) / name / "model.pt").history
    return {"train_error": [1 - h["train_top1"] for h in history],
            "val_error": [1 - h["val_top1"] for h in history]}


def state_outcome(curves: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """The paper's two claims, checked on the final training errors."""
    final = {name: c["train_error"][-1] for name, c in curves.items()}
    plain_degrades = final["plain56"] > final["plain20"]
    residual_helps = final["resnet56"] < final["resnet20"]
    statements = [
        f"plain56 ended with {'higher' if plain_degrades else 'lower or equal'} training error than plain20 "
        f"({final['plain56']:.2%} vs {final['plain20']:.2%}): degradation "
        f"{'reproduced' if plain_degrades else 'not reproduced'}",
        f"resnet56 ended with {'lower' if residual_helps else 'higher or equal'} training error than resnet20 "
        f"({final['resnet56']:.2%} vs {final['resnet20']:.2%}): depth "
        f"{'helps' if residual_helps else 'does not help'} with shortcuts",
    ]
    return {"final_train_error": final, "final_val_error": {n: c["val_error"][-1] for n, c in curves.items()},
            "plain_deeper_is_worse": plain_degrades, "residual_deeper_is_better": residual_helps,
            "statements": statements}


@torch.no_grad()
def residual_norms(checkpoint: Path, cfg: Config, images: int = 256) -> list[float]:
    """Per block: ||F(x)|| / ||x|| on val images, F the residual branch before the addition."""
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build()
    split = open_dataset(cfg.data).split("val")
    pre: Preprocessing = ckpt.preprocessing
    picks = np.random.default_rng(cfg.run.seed).choice(len(split), min(images, len(split)), replace=False)
    x = torch.from_numpy(pre.normalize(load_images([split.files[i] for i in sorted(picks)], pre.prepare,
                                                    cfg.data.workers)))
    ratios: list[float] = []
    hooks = [block.register_forward_hook(lambda mod, inp, _out: ratios.append(
        float(mod.body(inp[0]).norm() / inp[0].norm()))) for block in _blocks(model)]
    model(x)
    for hook in hooks:
        hook.remove()
    return ratios


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "body") and hasattr(m, "downsample")]
