"""Calibration set selection, its manifest, and the TensorRT Q/DQ rules checker/rewrite."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.manifest import load_manifest, make_manifest, write_manifest
from calibration.qdq import check_tensorrt_qdq, to_tensorrt_rules
from calibration.select import select_calibration_set
from pipeline.workstation.data import open_image_folder
from pipeline.errors import DataError, StaleArtifactError
from tests.conftest import write_shapes_tree


@pytest.fixture()
def shapes(tmp_path: Path):
    return open_image_folder(write_shapes_tree(tmp_path / "shapes", per_class=10, val_per_class=2))


def test_selection_is_class_balanced_seeded_and_from_train(shapes) -> None:
    split = shapes.split("train")
    chosen = select_calibration_set(split, 9, seed=3)
    assert Counter(split.labels[i] for i in chosen) == {0: 3, 1: 3, 2: 3}
    assert chosen == select_calibration_set(split, 9, seed=3)
    assert chosen != select_calibration_set(split, 9, seed=4)
    assert all("/train/" in str(split.files[i]) for i in chosen)


def test_remainder_and_short_classes_are_spread(shapes) -> None:
    split = shapes.split("train")
    counts = Counter(split.labels[i] for i in select_calibration_set(split, 29, seed=0))
    assert sum(counts.values()) == 29 and max(counts.values()) - min(counts.values()) <= 1


def test_too_many_images_is_refused(shapes) -> None:
    with pytest.raises(DataError, match="31 calibration images asked for, but the split holds only 30"):
        select_calibration_set(shapes.split("train"), 31, seed=0)


def test_default_on_a_small_split_takes_all_with_a_warning(shapes) -> None:
    with pytest.warns(UserWarning, match="calibrating on all of them"):
        assert len(select_calibration_set(shapes.split("train"), 0, seed=0)) == 30


def test_a_validation_folder_is_refused(shapes) -> None:
    with pytest.raises(DataError, match="is a 'val' folder"):
        select_calibration_set(shapes.split("val"), 3, seed=0)


def test_manifest_detects_a_changed_file(shapes, tmp_path: Path) -> None:
    split = shapes.split("train")
    files, labels = list(split.files[:4]), list(split.labels[:4])
    manifest = make_manifest(split.root, split.classes, 0, files, labels)
    path = write_manifest(manifest, tmp_path / "manifest.json")
    again = load_manifest(path)
    assert again.set_sha256 == manifest.set_sha256 == json.loads(path.read_text())["set_sha256"]
    files[2].write_bytes(files[2].read_bytes() + b"\0")
    with pytest.raises(StaleArtifactError, match=f"{files[2]} changed since the manifest was written"):
        load_manifest(path)


# --- Q/DQ rules ------------------------------------------------------------------------

def qdq_conv(act_zero: np.ndarray, weight_axis: int = 0, act_scale: float = 0.02,
             weight_scales: np.ndarray | None = None) -> onnx.ModelProto:
    """x → Q/DQ(activation) → Conv(Q/DQ weight, per-channel) → y: NNCF's pattern in small."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w_scale = weight_scales if weight_scales is not None else (np.abs(weight).reshape(4, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zero"),
             numpy_helper.from_array(np.float32(act_scale), "a_scale"),
             numpy_helper.from_array(act_zero, "a_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["xq"], name="act_q"),
             helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zero"], ["xd"], name="act_dq"),
             helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["wq"], name="w_q", axis=weight_axis),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=weight_axis),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_conformant_graph_passes() -> None:
    assert check_tensorrt_qdq(qdq_conv(np.int8(0))) == []


@pytest.mark.parametrize("model, rule", [
    (qdq_conv(np.uint8(0)), "zero point must be INT8 0"),
    (qdq_conv(np.int8(3)), "zero point must be INT8 0"),
    (qdq_conv(np.int8(0), act_scale=float("nan")), "finite and positive"),
    (qdq_conv(np.int8(0), act_scale=0.0), "finite and positive"),
    (qdq_conv(np.int8(0), weight_axis=1, weight_scales=np.full(3, 0.01, np.float32)), "output-channel axis 0"),
])
def test_each_rule_is_enforced(model: onnx.ModelProto, rule: str) -> None:
    problems = check_tensorrt_qdq(model)
    assert problems and any(rule in str(p) for p in problems), problems


def test_uint8_rewrite_keeps_the_range_and_the_outputs(tmp_path: Path) -> None:
    """UINT8 zp-0 → INT8 zp-0 at scale × 255/127: same outputs on non-negative inputs, up
    to one 7-bit step, and the rewritten graph passes the checker."""
    cpu = qdq_conv(np.uint8(0))
    trt, rewritten = to_tensorrt_rules(cpu)
    assert rewritten == 1 and check_tensorrt_qdq(trt) == []
    assert check_tensorrt_qdq(cpu)  # the input model is left as it was
    x = np.random.default_rng(1).uniform(0, 5, (1, 3, 8, 8)).astype(np.float32)
    outs = []
    for model in (cpu, trt):
        path = tmp_path / f"m{len(outs)}.onnx"
        onnx.save(model, str(path))
        outs.append(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])
    step = 0.02 * 255 / 127
    assert np.abs(outs[0] - outs[1]).max() < step * np.abs(numpy_helper.to_array(cpu.graph.initializer[0])).sum(axis=(1, 2, 3)).max()
    assert np.corrcoef(outs[0].ravel(), outs[1].ravel())[0, 1] > 0.999


def test_asymmetric_uint8_cannot_be_rewritten() -> None:
    with pytest.raises(StaleArtifactError, match="asymmetric"):
        to_tensorrt_rules(qdq_conv(np.uint8(128)))


def test_a_scale_shared_by_pairs_with_their_own_zero_points_gets_one_name_each() -> None:
    """The TorchScript exporter (quantization-aware models) gives a Q and its DQ their own
    zero-point constants around one scale: the rewrite must not add two initializers of one
    name (ONNX Runtime then warns and keeps the last; TensorRT's parser refuses)."""
    model = qdq_conv(np.uint8(0))
    model.graph.initializer.append(numpy_helper.from_array(np.uint8(0), "a_zero_dq"))
    dq = next(n for n in model.graph.node if n.name == "act_dq")
    dq.input[2] = "a_zero_dq"
    trt, rewritten = to_tensorrt_rules(model)
    names = [init.name for init in trt.graph.initializer]
    assert rewritten == 2 and len(names) == len(set(names))
    assert check_tensorrt_qdq(trt) == []
    onnx.checker.check_model(trt)
