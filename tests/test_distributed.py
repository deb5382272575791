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
