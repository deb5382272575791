"""The camera loop with real OpenCV: clips written with cv2.VideoWriter, replayed headless
through the runners the cpu target deploys (the INT8 model on the runtime bench chose,
beside the FP32 reference in true f32 on the same runtime)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.device import evaluate
from pipeline.device.camera import loop, stages
from pipeline.device.camera.capture import END, Capture
from pipeline.device.camera.clip import make_clip
from pipeline.device.camera.sources import (CsiRequest, FrameSource, accepts_bgrx, bgrx_to_bgr, csi_pipeline,
                                            open_source, parse_csi)
from pipeline.config import EvaluateConfig
from pipeline.device.deployment import deployment
from targets.profile import get_profile
from pipeline.imagefolder import scan_split
from pipeline.errors import DataError


def camera_cfg(run, tmp_path: Path, **changes):
    cam = dataclasses.replace(run.camera, headless=True, summary=str(tmp_path / "summary.json"), **changes)
    return dataclasses.replace(run, camera=cam)


def offline_deployed(run, out: Path) -> EvaluateConfig:
    """Offline evaluation of the model the cpu target deploys, on the runtime bench chose for it."""
    chosen = deployment(run.run_dir, get_profile("cpu")).model
    return EvaluateConfig(model=str(chosen.path), runtime=chosen.runtime, out=str(out))


@pytest.fixture(scope="module")
def val_subset(quantized_run, tmp_path_factory) -> Path:
    """40 digits val images as a labelled folder (the same images for loop and offline)."""
    root = tmp_path_factory.mktemp("subset")
    val = Path(quantized_run.data.root) / "digits" / "val"
    for folder in sorted(val.iterdir()):
        (root / folder.name).mkdir()
        for image in sorted(folder.iterdir())[:4]:
            shutil.copy(image, root / folder.name / image.name)
    return root


def test_image_folder_accuracy_equals_offline_evaluation(quantized_run, val_subset, tmp_path) -> None:
    summary = loop.run(camera_cfg(quantized_run, tmp_path, source=str(val_subset), shadow_every=1))
    live = json.loads(summary.read_text())
    offline_cfg = dataclasses.replace(quantized_run, evaluate=offline_deployed(quantized_run, tmp_path / "e.json"),
        data=dataclasses.replace(quantized_run.data, path=str(val_subset)))
    evaluate.run(offline_cfg)
    offline = json.loads((tmp_path / "e.json").read_text())
    assert live["frames"] == live["labelled_frames"] == offline["images"] == 40
    assert live["int8_accuracy"] == pytest.approx(offline["top1"], abs=1e-9)
    assert live["shadow_frames"] == 40 and live["status"] == "ended" and live["window"] is False


def test_replay_clip_through_the_live_path(quantized_run, tmp_path) -> None:
    val = Path(quantized_run.data.root) / "digits" / "val"
    split = scan_split(val, tuple(str(d) for d in range(10)))
    clip = make_clip(split, tmp_path / "clip.avi", 30, 4, (96, 96), seed=1)
    video = tmp_path / "annotated.avi"
    summary = loop.run(camera_cfg(quantized_run, tmp_path, source=f"replay:{clip}", shadow_every=2,
                                  video_out=str(video)))
    record = json.loads(summary.read_text())
    assert record["frames"] == 120 and record["shadow_frames"] == 60
    assert record["int8_accuracy"] > 0.6 and record["fp32_accuracy"] > 0.6
    assert record["top1_agreement"] >= 0.8
    assert set(record["latency_ms"]) == {"capture_wait", "preprocess", "int8", "fp32", "frame", "output",
                                         "capture_to_label"}
    assert record["shown_frames"] == 120 and record["results_dropped"] == 0 and record["shadow_skipped"] == 0
    assert record["latency_ms"]["fp32"]["count"] == 60
    reader = cv2.VideoCapture(str(video))
    assert int(reader.get(cv2.CAP_PROP_FRAME_COUNT)) == 120
    ok, frame = reader.read()
    assert ok and frame.shape == (96, 96, 3)


def test_max_frames_stops_and_still_writes_the_summary(quantized_run, val_subset, tmp_path) -> None:
    record = json.loads(loop.run(camera_cfg(quantized_run, tmp_path, source=str(val_subset),
                                            max_frames=5, preview_port=0)).read_text())
    assert record["frames"] == 5 and record["status"] == "max frames"


@pytest.mark.parametrize("spec, fragment", [("nowhere.mp4", "no such camera, file or folder"),
                                            ("7", "cannot open this camera"),
                                            ("csi://0", "built without GStreamer")])
def test_sources_that_cannot_open_say_why(spec: str, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        open_source(spec)


def _caps(pipeline: str) -> dict[str, str]:
    """The key=value fields of the NVMM caps filter (the second element) and of the source."""
    source, nvmm = pipeline.split(" ! ")[:2]
    fields = [f.strip() for f in nvmm.split(",")[1:]] + source.split()[1:]
    return dict(f.split("=", 1) for f in fields)


def test_csi_pipeline_defaults_and_hardware_conversion() -> None:
    pipeline = csi_pipeline(parse_csi("csi://0"), bgrx=accepts_bgrx(cv2.__version__))
    assert _caps(pipeline) == {"sensor-id": "0", "width": "1280", "height": "720", "framerate": "30/1"}
    assert "sensor-mode" not in pipeline and "videoconvert" not in pipeline
    assert pipeline.endswith("nvvidconv ! video/x-raw, format=BGRx ! appsink drop=true max-buffers=1 sync=false")
    assert parse_csi("csi://") == parse_csi("csi://0") == CsiRequest()


def test_csi_pipeline_carries_the_asked_mode_size_and_rate() -> None:
    request = parse_csi("csi://1?width=1920&height=1080&fps=60&mode=2")
    assert request == CsiRequest(sensor=1, width=1920, height=1080, fps=60, mode=2)
    pipeline = csi_pipeline(request, bgrx=True)
    assert _caps(pipeline) == {"sensor-id": "1", "sensor-mode": "2", "width": "1920", "height": "1080",
                               "framerate": "60/1"}
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 sensor-mode=2 ! video/x-raw(memory:NVMM), ")
    assert "videoconvert" not in pipeline


@pytest.mark.parametrize("version, bgrx", [("4.1.1", False), ("4.5.3", False), ("4.5.4", True),
                                           ("4.8.0", True), ("4.10.0-dev", True), ("5.0.0", True),
                                           ("unknown", False)])
def test_old_opencv_keeps_the_cpu_videoconvert(version: str, bgrx: bool) -> None:
    assert accepts_bgrx(version) is bgrx
    pipeline = csi_pipeline(parse_csi("csi://0?width=640&height=480"), bgrx=accepts_bgrx(version))
    assert ("videoconvert ! video/x-raw, format=BGR ! appsink" in pipeline) is not bgrx
    assert "width=640, height=480" in pipeline and "drop=true max-buffers=1" in pipeline


@pytest.mark.parametrize("spec, fragment", [
    ("csi://0?width=0", "parameter 'width' must be an integer from 16 to 8192, got '0'"),
    ("csi://0?height=9000", "parameter 'height' must be an integer from 16 to 8192, got '9000'"),
    ("csi://0?fps=-5", "parameter 'fps' must be an integer from 1 to 240, got '-5'"),
    ("csi://0?fps=29.97", "parameter 'fps' must be an integer from 1 to 240, got '29.97'"),
    ("csi://0?mode=16", "parameter 'mode' must be an integer from 0 to 15, got '16'"),
    ("csi://0?mode=", "parameter 'mode' must be an integer from 0 to 15, got ''"),
    ("csi://0?widht=1920", r"unknown parameter 'widht' \(choices: fps, height, mode, width\)"),
    ("csi://0?fps=30&fps=60", "parameter 'fps' given twice"),
    ("csi://0?width", "expected key=value pairs"),
    ("csi://cam0", "sensor id must be an integer from 0 to 255, got 'cam0'"),
    ("csi://0/1", "got a path or fragment after the sensor id"),
])
def test_bad_csi_parameters_are_refused_in_one_line(spec: str, fragment: str) -> None:
    for call in (parse_csi, open_source):  # refused before GStreamer is even looked for
        with pytest.raises(DataError, match=fragment) as raised:
            call(spec)
        message = str(raised.value)
        assert message.startswith(f"{spec}: ") and "\n" not in message


def test_bgrx_frames_become_bgr() -> None:
    frame = np.empty((12, 16, 4), np.uint8)  # (H, W, BGRx)
    frame[..., 0], frame[..., 1], frame[..., 2], frame[..., 3] = 10, 120, 250, 77
    frame[2, 3] = (1, 2, 3, 4)
    bgr = bgrx_to_bgr(frame)
    assert bgr.shape == (12, 16, 3) and bgr.dtype == np.uint8 and bgr.flags["C_CONTIGUOUS"]
    assert (bgr[0, 0] == (10, 120, 250)).all() and (bgr[2, 3] == (1, 2, 3)).all()
    assert np.array_equal(bgr, frame[..., :3])
    stages.expect_frame(bgr, "csi://0")
    with pytest.raises(DataError, match=r"expected a \(H, W, 4\) BGRx frame .*\(12, 16, 3\)"):
        bgrx_to_bgr(bgr)


def test_a_clip_for_another_model_is_refused_with_the_labels_it_cannot_match(quantized_run, tmp_path) -> None:
    clip = tmp_path / "c.avi"
    make_clip(scan_split(Path(quantized_run.data.root) / "digits" / "val", tuple(str(d) for d in range(10))),
              clip, 2, 1, (32, 32), seed=0)
    labels = json.loads(clip.with_suffix(".labels.json").read_text())
    labels["classes"] = ["cat", "dog"]
    clip.with_suffix(".labels.json").write_text(json.dumps(labels))
    with pytest.raises(DataError, match=r"2 class folder\(s\) match no label of the model \(10 labels\): cat, dog"):
        loop.run(camera_cfg(quantized_run, tmp_path, source=f"replay:{clip}"))


def test_a_lost_live_stream_is_retried_then_reported() -> None:
    frames = [(np.zeros((32, 32, 3), np.uint8), None)] * 3
    attempts = []

    def reopen() -> FrameSource:
        attempts.append(1)
        raise DataError("camera gone")

    capture = Capture(FrameSource("0", True, iter(frames)), reopen, retries=2, backoff_s=0.01)
    capture.start()
    items = []
    while (item := capture.get(timeout=5)) is not END:
        items.append(item)
    assert capture.lost and len(attempts) == 2 and 1 <= len(items) <= 3


def test_preprocessing_parity_holds_for_the_live_path(quantized_run) -> None:
    from pipeline.runners.registry import open_model

    _, info = open_model(quantized_run.run_dir / "model.fp32.onnx")
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    loop.check_preprocessing_parity(frame, info.preprocessing)
    wrong = loop.prepare(frame[:, :, ::-1].copy(), info.preprocessing)
    assert np.abs(wrong - loop.prepare(frame, info.preprocessing)).max() > 0.1


def test_mjpeg_preview_is_served_over_loopback() -> None:
    import urllib.request

    from pipeline.device.camera.preview import BOUNDARY, MjpegPreview

    preview = MjpegPreview(port=0)
    assert preview.url.startswith("http://127.0.0.1:")
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :32] = (0, 0, 255)
    try:
        preview.publish(frame)
        with urllib.request.urlopen(preview.url, timeout=5) as response:
            assert BOUNDARY in response.headers["Content-Type"]
            head = response.readline() + response.readline() + response.readline() + response.readline()
            length = int([line for line in head.split(b"\r\n") if line.startswith(b"Content-Length")][0].split()[1])
            jpeg = response.read(length)
    finally:
        preview.close()
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (48, 64, 3) and decoded[24, 10, 2] > 200 and decoded[24, 50, 2] < 50


def test_smoothing_changes_the_shown_label_not_the_measured_accuracy(quantized_run, val_subset, tmp_path) -> None:
    raw = json.loads(loop.run(camera_cfg(quantized_run, tmp_path, source=str(val_subset))).read_text())
    smooth = json.loads(loop.run(camera_cfg(quantized_run, tmp_path, source=str(val_subset),
                                            smoothing=0.9)).read_text())
    assert smooth["int8_accuracy"] == raw["int8_accuracy"]


def test_ctrl_c_ends_with_the_summary_not_a_traceback(quantized_run, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    frames = tmp_path / "frames"
    (frames / "x").mkdir(parents=True)
    for i in range(3000):
        cv2.imwrite(str(frames / "x" / f"{i:05d}.png"), np.full((16, 16, 3), i % 255, np.uint8))
    summary = tmp_path / "s.json"
    cmd = [sys.executable, "-m", "pipeline", "camera", "--config", "configs/digits.toml", "--headless",
           "--source", str(frames), "--summary", str(summary),
           "--set", f'run.root="{quantized_run.run.root}"', "--set", f'data.root="{quantized_run.data.root}"']
    # a suite started in the background (`make test &`) inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: the child starts with the default, as from a terminal
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = [proc.stdout.readline() for _ in range(2)]  # the models it runs, then frames flowing
    assert lines[0].startswith("models: ") and lines[1].startswith("camera: reading"), lines
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err[-1500:]
    record = json.loads(summary.read_text())
    assert record["status"] == "interrupted" and 0 < record["frames"] < 3000, record["frames"]


def test_window_opens_under_xvfb(quantized_run, val_subset, tmp_path) -> None:
    """Where Xvfb is installed: the loop shows its window on a virtual display, then ends."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    display = ":97"
    server = subprocess.Popen([xvfb, display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        summary = tmp_path / "w.json"
        cmd = [sys.executable, "-m", "pipeline", "camera", "--config", "configs/digits.toml",
               "--source", str(val_subset), "--max-frames", "10", "--summary", str(summary),
               "--set", f'run.root="{quantized_run.run.root}"', "--set", f'data.root="{quantized_run.data.root}"']
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert result.returncode == 0, result.stderr[-1500:]
    record = json.loads(summary.read_text())
    assert record["frames"] == 10 and record["window"] is True


def test_still_clip_accuracy_matches_offline_evaluation(quantized_run, val_subset, tmp_path) -> None:
    """The same 40 images through a lossless clip (FFV1, native 8×8, no motion) and the live
    path, against offline evaluation of the image files: the same accuracy."""
    split = scan_split(val_subset, tuple(str(d) for d in range(10)))
    clip = make_clip(split, tmp_path / "still.mkv", 0, 1, (8, 8), seed=0, motion=0.0)
    live = json.loads(loop.run(camera_cfg(quantized_run, tmp_path, source=f"replay:{clip}")).read_text())
    offline_cfg = dataclasses.replace(quantized_run, evaluate=offline_deployed(quantized_run, tmp_path / "e.json"),
        data=dataclasses.replace(quantized_run.data, path=str(val_subset)))
    evaluate.run(offline_cfg)
    offline = json.loads((tmp_path / "e.json").read_text())
    assert live["labelled_frames"] == 40
    assert live["int8_accuracy"] == pytest.approx(offline["top1"], abs=1e-9)


def test_a_frame_of_the_wrong_shape_is_named() -> None:
    with pytest.raises(DataError, match=r"cam0: frame of unexpected size or channels \(32, 32\)"):
        stages.expect_frame(np.zeros((32, 32), np.uint8), "cam0")
