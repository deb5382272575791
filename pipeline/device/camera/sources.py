"""Frame sources, opened from one string: ``0`` (V4L2 index), a video file, an RTSP/HTTP
URL, ``csi://N`` (Jetson CSI camera through GStreamer), an image folder, or
``replay:clip.mp4`` (a clip with per-frame labels). Each yields BGR frames (OpenCV's
order) with the frame's label where the source knows it."""
from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.device.camera.clip import read_labels
from pipeline.errors import DataError

CSI_PIPELINE = ("nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width=1280, height=720, "
                "framerate=30/1 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
                "video/x-raw, format=BGR ! appsink drop=true max-buffers=1")


@dataclass
class FrameSource:
    """An opened source: ``live`` sources drop stale frames, files are read in order."""

    spec: str
    live: bool
    frames: Iterator[tuple[np.ndarray, str | None]]
    classes: list[str] | None = None
    release: list = field(default_factory=list)

    def close(self) -> None:
        for item in self.release:
            item.release()


def open_source(spec: str) -> FrameSource:
    """Open ``spec``; a camera or file that cannot be opened is one clear error."""
    if spec.startswith("replay:"):
        return _replay(Path(spec[len("replay:"):]))
    if spec.startswith("csi://"):
        return _capture(spec, _csi_pipeline(spec), live=True, api=cv2.CAP_GSTREAMER)
    if spec.isdigit():
        return _capture(spec, int(spec), live=True)
    if "://" in spec:
        return _capture(spec, spec, live=True)
    path = Path(spec)
    if path.is_dir():
        return _folder(path)
    if not path.is_file():
        raise DataError(f"{spec}: no such camera, file or folder")
    return _capture(spec, str(path), live=False)


def video_devices() -> list[str]:
    """The V4L2 devices this machine has, for the 'cannot open camera' message."""
    return sorted(glob.glob("/dev/video*"))


def has_gstreamer() -> bool:
    return any("GStreamer" in line and "YES" in line for line in cv2.getBuildInformation().splitlines())


def _csi_pipeline(spec: str) -> str:
    if not has_gstreamer():
        raise DataError(f"{spec}: this OpenCV was built without GStreamer, which CSI cameras need; "
                        f"on a Jetson use JetPack's OpenCV (make setup-device uses the system's)")
    return CSI_PIPELINE.format(sensor=int(spec[len("csi://"):] or 0))


def _capture(spec: str, target: int | str, live: bool, api: int = cv2.CAP_ANY) -> FrameSource:
    cap = cv2.VideoCapture(target, api)
    if not cap.isOpened():
        cap.release()
        found = ", ".join(video_devices()) or "none"
        hint = f" (video devices found: {found})" if isinstance(target, int) else ""
        raise DataError(f"{spec}: cannot open this camera or stream{hint}")
    return FrameSource(spec, live, _read(cap), release=[cap])


def _read(cap: cv2.VideoCapture) -> Iterator[tuple[np.ndarray, str | None]]:
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame, None


def _replay(clip: Path) -> FrameSource:
    classes, labels = read_labels(clip)
    source = _capture(f"replay:{clip}", str(clip), live=False)
    frames = ((frame, labels[i] if i < len(labels) else None)
              for i, (frame, _) in enumerate(source.frames))
    return FrameSource(source.spec, False, frames, classes, source.release)


def _folder(folder: Path) -> FrameSource:
    """Images of an ImageFolder split (labelled by their class folder) or a flat folder."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not files:
        raise DataError(f"{folder}: no images in this folder")

    def frames() -> Iterator[tuple[np.ndarray, str | None]]:
        for path in files:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"{path}: unreadable or corrupt image")
            yield image, (path.parent.name if path.parent != folder else None)

    return FrameSource(str(folder), False, frames())
