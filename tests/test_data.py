"""Datasets: ImageFolder trees, named datasets laid out as such trees, and decoding to tensors.

Every dataset here is a small real one written under ``tmp_path``: PNG/JPEG trees made with
PIL, scikit-learn's bundled digits, and CIFAR-10 / Imagenette in torchvision's own on-disk
formats, so the project's code and torchvision's loaders both run for real.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import DataConfig
from pipeline.imagefolder import open_image_folder
from pipeline.workstation.data import sources
from pipeline.workstation.data.memory import load_split
from pipeline.workstation.data.sources import CIFAR10_CLASSES, open_dataset
from pipeline.errors import ConfigError, DataError
from pipeline.preprocess import Preprocessing, read_rgb
from tests.conftest import SHARED_IMAGENETTE

COLOURS = {"cat": (200, 30, 40), "dog": (10, 180, 60), "owl": (20, 40, 220)}


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def solid(colour: tuple[int, int, int], h: int = 20, w: int = 24) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def make_tree(root: Path, layout: dict[str, dict[str, list[str]]]) -> Path:
    """``layout[split][class]`` lists file names; each image is its class's solid colour."""
    for split, classes in layout.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name, files in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for file in files:
                write_image(root / split / name / file, solid(COLOURS.get(name, (90, 90, 90))))
    return root


def good_tree(root: Path) -> Path:
    # written out of order on purpose: the listing must not depend on creation order
    return make_tree(root, {
        "train": {"owl": ["b.png", "a.png"], "cat": ["c.png", "a.png", "b.png"], "dog": ["z.png"]},
        "val": {"dog": ["v.png"], "owl": ["v.png"], "cat": ["v.png"]},
    })


# --- ImageFolder trees ---------------------------------------------------------------------

def test_good_tree_gives_sorted_classes_and_stable_labelled_files(tmp_path):
    root = good_tree(tmp_path / "tree")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")

    ds = open_image_folder(root)
    assert ds.root == root
    assert ds.classes == ("cat", "dog", "owl")
    assert ds.names == ds.classes  # no classes.tsv: the folder names

    train = ds.split("train")
    assert train.root == root / "train"
    assert train.classes == ds.classes
    assert [p.relative_to(root / "train").as_posix() for p in train.files] == [
        "cat/a.png", "cat/b.png", "cat/c.png", "dog/z.png", "owl/a.png", "owl/b.png"]
    assert train.labels == (0, 0, 0, 1, 2, 2)
    assert len(train) == 6
    assert open_image_folder(root).split("train") == train  # the same listing every time

    val = ds.split("val")
    assert [ds.classes[label] for label in val.labels] == ["cat", "dog", "owl"]
    assert [p.parent.name for p in val.files] == ["cat", "dog", "owl"]


def test_our_scan_lists_what_torchvisions_imagefolder_lists(tmp_path):
    """The device scans labelled folders without torchvision; the scan must give exactly
    torchvision's files, order and labels (nested folders, mixed-case extensions, non-images)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = good_tree(tmp_path / "tree")
    nested = root / "train" / "cat" / "deeper"
    nested.mkdir()
    (nested / "Z.PNG").write_bytes((root / "train" / "cat" / "a.png").read_bytes())
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    trees = [root / "train"] + ([SHARED_IMAGENETTE / "val"] if SHARED_IMAGENETTE.is_dir() else [])
    for split_root in trees:
        classes, index = find_classes(str(split_root))
        expected = make_dataset(str(split_root), index, extensions=IMG_EXTENSIONS)
        ours = open_image_folder(split_root.parent).split(split_root.name)
        assert list(ours.classes) == classes
        assert [(str(f), label) for f, label in zip(ours.files, ours.labels)] == expected


def test_missing_root_is_named(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match="not found") as info:
        open_image_folder(root)
    assert str(root) in str(info.value)


@pytest.mark.parametrize("missing", ["train", "val"])
def test_missing_split_folder_is_named(tmp_path, missing):
    root = good_tree(tmp_path / "tree")
    for path in sorted((root / missing).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / missing).rmdir()
    with pytest.raises(DataError) as info:
        open_image_folder(root)
    assert str(root) in str(info.value)
    assert f"'{missing}'" in str(info.value)


def test_train_without_class_folders_is_named(tmp_path):
    root = make_tree(tmp_path / "tree", {"train": {}, "val": {"cat": ["v.png"]}})
    (root / "train" / "stray.png").write_bytes((root / "val" / "cat" / "v.png").read_bytes())
    with pytest.raises(DataError, match="no class folders") as info:
        open_image_folder(root)
    assert str(root / "train") in str(info.value)


def test_class_folder_without_images_is_named(tmp_path):
    root = make_tree(tmp_path / "tree", {
        "train": {"cat": ["a.png"], "dog": []},
        "val": {"cat": ["v.png"], "dog": ["v.png"]},
    })
    (root / "train" / "dog" / "readme.txt").write_text("no images here")
    ds = open_image_folder(root)
    assert ds.classes == ("cat", "dog")
    with pytest.raises(DataError) as info:
        ds.split("train")
    assert str(root / "train") in str(info.value)
    assert "dog" in str(info.value)
    assert len(ds.split("val")) == 2


def test_train_and_val_with_different_classes_are_refused(tmp_path):
    root = make_tree(tmp_path / "tree", {
        "train": {"cat": ["a.png"], "dog": ["a.png"]},
        "val": {"cat": ["v.png"], "owl": ["v.png"]},
    })
    with pytest.raises(DataError, match="different class folders") as info:
        open_image_folder(root)
    msg = str(info.value)
    assert str(root) in msg and "dog" in msg and "owl" in msg


def test_classes_tsv_gives_readable_names(tmp_path):
    root = good_tree(tmp_path / "tree")
    (root / "classes.tsv").write_text("owl\tBarn owl\n\ncat\tHouse cat \n", encoding="utf-8")
    ds = open_image_folder(root)
    assert ds.classes == ("cat", "dog", "owl")
    assert ds.names == ("House cat", "dog", "Barn owl")  # dog: not in the table, its folder


def test_malformed_classes_tsv_line_is_named(tmp_path):
    root = good_tree(tmp_path / "tree")
    table = root / "classes.tsv"
    table.write_text("cat\tHouse cat\ndog Dog\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        open_image_folder(root)
    assert f"{table}:2" in str(info.value)


# --- links inside ImageFolder trees ----------------------------------------------------------
# Policy (pipeline/imagefolder.py's docstring): class folders may be links; inside a class
# folder, links to folders are refused, links to files only where they do not reach into
# another class, and broken links are refused. Each test links real files made here.

def torchvision_listing(split_root: Path) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    _, index = find_classes(str(split_root))
    return make_dataset(str(split_root), index, extensions=IMG_EXTENSIONS)


def our_listing(split_root: Path) -> list[tuple[str, int]]:
    split = open_image_folder(split_root.parent).split(split_root.name)
    return [(str(f), label) for f, label in zip(split.files, split.labels)]


def test_a_link_loop_inside_a_class_is_refused_naming_the_link(tmp_path):
    root = good_tree(tmp_path / "tree")
    loop = root / "train" / "cat" / "again"
    loop.symlink_to(root / "train" / "cat", target_is_directory=True)  # cat/again/again/...
    with pytest.raises(DataError) as info:
        open_image_folder(root).split("train")
    msg = str(info.value)
    assert msg.startswith(f"{loop}: ") and "\n" not in msg
    assert "link to a folder" in msg and "'cat'" in msg


def test_a_link_to_another_class_folder_is_refused_not_mislabelled(tmp_path):
    root = good_tree(tmp_path / "tree")
    link = root / "train" / "cat" / "more"
    link.symlink_to(root / "train" / "dog", target_is_directory=True)  # dog's z.png as a cat
    with pytest.raises(DataError) as info:
        open_image_folder(root).split("train")
    msg = str(info.value)
    assert msg.startswith(f"{link}: ") and "\n" not in msg
    assert "link to a folder" in msg


@pytest.mark.parametrize("via", ["direct", "through-a-link-in-dog", "through-the-split"])
def test_a_link_to_another_class_file_is_refused_naming_both_classes(tmp_path, via):
    root = good_tree(tmp_path / "tree")
    dog_image = root / "train" / "dog" / "z.png"
    target = {"direct": dog_image,
              # cat/x.png -> dog/y.png -> outside: the first hop is still dog's
              "through-a-link-in-dog": root / "train" / "dog" / "y.png",
              # relative, through the split folder: ../dog/z.png
              "through-the-split": Path("..") / "dog" / "z.png"}[via]
    if via == "through-a-link-in-dog":
        outside = write_image(tmp_path / "outside" / "o.png", solid((1, 2, 3)))
        target.symlink_to(outside)
    link = root / "train" / "cat" / "x.png"
    link.symlink_to(target)
    with pytest.raises(DataError) as info:
        open_image_folder(root).split("train")
    msg = str(info.value)
    assert msg.startswith(f"{link}: ") and "\n" not in msg
    assert "'cat'" in msg and "'dog'" in msg


def test_a_broken_link_is_refused_naming_it(tmp_path):
    root = good_tree(tmp_path / "tree")
    link = root / "val" / "owl" / "gone.png"
    link.symlink_to(tmp_path / "nowhere" / "gone.png")
    with pytest.raises(DataError) as info:
        open_image_folder(root).split("val")
    msg = str(info.value)
    assert msg.startswith(f"{link}: ") and "\n" not in msg
    assert "broken link" in msg
    assert len(open_image_folder(root).split("train")) == 6  # the other split is unaffected


def test_a_class_folder_that_is_a_link_is_scanned_where_it_points(tmp_path):
    """A class folder may live elsewhere (another disk); its files keep the class's path, as
    torchvision lists them. Links to files outside the other classes are fine too."""
    root = good_tree(tmp_path / "tree")
    elsewhere = make_tree(tmp_path / "elsewhere", {"store": {"owl": ["q.png", "p.png"]}})
    for split in ("train", "val"):
        shutil.rmtree(root / split / "owl")
        (root / split / "owl").symlink_to(elsewhere / "store" / "owl", target_is_directory=True)
    outside = write_image(tmp_path / "outside" / "o.png", solid((1, 2, 3)))
    (root / "train" / "dog" / "linked.png").symlink_to(outside)  # a file from outside: kept
    (root / "train" / "dog" / "same.png").symlink_to("z.png")  # within its own class: kept

    ds = open_image_folder(root)
    assert ds.classes == ("cat", "dog", "owl")
    assert our_listing(root / "train") == torchvision_listing(root / "train")
    train = ds.split("train")
    assert [p.relative_to(root / "train").as_posix() for p in train.files] == [
        "cat/a.png", "cat/b.png", "cat/c.png", "dog/linked.png", "dog/same.png", "dog/z.png",
        "owl/p.png", "owl/q.png"]
    assert train.labels == (0, 0, 0, 1, 1, 1, 2, 2)
    assert read_rgb(train.files[3]).shape == (20, 24, 3)


@pytest.mark.parametrize("points_to", ["the-same-folder", "inside-another-class", "the-split"])
def test_class_folders_that_are_one_folder_are_refused_naming_both(tmp_path, points_to):
    root = good_tree(tmp_path / "tree")
    target = {"the-same-folder": root / "train" / "dog",
              "inside-another-class": root / "train" / "dog" / "puppies",
              "the-split": root / "train"}[points_to]
    target.mkdir(exist_ok=True)
    write_image(target / "p.png", solid((5, 5, 5)))
    (root / "train" / "pup").symlink_to(target, target_is_directory=True)
    (root / "val" / "pup").mkdir()
    write_image(root / "val" / "pup" / "v.png", solid((5, 5, 5)))
    ds = open_image_folder(root)
    assert "pup" in ds.classes
    with pytest.raises(DataError) as info:
        ds.split("train")
    msg = str(info.value)
    assert msg.startswith(f"{root / 'train'}: ") and "\n" not in msg
    assert "'pup'" in msg and ("'dog'" in msg or "'cat'" in msg)
    assert len(ds.split("val")) == 4


def test_unicode_class_and_file_names_are_listed(tmp_path):
    layout = {split: {"café": ["ünï.png", "b.png"], "猫": ["日本.png", "Ω.JPG"], "ﬁsh": ["a.png"]}
              for split in ("train", "val")}
    root = make_tree(tmp_path / "tréé", layout)
    ds = open_image_folder(root)
    assert set(ds.classes) == {"café", "猫", "ﬁsh"}
    assert list(ds.classes) == sorted(ds.classes)
    assert our_listing(root / "train") == torchvision_listing(root / "train")
    train = ds.split("train")
    assert sorted(p.name for p in train.files) == sorted(["ünï.png", "b.png", "日本.png", "Ω.JPG",
                                                          "a.png"])
    for path, label in zip(train.files, train.labels):
        assert path.parent.name == ds.classes[label]
        assert read_rgb(path).shape == (20, 24, 3)


# --- decoding images -------------------------------------------------------------------

def png_bytes(tmp_path: Path) -> bytes:
    return write_image(tmp_path / "ok.png", np.arange(48 * 40 * 3, dtype=np.uint8)
                       .reshape(48, 40, 3)).read_bytes()


@pytest.mark.parametrize("content", [
    lambda tmp: b"this is not a PNG at all" * 10,
    lambda tmp: b"",
    lambda tmp: png_bytes(tmp)[:200],  # a real PNG cut short
], ids=["garbage", "empty", "truncated"])
def test_corrupt_image_is_a_data_error_naming_the_file(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content(tmp_path))
    with pytest.raises(DataError) as info:
        read_rgb(path)
    assert str(path) in str(info.value)


def test_load_split_names_a_corrupt_file(tmp_path):
    root = good_tree(tmp_path / "tree")
    bad = root / "train" / "dog" / "x.png"
    bad.write_bytes(b"\x89PNG garbage bytes")
    split = open_image_folder(root).split("train")
    assert bad in split.files
    prep = Preprocessing(input_size=16, resize=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(DataError) as info:
        load_split(split, prep.prepare, workers=2, show_progress=False)
    assert str(bad) in str(info.value)


def test_grayscale_and_rgba_come_back_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(1, 255, (6, 4), dtype=np.uint8)  # translucent, not opaque

    g = read_rgb(write_image(tmp_path / "grey.png", grey))
    assert Image.open(tmp_path / "grey.png").mode == "L"
    assert g.shape == (5, 7, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g, np.repeat(grey[..., None], 3, axis=2))

    c = read_rgb(write_image(tmp_path / "rgba.png", rgba))
    assert Image.open(tmp_path / "rgba.png").mode == "RGBA"
    assert c.shape == (6, 4, 3) and c.dtype == np.uint8
    np.testing.assert_array_equal(c, rgba[..., :3])


def test_load_split_gives_uint8_images_and_int64_labels(tmp_path):
    root = good_tree(tmp_path / "tree")
    split = open_image_folder(root).split("train")
    prep = Preprocessing(input_size=16, resize=16, mean=(0.5,) * 3, std=(0.5,) * 3)

    images, labels = load_split(split, prep.prepare, workers=2, show_progress=False)

    assert images.dtype == torch.uint8 and images.shape == (len(split), 3, 16, 16)
    assert labels.dtype == torch.int64
    assert labels.tolist() == list(split.labels)
    for image, label in zip(images, labels.tolist()):  # each image is its own class's colour
        expected = torch.tensor(COLOURS[split.classes[label]], dtype=torch.uint8).view(3, 1, 1)
        assert torch.equal(image, expected.expand(3, 16, 16))


# --- named datasets ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits-root")
    return root, open_dataset(DataConfig(name="digits", root=str(root)))


def test_digits_is_laid_out_as_a_stratified_80_20_tree(digits):
    from sklearn.datasets import load_digits

    root, ds = digits
    target = load_digits().target
    assert ds.root == root / "digits"
    assert ds.classes == tuple(str(c) for c in range(10))
    assert ds.names == ds.classes
    train, val = ds.split("train"), ds.split("val")
    assert (len(train), len(val)) == (1437, 360)

    for split in (train, val):
        assert set(split.labels) == set(range(10))  # every class in both splits
        for path, label in zip(split.files, split.labels):
            assert target[int(path.stem)] == label  # file <index>.png in its digit's folder
    for c in range(10):
        in_val = sum(1 for label in val.labels if label == c)
        assert abs(in_val - 0.2 * np.sum(target == c)) <= 1
    train_ids = {int(p.stem) for p in train.files}
    val_ids = {int(p.stem) for p in val.files}
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(1797))


def test_digits_pixels_are_the_scaled_scikit_learn_images(digits):
    from sklearn.datasets import load_digits

    _, ds = digits
    images = load_digits().images
    for path in ds.split("val").files[:20]:
        rgb = read_rgb(path)
        assert rgb.shape == (8, 8, 3)
        expected = np.round(images[int(path.stem)] * (255.0 / 16.0)).astype(np.uint8)
        np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=2))


def test_digits_is_reused_and_leaves_no_temporary_folders(digits):
    root, ds = digits
    first = ds.split("train").files[0]
    stamp = first.stat().st_mtime_ns
    again = open_dataset(DataConfig(name="digits", root=str(root)))
    assert again == ds
    assert again.split("train") == ds.split("train")
    assert again.split("val") == ds.split("val")
    assert first.stat().st_mtime_ns == stamp  # not rewritten
    assert sorted(p.name for p in root.iterdir()) == ["digits"]  # no '.digits.*' leftovers


def test_digits_decode_into_training_tensors(digits):
    _, ds = digits
    val = ds.split("val")
    prep = Preprocessing(input_size=32, resize=32, mean=(0.3,) * 3, std=(0.37,) * 3)
    images, labels = load_split(val, prep.prepare, workers=2, show_progress=False)
    assert images.shape == (360, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == list(val.labels)
    assert images.float().std() > 10  # real strokes, not a blank canvas


# CIFAR-10's real ``batches.meta`` (158 bytes, a Python 2 protocol-2 pickle). torchvision
# checks this file's MD5 when it loads the metadata, so it is written byte for byte.
CIFAR10_META = (
    b"\x80\x02}q\x01(U\x13num_cases_per_batchq\x02M\x10'U\x0blabel_namesq\x03]q\x04("
    b"U\x08airplaneq\x05U\nautomobileq\x06U\x04birdq\x07U\x03catq\x08U\x04deerq\t"
    b"U\x03dogq\nU\x04frogq\x0bU\x05horseq\x0cU\x04shipq\rU\x05truckq\x0eeU\x07num_visq\x0f"
    b"M\x00\x0cu."
)
CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"]


def write_cifar10(root: Path, per_class: int = 2, seed: int = 0) -> dict[str, tuple]:
    """A small CIFAR-10 in torchvision's python format; returns each split's (data, labels)."""
    from torchvision.datasets import CIFAR10

    assert hashlib.md5(CIFAR10_META).hexdigest() == CIFAR10.meta["md5"]
    folder = root / "cifar10-source" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    (folder / CIFAR10.meta["filename"]).write_bytes(CIFAR10_META)
    rng = np.random.default_rng(seed)
    batches = {}
    for index, name in enumerate(CIFAR_BATCHES):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).tolist()
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        # str keys: the original Python 2 pickles load with encoding="latin1" as str keys
        entry = {"batch_label": f"batch {index}", "labels": labels, "data": data,
                 "filenames": [f"img_{index}_{i}.png" for i in range(len(labels))]}
        with (folder / name).open("wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        batches[name] = (data, labels)
    train = [batches[name] for name in CIFAR_BATCHES[:5]]
    return {"train": (np.concatenate([d for d, _ in train]), sum((l for _, l in train), [])),
            "val": batches["test_batch"]}


def trust_fake_cifar10(monkeypatch: pytest.MonkeyPatch, root: Path) -> dict[str, str]:
    """Point the loader's table of known MD5s (``sources.CIFAR10_MD5S``) at this fake's files.

    The loader unpickles only files whose MD5 is CIFAR-10's. The real batches (170 MB) cannot
    be downloaded in tests and a fake batch cannot have their MD5s, so these tests swap the
    table for their own files' MD5s, taken when called (after any edit to a batch). The real
    table is held to torchvision's checksums, and shown in force, by the tests below.
    """
    folder = root / "cifar10-source" / "cifar-10-batches-py"
    md5s = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}
    monkeypatch.setattr(sources, "CIFAR10_MD5S", md5s)
    return md5s


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar-root")
    source = write_cifar10(root)
    with pytest.MonkeyPatch.context() as monkeypatch:  # only while laying out: the other
        trust_fake_cifar10(monkeypatch, root)  # tests of this module see the real table
        ds = open_dataset(DataConfig(name="cifar10", root=str(root)))
    return root, source, ds


def test_cifar10_is_laid_out_as_pngs(cifar10):
    root, source, ds = cifar10
    assert ds.root == root / "cifar10"
    assert ds.classes == tuple(sorted(CIFAR10_CLASSES))
    assert set(ds.names) == set(CIFAR10_CLASSES)
    assert sorted(p.name for p in (root / "cifar10" / "train").iterdir()) == sorted(CIFAR10_CLASSES)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]

    for split, count in (("train", 5 * 20), ("val", 20)):
        files = ds.split(split)
        data, labels = source[split]
        assert len(files) == len(labels) == count
        per_class = {c: sum(1 for label in files.labels if label == ds.classes.index(c))
                     for c in CIFAR10_CLASSES}
        assert set(per_class.values()) == {count // 10}
        for path, label in zip(files.files, files.labels):
            i = int(path.stem)
            assert ds.classes[label] == CIFAR10_CLASSES[labels[i]]
            assert path.parent.name == CIFAR10_CLASSES[labels[i]]
            np.testing.assert_array_equal(read_rgb(path), data[i].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar10_is_reused(cifar10):
    root, _, ds = cifar10
    assert open_dataset(DataConfig(name="cifar10", root=str(root))).split("val") == ds.split("val")


def test_cifar10_missing_without_download_names_the_setting(tmp_path):
    with pytest.raises(DataError) as info:
        open_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    assert "data.download" in str(info.value)
    assert str(tmp_path / "cifar10-source") in str(info.value)
    assert not (tmp_path / "cifar10").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cifar10_unreadable_batch_is_a_data_error(tmp_path, monkeypatch):
    write_cifar10(tmp_path, per_class=1)
    (tmp_path / "cifar10-source" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02 cut")
    trust_fake_cifar10(monkeypatch, tmp_path)  # past the MD5 check: the unpickling fails
    with pytest.raises(DataError) as info:
        open_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert str(tmp_path / "cifar10-source") in str(info.value)
    assert not (tmp_path / "cifar10").exists()


def test_cifar10_md5_table_is_torchvisions_checksums():
    from torchvision.datasets import CIFAR10

    expected = dict(CIFAR10.train_list + CIFAR10.test_list)
    expected[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    assert sources.CIFAR10_MD5S == expected and sources.CIFAR10_FOLDER == CIFAR10.base_folder


def test_cifar10_batches_that_are_not_cifar10s_are_refused(tmp_path):
    """With the real table in force, batch files that are not CIFAR-10's are not unpickled."""
    write_cifar10(tmp_path, per_class=1)
    first = tmp_path / "cifar10-source" / "cifar-10-batches-py" / "data_batch_1"
    with pytest.raises(DataError) as info:
        open_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert str(info.value) == f"{first}: MD5 differs from CIFAR-10's; not unpickling it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10-source"]


class _TouchOnUnpickle:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, creating the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_cifar10_crafted_batch_runs_no_code(tmp_path, monkeypatch):
    """A ``data_batch_1`` crafted to run code on unpickling is refused by its MD5, unread.

    The table of known MD5s is monkeypatched to the fake batches' own MD5s (the real CIFAR-10
    files cannot be downloaded in tests), so the only file that differs is the crafted one.
    """
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(proof), protocol=2)).close()
    assert proof.exists()  # the payload is live: unpickling it runs code

    write_cifar10(tmp_path, per_class=1)
    trust_fake_cifar10(monkeypatch, tmp_path)  # every file is trusted as written...
    marker = tmp_path / "code-ran"
    batch = tmp_path / "cifar10-source" / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps(_TouchOnUnpickle(marker), protocol=2))  # ...then swapped
    with pytest.raises(DataError) as info:
        open_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert not marker.exists()
    assert str(info.value) == f"{batch}: MD5 differs from CIFAR-10's; not unpickling it"
    assert not (tmp_path / "cifar10").exists()


def write_cifar10_with_label_10(root: Path) -> Path:
    """A CIFAR-10 source whose second batch has one label outside 0..9 (a foreign batch)."""
    write_cifar10(root, per_class=1)
    batch = root / "cifar10-source" / "cifar-10-batches-py" / "data_batch_2"
    with batch.open("rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    entry["labels"][0] = 10
    with batch.open("wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    return root


def test_cifar10_failed_layout_leaves_no_partial_tree(tmp_path, monkeypatch):
    write_cifar10_with_label_10(tmp_path)
    trust_fake_cifar10(monkeypatch, tmp_path)
    with pytest.raises(DataError):
        open_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10-source"]


def test_cifar10_label_out_of_range_is_a_data_error(tmp_path, monkeypatch):
    write_cifar10_with_label_10(tmp_path)
    trust_fake_cifar10(monkeypatch, tmp_path)
    with pytest.raises(DataError) as info:
        open_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert str(tmp_path / "cifar10-source") in str(info.value)


IMAGENETTE_WNIDS = {"n01440764": "tench", "n02102040": "English springer"}


def test_imagenette_tree_gets_readable_names(tmp_path):
    base = tmp_path / "imagenette" / "imagenette2"
    rng = np.random.default_rng(1)
    for split, count in (("train", 2), ("val", 1)):
        for wnid in IMAGENETTE_WNIDS:
            for i in range(count):
                image = rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)
                write_image(base / split / wnid / f"{wnid}_{i}.JPEG", image)

    ds = open_dataset(DataConfig(name="imagenette", root=str(tmp_path)))

    assert ds.root == base
    assert ds.classes == ("n01440764", "n02102040")
    assert ds.names == ("tench", "English springer")
    lines = (base / "classes.tsv").read_text(encoding="utf-8").splitlines()
    assert lines == ["n01440764\ttench", "n02102040\tEnglish springer"]
    train = ds.split("train")
    assert len(train) == 4 and train.labels == (0, 0, 1, 1)
    assert read_rgb(train.files[0]).shape == (30, 36, 3)
    assert open_dataset(DataConfig(name="imagenette", root=str(tmp_path))) == ds


def test_imagenette_missing_without_download_names_the_setting(tmp_path):
    with pytest.raises(DataError) as info:
        open_dataset(DataConfig(name="imagenette", root=str(tmp_path)))
    assert "data.download" in str(info.value)


def test_unknown_dataset_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        open_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    msg = str(info.value)
    assert "mnist" in msg
    for name in ("digits", "cifar10", "imagenette"):
        assert name in msg


def test_data_path_wins_over_name(tmp_path):
    tree = good_tree(tmp_path / "tree")
    datasets = tmp_path / "datasets"
    for name in ("cifar10", "no-such-dataset"):
        ds = open_dataset(DataConfig(name=name, path=str(tree), root=str(datasets)))
        assert ds.root == tree and ds.classes == ("cat", "dog", "owl")
    assert not datasets.exists()  # the named dataset was never prepared
