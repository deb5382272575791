"""Bench → report → history → gate, with real SQLite, real plots and (where installed)
headless Chromium rendering the HTML."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.device import bench, history, report
from pipeline.device.environment import describe_environment
from pipeline.errors import ConfigError, RegressionError, StaleArtifactError


@pytest.fixture(scope="module")
def benched(quantized_run, tmp_path_factory) -> Path:
    """A copy of the quantized digits run with a bench (measured once for the module)."""
    root = tmp_path_factory.mktemp("benched")
    shutil.copytree(quantized_run.run_dir, root / quantized_run.run_name,
                    ignore=shutil.ignore_patterns("engines", "camera", "bench"))
    cfg = dataclasses.replace(quantized_run, run=dataclasses.replace(quantized_run.run, root=str(root)),
                              evaluate=dataclasses.replace(quantized_run.evaluate, bench_runs=20))
    bench.run(cfg)
    return root


@pytest.fixture()
def reporting(quantized_run, benched, tmp_path):
    """A private copy of the benched run and a fresh history, per test."""
    run_root = tmp_path / "runs"
    shutil.copytree(benched, run_root)
    return dataclasses.replace(
        quantized_run, run=dataclasses.replace(quantized_run.run, root=str(run_root)),
        evaluate=dataclasses.replace(quantized_run.evaluate, bench_runs=20),
        report=dataclasses.replace(quantized_run.report, history=str(tmp_path / "reports" / "history.sqlite")))


def accepting(cfg, accept=True, baseline=0):
    return dataclasses.replace(cfg, report=dataclasses.replace(cfg.report, accept=accept, baseline=baseline))


def test_bench_writes_statistics_and_samples(reporting) -> None:
    record = json.loads((reporting.run_dir / "bench" / "onnxruntime-int8-cpu.json").read_text())
    lat = record["latency_ms"]
    assert lat["runs"] == 20 and len(record["samples_ms"]) == 20
    assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"] and lat["std"] >= 0
    assert record["threads"] >= 1 and record["batch"] == 1


def test_first_report_has_no_gate_then_a_good_build_passes(reporting) -> None:
    first = json.loads(report.run(accepting(reporting)).read_text())
    assert first["baseline_id"] is None and "no accepted baseline" in first["notes"][0]
    second = json.loads(report.run(accepting(reporting, accept=False)).read_text())
    assert second["baseline_id"] == first["id"] and second["failures"] == []
    folder = Path(reporting.report.history).parent / str(second["id"])
    for name in ("report.json", "report.md", "report.html", "latency.png", "accuracy.png", "history.png"):
        assert (folder / name).is_file(), name
    assert "| onnxruntime-int8-cpu |" in (folder / "report.md").read_text()


def test_a_degraded_int8_model_fails_the_gate(reporting) -> None:
    report.run(accepting(reporting))
    worse = reporting.run_dir / "eval" / "onnxruntime-int8-cpu.json"
    record = json.loads(worse.read_text())
    record["top1"] -= 0.05
    record["versus_reference"]["top1_drop"] += 0.05
    worse.write_text(json.dumps(record))
    with pytest.raises(RegressionError, match=r"top-1 is \d\.\d\d points below FP32.*vs baseline"):
        report.run(accepting(reporting, accept=False))


def test_agreement_below_the_targets_budget_fails_the_gate(reporting) -> None:
    """Equal top-1 can hide many flipped images; the target's min_agreement catches them."""
    flipped = reporting.run_dir / "eval" / "onnxruntime-int8-cpu.json"
    record = json.loads(flipped.read_text())
    record["versus_reference"]["top1_drop"] = 0.0
    record["versus_reference"]["top1_agreement"] = 0.95
    flipped.write_text(json.dumps(record))
    with pytest.raises(RegressionError, match=r"onnxruntime-int8-cpu agrees with FP32 on 95.00% of images "
                                              r"\(budget 99.00%\)"):
        report.run(accepting(reporting))


def test_a_deployed_model_without_accuracy_fails_the_gate(reporting) -> None:
    """The INT8 model users deploy must have its accuracy defended, not skipped."""
    (reporting.run_dir / "eval" / "onnxruntime-int8-cpu.json").unlink()
    with pytest.raises(RegressionError, match="onnxruntime-int8-cpu, the model cpu deploys, has no accuracy"):
        report.run(accepting(reporting))


def test_a_slower_build_fails_beyond_the_noise_allowance(reporting) -> None:
    report.run(accepting(reporting))
    slow = reporting.run_dir / "bench" / "onnxruntime-int8-cpu.json"
    record = json.loads(slow.read_text())
    record["latency_ms"]["p99"] *= 3
    slow.write_text(json.dumps(record))
    with pytest.raises(RegressionError, match="p99 .* vs baseline .* noise allowance"):
        report.run(accepting(reporting, accept=False))


def test_a_baseline_from_another_target_is_refused(reporting) -> None:
    first = json.loads(report.run(accepting(reporting)).read_text())
    desktop = dataclasses.replace(accepting(reporting, accept=False, baseline=first["id"]),
                                  engine=dataclasses.replace(reporting.engine, target="desktop"))
    with pytest.raises(ConfigError, match="is for .* on cpu, this is .* on desktop"):
        report.run(desktop)


def test_malformed_input_is_named(reporting) -> None:
    broken = reporting.run_dir / "eval" / "onnxruntime-fp32.json"
    broken.write_text("{ not json")
    with pytest.raises(StaleArtifactError, match=f"{broken}: not valid JSON"):
        report.run(reporting)


def _append_many(path: str, tag: str, count: int) -> None:
    conn = history.open_history(Path(path))
    for i in range(count):
        history.append(conn, "cpu", "m", tag, {"rows": [], "i": i})


def test_history_survives_concurrent_writers(tmp_path) -> None:
    path = str(tmp_path / "h.sqlite")
    history.open_history(Path(path)).close()
    writers = [multiprocessing.Process(target=_append_many, args=(path, tag, 40)) for tag in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT config_hash, COUNT(*) FROM runs GROUP BY config_hash").fetchall() == [("a", 40), ("b", 40)]


KILLED_WRITER = """
import sys, time
from pathlib import Path
from pipeline.device import history
conn = history.open_history(Path(sys.argv[1]))
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO runs (created, target, model, summary) VALUES ('x', 'cpu', 'm', '{}')")
print("inside", flush=True)
time.sleep(60)
"""


def test_a_writer_killed_mid_write_leaves_the_history_intact(tmp_path) -> None:
    path = tmp_path / "h.sqlite"
    conn = history.open_history(path)
    history.append(conn, "cpu", "m", "before", {"rows": []})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    history.append(conn, "cpu", "m", "after", {"rows": []})  # the killed lock is released
    rows = sqlite3.connect(path).execute("SELECT config_hash FROM runs ORDER BY id").fetchall()
    assert rows == [("before",), ("after",)]
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def jetson_sysfs(root: Path, cur: int, top: int) -> Path:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\0")
    (root / "var/lib/nvpmodel").mkdir(parents=True)
    (root / "var/lib/nvpmodel/status").write_text("pmode:0002\n")
    gpu = root / "sys/class/devfreq/17000000.gpu"
    (gpu / "device/of_node").mkdir(parents=True)
    (gpu / "device/of_node/name").write_text("gpu")
    (gpu / "cur_freq").write_text(f"{cur}\n")
    (gpu / "max_freq").write_text(f"{top}\n")
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("gpu-thermal\n")
    (zone / "temp").write_text("48500\n")
    return root


def test_jetson_power_mode_clocks_and_temperatures(tmp_path) -> None:
    state = describe_environment(jetson_sysfs(tmp_path / "a", 306000000, 1020000000))["jetson_state"]
    assert state["power_mode"] == "0002" and state["clocks_locked"] is False
    assert state["temperatures_c"] == {"gpu-thermal": 48.5}
    locked = describe_environment(jetson_sysfs(tmp_path / "b", 1020000000, 1020000000))["jetson_state"]
    assert locked["clocks_locked"] is True


def test_unlocked_clocks_warn_in_the_report(reporting, tmp_path) -> None:
    summary = {"run": "r", "target": "jetson-orin-nano", "rows": [], "deployed": None, "quantize": None,
               "failures": [], "notes": [],
               "environment": describe_environment(jetson_sysfs(tmp_path / "j", 1, 2))}
    assert "clocks are not locked" in report.markdown(summary, 1, None)


def test_html_report_renders_in_headless_chromium(reporting, tmp_path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    report.run(accepting(reporting))
    second = json.loads(report.run(accepting(reporting, accept=False)).read_text())
    page = Path(reporting.report.history).parent / str(second["id"]) / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<table id=\"results\">" in dom.stdout and dom.stdout.count("<tr>") >= 4
    assert dom.stdout.count('src="data:image/png;base64,') >= 3
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1000,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20000
