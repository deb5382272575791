"""Training augmentation on whole batches of uint8 tensors.

The recipes are the usual ones (random-resized crop and flip for photos, pad-and-crop for
small images); they work on the in-memory uint8 cache so no image is decoded twice.

Each image draws from its own generator, seeded by (run seed, epoch, the image's index in
the training split): an image is augmented the same whichever rank trains it and however
many ranks there are, so N ranks train what one process does with the same global batch,
and a run resumed after epoch k goes on as the uninterrupted run would have.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import functional as TF

from pipeline.config import TrainConfig
from pipeline.preprocess import Preprocessing

RATIO = (3.0 / 4.0, 4.0 / 3.0)


def epoch_seed(run_seed: int, epoch: int) -> int:
    """The seed of one epoch of a run (its order of images, and under it each image's)."""
    return run_seed * 1_000_003 + epoch


def image_seeds(run_seed: int, epoch: int, indices: Sequence[int] | torch.Tensor) -> list[int]:
    """One seed per image and epoch, from the image's index in its split."""
    return [(epoch_seed(run_seed, epoch) * 1_000_000_007 + int(i)) % 2**63 for i in indices]


def augment_batch(images: torch.Tensor, cfg: TrainConfig, size: int, seeds: Sequence[int]) -> torch.Tensor:
    """uint8 (N, 3, S, S) → uint8 (N, 3, size, size), augmented per ``cfg.augment``, image i
    drawing from a generator seeded with ``seeds[i]``."""
    if len(seeds) != len(images):
        raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    if cfg.augment == "random-resized-crop":
        images = random_resized_crop(images, size, cfg.crop_scale_min, generators)
    elif cfg.augment == "pad-crop":
        images = pad_crop(images, size, cfg.pad, generators)
    elif images.shape[-1] != size:
        images = TF.resize(images, [size, size], antialias=True)
    if cfg.flip:
        images = random_flip(images, generators)
    return images


def random_resized_crop(images: torch.Tensor, size: int, scale_min: float,
                        generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Inception-style crops: each image its own box (area ``scale_min``–1, aspect 3/4–4/3)."""
    out = []
    for image, g in zip(images, generators):
        top, left, h, w = crop_box(image.shape[-2], image.shape[-1], scale_min, g)
        out.append(TF.resized_crop(image, top, left, h, w, [size, size], antialias=True))
    return torch.stack(out)


def crop_box(height: int, width: int, scale_min: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) by torchvision's RandomResizedCrop rule (ten tries at a random area
    and aspect, then the centre at the nearest allowed aspect), drawn from ``g``: torchvision's
    own draws from the global generator, which a rank cannot share with the others."""
    area, log_ratio = height * width, (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * _uniform(g, scale_min, 1.0)
        aspect = math.exp(_uniform(g, *log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=g))


def pad_crop(images: torch.Tensor, size: int, pad: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Zero-pad by ``pad`` and take a random ``size`` crop per image (the CIFAR recipe)."""
    if images.shape[-1] != size:
        images = TF.resize(images, [size, size], antialias=True)
    padded = TF.pad(images, [pad, pad, pad, pad])
    offsets = [torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist() for g in generators]
    return torch.stack([p[:, y:y + size, x:x + size] for p, (y, x) in zip(padded, offsets)])


def random_flip(images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Mirror each image left-right with probability one half."""
    flip = torch.tensor([bool(torch.rand(1, generator=g) < 0.5) for g in generators], dtype=torch.bool)
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
