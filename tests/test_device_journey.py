"""The device journey in one process: bundle → unpack → engine → evaluate → camera → bench
→ report, for TARGET=jetson on a fake Orin Nano, with the TensorRT and pycuda EMULATOR of
tests/emulator standing in for JetPack's (its numbers are ONNX Runtime's). `make
device-sim` runs the same journey through Make in JetPack's Python; this is its fast twin.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.config import BundleConfig
from pipeline.device import bench, bundle, engine, evaluate, report, unpack
from pipeline.device.camera import loop
from pipeline.errors import RegressionError
from pipeline.imagefolder import laid_out_split
from tests.sim.jetson_root import BOARDS, write_root

SMALL = BundleConfig(eval_images=40, clip_images=4, clip_frames=3, clip_size=(64, 48))


@pytest.fixture()
def on_the_jetson(quantized_run, trt_emulator, tmp_path, monkeypatch):
    """A device run unpacked from a bundle of the quantized digits run, on a fake Orin Nano."""
    monkeypatch.setenv("EDGERESNET_SYSROOT", str(write_root(tmp_path / "root", BOARDS["orin-nano"])))
    val = laid_out_split(quantized_run.data, "val")
    archive = bundle.make_bundle(quantized_run.run_dir, tmp_path / "bundle-jetson.tar.gz", "jetson", val, SMALL)
    cfg = dataclasses.replace(
        quantized_run, run=dataclasses.replace(quantized_run.run, root=str(tmp_path / "device")),
        engine=dataclasses.replace(quantized_run.engine, target="jetson", bundle=str(archive)),
        evaluate=dataclasses.replace(quantized_run.evaluate, bench_runs=20),
        report=dataclasses.replace(quantized_run.report, history=str(tmp_path / "reports" / "history.sqlite")))
    unpack.run(cfg)
    return cfg


def test_the_jetson_journey_scores_and_gates_the_int8_engine(on_the_jetson, tmp_path) -> None:
    cfg = on_the_jetson
    built = engine.run(cfg)
    assert built == cfg.run_dir / "engines" / "jetson-orin-nano" / "model.int8.engine"  # jetson resolved once
    evaluate.run(cfg)
    int8 = json.loads((cfg.run_dir / "eval" / "tensorrt-int8.json").read_text())
    fp32 = json.loads((cfg.run_dir / "eval" / "tensorrt-fp32.json").read_text())
    assert int8["images"] == fp32["images"] == 40 and int8["target"] == "jetson-orin-nano"
    assert Path(int8["versus_reference"]["reference"]).name == "model.fp32.engine"
    # evaluate feeds batches of 32; the Orin Nano profile takes at most 8: the runner splits them,
    # and the emulated engine's answers are ONNX Runtime's on the same Q/DQ model
    assert int8["batching"] == {"fed": 32, "runs": 8}
    ort = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, target="cpu"),
                              evaluate=dataclasses.replace(cfg.evaluate, model=str(cfg.run_dir / "model.int8.onnx"),
                                                           out=str(tmp_path / "ort.json")))
    evaluate.run(ort)
    assert json.loads((tmp_path / "ort.json").read_text())["top1"] == int8["top1"]

    camera = dataclasses.replace(cfg, camera=dataclasses.replace(
        cfg.camera, source=f"replay:{cfg.run_dir / 'clip' / 'replay.avi'}", headless=True, shadow_every=2,
        summary=str(tmp_path / "camera.json")))
    live = json.loads(loop.run(camera).read_text())
    assert live["frames"] == 12 and live["shadow_frames"] == 6 and live["status"] == "ended"
    assert Path(live["inputs"]["model"]["path"]).name == "model.int8.engine"

    bench.run(cfg)
    timed = json.loads((cfg.run_dir / "bench" / "tensorrt-int8.json").read_text())
    assert timed["target"] == "jetson-orin-nano" and set(timed["device_ms"]) == {"h2d_ms", "compute_ms", "d2h_ms"}

    first = json.loads(report.run(cfg).read_text())
    row = next(r for r in first["rows"] if r["label"] == "tensorrt-int8")
    assert first["deployed"] == "tensorrt-int8" and first["failures"] == []
    assert row["drop"] == int8["versus_reference"]["top1_drop"] and row["agreement"] is not None
    assert first["environment"]["jetson_state"]["clocks_locked"] is True


def test_an_engine_that_disagrees_with_its_fp32_reference_fails_the_report(on_the_jetson) -> None:
    cfg = on_the_jetson
    engine.run(cfg)
    evaluate.run(cfg)
    scored = cfg.run_dir / "eval" / "tensorrt-int8.json"
    record = json.loads(scored.read_text())
    record["versus_reference"]["top1_drop"] = 0.02
    scored.write_text(json.dumps(record))
    with pytest.raises(RegressionError, match=r"tensorrt-int8 top-1 is 2.00 points below FP32 \(budget 0.50\)"):
        report.run(cfg)
