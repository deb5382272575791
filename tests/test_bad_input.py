"""Bad input, as a careless user or an attacker gives it, through the real command line.

Each case runs ``python -m pipeline <stage>`` in a subprocess on real artifacts (a copy of
the quantized digits run) and asserts: the exit code, exactly one line on stderr naming
what is wrong (never a traceback), and that nothing in the test's world changed (every
file's bytes and permissions snapshotted before and after). Read-only folders and a full
disk are real: a read-only bind mount and a small tmpfs in a private mount namespace.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def world(quantized_run, tmp_path_factory) -> dict:
    """A copy of the quantized run and the files the cases feed it."""
    base = tmp_path_factory.mktemp("world")
    runs = base / "runs"
    shutil.copytree(quantized_run.run_dir, runs / "r")
    run = runs / "r"
    val = Path(quantized_run.data.root) / "digits" / "val"
    small = base / "small-val"
    for folder in sorted(val.iterdir()):
        shutil.copytree(folder, small / folder.name, ignore=lambda d, names: sorted(names)[2:])
    (base / "truncated.onnx").write_bytes((run / "model.fp32.onnx").read_bytes()[:100])
    onnx.save(foreign_model(), str(base / "foreign.onnx"))
    (base / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (base / "folder.onnx").mkdir()
    (base / "out-folder.json").mkdir()
    (base / "bad.toml").write_text("[train\nepochs = 3\n")
    (base / "binary.toml").write_bytes(bytes(range(256)))
    (base / "empty.tar.gz").write_bytes(b"")
    write_bad_sums_bundle(base / "bad-sums.tar.gz")
    corrupt = base / "corrupt-val"
    shutil.copytree(small, corrupt)
    (corrupt / "3" / "zz-empty.png").write_bytes(b"")
    unicode = base / "wörld" / "ünïcode-val"
    shutil.copytree(small, unicode)
    empty_run = runs / "empty-manifest"
    shutil.copytree(run, empty_run)
    manifest = empty_run / "calibration" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"items": [', '"items": [], "was": ['))
    (base / "ro").mkdir()
    (base / "full").mkdir()
    return {"base": base, "run": run, "small": small, "quantized": quantized_run}


def foreign_model() -> onnx.ModelProto:
    """A valid ONNX classifier exported by someone else: no edgeresnet metadata."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 32, 32])
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y]))


def write_bad_sums_bundle(path: Path) -> None:
    record = b'{"format": "edgeresnet.bundle/1"}'
    sums = b"this is not a checksum line\n" + f"{hashlib.sha256(record).hexdigest()}  bundle.json\n".encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("bundle.json", record), ("SHA256SUMS", sums)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def common(world: dict, run: str = "r") -> list:
    return ["--config", "configs/digits.toml", "--set", f'run.root="{world["base"] / "runs"}"',
            "--set", f'data.root="{world["quantized"].data.root}"', "--run", run]


# (id, arguments given the world, exit code, fragment of the one line on stderr)
CASES = [
    ("truncated-onnx", lambda w: ["evaluate", "--model", str(w["base"] / "truncated.onnx"), "--data", str(w["small"])],
     2, "truncated.onnx: not a readable ONNX model"),
    ("foreign-onnx", lambda w: ["evaluate", "--model", str(w["base"] / "foreign.onnx"), "--data", str(w["small"])],
     2, "foreign.onnx: ONNX metadata lacks 'edgeresnet.classes'"),
    ("check-qdq-missing", lambda w: ["check-qdq", "--model", str(w["base"] / "none.onnx")], 2, "none.onnx: not found"),
    ("check-qdq-jpeg", lambda w: ["check-qdq", "--model", str(w["base"] / "photo.jpg")], 2,
     "photo.jpg: not a readable ONNX model"),
    ("check-qdq-folder", lambda w: ["check-qdq", "--model", str(w["base"] / "folder.onnx")], 2,
     "folder.onnx: is a folder"),
    ("evaluate-out-folder", lambda w: ["evaluate", "--model", str(w["run"] / "model.int8.onnx"), "--data",
                                       str(w["small"]), "--out", str(w["base"] / "out-folder.json")],
     2, "out-folder.json: is a folder, expected a file to write"),
    ("train-threads", lambda w: ["train", *common(w), "--set", "train.threads=-2"], 2,
     "train.threads: expected 0 (one per core) or a positive count, got -2"),
    ("train-lr-inf", lambda w: ["train", *common(w), "--set", "train.lr=inf"], 2,
     "train.lr: expected a finite number, got inf"),
    ("empty-manifest", lambda w: ["quantize", *common(w, "empty-manifest")], 2, "manifest lists no images"),
    ("preview-port", lambda w: ["camera", *common(w), "--source", "0", "--preview-port", "70000"], 2,
     "camera.preview_port: expected -1 (off), 0 (any free port) or a port up to 65535, got 70000"),
    ("sums-line", lambda w: ["unpack", *common(w, "new"), "--bundle", str(w["base"] / "bad-sums.tar.gz")], 2,
     "SHA256SUMS line 1 is not '<sha256>  <name>'"),
    ("empty-bundle", lambda w: ["unpack", *common(w, "new"), "--bundle", str(w["base"] / "empty.tar.gz")], 2,
     "empty.tar.gz: not a readable bundle"),
    ("empty-image", lambda w: ["evaluate", "--model", str(w["run"] / "model.int8.onnx"), "--data",
                               str(w["base"] / "corrupt-val")], 2, "zz-empty.png: unreadable or corrupt image"),
    ("config-not-toml", lambda w: ["train", "--config", str(w["base"] / "bad.toml")], 2, "bad.toml: not valid TOML"),
    ("config-binary", lambda w: ["train", "--config", str(w["base"] / "binary.toml")], 2,
     "binary.toml: not valid TOML"),
    ("model-suffix", lambda w: ["evaluate", "--model", str(w["base"] / "bad.toml"), "--data", str(w["small"])], 2,
     "unknown model type '.toml'"),
    ("huge-input-size", lambda w: ["train", *common(w), "--set", "preprocess.input_size=1000000"], 2,
     "preprocess.input_size: expected an integer in 8..4096, got 1000000"),
    ("bundle-into-a-workstation-run", lambda w: ["unpack", *common(w), "--bundle", str(w["base"] / "bad-sums.tar.gz")],
     2, "already holds another run"),
]


def snapshot(root: Path) -> dict:
    return {p: (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def pipeline_cli(args: list, wrap: list | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "pipeline", *args]
    return subprocess.run((wrap or []) + command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case, make_args, code, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, case, make_args, code, fragment) -> None:
    before = snapshot(world["base"])
    result = pipeline_cli(make_args(world))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr[-1500:]
    assert snapshot(world["base"]) == before


def test_unicode_names_are_read_and_written(world) -> None:
    out = world["base"] / "wörld" / "résultat.json"
    result = pipeline_cli(["evaluate", "--model", str(world["run"] / "model.int8.onnx"), "--data",
                           str(world["base"] / "wörld" / "ünïcode-val"), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-1500:]
    assert '"images": 20' in out.read_text(encoding="utf-8")
    out.unlink()


def in_private_mounts(script: str) -> list:
    """Run the command under ``unshare -m`` after ``script`` set up mounts visible to it alone."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here ({probe.stderr.decode().strip()})")
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script + ' && exec "$@"', "sh"]


def test_a_read_only_output_folder_is_one_line(world) -> None:
    ro = world["base"] / "ro"
    wrap = in_private_mounts(f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}")
    before = snapshot(world["base"])
    result = pipeline_cli(["evaluate", "--model", str(world["run"] / "model.int8.onnx"), "--data", str(world["small"]),
                           "--out", str(ro / "e.json")], wrap)
    assert result.returncode == 2, result.stderr[-1500:]
    assert result.stderr.strip().splitlines() == [f"error: {ro / 'e.json'}: cannot write here (Read-only file system)"]
    assert snapshot(world["base"]) == before


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(world) -> None:
    """A 64 KiB tmpfs filled but for 2 KiB: the evaluation JSON (about 5 KiB) cannot be
    written; the error says so and the folder holds only what it held."""
    full = world["base"] / "full"
    fill = f"dd if=/dev/zero of={full}/filler bs=1024 count=62 status=none"
    wrap = in_private_mounts(f"mount -t tmpfs -o size=64k tmpfs {full} && {fill}")
    out = full / "e.json"
    args = ["evaluate", "--model", str(world["run"] / "model.int8.onnx"), "--data", str(world["small"]), "--out", str(out)]
    result = pipeline_cli(args, wrap[:-2] + [wrap[-2].replace(' && exec "$@"', f' && "$@"; echo rc=$?; ls -A {full}'),
                                             wrap[-1]])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {out}: writing failed (No space left on device); nothing was written"
    assert result.stdout.strip().splitlines()[-2:] == ["rc=2", "filler"]
