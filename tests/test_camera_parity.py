"""The camera loop's preprocessing parity check, held to an independent reference, and the
live path's accuracy on a lossless, motion-free replay against offline evaluation.

* The reference (pipeline/device/camera/parity.py) is checked against torchvision itself
  here, so the device can check the live path against torchvision's definition without
  torch: measured bit-identical (0 grey levels) on every case below.
* Each fault the check exists for is injected into the live path and must be refused in
  one line naming the cause.
* A PNG-sequence replay (lossless on every OpenCV, FFmpeg or not) of the digits val split
  at its native 8x8, one still frame per image, through the real loop: its INT8 accuracy
  equals offline ``evaluate`` of the same files (within 0.2 points; measured: equal). The
  hand-held MJPEG replay clip is reported beside it.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pipeline.config import EvaluateConfig
from pipeline.device import evaluate
from pipeline.device.camera import loop, parity
from pipeline.device.camera.clip import labels_path, make_clip
from pipeline.errors import DataError
from pipeline.imagefolder import scan_split
from pipeline.preprocess import Preprocessing, read_rgb
from tests.conftest import ROOT

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS = Preprocessing(32, 32, (0.30, 0.30, 0.30), (0.37, 0.37, 0.37))
PHOTOS = Preprocessing(128, 146, *IMAGENET)
MODES = ("bilinear", "bicubic", "nearest")
CASES = [  # (height, width, resize, crop)
    (8, 8, 32, 32),          # the digits definition at the images' size
    (8, 8, 36, 32),          # upsampled, then cropped
    (37, 53, 30, 24),        # odd sizes, shrinking
    (53, 37, 30, 30),        # portrait
    (480, 640, 146, 128),    # a VGA camera to the photos definition
    (720, 1280, 256, 224),   # 720p to ImageNet's 224/256
    (224, 224, 224, 200),    # crop only
    (20, 30, 16, 24),        # crop larger than the resized image: zero padded
    (3, 200, 2, 2),          # extreme aspect ratio
]


def image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def torchvision_crop(rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    mode = InterpolationMode[pre.interpolation.upper()]
    out = TF.resize(chw, [pre.resize], interpolation=mode, antialias=True)
    return TF.center_crop(out, [pre.input_size, pre.input_size]).numpy()


# --- the reference is torchvision's definition, and shares no code with prepare ------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("height,width,resize,crop", CASES)
def test_reference_is_torchvision_bit_for_bit(height: int, width: int, resize: int, crop: int, mode: str) -> None:
    pre = Preprocessing(crop, resize, *IMAGENET, mode)
    for seed in range(2):
        rgb = image(height, width, seed)
        expected = torchvision_crop(rgb, pre)
        assert np.array_equal(parity.reference_crop(rgb, pre), expected.astype(np.float64))
        normalised = TF.normalize(torch.from_numpy(expected).float() / 255, *map(list, IMAGENET)).numpy()
        assert np.abs(parity.reference_input(rgb, pre)[0] - normalised).max() <= 1e-6


def test_the_probe_frame_is_the_same_everywhere() -> None:
    """RandomState's stream is fixed across NumPy versions (the device runs NumPy 1.x)."""
    probe = parity.probe_frame(48, 64)
    assert probe.shape == (48, 64, 3) and probe.dtype == np.uint8
    assert np.array_equal(probe, parity.probe_frame(48, 64))
    assert probe[:, :, 0].tolist()[0][:6] == [108, 76, 88, 112, 94, 126]
    assert len(np.unique(probe)) > 200 and not np.array_equal(probe[..., 0], probe[..., 2])


def test_the_reference_calls_nothing_of_prepare() -> None:
    """Independent by construction: from pipeline.preprocess it takes the definition's
    fields and the evaluation decoder, never the code it checks."""
    tree = ast.parse((ROOT / "pipeline" / "device" / "camera" / "parity.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "pipeline.preprocess" for alias in node.names}
    assert imported == {"Preprocessing", "read_rgb"}
    called = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not called & {"prepare", "resize_crop", "normalize", "from_config", "_axis_plan", "_resample"}


# --- the check passes the live path, and refuses each fault in one line ----------------------


@pytest.mark.parametrize("pre", [DIGITS, PHOTOS, Preprocessing(224, 256, *IMAGENET, "bicubic"),
                                 Preprocessing(32, 36, *IMAGENET, "nearest")], ids=["digits", "photos", "bicubic",
                                                                                    "nearest"])
@pytest.mark.parametrize("size", [(8, 8), (48, 64), (480, 640)])
def test_the_live_path_passes(pre: Preprocessing, size: tuple[int, int]) -> None:
    loop.check_preprocessing_parity(image(*size, seed=3), pre)


def _with(**changes):
    """A live path that prepares with another definition than the model's."""
    prepare = loop.prepare  # the loop's own, bound now: a test may put this one in its place
    return lambda frame, pre: prepare(frame, dataclasses.replace(pre, **changes))


def _opencv_resize(frame: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """A plausible 'faster' live path: cv2.resize (INTER_AREA) instead of the definition's."""
    h, w = frame.shape[:2]
    scale = pre.resize / min(h, w)
    resized = cv2.resize(frame, (max(pre.resize, int(w * scale)), max(pre.resize, int(h * scale))),
                         interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - pre.input_size) // 2, (resized.shape[1] - pre.input_size) // 2
    crop = resized[top:top + pre.input_size, left:left + pre.input_size, ::-1]
    return pre.normalize(np.ascontiguousarray(crop.transpose(2, 0, 1))[None])


def _one_grey_level(frame: np.ndarray, pre: Preprocessing) -> np.ndarray:
    x = loop.prepare(frame, pre).copy()
    x[0, 1, 5, 7] += np.float32(1 / 255 / pre.std[1])
    return x


FAULTS = {  # name: (live path, definition, frame size, cause named in the message)
    "colour order": (lambda f, p: loop.prepare(np.ascontiguousarray(f[..., ::-1]), p), PHOTOS, (96, 128),
                     r"colour order"),
    "resize size": (_with(resize=150), PHOTOS, (96, 128), r"resize or crop"),
    "crop size": (_with(input_size=120), PHOTOS, (96, 128), r"shape \(1, 3, 120, 120\).*\(1, 3, 128, 128\)"),
    "bicubic for bilinear": (_with(interpolation="bicubic"), PHOTOS, (96, 128), r"interpolation \(the live path "
                             r"resizes bicubic, the model's definition is bilinear\)"),
    "nearest for bilinear": (_with(interpolation="nearest"), DIGITS, (48, 64), r"resizes nearest"),
    "mean": (_with(mean=(0.5, 0.5, 0.5)), PHOTOS, (96, 128), r"normalisation"),
    "std": (_with(std=(0.25, 0.25, 0.25)), DIGITS, (8, 8), r"normalisation"),
    "mean off by 0.001": (_with(mean=(0.486, 0.456, 0.406)), PHOTOS, (96, 128), r"normalisation"),
    "frame cropped by the path": (lambda f, p: loop.prepare(f[2:, 3:], p), PHOTOS, (96, 128), r"resize or crop"),
    "cv2.resize": (_opencv_resize, PHOTOS, (480, 640), r"resize or crop"),
    "one grey level at one pixel": (_one_grey_level, PHOTOS, (96, 128),
                                    r"1\.0 grey levels\) on 1 of 49152 values: resize or crop"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_refused_in_one_line_naming_the_cause(fault: str) -> None:
    live, pre, size, cause = FAULTS[fault]
    with pytest.raises(DataError, match=r"^preprocessing parity failed on (the first|a probe) frame") as caught:
        loop.check_preprocessing_parity(image(*size, seed=5), pre, live=live)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(cause, message), message


def test_a_flat_first_frame_still_catches_a_resize_fault() -> None:
    """A black first frame (lens cap, dark room) hides any resize: the probe frame does not."""
    flat = np.zeros((96, 128, 3), np.uint8)
    with pytest.raises(DataError, match=r"on a probe frame \(128x96\): .*resize or crop"):
        loop.check_preprocessing_parity(flat, PHOTOS, live=_with(resize=150))


def test_a_grey_first_frame_still_catches_a_colour_swap() -> None:
    """A digit is grey: swapping its channels changes nothing, the probe frame's are not."""
    grey = np.repeat(image(8, 8, seed=1)[..., :1], 3, axis=2)
    swapped = FAULTS["colour order"][0]
    with pytest.raises(DataError, match=r"on a probe frame \(8x8\): .*colour order"):
        loop.check_preprocessing_parity(grey, DIGITS, live=swapped)


def test_the_check_reads_the_definition_not_the_code() -> None:
    """A model whose definition says BGR: the live path (always RGB) is refused."""
    with pytest.raises(DataError, match=r"colour order \(the live path's channels are reversed; the model's "
                                        r"definition is BGR\)"):
        loop.check_preprocessing_parity(image(48, 64, seed=2), dataclasses.replace(PHOTOS, colour="BGR"))


def test_the_loop_stops_on_a_faulty_live_path(quantized_run, tmp_path, monkeypatch) -> None:
    """Through the real loop: a live path that resizes differently stops it on the first
    frame with the one-line reason (and the summary is still written)."""
    val = Path(quantized_run.data.root) / "digits" / "val"
    faulty = _with(interpolation="nearest", resize=40)
    monkeypatch.setattr(loop, "prepare", faulty)
    cam = dataclasses.replace(quantized_run.camera, headless=True, source=str(val / "3"),
                              summary=str(tmp_path / "s.json"))
    with pytest.raises(DataError, match=r"preprocessing parity failed on (the first|a probe) frame"):
        loop.run(dataclasses.replace(quantized_run, camera=cam))
    assert json.loads((tmp_path / "s.json").read_text())["status"].startswith("error: preprocessing parity")


# --- lossless, motion-free replay: the live path's accuracy is offline evaluation's ---------


def _offline_top1(run, folder: Path, out: Path) -> dict:
    """Offline top-1 of the model the loop deploys, on the runtime it deploys it with (the
    CPU target's: OpenVINO; ONNX Runtime differs from it on a near-tie or two)."""
    deployed = loop.default_models(run)[0]
    cfg = dataclasses.replace(run, evaluate=EvaluateConfig(model=str(deployed.path), runtime=deployed.runtime,
                                                           out=str(out)),
                              data=dataclasses.replace(run.data, path=str(folder)))
    evaluate.run(cfg)
    return json.loads(out.read_text())


def _live(run, tmp_path: Path, source: str, name: str) -> dict:
    cam = dataclasses.replace(run.camera, headless=True, source=source, shadow_every=1,
                              summary=str(tmp_path / f"{name}.json"))
    return json.loads(loop.run(dataclasses.replace(run, camera=cam)).read_text())


def test_lossless_still_replay_accuracy_equals_offline_evaluation(quantized_run, tmp_path) -> None:
    """All 360 digits val images (8x8) as a PNG sequence at 8x8, one still frame each,
    through the real loop, against offline evaluation of the same files. Reported beside
    it: the same through MJPEG (the codec alone), hand-held through PNG (the motion alone),
    and the hand-held MJPEG clip (the bundle's kind: motion 0.1, 4 frames per image)."""
    val = Path(quantized_run.data.root) / "digits" / "val"
    split = scan_split(val, tuple(str(d) for d in range(10)))
    still = make_clip(split, tmp_path / "still" / "%06d.png", 0, 1, (8, 8), seed=0, motion=0.0)
    assert labels_path(still) == tmp_path / "still" / "labels.json"
    offline = _offline_top1(quantized_run, val, tmp_path / "offline.json")
    live = _live(quantized_run, tmp_path, f"replay:{still}", "still")
    assert live["labelled_frames"] == offline["images"] == len(split) == 360
    assert abs(live["int8_accuracy"] - offline["top1"]) <= 0.002
    # beside it, for the note: what the codec and the motion each cost
    clips = {"MJPEG still, 8x8": ("still.avi", 1, (8, 8), 0.0),
             "PNG hand-held, 96x96": ("moving/%06d.png", 4, (96, 96), 0.1),
             "MJPEG hand-held, 96x96 (the replay clip)": ("handheld.avi", 4, (96, 96), 0.1)}
    figures = {}
    for i, (name, (file, frames, size, motion)) in enumerate(clips.items()):
        clip = make_clip(split, tmp_path / file, 0, frames, size, seed=0, motion=motion)
        record = _live(quantized_run, tmp_path, f"replay:{clip}", f"clip{i}")
        assert record["labelled_frames"] == frames * 360 and record["int8_accuracy"] > 0.5
        figures[name] = record["int8_accuracy"]
    print(f"\nINT8 top-1 on the {offline['images']} digits val images: offline evaluate {offline['top1']:.2%}; "
          f"through the live path: PNG still, 8x8 (lossless, motion-free) {live['int8_accuracy']:.2%}; "
          + "; ".join(f"{name} {value:.2%}" for name, value in figures.items()))


def test_the_png_sequence_replays_the_evaluated_pixels(quantized_run, tmp_path) -> None:
    val = Path(quantized_run.data.root) / "digits" / "val"
    split = scan_split(val, tuple(str(d) for d in range(10)))
    still = make_clip(split, tmp_path / "s" / "%06d.png", 12, 1, (8, 8), seed=2, motion=0.0)
    record = json.loads(labels_path(still).read_text())
    classes, labels = record["classes"], record["labels"]
    reader = cv2.VideoCapture(str(still))
    frames = []
    while True:
        ok, frame = reader.read()
        if not ok:
            break
        frames.append(frame)
    picks = random.Random(2).sample(range(len(split)), 12)
    assert len(frames) == len(labels) == 12 and classes == list(split.classes)
    for frame, index, label in zip(frames, picks, labels):
        assert np.array_equal(frame[..., ::-1], read_rgb(split.files[index]))
        assert label == split.classes[split.labels[index]]


def test_a_sequence_is_replaced_whole_and_needs_a_pattern(quantized_run, tmp_path) -> None:
    val = Path(quantized_run.data.root) / "digits" / "val"
    split = scan_split(val, tuple(str(d) for d in range(10)))
    make_clip(split, tmp_path / "s" / "%06d.png", 12, 1, (8, 8), seed=0, motion=0.0)
    make_clip(split, tmp_path / "s" / "%06d.png", 5, 1, (8, 8), seed=0, motion=0.0)
    assert len(list((tmp_path / "s").glob("*.png"))) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    with pytest.raises(DataError, match=r"frame-number pattern, e\.g\. .*%06d\.png"):
        make_clip(split, tmp_path / "t" / "frames.png", 2, 1, (8, 8), seed=0)


def test_without_ffmpeg_only_the_png_sequence_is_lossless(tmp_path) -> None:
    """OpenCV with FFmpeg and GStreamer switched off, as a build without them: FFV1 (.mkv)
    cannot be written (the error says what to use), the MJPEG .avi is lossy, and the PNG
    sequence reads back exactly, through the same open_source the loop uses."""
    script = f"""
import cv2, numpy as np
from pathlib import Path
from pipeline.device.camera.clip import make_clip
from pipeline.device.camera.sources import open_source
from pipeline.errors import DataError
from pipeline.imagefolder import scan_split
root = Path({str(tmp_path)!r})
rng = np.random.default_rng(0)
for c in ("a", "b"):
    (root / "imgs" / c).mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "imgs" / c / f"{{i}}.png"), rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
split = scan_split(root / "imgs", ("a", "b"))
def frames(clip):
    return [f for f, _ in open_source("replay:" + str(clip)).frames]
try:
    make_clip(split, root / "x.mkv", 0, 1, (24, 16), 0, 0.0)
    print("mkv: written")
except DataError as exc:
    print("mkv:", exc)
want = [cv2.imread(str(f)) for f in split.files]
avi = frames(make_clip(split, root / "x.avi", 0, 1, (24, 16), 0, 0.0))
print("avi: exact", all(np.array_equal(a, b) for a, b in zip(avi, want)), len(avi))
seq = frames(make_clip(split, root / "seq" / "%06d.png", 0, 1, (24, 16), 0, 0.0))
print("png: exact", len(seq) == 6 and all(np.array_equal(a, b) for a, b in zip(seq, want)), len(seq))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENCV_VIDEOIO_PRIORITY_FFMPEG": "0",
           "OPENCV_VIDEOIO_PRIORITY_GSTREAMER": "0", "OPENCV_VIDEOIO_PRIORITY_INTEL_MFX": "0",
           "OPENCV_LOG_LEVEL": "ERROR"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "mkv: " in out and "cannot write this video format here (FFV1 needs OpenCV with FFmpeg" in out, out
    assert "avi: exact False 6" in out and "png: exact True 6" in out, out
