"""The camera loop's overlapped stages on a paced synthetic camera (frames on the source's
own clock, like a real camera), with the real models of a tiny run and the real capture
thread: exact drop accounting, the newest frame winning, the FP32 shadow skipping rather
than stalling INT8. Throughput and latency figures live in ``make bench-camera``."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest

from pipeline.device.camera import loop
from pipeline.device.camera.capture import END, Capture
from pipeline.device.camera.paced import frame_index, parse_paced
from pipeline.device.camera.sources import open_source
from pipeline.device.camera.stages import Budget
from pipeline.errors import DataError


def camera(run, tmp_path, source: str, **changes):
    cam = dataclasses.replace(run.camera, source=source, headless=True, summary=str(tmp_path / "s.json"),
                              **changes)
    return dataclasses.replace(run, camera=cam)


def test_a_paced_source_keeps_its_clock_and_numbers_its_frames() -> None:
    frames = parse_paced("paced://200?frames=20&size=64x48")
    start = time.perf_counter()
    got = list(frames)
    elapsed = time.perf_counter() - start
    assert len(got) == frames.produced == 20 and got[0][0].shape == (48, 64, 3)
    assert [frame_index(f) for f, _ in got] == list(range(20))
    assert 19 / 200 <= elapsed < 19 / 200 + 0.5  # the last frame leaves at 19/200 s, not before


@pytest.mark.parametrize("spec, fragment", [("paced://0", "expected paced://"), ("paced://30?frames=0", "frames must be"),
                                            ("paced://30?size=4x4", "width must be"),
                                            ("paced://30?speed=2", "bad parameter")])
def test_bad_paced_specs_are_one_line(spec: str, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        open_source(spec)


def test_a_late_reader_always_gets_the_newest_frame_and_every_drop_is_counted() -> None:
    source = open_source("paced://400?frames=200&size=32x32")
    capture = Capture(source)
    capture.start()
    seen = []
    while True:
        item = capture.get(timeout=5)
        if item is END:
            break
        seen.append(frame_index(item[0]))
        time.sleep(0.01)  # a loop four times slower than the camera
    assert seen == sorted(seen) and seen[-1] == 199  # in order, and the last frame is never lost
    assert len(seen) + capture.dropped == 200  # exact: processed + dropped = produced
    assert capture.dropped > 100


def test_the_loop_on_a_fast_camera_drops_exactly_and_the_shadow_skips_instead_of_stalling(
        quantized_run, tmp_path) -> None:
    record = json.loads(loop.run(camera(quantized_run, tmp_path, "paced://1000?frames=600&size=320x240",
                                        shadow_every=1)).read_text())
    assert record["status"] == "ended"
    assert record["frames"] + record["dropped_frames"] == 600 and record["dropped_frames"] > 0
    assert record["shown_frames"] + record["results_dropped"] == record["frames"]
    # the FP32 shadow was offered every frame; what it could not take at once it skipped
    assert record["shadow_frames"] + record["shadow_skipped"] == record["frames"]
    assert record["latency_ms"]["capture_to_label"]["count"] == record["shown_frames"]


def test_a_camera_the_loop_keeps_up_with_drops_nothing(quantized_run, tmp_path) -> None:
    record = json.loads(loop.run(camera(quantized_run, tmp_path, "paced://30?frames=45&size=320x240",
                                        shadow_every=5)).read_text())
    assert record["frames"] == 45 and record["dropped_frames"] == 0 and record["results_dropped"] == 0
    c2l = record["latency_ms"]["capture_to_label"]
    assert c2l["count"] == 45 and c2l["p50"] < 1000 / 30  # labelled before the next frame arrives
    from pipeline.device.report import camera_lines

    line, = camera_lines(record)  # the report shows it as the user felt it
    assert f"capture to label p50 {c2l['p50']:.2f} / p90 {c2l['p90']:.2f} / p99 {c2l['p99']:.2f} ms" in line
    assert "45 frames" in line and "0 dropped" in line


def test_thread_budgets_default_to_the_cores_left_and_are_checked() -> None:
    from pipeline.config import CameraConfig
    from pipeline.errors import ConfigError

    assert Budget.from_config(CameraConfig(), cores=2) == Budget(int8=1, fp32=1, opencv=1)
    assert Budget.from_config(CameraConfig(), cores=8) == Budget(int8=7, fp32=1, opencv=1)
    assert Budget.from_config(CameraConfig(int8_threads=2, fp32_threads=2), cores=8).int8 == 2
    with pytest.raises(ConfigError, match="int8_threads"):
        CameraConfig(int8_threads=-1)


def test_a_faulty_live_path_stops_a_camera_of_known_size_before_its_first_frame(
        quantized_run, tmp_path, monkeypatch) -> None:
    """The probe frame is checked before the camera starts where the source says its size,
    so a wrong preprocessing costs no live frame; the first frame itself is checked at the end."""
    from tests.test_camera_parity import _with

    monkeypatch.setattr(loop, "prepare", _with(interpolation="nearest", resize=40))
    cfg = camera(quantized_run, tmp_path, "paced://30?frames=30&size=320x240")
    with pytest.raises(DataError, match=r"^preprocessing parity failed on a probe frame \(320x240\)"):
        loop.run(cfg)
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["frames"] == 0 and record["status"].startswith("error: preprocessing parity")


def test_the_shadow_runs_below_the_inference_threads_priority(quantized_run) -> None:
    import os
    import threading

    import numpy as np

    from pipeline.device.camera.stages import SHADOW_NICE, Shadow
    from pipeline.device.camera.stats import LoopStats
    from pipeline.runners.registry import open_model

    reference, info = open_model(quantized_run.run_dir / "model.fp32.onnx", 1)
    size = info.preprocessing.input_size
    shadow = Shadow(reference, info, LoopStats(), True, np.zeros((1, 3, size, size), np.float32))
    shadow.start()
    try:
        assert shadow.ready.wait(30) and shadow.error is None
        ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, shadow.native_id) == min(19, ours + SHADOW_NICE)
    finally:
        shadow.close()
