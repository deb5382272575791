"""Training augmentation on whole batches of uint8 tensors.

The recipes are the usual ones (random-resized crop and flip for photos, pad-and-crop for
small images); they work on the in-memory uint8 cache so no image is decoded twice.
Randomness comes from torch's generator, seeded per rank by the trainer.
"""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from pipeline.config import TrainConfig
from pipeline.preprocess import Preprocessing

RATIO = (3.0 / 4.0, 4.0 / 3.0)


def augment_batch(images: torch.Tensor, cfg: TrainConfig, size: int) -> torch.Tensor:
    """uint8 (N, 3, S, S) → uint8 (N, 3, size, size), augmented per ``cfg.augment``."""
    if cfg.augment == "random-resized-crop":
        images = random_resized_crop(images, size, cfg.crop_scale_min)
    elif cfg.augment == "pad-crop":
        images = pad_crop(images, size, cfg.pad)
    elif images.shape[-1] != size:
        images = TF.resize(images, [size, size], antialias=True)
    if cfg.flip:
        images = random_flip(images)
    return images


def random_resized_crop(images: torch.Tensor, size: int, scale_min: float) -> torch.Tensor:
    """Inception-style crops: each image its own box (area ``scale_min``–1, aspect 3/4–4/3)."""
    out = []
    for image in images:
        top, left, h, w = RandomResizedCrop.get_params(image, (scale_min, 1.0), RATIO)
        out.append(TF.resized_crop(image, top, left, h, w, [size, size], antialias=True))
    return torch.stack(out)


def pad_crop(images: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad`` and take a random ``size`` crop per image (the CIFAR recipe)."""
    if images.shape[-1] != size:
        images = TF.resize(images, [size, size], antialias=True)
    padded = TF.pad(images, [pad, pad, pad, pad])
    offsets = torch.randint(0, 2 * pad + 1, (len(images), 2)).tolist()
    return torch.stack([p[:, y:y + size, x:x + size] for p, (y, x) in zip(padded, offsets)])


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(len(images)) < 0.5
    images = images.clone()
    images[flip] = images[flip].flip(-1)
    return images


def size_for_epoch(sizes: tuple[int, ...], epoch: int, epochs: int, final: int) -> int:
    """Progressive resizing: ``sizes`` spread evenly over the epochs; none → ``final``."""
    if not sizes:
        return final
    return sizes[min(len(sizes) - 1, epoch * len(sizes) // epochs)]


def normalize_batch(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 (N, 3, S, S) → float32 by :meth:`Preprocessing.normalize`'s formula, on the
    batch's own device: training normalises augmented batches where it trains (the GPU),
    everything else uses the NumPy definition."""
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.to(torch.float32) * pre.scale - mean) / std
