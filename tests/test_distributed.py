"""Data-parallel training with two CPU processes under torchrun (gloo)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.workstation.checkpoint import load_checkpoint
from tests.conftest import ROOT


def test_torchrun_two_processes_train_one_model(tmp_path: Path, datasets_root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "pipeline", "train", "--config", "configs/digits.toml",
           "--set", f'run.root="{tmp_path}"', "--set", f'data.root="{datasets_root}"',
           "--set", "train.epochs=3", "--set", "train.lr=0.1", "--set", "train.batch_size=128", "--set", "model.width=8",
           "--set", "train.threads=1"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "digits-resnet20" / "model.pt")
    assert ckpt.metrics["world_size"] == 2
    assert ckpt.metrics["ddp_params_in_sync"] is True
    assert [h["epoch"] for h in ckpt.history] == [1, 2, 3]
    assert ckpt.history[-1]["loss"] < ckpt.history[0]["loss"]
    assert ckpt.metrics["val_top1"] > 0.3  # ten classes: chance is 0.1


def _torchrun(tmp_path: Path, data_root: Path, port: int, *sets: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "pipeline", "train", "--config", "configs/digits.toml", "--set", f'run.root="{tmp_path}"',
           "--set", f'data.root="{data_root}"', "--set", "train.epochs=1", "--set", "model.width=8",
           "--set", "train.threads=1", *sets]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_fresh_tree_is_laid_out_once_by_rank_0_while_the_others_wait(tmp_path: Path) -> None:
    """Both ranks laying the dataset out at once raced (one renamed its copy onto the other's:
    "Directory not empty"); rank 0 lays it out, the others open it after."""
    result = _torchrun(tmp_path, tmp_path / "fresh-datasets", 29519)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "fresh-datasets").iterdir()) == ["digits"]  # no leftover copies
    assert load_checkpoint(tmp_path / "digits-resnet20" / "model.pt").metrics["world_size"] == 2


def test_a_failure_preparing_the_data_ends_every_rank_with_one_line_naming_it(tmp_path: Path) -> None:
    """cifar10 without its files and no download: rank 0 fails, rank 1 says rank 0 failed and why."""
    result = _torchrun(tmp_path, tmp_path / "empty", 29521, "--set", 'data.name="cifar10"')
    assert result.returncode != 0
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert len(errors) == 2 and "cifar10 not found" in errors[0], result.stderr[-2000:]
    assert errors[0].startswith("error: rank 0: ") and errors[1].startswith(
        "error: rank 1: rank 0 failed to prepare the dataset (DataError: ")
    assert "internal error" not in result.stderr  # (torchrun's own summary of the failed group follows)
