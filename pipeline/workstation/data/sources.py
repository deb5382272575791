"""Named datasets, each laid out once as an ImageFolder tree under ``data.root``.

``digits`` ships with scikit-learn, so ``make demo`` runs offline on a fresh machine.
``cifar10`` and ``imagenette`` are read with torchvision's loaders, which download only
when ``data.download = true`` (no stage touches the network unless told to).
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.artifacts import write_text
from pipeline.config import DataConfig
from pipeline.imagefolder import ImageDataset, named_tree, open_image_folder
from pipeline.errors import ConfigError, DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


def open_dataset(cfg: DataConfig) -> ImageDataset:
    """The dataset a config names: ``data.path`` (any ImageFolder tree) wins over ``data.name``."""
    if cfg.path:
        return open_image_folder(Path(cfg.path))
    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset '{cfg.name}'; choose one of: "
                          f"{', '.join(DATASETS)}, or give data.path (DATA=) to an ImageFolder tree")
    return open_image_folder(DATASETS[cfg.name](cfg))


def prepare_digits(cfg: DataConfig) -> Path:
    """scikit-learn's 8×8 handwritten digits, split 80/20 per class with a fixed seed."""
    root = named_tree(Path(cfg.root), "digits")
    if root.is_dir():
        return root
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8), 0..16 → 0..255
    index = np.arange(len(images))
    train, val = train_test_split(index, test_size=0.2, stratify=digits.target, random_state=0)
    names = tuple(str(c) for c in range(10))
    splits = {"train": [(images[i], digits.target[i], i) for i in train],
              "val": [(images[i], digits.target[i], i) for i in val]}
    return _write_tree(root, splits, names)


def prepare_cifar10(cfg: DataConfig) -> Path:
    """CIFAR-10 from torchvision's python-pickle batches; the test batch becomes ``val``."""
    root = named_tree(Path(cfg.root), "cifar10")
    if root.is_dir():
        return root
    source = Path(cfg.root) / "cifar10-source"
    splits = {split: _cifar_samples(source, split == "train", cfg.download) for split in ("train", "val")}
    return _write_tree(root, splits, CIFAR10_CLASSES)


def prepare_imagenette(cfg: DataConfig) -> Path:
    """fast.ai's Imagenette (full size) through torchvision; its tree is already ImageFolder."""
    from torchvision.datasets import Imagenette

    source = Path(cfg.root) / "imagenette"
    try:
        dataset = Imagenette(str(source), split="train", size="full", download=cfg.download)
    except RuntimeError as exc:
        raise DataError(f"{source}: imagenette not found ({exc}); set data.download=true where a "
                        f"network exists, or DATA=<path> to an ImageFolder copy") from None
    root = named_tree(Path(cfg.root), "imagenette")  # torchvision's imagenette2 under source
    table = root / "classes.tsv"
    if not table.exists():
        lines = (f"{wnid}\t{names[0]}" for wnid, names in zip(dataset.wnids, dataset.classes))
        write_text(table, "\n".join(lines) + "\n")
    return root


def _cifar_samples(source: Path, train: bool, download: bool) -> list[tuple[np.ndarray, int, int]]:
    from torchvision.datasets import CIFAR10

    class _CIFAR10Files(CIFAR10):
        """Checks the batch files exist; checksums are checked on the downloaded archive."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    try:
        dataset = _CIFAR10Files(str(source), train=train, download=download)
    except RuntimeError as exc:
        raise DataError(f"{source}: cifar10 not found ({exc}); set data.download=true where a "
                        f"network exists") from None
    except Exception as exc:  # a truncated or foreign pickle: name the folder, not a traceback
        raise DataError(f"{source}: cifar10 batches unreadable ({exc})") from None
    bad = [label for label in dataset.targets if not 0 <= label < len(CIFAR10_CLASSES)]
    if bad:
        raise DataError(f"{source}: cifar10 batches hold label {bad[0]}, expected 0..9")
    return [(img, int(label), i) for i, (img, label) in enumerate(zip(dataset.data, dataset.targets))]


def _write_tree(root: Path, splits: dict[str, Iterable[tuple[np.ndarray, int, int]]],
                names: tuple[str, ...]) -> Path:
    """Write PNGs into a temporary folder and rename it into place when complete."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for split, samples in splits.items():
            for name in names:
                (tmp / split / name).mkdir(parents=True)
            for image, label, index in samples:
                Image.fromarray(image).save(tmp / split / names[label] / f"{index:05d}.png")
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


DATASETS: dict[str, Callable[[DataConfig], Path]] = {
    "digits": prepare_digits,
    "cifar10": prepare_cifar10,
    "imagenette": prepare_imagenette,
}
