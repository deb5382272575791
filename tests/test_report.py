"""Bench → report → history → gate, with real SQLite, real plots and (where installed)
headless Chromium rendering the HTML."""
from __future__ import annotations

import dataclasses
import getpass
import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.device import bench, history, report
from pipeline.device.environment import describe_environment
from pipeline.errors import ConfigError, PipelineError, RegressionError, StaleArtifactError


@pytest.fixture(scope="module")
def benched(quantized_run, tmp_path_factory) -> Path:
    """A copy of the quantized digits run with a bench (measured once for the module)."""
    root = tmp_path_factory.mktemp("benched")
    shutil.copytree(quantized_run.run_dir, root / quantized_run.run_name,
                    ignore=shutil.ignore_patterns("engines", "camera", "bench", "deploy"))
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


def deployed(cfg) -> str:
    """The label bench chose for the cpu target on this machine: measured, so not fixed here."""
    return json.loads((cfg.run_dir / "deploy" / "cpu.json").read_text())["label"]


def accepting(cfg, accept=True, baseline=0):
    return dataclasses.replace(cfg, report=dataclasses.replace(cfg.report, accept=accept, baseline=baseline))


def test_bench_writes_statistics_and_samples(reporting) -> None:
    record = json.loads((reporting.run_dir / "bench" / f"{deployed(reporting)}.json").read_text())
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
    md = (folder / "report.md").read_text()
    for label in ("onnxruntime-fp32", "onnxruntime-int8-cpu", "openvino-fp32", "openvino-int8", deployed(reporting)):
        assert f"| {label} |" in md, label
    assert f"Deployed on cpu: **{deployed(reporting)}**" in md
    assert re.search(r"against FP32 on the tuning half \(\d+ images\): agreement .* on the reporting half "
                     r"\(\d+ images, never tuned on\): agreement [\d.]+% \[", md), md
    assert re.search(rf"\| {re.escape(deployed(reporting))} \| [\d.]+% \| [+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\] \| "
                     rf"[\d.]+% \[[\d.]+%, [\d.]+%\], \d+ flips \|", md), md


def test_a_degraded_int8_model_fails_the_gate(reporting) -> None:
    report.run(accepting(reporting))
    worse = reporting.run_dir / "eval" / f"{deployed(reporting)}.json"
    record = json.loads(worse.read_text())
    record["top1"] -= 0.05
    record["versus_reference"]["top1_drop"] += 0.05
    worse.write_text(json.dumps(record))
    with pytest.raises(RegressionError, match=r"top-1 is \d\.\d\d points below FP32.*vs baseline"):
        report.run(accepting(reporting, accept=False))


def test_agreement_below_the_targets_budget_fails_the_gate(reporting) -> None:
    """Equal top-1 can hide many flipped images; the target's min_agreement catches them."""
    flipped = reporting.run_dir / "eval" / f"{deployed(reporting)}.json"
    record = json.loads(flipped.read_text())
    record["versus_reference"]["top1_drop"] = 0.0
    record["versus_reference"]["top1_agreement"] = 0.95
    flipped.write_text(json.dumps(record))
    with pytest.raises(RegressionError, match=rf"{deployed(reporting)} agrees with FP32 on 95.00% of images "
                                              r"\(budget 99.00%\)"):
        report.run(accepting(reporting))


def test_a_deployed_model_without_accuracy_fails_the_gate(reporting) -> None:
    """The INT8 model users deploy must have its accuracy defended, not skipped."""
    (reporting.run_dir / "eval" / f"{deployed(reporting)}.json").unlink()
    with pytest.raises(RegressionError, match=f"{deployed(reporting)}, the model cpu deploys, has no accuracy"):
        report.run(accepting(reporting))


def test_a_cpu_report_before_bench_has_chosen_fails_naming_the_cure(reporting) -> None:
    (reporting.run_dir / "deploy" / "cpu.json").unlink()
    with pytest.raises(RegressionError, match="no deployed model for cpu: .*make bench TARGET=cpu"):
        report.run(accepting(reporting))


def test_the_report_says_what_the_cpu_target_deploys_and_why(reporting) -> None:
    summary = json.loads(report.run(accepting(reporting)).read_text())
    choice = json.loads((reporting.run_dir / "deploy" / "cpu.json").read_text())
    assert summary["deployed"] == choice["label"] and summary["reference"] == choice["reference"]
    assert summary["deployment"]["why"] == choice["why"] and summary["deployment"]["p50_ms"] == choice["p50_ms"]
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows[choice["reference"]]["speedup"] == pytest.approx(1.0)
    assert rows["openvino-int8"]["agreement"] is not None and rows["openvino-int8"]["p50"] > 0


def test_a_slower_build_fails_beyond_the_noise_allowance(reporting) -> None:
    report.run(accepting(reporting))
    slow = reporting.run_dir / "bench" / f"{deployed(reporting)}.json"
    record = json.loads(slow.read_text())
    # beyond the allowance however noisy this machine's 20 runs were (a loaded CI box can make it 200%+)
    allowance = max(reporting.report.min_noise, 2 * report._spread(record["samples_ms"]))
    record["latency_ms"]["p99"] *= max(3, 2 * (1 + allowance))
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


# --- report folders, a damaged history, git outside the lock, accepting a regression ---

def _reports(cfg) -> Path:
    return Path(cfg.report.history).parent


def _rows(cfg, columns: str = "id, accepted") -> list[tuple]:
    conn = sqlite3.connect(cfg.report.history)
    try:
        return conn.execute(f"SELECT {columns} FROM runs ORDER BY id").fetchall()
    finally:
        conn.close()


def _degrade(cfg) -> None:
    """The deployed INT8 model five points worse: beyond the cpu target's budget."""
    path = cfg.run_dir / "eval" / f"{deployed(cfg)}.json"
    record = json.loads(path.read_text())
    record["top1"] -= 0.05
    record["versus_reference"]["top1_drop"] += 0.05
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("reset", ["deleted", "emptied"])
def test_a_reset_history_never_overwrites_a_report_folder(reporting, reset) -> None:
    first = json.loads(report.run(accepting(reporting)).read_text())
    kept = (_reports(reporting) / str(first["id"]) / "report.json").read_bytes()
    for leftover in _reports(reporting).glob("history.sqlite-*"):
        leftover.unlink()
    if reset == "deleted":
        Path(reporting.report.history).unlink()
    else:
        Path(reporting.report.history).write_bytes(b"")
    second = json.loads(report.run(reporting).read_text())
    assert second["id"] == first["id"] + 1, "the id of a report folder the history forgot was reused"
    assert (_reports(reporting) / str(first["id"]) / "report.json").read_bytes() == kept
    assert (_reports(reporting) / str(second["id"]) / "report.json").is_file()
    assert _rows(reporting, "id") == [(second["id"],)]  # folder name, history and report.json agree
    assert any("does not know" in note for note in second["notes"]), second["notes"]
    third = json.loads(report.run(reporting).read_text())
    assert third["id"] == second["id"] + 1 and not any("does not know" in n for n in third["notes"])


def test_an_existing_report_folder_is_refused_not_overwritten(reporting) -> None:
    first = json.loads(report.run(reporting).read_text())
    folder = _reports(reporting) / str(first["id"])
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(StaleArtifactError, match=re.escape(f"{folder}: already exists")):
        report.write_report(folder, first["id"], first, [], None)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == kept


def test_a_crash_while_writing_leaves_no_half_report(reporting, monkeypatch) -> None:
    def out_of_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "render_html", out_of_space)
    with pytest.raises(PipelineError, match=r"reports/1: writing the report failed \(No space left on device\); "
                                            r"no folder was left"):
        report.run(reporting)
    assert sorted(p.name for p in _reports(reporting).iterdir() if not p.name.startswith("history.sqlite")) == []


def _garbage(path: Path) -> str:
    path.write_bytes(b"\x00\x17 not a database \xff" * 300)
    return "not a SQLite database"


def _truncated(path: Path) -> str:
    conn = history.open_history(path)
    for i in range(30):
        history.append(conn, "cpu", "m", "h", {"rows": [], "samples": list(range(400)), "i": i})
    conn.close()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "damaged"


def _foreign(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (number INTEGER PRIMARY KEY, amount REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()
    return "not a report history.*invoices"


def _other_runs(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    return "not a report history.*'runs' table has no column created"


def _folder(path: Path) -> str:
    path.mkdir()
    (path / "inside").write_text("x")
    return "is a folder"


@pytest.mark.parametrize("damage", [_garbage, _truncated, _foreign, _other_runs, _folder])
def test_a_damaged_history_is_one_line_naming_it(reporting, damage) -> None:
    path = Path(reporting.report.history)
    path.parent.mkdir(parents=True, exist_ok=True)
    what = damage(path)
    before = sorted(path.parent.iterdir()), (path.read_bytes() if path.is_file() else None)
    with pytest.raises(StaleArtifactError, match=re.escape(str(path)) + ": .*" + what) as caught:
        report.run(reporting)
    assert "\n" not in str(caught.value)
    assert (sorted(path.parent.iterdir()), (path.read_bytes() if path.is_file() else None)) == before, "it was changed"


SLOW_GIT = """#!{python}
# A stand-in for git: records whether the history is write-locked while it runs.
import os, sqlite3, time
time.sleep(0.2)
probe = sqlite3.connect(os.environ["HISTORY_PROBE"], timeout=0, isolation_level=None)
try:
    probe.execute("BEGIN IMMEDIATE")
    probe.execute("ROLLBACK")
    state = "free"
except sqlite3.OperationalError as exc:
    state = str(exc)
with open(os.environ["HISTORY_PROBE_LOG"], "a") as log:
    log.write(state + "\\n")
print("c0ffee1")
"""


def test_git_runs_before_the_history_is_locked(tmp_path, monkeypatch) -> None:
    """git can be slow (a cold cache, a network file system); other reports must not wait on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(SLOW_GIT.format(python=sys.executable))
    (bin_dir / "git").chmod(0o755)
    path, log = tmp_path / "h.sqlite", tmp_path / "git.log"
    conn = history.open_history(path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HISTORY_PROBE", str(path))
    monkeypatch.setenv("HISTORY_PROBE_LOG", str(log))
    run_id = history.append(conn, "cpu", "m", "h", {"rows": []})
    assert log.read_text().splitlines() == ["free"]
    assert history.get(conn, run_id)["git_commit"] == "c0ffee1"


def test_accept_on_a_failing_report_is_refused_and_recorded(reporting) -> None:
    good = json.loads(report.run(accepting(reporting)).read_text())
    _degrade(reporting)
    with pytest.raises(RegressionError, match="not accepted as the baseline.*--accept-regression") as caught:
        report.run(accepting(reporting))
    assert "\n" not in str(caught.value) and "ACCEPT_REGRESSION=1" in str(caught.value)
    assert _rows(reporting) == [(good["id"], 1), (good["id"] + 1, 0)]
    refused = json.loads((_reports(reporting) / str(good["id"] + 1) / "report.json").read_text())
    assert refused["accepted"] is None and any("not accepted" in n for n in refused["notes"])
    assert "not accepted as the baseline" in (_reports(reporting) / str(good["id"] + 1) / "report.md").read_text()
    with pytest.raises(RegressionError):
        report.run(accepting(reporting, accept=False))
    later = json.loads((_reports(reporting) / str(good["id"] + 2) / "report.json").read_text())
    assert later["baseline_id"] == good["id"]


def test_accept_regression_accepts_a_failing_report_and_says_who(reporting) -> None:
    good = json.loads(report.run(accepting(reporting)).read_text())
    _degrade(reporting)
    forced = dataclasses.replace(reporting, report=dataclasses.replace(reporting.report, accept=True,
                                                                       accept_regression=True))
    second = json.loads(report.run(forced).read_text())  # accepted on purpose: not a failure of the command
    user = getpass.getuser()
    assert second["failures"] and second["accepted"]["by"] == user
    assert second["accepted"]["with_failures"] == len(second["failures"])
    assert _rows(reporting, "id, accepted, accepted_by, accepted_with_failures") == [
        (good["id"], 1, user, 0), (second["id"], 1, user, len(second["failures"]))]
    with pytest.raises(RegressionError) as caught:  # the target's budget still fails; the baseline no longer
        report.run(accepting(reporting, accept=False))
    assert "vs baseline" not in str(caught.value) and "below FP32" in str(caught.value)
    third = json.loads((_reports(reporting) / str(second["id"] + 1) / "report.json").read_text())
    assert third["baseline_id"] == second["id"]
    count = len(second["failures"])
    assert third["baseline"]["accepted_by"] == user and third["baseline"]["accepted_with_failures"] == count
    md = (_reports(reporting) / str(third["id"]) / "report.md").read_text()
    assert re.search(rf"baseline: report {second['id']}, accepted by {re.escape(user)} at \S+, "
                     rf"with {count} regression", md), md


OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    git_commit TEXT,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    config_hash TEXT,
    accepted INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL
)"""


def test_a_history_of_the_old_schema_is_migrated(reporting, tmp_path) -> None:
    scratch = dataclasses.replace(reporting, report=dataclasses.replace(
        reporting.report, history=str(tmp_path / "scratch" / "history.sqlite"), accept=True))
    summary = json.loads(report.run(scratch).read_text())
    summary = {k: v for k, v in summary.items() if k not in ("id", "history", "accepted", "baseline")}
    path = Path(reporting.report.history)
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.execute(OLD_SCHEMA)
    old.execute("INSERT INTO runs (created, git_commit, target, model, accepted, summary) VALUES (?, ?, ?, ?, 1, ?)",
                ("2024-01-02T03:04:05+0000", "abc1234", summary["target"], reporting.run_dir.name, json.dumps(summary)))
    old.commit()
    old.close()
    after = json.loads(report.run(accepting(reporting)).read_text())
    assert after["baseline_id"] == 1 and after["failures"] == []
    assert after["baseline"]["accepted_by"] is None
    md = (_reports(reporting) / "2" / "report.md").read_text()
    assert "baseline: report 1, accepted (who and when not recorded)" in md
    assert _rows(reporting, "id, created, accepted, accepted_by, accepted_with_failures") == [
        (1, "2024-01-02T03:04:05+0000", 1, None, None), (2, after["accepted"]["at"], 1, getpass.getuser(), 0)]
    history.open_history(path).close()  # migrating twice is a no-op
