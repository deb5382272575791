"""The export stage: ``model.pt`` → ``model.fp32.onnx``, checked before it is kept.

The ONNX file carries its class list and preprocessing in ``metadata_props`` (so a device
with no torch can use it alone); its sidecar records where it came from and how close
ONNX Runtime's outputs are to PyTorch's on real validation images. An export that fails
the checker or the parity tolerance is deleted, never left for the next stage.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pipeline.artifacts import atomic_path, provenance, sha256_file, sidecar_path, write_json
from pipeline.workstation.checkpoint import Checkpoint, load_checkpoint
from pipeline.config import Config, ExportConfig, config_to_dict
from pipeline.workstation.data import ImageSplit, open_dataset
from pipeline.errors import ExportError
from pipeline.onnx_meta import set_metadata
from pipeline.preprocess import Preprocessing, load_images
from pipeline.runners import Parity, compare_runners
from pipeline.runners.compare import NonFiniteLogitsError
from pipeline.runners.onnxruntime_runner import OnnxRuntimeRunner
from pipeline.workstation.torch_runner import TorchRunner

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def run(cfg: Config) -> Path:
    """Export the run's ``model.pt`` and return the path of ``model.fp32.onnx``."""
    out = cfg.run_dir
    ckpt_path, onnx_path = out / "model.pt", out / "model.fp32.onnx"
    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.build()
    inputs, labels = parity_inputs(open_dataset(cfg.data).split("val"), ckpt.preprocessing, cfg)
    with atomic_path(onnx_path) as tmp:
        export_onnx(model, ckpt, tmp, cfg.export.opset, ckpt_sha256=sha256_file(ckpt_path))
        parity = check_parity(model, tmp, inputs, labels, cfg.export, name=onnx_path,
                              reference=f"{ckpt_path} (PyTorch)")
        record = provenance("export", {"checkpoint": ckpt_path})
        record.update(onnx_sha256=sha256_file(tmp), opset=cfg.export.opset,
                      input={"name": INPUT_NAME, "shape": ["batch", 3, ckpt.preprocessing.input_size,
                                                           ckpt.preprocessing.input_size]},
                      output={"name": OUTPUT_NAME, "shape": ["batch", len(ckpt.classes)]},
                      parity=parity.to_dict(),
                      tolerance={"atol": cfg.export.atol, "rtol": cfg.export.rtol,
                                 "min_agreement": cfg.export.min_agreement},
                      config=config_to_dict(cfg))
        write_json(sidecar_path(onnx_path), record)
    print(f"exported {onnx_path}: max |ONNX - torch| {parity.max_abs_error:.2e}, top-1 agreement "
          f"{parity.top1_agreement:.2%} on {parity.images} val images")
    return onnx_path


def export_onnx(model: nn.Module, ckpt: Checkpoint, path: Path, opset: int, ckpt_sha256: str) -> None:
    """torch.export-based ONNX with a dynamic batch axis, fixed I/O names and metadata."""
    save_onnx(model, ckpt.preprocessing.input_size, path, opset, ckpt_metadata(ckpt, ckpt_sha256), ckpt.path)


def save_onnx(model: nn.Module, size: int, path: Path, opset: int, metadata: dict[str, str], source: Path) -> None:
    """``model`` on (batch, 3, size, size) as checked ONNX with our ``metadata``; a failure
    names ``source``, the file the model came from."""
    example = torch.zeros(2, 3, size, size)  # batch 2, so the batch axis is not specialised to 1
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:  # kept in memory, then saved once as a single file (no external-data sidecar)
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), verbose=False)
    except Exception as exc:  # the exporter raises many types; the user needs the first line
        raise ExportError(f"{source}: ONNX export failed ({str(exc).splitlines()[0]})") from None
    proto = program.model_proto
    set_metadata(proto, metadata)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker failed ({str(exc).splitlines()[0]})") from None


def ckpt_metadata(ckpt: Checkpoint, ckpt_sha256: str) -> dict[str, str]:
    """What a consumer of the ONNX needs without the checkpoint: classes and preprocessing."""
    return {
        "classes": json.dumps(ckpt.classes),
        "class_names": json.dumps(ckpt.class_names),
        "preprocessing": json.dumps(ckpt.preprocessing.to_dict()),
        "model": json.dumps({"name": ckpt.model_name, "options": ckpt.model_options}),
        "checkpoint_sha256": ckpt_sha256,
    }


def parity_inputs(split: ImageSplit, pre: Preprocessing, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of real val images, preprocessed by the model's own definition."""
    count = min(cfg.export.parity_images, len(split))
    picks = sorted(random.Random(cfg.run.seed).sample(range(len(split)), count))
    images = load_images([split.files[i] for i in picks], pre.prepare, cfg.data.workers, "parity images")
    labels = np.array([split.labels[i] for i in picks])
    return pre.normalize(images), labels


def check_parity(model: nn.Module, onnx_path: Path, inputs: np.ndarray, labels: np.ndarray,
                 cfg: ExportConfig, name: Path | None = None, reference: str = "PyTorch") -> Parity:
    """ONNX Runtime vs PyTorch; above the tolerance, or on a NaN or infinite logit from
    either, the export is refused (``name``: the ONNX's final path, ``reference``: the model's)."""
    where = name or onnx_path
    runner = OnnxRuntimeRunner(onnx_path)
    try:
        parity = compare_runners(TorchRunner(model), runner, _batches(inputs, labels, 64), cfg.atol, cfg.rtol,
                                 names=(reference, f"{where} (ONNX Runtime)"))
    except NonFiniteLogitsError as exc:
        raise ExportError(f"{exc} of the parity images; {where} not written") from None
    finally:
        runner.close()
    if parity.tolerance_ratio > 1:
        raise ExportError(f"{where}: ONNX Runtime differs from PyTorch by up to "
                          f"{parity.max_abs_error:.3g} (relative {parity.max_rel_error:.3g}), beyond "
                          f"export.atol={cfg.atol:g} + export.rtol={cfg.rtol:g} x |logit|")
    if parity.top1_agreement < cfg.min_agreement:
        raise ExportError(f"{where}: ONNX Runtime agrees with PyTorch on only "
                          f"{parity.top1_agreement:.2%} of top-1 labels "
                          f"(export.min_agreement is {cfg.min_agreement:.2%})")
    return parity


def _batches(inputs: np.ndarray, labels: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(inputs), size):
        yield inputs[start:start + size], labels[start:start + size]
