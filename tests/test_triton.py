"""The Triton model repository and the served model.

Every config.pbtxt is parsed with protobuf into Triton's own ``ModelConfig`` message
(shipped by tritonclient), never string-matched. The TensorRT plan comes from an engine
built by the emulator through the real engine stage. The served model runs behind a real
Triton server (PyTriton's bundled ``tritonserver``) and is asked over HTTP and gRPC with
real preprocessed images; its answers must be the runner's, as ``evaluate`` scores them.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.__main__ import main
from pipeline.config import Config, TritonConfig
from pipeline.device import engine, triton
from pipeline.errors import ArtifactWriteError, ConfigError, MissingDependencyError, StaleArtifactError
from pipeline.onnx_meta import read_metadata
from targets.profile import get_profile

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")
from google.protobuf import text_format  # noqa: E402  (protobuf comes with tritonclient)

IDENTITY = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt": "10.3.0",
            "cuda": "12.6", "jetpack": "6.2"}
TRT_TARGET = "jetson-orin-nano"


def with_target(cfg: Config, target: str, **triton_settings) -> Config:
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, target=target),
                               triton=dataclasses.replace(cfg.triton, **triton_settings))


def parse(folder: Path):
    """A model folder's config.pbtxt as Triton reads it: protobuf text format → ModelConfig."""
    return text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), pb.ModelConfig())


def copied_run(run: Config, tmp_path: Path) -> Config:
    """The quantized run's two ONNX files in a run of their own, to break or fail."""
    cfg = dataclasses.replace(run, run=dataclasses.replace(run.run, root=str(tmp_path), name="copy"))
    cfg.run_dir.mkdir(parents=True)
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        shutil.copy(run.run_dir / name, cfg.run_dir / name)
    return cfg


def check_model(folder: Path, source: Path, platform: str, kind: str, max_batch: int, names: list) -> None:
    """One model folder against Triton's schema and the model it came from."""
    config = parse(folder)
    assert config.name == folder.name and config.platform == platform
    assert config.max_batch_size == max_batch
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), inp.data_type) == ("input", [3, 32, 32], pb.TYPE_FP32)
    assert inp.format == pb.ModelInput.FORMAT_NCHW
    assert (out.name, list(out.dims), out.data_type) == ("logits", [len(names)], pb.TYPE_FP32)
    assert (folder / out.label_filename).read_text(encoding="utf-8").splitlines() == names
    (group,) = config.instance_group
    assert group.kind == getattr(pb.ModelInstanceGroup, kind) and group.count == 1
    assert config.HasField("dynamic_batching")
    assert all(size <= max_batch for size in config.dynamic_batching.preferred_batch_size)
    served = folder / "1" / ("model.plan" if platform == "tensorrt_plan" else "model.onnx")
    assert served.read_bytes() == source.read_bytes()  # copied as it is: nothing prepended
    pre = json.loads(config.parameters[triton.PREPROCESSING_KEY].string_value)
    assert pre == read_metadata(source if source.suffix == ".onnx" else folder.parent.parent / "model.fp32.onnx")[
        "preprocessing"]


@pytest.fixture(scope="module")
def cpu_repository(quantized_run: Config) -> Path:
    return triton.run(with_target(quantized_run, "cpu"))


def test_cpu_repository_holds_both_onnx_models_valid_against_tritons_schema(quantized_run, cpu_repository) -> None:
    out = quantized_run.run_dir
    name = triton.model_name(quantized_run.run_name)
    assert cpu_repository == out / "model_repository"
    assert sorted(p.name for p in cpu_repository.iterdir()) == [f"{name}_fp32_onnx", f"{name}_int8_onnx"]
    names = list(read_metadata(out / "model.fp32.onnx")["class_names"])
    for precision in ("fp32", "int8"):
        check_model(cpu_repository / f"{name}_{precision}_onnx", out / f"model.{precision}.onnx",
                    "onnxruntime_onnx", "KIND_CPU", get_profile("cpu").max_batch, names)
    assert not list(out.glob(".model_repository.*"))  # no staging folder left behind
    record = json.loads((out / "model_repository.json").read_text())
    assert record["target"] == "cpu" and set(record["models"]) == {f"{name}_fp32_onnx", f"{name}_int8_onnx"}
    assert record["inputs"][f"{name}_int8_onnx"]["path"] == str(out / "model.int8.onnx")


def test_the_cli_says_the_cpu_target_has_no_plan(quantized_run, capsys) -> None:
    assert main(["triton", "--run", quantized_run.run_name, "--target", "cpu",
                 "--set", f"run.root={json.dumps(quantized_run.run.root)}"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "no TensorRT engine" in line] == [
        "target cpu runs a CPU runtime: no TensorRT engine, so the repository holds the ONNX Runtime models only"]


def test_tensorrt_target_repository_holds_the_engine_as_built(quantized_run, trt_emulator, tmp_path) -> None:
    trt = trt_emulator.trt
    cfg = copied_run(quantized_run, tmp_path)
    plan = engine.build_one(trt, cfg.run_dir, get_profile(TRT_TARGET), "int8", IDENTITY)
    profile = get_profile(TRT_TARGET)
    folder = triton.run(with_target(cfg, TRT_TARGET, preferred_batch=(4, 8), max_queue_delay_us=200))
    name = triton.model_name(cfg.run_name)
    assert sorted(p.name for p in folder.iterdir()) == [f"{name}_fp32_onnx", f"{name}_int8_onnx", f"{name}_int8_trt"]
    names = list(read_metadata(cfg.run_dir / "model.fp32.onnx")["class_names"])
    check_model(folder / f"{name}_int8_trt", plan, "tensorrt_plan", "KIND_GPU", profile.max_batch, names)
    # the plan file as TensorRT's runtime (Triton's TensorRT backend) deserializes it
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine((folder / f"{name}_int8_trt/1/model.plan").read_bytes())
    config = parse(folder / f"{name}_int8_trt")
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 200
    for precision in ("fp32", "int8"):  # ONNX on the GPU of a GPU target, as Triton users there expect
        check_model(folder / f"{name}_{precision}_onnx", cfg.run_dir / f"model.{precision}.onnx",
                    "onnxruntime_onnx", "KIND_GPU", profile.max_batch, names)
    with pytest.raises(ConfigError, match="triton.preferred_batch: expected sizes up to target jetson-orin-nano's "
                                          "max_batch 8, got 16"):
        triton.run(with_target(cfg, TRT_TARGET, preferred_batch=(4, 16)))
    # an engine from an ONNX that has changed since is refused
    changed = onnx.load(str(cfg.run_dir / "model.int8.onnx"))
    changed.doc_string = "re-quantized since"
    onnx.save(changed, str(cfg.run_dir / "model.int8.onnx"))
    with pytest.raises(StaleArtifactError, match="model.int8.engine: was made from another"):
        triton.run(with_target(cfg, TRT_TARGET))


def test_a_tensorrt_target_without_its_engine_is_refused(quantized_run, tmp_path) -> None:
    cfg = copied_run(quantized_run, tmp_path)
    with pytest.raises(StaleArtifactError, match="engines/datacenter/model.int8.engine: not built; run make engine "
                                                 "TARGET=datacenter first"):
        triton.run(with_target(cfg, "datacenter"))
    assert not (cfg.run_dir / "model_repository").exists()


def classifier(path: Path, shape: list, elem_type: int = TensorProto.FLOAT) -> Path:
    """A tiny ONNX with one input of ``shape`` pooled to (N, C) logits."""
    rank4 = len(shape) == 4
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])] \
        if rank4 else [helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem_type, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", shape[1]])])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("shape, elem_type, fragment", [
    (["N", 10], TensorProto.FLOAT, "input 'x' is not a \\(batch, 3, H, W\\) float image \\(shape \\?x10, float\\)"),
    (["N", 3, 32, 32], TensorProto.UINT8, "is not a \\(batch, 3, H, W\\) float image \\(shape \\?x3x32x32, uint8\\)"),
    (["N", 1, 32, 32], TensorProto.FLOAT, "is not a \\(batch, 3, H, W\\) float image \\(shape \\?x1x32x32"),
    (["N", 3, "H", "W"], TensorProto.FLOAT, "input 'x' has a dynamic height or width \\(\\?x3x\\?x\\?\\)"),
    ([1, 3, 32, 32], TensorProto.FLOAT, "has a fixed batch of 1; export it with a dynamic batch axis"),
])
def test_inputs_triton_cannot_serve_as_an_image_classifier_are_refused(tmp_path, shape, elem_type, fragment) -> None:
    path = classifier(tmp_path / "model.onnx", shape, elem_type)
    with pytest.raises(triton.TritonModelError, match=fragment) as refused:
        triton.interface(path)
    assert str(refused.value).startswith(f"{path}: input 'x' ")


def test_the_cli_refuses_dynamic_spatial_size_in_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    run = tmp_path / "build" / "foreign"
    run.mkdir(parents=True)
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        classifier(run / name, ["N", 3, "H", "W"])
    code = main(["triton", "--run", "foreign", "--set", f"run.root={json.dumps(str(tmp_path / 'build'))}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {run / 'model.fp32.onnx'}: input 'x' has a dynamic height or width")
    assert sorted(p.name for p in run.iterdir()) == ["model.fp32.onnx", "model.int8.onnx"]  # nothing written


def test_a_failure_half_way_leaves_no_repository_and_keeps_an_old_one(quantized_run, tmp_path, monkeypatch) -> None:
    cfg = copied_run(quantized_run, tmp_path)
    written = []
    real = triton.write_model

    def fail_second(folder, *args):
        if written:
            raise OSError(28, "No space left on device")
        written.append(folder)
        real(folder, *args)

    monkeypatch.setattr(triton, "write_model", fail_second)
    with pytest.raises(ArtifactWriteError, match="model_repository: writing failed \\(No space left on device\\); "
                                                 "nothing was written"):
        triton.run(cfg)
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["model.fp32.onnx", "model.int8.onnx"]
    monkeypatch.setattr(triton, "write_model", real)
    folder = triton.run(cfg)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    written.clear()
    monkeypatch.setattr(triton, "write_model", fail_second)
    with pytest.raises(ArtifactWriteError):
        triton.run(cfg)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert not [p for p in cfg.run_dir.iterdir() if p.name.startswith(".")]


def test_external_weights_travel_with_the_onnx_and_may_not_leave_its_folder(tmp_path) -> None:
    """A model over 2 GB (or imported so) keeps its weights beside it; Triton's ONNX Runtime
    backend reads them from the version folder, so they are copied there."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3], np.arange(3, dtype=np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weights])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location="model.weights",
              size_threshold=0)
    assert triton.external_data_files(path) == ["model.weights"]
    model = onnx.load(str(path), load_external_data=False)
    model.graph.initializer[0].external_data[0].value = "../elsewhere.bin"
    onnx.save(model, str(path))
    with pytest.raises(StaleArtifactError, match="external weights '../elsewhere.bin' are not a file beside the model"):
        triton.external_data_files(path)


def test_model_names_are_sanitised_and_names_round_trip_through_the_text_format() -> None:
    assert triton.model_name("imn18") == "imn18"
    assert triton.model_name("my run/ä:1") == "my_run_1"
    assert triton.model_name(".hidden") == "hidden" and triton.model_name("//") == "model"
    odd = triton.TensorSpec('in "put"\\\n', (3, 8, 8))
    entry = triton.ModelEntry("m", "onnxruntime_onnx", Path("x.onnx"), "model.onnx", "KIND_CPU", odd,
                              triton.TensorSpec("Ünïcode", (5,)))
    text = triton.config_text(entry, triton.Batching(4, (), 0), {"k": 'v "1"'})
    config = text_format.Parse(text, pb.ModelConfig())
    assert config.input[0].name == 'in "put"\\\n' and config.output[0].name == "Ünïcode"
    assert config.parameters["k"].string_value == 'v "1"'


def test_triton_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="triton.onnx_kind: expected one of auto, gpu, cpu, got 'tpu'"):
        TritonConfig(onnx_kind="tpu")
    with pytest.raises(ConfigError, match="triton.bench_concurrency"):
        TritonConfig(bench_concurrency=())


# --- serving for real: PyTriton's Triton server, tritonclient over HTTP and gRPC ---------------


@pytest.fixture(scope="module")
def serving():
    """The serving module, or a skip naming what this machine lacks to run a real Triton."""
    pytest.importorskip("pytriton.triton", reason="nvidia-pytriton is not installed (make setup)")
    from pipeline.workstation import serve_triton

    try:
        serve_triton.stub_environment()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    return serve_triton


def test_pytriton_serves_the_repository_model_over_http_and_grpc_as_evaluate_scores_it(
        quantized_run, cpu_repository, serving, tmp_path) -> None:
    from pipeline.device.evaluate import evaluation_split, score
    from pipeline.preprocess import load_images
    from pipeline.runners.registry import open_model

    model = serving.served_model(cpu_repository / f"{triton.model_name(quantized_run.run_name)}_int8_onnx")
    runner, info = open_model(quantized_run.run_dir / "model.int8.onnx", 1)
    split = evaluation_split(quantized_run, info.classes, info.class_names)
    pick = list(range(0, len(split), max(1, len(split) // 24)))[:24]
    split = dataclasses.replace(split, files=tuple(split.files[i] for i in pick),
                                labels=tuple(split.labels[i] for i in pick))
    expected = [info.class_names[i] for i in score(runner, info, split, quantized_run, {}).top1]
    reference, _ = open_model(quantized_run.run_dir / "model.int8.onnx", 1)
    # the client preprocesses as the served config's parameters say
    images = model.preprocessing.normalize(load_images(split.files, model.preprocessing.prepare, 2, show_progress=False))
    declared = parse(model.folder)
    with serving.TritonServing(model, threads=1, log_file=tmp_path / "server.log") as server:
        for protocol in ("http", "grpc"):
            client = serving.TritonClient(protocol, server.url(protocol), model)
            try:
                logits = client.infer(images)
                single = client.infer(images[:1])
                reported = client.reported_config()
            finally:
                client.close()
            assert [model.labels[i] for i in logits.argmax(1)] == expected, protocol
            np.testing.assert_allclose(logits, reference.run(images), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(single, logits[:1], rtol=1e-5, atol=1e-5)
            # what the server reports is what our config.pbtxt declares
            assert reported["name"] == declared.name and reported["max_batch_size"] == declared.max_batch_size
            assert reported["input"] == [{"name": t.name, "data_type": pb.DataType.Name(t.data_type),
                                          "dims": list(t.dims)} for t in declared.input]
            assert reported["output"] == [{"name": t.name, "data_type": pb.DataType.Name(t.data_type),
                                           "dims": list(t.dims)} for t in declared.output]
    reference.close()


def test_bench_triton_times_each_concurrency_level_within_its_bounds(quantized_run, cpu_repository, serving) -> None:
    cfg = dataclasses.replace(quantized_run, triton=TritonConfig(bench_requests=24, bench_seconds=10.0,
                                                                 bench_images=8, threads=1))
    path = serving.run(cfg)
    record = json.loads(path.read_text())
    assert path == quantized_run.run_dir / "bench" / "triton.json" and (path.parent / "triton.png").stat().st_size
    assert record["model"] == f"{triton.model_name(quantized_run.run_name)}_int8_onnx"
    assert record["protocol"] == "grpc" and record["top1_agreement_with_runner"] == 1.0
    assert record["limits"] == {"requests": 24, "seconds": 10.0} and record["inputs"]["config"]["sha256"]
    assert [level["concurrency"] for level in record["levels"]] == [1, 4, 16]
    for level in record["levels"]:
        assert 1 <= level["requests"] <= 24 and level["stopped_by"] in ("requests", "time")
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] <= level["max_ms"]
        assert level["throughput"] > 0 and level["seconds"] < 10.0 + 5
        # every request reached the runner, in batches Triton's dynamic batcher formed
        assert level["runner_batches"] >= 1 and 1 <= level["mean_batch"] <= level["concurrency"]
        assert level["runner_batches"] * level["mean_batch"] == pytest.approx(level["requests"])
    assert record["runner_alone_p50_ms"] > 0


def test_bench_triton_without_pytriton_says_so_in_one_line(quantized_run, cpu_repository, monkeypatch,
                                                           capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pytriton.triton", None)  # an import of it now fails
    code = main(["bench-triton", "--run", quantized_run.run_name,
                 "--set", f"run.root={json.dumps(quantized_run.run.root)}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: pytriton.triton is needed to serve models with Triton but cannot be imported")
