"""``python -m pipeline make-clip``: a labelled replay clip from an ImageFolder split.

Each image is held for a few frames while the view drifts and zooms slowly, to imitate a
handheld camera; the per-frame labels go to ``<clip>.labels.json`` beside the video, so
accuracy can be measured through the live path and compared with offline evaluation.

Lossless and motion-free, a clip measures the live path alone: with ``motion`` 0 and the
frame size equal to the images' size, every frame is the very pixels evaluation decodes.
Which containers are lossless depends on the OpenCV build. Without FFmpeg (which a Jetson's
OpenCV may lack) only two video back-ends remain, OpenCV's own: the AVI writer and reader
take MJPG and nothing else (``createMotionJpegWriter`` refuses any other fourcc;
``AVIReadContainer::parseStrl`` accepts only an ``MJPG`` stream), and JPEG is lossy; and
the image-sequence back-end (``CAP_IMAGES``) writes and reads numbered PNG files. So the
lossless clip every OpenCV can replay is a PNG sequence, ``folder/%06d.png`` with its
labels in ``folder/labels.json``; ``.mkv`` (FFV1) is lossless too but needs FFmpeg.
Measured here with FFmpeg and GStreamer switched off (``OPENCV_VIDEOIO_PRIORITY_FFMPEG=0``):
FFV1, PNG, HFYU and DIB fourccs are refused, MJPG reads back up to 162 grey levels off on
noise, the PNG sequence reads back exactly.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from pipeline.artifacts import atomic_path, umask, write_json
from pipeline.config import Config
from pipeline.errors import DataError
from pipeline.imagefolder import ImageSplit, for_model, open_split
from pipeline.onnx_meta import read_metadata
from pipeline.preprocess import read_rgb

# Video containers and their codecs: .avi (MJPEG, lossy) is the one every OpenCV writes
# and reads; .mkv is lossless (FFV1: frames decode to exactly the pixels written) where
# OpenCV has FFmpeg.
CODECS = {".avi": "MJPG", ".mkv": "FFV1", ".mp4": "mp4v"}
# A PNG sequence: lossless on every OpenCV (the built-in image-sequence back-end).
SEQUENCE = ".png"
FPS = 15.0


def labels_path(clip: Path) -> Path:
    """``clip.labels.json`` beside a video; ``labels.json`` in a PNG sequence's folder."""
    clip = Path(clip)
    return clip.parent / "labels.json" if is_sequence(clip) else clip.with_suffix(".labels.json")


def is_sequence(clip: Path) -> bool:
    """Whether ``clip`` names a PNG sequence (``folder/%06d.png``) rather than a video."""
    return Path(clip).suffix.lower() == SEQUENCE


def run(cfg: Config) -> Path:
    if not cfg.data.path or not cfg.camera.out:
        raise DataError("make-clip: give --data DIR (an ImageFolder tree or split) and --out clip.avi "
                        "(or clip.mkv, clip.mp4, or folder/%06d.png for lossless frames on any OpenCV)")
    split = open_split(Path(cfg.data.path))
    model = cfg.run_dir / "model.fp32.onnx"
    if model.is_file():  # labelled with the run's model's class ids, matched by name
        meta = read_metadata(model)
        split = for_model(split, meta["classes"], meta["class_names"])
    return make_clip(split, Path(cfg.camera.out), cfg.camera.clip_images, cfg.camera.frames_per_image,
                     cfg.camera.clip_size, cfg.run.seed, cfg.camera.clip_motion)


def make_clip(split: ImageSplit, out: Path, images: int, frames_per_image: int, size: tuple[int, int],
              seed: int, motion: float = 0.1) -> Path:
    """Write ``out`` (a video: .avi MJPEG, .mkv FFV1, .mp4; or a PNG sequence
    ``folder/%06d.png``) and its labels file; returns the clip path.

    ``images`` 0 takes the whole split in order. Every frame is ``size`` (width, height);
    with ``motion`` 0 and images of that size, the frames are the images' own pixels."""
    out = Path(out)
    rng = random.Random(seed)
    picks = rng.sample(range(len(split)), min(images, len(split))) if images else list(range(len(split)))
    frames = _frames(split, picks, frames_per_image, size, rng, motion)
    classes = list(split.classes)
    write = _write_sequence if is_sequence(out) else _write_video
    labels = write(out, frames, size, classes)
    print(f"clip {out}: {len(labels)} frames of {len(picks)} images, labels in {labels_path(out)}")
    return out


def _frames(split: ImageSplit, picks: list[int], count: int, size: tuple[int, int], rng: random.Random,
            motion: float) -> Iterator[tuple[np.ndarray, str]]:
    """(BGR frame, class folder name) for each frame, the images decoded as evaluation
    decodes them (``read_rgb``: EXIF orientation ignored, a truncated file refused)."""
    for index in picks:
        image = cv2.cvtColor(read_rgb(split.files[index]), cv2.COLOR_RGB2BGR)
        for frame in handheld_frames(image, count, size, rng, motion):
            yield frame, split.classes[split.labels[index]]


def _write_video(out: Path, frames: Iterable[tuple[np.ndarray, str]], size: tuple[int, int],
                 classes: list[str]) -> list[str]:
    labels: list[str] = []
    fourcc = cv2.VideoWriter_fourcc(*CODECS.get(out.suffix, "mp4v"))
    with atomic_path(out) as tmp:
        writer = cv2.VideoWriter(str(tmp), fourcc, FPS, size)
        if not writer.isOpened():
            hint = " (FFV1 needs OpenCV with FFmpeg; a PNG sequence, folder/%06d.png, needs none)"
            raise DataError(f"{out}: OpenCV cannot write this video format here{hint if out.suffix == '.mkv' else ''}")
        for frame, label in frames:
            writer.write(frame)
            labels.append(label)
        writer.release()
    write_json(labels_path(out), {"classes": classes, "labels": labels})
    return labels


def _write_sequence(out: Path, frames: Iterable[tuple[np.ndarray, str]], size: tuple[int, int],
                    classes: list[str]) -> list[str]:
    """The frames as numbered PNG files through OpenCV's image-sequence writer, with
    ``labels.json``, in a folder of their own, written beside it and swapped into place
    whole (an earlier clip there is replaced, never mixed with this one)."""
    if "%" not in out.name:
        raise DataError(f"{out}: a PNG sequence is named by a frame-number pattern, e.g. {out.parent / '%06d.png'}")
    folder = out.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        writer = cv2.VideoWriter(str(scratch / out.name), cv2.CAP_IMAGES, 0, FPS, size)
        if not writer.isOpened():
            raise DataError(f"{out}: OpenCV's image-sequence writer cannot write this pattern")
        labels: list[str] = []
        for frame, label in frames:
            writer.write(frame)
            labels.append(label)
        writer.release()
        written = len(list(scratch.glob(f"*{SEQUENCE}")))
        if written != len(labels):  # imwrite failures are silent in the sequence writer
            raise DataError(f"{out}: {written} of {len(labels)} frames were written (disk full?)")
        write_json(scratch / "labels.json", {"classes": classes, "labels": labels})
        _replace_folder(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return labels


def _replace_folder(new: Path, folder: Path) -> None:
    os.chmod(new, 0o777 & ~umask())  # mkdtemp makes it 0700
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)


def handheld_frames(image: np.ndarray, count: int, size: tuple[int, int], rng: random.Random,
                    motion: float = 0.1) -> list[np.ndarray]:
    """``count`` frames of one image drifting and zooming by at most ``motion`` of the view
    (0: a still camera; an image already ``size`` is then copied untouched)."""
    h, w = image.shape[:2]
    half = motion / 2
    start, end = [(rng.uniform(1 - motion, 1.0), rng.uniform(-half, half), rng.uniform(-half, half))
                  for _ in range(2)]
    frames = []
    for i in range(count):
        t = i / max(1, count - 1)
        zoom, dx, dy = (a + (b - a) * t for a, b in zip(start, end))
        cw, ch = w * zoom, h * zoom
        x0 = min(max(0.0, (w - cw) / 2 + dx * w), w - cw)
        y0 = min(max(0.0, (h - ch) / 2 + dy * h), h - ch)
        crop = image[int(y0):int(y0 + ch), int(x0):int(x0 + cw)]
        same = crop.shape[1] == size[0] and crop.shape[0] == size[1]
        frames.append(crop.copy() if same else cv2.resize(crop, size, interpolation=cv2.INTER_AREA))
    return frames


def read_labels(clip: Path) -> tuple[list[str], list[str]]:
    """The classes and per-frame labels of a replay clip."""
    path = labels_path(clip)
    try:
        data = json.loads(path.read_text())
        return list(data["classes"]), list(data["labels"])
    except FileNotFoundError:
        raise DataError(f"{path}: the replay clip's label file is missing") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a label file ({exc})") from None
