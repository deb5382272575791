"""Checkpoints that carry everything a later stage needs.

A checkpoint holds the weights, the model name and options, the class list, the
preprocessing and the resolved configuration, as plain tensors and builtins only, so it
loads with ``torch.load(weights_only=True)`` (no pickled code runs on load) and the
export, calibration and camera stages need nothing but the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.artifacts import atomic_path
from pipeline.errors import CheckpointError, PipelineError
from pipeline.workstation.models import build_model
from pipeline.preprocess import Preprocessing

FORMAT = "edgeresnet.checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``training`` holds optimiser/scheduler/RNG state for ``--resume``."""

    model_name: str
    model_options: dict[str, Any]
    classes: list[str]
    class_names: list[str]
    preprocessing: Preprocessing
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def build(self) -> nn.Module:
        """The model with these weights, in eval mode."""
        model = build_model(self.model_name, len(self.classes), **self.model_options)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{self.path}: weights do not fit {self.model_name} ({first})") from None
        return model.eval()

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": {"name": self.model_name, "options": self.model_options},
            "classes": self.classes,
            "class_names": self.class_names,
            "preprocessing": self.preprocessing.to_dict(),
            "config": self.config,
            "state_dict": self.state_dict,
            "epoch": self.epoch,
            "metrics": self.metrics,
            "history": self.history,
            "training": self.training,
        }


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> Path:
    """Write atomically: a crash mid-save leaves the previous file, never half of a new one."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint.to_payload(), tmp)
    return Path(path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Load one of our checkpoints; anything else is refused with a one-line reason."""
    payload = _load_payload(Path(path))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an edgeresnet checkpoint (no '{FORMAT}' format tag); "
                              f"published torchvision weights are given with --weights")
    try:
        return Checkpoint(
            model_name=payload["model"]["name"],
            model_options=dict(payload["model"]["options"]),
            classes=list(payload["classes"]),
            class_names=list(payload["class_names"]),
            preprocessing=Preprocessing.from_dict(payload["preprocessing"]),
            config=payload["config"],
            state_dict=payload["state_dict"],
            epoch=int(payload.get("epoch", 0)),
            metrics=dict(payload.get("metrics", {})),
            history=list(payload.get("history", [])),
            training=dict(payload.get("training", {})),
            path=Path(path),
        )
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint is missing field {exc}") from None


def expect_model(checkpoint: Checkpoint, model_name: str, num_classes: int) -> None:
    """Refuse a checkpoint made for another architecture or class list."""
    if checkpoint.model_name != model_name:
        raise CheckpointError(f"{checkpoint.path}: holds {checkpoint.model_name}, "
                              f"but the config asks for {model_name}")
    if len(checkpoint.classes) != num_classes:
        raise CheckpointError(f"{checkpoint.path}: has {len(checkpoint.classes)} classes, "
                              f"the data has {num_classes}")


def _load_payload(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PipelineError:
        raise
    except Exception as exc:  # unpickling errors come in many types; all mean "not ours"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first})") from None
