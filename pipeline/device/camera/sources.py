"""Frame sources, opened from one string: ``0`` (V4L2 index), a video file, an RTSP/HTTP
URL, ``csi://N?width=W&height=H&fps=F&mode=M`` (Jetson CSI camera through GStreamer), an
image folder, or ``replay:clip.mp4`` (a clip with per-frame labels). Each yields BGR frames
(OpenCV's order) with the frame's label where the source knows it.

The CSI path keeps colour conversion off the CPU: ``nvvidconv`` turns the sensor's NVMM
NV12 into packed BGRx in hardware (VIC), and the one step left on the CPU is dropping the
padding byte per pixel (``bgrx_to_bgr``). The old pipeline also ran GStreamer's
``videoconvert`` for BGRx -> BGR, a second per-pixel pass on the Jetson's small ARM cores
inside the streaming thread. It is kept only for OpenCV builds whose GStreamer backend
refuses BGRx (see ``BGRX_SINCE``). Not run on a Jetson camera here: CI has none."""
from __future__ import annotations

import glob
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from pipeline.device.camera.clip import read_labels
from pipeline.device.camera.paced import parse_paced
from pipeline.errors import DataError

# What a csi:// source may ask for: (lowest, highest). sensor-mode is an index into the
# sensor driver's mode table (nvarguscamerasrc prints it at start); 16 is more than any
# Jetson camera module lists.
CSI_LIMITS = {"width": (16, 8192), "height": (16, 8192), "fps": (1, 240), "mode": (0, 15)}
CSI_DEFAULTS = {"width": 1280, "height": 720, "fps": 30}
CSI_SENSORS = (0, 255)  # nvarguscamerasrc's own range for sensor-id

# OpenCV's GStreamer backend accepts BGRx at an appsink from 4.5.4 on (JetPack 5; JetPack 6
# ships 4.8): a manual pipeline whose caps do not meet {BGR, GRAY8} is offered the fallback
# list {UYVY, ..., BGRA, RGBA, BGRx, RGBx, GRAY16_LE, GRAY16_BE} and the frame comes back as
# CV_8UC4. Older 4.x builds offer only YUV formats there, so a BGRx appsink cannot start
# ("unable to start pipeline", opencv/opencv#11059; JetPack 4 ships 4.1.1): they keep the
# videoconvert -> BGR pipeline.
# Source: opencv/opencv modules/videoio/src/cap_gstreamer.cpp, GStreamerCapture::open
# and retrieveFrame. 4.5.4 is the oldest version with BGRx found in that file, not
# necessarily the first.
BGRX_SINCE = (4, 5, 4)

FrameConvert = Callable[[np.ndarray], np.ndarray]  # typing's: collections.abc's is not subscriptable on 3.8


@dataclass
class FrameSource:
    """An opened source: ``live`` sources drop stale frames, files are read in order."""

    spec: str
    live: bool
    frames: Iterator[tuple[np.ndarray, str | None]]
    classes: list[str] | None = None
    release: list = field(default_factory=list)
    reopen: bool = True  # a live source that stops is reopened; a paced one ends for good
    size: tuple[int, int] | None = None  # (width, height) where known before the first frame

    def close(self) -> None:
        for item in self.release:
            item.release()


def open_source(spec: str, timeout_s: float | None = None) -> FrameSource:
    """Open ``spec``; a camera or file that cannot be opened is one clear error. ``timeout_s``
    bounds the opening and each read of an RTSP/HTTP stream (None: OpenCV's own, 30 s)."""
    if spec.startswith("replay:"):
        return _replay(Path(spec[len("replay:"):]))
    if spec.startswith("csi://"):
        return _open_csi(spec)
    if spec.startswith("paced://"):  # a synthetic camera on its own clock, for measuring the loop
        paced = parse_paced(spec)
        return FrameSource(spec, True, paced, reopen=False, size=paced.size)
    if spec.isdigit():
        return _capture(spec, int(spec), live=True)
    if "://" in spec:
        return _open_stream(spec, timeout_s)
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


@dataclass(frozen=True)
class CsiRequest:
    """What a ``csi://`` source asks of the sensor; ``mode`` None leaves the choice to Argus."""

    sensor: int = 0
    width: int = CSI_DEFAULTS["width"]
    height: int = CSI_DEFAULTS["height"]
    fps: int = CSI_DEFAULTS["fps"]
    mode: int | None = None


def parse_csi(spec: str) -> CsiRequest:
    """``csi://N?width=W&height=H&fps=F&mode=M``; every value checked, unknown keys refused,
    so a typo fails here in one line instead of as a GStreamer negotiation error."""
    parts = urlsplit(spec)
    if parts.path or parts.fragment:
        raise DataError(f"{spec}: expected csi://N?key=value&..., got a path or fragment after the sensor id")
    sensor = _csi_int(spec, "sensor id", parts.netloc or "0", CSI_SENSORS)
    return CsiRequest(sensor, **_csi_query(spec, parts.query))


def _csi_query(spec: str, query: str) -> dict[str, int]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DataError(f"{spec}: expected key=value pairs joined by '&' after '?'") from None
    asked: dict[str, int] = {}
    for key, value in pairs:
        if key not in CSI_LIMITS:
            raise DataError(f"{spec}: unknown parameter {key!r} (choices: {', '.join(sorted(CSI_LIMITS))})")
        if key in asked:
            raise DataError(f"{spec}: parameter {key!r} given twice")
        asked[key] = _csi_int(spec, f"parameter {key!r}", value, CSI_LIMITS[key])
    return asked


def _csi_int(spec: str, name: str, value: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if not re.fullmatch(r"[0-9]{1,6}", value) or not low <= int(value) <= high:
        raise DataError(f"{spec}: {name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def accepts_bgrx(opencv_version: str) -> bool:
    """Whether this OpenCV's GStreamer backend hands BGRx frames to Python (see ``BGRX_SINCE``);
    a version string it cannot read gets the pipeline that works everywhere."""
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", opencv_version)
    return bool(found) and tuple(int(n) for n in found.groups()) >= BGRX_SINCE


def csi_pipeline(request: CsiRequest, bgrx: bool) -> str:
    """The GStreamer description for ``request``. The NVMM caps pin the sensor's size and rate
    (Argus picks the mode from them unless ``mode`` is given); ``nvvidconv`` converts to
    BGRx in hardware. ``drop=true max-buffers=1`` keeps only the newest frame, without them a
    slow consumer reads frames seconds old; ``sync=false`` hands a frame over as it arrives
    instead of holding it to its timestamp (OpenCV sets that itself only for pipelines it
    builds, not for a manual one). ``bgrx`` False: the CPU ``videoconvert`` for old OpenCV."""
    mode = f" sensor-mode={request.mode}" if request.mode is not None else ""
    convert = "" if bgrx else " ! videoconvert ! video/x-raw, format=BGR"
    return (f"nvarguscamerasrc sensor-id={request.sensor}{mode} ! video/x-raw(memory:NVMM), "
            f"width={request.width}, height={request.height}, framerate={request.fps}/1 ! "
            f"nvvidconv ! video/x-raw, format=BGRx{convert} ! appsink drop=true max-buffers=1 sync=false")


def bgrx_to_bgr(frame: np.ndarray) -> np.ndarray:
    """(H, W, 4) BGRx -> (H, W, 3) BGR in one pass. cvtColor rather than ``frame[..., :3]``:
    the slice is a strided view that the preprocessing and overlay would copy anyway, and
    cvtColor writes the contiguous result in one vectorised pass."""
    if frame.ndim != 3 or frame.shape[2] != 4:
        raise DataError(f"expected a (H, W, 4) BGRx frame from the CSI pipeline, got {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)


def _open_csi(spec: str) -> FrameSource:
    request = parse_csi(spec)
    if not has_gstreamer():
        raise DataError(f"{spec}: this OpenCV was built without GStreamer, which CSI cameras need; "
                        f"on a Jetson use JetPack's OpenCV (make setup-device uses the system's)")
    bgrx = accepts_bgrx(cv2.__version__)
    return _capture(spec, csi_pipeline(request, bgrx), live=True, api=cv2.CAP_GSTREAMER,
                    convert=bgrx_to_bgr if bgrx else None)


def _open_stream(url: str, timeout_s: float | None) -> FrameSource:
    """An RTSP/HTTP stream whose opening and reads give up after ``timeout_s``: a camera that
    accepts the connection and never answers would otherwise hold the loop for OpenCV's 30 s
    per try (and a reconnect makes several tries). OpenCV's FFmpeg backend reads the two
    properties when it opens (opencv/opencv#20549, in 4.5.4)."""
    if timeout_s is None:
        return _capture(url, url, live=True)
    if not hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):  # before 4.5.4 (JetPack 4's 4.1.1), or no binding
        print(f"camera: OpenCV {cv2.__version__} cannot bound a stream's open and read time; "
              f"{url} waits up to OpenCV's own 30 s, not camera.timeout_s={timeout_s:g}", flush=True)
        return _capture(url, url, live=True)
    ms = max(1, int(timeout_s * 1000))
    return _capture(url, url, live=True,
                    params=(cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms))


def _capture(spec: str, target: int | str, live: bool, api: int = cv2.CAP_ANY,
             convert: FrameConvert | None = None, params: tuple[int, ...] = ()) -> FrameSource:
    # the params overload exists from OpenCV 4.5.2 on; without params, the two-argument call
    cap = cv2.VideoCapture(target, api, list(params)) if params else cv2.VideoCapture(target, api)
    if not cap.isOpened():
        cap.release()
        found = ", ".join(video_devices()) or "none"
        hint = f" (video devices found: {found})" if isinstance(target, int) else ""
        raise DataError(f"{spec}: cannot open this camera or stream{hint}")
    return FrameSource(spec, live, _read(cap, convert), release=[cap], size=_frame_size(cap))


def _frame_size(cap: cv2.VideoCapture) -> tuple[int, int] | None:
    """The size the capture says its frames have, or None where it does not say (some
    GStreamer and network backends report 0 until the first frame)."""
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return (width, height) if width > 0 and height > 0 else None


def _read(cap: cv2.VideoCapture, convert: FrameConvert | None = None) -> Iterator[tuple[np.ndarray, str | None]]:
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield (convert(frame) if convert else frame), None


def _replay(clip: Path) -> FrameSource:
    classes, labels = read_labels(clip)
    source = _capture(f"replay:{clip}", str(clip), live=False)
    frames = ((frame, labels[i] if i < len(labels) else None)
              for i, (frame, _) in enumerate(source.frames))
    return FrameSource(source.spec, False, frames, classes, source.release, size=source.size)


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
