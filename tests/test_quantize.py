"""calibrate → quantize → evaluate on a trained digits model, through the real NNCF and
ONNX Runtime."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest

from calibration.qdq import check_tensorrt_qdq
from pipeline.workstation import calibrate, quantize
from pipeline.device import evaluate
from pipeline.config import EvaluateConfig
from pipeline.onnx_meta import onnx_precision
from tests.test_cli import cli


@pytest.fixture(scope="module")
def quantized(quantized_run):
    return quantized_run


def test_manifest_is_balanced_and_from_train(quantized) -> None:
    manifest = json.loads((quantized.run_dir / "calibration" / "manifest.json").read_text())
    assert manifest["count"] == 100
    assert all("/train/" in item["path"] for item in manifest["items"])
    assert {item["label"] for item in manifest["items"]} == set(range(10))


def test_two_renderings_of_one_calibration(quantized) -> None:
    out = quantized.run_dir
    trt = onnx.load(str(out / "model.int8.onnx"))
    cpu = onnx.load(str(out / "model.int8.cpu.onnx"))
    assert check_tensorrt_qdq(trt) == []
    assert check_tensorrt_qdq(cpu), "the cpu rendering keeps UINT8 activations"
    assert onnx_precision(out / "model.int8.onnx") == "int8"
    assert onnx_precision(out / "model.int8.cpu.onnx") == "int8-cpu"
    record = json.loads((out / "quantize.json").read_text())
    assert record["calibration"]["images"] == 100
    assert record["uint8_quantizers_made_int8"] > 0
    assert record["renderings"]["tensorrt"]["qdq_nodes"] == record["renderings"]["cpu"]["qdq_nodes"] > 0


def test_int8_is_as_accurate_as_fp32(quantized) -> None:
    folder = quantized.run_dir / "eval"
    fp32 = json.loads((folder / "onnxruntime-fp32.json").read_text())
    torch_fp32 = json.loads((folder / "torch-fp32.json").read_text())
    assert torch_fp32["top1"] == fp32["top1"] and torch_fp32["versus_reference"]["top1_agreement"] == 1.0
    for name in ("onnxruntime-int8.json", "onnxruntime-int8-cpu.json"):
        int8 = json.loads((folder / name).read_text())
        versus = int8["versus_reference"]
        assert int8["images"] == fp32["images"] == 360
        assert abs(fp32["top1"] - int8["top1"]) <= 0.02, name
        assert versus["top1_agreement"] >= 0.97
        assert len(versus["flipped"]) == round((1 - versus["top1_agreement"]) * 360)
        assert sum(map(sum, int8["confusion"])) == 360


def test_check_qdq_command(quantized) -> None:
    ok = cli("check-qdq", "--model", str(quantized.run_dir / "model.int8.onnx"))
    assert ok.returncode == 0 and "within TensorRT's rules" in ok.stdout
    bad = cli("check-qdq", "--model", str(quantized.run_dir / "model.int8.cpu.onnx"))
    assert bad.returncode == 2 and "zero point must be INT8 0" in bad.stderr


def test_evaluate_any_model_on_any_labelled_folder(quantized, tmp_path: Path) -> None:
    val = Path(quantized.data.root) / "digits" / "val"
    cfg = dataclasses.replace(quantized, evaluate=EvaluateConfig(
        model=str(quantized.run_dir / "model.int8.onnx"), out=str(tmp_path / "e.json")),
        data=dataclasses.replace(quantized.data, path=str(val)))
    evaluate.run(cfg)
    result = json.loads((tmp_path / "e.json").read_text())
    offline = json.loads((quantized.run_dir / "eval" / "onnxruntime-int8.json").read_text())
    assert result["top1"] == offline["top1"]


def test_accuracy_control_records_its_budget(quantized, tmp_path: Path) -> None:
    """--max-drop runs NNCF's accuracy control on training images outside the manifest."""
    run = tmp_path / "ctl"
    run.mkdir()
    for name in ("model.fp32.onnx", "calibration"):
        (run / name).symlink_to(quantized.run_dir / name)
    cfg = dataclasses.replace(quantized, run=dataclasses.replace(quantized.run, root=str(tmp_path), name="ctl"),
                              quantize=dataclasses.replace(quantized.quantize, max_drop=0.01, control_images=60))
    quantize.run(cfg)
    record = json.loads((run / "quantize.json").read_text())
    assert record["max_drop"] == 0.01 and isinstance(record["float_layers"], list)
    assert check_tensorrt_qdq(onnx.load(str(run / "model.int8.onnx"))) == []


def test_float_layers_are_the_ones_without_dequantized_weights(quantized) -> None:
    model = onnx.load(str(quantized.run_dir / "model.int8.onnx"))
    assert quantize.float_layers(model) == []
    fp32 = onnx.load(str(quantized.run_dir / "model.fp32.onnx"))
    layers = [n for n in fp32.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(quantize.float_layers(fp32)) == len(layers)


def test_input_shape_must_match_the_preprocessing(quantized) -> None:
    from pipeline.errors import ExportError
    from pipeline.preprocess import Preprocessing

    model = onnx.load(str(quantized.run_dir / "model.fp32.onnx"))
    wrong = Preprocessing(64, 73, (0.3,) * 3, (0.37,) * 3)
    with pytest.raises(ExportError, match=r"input shape .* does not match the preprocessing \(batch, 3, 64, 64\)"):
        quantize.require_input_shape(model, wrong, Path("m.onnx"))


def test_nan_outputs_stop_calibration(tmp_path: Path) -> None:
    """A model whose FP32 outputs are NaN on the calibration inputs is refused."""
    import numpy as np
    from onnx import TensorProto, helper

    from calibration.feeding import require_finite_outputs
    from pipeline.errors import DataError

    graph = helper.make_graph([helper.make_node("Log", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])])
    path = tmp_path / "log.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    require_finite_outputs(path, np.ones((3, 2), np.float32))
    with pytest.raises(DataError, match="NaN or infinite outputs on calibration batch 0"):
        require_finite_outputs(path, -np.ones((3, 2), np.float32))


def test_corrupt_calibration_image_is_named_unless_skipped(digits_run, tmp_path: Path) -> None:
    import shutil

    from pipeline.errors import DataError

    data = tmp_path / "digits"
    shutil.copytree(Path(digits_run.data.root) / "digits", data)
    bad = sorted((data / "train" / "3").iterdir())[0]
    bad.write_bytes(b"not a png")
    base = dataclasses.replace(digits_run, data=dataclasses.replace(digits_run.data, path=str(data)),
                               run=dataclasses.replace(digits_run.run, root=str(tmp_path), name="c"),
                               calibrate=dataclasses.replace(digits_run.calibrate, images=len(list((data / "train").rglob("*.png")))))
    with pytest.raises(DataError, match=f"{bad}"):
        calibrate.run(base)
    assert not (tmp_path / "c" / "calibration" / "manifest.json").exists()
    skipping = dataclasses.replace(base, calibrate=dataclasses.replace(base.calibrate, skip_bad_images=True))
    with pytest.warns(UserWarning, match="skipped"):
        calibrate.run(skipping)
    manifest = json.loads((tmp_path / "c" / "calibration" / "manifest.json").read_text())
    assert manifest["count"] == base.calibrate.images - 1


def test_bench_quant_compares_side_by_side(quantized, capsys) -> None:
    """Both runtimes, every rendering, in one run; accuracy joined from evaluate's rows, on
    the reporting half, beside the method that made each INT8 file."""
    from pipeline.runners.openvino_runner import has_bf16
    from pipeline.workstation import bench_quant

    cfg = dataclasses.replace(quantized, evaluate=dataclasses.replace(quantized.evaluate, bench_runs=20))
    record = json.loads(bench_quant.run(cfg).read_text())
    rows = {r["model"]: r for r in record["rows"]}
    assert set(rows) == {f"{runtime}-{p}" for runtime in ("onnxruntime", "openvino") for p in ("fp32", "int8", "int8-cpu")} \
        | ({"openvino-bf16"} if has_bf16() else set())
    assert rows["onnxruntime-fp32"]["latency_ratio_vs_fp32"] == 1.0
    assert rows["openvino-int8"]["file"] == rows["onnxruntime-int8"]["file"] == "model.int8.onnx"
    for row in rows.values():
        assert row["latency_ms"]["runs"] == 20 and row["latency_ms"]["p99"] >= row["latency_ms"]["median"]
        assert row["top1"] is not None and row["agreement"] is not None, row["model"]
    assert rows["onnxruntime-int8-cpu"]["size_mb"] < rows["onnxruntime-fp32"]["size_mb"]
    assert (quantized.run_dir / "bench" / "quant.png").is_file()
    signed = rows["onnxruntime-int8"]
    evaluation = json.loads((quantized.run_dir / "eval" / "onnxruntime-int8.json").read_text())
    assert signed["reporting"] == evaluation["halves"]["reporting"]
    assert signed["reporting"]["images"] + signed["tuning"]["images"] == evaluation["images"]
    made = record["methods"]["model.int8.onnx"]
    assert made["method"].startswith("NNCF PTQ, mean minmax activation ranges") and made["float_layers"] == []
    shown = capsys.readouterr().out
    assert f"reporting half of val: {signed['reporting']['images']} images" in shown
    assert f"{signed['reporting']['top1_agreement']:.2%} [" in shown
    assert "model.int8.onnx: NNCF PTQ" in shown and "float layers: none" in shown


def _run_with(quantized, root: Path, name: str) -> tuple[Path, object]:
    """A run folder sharing the quantized run's calibration set, and its config."""
    run = root / name
    run.mkdir()
    (run / "calibration").symlink_to(quantized.run_dir / "calibration")
    cfg = dataclasses.replace(quantized, run=dataclasses.replace(quantized.run, root=str(root), name=name))
    return run, cfg


def test_quantize_refuses_an_onnx_exported_from_another_checkpoint(quantized, tmp_path: Path) -> None:
    """The run's model.pt was retrained (other weights); its ONNX is the old model's."""
    import shutil

    import torch

    from pipeline.errors import StaleArtifactError
    from pipeline.workstation.checkpoint import load_checkpoint, save_checkpoint

    run, cfg = _run_with(quantized, tmp_path, "retrained")
    shutil.copy(quantized.run_dir / "model.fp32.onnx", run / "model.fp32.onnx")
    ckpt = load_checkpoint(quantized.run_dir / "model.pt")
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    save_checkpoint(dataclasses.replace(ckpt, state_dict=state), run / "model.pt")
    assert torch.equal(load_checkpoint(run / "model.pt").state_dict["fc.bias"], state["fc.bias"])
    with pytest.raises(StaleArtifactError, match=rf"^{run / 'model.fp32.onnx'}: exported from another "
                                                 rf"checkpoint .* than {run / 'model.pt'} .*run export again"):
        quantize.run(cfg)
    assert not (run / "model.int8.onnx").exists() and not (run / "quantize.json").exists()


def test_quantize_refuses_an_onnx_of_other_classes_than_the_manifest(quantized, tmp_path: Path) -> None:
    """Another model's ONNX (three classes) copied beside a digits calibration manifest."""
    import torch

    from pipeline.errors import StaleArtifactError
    from pipeline.preprocess import Preprocessing
    from pipeline.workstation.checkpoint import Checkpoint, save_checkpoint
    from pipeline.workstation.export import export_onnx
    from pipeline.workstation.models import build_model

    run, cfg = _run_with(quantized, tmp_path, "shapes-onnx")
    torch.manual_seed(0)
    model = build_model("resnet20", 3, width=8).eval()
    other = Checkpoint("resnet20", {"width": 8}, ["bright", "dots", "stripes"], ["bright", "dots", "stripes"],
                       Preprocessing(32, 32, (0.3,) * 3, (0.37,) * 3), {}, model.state_dict())
    save_checkpoint(other, tmp_path / "other.pt")
    export_onnx(model, other, run / "model.fp32.onnx", 18, ckpt_sha256="0" * 64)
    with pytest.raises(StaleArtifactError, match=rf"^{run / 'model.fp32.onnx'}: 3 classes \(bright, dots, "
                                                 rf"stripes\) but {run / 'calibration' / 'manifest.json'} "
                                                 rf"has 10 \(0, 1, 2, \.\.\.\)"):
        quantize.run(cfg)
    assert not (run / "quantize.json").exists()


def test_score_refuses_nan_logits_naming_the_model_and_the_batch(quantized, tmp_path: Path) -> None:
    """An FP32 ONNX whose classifier bias went NaN: evaluate names the file and the batch."""
    import numpy as np
    from onnx import numpy_helper

    from pipeline.errors import StaleArtifactError
    from pipeline.imagefolder import laid_out_split
    from pipeline.runners.registry import open_model

    model = onnx.load(str(quantized.run_dir / "model.fp32.onnx"))
    bias = next(t for t in model.graph.initializer if t.name == "fc.bias")
    values = numpy_helper.to_array(bias).copy()
    values[4] = np.nan
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    path = tmp_path / "nan.onnx"
    onnx.save(model, str(path))
    runner, info = open_model(path, 1)
    split = laid_out_split(quantized.data, "val")
    cfg = dataclasses.replace(quantized, evaluate=dataclasses.replace(quantized.evaluate, batch_size=100))
    with pytest.raises(StaleArtifactError, match=rf"^{path}: NaN logits on batch 0 \(inputs 0\.\.99\)"):
        evaluate.score(runner, info, split, cfg, {})


def test_same_count_of_other_classes_names_the_first_that_differs(quantized) -> None:
    from calibration.manifest import load_manifest
    from pipeline.errors import StaleArtifactError
    from pipeline.onnx_meta import read_metadata

    out = quantized.run_dir
    manifest_path = out / "calibration" / "manifest.json"
    manifest = load_manifest(manifest_path, verify=False)
    meta = read_metadata(out / "model.fp32.onnx")
    quantize.require_same_model(out / "model.fp32.onnx", meta, out / "model.pt", manifest, manifest_path)
    seven = [c if c != "7" else "seven" for c in meta["classes"]]  # no folder of the data matches "seven"
    renamed = {**meta, "classes": seven, "class_names": seven}
    with pytest.raises(StaleArtifactError, match=rf"model\.fp32\.onnx: class 7 is 'seven' but {manifest_path} has '7'"):
        quantize.require_same_model(out / "model.fp32.onnx", renamed, out / "model.pt", manifest, manifest_path)


def test_agreement_and_drop_come_with_their_intervals_and_flips(quantized) -> None:
    """An agreement near 99% on a few hundred images is known to within a point or so: every
    evaluation says how well, and how many images flipped."""
    from pipeline.runners.compare import wilson_interval

    record = json.loads((quantized.run_dir / "eval" / "onnxruntime-int8.json").read_text())
    versus, n = record["versus_reference"], record["images"]
    assert versus["flips"] == len(versus["flipped"])
    low, high = versus["top1_agreement_ci95"]
    assert (low, high) == pytest.approx(wilson_interval(n - versus["flips"], n))
    assert low <= versus["top1_agreement"] <= high and high - low > 0
    low, high = versus["top1_drop_ci95"]
    assert low <= versus["top1_drop"] <= high


def test_tuning_and_reporting_halves_are_fixed_and_split_the_flips(quantized) -> None:
    from pipeline.device.evaluate import reporting_half
    from pipeline.imagefolder import ImageSplit, laid_out_split

    record = json.loads((quantized.run_dir / "eval" / "onnxruntime-int8.json").read_text())
    tuning, reporting = record["halves"]["tuning"], record["halves"]["reporting"]
    assert tuning["images"] + reporting["images"] == record["images"]
    assert min(tuning["images"], reporting["images"]) > 0.4 * record["images"]
    assert tuning["flips"] + reporting["flips"] == record["versus_reference"]["flips"]
    split = laid_out_split(quantized.data, "val")
    half = reporting_half(split)
    # the same images under another root (a bundle's copy) split the same way, and more
    # images added to the tree move none of these from one half to the other
    moved = ImageSplit(Path("/elsewhere"), tuple(Path("/elsewhere") / f.parent.name / f.name for f in split.files),
                       split.labels, split.classes)
    assert (reporting_half(moved) == half).all()
    grown = ImageSplit(split.root, split.files + (split.root / "0" / "extra.png",), split.labels + (0,), split.classes)
    assert (reporting_half(grown)[:-1] == half).all()
