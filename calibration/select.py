"""Which images calibrate the INT8 model: class-balanced, seeded, from the training split.

Calibration sets the activation ranges the INT8 model will clip to, so it must look like
deployment data of every class; it must never see the validation split, or the INT8
accuracy measured there would flatter the model.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path

from pipeline.imagefolder import ImageSplit
from pipeline.errors import DataError

DEFAULT_IMAGES = 512
HELD_OUT_NAMES = {"val", "valid", "validation", "test", "testing"}


def refuse_held_out(path: Path) -> None:
    """Refuse a calibration source that is (or lies inside) a validation or test folder."""
    for part in Path(path).resolve().parts:
        if part.lower() in HELD_OUT_NAMES:
            raise DataError(f"{path}: is a '{part}' folder; calibration reads the training "
                            f"split only (give the dataset root, whose train/ is used)")


def select_calibration_set(split: ImageSplit, images: int, seed: int) -> list[int]:
    """Indices into ``split``: an equal share per class (remainder spread by the seed).

    ``images`` 0 means the default (512, or the whole split with a warning when smaller);
    an explicit request for more images than the split holds is refused.
    """
    refuse_held_out(split.root)
    return select_balanced(split, _resolve_count(split, images), seed)


def select_balanced(split: ImageSplit, count: int, seed: int) -> list[int]:
    """``count`` indices into ``split``, an equal share per class (remainder spread by the
    seed; a class with too few images gives its surplus to the others), sorted."""
    rng = random.Random(seed)
    by_class = _indices_by_class(split, rng)
    shares = _shares(by_class, min(count, len(split)), rng)
    chosen = [i for label, share in shares.items() for i in by_class[label][:share]]
    return sorted(chosen)


def _resolve_count(split: ImageSplit, images: int) -> int:
    if images < 0:
        raise DataError(f"calibrate.images: expected 0 (default) or a positive count, got {images}")
    if images > len(split):
        raise DataError(f"{split.root}: {images} calibration images asked for, "
                        f"but the split holds only {len(split)}")
    if images == 0 and len(split) < DEFAULT_IMAGES:
        warnings.warn(f"{split.root}: only {len(split)} training images; calibrating on all of "
                      f"them instead of {DEFAULT_IMAGES}", stacklevel=3)
        return len(split)
    return images or DEFAULT_IMAGES


def _indices_by_class(split: ImageSplit, rng: random.Random) -> dict[int, list[int]]:
    by_class: dict[int, list[int]] = {label: [] for label in range(len(split.classes))}
    for index, label in enumerate(split.labels):
        by_class[label].append(index)
    empty = [split.classes[label] for label, items in by_class.items() if not items]
    if empty:
        raise DataError(f"{split.root}: class '{empty[0]}' has no images to choose from")
    for items in by_class.values():
        rng.shuffle(items)
    return by_class


def _shares(by_class: dict[int, list[int]], wanted: int, rng: random.Random) -> dict[int, int]:
    """Equal shares; a class with too few images gives its surplus to the others."""
    shares = {label: 0 for label in by_class}
    left = wanted
    while left:
        open_classes = [c for c in by_class if shares[c] < len(by_class[c])]
        rng.shuffle(open_classes)
        each, extra = divmod(left, len(open_classes))
        for rank, label in enumerate(open_classes):
            give = min(each + (rank < extra), len(by_class[label]) - shares[label])
            shares[label] += give
            left -= give
    return shares
