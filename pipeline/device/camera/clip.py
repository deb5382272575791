"""``python -m pipeline make-clip``: a labelled replay clip from an ImageFolder split.

Each image is held for a few frames while the view drifts and zooms slowly, to imitate a
handheld camera; the per-frame labels go to ``<clip>.labels.json`` beside the video, so
accuracy can be measured through the live path and compared with offline evaluation.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np

from pipeline.artifacts import atomic_path, write_json
from pipeline.config import Config
from pipeline.imagefolder import ImageSplit, open_split
from pipeline.errors import DataError


# .mkv is lossless (FFV1): frames decode to exactly the pixels written
CODECS = {".avi": "MJPG", ".mkv": "FFV1", ".mp4": "mp4v"}


def labels_path(clip: Path) -> Path:
    return Path(clip).with_suffix(".labels.json")


def run(cfg: Config) -> Path:
    if not cfg.data.path or not cfg.camera.out:
        raise DataError("make-clip: give --data DIR (an ImageFolder tree or split) and --out clip.mp4")
    split = open_split(Path(cfg.data.path))
    return make_clip(split, Path(cfg.camera.out), cfg.camera.clip_images, cfg.camera.frames_per_image,
                     cfg.camera.clip_size, cfg.run.seed, cfg.camera.clip_motion)


def make_clip(split: ImageSplit, out: Path, images: int, frames_per_image: int, size: tuple[int, int],
              seed: int, motion: float = 0.1) -> Path:
    """Write ``out`` (MJPG in .avi, or mp4v) and its labels file; returns the clip path."""
    rng = random.Random(seed)
    picks = rng.sample(range(len(split)), min(images, len(split))) if images else list(range(len(split)))
    labels: list[str] = []
    fourcc = cv2.VideoWriter_fourcc(*CODECS.get(out.suffix, "mp4v"))
    with atomic_path(out) as tmp:
        writer = cv2.VideoWriter(str(tmp), fourcc, 15.0, size)
        if not writer.isOpened():
            raise DataError(f"{out}: OpenCV cannot write this video format")
        for index in picks:
            image = cv2.imread(str(split.files[index]), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"{split.files[index]}: unreadable or corrupt image")
            for frame in handheld_frames(image, frames_per_image, size, rng, motion):
                writer.write(frame)
                labels.append(split.classes[split.labels[index]])
        writer.release()
    write_json(labels_path(out), {"classes": list(split.classes), "labels": labels})
    print(f"clip {out}: {len(labels)} frames of {len(picks)} images, labels in {labels_path(out)}")
    return out


def handheld_frames(image: np.ndarray, count: int, size: tuple[int, int], rng: random.Random,
                    motion: float = 0.1) -> list[np.ndarray]:
    """``count`` frames of one image drifting and zooming by at most ``motion`` of the view
    (0: a still camera)."""
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
        frames.append(cv2.resize(crop, size, interpolation=cv2.INTER_AREA))
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
