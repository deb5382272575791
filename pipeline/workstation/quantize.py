"""The quantize stage: ``model.fp32.onnx`` + calibration manifest → two INT8 renderings.

One calibration (NNCF post-training quantization) is written twice:
``model.int8.cpu.onnx`` keeps NNCF's UINT8 activations (ONNX Runtime's fast x86 kernels
take U8 activations with S8 weights), and ``model.int8.onnx`` is rewritten to TensorRT's
rules (signed INT8, zero point 0) and checked against them; engines are built from it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibration.feeding import calibration_inputs, require_finite_outputs
from calibration.manifest import CalibrationManifest, load_manifest
from calibration.qdq import check_tensorrt_qdq, float_layers, to_tensorrt_rules, QDQ_OPS
from pipeline.artifacts import atomic_path, provenance, sha256_file, write_json
from pipeline.config import Config, QuantizeConfig, config_to_dict
from pipeline.errors import DataError, ExportError, StaleArtifactError
from pipeline.imagefolder import class_mapping, read_class_names
from pipeline.onnx_meta import read_metadata
from pipeline.optional import import_optional
from pipeline.preprocess import Preprocessing
from pipeline.workstation.budget import quantize_within_budget


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
    cpu_model, route = quantize_nncf(fp32, inputs, cfg.quantize), {"method": "ptq"}
    if cfg.quantize.max_drop or cfg.quantize.max_disagreement:
        nncf = import_optional("nncf", "to quantize the model (post-training INT8)", "pip install -r requirements.txt")
        cpu_model, route = quantize_within_budget(cfg, fp32, inputs, meta, cpu_model,
                                                  advanced_parameters(nncf, cfg.quantize))
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
                     rewritten, seconds, route)
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
    metadata records the checkpoint's sha256) and of the calibration manifest's classes, or
    (an imported model with more classes than the data) labels they map to by name."""
    classes = tuple(meta.get("classes", ()))
    if classes != manifest.classes:
        names = read_class_names(Path(manifest.source).parent, manifest.classes)  # the tree's classes.tsv
        try:
            class_mapping(manifest.classes, names, classes, tuple(meta["class_names"]), manifest_path)
        except DataError as exc:
            raise StaleArtifactError(f"{fp32_path}: {_class_mismatch(classes, manifest.classes, manifest_path)}; "
                                     f"the ONNX is another model's or the manifest another dataset's: run "
                                     f"export or calibrate again ({str(exc).partition(': ')[2]})") from None
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
                         advanced_parameters=advanced_parameters(nncf, cfg))


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


def advanced_parameters(nncf: Any, cfg: QuantizeConfig) -> Any:
    """NNCF's advanced parameters from the configuration: bias correction off unless asked
    for (``fast``), the activation range estimator, weight granularity. Activations stay
    per-tensor and symmetric, as TensorRT accepts nothing else; they stay UINT8 after ReLUs
    (``to_tensorrt_rules`` makes them INT8), as NNCF 3.4 refuses ``signedness_to_force`` on
    every hardware configuration (its constraint check takes the configurations' "either"
    for a conflict), and for min/max ranges signed INT8 would get the same scale. Per-tensor
    activations are forced: left to itself NNCF gives a depthwise convolution's input
    (MobileNet, EfficientNet) one scale per channel, which TensorRT refuses."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    return AdvancedQuantizationParameters(
        disable_bias_correction=cfg.bias_correction == "off",
        activations_quantization_params=QuantizationParameters(per_channel=False),
        activations_range_estimator_params=_range_estimator(cfg.activation_range),
        weights_quantization_params=QuantizationParameters(per_channel=False) if cfg.weights == "per_tensor" else None)


def _range_estimator(name: str) -> Any:
    """``mean_minmax`` is NNCF's own default for per-tensor activations (None keeps it);
    ``percentile`` averages each image's 0.01% and 99.99% quantiles; ``histogram`` picks
    the range minimising the quantization error on a histogram (the MSE estimator)."""
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return {"mean_minmax": None, "minmax": RangeEstimatorParametersSet.MINMAX,
            "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
            "histogram": RangeEstimatorParametersSet.HISTOGRAM}[name]


def _save(model: onnx.ModelProto, path: Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))


def _record(cfg: Config, fp32_path: Path, manifest_path: Path, set_sha256: str, images: int,
            models: dict[str, tuple[onnx.ModelProto, Path]], rewritten: int, seconds: float,
            route: dict[str, Any]) -> dict[str, Any]:
    """The record of both renderings, from the models in memory (no re-reading)."""
    record = provenance("quantize", {"fp32": fp32_path, "manifest": manifest_path})
    record.update(method="nncf", calibration={"images": images, "set_sha256": set_sha256},
                  seconds=seconds, uint8_quantizers_made_int8=rewritten,
                  max_drop=cfg.quantize.max_drop or None, max_disagreement=cfg.quantize.max_disagreement or None,
                  settings=describe(cfg.quantize, images, route["method"]), route=route,
                  float_layers=float_layers(models["tensorrt"][0]),
                  renderings={k: {"path": str(p), "sha256": sha256_file(p), "qdq_nodes": count_qdq(m)}
                              for k, (m, p) in models.items()},
                  config=config_to_dict(cfg))
    return record


def describe(q: QuantizeConfig, images: int, method: str) -> str:
    """The method in words, as bench-quant and the report print it."""
    budget = (f", budget: top-1 drop <= {q.max_drop:g}" if q.max_drop else
              f", budget: disagreement <= {q.max_disagreement:g}" if q.max_disagreement else "")
    how = {"ptq": "NNCF PTQ", "qat": f"NNCF QAT ({q.qat_steps} steps from the checkpoint)",
           "accuracy-control": "NNCF PTQ + accuracy control"}[method]
    return (f"{how}, {q.activation_range.replace('_', ' ')} activation ranges, "
            f"{q.weights.replace('_', '-')} weights, {images} calibration images{budget}")


def count_qdq(model: onnx.ModelProto) -> int:
    return sum(n.op_type in QDQ_OPS for n in model.graph.node)
