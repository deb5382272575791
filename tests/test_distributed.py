"""Data-parallel training under torchrun on CPUs (gloo): two processes on one node, two
nodes (two torchrun agents meeting at a c10d rendezvous on 127.0.0.1), and a group that
torchrun restarts after a worker is killed.

Two runs are compared in float64 (``train.precision = "fp64"``): in float32 the order in
which a sum is taken (threads, ranks) already moves this ResNet's early-layer gradients by
about a percent at initialisation, and training amplifies that (one process on one thread
or two ends 6e-2 apart). In float64 two processes
and one process with the same global batch and seed end 3e-10 apart (relative to the
weights' norm); with rank-local BatchNorm statistics they end 7e-2 apart. The tolerance,
1e-6, lies between.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.workstation.checkpoint import Checkpoint, load_checkpoint
from tests.conftest import ROOT

SAME_RUN = ("--config", "configs/digits.toml", "--set", "train.epochs=2", "--set", "train.batch_size=128",
            "--set", "train.lr=0.05", "--set", 'train.precision="fp64"', "--set", "model.width=8",
            "--set", "train.threads=1")
TOLERANCE = 1e-6


def test_torchrun_two_processes_train_one_model(tmp_path: Path, datasets_root: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "pipeline", "train", "--config", "configs/digits.toml",
           "--set", f'run.root="{tmp_path}"', "--set", f'data.root="{datasets_root}"',
           "--set", "train.epochs=3", "--set", "train.lr=0.1", "--set", "train.batch_size=128",
           "--set", "model.width=8",
           "--set", "train.threads=1"]
    result = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "digits-resnet20" / "model.pt")
    assert ckpt.metrics["world_size"] == 2
    assert ckpt.metrics["ddp_params_in_sync"] is True
    assert [h["epoch"] for h in ckpt.history] == [1, 2, 3]
    assert ckpt.history[-1]["loss"] < ckpt.history[0]["loss"]
    assert ckpt.metrics["val_top1"] > 0.3  # ten classes: chance is 0.1


def _torchrun(tmp_path: Path, data_root: Path, port: int, *sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "pipeline", "train", "--config", "configs/digits.toml", "--set", f'run.root="{tmp_path}"',
           "--set", f'data.root="{data_root}"', "--set", "train.epochs=1", "--set", "model.width=8",
           "--set", "train.threads=1", *sets]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


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


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _roots(run_root: Path, data_root: Path) -> tuple[str, ...]:
    return ("--set", f'run.root="{run_root}"', "--set", f'data.root="{data_root}"')


def _transcript(name: str, output: str, seconds: float) -> None:
    """What the runs said that a person reads (epochs, resumes, restarts), with the time."""
    keep = ("epoch ", "resuming", "torchrun restart", "val top-1", "Worker group", "restart", "error")
    lines = [line for line in output.splitlines() if any(k in line for k in keep) and "Warning" not in line]
    print(f"--- {name}: {seconds:.0f} s\n" + "\n".join(lines))


def _relative_distance(a: Checkpoint, b: Checkpoint) -> float:
    """||a - b|| / ||b|| over the floating-point weights and buffers."""
    num = den = 0.0
    for key, value in b.state_dict.items():
        if value.is_floating_point():
            num += (a.state_dict[key].double() - value.double()).pow(2).sum().item()
            den += value.double().pow(2).sum().item()
    return (num / den) ** 0.5


def _val_images(data_root: Path) -> int:
    return sum(1 for p in (data_root / "digits" / "val").rglob("*") if p.is_file() and p.suffix == ".png")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, datasets_root: Path) -> Checkpoint:
    """The reference: one process, the global batch and seed the torchrun runs use."""
    root = tmp_path_factory.mktemp("one-process")
    cmd = [sys.executable, "-m", "pipeline", "train", *SAME_RUN, *_roots(root, datasets_root)]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    _transcript("one process", result.stdout + result.stderr, time.perf_counter() - start)
    return load_checkpoint(root / "digits-resnet20" / "last.pt")


def test_two_nodes_from_a_clean_tree_train_what_one_process_trains(one_process: Checkpoint, tmp_path: Path) -> None:
    """Two torchrun agents, one process each, meet at a c10d rendezvous as two nodes would;
    nothing is prepared (rank 0 lays the dataset out, node 1's first rank then finds it).
    Validation is over the whole split once: every epoch scores each val image once, and
    scores what one process scores."""
    data = tmp_path / "datasets"
    port = _free_port()
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
             "-m", "pipeline", "train", *SAME_RUN, *_roots(tmp_path, data)]
    start = time.perf_counter()
    nodes = [subprocess.Popen(agent, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    _transcript("two nodes", "\n".join(outputs), time.perf_counter() - start)
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-1500:] for o in outputs)

    run = tmp_path / "digits-resnet20"
    two = load_checkpoint(run / "last.pt")
    assert two.training["world_size"] == 2
    assert [h["optimizer_steps"] for h in two.history] == [h["optimizer_steps"] for h in one_process.history]
    distance = _relative_distance(two, one_process)
    print(f"two nodes vs one process: weights {distance:.1e} apart (tolerance {TOLERANCE:g})")
    assert distance < TOLERANCE
    assert [h["val_images"] for h in two.history] == [_val_images(data)] * 2
    assert [h["val_top1"] for h in two.history] == [h["val_top1"] for h in one_process.history]
    assert sorted(p.name for p in data.iterdir()) == ["digits"]
    final = load_checkpoint(run / "model.pt")  # trained in float64, deployed in float32
    assert final.metrics["world_size"] == 2 and final.metrics["precision"] == "float64"
    assert {v.dtype for v in final.state_dict.values() if v.is_floating_point()} == {torch.float32}


def test_a_worker_killed_mid_epoch_restarts_the_group_from_the_last_checkpoint(
        one_process: Checkpoint, tmp_path: Path, datasets_root: Path) -> None:
    """With --max-restarts 1, SIGKILL to rank 1 during epoch 2: torchrun restarts both
    ranks, which resume after epoch 1 (its last.pt) and train epoch 2 again from its start.
    The run ends with as many optimisation steps as one uninterrupted process, the same
    weights, and no half-written file."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "-m", "pipeline", "train", *SAME_RUN, *_roots(tmp_path, datasets_root)]
    run = tmp_path / "digits-resnet20"
    start = time.perf_counter()
    agent = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        killed_at = _kill_rank_1_during_epoch_2(agent, run)
        output = agent.communicate(timeout=600)[0]
    finally:
        agent.kill()
    _transcript(f"restart (rank 1 killed {killed_at:.0f} s in)", output, time.perf_counter() - start)
    assert agent.returncode == 0, output[-3000:]

    final = load_checkpoint(run / "model.pt")
    assert final.metrics["restarts"] == 1
    assert "error: rank 0: lost another rank (" in output and "internal error" not in output
    assert "torchrun restart 1: resuming from" in output and "after epoch 1" in output
    assert output.count("epoch 1/2 ") == 1 and output.count("epoch 2/2 ") == 1  # epoch 2 ran again, whole
    assert final.metrics["optimizer_steps"] == one_process.history[-1]["optimizer_steps"]
    distance = _relative_distance(load_checkpoint(run / "last.pt"), one_process)
    print(f"restarted run vs one process: weights {distance:.1e} apart (tolerance {TOLERANCE:g})")
    assert distance < TOLERANCE
    assert not [p.name for p in run.rglob("*") if "partial" in p.name]


def _kill_rank_1_during_epoch_2(agent: subprocess.Popen, run: Path) -> float:
    """SIGKILL the worker with LOCAL_RANK=1 a second after epoch 1's last.pt appears (epoch 2
    takes several seconds in float64), and leave the temporary file a rank killed while
    saving would leave; the time it was killed, from the start."""
    start = time.perf_counter()
    while not (run / "last.pt").exists():
        assert agent.poll() is None, "torchrun ended before epoch 1 finished"
        assert time.perf_counter() - start < 300, "no last.pt after 300 s"
        time.sleep(0.1)
    time.sleep(1.0)
    assert load_checkpoint(run / "last.pt").epoch == 1 and not (run / "model.pt").exists()
    os.kill(_worker(agent.pid, local_rank=1), signal.SIGKILL)
    (run / ".last.killed.partial.pt").write_bytes(b"what a rank killed while saving leaves")
    return time.perf_counter() - start


def _worker(agent: int, local_rank: int) -> int:
    """The pid of torchrun's worker with ``local_rank``, from /proc."""
    for pid in (Path(f"/proc/{agent}/task/{agent}/children").read_text().split()):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with LOCAL_RANK={local_rank} under torchrun {agent}")
