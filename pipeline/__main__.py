"""The one command line: ``python -m pipeline <stage> [--config FILE] [--set key=value ...]``.

Only this module parses arguments and turns errors into exit codes; stages are functions
``run(cfg) -> Path`` looked up by name in :data:`STAGES`, imported only when chosen so
``--help`` is instant and a stage's heavy dependencies load only when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import load_config
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Flag:
    """A stage-specific flag that is shorthand for one configuration key."""

    name: str
    key: str
    help: str
    is_switch: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    summary: str
    description: str
    flags: tuple[Flag, ...] = ()


COMMON_FLAGS = (
    Flag("--run", "run.name", "run name: artifacts go to build/<run>/ (default: <data>-<model>)"),
    Flag("--data", "data.path", "an ImageFolder tree (train/<class>/*, val/<class>/*)"),
    Flag("--dataset", "data.name", "a named dataset: digits, cifar10, imagenette"),
    Flag("--model", "model.name", "architecture, e.g. resnet20, resnet18, plain56"),
)

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("train", "pipeline.train", "train a ResNet; writes build/<run>/model.pt",
          "Train a ResNet on the configured dataset. Writes last.pt each epoch, best.pt on "
          "improvement, and model.pt, train.json and train.png when training ends.",
          (Flag("--resume", "train.resume", "continue from build/<run>/last.pt", is_switch=True),
           Flag("--weights", "model.weights", "fine-tune from a torchvision-format state dict"))),
    Stage("export", "pipeline.export", "export model.pt to model.fp32.onnx and check parity",
          "Export build/<run>/model.pt to ONNX (dynamic batch, metadata), run onnx.checker, and "
          "compare ONNX Runtime with PyTorch on real val images; fail above the tolerance."),
    Stage("models", "pipeline.models.listing", "list the model names",
          "List every registered architecture with its family and depth."),
)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline",
                                     description="edgeresnet: train, export, quantize and deploy a ResNet.")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.summary, description=stage.description)
        p.add_argument("--config", type=Path, help="TOML configuration file (see configs/)")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override one configuration value, e.g. --set train.epochs=5")
        for flag in COMMON_FLAGS + stage.flags:
            if flag.is_switch:
                p.add_argument(flag.name, action="store_true", help=flag.help)
            else:
                p.add_argument(flag.name, metavar=flag.key.split(".")[-1].upper(), help=flag.help)
    return parser


def overrides(args: argparse.Namespace, stage: Stage) -> list[str]:
    """``--set`` items, with the shorthand flags turned into the keys they stand for."""
    sets = list(args.sets)
    for flag in COMMON_FLAGS + stage.flags:
        value = getattr(args, flag.name.lstrip("-").replace("-", "_"))
        if flag.is_switch and value:
            sets.append(f"{flag.key}=true")
        elif not flag.is_switch and value is not None:
            sets.append(f"{flag.key}={json.dumps(value)}")  # a TOML basic string
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stage = STAGES[args.stage]
    try:
        cfg = load_config(args.config, overrides(args, stage))
        importlib.import_module(stage.module).run(cfg)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
