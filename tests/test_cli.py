"""The command line as a user meets it: help, one-line errors, exit codes, no debris."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_stages_and_each_explains_itself() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for stage in ("train", "export", "models"):
        assert stage in top.stdout
    train_help = cli("train", "--help")
    assert "--resume" in train_help.stdout and "--weights" in train_help.stdout and "--set" in train_help.stdout


def test_models_lists_every_family() -> None:
    out = cli("models").stdout
    for name in ("resnet20", "resnet110", "resnet18", "resnet152", "plain56", "plain50"):
        assert name in out


@pytest.mark.parametrize("args, fragment", [
    (["--set", "train.epoch=3"], "unknown key 'train.epoch'"),
    (["--set", "train.epochs=ten"], "train.epochs: expected an integer"),
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
])
def test_bad_input_ends_with_one_clear_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = cli("train", "--config", "configs/digits.toml", "--set", f'run.root="{tmp_path}"',
                 "--set", f'data.root="{tmp_path}/data"', *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not any(tmp_path.rglob("*.pt"))


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    result = cli("train", "--config", "configs/photos.toml", "--data", str(tmp_path / "nowhere"),
                 "--set", f'run.root="{tmp_path}"')
    assert result.returncode == 2
    assert f"{tmp_path / 'nowhere'}: data folder not found" in result.stderr


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "model.pt").write_bytes(b"this is not a checkpoint")
    result = cli("export", "--config", "configs/digits.toml", "--run", "r", "--set", f'run.root="{tmp_path}"')
    assert result.returncode == 2
    assert "model.pt: not a loadable checkpoint" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["model.pt"]


def test_export_refuses_torchvision_weights_as_a_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    torch.save({"fc.weight": torch.zeros(2, 2)}, run / "model.pt")
    result = cli("export", "--config", "configs/digits.toml", "--run", "r", "--set", f'run.root="{tmp_path}"')
    assert result.returncode == 2 and "not an edgeresnet checkpoint" in result.stderr


def test_import_pipeline_needs_no_optional_dependency() -> None:
    code = ("import sys, pipeline, pipeline.__main__, pipeline.workstation.train, pipeline.workstation.export; "
            "bad = [m for m in ('tensorrt', 'pycuda', 'nncf') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_make_derives_the_run_folder_from_data_and_model() -> None:
    def planned(*args: str) -> str:
        return subprocess.run(["make", "-n", "-B", "demo", *args], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
    assert "--run digits-resnet20 " in planned()
    assert "--run imagenette-resnet18 " in planned("DATA=../shared/data/imagenette")
    assert "--config configs/photos.toml" in planned("DATASET=imagenette")
    assert "--run mine " in planned("RUN=mine", "MODEL=resnet56")
    bad = subprocess.run(["make", "-n", "demo", "DATASET=mnist"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown DATASET 'mnist'" in bad.stderr
