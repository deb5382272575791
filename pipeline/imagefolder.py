"""ImageFolder trees (``<root>/<split>/<class>/<image>``): how every dataset reaches us.

Named datasets are laid out as such a tree first (:mod:`pipeline.workstation.data.sources`), so the
calibration manifest, evaluation and replay clips all see files with paths and hashes.

The scan follows torchvision's ``ImageFolder`` exactly (sorted class folders, sorted walk,
the same extensions; a test holds the two equal) but is our own code: the device scores
engines on labelled folders and has no torchvision.

Links are where it parts from torchvision, which follows every link: a loop inside a class
folder recurses, and a link from class A to B's images gives them label A. A label is the
class folder a file lies in, so a link may not carry images across classes:

- A class folder may itself be a link (a class kept on another disk). It is resolved once;
  two class folders of a split that resolve to the same folder, or one inside the other,
  are refused naming both. Its files are listed under the class's name, as torchvision does.
- Inside a class folder, a link to a folder is never followed: it is refused naming the
  link (so no loop can start), whether or not it would reach another class.
- A link to an image file is listed only if neither it nor any link it passes through
  lies in another class folder of the split; otherwise it is refused naming the link and
  both classes. Links within the class, or to files outside the split's classes, are fine.
- A broken link (or a loop of file links) with an image's name is refused naming it; links
  whose names are not images are ignored, like any file that is not an image.

A tree without links lists exactly what torchvision lists. Names are taken as the file
system gives them (any Unicode), never normalised.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pipeline.config import DataConfig
from pipeline.errors import DataError

SPLITS = ("train", "val")
# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Where each named dataset is laid out under ``data.root``: the workstation writes it
# there (pipeline.workstation.data.sources), evaluation anywhere finds it there.
NAMED_TREES = {"digits": "digits", "cifar10": "cifar10", "imagenette": "imagenette/imagenette2"}


@dataclass(frozen=True)
class ImageSplit:
    """One split's files and labels, with the dataset's class list (``names``: their
    readable names where the tree gives them, e.g. in ``classes.tsv``)."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    names: tuple[str, ...] = ()
    scored: tuple[int, ...] = ()  # relabelled for a model with more classes: the data's ones among them

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
        return scan_split(self.root / name, self.classes, self.names)


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


def scan_split(split_root: Path, classes: tuple[str, ...], names: tuple[str, ...] = ()) -> ImageSplit:
    """List every image of a split in a stable (sorted) order."""
    samples = _walk_classes(Path(split_root), classes)
    files = tuple(Path(p) for p, _ in samples)
    labels = tuple(label for _, label in samples)
    return ImageSplit(split_root, files, labels, classes, tuple(names))


def named_tree(root: Path, name: str) -> Path:
    """Where the named dataset ``name`` is laid out under ``root`` (it may not exist yet)."""
    if name not in NAMED_TREES:
        raise DataError(f"data.name: unknown dataset '{name}'; choose one of: {', '.join(NAMED_TREES)}, "
                        f"or give data.path (DATA=) to an ImageFolder tree")
    return Path(root) / NAMED_TREES[name]


def laid_out_split(data: DataConfig, split: str) -> ImageSplit:
    """A split of the configured data, laying nothing out: the tree ``data.path`` names, or
    a named dataset the workstation has already laid out under ``data.root``."""
    if data.path:
        return open_image_folder(Path(data.path)).split(split)
    tree = named_tree(Path(data.root), data.name)
    if not tree.is_dir():
        raise DataError(f"{tree}: dataset '{data.name}' is not laid out here; train first "
                        f"(make demo), or give --data DIR")
    return open_image_folder(tree).split(split)


def _walk_classes(split_root: Path, classes: Tuple[str, ...]) -> List[Tuple[str, int]]:
    """(file, label) pairs as torchvision's ``make_dataset`` lists them; a class without
    images is refused, naming it, and so is a link that breaks the module's link policy."""
    owners = _resolved_class_folders(split_root, classes)
    samples: List[Tuple[str, int]] = []
    empty = []
    for label, name in enumerate(classes):
        folder = split_root / name
        found = _images_under(folder, name, owners) if folder.is_dir() else []
        samples.extend((path, label) for path in found)
        if not found:
            empty.append(name)
    if empty:
        raise DataError(f"{split_root}: Found no valid file for the classes {', '.join(sorted(empty))}. "
                        f"Supported extensions are: {', '.join(IMG_EXTENSIONS)}")
    return samples


def _resolved_class_folders(split_root: Path, classes: Tuple[str, ...]) -> Dict[Path, str]:
    """Each class folder's real location → its class; refuses two that are one folder or nest."""
    owners: Dict[Path, str] = {}
    for name in (c for c in classes if (split_root / c).is_dir()):
        real = Path(os.path.realpath(split_root / name))
        if real in owners:
            raise DataError(f"{split_root}: class folders '{owners[real]}' and '{name}' are the same "
                            f"folder ({real}); each class needs its own")
        owners[real] = name
    # sorted by path components, a folder's descendants follow it at once: check neighbours
    ordered = sorted(owners, key=lambda path: path.parts)
    for outer, inner in zip(ordered, ordered[1:]):
        if _is_within(inner, outer):
            raise DataError(f"{split_root}: class folder '{owners[inner]}' lies inside class folder "
                            f"'{owners[outer]}' ({inner}); its images would carry both labels")
    return owners


def _images_under(folder: Path, name: str, owners: Dict[Path, str]) -> List[str]:
    found = []
    # not followlinks: a link to a folder is refused below, never entered (no loops)
    for root, dirs, names in sorted(os.walk(folder)):
        linked = [os.path.join(root, d) for d in sorted(dirs) if os.path.islink(os.path.join(root, d))]
        if linked:
            raise DataError(f"{linked[0]}: a link to a folder inside class '{name}'; links to folders "
                            f"in a class folder are not followed (move the folder in, or link its files)")
        images = [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
        for path in images:
            if os.path.islink(path):
                _check_file_link(path, name, owners)
        found.extend(images)
    return found


def _check_file_link(link: str, name: str, owners: Dict[Path, str]) -> None:
    """A link to a file in class ``name`` may not be broken, nor lead through another class."""
    if not os.path.exists(link):
        raise DataError(f"{link}: broken link to {os.readlink(link)} (in class '{name}'; its target "
                        f"does not exist, or links loop)")
    for hop in _link_hops(link):
        other = _owner(hop, owners)
        if other is not None and other != name:
            raise DataError(f"{link}: a link in class '{name}' to {hop}, in class '{other}'; its "
                            f"image would be labelled '{name}'")


def _link_hops(link: str) -> List[Path]:
    """Where each link of a chain points (its folder resolved), ending at the real file."""
    hops: List[Path] = []
    path = link
    while os.path.islink(path) and len(hops) < 40:  # 40: the kernel's own limit on a chain
        target = os.path.join(os.path.dirname(path), os.readlink(path))
        path = os.path.join(os.path.realpath(os.path.dirname(target)), os.path.basename(target))
        hops.append(Path(path))
    return hops


def _owner(path: Path, owners: Dict[Path, str]) -> Optional[str]:
    """The class whose (resolved) folder holds ``path``, if any."""
    for parent in path.parents:
        if parent in owners:
            return owners[parent]
    return None


def _is_within(path: Path, folder: Path) -> bool:
    """``path.is_relative_to(folder)`` (Python 3.9+), for the device's Python 3.8."""
    return path == folder or folder in path.parents


def open_split(folder: Path) -> ImageSplit:
    """A tree with ``val/`` gives its val split; otherwise ``folder`` is one split. Its
    class folders are the classes, named by a ``classes.tsv`` in the split or the tree."""
    folder = Path(folder)
    tree = folder
    if (folder / "val").is_dir():
        folder = folder / "val"
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    classes = _class_folders(folder)
    table = folder if (folder / "classes.tsv").is_file() else tree
    return scan_split(folder, classes, read_class_names(table, classes))


def for_model(split: ImageSplit, classes: Sequence[str], class_names: Sequence[str]) -> ImageSplit:
    """``split`` relabelled in the model's label space: each class folder is matched to one
    of the model's labels by name (its folder name, or its readable name from
    ``classes.tsv``, against the model's class ids and readable names). The common case is
    a model with more classes than the data, e.g. an ImageNet classifier checked on photos
    of a few of its classes: top-1 is then scored over the model's whole output. A folder
    that matches no label, or several, is refused with the list."""
    classes, class_names = tuple(classes), tuple(class_names)
    if split.classes == classes:
        return split
    mapping = class_mapping(split.classes, split.names or split.classes, classes, class_names, split.root)
    return ImageSplit(split.root, split.files, tuple(mapping[label] for label in split.labels), classes,
                      class_names, tuple(sorted(set(mapping))))


def class_mapping(folders: Sequence[str], names: Sequence[str], classes: Sequence[str],
                  class_names: Sequence[str], where: Path | str) -> tuple[int, ...]:
    """The model's label index for each data class (see :func:`for_model`)."""
    found, unmatched, ambiguous = [], [], []
    for folder, name in zip(folders, names):
        hits = _matching_labels(folder, name, classes, class_names)
        if len(hits) == 1:
            found.append(hits[0])
        elif hits:
            ambiguous.append(f"{folder} ({' / '.join(f'{i}: {class_names[i]}' for i in hits[:4])})")
        else:
            unmatched.append(folder if name == folder else f"{folder} ({name})")
    if unmatched:
        raise DataError(f"{where}: {len(unmatched)} class folder(s) match no label of the model "
                        f"({len(classes)} labels): {', '.join(unmatched[:10])}"
                        f"{', ...' if len(unmatched) > 10 else ''}; name each folder after one of the "
                        f"model's labels, or map it in classes.tsv (folder<TAB>label)")
    if ambiguous:
        raise DataError(f"{where}: class folder(s) match several of the model's labels: "
                        f"{'; '.join(ambiguous[:5])}; map each in classes.tsv (folder<TAB>label id)")
    return tuple(found)


def _matching_labels(folder: str, name: str, classes: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Exact class id first (``n01440764``), then the folder's or readable name against
    the ids and readable names, compared without case, underscores or extra spaces."""
    for key in (folder, name):
        exact = [i for i, c in enumerate(classes) if c == key]
        if exact:
            return exact
    keys = {_plain(folder), _plain(name)}
    return [i for i, (c, n) in enumerate(zip(classes, class_names)) if _plain(c) in keys or _plain(n) in keys]


def _plain(label: str) -> str:
    return " ".join(label.replace("_", " ").casefold().split())


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


def _class_folders(split_root: Path) -> Tuple[str, ...]:
    try:
        classes = sorted(entry.name for entry in os.scandir(split_root) if entry.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        classes = []
    if not classes:
        raise DataError(f"{split_root}: no class folders (expected {split_root}/<class>/<image>)")
    return tuple(classes)
