"""The device journey as a Jetson runs it, simulated on this machine (``make device-sim``).

For each board (JetPack 6 on an Orin Nano, JetPack 5 on a Xavier NX) this:
- copies the project as a user clones it onto the device (tracked and untracked files,
  nothing ignored: no .venv, no build/);
- writes a fake Jetson system tree (device-tree model, L4T release, nvpmodel, clocks,
  temperatures) and points ``EDGERESNET_SYSROOT`` at it;
- makes a stand-in for JetPack's system packages: the TensorRT and pycuda emulator of
  tests/emulator (ONNX Runtime doing the maths behind TensorRT's API and contract, in the
  board's TensorRT version) and a ``tensorrt`` dist-info with that version;
- runs, in the copy, exactly the README's "On the Jetson" commands with JetPack's Python
  (pyenv's 3.10 or 3.8): setup-device, engine from the bundle, evaluate, camera on the
  bundle's replay clip (headless), bench, report, the Triton model repository and the
  DeepStream nvinfer config;
- fails if torch is importable in the device venv, if any step trained or changed a file
  the bundle brought, or if the report did not gate the INT8 engine's accuracy.

Numbers in the transcript are ONNX Runtime's on this CPU, computed behind the emulated
TensorRT API: they prove the journey and the accuracy path, not Jetson latency.

usage: python tests/sim/device_sim.py --bundle FILE [--out DIR] [BOARD ...]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jetson_root import BOARDS, Board, write_root

ROOT = Path(__file__).resolve().parents[2]
EMULATOR = ROOT / "tests" / "emulator"
STANDINS = ROOT / "tests" / "sim" / "requirements-standins.txt"
RUN = "sim"


class SimulationError(Exception):
    """A step failed or a check did not hold; the message says which."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle-jetson.tar.gz made by `make bundle`")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "device-sim")
    parser.add_argument("boards", nargs="*", default=list(BOARDS), help=f"any of {', '.join(BOARDS)}")
    args = parser.parse_args(argv)
    lines = [f"# Device simulation: {args.bundle}", ""]
    try:
        for name in args.boards:
            if name not in BOARDS:
                raise SimulationError(f"unknown board {name!r}; choose from {', '.join(BOARDS)}")
            lines += simulate(BOARDS[name], args.bundle.resolve(), args.out.resolve() / name)
    except SimulationError as exc:
        print("\n".join(lines))
        print(f"device-sim FAILED: {exc}", file=sys.stderr)
        return 1
    transcript = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transcript.md").write_text(transcript)
    print(transcript)
    print(f"device-sim passed; transcript in {args.out / 'transcript.md'}")
    return 0


def simulate(board: Board, bundle: Path, folder: Path) -> list[str]:
    """One board's journey; returns its transcript lines."""
    if folder.exists():
        shutil.rmtree(folder)
    device = copy_project(folder / "edgeresnet")
    root = write_root(folder / "root", board)
    site = jetpack_site(folder / "jetpack-site", board)
    python = find_python(board.python)
    env = device_env(board, root)
    steps = Steps(device, env, folder / "logs")
    lines = [f"## {board.model}: JetPack {board.jetpack}, Python {board.python}, TensorRT {board.tensorrt} "
             f"(emulated)", "", f"Python: `{python}`; fake root: `{root}`", "",
             "| step | command | seconds | result |", "| --- | --- | --- | --- |"]
    on = f"TARGET=jetson RUN={RUN}"
    steps.run("setup-device", f"make setup-device DEVICE_PYTHON={python} SYSTEM_SITE={site}")
    steps.run("stand-ins", f".venv-device/bin/python -m pip install --disable-pip-version-check -q -r {STANDINS}")
    steps.require_missing("torch", "torchvision", "nncf")
    steps.run("engine", f"make engine {on} BUNDLE={bundle}")
    steps.run("evaluate", f"make evaluate {on}")
    steps.run("camera", f"make camera {on} SOURCE=replay:build/{RUN}/clip/replay.avi HEADLESS=1")
    steps.run("bench", f"make bench {on}")
    steps.run("report", f"make report {on}")
    steps.run("triton", f"make triton {on}")
    steps.run("deepstream", f"make deepstream {on}")
    run_dir = device / "build" / RUN
    check_nothing_trained(run_dir, bundle, steps)
    lines += steps.rows + [""] + figures(run_dir, board)
    return lines + [""]


class Steps:
    """Runs shell commands in the device copy, timing each and keeping its log."""

    def __init__(self, cwd: Path, env: dict, logs: Path) -> None:
        self.cwd, self.env, self.logs = cwd, env, logs
        self.rows: list[str] = []
        logs.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, command: str) -> str:
        start = time.perf_counter()
        result = subprocess.run(command, shell=True, cwd=self.cwd, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        output = result.stdout + result.stderr
        (self.logs / f"{name}.log").write_text(f"$ {command}\n{output}")
        verdict = "ok" if result.returncode == 0 else f"exit {result.returncode}"
        self.rows.append(f"| {name} | `{command}` | {seconds:.1f} | {verdict} |")
        print(f"[{name}] {command} ({seconds:.1f} s, {verdict})", flush=True)
        if result.returncode != 0:
            raise SimulationError(f"{name} failed ({verdict}); log {self.logs / (name + '.log')}:\n"
                                  + "\n".join(output.strip().splitlines()[-25:]))
        if "-m pipeline train" in output or "-m pipeline export" in output or "-m pipeline quantize" in output:
            raise SimulationError(f"{name} ran a workstation stage on the device:\n{output[-2000:]}")
        return output

    def require_missing(self, *modules: str) -> None:
        for module in modules:
            probe = subprocess.run([str(self.cwd / ".venv-device/bin/python"), "-c", f"import {module}"],
                                   cwd=self.cwd, env=self.env, capture_output=True, text=True)
            if probe.returncode == 0:
                raise SimulationError(f"{module} is importable in the device venv; the device has no {module}")
        self.rows.append(f"| no training stack | `import {' / '.join(modules)}` | - | absent |")


def copy_project(dest: Path) -> Path:
    """The tree as a user clones it: tracked and untracked files, nothing git ignores."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def jetpack_site(site: Path, board: Board) -> Path:
    """Stand-in for JetPack's dist-packages: the emulated tensorrt and pycuda, with a
    dist-info carrying the board's TensorRT version (as JetPack's python3-libnvinfer has)."""
    for package in ("tensorrt", "pycuda"):
        shutil.copytree(EMULATOR / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"tensorrt-{board.tensorrt}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tensorrt\nVersion: {board.tensorrt}\n")
    return site


def find_python(version: str) -> Path:
    """JetPack's Python stand-in: pyenv's ``version`` (3.10 or 3.8)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")))
    which = shutil.which(f"python{version}")
    if not found and not which:
        raise SimulationError(f"no Python {version} here (pyenv install {version}); the simulation needs it")
    return Path(found[-1] if found else which)


def device_env(board: Board, root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "DISPLAY"))}
    env.pop("WAYLAND_DISPLAY", None)
    env.update(EDGERESNET_SYSROOT=str(root), EDGERESNET_TRT_EMULATE=board.tensorrt,
               EDGERESNET_EMULATED_GPU=board.gpu, EDGERESNET_EMULATED_CC=board.capability,
               EDGERESNET_EMULATED_CUDA=board.cuda, MAKEFLAGS="",
               EDGERESNET_EMULATED_INTEGRATED="1")  # every Jetson's GPU shares the host's memory
    return env


def check_nothing_trained(run_dir: Path, bundle: Path, steps: Steps) -> None:
    """No checkpoint, and every file the bundle brought still has the bundle's bytes."""
    if (run_dir / "model.pt").exists():
        raise SimulationError(f"{run_dir}/model.pt exists: a step trained on the device")
    sums = _bundle_sums(bundle)
    changed = [name for name, digest in sums.items() if (run_dir / name).is_file()
               and hashlib.sha256((run_dir / name).read_bytes()).hexdigest() != digest]
    if changed:
        raise SimulationError(f"files the bundle brought were overwritten on the device: {changed}")
    steps.rows.append(f"| nothing retrained | no model.pt; {len(sums)} bundle files unchanged | - | ok |")


def _bundle_sums(bundle: Path) -> dict:
    import tarfile

    with tarfile.open(bundle) as tar:
        text = tar.extractfile("SHA256SUMS").read().decode()
    pairs = (line.split("  ", 1) for line in text.splitlines() if line.strip())
    return {name: digest for digest, name in pairs if name != "bundle.json"}


def figures(run_dir: Path, board: Board) -> list[str]:
    """The journey's results: engine accuracy, camera, latency, the report's verdict."""
    evals = {p.stem: json.loads(p.read_text()) for p in (run_dir / "eval").glob("*.json")}
    int8, fp32 = evals.get("tensorrt-int8"), evals.get("tensorrt-fp32")
    if not int8 or not fp32:
        raise SimulationError(f"{run_dir}/eval lacks the engines' results: {sorted(evals)}")
    versus = int8["versus_reference"]
    report = _latest_report(run_dir.parent / "reports")  # build/reports: the history of every run
    row = next((r for r in report["rows"] if r["label"] == report["deployed"]), None)
    if row is None or row["drop"] is None or row["agreement"] is None or report["deployed"] != "tensorrt-int8":
        raise SimulationError(f"the report did not gate the INT8 engine: deployed {report['deployed']}, rows "
                              f"{[r['label'] for r in report['rows']]}")
    camera = json.loads(sorted((run_dir / "camera").glob("*.json"))[-1].read_text())
    bench = {p.stem: json.loads(p.read_text())["latency_ms"] for p in (run_dir / "bench").glob("tensorrt-*.json")}
    sidecar = json.loads((run_dir / "engines" / board.profile / "model.int8.engine.json").read_text())
    semantics, shapes = sidecar["precision_semantics"], sidecar["shapes"]
    return [f"- **INT8 engine** ({sidecar['identity']['tensorrt']}, {sidecar['device']}): {semantics['typing']}ly "
            f"typed, builder flags {semantics['flags'] or 'none'}, unquantized layers {semantics['unquantized']}; "
            f"profile batch {shapes['min'][0]}/{shapes['opt'][0]}/{shapes['max'][0]}; evaluate fed batches of "
            f"{int8['batching']['fed']}, the runner ran them in chunks of {int8['batching']['runs']}.",
            f"- **Engines** ({board.profile}, {int8['images']} bundled val images): FP32 engine top-1 "
            f"{fp32['top1']:.2%}, INT8 engine top-1 {int8['top1']:.2%}, drop {100 * versus['top1_drop']:+.2f} "
            f"points, agreement {versus['top1_agreement']:.2%}, {len(versus['flipped'])} flipped.",
            f"- **Camera** (replay clip, headless): {camera['frames']} frames, {camera['fps']:.1f} FPS, INT8 "
            f"accuracy {_pct(camera['int8_accuracy'])} over all frames; on the {camera['shadow_frames']} frames the "
            f"FP32 engine shadowed, agreement {_pct(camera['top1_agreement'])} and FP32 accuracy "
            f"{_pct(camera['fp32_accuracy'])} ({camera['status']}).",
            "- **Bench** (ONNX Runtime behind the emulator, not Jetson latency): " + ", ".join(
                f"{label} p50 {lat['median']:.2f} ms / p99 {lat['p99']:.2f} ms" for label, lat in sorted(bench.items())),
            f"- **Report** {report['id']}: deployed {report['deployed']} gated on its drop {100 * row['drop']:+.2f} "
            f"points and agreement {row['agreement']:.2%} against {board.profile}'s budgets; "
            + ("no regression" if not report["failures"] else "regressions: " + "; ".join(report["failures"])),
            f"- **Jetson state** in the report: {json.dumps(report['environment'].get('jetson_state'))}"]


def _latest_report(reports: Path) -> dict:
    found = sorted(reports.glob("*/report.json"), key=lambda p: int(p.parent.name))
    if not found:
        raise SimulationError(f"no report under {reports}")
    return json.loads(found[-1].read_text())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


if __name__ == "__main__":
    sys.exit(main())
