"""The capture thread and the loop's start and end, on real sources: FrameSource objects over
real frames and generators, clips written by cv2.VideoWriter, real sockets for ports and
streams (issue 15, item 4)."""
from __future__ import annotations

import dataclasses
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pytest

from pipeline.device import report
from pipeline.device.camera import loop
from pipeline.device.camera.capture import END, Capture, Handoff
from pipeline.device.camera.sources import FrameSource, open_source
from pipeline.device.camera.stats import STAGES, LoopStats, write_session
from pipeline.errors import DataError, PipelineError

Frame = Tuple[np.ndarray, Optional[str]]


class Released:
    """Stands in the ``release`` list of a FrameSource, as a VideoCapture does: counts release()."""

    def __init__(self) -> None:
        self.calls = 0

    def release(self) -> None:
        self.calls += 1


def frames(count: int, then: Optional[Exception] = None, every_s: float = 0.0) -> Iterator[Frame]:
    """``count`` labelled frames ("0", "1", ...), each after ``every_s`` (a camera's frame
    interval: the read blocks), then ``then`` raised if given."""
    for i in range(count):
        time.sleep(every_s)
        yield np.full((16, 16, 3), i, np.uint8), str(i)
    if then is not None:
        raise then


def drain(capture: Capture, timeout: float = 5.0) -> List[object]:
    """Everything the loop would get, up to END."""
    items = []
    while (item := capture.get(timeout=timeout)) is not END:
        items.append(item)
    return items


def test_the_last_frames_of_a_file_reach_the_loop_before_end() -> None:
    released = Released()
    capture = Capture(FrameSource("clip.avi", False, frames(8), release=[released]))
    capture.start()
    time.sleep(0.5)  # the loop is slower than capture: the queue of 8 is full when the file ends
    assert [item[1] for item in drain(capture)] == [str(i) for i in range(8)]
    capture.join(timeout=5)
    assert not capture.is_alive() and released.calls == 1


def test_an_exception_of_a_live_source_reaches_the_loop_before_end() -> None:
    broken = DataError("camera broke")
    capture = Capture(FrameSource("0", True, frames(1, then=broken)), None)
    capture.start()
    time.sleep(0.5)  # the exception waits in the queue of one when the thread ends
    items = drain(capture)
    assert items and items[-1] is broken, items


def test_end_arrives_after_the_frame_a_lost_camera_left_behind() -> None:
    def reopen() -> FrameSource:
        raise DataError("camera gone")

    released = Released()
    capture = Capture(FrameSource("0", True, frames(1), release=[released]), reopen, retries=0)
    capture.start()
    time.sleep(0.3)  # END waits for the room the untaken frame holds; it never displaces it
    assert [item[1] for item in drain(capture, timeout=2)] == ["0"]
    capture.join(timeout=5)
    assert capture.lost and released.calls == 1


def test_a_live_handoff_counts_every_replaced_item_while_the_reader_races_it() -> None:
    """The writer replacing a stale item while the reader takes it (the interleaving that
    once let ``queue.Empty`` escape the capture thread): no exception, the reader's items in
    order, and taken + dropped = written, exactly."""
    handoff, taken = Handoff(True, threading.Event()), []

    def read() -> None:
        while (item := handoff.get()) != "end":
            taken.append(item)

    reader = threading.Thread(target=read, daemon=True)  # a failing writer must not hang the run
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes: the race happens
    try:
        reader.start()
        for i in range(20000):
            handoff.put(i)
        handoff.put("end", final=True)
        reader.join(timeout=10)
    finally:
        sys.setswitchinterval(switch)
    assert taken == sorted(taken) and taken[-1] == 19999
    assert len(taken) + handoff.dropped == 20000 and handoff.dropped > 0


def test_a_reopened_source_releases_the_one_it_replaces() -> None:
    first, second = Released(), Released()
    opened = [FrameSource("0", True, frames(2), release=[second])]
    released_before_reopen = []

    def reopen() -> FrameSource:
        released_before_reopen.append(first.calls)  # a V4L2 device opens again only once let go
        if not opened:
            raise DataError("camera gone")
        return opened.pop()

    capture = Capture(FrameSource("0", True, frames(2), release=[first]), reopen, retries=1, backoff_s=0.01)
    capture.start()
    drain(capture)
    capture.join(timeout=5)
    assert capture.reconnects == 1 and capture.lost
    assert (first.calls, second.calls) == (1, 1) and released_before_reopen == [1, 1]


def test_stop_joins_a_thread_blocked_on_a_full_queue_and_releases_the_source() -> None:
    released = Released()
    capture = Capture(FrameSource("clip.avi", False, frames(50), release=[released]))
    capture.start()
    deadline = time.monotonic() + 5
    while capture.out.items.qsize() < capture.out.size and time.monotonic() < deadline:
        time.sleep(0.01)
    capture.stop()
    assert not capture.is_alive() and released.calls == 1


def test_stop_joins_a_thread_waiting_for_a_slow_camera_frame() -> None:
    released = Released()
    capture = Capture(FrameSource("0", True, frames(100, every_s=0.3), release=[released]), None)
    capture.start()
    capture.get(timeout=5)  # the thread now waits about 0.3 s in the camera's read
    capture.stop()
    assert not capture.is_alive() and released.calls == 1
    capture.stop()  # a second stop (the stages and the loop both stop it) releases nothing twice
    assert released.calls == 1


def test_stop_before_start_releases_the_source() -> None:
    released = Released()
    Capture(FrameSource("0", True, frames(1), release=[released])).stop()
    assert released.calls == 1


# The loop's start and end: the digits run's models on a small folder of frames.

@pytest.fixture()
def frames_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return folder


def session_cfg(run, root: Path, **changes):
    """``run``'s models, but camera summaries in a run folder of this test's own."""
    models = {"model": str(run.run_dir / "model.int8.cpu.onnx"), "reference": str(run.run_dir / "model.fp32.onnx")}
    cam = dataclasses.replace(run.camera, headless=True, summary="", **{**models, **changes})
    return dataclasses.replace(run, camera=cam, run=dataclasses.replace(run.run, root=str(root)))


def strict_json(path: Path) -> dict:
    """The file as JSON that any parser reads: NaN and Infinity are refused."""
    def refuse(name: str) -> None:
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_two_sessions_in_one_second_write_two_summaries(quantized_run, frames_folder, tmp_path) -> None:
    cfg = session_cfg(quantized_run, tmp_path / "runs", source=str(frames_folder), max_frames=1)
    loop.run(cfg)  # warm: the second and third run open the models from the page cache
    time.sleep(1.02 - time.time() % 1)  # just after a second starts: both sessions share it (~0.1 s each)
    paths = {loop.run(cfg), loop.run(cfg)}
    assert len(paths) == 2 and len(list((cfg.run_dir / "camera").glob("*.json"))) == 3
    assert all(strict_json(p)["status"] == "max frames" for p in paths)


def test_summaries_of_one_start_second_get_names_of_their_own(tmp_path) -> None:
    started = 1_700_000_000.5
    first = write_session(tmp_path, started, {"frames": 1})
    second = write_session(tmp_path, started, {"frames": 2})
    assert (first.name, second.name) == ("1700000000-000.json", "1700000000-001.json")
    assert [json.loads(p.read_text())["frames"] for p in sorted(tmp_path.iterdir())] == [1, 2]


def test_empty_stages_are_null_and_the_summary_is_strict_json() -> None:
    stats = LoopStats()
    stats.latency_ms["frame"].extend([1.0, 2.0, 3.0])
    summary = stats.summary()
    assert summary["latency_ms"]["fp32"] == {"p50": None, "p90": None, "p99": None, "count": 0}
    assert summary["latency_ms"]["frame"]["p50"] == 2.0
    json.dumps(summary, allow_nan=False)
    json.dumps(LoopStats().summary(), allow_nan=False)
    assert set(summary["latency_ms"]) == set(STAGES)


def test_a_busy_preview_port_leaves_an_error_summary_the_report_skips(quantized_run, frames_folder,
                                                                       tmp_path, capsys) -> None:
    cfg = session_cfg(quantized_run, tmp_path / "runs", source=str(frames_folder), max_frames=2)
    good = loop.run(cfg)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        failed_cfg = session_cfg(quantized_run, tmp_path / "runs", source=str(frames_folder),
                                 preview_port=busy.getsockname()[1])
        with pytest.raises(PipelineError, match=f"preview 127.0.0.1:{busy.getsockname()[1]}: cannot listen there"):
            loop.run(failed_cfg)
    sessions = sorted((cfg.run_dir / "camera").glob("*.json"))
    assert len(sessions) == 2
    failed = strict_json(next(p for p in sessions if p != good))
    assert failed["status"].startswith("error: ") and failed["frames"] == 0, failed["status"]
    assert failed["latency_ms"]["frame"]["p50"] is None and failed["seconds"] < 60
    assert report.latest_camera(cfg.run_dir)["status"] == "max frames"
    assert "error: " in capsys.readouterr().out  # print_summary with null percentiles


def test_a_source_that_cannot_open_writes_no_summary(quantized_run, tmp_path) -> None:
    cfg = session_cfg(quantized_run, tmp_path / "runs", source=str(tmp_path / "nowhere.mp4"))
    with pytest.raises(DataError, match="no such camera"):
        loop.run(cfg)
    assert not list((cfg.run_dir / "camera").glob("*.json"))
    assert report.latest_camera(cfg.run_dir) is None


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """host:port of a server that accepts connections and never answers (a stalled camera)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes the handshakes; nobody reads or writes
        yield "127.0.0.1:%d" % server.getsockname()[1]


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_a_stream_that_never_answers_fails_within_the_timeout(silent_server, scheme) -> None:
    url = f"{scheme}://{silent_server}/stream"
    t0 = time.monotonic()
    with pytest.raises(DataError, match="cannot open this camera or stream") as raised:
        open_source(url, timeout_s=2.0)
    assert time.monotonic() - t0 < 2.0 + 3.0 and "\n" not in str(raised.value)


def test_the_loop_opens_streams_with_its_timeout(quantized_run, silent_server, tmp_path) -> None:
    cfg = session_cfg(quantized_run, tmp_path / "runs", source=f"http://{silent_server}/video.mjpg",
                      timeout_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(DataError, match="cannot open this camera or stream"):
        loop.run(cfg)
    assert time.monotonic() - t0 < 2.0 + 3.0
