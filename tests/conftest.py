"""Shared fixtures: small real datasets made on disk, and configs pointing at them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"


def write_shapes_tree(root: Path, per_class: int = 12, val_per_class: int = 4, size: int = 40,
                      seed: int = 0) -> Path:
    """An ImageFolder tree of three visually distinct classes (a model can learn them fast).

    ``bright`` is a light square on dark, ``stripes`` horizontal bars, ``dots`` a grid of
    spots; colours and offsets vary so the classes are not single pixels.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for name, draw in (("bright", _square), ("dots", _dots), ("stripes", _stripes)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = draw(rng, size)
                Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def _canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 40, (size, size, 3), dtype=np.uint8)


def _square(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _canvas(rng, size)
    a = int(rng.integers(2, size // 3))
    img[a:a + size // 2, a:a + size // 2] = rng.integers(180, 255, 3)
    return img


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _canvas(rng, size)
    start = int(rng.integers(0, 4))
    img[start::6] = rng.integers(180, 255, 3)
    return img


def _dots(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _canvas(rng, size)
    start = int(rng.integers(0, 4))
    img[start::8, start::8] = rng.integers(180, 255, 3)
    img[start + 1::8, start + 1::8] = rng.integers(180, 255, 3)
    return img


def make_config(tmp_path: Path, config: str | None = "digits", **sets: object) -> Config:
    """A recipe from configs/ with its data and artifacts redirected under ``tmp_path``."""
    items = [f"run.root={_toml(str(tmp_path / 'build'))}",
             f"data.root={_toml(str(tmp_path / 'datasets'))}"]
    items += [f"{key.replace('__', '.')}={_toml(value)}" for key, value in sets.items()]
    path = ROOT / "configs" / f"{config}.toml" if config else None
    return load_config(path, items)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One materialised copy of the digits dataset for the whole session."""
    from pipeline.config import DataConfig
    from pipeline.workstation.data import open_dataset

    root = tmp_path_factory.mktemp("datasets")
    open_dataset(DataConfig(name="digits", root=str(root)))
    return root


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_tree(tmp_path_factory.mktemp("shapes"))


DIGITS = dict(train__epochs=3, train__batch_size=64, train__lr=0.1, export__parity_images=64)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory, datasets_root: Path) -> Config:
    """resnet20 trained for three epochs on digits and exported: shared by many tests."""
    from pipeline.workstation import export, train

    tmp = tmp_path_factory.mktemp("digits-run")
    cfg = make_config(tmp, data__root=str(datasets_root), **DIGITS)
    train.run(cfg)
    export.run(cfg)
    return cfg


@pytest.fixture(scope="session")
def quantized_run(digits_run: Config) -> Config:
    """The digits run calibrated (100 images), quantized, evaluated, and benched on the cpu
    target (30 runs a model), which chooses the runtime that target deploys here."""
    import dataclasses

    from pipeline.workstation import calibrate, quantize

    from pipeline.device import bench, evaluate

    cfg = dataclasses.replace(digits_run, calibrate=dataclasses.replace(digits_run.calibrate, images=100))
    calibrate.run(cfg)
    quantize.run(cfg)
    evaluate.run(cfg)
    bench.run(dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, bench_runs=30)))
    return cfg
from tests.emulator_fixtures import trt_emulator  # noqa: F401,E402
