"""The quantize stage: ``model.fp32.onnx`` + calibration manifest → two INT8 renderings.

One calibration (NNCF post-training quantization) is written twice:
``model.int8.cpu.onnx`` keeps NNCF's UINT8 activations (ONNX Runtime's fast x86 kernels
take U8 activations with S8 weights), and ``model.int8.onnx`` is rewritten to TensorRT's
rules (signed INT8, zero point 0) and checked against them; engines are built from it.
"""
from __future__ import annotations

import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from calibration.feeding import calibration_inputs, require_finite_outputs
from calibration.manifest import CalibrationManifest, load_manifest
from calibration.qdq import check_tensorrt_qdq, to_tensorrt_rules, QDQ_OPS
from pipeline.artifacts import atomic_path, provenance, sha256_file, write_json
from pipeline.config import Config, QuantizeConfig, config_to_dict
from pipeline.workstation.data import open_dataset
from pipeline.errors import ExportError, StaleArtifactError
from pipeline.onnx_meta import read_metadata
from pipeline.optional import import_optional
from pipeline.preprocess import Preprocessing, load_images


def run(cfg: Config) -> Path:
    """Write both INT8 renderings and ``quantize.json``; return the TensorRT-rules model."""
    out = cfg.run_dir
    fp32_path, manifest_path = out / "model.fp32.onnx", out / "calibration" / "manifest.json"
    manifest = load_manifest(manifest_path)
    meta = read_metadata(fp32_path)
    require_same_model(fp32_path, meta, out / "model.pt", manifest, manifest_path)
    pre = Preprocessing.from_dict(meta["preprocessing"])
    fp32 = onnx.load(str(fp32_path))
    require_input_shape(fp32, pre, fp32_path)
    inputs = calibration_inputs(manifest, pre, cfg.data.workers)
    require_finite_outputs(fp32_path, inputs)
    if cfg.quantize.method == "onnxruntime":
        return _run_peer(cfg, fp32_path, manifest_path, manifest.set_sha256, inputs)
    start = time.perf_counter()
    if cfg.quantize.max_drop:
        control = control_set(cfg, manifest, pre)
        cpu_model = quantize_nncf_max_drop(fp32, inputs, control, cfg.quantize)
    else:
        cpu_model = quantize_nncf(fp32, inputs, cfg.quantize)
    _copy_metadata(fp32, cpu_model)
    trt_model, rewritten = to_tensorrt_rules(cpu_model)
    seconds = time.perf_counter() - start
    problems = check_tensorrt_qdq(trt_model)
    if problems:
        raise StaleArtifactError(f"{out / 'model.int8.onnx'}: breaks TensorRT's rules ({problems[0]})")
    models = {"cpu": (cpu_model, out / "model.int8.cpu.onnx"), "tensorrt": (trt_model, out / "model.int8.onnx")}
    for model, path in models.values():
        _save(model, path)
    paths = {kind: path for kind, (_, path) in models.items()}
    record = _record(cfg, fp32_path, manifest_path, manifest.set_sha256, len(inputs), models,
                     rewritten, seconds)
    write_json(out / "quantize.json", record)
    print(f"quantized with {len(inputs)} calibration images in {seconds:.0f} s: {paths['tensorrt']} "
          f"(TensorRT rules, {rewritten} UINT8 quantizers made INT8), {paths['cpu']} (UINT8 activations)")
    return paths["tensorrt"]


def _run_peer(cfg: Config, fp32_path: Path, manifest_path: Path, set_sha256: str,
              inputs: np.ndarray) -> Path:
    """``--method onnxruntime``: the peer's model beside ours, from the same manifest."""
    out = cfg.run_dir / "model.int8.ort.onnx"
    start = time.perf_counter()
    quantize_onnxruntime(fp32_path, inputs, out)
    seconds = time.perf_counter() - start
    problems = check_tensorrt_qdq(onnx.load(str(out)))
    record = provenance("quantize", {"fp32": fp32_path, "manifest": manifest_path})
    record.update(method="onnxruntime.quantize_static", calibration={"images": len(inputs),
                  "set_sha256": set_sha256}, seconds=seconds, tensorrt_rules_violations=len(problems),
                  renderings={"peer": {"path": str(out), "sha256": sha256_file(out),
                                       "qdq_nodes": count_qdq(onnx.load(str(out)))}}, config=config_to_dict(cfg))
    write_json(cfg.run_dir / "quantize.ort.json", record)
    print(f"quantized with ONNX Runtime quantize_static in {seconds:.0f} s: {out}")
    return out


def require_same_model(fp32_path: Path, meta: dict[str, Any], ckpt_path: Path,
                       manifest: CalibrationManifest, manifest_path: Path) -> None:
    """The ONNX must be this run's: exported from its ``model.pt`` (when there is one; the
    metadata records the checkpoint's sha256) and of the calibration manifest's classes."""
    classes = tuple(meta.get("classes", ()))
    if classes != manifest.classes:
        raise StaleArtifactError(f"{fp32_path}: {_class_mismatch(classes, manifest.classes, manifest_path)}; "
                                 f"the ONNX is another model's or the manifest another dataset's: run "
                                 f"export or calibrate again")
    if not ckpt_path.is_file():
        return  # an ONNX-only run (e.g. from a bundle): nothing to tie it to
    recorded, actual = meta.get("checkpoint_sha256"), sha256_file(ckpt_path)
    if recorded != actual:
        was = f"sha256 {recorded[:12]}" if recorded else "no recorded checkpoint sha256"
        raise StaleArtifactError(f"{fp32_path}: exported from another checkpoint ({was}) than "
                                 f"{ckpt_path} (sha256 {actual[:12]}); run export again")


def _class_mismatch(classes: tuple[str, ...], expected: tuple[str, ...], manifest_path: Path) -> str:
    """``3 classes (a, b, c) but M has 10 (0, 1, 2, ...)``, or the first class that differs."""
    if len(classes) == len(expected):
        i = next(i for i, (a, b) in enumerate(zip(classes, expected)) if a != b)
        return f"class {i} is '{classes[i]}' but {manifest_path} has '{expected[i]}'"
    return f"{len(classes)} classes ({_preview(classes)}) but {manifest_path} has {len(expected)} ({_preview(expected)})"


def _preview(names: tuple[str, ...], show: int = 3) -> str:
    return ", ".join(names[:show]) + (", ..." if len(names) > show else "")


def require_input_shape(model: onnx.ModelProto, pre: Preprocessing, path: Path) -> None:
    """The model's (batch, 3, S, S) input must be what the preprocessing produces."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    expected = [3, pre.input_size, pre.input_size]
    if len(shape) != 4 or shape[1:] != expected:
        raise ExportError(f"{path}: input shape {shape} does not match the preprocessing "
                          f"(batch, {', '.join(map(str, expected))})")


def quantize_nncf(model: onnx.ModelProto, inputs: np.ndarray, cfg: QuantizeConfig) -> onnx.ModelProto:
    """NNCF post-training quantization: symmetric INT8 weights per channel, activations per
    tensor (UINT8 after ReLUs), every calibration image used."""
    nncf = import_optional("nncf", "to quantize the model (post-training INT8)",
                           "install it with `pip install -r requirements.txt`")
    name = model.graph.input[0].name
    dataset = nncf.Dataset(list(inputs[:, None]), lambda x: {name: x})  # items (1, 3, S, S)
    return nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE,
                         target_device=nncf.TargetDevice.CPU, subset_size=len(inputs),
                         advanced_parameters=_advanced(nncf, cfg))


def quantize_onnxruntime(fp32_path: Path, inputs: np.ndarray, out: Path) -> Path:
    """The peer we measure ourselves against: ONNX Runtime's ``quantize_static`` in its
    TensorRT-ready setting (QDQ, signed INT8, symmetric, per-channel weights, min-max)."""
    from onnxruntime import quantization as q

    name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs[:, None])

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {name: item}

    with atomic_path(out) as tmp:
        q.quantize_static(str(fp32_path), str(tmp), Reader(), quant_format=q.QuantFormat.QDQ,
                          per_channel=True, activation_type=q.QuantType.QInt8,
                          weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax,
                          extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        model = onnx.load(str(tmp))
        _copy_metadata(onnx.load(str(fp32_path), load_external_data=False), model)
        onnx.save(model, str(tmp))
    return out


def _copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """The quantized model keeps the FP32 model's classes and preprocessing."""
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)


def control_set(cfg: Config, manifest: CalibrationManifest, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Images for accuracy control: training images not in the calibration set.

    Choosing which layers stay in float by their effect on the val split would tune the
    model to the split its accuracy is reported on, so a held-out slice of train is used.
    """
    split = open_dataset(cfg.data).split("train")
    used = {item.path for item in manifest.items}
    rest = [i for i, f in enumerate(split.files) if str(f) not in used]
    picks = sorted(random.Random(cfg.run.seed + 1).sample(rest, min(cfg.quantize.control_images, len(rest))))
    images = load_images([split.files[i] for i in picks], pre.prepare, cfg.data.workers, "control images")
    return pre.normalize(images), np.array([split.labels[i] for i in picks])


def quantize_nncf_max_drop(model: onnx.ModelProto, inputs: np.ndarray,
                           control: tuple[np.ndarray, np.ndarray], cfg: QuantizeConfig) -> onnx.ModelProto:
    """NNCF's accuracy control: layers go back to float until top-1 drops at most ``max_drop``."""
    nncf = import_optional("nncf", "for accuracy-aware quantization", "pip install -r requirements.txt")
    name = model.graph.input[0].name
    calibration = nncf.Dataset(list(inputs[:, None]), lambda x: {name: x})
    validation = nncf.Dataset(list(zip(control[0][:, None], control[1])), lambda item: {name: item[0]})
    sessions: dict[int, ort.InferenceSession] = {}

    def top1(candidate: onnx.ModelProto, items: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[float]]:
        if id(candidate) not in sessions:  # NNCF calls this once per item while ranking layers
            sessions[id(candidate)] = ort.InferenceSession(candidate.SerializeToString(),
                                                           providers=["CPUExecutionProvider"])
        session = sessions[id(candidate)]
        hits = [float(session.run(None, {name: x})[0].argmax() == y) for x, y in items]
        return float(np.mean(hits)), hits

    return nncf.quantize_with_accuracy_control(
        model, calibration, validation, top1, max_drop=cfg.max_drop, drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
        subset_size=len(inputs), advanced_quantization_parameters=_advanced(nncf, cfg))


def _advanced(nncf: Any, cfg: QuantizeConfig) -> Any:
    """NNCF's advanced parameters: bias correction off unless asked for (``fast``)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    return AdvancedQuantizationParameters(disable_bias_correction=cfg.bias_correction == "off")


def float_layers(model: onnx.ModelProto) -> list[str]:
    """Conv/Gemm layers whose weights are not dequantized: those kept in higher precision."""
    dequantized = {out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return [n.name or n.output[0] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] not in dequantized]


def _save(model: onnx.ModelProto, path: Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))


def _record(cfg: Config, fp32_path: Path, manifest_path: Path, set_sha256: str, images: int,
            models: dict[str, tuple[onnx.ModelProto, Path]], rewritten: int, seconds: float) -> dict[str, Any]:
    """The record of both renderings, from the models in memory (no re-reading)."""
    record = provenance("quantize", {"fp32": fp32_path, "manifest": manifest_path})
    record.update(method="nncf", calibration={"images": images, "set_sha256": set_sha256},
                  seconds=seconds, uint8_quantizers_made_int8=rewritten,
                  max_drop=cfg.quantize.max_drop or None,
                  float_layers=float_layers(models["tensorrt"][0]),
                  renderings={k: {"path": str(p), "sha256": sha256_file(p), "qdq_nodes": count_qdq(m)}
                              for k, (m, p) in models.items()},
                  config=config_to_dict(cfg))
    return record


def count_qdq(model: onnx.ModelProto) -> int:
    return sum(n.op_type in QDQ_OPS for n in model.graph.node)
