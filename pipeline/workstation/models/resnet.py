"""Residual networks (He et al. 2015, arXiv:1512.03385), written here rather than wrapped.

Two families share the blocks:

* :class:`ResNet`, the ImageNet networks (18-152 layers). Attribute names, parameter
  names and initialisation follow torchvision's ``resnet*`` exactly, so a torchvision
  state dict loads with no key changes and published weights can be fine-tuned.
  Downsampling sits in the 3x3 conv of a bottleneck ("ResNet v1.5"), like torchvision.
* :class:`CifarResNet`, the 6n+2-layer CIFAR networks of section 4.2 (20-110 layers),
  with the paper's parameter-free option-A shortcut by default.

``plain=True`` builds the paper's "plain" twin: the same layers with no shortcut at all
(no addition, no downsample module), which is what section 4.1 compares against.
Validation raises :class:`~pipeline.errors.ConfigError`, since these options come from
user configuration.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError


def _require(condition: bool, key: str, expected: str, got: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def _is_int(value: Any) -> bool:
    """``True`` for ints but not bools, which ``isinstance(x, int)`` would let through."""
    return isinstance(value, int) and not isinstance(value, bool)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, no bias: the BatchNorm that follows every conv has its own."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (see :func:`conv3x3`)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


# --------------------------------------------------------------------------- shortcuts


class PadShortcut(nn.Module):
    """Option A: subsample spatially and append zero channels; adds no parameters.

    The paper uses it on CIFAR so that a residual net has exactly the parameters of its
    plain twin. The slice and constant pad export to ONNX ``Slice``/``Pad``, which
    TensorRT supports.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        _require(out_planes >= in_planes, "shortcut A", f"out_planes >= {in_planes}", out_planes)
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C_in, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # (N, C_out, H/s, W/s), new channels 0

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Option B: 1x1 conv + BN, as ``nn.Sequential`` so keys are ``downsample.0/1.*``."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


ShortcutBuilder = Callable[[int, int, int], nn.Module]

SHORTCUTS: dict[str, ShortcutBuilder] = {"A": PadShortcut, "B": projection_shortcut}


def make_shortcut(kind: str, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The shortcut module where shapes change, ``None`` where identity suffices."""
    _require(kind in SHORTCUTS, "shortcut", "one of " + ", ".join(SHORTCUTS), kind)
    if stride == 1 and in_planes == out_planes:
        return None
    return SHORTCUTS[kind](in_planes, out_planes, stride)


# ------------------------------------------------------------------------------ blocks


class _Block(nn.Module):
    """Shared forward: ``relu(body(x) + shortcut(x))``, or ``relu(body(x))`` when plain."""

    expansion = 1

    def _attach_shortcut(self, downsample: nn.Module | None, plain: bool) -> None:
        """Called last by subclasses so ``downsample`` keys come last, as in torchvision."""
        if plain and downsample is not None:
            raise ConfigError("plain block: expected no downsample module, got one")
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.plain = plain

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch up to its last BN (before the final ReLU)."""
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that ``zero_init_residual`` zeroes so the block starts as identity."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if not self.plain:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class BasicBlock(_Block):
    """Two 3x3 conv+BN; the first carries the stride. Output channels: ``planes``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, plain: bool = False) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self._attach_shortcut(downsample, plain)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (with the stride, as torchvision's v1.5), 1x1 expand to 4x planes."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, plain: bool = False) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self._attach_shortcut(downsample, plain)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


BlockType = type[BasicBlock] | type[Bottleneck]


def make_stage(block: BlockType, inplanes: int, planes: int, blocks: int, stride: int,
               shortcut: str, plain: bool) -> nn.Sequential:
    """``blocks`` blocks; only the first changes stride/width, so only it may need a shortcut."""
    out_planes = planes * block.expansion
    downsample = None if plain else make_shortcut(shortcut, inplanes, out_planes, stride)
    layers = [block(inplanes, planes, stride, downsample, plain)]
    layers += [block(out_planes, planes, 1, None, plain) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's init: He-normal (fan_out) convs, BN as identity; Linear keeps its default.

    ``zero_init_residual`` zeroes each block's last BN so every residual block starts as
    the identity (Goyal et al. 2017); refused for plain nets, where it would zero the
    signal itself.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, _Block):
                nn.init.constant_(m.last_bn().weight, 0)


def _check_common(num_classes: Any, zero_init_residual: Any, plain: bool) -> None:
    _require(_is_int(num_classes) and num_classes >= 1, "num_classes", "an integer >= 1",
             num_classes)
    _require(isinstance(zero_init_residual, bool), "zero_init_residual", "a bool",
             zero_init_residual)
    _require(not (plain and zero_init_residual), "zero_init_residual",
             "False for a plain network (it would zero every block's output)", True)


# ---------------------------------------------------------------------------- networks


class ResNet(nn.Module):
    """ImageNet ResNet; module and parameter names match ``torchvision.models.resnet*``."""

    def __init__(self, block: BlockType, layers: Sequence[int], num_classes: int = 1000, *,
                 zero_init_residual: bool = False, plain: bool = False) -> None:
        super().__init__()
        _check_common(num_classes, zero_init_residual, plain)
        _require(len(layers) == 4, "layers", "four stage depths", tuple(layers))
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths, strides, inplanes = (64, 128, 256, 512), (1, 2, 2, 2), 64
        for i, (planes, blocks, stride) in enumerate(zip(widths, layers, strides), start=1):
            stage = make_stage(block, inplanes, planes, blocks, stride, "B", plain)
            setattr(self, f"layer{i}", stage)
            inplanes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512e, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 512e)
        return self.fc(x)


def cifar_blocks_per_stage(depth: Any) -> int:
    """``n`` for a 6n+2-layer CIFAR network; depth 20 gives 3, depth 110 gives 18."""
    _require(_is_int(depth) and depth >= 8 and (depth - 2) % 6 == 0, "depth",
             "6n+2 with n >= 1 (8, 14, 20, ...)", depth)
    return (depth - 2) // 6


class CifarResNet(nn.Module):
    """CIFAR ResNet (paper section 4.2): 3x3 stem, three stages of n BasicBlocks, fc."""

    def __init__(self, depth: int, num_classes: int = 10, *, shortcut: str = "A",
                 width: int = 16, zero_init_residual: bool = False,
                 plain: bool = False) -> None:
        super().__init__()
        _check_common(num_classes, zero_init_residual, plain)
        _require(shortcut in SHORTCUTS, "shortcut", "one of " + ", ".join(SHORTCUTS), shortcut)
        _require(_is_int(width) and width >= 1, "width", "an integer >= 1", width)
        n = cifar_blocks_per_stage(depth)
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(BasicBlock, width, width, n, 1, shortcut, plain)
        self.layer2 = make_stage(BasicBlock, width, 2 * width, n, 2, shortcut, plain)
        self.layer3 = make_stage(BasicBlock, 2 * width, 4 * width, n, 2, shortcut, plain)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, w, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 4w, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 4w)
        return self.fc(x)
