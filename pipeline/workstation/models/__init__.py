"""The model registry: every architecture the pipeline can train, looked up by name.

Names follow the paper: ``resnet20`` ... ``resnet110`` are the CIFAR networks (6n+2
layers), ``resnet18`` ... ``resnet152`` the ImageNet ones, and ``plainN`` is the twin of
``resnetN`` without shortcuts. Options differ by family (only CIFAR networks choose
their shortcut and width), so :func:`build_model` checks them against the family and
names the accepted ones instead of letting a typo fall through to a default.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from pipeline.errors import ConfigError
from pipeline.workstation.models.resnet import BasicBlock, BlockType, Bottleneck, CifarResNet, ResNet

__all__ = ["FAMILY_OPTIONS", "MODELS", "ModelSpec", "build_model", "count_parameters",
           "get_spec", "model_options"]

FAMILY_OPTIONS: dict[str, tuple[str, ...]] = {
    "cifar": ("shortcut", "width", "zero_init_residual"),
    "imagenet": ("zero_init_residual",),
}


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry; ``builder(num_classes=..., **options)`` makes the network."""

    name: str
    family: str
    depth: int
    block: BlockType
    plain: bool
    builder: Callable[..., nn.Module]

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options :func:`build_model` accepts for this model."""
        return FAMILY_OPTIONS[self.family]


CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110)

IMAGENET_LAYOUTS: dict[int, tuple[BlockType, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def _prefix(plain: bool) -> str:
    return "plain" if plain else "resnet"


def _cifar_spec(depth: int, plain: bool) -> ModelSpec:
    builder = partial(CifarResNet, depth, plain=plain)
    return ModelSpec(f"{_prefix(plain)}{depth}", "cifar", depth, BasicBlock, plain, builder)


def _imagenet_spec(depth: int, plain: bool) -> ModelSpec:
    block, layers = IMAGENET_LAYOUTS[depth]
    builder = partial(ResNet, block, layers, plain=plain)
    return ModelSpec(f"{_prefix(plain)}{depth}", "imagenet", depth, block, plain, builder)


def _build_registry() -> dict[str, ModelSpec]:
    specs = [_cifar_spec(d, p) for p in (False, True) for d in CIFAR_DEPTHS]
    specs += [_imagenet_spec(d, p) for p in (False, True) for d in IMAGENET_LAYOUTS]
    return {spec.name: spec for spec in specs}


MODELS: dict[str, ModelSpec] = _build_registry()


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; an unknown name lists every choice."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options ``build_model(name, ...)`` accepts."""
    return get_spec(name).options


def build_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """A freshly initialised network from the registry, with options checked by family."""
    spec = get_spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(f"model {name!r} ({spec.family}): unknown option(s) "
                          f"{', '.join(unknown)}; expected any of: {', '.join(spec.options)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes: expected an integer >= 1, got {num_classes!r}")
    return spec.builder(num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not: the figure papers and torchvision report."""
    return sum(p.numel() for p in model.parameters())
