"""An independent reference for the camera loop's preprocessing parity check.

The loop prepares frames with :meth:`Preprocessing.prepare`, and so does evaluation:
checking one call of that code against another can only catch a colour swap. This module
computes the model's input again from the definition, written anew the slow, obvious way
and sharing no code with :mod:`pipeline.preprocess`, so that a wrong resize, crop,
interpolation or normalisation in the live path, or ``prepare`` itself computing
differently on this machine, is caught as well.

The definition is what the training side ran: torchvision's ``resize(size, antialias=True)``
(the shorter side to ``resize``, the longer truncated) and ``center_crop`` on uint8
tensors, then ``x / 255`` and ``normalize``, channels in the definition's ``colour`` order.
On a CPU, torch resizes uint8 images with Pillow's separable antialiased filters in fixed
point: for each output position ``i`` a kernel centred on ``(i + 0.5) * scale``, stretched
by ``scale`` when shrinking, its weights normalised, then rounded to int16 at the largest
precision ``p`` that keeps the axis's biggest weight below 2**15; each pass computes
``(sum + 2**(p-1)) >> p`` saturated to uint8, the horizontal pass first
(aten/src/ATen/native/cpu/UpSampleKernel.cpp, ``_compute_index_ranges_int16_weights``;
UpSampleKernelAVXAntialias.h). Here each pass is one dense ``(S, n)`` matrix of those
integers (the rows the centre crop keeps) multiplied in float64, where every such sum is
an exact integer: the result is torch's bit for bit (tests/test_camera_parity.py holds it
to torchvision: 0 grey levels apart on every case), so the check allows nothing beyond
float32 rounding of the normalisation (measured 6e-7).

Why a reference implementation rather than a stored expected tensor: the device has no
torch or PIL to make one, and a stored tensor would hold for one definition and one frame
size, while every model carries its own definition and every camera its own size. The
reference computes the expected input for this model's definition, on this camera's
first frame and on a generated probe frame of the same size, on the device itself.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from pipeline.preprocess import Preprocessing, read_rgb

LivePath = Callable[[np.ndarray, Preprocessing], np.ndarray]  # BGR frame -> float32 (1, 3, S, S)

# torch's antialiasing kernels (HelperInterpLinear/HelperInterpCubic::aa_filter) and their
# radius at scale 1.
_KERNELS: dict[str, tuple[Callable[[float], float], float]] = {
    "bilinear": (lambda x: max(0.0, 1.0 - abs(x)), 1.0),
    "bicubic": (lambda x: _keys(abs(x)), 2.0),
}
MODES = ("bilinear", "bicubic", "nearest")
# Live grey levels recovered from float32 inputs are within ~1e-4 of integers; a fault
# moves them by a grey level or more (or, for mean/std, by an affine map).
GREY_TOLERANCE = 0.01


def _keys(x: float) -> float:
    """Keys' cubic convolution kernel with a = -0.5, in torch's operation order."""
    a = -0.5
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return 0.0


# --- the reference ------------------------------------------------------------------------


def reference_input(rgb: np.ndarray, pre: Preprocessing, mode: str | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) → float64 (1, 3, S, S) by ``pre``'s definition (``mode``
    overrides its interpolation, to name a fault)."""
    return _normalised(reference_crop(rgb, pre, mode), pre)


def reference_crop(rgb: np.ndarray, pre: Preprocessing, mode: str | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) → the resized, centre-cropped grey levels, float64 (3, S, S)."""
    height, width = rgb.shape[:2]
    mode = (mode or pre.interpolation).lower()
    cols, col_bits = axis_weights(width, resized_length(width, height, pre.resize), mode, pre.input_size)
    rows, row_bits = axis_weights(height, resized_length(height, width, pre.resize), mode, pre.input_size)
    image = np.tensordot(cols, rgb.astype(np.float64), axes=([1], [1]))  # (S, H, 3): horizontal first
    image = _to_uint8(image, col_bits)
    image = _to_uint8(np.tensordot(rows, image, axes=([1], [1])), row_bits)  # (S, S, 3)
    chw = image.transpose(2, 0, 1)  # (3, S, S)
    return chw[::-1] if pre.colour.upper() == "BGR" else chw  # the channel order the model was trained on


def resized_length(length: int, other: int, short: int) -> int:
    """torchvision's resize to one size: the shorter side becomes ``short``, the longer is
    scaled and truncated (a square's sides both become ``short``)."""
    return short if length <= other else int(short * length / other)


def axis_weights(n_in: int, n_out: int, mode: str, crop: int) -> tuple[np.ndarray, int]:
    """(integer weights as float64 (crop, n_in), precision p): resize ``n_in`` → ``n_out``,
    then the rows a centre crop to ``crop`` keeps (zero rows where it pads). A size that
    does not change is the identity (torch skips the pass)."""
    if n_in == n_out:
        weights, bits = np.eye(n_in), 0
    elif mode == "nearest":
        weights, bits = _nearest(n_in, n_out), 0
    else:
        weights, bits = _fixed_point(_antialiased(n_in, n_out, mode))
    return _centre_crop(weights, crop), bits


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """torch's (legacy) nearest: input ``floor(i * (in / out))``, the ratio in float32."""
    weights = np.zeros((n_out, n_in))
    ratio = np.float32(n_in) / np.float32(n_out)
    for i in range(n_out):
        weights[i, min(int(math.floor(np.float32(i) * ratio)), n_in - 1)] = 1.0
    return weights


def _antialiased(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """float64 (n_out, n_in): the normalised kernel weights of every output position."""
    kernel, radius = _KERNELS[mode]
    scale = n_in / n_out
    support = radius * scale if scale >= 1.0 else radius
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), n_in)
        taps = [kernel((j - centre + 0.5) * inverse) for j in range(first, last)]
        total = 0.0
        for tap in taps:  # summed in order, as torch sums
            total += tap
        if total != 0.0:
            weights[i, first:last] = [tap / total for tap in taps]
    return weights


def _fixed_point(weights: np.ndarray) -> tuple[np.ndarray, int]:
    """torch's int16 weights: the largest precision below 22 bits whose rounded biggest
    weight, doubled, stays below 2**15; each weight rounded half away from zero."""
    biggest = float(weights.max())
    bits = 0
    while bits < 22 and int(0.5 + biggest * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    scaled = weights * (1 << bits)
    return np.where(scaled < 0, np.ceil(scaled - 0.5), np.floor(scaled + 0.5)), bits


def _centre_crop(weights: np.ndarray, crop: int) -> np.ndarray:
    """torchvision's ``center_crop`` of an axis: from ``int(round((n - crop) / 2))``, or
    zero padded with ``(crop - n) // 2`` before when the crop is larger."""
    n = weights.shape[0]
    if crop > n:
        out = np.zeros((crop, weights.shape[1]))
        out[(crop - n) // 2:(crop - n) // 2 + n] = weights
        return out
    top = int(round((n - crop) / 2.0))
    return weights[top:top + crop]


def _to_uint8(sums: np.ndarray, bits: int) -> np.ndarray:
    """``(sum + 2**(bits-1)) >> bits`` saturated to 0..255 (the sums are exact integers)."""
    if bits == 0:
        return np.clip(sums, 0, 255)
    return np.clip(np.floor((sums + (1 << (bits - 1))) / (1 << bits)), 0, 255)


# --- the check's inputs and its verdict -----------------------------------------------------


def evaluation_rgb(frame: np.ndarray) -> np.ndarray:
    """A BGR frame as the evaluation path sees an image: written to a PNG file and decoded
    by :func:`read_rgb`, so the reference's colour order does not come from the loop's."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.png"
        cv2.imwrite(str(path), frame)
        return read_rgb(path)


def probe_frame(height: int, width: int) -> np.ndarray:
    """A BGR uint8 (H, W, 3) frame no resize, crop or interpolation fault survives (a
    camera's first frame may be flat, and a flat frame hides them): fine noise over flat
    patches with hard edges and a ramp, different in each channel, the same on every
    machine (NumPy's legacy RandomState stream is fixed across versions)."""
    rng = np.random.RandomState(15)
    noise = rng.randint(0, 256, (height, width, 3)).astype(np.float64)
    patches = rng.randint(0, 256, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)
    ramp = np.linspace(0.0, 255.0, width)[None, :, None]
    frame = 0.5 * noise + 0.35 * patches[:height, :width] + 0.15 * ramp
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def mismatch(live: np.ndarray, rgb: np.ndarray, pre: Preprocessing, tolerance: float) -> str:
    """Why the live path's float32 (1, 3, S, S) input differs from the reference for the
    decoded ``rgb`` by more than ``tolerance`` ("" when it does not): the gap, then the
    likeliest cause."""
    crop = reference_crop(rgb, pre)
    expected = _normalised(crop, pre)
    if live.shape != expected.shape:
        return (f"the live path gives shape {tuple(live.shape)}, the definition {tuple(expected.shape)} "
                f"(resize/crop size)")
    gap = np.abs(live - expected)
    if gap.max() <= tolerance:
        return ""
    levels = grey_levels(live, pre)
    return (f"the live path differs from the reference by up to {gap.max():.3g} (up to "
            f"{np.abs(levels - crop).max():.1f} grey levels) on {np.count_nonzero(gap > tolerance)} of "
            f"{gap.size} values: {likely_cause(levels, crop, rgb, pre)}")


def grey_levels(live: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """float64 (3, S, S): the live input mapped back to grey levels by the definition's
    mean and std (integers when the live path normalises as defined)."""
    mean = np.asarray(pre.mean, np.float64).reshape(3, 1, 1)
    std = np.asarray(pre.std, np.float64).reshape(3, 1, 1)
    return (live[0].astype(np.float64) * std + mean) / pre.scale


def likely_cause(levels: np.ndarray, crop: np.ndarray, rgb: np.ndarray, pre: Preprocessing) -> str:
    """Name the fault from the live grey levels: the reference's with the channels
    reversed, an affine map of them per channel, or the reference with another
    interpolation; else the geometry."""
    close = GREY_TOLERANCE
    if np.abs(levels[::-1] - crop).max() <= close:
        return f"colour order (the live path's channels are reversed; the model's definition is {pre.colour})"
    if _affine_per_channel(levels, crop):
        return f"normalisation (mean/std/scale differ from the model's {list(pre.mean)}/{list(pre.std)})"
    for mode in MODES:
        if mode != pre.interpolation.lower() and np.abs(levels - reference_crop(rgb, pre, mode)).max() <= close:
            return f"interpolation (the live path resizes {mode}, the model's definition is {pre.interpolation})"
    return (f"resize or crop (the definition: shorter side to {pre.resize}, centre crop {pre.input_size}, "
            f"{pre.interpolation})")


def _normalised(crop: np.ndarray, pre: Preprocessing) -> np.ndarray:
    mean = np.asarray(pre.mean, np.float64).reshape(3, 1, 1)
    std = np.asarray(pre.std, np.float64).reshape(3, 1, 1)
    return ((crop * pre.scale - mean) / std)[None]  # (1, 3, S, S)


def _affine_per_channel(levels: np.ndarray, crop: np.ndarray) -> bool:
    """Whether each channel of ``levels`` is ``a * crop + b``: the same pixels under
    another mean/std. A flat channel cannot tell, so it does not count as a match."""
    for got, want in zip(levels.reshape(3, -1), crop.reshape(3, -1)):
        if np.ptp(want) == 0:
            return False
        a, b = np.polyfit(want, got, 1)
        if np.abs(a * want + b - got).max() > GREY_TOLERANCE:
            return False
    return True
