"""Bring your own model: a classifier this project did not train goes through `import` and
then the same stages as our own (INT8, evaluation, bundle, the device), its labels matched
to the data's class folders by name; what cannot be deployed is refused at the door."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from calibration.qdq import check_tensorrt_qdq
from pipeline.config import BundleConfig
from pipeline.errors import CheckpointError, ConfigError, DataError, ExportError
from pipeline.imagefolder import ImageSplit, for_model, laid_out_split
from pipeline.onnx_meta import read_metadata
from pipeline.preprocess import Preprocessing, load_images
from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
from pipeline.workstation import import_model
from tests.conftest import SHARED_IMAGENETTE, make_config

# three Imagenette classes (WordNet-id folders, readable names in classes.tsv) inside a
# model of twelve labels in another order, one of them a duplicate name (ImageNet has two cranes)
PICKED = {"n01440764": "tench", "n02102040": "English springer", "n03888257": "parachute"}
LABELS = ["goldfish", "crane", "parachute", "tiger shark", "English springer", "crane", "hen", "ostrich",
          "tench", "robin", "jay", "magpie"]
SIZE = 64
SMALL = BundleConfig(eval_images=12, clip_images=3, clip_frames=2, clip_size=(96, 72))

needs_photos = pytest.mark.skipif(not SHARED_IMAGENETTE.is_dir(), reason="the shared Imagenette photos are absent")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A small ImageFolder tree of real photos: 12 train and 6 val images of 3 classes."""
    root = tmp_path_factory.mktemp("photos")
    for split, count in (("train", 12), ("val", 6)):
        for wnid in PICKED:
            (root / split / wnid).mkdir(parents=True)
            for path in sorted((SHARED_IMAGENETTE / split / wnid).iterdir())[:count]:
                shutil.copy(path, root / split / wnid / path.name)
    (root / "classes.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in PICKED.items()))
    return root


@pytest.fixture(scope="module")
def brought(tmp_path_factory, photos) -> dict[str, Path]:
    """What a user brings: a torchvision MobileNetV3 state dict (depthwise convolutions,
    Hardswish, squeeze-excitation), its labels file and its preprocessing. Random weights,
    with BatchNorm's statistics taken from real photos so predictions differ between images."""
    from torchvision import models

    folder = tmp_path_factory.mktemp("brought")
    torch.manual_seed(0)
    model = models.mobilenet_v3_small(num_classes=len(LABELS))
    pre = Preprocessing(SIZE, 72, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    files = sorted((photos / "train").rglob("*.JPEG"))
    x = torch.from_numpy(pre.normalize(load_images(files, pre.prepare, 1, "bn")))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    torch.save(model.state_dict(), folder / "mnv3.pth")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (folder / "pre.json").write_text(json.dumps({"input_size": SIZE, "resize": 72}))
    return {"weights": folder / "mnv3.pth", "labels": folder / "labels.txt", "pre": folder / "pre.json"}


def _config(tmp_path: Path, photos: Path, **sets):
    return make_config(tmp_path, "photos", data__path=str(photos), run__name="byom", export__parity_images=12,
                       calibrate__images=24, evaluate__batch_size=8, **sets)


@needs_photos
def test_a_torchvision_mobilenet_goes_through_int8_and_the_device(tmp_path, photos, brought, trt_emulator,
                                                                   monkeypatch) -> None:
    from pipeline.device import bundle, engine, evaluate, unpack
    from pipeline.device.camera import loop
    from pipeline.workstation import calibrate, quantize
    from tests.sim.jetson_root import BOARDS, write_root

    cfg = _config(tmp_path, photos, imported__torchvision="mobilenet_v3_small",
                  imported__weights=str(brought["weights"]), imported__classes=str(brought["labels"]),
                  imported__preprocessing=str(brought["pre"]))
    fp32 = import_model.run(cfg)
    meta = read_metadata(fp32)
    assert meta["class_names"] == LABELS and meta["classes"][5] == "crane (5)"  # ids unique, names kept
    assert meta["model"]["name"] == "mobilenet_v3_small" and meta["preprocessing"]["input_size"] == SIZE
    sidecar = json.loads(fp32.with_name("model.fp32.onnx.json").read_text())
    assert sidecar["stage"] == "import" and sidecar["parity"]["top1_agreement"] == 1.0

    calibrate.run(cfg)
    int8 = quantize.run(cfg)
    assert check_tensorrt_qdq(onnx.load(str(int8))) == []
    assert {"HardSwish", "HardSigmoid"} & {n.op_type for n in onnx.load(str(int8)).graph.node}

    evaluate.run(cfg)
    scored = json.loads((cfg.run_dir / "eval" / "onnxruntime-fp32.json").read_text())
    assert scored["model_classes"] == 12 and sorted(scored["per_class"]) == sorted(PICKED.values())
    assert np.array(scored["confusion"]).shape == (3, 4) and scored["images"] == 18
    assert scored["top1"] == pytest.approx(_top1_over_all_labels(fp32, photos))

    monkeypatch.setenv("EDGERESNET_SYSROOT", str(write_root(tmp_path / "root", BOARDS["orin-nano"])))
    archive = bundle.make_bundle(cfg.run_dir, tmp_path / "bundle.tar.gz", "jetson",
                                 laid_out_split(cfg.data, "val"), SMALL)
    device = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, root=str(tmp_path / "device")),
                                 engine=dataclasses.replace(cfg.engine, target="jetson", bundle=str(archive)))
    unpack.run(device)
    assert "n01440764\ttench" in (device.run_dir / "evalset" / "classes.tsv").read_text()
    engine.run(device)
    evaluate.run(device)
    on_device = json.loads((device.run_dir / "eval" / "tensorrt-int8.json").read_text())
    assert on_device["images"] == 12 and sorted(on_device["per_class"]) == sorted(PICKED.values())
    live = json.loads(loop.run(dataclasses.replace(device, camera=dataclasses.replace(
        device.camera, source=f"replay:{device.run_dir / 'clip' / 'replay.avi'}", headless=True,
        summary=str(tmp_path / "camera.json")))).read_text())
    assert live["frames"] == 6 and live["labelled_frames"] == 6  # the clip's WordNet ids matched by name
    _serving_artifacts(device)


def _serving_artifacts(device) -> None:
    """The imported model's Triton repository (config.pbtxt parsed by Triton's own schema)
    and DeepStream config, made on the device from its engine."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from pipeline.device import deepstream, triton

    repository = triton.run(device)
    plan = repository / "byom_int8_trt"
    config = text_format.Parse((plan / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and list(config.input[0].dims) == [3, SIZE, SIZE]
    assert list(config.output[0].dims) == [12] and (plan / "labels.txt").read_text().splitlines() == LABELS
    nvinfer = deepstream.run(device)
    keys = dict(line.split("=", 1) for line in nvinfer.read_text().splitlines() if "=" in line)
    assert keys["network-mode"] == "1" and keys["infer-dims"] == f"3;{SIZE};{SIZE}"
    assert (nvinfer.parent / keys["labelfile-path"]).read_text().strip().split(";") == LABELS
    assert (nvinfer.parent / keys["model-engine-file"]).is_file()


def _top1_over_all_labels(model: Path, photos: Path) -> float:
    """Top-1 computed here, independently: argmax over all 12 outputs against each folder's
    index among the labels (found by its readable name)."""
    pre = Preprocessing(SIZE, 72, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    hits = []
    runner = OnnxRuntimeRunner(model)
    for wnid, name in PICKED.items():
        files = sorted((photos / "val" / wnid).iterdir())
        logits = runner.run(pre.normalize(load_images(files, pre.prepare, 1, "check")))
        hits += list(logits.argmax(1) == LABELS.index(name))
    runner.close()
    return float(np.mean(hits))


def test_folders_are_matched_to_the_models_labels_by_id_folder_or_readable_name(tmp_path) -> None:
    split = ImageSplit(tmp_path, (tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"), (0, 1, 2),
                       ("n01440764", "golden_retriever", "n99"), ("tench", "golden_retriever", "Jay"))
    classes = ("n00000001", "n01440764", "n02099601", "n00000002")
    names = ("goldfish", "tench", "Golden Retriever", "jay")
    mapped = for_model(split, classes, names)
    assert mapped.labels == (1, 2, 3) and mapped.classes == classes and mapped.scored == (1, 2, 3)
    assert for_model(split, split.classes, split.names) is split  # already in the model's label space


def test_a_folder_no_label_matches_is_refused_with_the_list(tmp_path) -> None:
    split = ImageSplit(tmp_path, (tmp_path / "a.png", tmp_path / "b.png"), (0, 1), ("tench", "zebra_fish"))
    with pytest.raises(DataError, match=r"1 class folder\(s\) match no label.*zebra_fish.*classes.tsv"):
        for_model(split, ("goldfish", "tench"), ("goldfish", "tench"))
    with pytest.raises(DataError, match=r"several of the model's labels.*crane"):
        for_model(ImageSplit(tmp_path, (tmp_path / "a.png",), (0,), ("Crane",)),
                  ("c1", "c2", "tench"), ("crane", "crane", "tench"))


def _graph(path: Path, nodes, inputs, outputs, inits=(), domain_ops=()) -> Path:
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domain_ops]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)), opset_imports=opsets)
    onnx.save(model, str(path))
    return path


def _classifier(path: Path, shape=("N", 3, 32, 32), classes: int = 12, batch_one_reshape: bool = False,
                extra=()) -> Path:
    """conv -> global pool -> flatten -> gemm, a real (tiny) classifier graph."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("w", TensorProto.FLOAT, (4, 3, 3, 3), rng.normal(size=108).astype(np.float32)),
             helper.make_tensor("fc", TensorProto.FLOAT, (classes, 4), rng.normal(size=4 * classes).astype(np.float32)),
             *([helper.make_tensor("shape", TensorProto.INT64, (2,), [1, 4])] if batch_one_reshape else [])]
    flatten = helper.make_node("Reshape", ["p", "shape"], ["f"]) if batch_one_reshape else \
        helper.make_node("Flatten", ["p"], ["f"])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), flatten,
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1), *extra]
    out = extra[-1].output[0] if extra else "y"
    return _graph(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None if extra else [shape[0], classes])], inits)


@needs_photos
def test_an_onnx_classifier_with_an_open_size_is_fixed_to_the_preprocessing(tmp_path, photos, brought) -> None:
    model = _classifier(tmp_path / "m.onnx", shape=(1, 3, "H", "W"))
    cfg = _config(tmp_path, photos, imported__onnx=str(model), imported__classes=str(brought["labels"]))
    out = import_model.run(cfg)  # the imagenet preset: 224, batch made dynamic
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert read_metadata(out)["preprocessing"]["resize"] == 256
    with pytest.raises(ExportError, match="dynamic and .* gives no input_size"):
        (tmp_path / "nosize.json").write_text("{}")
        import_model.run(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name="nosize"),
                                             imported=dataclasses.replace(cfg.imported, preprocessing=str(tmp_path / "nosize.json"))))


REFUSALS = {
    "two inputs": (lambda p: _graph(p, [helper.make_node("Add", ["a", "b"], ["y"])],
                                    [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in "ab"],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), "2 inputs"),
    "grey input": (lambda p: _classifier(p, shape=(1, 1, 32, 32)), "expected a float32 \\(batch, 3, H, W\\)"),
    "unsupported op": (lambda p: _classifier(p, extra=[helper.make_node("NonZero", ["y"], ["z"])]),
                       "does not support: NonZero"),
    "custom op": (lambda p: _classifier(p, extra=[helper.make_node("Gelu", ["y"], ["z"], domain="com.microsoft")]),
                  "custom-domain operators.*com.microsoft::Gelu"),
    "wrong class count": (lambda p: _classifier(p, classes=7), "labels file names 12 classes"),
    "batch baked in": (lambda p: _classifier(p, batch_one_reshape=True), "depends on its batch size"),
}


@needs_photos
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_what_cannot_be_deployed_is_refused_and_nothing_is_written(tmp_path, photos, brought, case) -> None:
    make, message = REFUSALS[case]
    (tmp_path / "sized.json").write_text(json.dumps({"input_size": 32}))
    cfg = _config(tmp_path, photos, imported__onnx=str(make(tmp_path / "m.onnx")),
                  imported__classes=str(brought["labels"]), imported__preprocessing=str(tmp_path / "sized.json"))
    with pytest.raises(ExportError, match=message):
        import_model.run(cfg)
    assert not cfg.run_dir.exists() or not list(cfg.run_dir.iterdir())


@needs_photos
def test_weights_that_do_not_fit_are_refused_whole_not_given_a_fresh_head(tmp_path, photos, brought) -> None:
    from torchvision import models

    torch.save(models.mobilenet_v3_small(num_classes=5).state_dict(), tmp_path / "five.pth")
    cfg = _config(tmp_path, photos, imported__torchvision="mobilenet_v3_small", imported__weights=str(tmp_path / "five.pth"),
                  imported__classes=str(brought["labels"]), imported__preprocessing=str(brought["pre"]))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        import_model.run(cfg)
    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(b"\x80\x04cos\nsystem\n(S'touch pwned'\ntR.")  # a pickle that would run a command
    with pytest.raises(CheckpointError, match="weights_only|not loadable"):
        import_model.run(dataclasses.replace(cfg, imported=dataclasses.replace(cfg.imported, weights=str(hostile))))
    assert not (Path.cwd() / "pwned").exists() and not (cfg.run_dir / "model.fp32.onnx").exists()
    with pytest.raises(ConfigError, match="not a torchvision classifier"):
        import_model.run(dataclasses.replace(cfg, imported=dataclasses.replace(cfg.imported, torchvision="resnet_9000")))


def test_an_import_never_overwrites_a_trained_run(tmp_path) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="holds a trained model"):
        import_model.refuse_trained_run(tmp_path)


def test_labels_files_give_unique_ids_and_readable_names(tmp_path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("n01440764\ttench\nn01443537\tgoldfish\n\n")
    assert import_model.read_labels(path) == (("n01440764", "n01443537"), ("tench", "goldfish"))
    path.write_text("")
    with pytest.raises(ConfigError, match="no labels"):
        import_model.read_labels(path)
