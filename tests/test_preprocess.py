"""The NumPy/OpenCV preprocessing against the torchvision path the training side used.

The device runs :mod:`pipeline.preprocess` without torch, so these tests hold it to the
reference: PIL decode → ``pil_to_tensor`` → ``resize(antialias=True)`` → ``center_crop``
→ ``/ 255`` → ``normalize`` (torchvision.transforms.v2), on real photos and on synthetic
images. The bounds asserted are the ones measured (torch 2.14.1 / torchvision 0.29.1 on an
AVX-512 x86 CPU, OpenCV 5.0, Pillow with libjpeg-turbo):

* uint8 crops: bit-identical (max |difference| 0 grey levels, on 0 % of values), every
  interpolation, real and synthetic images;
* normalised float32: max |difference| 7.2e-7 (a few float32 ulps: ``x * (1/255)`` against
  torchvision's ``x / 255``), asserted as <= 1e-6;
* JPEG decoding: OpenCV and PIL bit-identical on all 12,394 Imagenette files (228 of them
  greyscale), so the decoded arrays are asserted equal.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pipeline.config import load_config
from pipeline.errors import ConfigError, DataError
from pipeline.preprocess import Preprocessing, load_images, read_rgb

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette"
MODES = ("bilinear", "bicubic", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISED_BOUND = 1e-6  # measured 7.2e-7
PER_CLASS = 5  # 10 classes x 5, plus 10 more greyscale photos: 60 real photos


# --- the reference: what the training side computes -----------------------------------------


def reference_crop(chw: torch.Tensor, resize: int, crop: int, mode: str) -> np.ndarray:
    """torchvision's uint8 (3, H, W) → (3, crop, crop), exactly as training called it."""
    out = TF.resize(chw, [resize], interpolation=InterpolationMode[mode.upper()], antialias=True)
    return TF.center_crop(out, [crop, crop]).numpy()


def reference_from_array(image: np.ndarray, resize: int, crop: int, mode: str) -> np.ndarray:
    return reference_crop(torch.from_numpy(image).permute(2, 0, 1), resize, crop, mode)


def reference_photo(path: Path, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (3, S, S), float32 (3, S, S)) through PIL and torchvision."""
    with Image.open(path) as img:
        chw = TF.pil_to_tensor(img.convert("RGB"))
    crop = reference_crop(chw, pre.resize, pre.input_size, pre.interpolation)
    normalised = TF.normalize(torch.from_numpy(crop).float() / 255, list(pre.mean), list(pre.std))
    return crop, normalised.numpy()


def pil_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def differences(ours: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(max |difference| in grey levels, fraction of values that differ)."""
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    return int(diff.max()), float(np.count_nonzero(diff)) / diff.size


def definition(config: str) -> Preprocessing:
    """The preprocessing a recipe in configs/ trains and deploys with."""
    return Preprocessing.from_config(load_config(ROOT / "configs" / f"{config}.toml").preprocess)


# --- 1. real photos ------------------------------------------------------------------------


def _sample_photos() -> list[Path]:
    """Val photos spread over every class, plus greyscale JPEGs (decoded to 3 channels)."""
    val = IMAGENETTE / "val"
    classes = sorted(p for p in val.iterdir() if p.is_dir())
    picked: list[Path] = []
    for folder in classes:
        files = sorted(folder.glob("*.JPEG"))
        picked += files[::max(1, len(files) // PER_CLASS)][:PER_CLASS]
    grey = [f for folder in classes for f in sorted(folder.glob("*.JPEG"))
            if _mode_of(f) == "L" and f not in picked]
    return picked + grey[::max(1, len(grey) // 10)][:10]


def _mode_of(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    if not (IMAGENETTE / "val").is_dir():
        pytest.skip(f"real photos absent: {IMAGENETTE}/val not found (the shared Imagenette copy)")
    files = _sample_photos()
    assert sum(_mode_of(f) == "L" for f in files) >= 10, "the sample must include greyscale JPEGs"
    return files


def test_photos_config_is_what_the_real_photo_test_assumes() -> None:
    pre = definition("photos")
    assert (pre.input_size, pre.resize, pre.interpolation) == (128, 146, "bilinear")
    assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD


def test_opencv_decodes_photos_exactly_as_pil(photos: list[Path]) -> None:
    """Measured: bit-identical on every Imagenette JPEG, colour and greyscale."""
    for path in photos:
        ours = read_rgb(path)
        assert ours.dtype == np.uint8 and ours.flags.writeable and ours.flags.c_contiguous
        np.testing.assert_array_equal(ours, pil_rgb(path), err_msg=str(path))


PHOTO_DEFINITIONS = [
    ("photos.toml", None),                # 224 → 146 → 128: downsampling (the deployed one)
    ("224/256", (224, 256)),              # ImageNet style; 224 px photos are upsampled
    ("upsample 2x", (160, 448)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,sizes", PHOTO_DEFINITIONS, ids=[d[0] for d in PHOTO_DEFINITIONS])
def test_photos_match_torchvision(photos: list[Path], name: str, sizes: tuple[int, int] | None,
                                  mode: str) -> None:
    """Measured: uint8 identical (0 grey levels, 0 %); normalised within 7.2e-7."""
    base = definition("photos")
    size, resize = sizes or (base.input_size, base.resize)
    pre = Preprocessing(size, resize, base.mean, base.std, mode)
    for path in photos:
        crop = pre.prepare(read_rgb(path))
        ref_crop, ref_normalised = reference_photo(path, pre)
        assert differences(crop, ref_crop) == (0, 0.0), path
        normalised = pre.normalize(crop[None])[0]
        assert np.abs(normalised - ref_normalised).max() <= NORMALISED_BOUND, path


# --- 2. synthetic images (always run) ------------------------------------------------------


def noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """Flat patches with hard edges: many sums land exactly on rounding ties."""
    coarse = noise(max(1, height // 4), max(1, width // 4), seed)
    return np.ascontiguousarray(np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:height, :width])


SYNTHETIC = [  # (height, width, resize, crop)
    (37, 53, 30, 24),       # odd sizes, downsampling
    (53, 37, 30, 30),       # portrait
    (480, 640, 146, 128),   # a VGA camera frame to the photos definition
    (1080, 1920, 146, 128), # a 1080p frame: float64 sums (float32 would not be exact)
    (37, 53, 90, 77),       # upsampling
    (8, 8, 36, 32),         # 8x8 digits upsampled, then cropped
    (8, 8, 32, 32),         # configs/digits.toml: 8x8 → 32, no crop margin
    (224, 224, 224, 200),   # same size: crop only
    (1, 1, 5, 5),
    (3, 200, 2, 2),         # extreme aspect ratio
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("height,width,resize,crop", SYNTHETIC)
def test_synthetic_images_match_torchvision(height: int, width: int, resize: int, crop: int,
                                            mode: str) -> None:
    """Measured: identical on every case, noise and flat patches alike."""
    pre = Preprocessing(crop, resize, IMAGENET_MEAN, IMAGENET_STD, mode)
    for seed, make in enumerate((noise, blobs)):
        image = make(height, width, seed)
        ours = pre.resize_crop(image, resize, crop)
        assert ours.flags.c_contiguous
        assert differences(ours, reference_from_array(image, resize, crop, mode)) == (0, 0.0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("height,width,resize,crop", [
    (20, 30, 16, 24),   # rows padded (16 < 24), columns cropped (24 of 24)
    (20, 60, 16, 24),   # rows padded, columns cropped from 48
    (20, 30, 16, 41),   # both padded, odd margins
    (9, 9, 9, 12),      # no resize, padding only
])
def test_crop_larger_than_the_image_is_zero_padded_like_torchvision(
        height: int, width: int, resize: int, crop: int, mode: str) -> None:
    pre = Preprocessing(crop, resize, IMAGENET_MEAN, IMAGENET_STD, mode)
    image = noise(height, width, 7) | 1  # no zero pixels: padding is told apart
    ours = pre.resize_crop(image, resize, crop)
    np.testing.assert_array_equal(ours, reference_from_array(image, resize, crop, mode))
    assert (ours == 0).any()


def test_digits_definition_matches_torchvision() -> None:
    pre = definition("digits")
    image = noise(8, 8, 3)
    np.testing.assert_array_equal(pre.prepare(image),
                                  reference_from_array(image, pre.resize, pre.input_size, pre.interpolation))


def test_unknown_interpolation_and_bad_images_are_refused() -> None:
    with pytest.raises(ConfigError, match="interpolation"):
        Preprocessing(32, 36, IMAGENET_MEAN, IMAGENET_STD, "lanczos").prepare(noise(40, 40, 0))
    pre = Preprocessing(32, 36, IMAGENET_MEAN, IMAGENET_STD)
    for bad in (noise(40, 40, 0)[..., 0], noise(40, 40, 0).astype(np.float32), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(DataError, match=r"uint8 \(H, W, 3\)"):
            pre.prepare(bad)
    with pytest.raises(ConfigError, match="resize/crop"):
        pre.resize_crop(noise(40, 40, 0), 0, 32)


# --- 3. prepare's colour order, normalize, the definition itself -----------------------------


def test_bgr_frames_give_the_rgb_result() -> None:
    pre = definition("photos")
    frame = noise(480, 640, 11)
    np.testing.assert_array_equal(pre.prepare(frame, order="BGR"), pre.prepare(frame[..., ::-1]))
    assert pre.prepare(frame, order="BGR").flags.c_contiguous
    with pytest.raises(ConfigError, match="order"):
        pre.prepare(frame, order="bgr")


def test_normalize_is_float32_nchw_and_matches_the_torch_formula() -> None:
    pre = definition("photos")
    batch = np.stack([pre.prepare(noise(100, 120, seed)) for seed in range(3)])  # (3, 3, 128, 128)
    out = pre.normalize(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    np.testing.assert_array_equal(out, ((torch.from_numpy(batch).float() * pre.scale - mean) / std).numpy())


def test_definition_is_hashable_and_round_trips() -> None:
    pre = definition("photos")
    assert {pre: 1}[Preprocessing.from_dict(pre.to_dict())] == 1
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert set(pre.to_dict()) == {"input_size", "resize", "mean", "std", "interpolation", "colour",
                                  "layout", "scale"}


def test_module_never_needs_torch_torchvision_or_pil(tmp_path: Path) -> None:
    """The device has none of them: import and run the module with them made unimportable."""
    tree = ast.parse((ROOT / "pipeline" / "preprocess.py").read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name.split(".")[0] for name in names} & {"torch", "torchvision", "PIL"}
    script = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'PIL'):\n"
        "    sys.modules[name] = None\n"
        "import cv2, numpy as np\n"
        "from pipeline.preprocess import Preprocessing, load_images\n"
        f"path = {str(tmp_path / 'frame.png')!r}\n"
        "cv2.imwrite(path, np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))\n"
        "pre = Preprocessing(32, 36, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))\n"
        "out = pre.normalize(load_images([path], pre.prepare, show_progress=False))\n"
        "assert out.shape == (1, 3, 32, 32), out.shape\n"
        "assert not {'torch', 'torchvision', 'PIL'} & {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- 4. read_rgb ---------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray, mode: str) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_greyscale_png_gives_three_equal_channels(tmp_path: Path) -> None:
    grey = noise(21, 34, 1)[..., 0]
    image = read_rgb(write_png(tmp_path / "grey.png", grey, "L"))
    assert image.shape == (21, 34, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_rgba_png_drops_alpha_as_pil_does(tmp_path: Path) -> None:
    rgba = np.concatenate([noise(21, 34, 2), np.linspace(0, 255, 21 * 34).reshape(21, 34, 1).astype(np.uint8)], 2)
    path = write_png(tmp_path / "rgba.png", rgba, "RGBA")
    np.testing.assert_array_equal(read_rgb(path), rgba[..., :3])
    np.testing.assert_array_equal(read_rgb(path), pil_rgb(path))


def test_exif_orientation_is_ignored_as_pil_ignores_it(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(blobs(24, 40, 3)).save(path, quality=95, exif=exif.tobytes())
    image = read_rgb(path)
    assert image.shape == (24, 40, 3)
    np.testing.assert_array_equal(image, pil_rgb(path))


def test_non_ascii_path_decodes(tmp_path: Path) -> None:
    folder = tmp_path / "fotos-été-猫"
    folder.mkdir()
    rgb = noise(12, 17, 4)
    np.testing.assert_array_equal(read_rgb(write_png(folder / "bild-ü.png", rgb, "RGB")), rgb)


def jpeg_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "whole.jpg"
    Image.fromarray(blobs(64, 80, 5)).save(path, quality=90)
    return path.read_bytes()


def png_bytes(tmp_path: Path) -> bytes:
    return write_png(tmp_path / "whole.png", noise(40, 50, 6), "RGB").read_bytes()


BROKEN = {
    "garbage.jpg": lambda tmp: b"this is not an image at all" * 10,
    "empty.png": lambda tmp: b"",
    "half.png": lambda tmp: png_bytes(tmp)[: len(png_bytes(tmp)) // 2],
    "no-iend.png": lambda tmp: png_bytes(tmp)[:-12],
    "half.jpg": lambda tmp: jpeg_bytes(tmp)[: len(jpeg_bytes(tmp)) // 2],
    "no-eoi.jpg": lambda tmp: jpeg_bytes(tmp)[:-2],
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_data_error_naming_the_file(tmp_path: Path, name: str,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    path.write_bytes(BROKEN[name](tmp_path))
    with pytest.raises(DataError, match=re.escape(f"{path}: unreadable or corrupt image")):
        read_rgb(path)
    assert "libpng" not in capfd.readouterr().err  # refused before OpenCV prints its own error


def test_truncated_jpeg_is_refused_where_pil_refuses_it(tmp_path: Path) -> None:
    """OpenCV 4.x decodes it silently with grey rows; PIL raises: we must side with PIL."""
    path = tmp_path / "half.jpg"
    path.write_bytes(BROKEN["half.jpg"](tmp_path))
    with pytest.raises(OSError, match="truncated"):
        pil_rgb(path)


def test_missing_file_and_trailing_padding(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "absent.png"))):
        read_rgb(tmp_path / "absent.png")
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(jpeg_bytes(tmp_path) + b"\0" * 64)  # bytes after the end marker are allowed
    np.testing.assert_array_equal(read_rgb(padded), pil_rgb(tmp_path / "whole.jpg"))


# --- 5. load_images ------------------------------------------------------------------------


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_png(folder / f"{i:02d}.png", blobs(30 + 3 * i, 41 - i, i), "RGB") for i in range(count)]


def test_load_images_stacks_in_file_order(tmp_path: Path) -> None:
    pre = Preprocessing(16, 20, IMAGENET_MEAN, IMAGENET_STD)
    files = write_images(tmp_path / "imgs", 9)[::-1]
    batch = load_images(files, pre.prepare, workers=3, show_progress=False)
    assert batch.dtype == np.uint8 and batch.shape == (9, 3, 16, 16)
    for image, path in zip(batch, files):
        np.testing.assert_array_equal(image, pre.prepare(read_rgb(path)))


def test_load_images_of_real_photos_matches_torchvision(photos: list[Path]) -> None:
    pre = definition("photos")
    batch = load_images(photos[:12], pre.prepare, workers=2, desc="photos", show_progress=False)
    for image, path in zip(batch, photos[:12]):
        np.testing.assert_array_equal(image, reference_photo(path, pre)[0])


def test_load_images_names_a_corrupt_file(tmp_path: Path) -> None:
    files = write_images(tmp_path / "imgs", 4)
    corrupt = tmp_path / "imgs" / "corrupt.png"
    corrupt.write_bytes(png_bytes(tmp_path)[:100])
    pre = Preprocessing(16, 20, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(DataError, match=re.escape(str(corrupt))):
        load_images(files[:2] + [corrupt] + files[2:], pre.prepare, workers=2, show_progress=False)
