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


def test_make_sees_set_overrides_through_the_config_stamps(tmp_path: Path) -> None:
    """Make compares times, not values: the stamps turn a changed --set into a changed file,
    and only the stages that read the changed section are rebuilt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}

    def make(*args: str) -> str:
        result = subprocess.run(["make", *args, f"BUILD={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    stamps = [f"{tmp_path}/digits-resnet20/stamps/{s}.toml" for s in ("train", "export", "calibrate", "quantize")]
    run = tmp_path / "digits-resnet20"
    make(*stamps)
    for name in ("model.pt", "model.fp32.onnx", "calibration/manifest.json", "model.int8.onnx"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("built after the stamps")

    def planned(*sets: str) -> list[str]:
        make(*stamps, *sets)  # the stamps are rewritten for real, only when their content changes
        out = make("-n", "quantize", *sets)
        return [line.split(" -m pipeline ")[1].split()[0] for line in out.splitlines() if " -m pipeline " in line]

    assert planned() == ["config-stamps"]  # nothing to rebuild
    assert planned("SET=--set evaluate.batch_size=8 --set data.workers=1") == ["config-stamps"]
    assert planned("SET=--set quantize.bias_correction=\"fast\"") == ["config-stamps", "quantize"]
    assert planned("SET=--set train.lr=0.05") == ["config-stamps", "train", "export", "calibrate", "quantize"]


def test_artifacts_get_the_permissions_the_umask_gives(tmp_path: Path) -> None:
    """mkstemp makes 0600 files: an engine or ONNX another user's Triton cannot read. Run in
    a subprocess with umask 022 (a service's usual): files 0644, laid-out datasets 0755."""
    code = ("import os, sys; os.umask(0o022)\n"
            "from pathlib import Path\n"
            "from pipeline.artifacts import write_json\n"
            "from pipeline.config import DataConfig\n"
            "from pipeline.workstation.data.sources import open_dataset\n"
            "root = Path(sys.argv[1])\n"
            "write_json(root / 'a.json', {'x': 1})\n"
            "open_dataset(DataConfig(name='digits', root=str(root / 'data')))\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr[-1500:]
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "data" / "digits").stat().st_mode & 0o777 == 0o755


BOOM = '''
import sys
from pipeline import __main__ as cli
cli.STAGES["boom"] = cli.Stage("boom", "boom_stage", "a stage with a bug", "raises ZeroDivisionError")
sys.exit(cli.main(["boom", "--set", sys.argv[1]]))
'''


def test_an_unexpected_exception_is_one_line_naming_a_log_with_the_traceback(tmp_path: Path) -> None:
    """The error boundary: a bug of ours (here a stage module that divides by zero) is one
    line and exit 3, and the traceback is kept in a log under the run root, not printed."""
    (tmp_path / "boom_stage.py").write_text("def run(cfg):\n    return 1 / 0\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    result = subprocess.run([sys.executable, "-c", BOOM, f'run.root="{tmp_path / "build"}"'], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("internal error in boom: ZeroDivisionError: division by zero (traceback in ")
    log = Path(lines[0].split("traceback in ")[1].split(";")[0])
    assert log.parent == tmp_path / "build" / "logs"
    assert "Traceback" in log.read_text() and "return 1 / 0" in log.read_text()


@pytest.mark.parametrize("content, fragment", [("[train\nepochs = 3\n", "not valid TOML"),
                                               ("[model]\nname = resnet20\n", "not valid TOML")])
def test_make_with_a_bad_recipe_is_one_error_line_and_builds_nothing(tmp_path: Path, content: str,
                                                                     fragment: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(["make", "demo", f"CONFIG={bad}", f"BUILD={tmp_path / 'build'}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: {fragment}")
    assert not any((tmp_path / "build").rglob("*.pt"))
    missing = subprocess.run(["make", "demo", f"CONFIG={tmp_path / 'none.toml'}"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and f"CONFIG={tmp_path / 'none.toml'}: no such file" in missing.stderr
