"""DeepStream's nvinfer artifacts: the folded models against the originals on real photos, the
config read as the GLib key file nvinfer reads, every key against nvinfer's documented list,
and the engine built (by the TensorRT EMULATOR, on a fake Orin Nano) from the folded model.

DeepStream itself cannot run here (no NVIDIA GPU): what nvinfer does to a frame is done in
NumPy as its documentation states it, ``y = net-scale-factor * (x - offsets[c])`` on the frame
resized to the network's size, RGB, NCHW.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np
import onnx
import pytest

from pipeline.artifacts import sha256_file, sidecar_path
from pipeline.config import Config, DeepStreamConfig, load_config
from pipeline.device import deepstream
from pipeline.device.fold_normalization import fold_for_nvinfer, split_normalization
from pipeline.errors import ConfigError, ExportError, StaleArtifactError
from pipeline.imagefolder import laid_out_split
from pipeline.onnx_meta import META_PREFIX, read_metadata
from pipeline.preprocess import Preprocessing, read_rgb
from targets.profile import get_profile
from tests.conftest import SHARED_IMAGENETTE
from tests.sim.jetson_root import BOARDS, write_root

# The [property] keys nvinfer documents: "Gst-nvinfer File Configuration Specifications",
# table "Gst-nvinfer Property Group Supported Keys", DeepStream developer guide,
# https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html;
# the same names as the CONFIG_GROUP_INFER_* keys of DeepStream's
# sources/gst-plugins/gst-nvinfer/gstnvinfer_property_parser.h (DeepStream 6.x), which reads them.
NVINFER_PROPERTY_KEYS = frozenset({
    # element
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core",
    # runtime engine
    "batch-size", "tensor-meta-pool-size", "network-mode", "model-engine-file", "int8-calib-file",
    "workspace-size",
    # generic model
    "output-blob-names", "is-classifier", "network-type", "force-implicit-batch-dim", "infer-dims",
    "output-io-formats", "layer-device-precision",
    # preprocessing
    "model-color-format", "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio",
    "symmetric-padding", "scaling-filter", "scaling-compute-hw", "network-input-order", "input-tensor-from-meta",
    # custom implementations
    "custom-lib-path", "parse-bbox-func-name", "parse-bbox-instance-mask-func-name", "engine-create-func-name",
    "parse-classifier-func-name", "custom-network-config",
    # model files (Caffe, UFF, TAO, ONNX)
    "model-file", "proto-file", "uff-file", "uff-input-order", "input-dims", "uff-input-dims",
    "uff-input-blob-name", "tlt-encoded-model", "tlt-model-key", "onnx-file",
    # detector, classifier, segmentation
    "num-detected-classes", "enable-dbscan", "cluster-mode", "classifier-type", "classifier-threshold",
    "classifier-async-mode", "segmentation-threshold", "segmentation-output-order", "output-instance-mask",
    # secondary mode: which objects
    "input-object-min-width", "input-object-min-height", "input-object-max-width", "input-object-max-height",
    "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids",
})
DETECTOR_ONLY = {"num-detected-classes", "enable-dbscan", "cluster-mode", "parse-bbox-func-name"}
REQUIRED = {"gpu-id", "net-scale-factor", "offsets", "model-color-format", "onnx-file", "model-engine-file",
            "labelfile-path", "infer-dims", "batch-size", "network-mode", "network-type", "process-mode",
            "classifier-threshold", "output-blob-names", "maintain-aspect-ratio", "scaling-filter"}
PATH_KEYS = ("onnx-file", "model-engine-file", "labelfile-path")
IMAGENET_STD = (0.229, 0.224, 0.225)  # per-channel: what nvinfer's one scalar cannot express


# --- GLib key file, as g_key_file_load_from_data reads it --------------------------------------


def parse_keyfile(text: str) -> Dict[str, Dict[str, str]]:
    """Groups of raw values. '#' lines are comments, blank lines ignored, ``[group]`` opens a
    group, ``key=value`` with the spaces around '=' ignored; a key outside a group, a line that
    is none of these, or a repeated group or key is an error (GKeyFile would merge silently)."""
    groups: Dict[str, Dict[str, str]] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            assert line.rstrip().endswith("]"), f"line {number}: unclosed group {line!r}"
            name = line.rstrip()[1:-1]
            assert name not in groups, f"line {number}: group [{name}] repeated"
            current = groups[name] = {}
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number}: not a key=value inside a group: {line!r}"
        key = key.strip()
        assert key and key not in current, f"line {number}: empty or repeated key {key!r}"
        current[key] = value.lstrip()
    return groups


def keyfile_string(value: str) -> str:
    """GKeyFile's escapes: \\s (a leading space), \\n, \\t, \\r, \\\\."""
    escapes = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\", ";": ";"}
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\":
            out.append(escapes[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def keyfile_list(value: str) -> List[str]:
    """A ';'-separated list (a trailing ';' allowed, '\\;' is a ';' inside an item)."""
    items, item, i = [], "", 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            item += value[i:i + 2]
            i += 2
        elif value[i] == ";":
            items.append(keyfile_string(item))
            item, i = "", i + 1
        else:
            item += value[i]
            i += 1
    return items + ([keyfile_string(item)] if item else [])


# --- runs on a fake Orin Nano, with the emulated TensorRT ---------------------------------------


@pytest.fixture()
def orin_nano(trt_emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERESNET_SYSROOT", str(write_root(tmp_path / "root", BOARDS["orin-nano"])))
    return trt_emulator


def run_copy(quantized_run: Config, root: Path, std: Sequence[float] = (), target: str = "jetson",
             **settings: object) -> Config:
    """The quantized run's two models in a run of their own under ``root``; ``std`` restamps
    their metadata (the ImageNet std on the digits model: a per-channel std the fold must carry;
    the comparison holds for any metadata, since both sides read it)."""
    cfg = dataclasses.replace(quantized_run, run=dataclasses.replace(quantized_run.run, root=str(root)),
                              engine=dataclasses.replace(quantized_run.engine, target=target),
                              deepstream=DeepStreamConfig(**settings))
    cfg.run_dir.mkdir(parents=True)
    for name in deepstream.MODELS:
        shutil.copy(quantized_run.run_dir / name, cfg.run_dir / name)
        if std:
            restamp_std(cfg.run_dir / name, std)
    return cfg


def restamp_std(path: Path, std: Sequence[float]) -> None:
    model = onnx.load(str(path))
    prop = next(p for p in model.metadata_props if p.key == META_PREFIX + "preprocessing")
    prop.value = json.dumps({**json.loads(prop.value), "std": list(std)})
    onnx.save(model, str(path))


def written_config(cfg: Config) -> Dict[str, str]:
    path = cfg.run_dir / "deepstream" / deepstream.CONFIG_FILES[cfg.deepstream.process_mode]
    groups = parse_keyfile(path.read_text(encoding="utf-8"))
    assert list(groups) == ["property"], f"{path}: groups {list(groups)}"
    return groups["property"]


# --- nvinfer's preprocessing in NumPy, and the comparison on real photos -------------------------


def photo_files(quantized_run: Config, count: int = 40) -> List[Path]:
    """Real photos: the shared Imagenette val split (a few a class), or else the run's own val images."""
    val = SHARED_IMAGENETTE / "val"
    if val.is_dir():
        folders = sorted(p for p in val.iterdir() if p.is_dir())
        per = max(1, count // len(folders))
        return [f for folder in folders for f in sorted(folder.iterdir())[:per]]
    return list(laid_out_split(quantized_run.data, "val").files[:count])


def resized_frames(files: Sequence[Path], size: int) -> np.ndarray:
    """What nvinfer scales each frame to: the whole image at the network's size (bilinear), RGB,
    NCHW uint8 (no centre crop: nvinfer has none)."""
    frames = [cv2.resize(read_rgb(f), (size, size), interpolation=cv2.INTER_LINEAR) for f in files]
    return np.stack(frames).transpose(0, 3, 1, 2).copy()  # (N, 3, S, S)


def nvinfer_input(frames: np.ndarray, net_scale_factor: float, offsets: Sequence[float]) -> np.ndarray:
    """y = net-scale-factor * (x - offsets[c]), in float32 as nvinfer computes it."""
    offsets32 = np.asarray(offsets, np.float32).reshape(1, 3, 1, 1)
    return np.float32(net_scale_factor) * (frames.astype(np.float32) - offsets32)


def ort_run(model, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def compare_on_photos(original: Path, folded: Path, net_scale_factor: float, offsets: Sequence[float],
                      files: Sequence[Path]) -> Dict[str, float]:
    """The original model on our normalisation of the resized pixels against the folded one on
    nvinfer's ``y`` of the same pixels: logits (the fold without its Softmax) and probabilities."""
    pre = Preprocessing.from_dict(read_metadata(original)["preprocessing"])
    frames = resized_frames(files, pre.input_size)
    reference = ort_run(original, pre.normalize(frames))
    y = nvinfer_input(frames, net_scale_factor, offsets)
    logits = ort_run(fold_for_nvinfer(onnx.load(str(original)), split_normalization(pre), softmax=False), y)
    probabilities = ort_run(folded, y)
    scale = float(np.abs(reference).max())
    return {"images": len(files), "logit_range": scale,
            "max_logit_diff": float(np.abs(logits - reference).max()),
            "max_relative_logit_diff": float(np.abs(logits - reference).max() / scale),
            "max_probability_diff": float(np.abs(probabilities - softmax(reference)).max()),
            "top1_agreement": float((probabilities.argmax(1) == reference.argmax(1)).mean()),
            "logit_top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean())}


def measure(run_dir: str, images: int = 40) -> None:
    """One-off: the same comparison on any run's models (e.g. build/imn18), without TensorRT:
    ``.venv/bin/python -c "from tests.test_deepstream import measure; measure('build/imn18')"``."""
    import tempfile

    run = Path(run_dir)
    files = photo_files(None, images)  # type: ignore[arg-type]  # the shared photos must exist here
    norm = split_normalization(Preprocessing.from_dict(read_metadata(run / "model.fp32.onnx")["preprocessing"]))
    with tempfile.TemporaryDirectory() as scratch:
        for name in deepstream.MODELS:
            folded = deepstream.write_folded(run / name, Path(scratch) / name, norm)
            print(name, json.dumps(compare_on_photos(run / name, folded, norm.net_scale_factor, norm.offsets, files)))
    print("input quantizer steps that differ, over all 256 values of each channel:",
          input_quantizer_flips(run / "model.int8.onnx"))


def input_quantizer_flips(int8: Path) -> int:
    """Pixels are 8-bit, so the first QuantizeLinear sees only 3 x 256 values: count those whose
    INT8 step differs between our normalisation and nvinfer's y times the folded factor. None
    means the Q/DQ model computes bit for bit the same on any image."""
    model = onnx.load(str(int8))
    pre = Preprocessing.from_dict(read_metadata(int8)["preprocessing"])
    norm = split_normalization(pre)
    first = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    scale = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == first.input[1])
    pixels = np.tile(np.arange(256, dtype=np.uint8), (1, 3, 1, 1))  # (1, 3, 1, 256)
    ours = pre.normalize(pixels)
    theirs = nvinfer_input(pixels, norm.net_scale_factor, norm.offsets) * \
        np.asarray(norm.channel_scale, np.float32).reshape(1, 3, 1, 1)
    return int((np.rint(ours / scale) != np.rint(theirs / scale)).sum())


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("std", [(), IMAGENET_STD], ids=["std-as-trained", "std-per-channel"])
def test_folded_models_match_the_originals_on_real_photos(quantized_run, orin_nano, tmp_path, std) -> None:
    """FP32: the same logits within 1e-4 of their range, Softmax of them, the same top-1 on every
    photo. INT8: at least 99% the same top-1 (rounding may move a value across a quantization
    step). nvinfer's scale and offsets are read back from the written config."""
    cfg = run_copy(quantized_run, tmp_path / "runs", std)
    deepstream.run(cfg)
    props = written_config(cfg)
    nsf, offsets = float(props["net-scale-factor"]), [float(o) for o in keyfile_list(props["offsets"])]
    files = photo_files(quantized_run)
    folder = cfg.run_dir / "deepstream"
    fp32 = compare_on_photos(cfg.run_dir / "model.fp32.onnx", folder / "model.fp32.onnx", nsf, offsets, files)
    int8 = compare_on_photos(cfg.run_dir / "model.int8.onnx", folder / "model.int8.onnx", nsf, offsets, files)
    print(f"\nfolded vs original on {len(files)} photos: fp32 {fp32}\nint8 {int8}")
    assert fp32["max_relative_logit_diff"] < 1e-4 and fp32["max_probability_diff"] < 1e-5
    assert fp32["top1_agreement"] == fp32["logit_top1_agreement"] == 1.0
    assert int8["top1_agreement"] >= 0.99 and int8["max_probability_diff"] < 0.05
    assert json.loads((folder / "deepstream.json").read_text())["folded"] == bool(std)


def test_the_config_is_nvinfers_key_file_and_points_at_what_was_built(quantized_run, orin_nano, tmp_path) -> None:
    cfg = run_copy(quantized_run, tmp_path / "runs", IMAGENET_STD)
    config = deepstream.run(cfg)
    assert config == cfg.run_dir / "deepstream" / "config_infer_primary.txt"
    props = written_config(cfg)
    assert set(props) <= NVINFER_PROPERTY_KEYS, f"undocumented keys: {set(props) - NVINFER_PROPERTY_KEYS}"
    assert REQUIRED <= set(props) and not DETECTOR_ONLY & set(props)
    for key in PATH_KEYS:  # relative to the config's folder, as nvinfer resolves them
        assert not Path(keyfile_string(props[key])).is_absolute()
        assert (config.parent / keyfile_string(props[key])).is_file(), key
    folded = config.parent / keyfile_string(props["onnx-file"])
    graph = onnx.load(str(folded)).graph
    profile = get_profile("jetson-orin-nano")
    meta = read_metadata(folded)
    assert props["batch-size"] == str(profile.max_batch) == "8"
    assert keyfile_list(props["infer-dims"]) == [str(d.dim_value) for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    assert keyfile_list(props["infer-dims"]) == ["3", "32", "32"]
    assert (props["network-mode"], props["network-type"], props["process-mode"]) == ("1", "1", "1")
    assert (props["model-color-format"], props["scaling-filter"]) == ("0", "1")  # RGB; bilinear, as trained
    assert keyfile_list(props["output-blob-names"]) == [graph.output[0].name] == ["logits"]
    assert graph.input[0].name == "input" and graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert 0 <= float(props["classifier-threshold"]) < 1
    # nvinfer's parseLabelsFile: a classifier's labels are the ';'-split items of one line per output
    lines = [line for line in (config.parent / keyfile_string(props["labelfile-path"])).read_text().split("\n") if line]
    assert len(lines) == 1 and lines[0].split(";") == list(meta["class_names"])
    assert len(meta["class_names"]) == graph.output[0].type.tensor_type.shape.dim[1].dim_value
    check_engine_was_built_from_the_folded_model(config.parent / keyfile_string(props["model-engine-file"]),
                                                 folded, orin_nano)


def check_engine_was_built_from_the_folded_model(engine: Path, folded: Path, emulated) -> None:
    """The sidecar names the folded ONNX by hash; the emulated engine (the plan carries the ONNX
    it was parsed from) computes what ONNX Runtime computes on the folded model: probabilities."""
    from pipeline.runners.tensorrt_runner import open_engine

    record = json.loads(sidecar_path(engine).read_text())
    assert record["onnx_file"] == "model.int8.onnx" and record["onnx_sha256"] == sha256_file(folded)
    assert record["precision"] == "int8" and record["target"] == "jetson-orin-nano"
    assert Path(record["inputs"]["onnx"]["path"]).parent.name == "deepstream"  # not the temporary folder
    from calibration.qdq import load_tensorrt_qdq

    assert load_tensorrt_qdq(folded).graph.node[0].op_type == "Mul"  # check-qdq's rules hold, Mul first
    runner, info = open_engine(engine, emulated.trt, emulated.cuda)
    y = np.random.default_rng(0).uniform(-2, 2, (12, 3, 32, 32)).astype(np.float32)
    probabilities = runner.run(y)
    runner.close()
    np.testing.assert_allclose(probabilities, ort_run(folded, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_the_folded_model_keeps_our_metadata_and_records_the_fold(quantized_run, orin_nano, tmp_path) -> None:
    cfg = run_copy(quantized_run, tmp_path / "runs", IMAGENET_STD)
    deepstream.run(cfg)
    for name in deepstream.MODELS:
        before = {p.key: p.value for p in onnx.load(str(cfg.run_dir / name)).metadata_props}
        after = {p.key: p.value for p in onnx.load(str(cfg.run_dir / "deepstream" / name)).metadata_props}
        changed = {k for k in before if after.get(k) != before[k]}
        assert changed == {META_PREFIX + "preprocessing"} and set(after) - set(before) == {META_PREFIX + "deepstream"}
        fold = json.loads(after[META_PREFIX + "deepstream"])
        original = json.loads(before[META_PREFIX + "preprocessing"])
        assert fold["original_preprocessing"] == original and fold["softmax"] is True
        # the folded model's own preprocessing is nvinfer's y in our terms: same mean, one std
        pre = Preprocessing.from_dict(json.loads(after[META_PREFIX + "preprocessing"]))
        assert pre.mean == tuple(original["mean"]) and pre.std == pytest.approx((max(IMAGENET_STD),) * 3)
        assert pre.scale / pre.std[0] == pytest.approx(fold["net_scale_factor"], rel=1e-9)


def test_secondary_mode_names_the_detector_and_its_classes(quantized_run, orin_nano, tmp_path) -> None:
    cfg = run_copy(quantized_run, tmp_path / "runs", process_mode=2, gie_id=2, operate_on_gie_id=1,
                   operate_on_class_ids=(0, 2), classifier_threshold=0.3)
    assert deepstream.run(cfg).name == "config_infer_secondary.txt"
    props = written_config(cfg)
    assert set(props) <= NVINFER_PROPERTY_KEYS
    assert (props["process-mode"], props["gie-unique-id"], props["operate-on-gie-id"]) == ("2", "2", "1")
    assert keyfile_list(props["operate-on-class-ids"]) == ["0", "2"] and float(props["classifier-threshold"]) == 0.3


def test_labels_are_one_line_and_a_semicolon_in_a_name_cannot_split_it() -> None:
    names = [f"class {i}" for i in range(997)] + ["crane; the bird", "multi\nline", " leading space"]
    line, renamed = deepstream.labels_line(names)
    assert "\n" not in line and len(line.split(";")) == 1000  # parseLabelsFile's split
    assert line.split(";")[997:] == ["crane, the bird", "multi line", " leading space"]
    assert renamed == {"crane; the bird": "crane, the bird", "multi\nline": "multi line"}


def test_key_file_values_read_back_as_written() -> None:
    props = [("offsets", [123.675, 116.28, 103.53]), ("output-blob-names", ["a;b", "c"]),
             ("labelfile-path", " lead\\ing"), ("net-scale-factor", 0.017124753831663668)]
    parsed = parse_keyfile(deepstream.render_keyfile(props, ["a comment"]))["property"]
    assert [float(v) for v in keyfile_list(parsed["offsets"])] == [123.675, 116.28, 103.53]
    assert keyfile_list(parsed["output-blob-names"]) == ["a;b", "c"]
    assert keyfile_string(parsed["labelfile-path"]) == " lead\\ing"
    assert float(parsed["net-scale-factor"]) == 0.017124753831663668


def test_the_cpu_target_is_refused_and_nothing_is_written(quantized_run, tmp_path) -> None:
    cfg = run_copy(quantized_run, tmp_path / "runs", target="cpu")
    with pytest.raises(ConfigError, match="DeepStream's nvinfer needs a TensorRT target"):
        deepstream.run(cfg)
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == sorted(deepstream.MODELS)


def test_an_implicit_calibrator_profile_is_refused() -> None:
    profile = dataclasses.replace(get_profile("jetson-orin-nano"), calibrator="entropy")
    with pytest.raises(ConfigError, match="implicit calibrator.*explicit Q/DQ"):
        deepstream.refuse_profile(profile)


def test_a_model_without_our_metadata_is_refused(quantized_run, orin_nano, tmp_path) -> None:
    cfg = run_copy(quantized_run, tmp_path / "runs")
    for name in deepstream.MODELS:
        model = onnx.load(str(cfg.run_dir / name))
        del model.metadata_props[:]
        onnx.save(model, str(cfg.run_dir / name))
    with pytest.raises(StaleArtifactError, match="model.int8.onnx: ONNX metadata lacks 'edgeresnet.classes'"):
        deepstream.run(cfg)
    assert not (cfg.run_dir / "deepstream").exists()


def test_a_failed_build_leaves_the_previous_folder_and_no_partial_one(quantized_run, orin_nano, tmp_path,
                                                                       monkeypatch) -> None:
    cfg = run_copy(quantized_run, tmp_path / "runs")
    config = deepstream.run(cfg)
    before = {p.relative_to(config.parent): p.read_bytes() for p in config.parent.rglob("*") if p.is_file()}

    def fails(*args, **kwargs):
        raise ExportError("TensorRT could not build an engine")

    monkeypatch.setattr(deepstream, "build_one", fails)
    with pytest.raises(ExportError):
        deepstream.run(cfg)
    after = {p.relative_to(config.parent): p.read_bytes() for p in config.parent.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == sorted(deepstream.MODELS + ("deepstream",))


def test_a_rebuild_starts_from_the_last_timing_cache(quantized_run, orin_nano, tmp_path) -> None:
    cfg = run_copy(quantized_run, tmp_path / "runs")
    deepstream.run(cfg)
    trt = orin_nano.trt
    trt.LOG.clear()
    deepstream.run(cfg)  # the folder is replaced, its kernel timings are carried over
    hits = [m for _, m in trt.LOG if m.startswith("timing cache: ")]
    assert hits and not hits[-1].startswith("timing cache: 0 hits")


@pytest.mark.parametrize("sets, fragment", [
    (["deepstream.process_mode=3"], "expected 1 \\(primary\\) or 2 \\(secondary\\)"),
    (["deepstream.classifier_threshold=1.5"], "a probability"),
    (["deepstream.operate_on_class_ids=[0, 2]"], "only with process_mode = 2"),
    (["deepstream.process_mode=2", "deepstream.operate_on_gie_id=1"], "another element's gie id"),
])
def test_deepstream_settings_are_validated(sets: List[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, sets)
