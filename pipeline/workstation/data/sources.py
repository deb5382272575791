"""Named datasets, each laid out once as an ImageFolder tree under ``data.root``.

``digits`` ships with scikit-learn, so ``make demo`` runs offline on a fresh machine.
``imagenette`` is read with torchvision's loader; ``cifar10``'s pickled batches are read by
our own few lines, which unpickle only the bytes whose MD5 they have just checked (the
loader torchvision has checks a file and then reads it again). Both download only when
``data.download = true`` (no stage touches the network unless told to).
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.artifacts import umask, write_text
from pipeline.config import DataConfig
from pipeline.imagefolder import ImageDataset, named_tree, open_image_folder
from pipeline.errors import ConfigError, DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# The MD5 of every file in CIFAR-10's ``cifar-10-batches-py`` (torchvision's
# ``CIFAR10.train_list``, ``test_list`` and ``meta``; a test holds the two equal). The batches
# are pickles, and unpickling runs code, so a file is unpickled only once its MD5 is found
# here: the real batches are known bytes, anything else is refused unread.
CIFAR10_FOLDER = "cifar-10-batches-py"  # torchvision's CIFAR10.base_folder
CIFAR10_MD5S: Mapping[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


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
    splits = {split: _cifar_samples(source, split == "train", cfg.download, CIFAR10_MD5S)
              for split in ("train", "val")}
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


def _cifar_samples(source: Path, train: bool, download: bool,
                   md5s: Mapping[str, str]) -> list[tuple[np.ndarray, int, int]]:
    """One split of the CIFAR-10 batches under ``source``, in torchvision's layout and
    order. Each batch's bytes are read once, hashed, and only those very bytes unpickled
    when their MD5 is the known one: no file can change between the check and the load."""
    folder = source / CIFAR10_FOLDER
    if download and not all((folder / name).is_file() for name in md5s):
        _download_cifar10(source)
    missing = [name for name in md5s if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{source}: cifar10 not found ({folder / missing[0]} missing); set data.download=true "
                        f"where a network exists")
    batches = [n for n in md5s if n.startswith("data_batch")] if train else ["test_batch"]
    images, labels = [], []
    for name in batches:
        entry = _trusted_batch(folder / name, md5s[name])
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(int(label) for label in entry["labels"])
    bad = [label for label in labels if not 0 <= label < len(CIFAR10_CLASSES)]
    if bad:
        raise DataError(f"{source}: cifar10 batches hold label {bad[0]}, expected 0..9")
    data = np.concatenate(images)
    if len(data) != len(labels):
        raise DataError(f"{folder}: cifar10 batches hold {len(data)} images but {len(labels)} labels")
    return [(image, label, i) for i, (image, label) in enumerate(zip(data, labels))]


def _trusted_batch(path: Path, expected: str) -> dict:
    """Unpickle ``path`` only if the bytes read are the known ones (pickles run code)."""
    import pickle

    blob = path.read_bytes()
    if hashlib.md5(blob).hexdigest() != expected:
        raise DataError(f"{path}: MD5 differs from CIFAR-10's; not unpickling it")
    try:
        entry = pickle.loads(blob, encoding="latin1")
        return {"data": entry["data"], "labels": entry.get("labels", entry.get("fine_labels"))}
    except Exception as exc:  # a known file cannot be foreign; a test's stand-in batch can be
        raise DataError(f"{path}: cifar10 batch unreadable ({type(exc).__name__}: {exc})") from None


def _download_cifar10(source: Path) -> None:
    """Fetch and unpack the archive as ``CIFAR10.download`` does (checking the archive's MD5)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(CIFAR10.url, str(source), filename=CIFAR10.filename,
                                     md5=CIFAR10.tgz_md5)
    except Exception as exc:  # offline, refused, or an archive with the wrong checksum
        raise DataError(f"{source}: cifar10 download failed ({exc})") from None


def _write_tree(root: Path, splits: dict[str, Iterable[tuple[np.ndarray, int, int]]],
                names: tuple[str, ...]) -> Path:
    """Write PNGs into a temporary folder and rename it into place when complete."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp's 0700 would hide the dataset from other users
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
