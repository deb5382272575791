"""Integration on real photos: a slice of the shared Imagenette copy, train → export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.workstation import export, train
from pipeline.onnx_meta import read_metadata
from pipeline.artifacts import sidecar_path
from pipeline.workstation.checkpoint import load_checkpoint
from tests.conftest import SHARED_IMAGENETTE, make_config

pytestmark = pytest.mark.skipif(not SHARED_IMAGENETTE.is_dir(), reason="no shared Imagenette copy")


def slice_imagenette(dest: Path, train_per_class: int = 8, val_per_class: int = 4) -> Path:
    """Symlink the first images of each class (and classes.tsv) into a small tree."""
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for folder in sorted((SHARED_IMAGENETTE / split).iterdir()):
            target = dest / split / folder.name
            target.mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                (target / image.name).symlink_to(image)
    (dest / "classes.tsv").symlink_to(SHARED_IMAGENETTE / "classes.tsv")
    return dest


def test_photos_recipe_trains_and_exports_on_real_jpegs(tmp_path: Path) -> None:
    data = slice_imagenette(tmp_path / "imagenette")
    cfg = make_config(tmp_path, "photos", data__path=str(data), preprocess__input_size=64,
                      preprocess__resize=73, train__cache_size=72, train__sizes=[48, 56],
                      train__epochs=2, train__batch_size=16, train__lr=0.05, export__parity_images=40)
    assert cfg.run_name == "imagenette-resnet18"
    train.run(cfg)
    onnx_path = export.run(cfg)
    ckpt = load_checkpoint(cfg.run_dir / "model.pt")
    assert ckpt.class_names[0] == "tench" and len(ckpt.classes) == 10
    assert [h["size"] for h in ckpt.history] == [48, 56]
    parity = json.loads(sidecar_path(onnx_path).read_text())["parity"]
    assert parity["images"] == 40 and parity["top1_agreement"] >= 0.99
    assert read_metadata(onnx_path)["class_names"][0] == "tench"
