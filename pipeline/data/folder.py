"""ImageFolder trees (``<root>/<split>/<class>/<image>``): how every dataset reaches us.

Named datasets are laid out as such a tree first (:mod:`pipeline.data.sources`), so the
calibration manifest, evaluation and replay clips all see files with paths and hashes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from pipeline.errors import DataError

SPLITS = ("train", "val")


@dataclass(frozen=True)
class ImageSplit:
    """One split's files and labels, with the dataset's class list."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class ImageDataset:
    """An ImageFolder tree: ``classes`` are folder names, ``names`` their readable labels."""

    root: Path
    classes: tuple[str, ...]
    names: tuple[str, ...]

    def split(self, name: str) -> ImageSplit:
        """Scan ``<root>/<name>``; a missing split or a class with no images is refused."""
        return scan_split(self.root / name, self.classes)


def open_image_folder(root: Path) -> ImageDataset:
    """Check the tree's shape and read its class list (train's class folders are the truth)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DataError(f"{root}: no '{missing[0]}' folder; expected {root}/train/<class>/* "
                        f"and {root}/val/<class>/*")
    classes = _class_folders(root / "train")
    val_classes = _class_folders(root / "val")
    if val_classes != classes:
        extra = sorted(set(val_classes) ^ set(classes))
        raise DataError(f"{root}: train and val have different class folders ({', '.join(extra[:5])})")
    return ImageDataset(root, classes, read_class_names(root, classes))


def scan_split(split_root: Path, classes: tuple[str, ...]) -> ImageSplit:
    """List every image of a split in a stable (sorted) order."""
    index = {name: i for i, name in enumerate(classes)}
    try:
        samples = make_dataset(str(split_root), index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:
        raise DataError(f"{split_root}: {exc}") from None
    files = tuple(Path(p) for p, _ in samples)
    labels = tuple(label for _, label in samples)
    return ImageSplit(split_root, files, labels, classes)


def open_split(folder: Path, classes: tuple[str, ...] | None = None) -> ImageSplit:
    """A tree with ``val/`` gives its val split; otherwise ``folder`` is one split (its
    class folders, unless the model's ``classes`` are given)."""
    folder = Path(folder)
    if (folder / "val").is_dir():
        folder = folder / "val"
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    return scan_split(folder, classes or _class_folders(folder))


def read_class_names(root: Path, classes: tuple[str, ...]) -> tuple[str, ...]:
    """Readable names from an optional ``classes.tsv`` (``folder<TAB>name``), else the folders."""
    table = root / "classes.tsv"
    if not table.is_file():
        return classes
    names: dict[str, str] = {}
    for number, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        folder, sep, name = line.partition("\t")
        if not sep:
            raise DataError(f"{table}:{number}: expected 'folder<TAB>name', got {line!r}")
        names[folder.strip()] = name.strip()
    return tuple(names.get(c, c) for c in classes)


def _class_folders(split_root: Path) -> tuple[str, ...]:
    try:
        classes, _ = find_classes(split_root)
    except FileNotFoundError:
        raise DataError(f"{split_root}: no class folders (expected {split_root}/<class>/<image>)") from None
    return tuple(classes)
