"""Whole splits decoded once into uint8 tensors for training.

On a 2-core machine a per-sample DataLoader spends as long decoding JPEGs as the network
spends learning from them; decoding each image once (:func:`pipeline.preprocess.load_images`,
the code evaluation and the device use) and augmenting whole batches of small uint8
tensors leaves the cores to the model.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline.imagefolder import ImageSplit
from pipeline.preprocess import load_images


def load_split(split: ImageSplit, transform: Callable[[np.ndarray], np.ndarray], workers: int = 2,
               show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and transform every file: uint8 (N, 3, S, S) images and int64 (N,) labels."""
    images = load_images(split.files, transform, workers, f"load {split.root}", show_progress)
    return torch.from_numpy(images), torch.tensor(split.labels, dtype=torch.int64)
