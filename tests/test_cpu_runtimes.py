"""OpenVINO beside ONNX Runtime on the CPU, and what the cpu target deploys: real models of
the digits run on both runtimes, real bench figures choosing the deployment."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.device import bench, evaluate
from pipeline.device.camera import loop
from pipeline.device.deployment import choose_cpu, deployment
from pipeline.errors import ConfigError, DataError, StaleArtifactError
from pipeline.imagefolder import laid_out_split
from pipeline.preprocess import load_images
from pipeline.runners import compare_runners
from pipeline.runners.openvino_runner import has_bf16
from pipeline.runners.registry import open_model
from targets.profile import get_profile

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def val_batches(quantized_run):
    """64 digits val images, preprocessed as the models were trained, in batches of 16."""
    split = laid_out_split(quantized_run.data, "val")
    _, info = open_model(quantized_run.run_dir / "model.fp32.onnx")
    pre, step = info.preprocessing, max(1, len(split.files) // 64)
    files, labels = split.files[::step][:64], np.asarray(split.labels[::step][:64])
    inputs = pre.normalize(load_images(files, pre.prepare, 1, "val"))
    return [(inputs[i:i + 16], labels[i:i + 16]) for i in range(0, len(inputs), 16)]


def test_openvino_fp32_is_true_f32_and_matches_onnxruntime(quantized_run, val_batches) -> None:
    """The FP32 reference must not be BF16 in disguise: OpenVINO's default on AMX is BF16."""
    path = quantized_run.run_dir / "model.fp32.onnx"
    ort, _ = open_model(path, 1)
    ov, info = open_model(path, 1, "openvino")
    assert info.runtime == "openvino" and info.precision == "fp32" and ov.inference_precision == "f32"
    parity = compare_runners(ort, ov, val_batches, atol=1e-4, rtol=1e-4)
    assert parity.tolerance_ratio <= 1 and parity.top1_agreement == 1 and parity.images == 64


def test_openvino_runs_the_tensorrt_rendering_as_onnxruntime_does(quantized_run, val_batches) -> None:
    """model.int8.onnx, the file engines are built from, on both runtimes: same classes."""
    path = quantized_run.run_dir / "model.int8.onnx"
    ort, _ = open_model(path, 1)
    ov, info = open_model(path, 2, "openvino")
    assert info.precision == "int8" and ov.threads == 2
    parity = compare_runners(ort, ov, val_batches, atol=0.05, rtol=0.05)
    assert parity.top1_agreement >= 0.98, parity


@pytest.mark.skipif(not has_bf16(), reason="this CPU has no BF16 (AVX512-BF16 or AMX)")
def test_bf16_is_its_own_labelled_precision(quantized_run, val_batches) -> None:
    path = quantized_run.run_dir / "model.fp32.onnx"
    bf16, info = open_model(path, 1, "openvino", "bf16")
    assert info.precision == "bf16" and bf16.precision == "bf16" and bf16.inference_precision == "bf16"
    parity = compare_runners(open_model(path, 1, "openvino")[0], bf16, val_batches, atol=1e-4, rtol=1e-4)
    assert parity.max_abs_error > 0, "BF16 gave bit-identical logits: it did not run in BF16"
    assert parity.top1_agreement >= 0.95


def test_precisions_and_runtimes_a_file_cannot_run_in_are_refused(quantized_run, tmp_path) -> None:
    out = quantized_run.run_dir
    with pytest.raises(ConfigError, match="bf16 runs an FP32 model in BF16; this one is int8"):
        open_model(out / "model.int8.onnx", 1, "openvino", "bf16")
    with pytest.raises(ConfigError, match=r"onnxruntime runs this file as it is, not in 'bf16'"):
        open_model(out / "model.fp32.onnx", 1, "", "bf16")
    with pytest.raises(ConfigError, match="openvino does not read .pt files; torch does"):
        open_model(out / "model.pt", 1, "openvino")
    with pytest.raises(ConfigError, match="unknown runtime 'tvm'; expected one of torch, onnxruntime, openvino"):
        open_model(out / "model.fp32.onnx", 1, "tvm")
    broken = tmp_path / "model.fp32.onnx"
    broken.write_bytes((out / "model.fp32.onnx").read_bytes()[:5000])
    with pytest.raises(StaleArtifactError, match=f"{broken}: "):
        open_model(broken, 1, "openvino")


def test_evaluate_scores_every_cpu_row(quantized_run) -> None:
    folder = quantized_run.run_dir / "eval"
    rows = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    wanted = {"onnxruntime-fp32", "torch-fp32", "onnxruntime-int8", "onnxruntime-int8-cpu", "openvino-fp32",
              "openvino-int8", "openvino-int8-cpu"} | ({"openvino-bf16"} if has_bf16() else set())
    assert wanted <= set(rows)
    for label in wanted:
        assert rows[label]["runtime"] == label.split("-")[0] and rows[label]["images"] > 0
        assert rows[label]["versus_reference"]["reference"].endswith("model.fp32.onnx")
    assert rows["openvino-fp32"]["versus_reference"]["top1_agreement"] == 1.0
    assert rows["openvino-int8"]["top1"] >= rows["onnxruntime-fp32"]["top1"] - 0.05


def test_bench_chooses_the_deployment_from_its_own_figures(quantized_run) -> None:
    """Every candidate of the choice is a row bench measured, and the rule holds on them:
    model.int8.onnx unless the UINT8 rendering is more than same_file_margin faster."""
    choice = json.loads((quantized_run.run_dir / "deploy" / "cpu.json").read_text())
    profile = get_profile("cpu")
    measured = {p.stem: json.loads(p.read_text())["latency_ms"]["median"]
                for p in (quantized_run.run_dir / "bench").glob("*.json") if p.stem in choice["p50_ms"]}
    assert measured == choice["p50_ms"]
    assert set(measured) == {"onnxruntime-int8", "onnxruntime-int8-cpu", "openvino-int8", "openvino-int8-cpu"}
    same = min(("onnxruntime-int8", "openvino-int8"), key=measured.__getitem__)
    if measured[same] <= min(measured.values()) * (1 + profile.same_file_margin):
        assert choice["label"] == same and "model.int8.onnx" in choice["why"]
    else:
        assert choice["label"] == min(measured, key=measured.__getitem__) and "beyond same_file_margin" in choice["why"]
    chosen = deployment(quantized_run.run_dir, profile)
    assert chosen.model.label == choice["label"] and chosen.reference.label == choice["reference"]
    assert chosen.reference.runtime == chosen.model.runtime and chosen.reference.path.name == "model.fp32.onnx"


def test_the_choice_rule_prefers_the_engines_file_within_the_margin() -> None:
    profile = get_profile("cpu")  # same_file_margin 0.10
    near = choose_cpu(profile, {"onnxruntime-int8-cpu": 1.00, "openvino-int8": 1.08, "onnxruntime-fp32": 0.5})
    assert near["label"] == "openvino-int8" and near["reference"] == "openvino-fp32"
    assert "within same_file_margin (10%) of the fastest, onnxruntime-int8-cpu" in near["why"]
    far = choose_cpu(profile, {"onnxruntime-int8-cpu": 1.00, "openvino-int8": 1.5, "onnxruntime-int8": 3.0})
    assert far["label"] == "onnxruntime-int8-cpu" and "openvino-int8, 1.500 ms) is 50% slower" in far["why"]
    fixed = dataclasses.replace(profile, runtime="onnxruntime")
    assert choose_cpu(fixed, {"onnxruntime-int8-cpu": 1.0, "openvino-int8": 0.5})["label"] == "onnxruntime-int8-cpu"
    with pytest.raises(DataError, match="none of the measured models .* is one it may deploy"):
        choose_cpu(profile, {"onnxruntime-fp32": 1.0, "torch-fp32": 2.0})


def test_a_profile_that_fixes_runtime_and_file_needs_no_bench(tmp_path) -> None:
    fixed = dataclasses.replace(get_profile("cpu"), runtime="openvino", int8_rendering="int8")
    chosen = deployment(tmp_path, fixed)
    assert (chosen.model.label, chosen.model.path.name, chosen.reference.label) == \
        ("openvino-int8", "model.int8.onnx", "openvino-fp32")
    with pytest.raises(StaleArtifactError, match="no runtime chosen for target cpu.*make bench TARGET=cpu"):
        deployment(tmp_path, get_profile("cpu"))


def test_a_choice_measured_on_another_cpu_is_refused(quantized_run, tmp_path) -> None:
    choice = json.loads((quantized_run.run_dir / "deploy" / "cpu.json").read_text())
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "cpu.json").write_text(json.dumps({**choice, "cpu": "Cortex-A78AE"}))
    with pytest.raises(StaleArtifactError, match=r"chosen on another CPU \(Cortex-A78AE; this one is"):
        deployment(tmp_path, get_profile("cpu"))
    (tmp_path / "deploy" / "cpu.json").write_text(json.dumps({**choice, "label": "tensorrt-int8"}))
    with pytest.raises(StaleArtifactError, match="not a deployment choice for target cpu"):
        deployment(tmp_path, get_profile("cpu"))


def test_profiles_refuse_a_cpu_runtime_for_a_gpu_and_unknown_renderings() -> None:
    with pytest.raises(ConfigError, match="a desktop target runs tensorrt, got 'openvino'"):
        dataclasses.replace(get_profile("desktop"), runtime="openvino")
    with pytest.raises(ConfigError, match="int8_rendering: expected one of"):
        dataclasses.replace(get_profile("cpu"), int8_rendering="int4")
    with pytest.raises(ConfigError, match="CPU runtimes deploy int8 or fp32"):
        dataclasses.replace(get_profile("cpu"), precision="fp16")


def test_camera_on_the_cpu_target_runs_the_chosen_runtime_and_an_f32_shadow(quantized_run, tmp_path) -> None:
    split = laid_out_split(quantized_run.data, "val")
    folder = tmp_path / "frames" / "0"
    folder.mkdir(parents=True)
    for image in [f for f, label in zip(split.files, split.labels) if label == 0][:6]:
        (folder / image.name).write_bytes(image.read_bytes())
    for digit in range(1, 10):
        (tmp_path / "frames" / str(digit)).mkdir()
    cam = dataclasses.replace(quantized_run.camera, source=str(tmp_path / "frames"), headless=True, shadow_every=1,
                              summary=str(tmp_path / "summary.json"))
    record = json.loads(loop.run(dataclasses.replace(quantized_run, camera=cam)).read_text())
    chosen = deployment(quantized_run.run_dir, get_profile("cpu"))
    assert record["runtime"] == record["reference_runtime"] == chosen.model.runtime
    assert record["precision"] == chosen.model.label.split("-", 1)[1] and record["reference_precision"] == "fp32"
    assert record["frames"] == record["shadow_frames"] == 6


def test_bench_on_the_cpu_target_times_both_runtimes_in_the_same_rounds(quantized_run) -> None:
    labels = {p.stem for p in (quantized_run.run_dir / "bench").glob("*.json")}
    assert {"onnxruntime-fp32", "openvino-fp32", "onnxruntime-int8-cpu", "openvino-int8"} <= labels
    record = json.loads((quantized_run.run_dir / "bench" / "openvino-int8.json").read_text())
    assert record["runtime"] == "openvino" and record["precision"] == "int8" and record["latency_ms"]["runs"] == 30


def test_evaluate_any_onnx_on_openvino(quantized_run, tmp_path) -> None:
    cfg = dataclasses.replace(quantized_run, evaluate=dataclasses.replace(
        quantized_run.evaluate, model=str(quantized_run.run_dir / "model.int8.onnx"), runtime="openvino",
        out=str(tmp_path / "e.json")))
    evaluate.run(cfg)
    record = json.loads((tmp_path / "e.json").read_text())
    offline = json.loads((quantized_run.run_dir / "eval" / "openvino-int8.json").read_text())
    assert record["top1"] == offline["top1"] and record["images"] == offline["images"]


def test_bench_module_lists_every_cpu_row(quantized_run) -> None:
    rows = bench.available_models(quantized_run.run_dir, get_profile("cpu"))
    assert list(rows)[0] == "onnxruntime-fp32", "the reference must come first"
    assert rows["openvino-int8"].path == Path(quantized_run.run_dir / "model.int8.onnx")


def test_no_runtime_burns_the_cores_while_it_waits(quantized_run) -> None:
    """bench, bench-quant and the camera hold several sessions in one process and run them in
    turns: a pool that spins after its work takes the cores from the next one (measured:
    two or three ONNX Runtime sessions run in turns slowed each other 2-4x). The process's
    CPU time over 0.4 s after each runtime's last run, 2 threads: ONNX Runtime with its
    default spinning used 0.055 s here, with spinning off 0.0001 s; OpenVINO 0.001 s."""
    import resource
    import time

    for runtime in ("onnxruntime", "openvino"):
        runner, info = open_model(quantized_run.run_dir / "model.int8.onnx", 2, runtime)
        size = info.preprocessing.input_size
        batch = np.zeros((1, 3, size, size), np.float32)
        for _ in range(20):
            runner.run(batch)
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.4)
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        runner.close()
        assert used < 0.02, f"{runtime}: {used:.3f} s of CPU while idle for 0.4 s"


def test_two_threads_first_calls_at_once_do_not_deadlock(quantized_run) -> None:
    """The camera's INT8 and shadow threads call their OpenVINO runners for the first time at
    the same moment; OpenVINO's NumPy bridge set up in two threads at once hung them both
    (seen in the camera loop), so the runner makes its first call where it is opened. In a
    fresh interpreter: this one set the bridge up long ago."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = f"""
import threading, numpy as np
from pipeline.runners.registry import open_model
runners = [open_model({str(quantized_run.run_dir)!r} + '/' + name, 1, 'openvino')
           for name in ('model.int8.onnx', 'model.fp32.onnx')]
size = runners[0][1].preprocessing.input_size
start = threading.Barrier(2)
def work(runner):
    start.wait()
    for _ in range(3):
        runner.run(np.zeros((1, 3, size, size), np.float32))
threads = [threading.Thread(target=work, args=(r,)) for r, _ in runners]
[t.start() for t in threads]
[t.join() for t in threads]
print('both done')
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "both done" in result.stdout, result.stderr[-1500:]
