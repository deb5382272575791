"""The one preprocessing definition: training evaluation, calibration, evaluation and the
camera loop all call :meth:`Preprocessing.prepare` and :meth:`Preprocessing.normalize`.

A mismatch between training and deployment preprocessing (colour order, resize, mean/std)
is the most common cause of "the engine is less accurate" reports, so the definition
travels inside the checkpoint and the ONNX metadata rather than being re-typed per stage.

The computation is NumPy and OpenCV only, so the Jetson (no torch, torchvision or PIL)
runs the very same code as the workstation. It reproduces, bit for bit, what the training
side computed with ``torchvision.transforms.v2.functional.resize(..., antialias=True)``
and ``center_crop`` on uint8 CPU tensors: torch resamples uint8 images with Pillow's
separable antialiased filters in fixed point (int16 weights with a per-size precision,
horizontal pass first, each pass rounded and saturated to uint8), and we compute the same
integers (see :func:`_axis_plan`). That is torch's path on x86 CPUs with AVX2 and on
ARM; on older x86 CPUs and on GPUs torchvision resizes bilinear uint8 images in float32
instead, which can differ by one grey level. Decoding is OpenCV's, with EXIF orientation
ignored as PIL's ``Image.open`` ignores it, and truncated JPEG/PNG files refused as PIL
refuses them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from pipeline.config import PreprocessConfig
from pipeline.errors import ConfigError, DataError
from pipeline.progress import progress

Transform = Callable[[np.ndarray], np.ndarray]  # typing's: collections.abc's is not subscriptable on 3.8

ORDERS = ("RGB", "BGR")
# Output rows computed by one matrix product: small enough that the band of input rows
# it reads stays narrow, large enough that BLAS call overhead does not dominate.
_BLOCK = 8
_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Preprocessing:
    """Decode → RGB → resize shorter side → centre crop → scale to [0, 1] → mean/std, NCHW."""

    input_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    colour: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0

    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> "Preprocessing":
        resize = cfg.resize or round(cfg.input_size / 0.875)
        return cls(cfg.input_size, resize, tuple(cfg.mean), tuple(cfg.std), cfg.interpolation)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        """From a checkpoint's or ONNX file's record; a malformed one is a ConfigError
        naming what is wrong, not a TypeError."""
        if not isinstance(data, dict):
            raise ConfigError(f"preprocessing: expected a table, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"preprocessing: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def prepare(self, image: np.ndarray, order: str = "RGB") -> np.ndarray:
        """uint8 (H, W, 3) image → uint8 (3, S, S), resized and centre-cropped, RGB.

        ``order="BGR"`` takes OpenCV camera frames as they come: the channel swap is done
        on the small crop, and the result equals ``prepare(image[..., ::-1])``.
        """
        if order not in ORDERS:
            raise ConfigError(f"order: expected one of {', '.join(ORDERS)}, got {order!r}")
        chw = self.resize_crop(image, self.resize, self.input_size)
        return np.ascontiguousarray(chw[::-1]) if order == "BGR" else chw

    def resize_crop(self, image: np.ndarray, resize: int, crop: int) -> np.ndarray:
        """uint8 (H, W, 3) → uint8 (3, crop, crop): shorter side to ``resize``, centre crop.

        Only the rows and columns that survive the crop are resampled; a crop larger than
        the resized image is padded with zeros, as torchvision pads it.
        """
        _check_image(image)
        if resize < 1 or crop < 1:
            raise ConfigError(f"resize/crop: expected sizes >= 1, got {resize}/{crop}")
        mode = _mode(self.interpolation)
        height, width = _resized_size(image.shape[0], image.shape[1], resize)
        rows = _axis_plan(image.shape[0], height, mode, crop)
        cols = _axis_plan(image.shape[1], width, mode, crop)
        out = np.zeros((crop, crop, 3), np.uint8)  # (S, S, 3)
        out[rows.pad:rows.pad + rows.count, cols.pad:cols.pad + cols.count] = _resample(image, rows, cols)
        return np.ascontiguousarray(out.transpose(2, 0, 1))  # (3, S, S)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, 3, S, S) → float32 (N, 3, S, S) with this definition's mean and std."""
        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        return (batch.astype(np.float32) * np.float32(self.scale) - mean) / std


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to a writable RGB uint8 (H, W, 3) array, as PIL's
    ``convert("RGB")`` does: greyscale gives three equal channels, alpha is dropped.

    Raises :class:`DataError` naming the file when it is missing, empty, not an image, or
    a JPEG/PNG cut short (OpenCV would return the decoded part and fill the rest).
    """
    try:
        data = Path(path).read_bytes()  # not cv2.imread: non-ASCII paths fail there
    except OSError as exc:
        raise DataError(f"{path}: unreadable or corrupt image ({exc})") from None
    reason = _truncation(data)
    if reason:
        raise DataError(f"{path}: unreadable or corrupt image ({reason})")
    _quiet_opencv()
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        raise DataError(f"{path}: unreadable or corrupt image ({str(exc).strip()})") from None
    if bgr is None:
        raise DataError(f"{path}: unreadable or corrupt image (OpenCV cannot decode it)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # a new contiguous array


def load_images(files: Sequence[Path], transform: Transform, workers: int = 2,
                desc: str = "load", show_progress: bool = True) -> np.ndarray:
    """Decode and transform ``files`` in threads: uint8 (N, 3, S, S) in file order.

    OpenCV and NumPy release the GIL while they decode and resample, so threads keep the
    cores busy without copying images between processes.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda f: transform(read_rgb(f)), files)
        images = list(progress(results, show_progress, total=len(files), desc=desc, unit="img"))
    if not images:
        raise DataError(f"{desc}: no image files to load")
    return np.stack(images)  # (N, 3, S, S) uint8


# --- decoding -----------------------------------------------------------------------------


def _truncation(data: bytes) -> str:
    """Why ``data`` cannot be a whole image ("" when it may be one).

    OpenCV decodes a cut-short JPEG without complaint (the missing rows come out grey),
    where PIL raises "image file is truncated"; checking the end markers before decoding
    also keeps libpng and libjpeg from printing their own complaints on stderr.
    """
    if not data:
        return "empty file"
    if data.startswith(_JPEG_MAGIC) and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        return "JPEG data ends before its end-of-image marker: truncated"
    if data.startswith(_PNG_MAGIC) and data.rfind(b"IEND") < 0:
        return "PNG data ends before its IEND chunk: truncated"
    return ""


def _quiet_opencv() -> None:
    """Lower OpenCV's logging to errors: its per-file decoder warnings would flood the
    log of a whole-dataset load, and every failure reaches the caller as a DataError."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    get_level = getattr(cv2, "getLogLevel", None) or getattr(logging, "getLogLevel", None)
    set_level = getattr(cv2, "setLogLevel", None) or getattr(logging, "setLogLevel", None)
    error_level = 2  # LOG_LEVEL_ERROR in both the OpenCV 4 and 5 enums
    if get_level is not None and set_level is not None and get_level() > error_level:
        set_level(error_level)


# --- resizing: the same integers as torch's uint8 antialiased resize ------------------------


@dataclass(frozen=True)
class _Filter:
    """An antialiasing kernel of Pillow/torch: ``support`` is its radius at scale 1."""

    kernel: Callable[[np.ndarray], np.ndarray]
    support: float


@dataclass(frozen=True, eq=False)
class _AxisPlan:
    """How one axis of the centre crop is computed from the same axis of the image.

    The crop reads input positions ``[start, stop)`` and yields ``count`` positions placed
    after ``pad`` zeros. Exactly one way applies: ``blocks`` (resample: output positions
    ``[o0, o1)`` = ``weights @ input[i0:i1]``, indices relative to ``start``), ``index``
    (nearest: gather these positions, relative to ``start``), or neither (a plain slice).
    """

    start: int
    stop: int
    count: int
    pad: int
    blocks: tuple[tuple[int, int, int, int, np.ndarray], ...] = ()
    index: np.ndarray | None = None
    dtype: type = np.float64


def _triangle(x: np.ndarray) -> np.ndarray:
    """Bilinear's kernel (torch ``HelperInterpLinear::aa_filter``)."""
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic with a = -0.5, the antialiased bicubic of Pillow and torch, evaluated
    in the same operation order as torch's ``cubic_convolution1/2`` (same doubles)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_FILTERS = {"bilinear": _Filter(_triangle, 1.0), "bicubic": _Filter(_keys_cubic, 2.0)}
_MODES = ("bilinear", "bicubic", "nearest")


def _mode(interpolation: str) -> str:
    mode = interpolation.lower()
    if mode not in _MODES:
        raise ConfigError(f"interpolation: expected one of {', '.join(_MODES)}, got {interpolation!r}")
    return mode


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"image: expected a uint8 (H, W, 3) array, got {got}")


def _resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision's ``_compute_resized_output_size`` for one size: the longer side is
    truncated, not rounded."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def _crop_window(length: int, crop: int) -> tuple[int, int, int]:
    """(first, count, pad): the resized positions ``[first, first + count)`` kept by a
    centre crop, after ``pad`` zeros. torchvision's anchor is ``int(round((L - c) / 2))``
    (Python's banker's rounding); a crop larger than the image is zero padded,
    ``(c - L) // 2`` before."""
    if crop > length:
        return 0, length, (crop - length) // 2
    return int(round((length - crop) / 2.0)), crop, 0


@functools.lru_cache(maxsize=256)
def _axis_plan(n_in: int, n_out: int, mode: str, crop: int) -> _AxisPlan:
    """The cached plan for one axis resized ``n_in`` → ``n_out`` then centre-cropped.

    A camera stream or a dataset of one image size computes it once per axis.
    """
    first, count, pad = _crop_window(n_out, crop)
    if n_in == n_out:  # torch skips this pass: the crop is a plain slice
        return _AxisPlan(first, first + count, count, pad)
    if mode == "nearest":
        index = _nearest_index(n_in, n_out)[first:first + count]
        start = int(index.min())
        return _AxisPlan(start, int(index.max()) + 1, count, pad, index=_frozen(index - start))
    return _blocks_plan(n_in, n_out, _FILTERS[mode], first, count, pad)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """torch's (legacy) ``nearest``: ``floor(i * (in / out))`` computed in float32."""
    scale = np.float32(n_in) / np.float32(n_out)
    index = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, n_in - 1)


def _filter_taps(n_in: int, n_out: int, filt: _Filter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xmin, xsize, weights (n_out, K)): torch's ``_compute_indices_min_size_weights_aa``
    in float64 with the same expressions, so the normalised weights are the same doubles.

    The window of output ``i`` is centred on ``(i + 0.5) * scale`` and, when shrinking,
    the kernel is stretched by ``scale``: that is the antialiasing.
    """
    scale = n_in / n_out
    support = filt.support * scale if scale >= 1.0 else filt.support
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(n_out, dtype=np.float64) + 0.5)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xsize = np.clip(np.minimum((center + support + 0.5).astype(np.int64), n_in) - xmin, 0, taps)
    j = np.arange(taps)
    weights = filt.kernel(((j + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * invscale)
    weights[j >= xsize[:, None]] = 0.0
    total = np.zeros(n_out)
    for k in range(taps):  # tap by tap, as torch sums: numpy's pairwise sum rounds differently
        total += weights[:, k]
    nonzero = total != 0.0
    weights[nonzero] /= total[nonzero, None]
    return xmin, xsize, weights


def _fixed_point(weights: np.ndarray) -> tuple[np.ndarray, int]:
    """(integer weights, precision): torch's uint8 path (``_compute_index_ranges_int16_weights``)
    rounds the weights to int16 at the largest precision that keeps the biggest weight of
    the whole axis below 2**15, and computes ``(sum + 2**(p-1)) >> p`` in int32."""
    largest = weights.max()
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    return np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)), precision  # C's (int)(x ± 0.5)


def _blocks_plan(n_in: int, n_out: int, filt: _Filter, first: int, count: int, pad: int) -> _AxisPlan:
    """Band matrices for ``_BLOCK`` output positions at a time, over the input span they read.

    The matrices hold the integer weights times 2**-precision, so a product sums
    (pixel x integer weight) exactly, as torch's int32 arithmetic does (see
    :func:`_exact_dtype`), and only the wanted outputs are computed.
    """
    xmin, xsize, weights = _filter_taps(n_in, n_out, filt)
    integers, precision = _fixed_point(weights)  # the precision depends on the whole axis
    xmin, xsize, integers = xmin[first:first + count], xsize[first:first + count], integers[first:first + count]
    start, stop = int(xmin.min()), int((xmin + xsize).max())
    dtype = _exact_dtype(integers, precision)
    blocks = []
    for o0 in range(0, count, _BLOCK):
        o1 = min(o0 + _BLOCK, count)
        i0, i1 = int(xmin[o0:o1].min()), int((xmin[o0:o1] + xsize[o0:o1]).max())
        matrix = np.zeros((o1 - o0, i1 - i0), dtype)
        for row, (x, n) in enumerate(zip(xmin[o0:o1], xsize[o0:o1])):
            matrix[row, x - i0:x - i0 + n] = integers[o0 + row, :n] * 2.0 ** -precision
        blocks.append((o0, o1, i0 - start, i1 - start, _frozen(matrix)))
    return _AxisPlan(start, stop, count, pad, blocks=tuple(blocks), dtype=dtype)


def _exact_dtype(integers: np.ndarray, precision: int) -> type:
    """float32 where it is exact, else float64.

    Every partial sum of (pixel x weight) is an integer N times 2**-precision with
    |N| <= 255 x sum|weights| (+ 2**(precision-1) for the rounding term); such numbers are
    exact in float32 below 2**24, and in float64 always (torch's N fits int32), whatever
    order BLAS adds them in.
    """
    largest = 255 * np.abs(integers).sum(axis=1).max() + 2 ** (precision - 1)
    return np.float32 if largest < 2 ** 24 else np.float64


def _frozen(array: np.ndarray) -> np.ndarray:
    """Cached plans are shared between calls and threads: make them read-only."""
    array.setflags(write=False)
    return array


def _resample(image: np.ndarray, rows: _AxisPlan, cols: _AxisPlan) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (rows.count, cols.count, 3): horizontal pass, then vertical,
    each rounded to uint8 in between, as torch does."""
    region = image[rows.start:rows.stop, cols.start:cols.stop]  # (R, C, 3)
    if rows.index is not None:  # nearest: pick rows first, then the column gather is small
        region = region[rows.index]
    if cols.blocks:
        across = cv2.transpose(region)  # (C, R, 3): the horizontal pass becomes a row pass
        across = _resample_rows(across.reshape(across.shape[0], -1), cols)
        region = cv2.transpose(across.reshape(cols.count, -1, 3))  # (R, count, 3)
    elif cols.index is not None:
        region = region[:, cols.index]
    if rows.blocks:
        flat = _resample_rows(region.reshape(region.shape[0], -1), rows)
        return flat.reshape(rows.count, cols.count, 3)
    return region


def _resample_rows(src: np.ndarray, plan: _AxisPlan) -> np.ndarray:
    """uint8 (n, X) → uint8 (plan.count, X): each block one small matrix product, then
    torch's ``(sum + 2**(p-1)) >> p`` saturated to uint8, i.e. floor(x + 0.5) clipped."""
    values = src.astype(plan.dtype)
    out = np.empty((plan.count, src.shape[1]), plan.dtype)
    for o0, o1, i0, i1, matrix in plan.blocks:
        np.matmul(matrix, values[i0:i1], out=out[o0:o1])
    np.add(out, 0.5, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)  # truncation: floor, as everything is now >= 0
