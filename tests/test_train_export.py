"""Train → checkpoint → ONNX on real (small) data through the real components."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from pipeline.workstation import export, train
from pipeline.onnx_meta import read_metadata
from pipeline.artifacts import sha256_file, sidecar_path
from pipeline.workstation.checkpoint import FORMAT, load_checkpoint
from pipeline.errors import CheckpointError, ExportError
from tests.conftest import make_config

def test_training_writes_every_artifact_and_learns(digits_run) -> None:
    out = digits_run.run_dir
    for name in ("model.pt", "last.pt", "best.pt", "train.json", "train.png", "config.toml"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "train.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["metrics"]["val_top1"] > 0.5  # ten classes: chance is 0.1
    assert not list(out.glob(".*partial*")), "temporary files left behind"


def test_checkpoint_carries_what_later_stages_need(digits_run) -> None:
    raw = torch.load(digits_run.run_dir / "model.pt", weights_only=True)
    assert raw["format"] == FORMAT
    ckpt = load_checkpoint(digits_run.run_dir / "model.pt")
    assert ckpt.model_name == "resnet20"
    assert ckpt.classes == [str(d) for d in range(10)]
    assert ckpt.preprocessing.input_size == 32 and ckpt.preprocessing.colour == "RGB"
    assert ckpt.preprocessing.mean == (0.30, 0.30, 0.30)
    assert ckpt.config["train"]["epochs"] == 3
    assert ckpt.metrics["val_top1"] == json.loads((digits_run.run_dir / "train.json").read_text())["metrics"]["val_top1"]
    model = ckpt.build()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_onnx_has_fixed_names_dynamic_batch_and_metadata(digits_run) -> None:
    path = digits_run.run_dir / "model.fp32.onnx"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    meta = read_metadata(path)
    assert meta["classes"] == [str(d) for d in range(10)]
    assert meta["preprocessing"]["input_size"] == 32
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        assert session.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 10)


def test_sidecar_records_parity_on_real_images(digits_run) -> None:
    onnx_path = digits_run.run_dir / "model.fp32.onnx"
    record = json.loads(sidecar_path(onnx_path).read_text())
    assert record["parity"]["images"] == 64
    assert record["parity"]["max_abs_error"] < 1e-3
    assert record["parity"]["top1_agreement"] == 1.0
    assert record["inputs"]["checkpoint"]["path"].endswith("model.pt")
    assert record["parity"]["tolerance_ratio"] <= 1
    assert record["onnx_sha256"] == sha256_file(onnx_path)


def test_parity_failure_leaves_no_onnx(digits_run, tmp_path: Path) -> None:
    """A zero tolerance cannot be met by two different runtimes: the export is refused."""
    cfg = make_config(tmp_path, data__root=digits_run.data.root, run__root=digits_run.run.root,
                      run__name="strict", export__atol=0.0, export__rtol=0.0, export__parity_images=16)
    out = cfg.run_dir
    out.mkdir(parents=True)
    (out / "model.pt").write_bytes((digits_run.run_dir / "model.pt").read_bytes())
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export.run(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]


def test_resume_continues_after_the_last_epoch(tmp_path: Path, datasets_root: Path) -> None:
    cfg = make_config(tmp_path, data__root=str(datasets_root), train__epochs=1,
                      train__batch_size=128, model__width=8)
    train.run(cfg)
    longer = make_config(tmp_path, data__root=str(datasets_root), train__epochs=2,
                         train__batch_size=128, model__width=8, train__resume=True)
    train.run(longer)
    history = load_checkpoint(cfg.run_dir / "model.pt").history
    assert [h["epoch"] for h in history] == [1, 2]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path: Path, datasets_root: Path) -> None:
    cfg = make_config(tmp_path, data__root=str(datasets_root), train__epochs=1,
                      train__batch_size=128, model__width=8, run__name="r")
    train.run(cfg)
    other = make_config(tmp_path, data__root=str(datasets_root), model__name="resnet32",
                        train__resume=True, run__name="r")
    with pytest.raises(CheckpointError, match="holds resnet20"):
        train.run(other)


def test_fine_tuning_from_torchvision_weights_replaces_the_head(tmp_path: Path, shapes_root: Path) -> None:
    """ImageNet-family model on photos-like data, starting from a torchvision state dict."""
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cfg = make_config(tmp_path, "photos", data__path=str(shapes_root), model__weights=str(weights),
                      preprocess__input_size=32, preprocess__resize=36, train__cache_size=40,
                      train__sizes=[], train__epochs=1, train__batch_size=12, train__lr=0.05)
    train.run(cfg)
    ckpt = load_checkpoint(cfg.run_dir / "model.pt")
    assert ckpt.classes == ["bright", "dots", "stripes"]
    assert ckpt.state_dict["fc.weight"].shape == (3, 512)


def test_nan_logits_refuse_the_export_and_leave_no_onnx(digits_run, tmp_path: Path) -> None:
    """NaN logits on both sides used to pass parity (max(0, nan) is 0); now they are named."""
    import dataclasses

    from pipeline.workstation.checkpoint import save_checkpoint

    cfg = make_config(tmp_path, data__root=digits_run.data.root, run__root=digits_run.run.root,
                      run__name="nan-logits", export__parity_images=16)
    out = cfg.run_dir
    out.mkdir(parents=True)
    ckpt = load_checkpoint(digits_run.run_dir / "model.pt")
    state = {k: v.clone() for k, v in ckpt.state_dict.items()}
    state["fc.bias"][3] = float("nan")
    save_checkpoint(dataclasses.replace(ckpt, state_dict=state), out / "model.pt")
    with pytest.raises(ExportError, match=rf"^{out / 'model.pt'} \(PyTorch\): NaN logits on batch 0 "
                                          rf"\(inputs 0\.\.15\).*{out / 'model.fp32.onnx'} not written"):
        export.run(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]


def test_training_that_diverges_stops_naming_epoch_and_step(tmp_path: Path, datasets_root: Path) -> None:
    """A huge but finite learning rate drives the loss to NaN/inf: no model.pt, one line."""
    from pipeline.errors import PipelineError

    cfg = make_config(tmp_path, data__root=str(datasets_root), train__epochs=2, train__lr=1e30,
                      train__batch_size=128, model__width=8, train__precision="fp32")
    with pytest.raises(PipelineError, match=r"^training diverged at epoch 1, step \d+/\d+: loss is (nan|inf)") as info:
        train.run(cfg)
    assert "\n" not in str(info.value) and "train.lr=1e+30" in str(info.value)
    assert not (cfg.run_dir / "model.pt").exists()
    assert not (cfg.run_dir / "last.pt").exists(), "the diverged epoch was saved"


def test_nan_val_logits_stop_training_naming_the_epoch_and_batch(tmp_path: Path, datasets_root: Path) -> None:
    """BatchNorm statistics that went NaN leave the training loss finite (training uses the
    batch's statistics) but every val logit NaN: training stops at the first val pass."""
    from pipeline.errors import PipelineError
    from pipeline.workstation.models import build_model

    torch.manual_seed(0)
    state = build_model("resnet20", 10, width=8).state_dict()
    state["layer2.0.bn1.running_mean"][0] = float("nan")
    weights = tmp_path / "nan-stats.pth"
    torch.save(state, weights)
    cfg = make_config(tmp_path, data__root=str(datasets_root), train__epochs=2, train__batch_size=128,
                      model__width=8, model__weights=str(weights), train__precision="fp32")
    with pytest.raises(PipelineError, match=r"^training diverged at epoch 1: NaN logits on val batch 0 "):
        train.run(cfg)
    assert not (cfg.run_dir / "model.pt").exists() and not (cfg.run_dir / "last.pt").exists()
