"""Whole splits decoded once into uint8 tensors.

On a 2-core machine a per-sample DataLoader spends as long decoding JPEGs as the network
spends learning from them; decoding each image once and augmenting whole batches of
small uint8 tensors leaves the cores to the model.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline.data.folder import ImageSplit
from pipeline.preprocess import read_rgb
from pipeline.progress import progress

Transform = Callable[[np.ndarray], torch.Tensor]


def load_split(split: ImageSplit, transform: Transform, workers: int = 2,
               show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and transform every file: uint8 (N, 3, S, S) images and int64 (N,) labels."""
    images = load_files(split.files, transform, workers, f"load {split.root}", show_progress)
    return images, torch.tensor(split.labels, dtype=torch.int64)


def load_files(files: tuple[Path, ...] | list[Path], transform: Transform, workers: int = 2,
               desc: str = "load", show_progress: bool = True) -> torch.Tensor:
    """Decode ``files`` in parallel threads (PIL and torch release the GIL while they work)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda f: transform(read_rgb(f)), files)
        images = list(progress(results, show_progress, total=len(files), desc=desc, unit="img"))
    return torch.stack(images)  # (N, 3, S, S) uint8
