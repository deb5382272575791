"""Quantization-aware fine-tuning: the fallback when post-training INT8 misses its budget.

NNCF puts its fake quantizers into the trained PyTorch model (ranges calibrated on the same
manifest images as post-training quantization), then the quantized model is fine-tuned for
a bounded number of steps to match the FP32 model's own logits (distillation). Matching
FP32 rather than the labels is what raises agreement, which is the budget; BatchNorm statistics stay frozen, as a few hundred small
batches would only add noise to them. The result is exported with NNCF's quantizers as ONNX
QuantizeLinear/DequantizeLinear pairs and goes through the same rewrite to TensorRT's rules
and the same checker as the post-training model.
"""
from __future__ import annotations

import io
import math
import random
import time
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.config import Config
from pipeline.errors import StaleArtifactError
from pipeline.optional import import_optional
from pipeline.preprocess import Preprocessing, load_images
from pipeline.workstation.checkpoint import load_checkpoint
from pipeline.workstation.data import open_dataset
from pipeline.workstation.export import INPUT_NAME, OUTPUT_NAME


def finetune(cfg: Config, calibration: np.ndarray, pre: Preprocessing, advanced: Any) -> onnx.ModelProto:
    """The quantized, fine-tuned model as Q/DQ ONNX (NNCF's UINT8 after ReLUs, as from
    post-training quantization); ``advanced`` are the same NNCF parameters PTQ used."""
    import torch

    nncf = import_optional("nncf", "for quantization-aware fine-tuning", "pip install -r requirements.txt")
    ckpt_path = cfg.run_dir / "model.pt"
    if not ckpt_path.is_file():
        raise StaleArtifactError(f"{ckpt_path}: quantization-aware fine-tuning starts from the trained "
                                 f"checkpoint, and this run has none (an ONNX-only run): set quantize.qat_steps=0")
    torch.manual_seed(cfg.run.seed)
    checkpoint = load_checkpoint(ckpt_path)
    teacher = checkpoint.build()  # build() makes a model of its own: the student's weights are separate
    batches = [torch.from_numpy(calibration[i:i + 8]) for i in range(0, len(calibration), 8)]
    student = nncf.quantize(checkpoint.build(), nncf.Dataset(batches),
                            preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                            subset_size=len(calibration), advanced_parameters=advanced)
    _train(student, teacher, cfg, pre)
    return export_qdq(student, pre.input_size, cfg.export.opset)


def _train(student: Any, teacher: Any, cfg: Config, pre: Preprocessing) -> None:
    """``qat_steps`` steps of SGD (momentum 0.9, cosine from ``qat_lr``) on seeded batches of
    training images under the training recipe's augmentation (crops and flips make the
    near-ties that INT8 flips; the clean training images are mostly far from any), with
    BatchNorm frozen; the loss every tenth of the way is printed."""
    import torch

    from pipeline.workstation.augment import augment_batch, image_seeds, normalize_batch

    q = cfg.quantize
    split = open_dataset(cfg.data).split("train")
    rng = random.Random(cfg.run.seed + 2)
    optimizer = torch.optim.SGD(student.parameters(), lr=q.qat_lr, momentum=0.9)
    student.train()
    for module in student.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    start, report = time.perf_counter(), max(1, q.qat_steps // 10)
    for step in range(q.qat_steps):
        picks = rng.sample(range(len(split)), min(q.qat_batch, len(split)))
        images = torch.from_numpy(load_images([split.files[i] for i in picks], pre.prepare, cfg.data.workers,
                                              "qat", show_progress=False))
        seeds = image_seeds(cfg.run.seed + 2, step, picks)
        x = normalize_batch(augment_batch(images, cfg.train, pre.input_size, seeds), pre)
        with torch.no_grad():
            target = teacher(x)
        loss = distillation_loss(student(x), target)
        for group in optimizer.param_groups:
            group["lr"] = q.qat_lr * 0.5 * (1 + math.cos(math.pi * step / q.qat_steps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % report == 0 or step + 1 == q.qat_steps:
            print(f"  qat step {step + 1}/{q.qat_steps}: distillation loss {loss.item():.5f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    student.eval()


def distillation_loss(student: Any, teacher: Any) -> Any:
    """Mean squared error between the student's logits and the FP32 model's: a flip is a
    near-tie between two logits, which matching the logits themselves preserves, while the
    KL divergence of the softmaxes hardly sees it. On the Imagenette ResNet-18 (200 steps,
    tuning half): KL left 10 flips at lr 1e-3, logit MSE 8 at 1e-3 and 6 at 1e-4, from the
    8 of the quantized model before fine-tuning."""
    import torch.nn.functional as F

    return F.mse_loss(student, teacher)


def export_qdq(model: Any, size: int, opset: int) -> onnx.ModelProto:
    """NNCF's quantizers as ONNX Q/DQ pairs (its default export is a custom FakeQuantize op
    that neither TensorRT nor ONNX Runtime reads), through the TorchScript exporter, which
    calls the quantizers' ONNX symbolics; their scales come out as Constant nodes, which are
    made initializers, as TensorRT's rules (and our checker) want constant scales."""
    import torch
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    for module in model.modules():
        if isinstance(module, BaseQuantizer):
            module.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    example, buffer = torch.zeros(2, 3, size, size), io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return constants_to_initializers(onnx.load_from_string(buffer.getvalue()))


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every tensor-valued Constant node becomes an initializer of the same name."""
    keep = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model
