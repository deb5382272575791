"""``make report``: one command that says whether this build is better or worse.

Gathers a run's eval, bench, quantize and camera JSON into ``reports/<id>/report.{json,md,
html}`` (the HTML self-contained, plots inlined), appends it to the SQLite history, and
gates it: INT8 drop vs FP32 against the target's budget, accuracy and p99 latency against
the baseline (the last accepted report for this target and model) with a noise allowance
measured from the runs' own spread. A regression exits non-zero with the list.

``--accept`` makes a passing report the baseline; a failing one only with
``--accept-regression`` as well (else it is recorded, refused as the baseline, and says
so), and the history keeps who accepted it, when, and with how many regressions. Report
folders are written whole (staged, then renamed) and never overwritten: ids continue after
folders a reset history no longer knows.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.device import history
from pipeline.artifacts import read_json, write_json, write_text
from pipeline.config import Config, ReportConfig, config_to_dict
from pipeline.device.deployment import deployment, split_label
from pipeline.device.environment import describe_environment
from pipeline.errors import ArtifactWriteError, ConfigError, RegressionError, StaleArtifactError
from targets.detect import target_profile
from targets.profile import TargetProfile



def run(cfg: Config) -> Path:
    out, profile = cfg.run_dir, target_profile(cfg.engine.target, fit=False)
    model = out.name  # rows are keyed by run folder and target in the history
    reports = Path(cfg.report.history).parent  # report folders, named by history id, beside the history
    with contextlib.closing(history.open_history(Path(cfg.report.history))) as conn:
        base = choose_baseline(conn, cfg.report, profile.name, model)
        deployed = deployed_record(out, profile)
        rows = collect_rows(out, profile, deployed["reference"])
        summary = {"run": cfg.run_name, "target": profile.name, "rows": rows, "deployed": deployed["label"],
                   "reference": deployed["reference"], "deployment": deployed,
                   "quantize": _optional(out / "quantize.json"), "camera": latest_camera(out),
                   "environment": describe_environment()}
        failures, notes = gate(summary, base, profile, cfg.report)
        accepted, refusal = decide_acceptance(cfg.report, failures)
        highest = highest_report_id(reports)  # before the history's last id: a folder is made after its row
        notes += refusal + unknown_folders_note(reports, highest, history.last_id(conn))
        summary.update(baseline_id=base["id"] if base else None, baseline=baseline_record(base),
                       failures=failures, notes=notes)
        run_id = history.append(conn, profile.name, model, config_hash(cfg), summary,
                                accepted_with_failures=len(failures) if accepted else None, min_id=highest + 1)
        summary["accepted"] = acceptance_record(history.get(conn, run_id))
        folder = reports / str(run_id)
        write_report(folder, run_id, summary, history.recent(conn, profile.name, model), base)
    print(markdown(summary, run_id, base))
    print(f"report {folder / 'report.html'}")
    if failures and not accepted:
        raise RegressionError(f"report {run_id}: " + "".join(f"{r}; " for r in refusal)
                              + f"{len(failures)} regression(s): " + "; ".join(failures))
    return folder / "report.json"


def decide_acceptance(cfg: ReportConfig, failures: list[str]) -> tuple[bool, list[str]]:
    """Whether this report becomes the baseline; a failing one only with accept_regression,
    else the refusal, said in the report and in the error."""
    if not cfg.accept:
        return False, []
    if not failures or cfg.accept_regression:
        return True, []
    return False, ["not accepted as the baseline: it failed its gate, and --accept takes a failing report only "
                   "with --accept-regression (make ACCEPT_REGRESSION=1)"]


def highest_report_id(reports: Path) -> int:
    """The highest id that names an entry in ``reports`` (0 for none)."""
    names = [p.name for p in reports.iterdir()] if reports.is_dir() else []
    return max((int(n) for n in names if n.isascii() and n.isdigit()), default=0)


def unknown_folders_note(reports: Path, highest: int, known: int) -> list[str]:
    """Report folders beyond the history's ids: it was emptied, deleted or replaced. New
    ids continue after them, so none is overwritten."""
    if highest <= known:
        return []
    return [f"{reports} holds report folders up to {highest} that the history does not know (it was emptied, "
            f"deleted or replaced): numbering continues after them, and none of them can be a baseline"]


def baseline_record(base: dict[str, Any] | None) -> dict[str, Any] | None:
    if base is None:
        return None
    return {"id": base["id"], "accepted": bool(base["accepted"]), "accepted_by": base.get("accepted_by"),
            "accepted_at": base.get("accepted_at"), "accepted_with_failures": base.get("accepted_with_failures")}


def acceptance_record(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """Who accepted this report as the baseline, when, with how many regressions; None: not accepted."""
    if not entry or not entry["accepted"]:
        return None
    return {"by": entry.get("accepted_by"), "at": entry.get("accepted_at"),
            "with_failures": entry.get("accepted_with_failures")}


def collect_rows(out: Path, profile: TargetProfile, reference: str) -> list[dict[str, Any]]:
    """One row per model of this target: accuracy from eval/, latency from bench/, joined
    by label; the speed-up is against ``reference``, the FP32 of the deployed runtime."""
    evals = _for_target((out / "eval").glob("*.json"), profile)
    found = _for_target((out / "bench").glob("*.json"), profile)
    benches = {label: record for label, record in found.items() if "samples_ms" in record}  # not clips
    if not evals and not benches:
        raise ConfigError(f"{out}: nothing to report for {profile.name} (no eval/ or bench/ JSON); run "
                          f"make evaluate and make bench")
    fp32 = benches.get(reference, {}).get("latency_ms", {}).get("median")
    rows = []
    for label in sorted(set(evals) | set(benches), key=_order):
        e, b = evals.get(label, {}), benches.get(label, {})
        lat = b.get("latency_ms", {})
        versus = e.get("versus_reference", {})
        rows.append({"label": label, "precision": split_label(label)[1], "model_name": out.name,
                     "top1": e.get("top1"), "drop": versus.get("top1_drop"), "agreement": versus.get("top1_agreement"),
                     "agreement_ci95": versus.get("top1_agreement_ci95"), "flips": versus.get("flips"),
                     "drop_ci95": versus.get("top1_drop_ci95"), "halves": e.get("halves"),
                     "per_class": e.get("per_class"), "p50": lat.get("median"), "p90": lat.get("p90"),
                     "p99": lat.get("p99"), "throughput": lat.get("throughput"),
                     "speedup": fp32 / lat["median"] if fp32 and lat.get("median") else None,
                     "spread": _spread(b.get("samples_ms")), "size_mb": b.get("size_mb"),
                     "samples_ms": b.get("samples_ms")})
    return rows


def _for_target(paths: Any, profile: TargetProfile) -> dict[str, Any]:
    """label → record, leaving out records another target wrote (engines of two targets
    may share a run folder)."""
    records = {p.stem: read_json(p) for p in sorted(paths)}
    return {label: r for label, r in records.items() if r.get("target", profile.name) == profile.name}


def deployed_record(out: Path, profile: TargetProfile) -> dict[str, Any]:
    """The model this target deploys, its FP32 reference and why (a CPU target: bench's
    choice on this machine), whether or not the run has results for them. A CPU target
    that bench has not chosen for has no deployed label, and its gate says so."""
    try:
        chosen = deployment(out, profile)
    except StaleArtifactError as exc:
        return {"label": None, "reference": None, "why": str(exc), "file": None, "p50_ms": {}}
    return {"label": chosen.model.label, "reference": chosen.reference.label, "why": chosen.why,
            "file": chosen.model.path.name, "p50_ms": chosen.record.get("p50_ms", {})}


def choose_baseline(conn: Any, cfg: ReportConfig, target: str, model: str) -> dict[str, Any] | None:
    if not cfg.baseline:
        return history.last_accepted(conn, target, model)
    base = history.get(conn, cfg.baseline)
    if base is None:
        raise ConfigError(f"report.baseline: no report {cfg.baseline} in {cfg.history}")
    if (base["target"], base["model"]) != (target, model):
        raise ConfigError(f"report.baseline: report {cfg.baseline} is for {base['model']} on {base['target']}, "
                          f"this is {model} on {target}; comparing them would mean nothing")
    return base


def gate(summary: dict[str, Any], base: dict[str, Any] | None, profile: TargetProfile,
         cfg: ReportConfig) -> tuple[list[str], list[str]]:
    """What regressed (failures) and what the reader should know (notes)."""
    rows = {r["label"]: r for r in summary["rows"]}
    if summary["deployed"] is None:
        return [f"no deployed model for {profile.name}: {summary['deployment']['why']}"], []
    row = rows.get(summary["deployed"])
    failures, notes = [], []
    if row is None or row["drop"] is None or row["agreement"] is None:
        return [f"{summary['deployed']}, the model {profile.name} deploys, has no accuracy beside its FP32 "
                f"reference: run make evaluate TARGET={profile.name} before the report"], notes
    if row["drop"] > profile.max_accuracy_drop:
        failures.append(f"{row['label']} top-1 is {100 * row['drop']:.2f} points below FP32 "
                        f"(budget {100 * profile.max_accuracy_drop:.2f})")
    if row["agreement"] < profile.min_agreement:
        failures.append(f"{row['label']} agrees with FP32 on {row['agreement']:.2%} of images "
                        f"(budget {profile.min_agreement:.2%})")
    if profile.latency_p99_ms and row["p99"] and row["p99"] > profile.latency_p99_ms:
        failures.append(f"{row['label']} p99 {row['p99']:.2f} ms over the budget {profile.latency_p99_ms} ms")
    if base is not None and base["summary"].get("deployed") not in (None, summary["deployed"]):
        notes.append(f"the deployed model changed from {base['summary']['deployed']} (baseline {base['id']}) to "
                     f"{summary['deployed']}; each row is compared with the baseline's row of the same label")
    if base is None:
        notes.append("no accepted baseline for this target and model: compared with the budgets only "
                     "(mark one with `report --accept`)")
        return failures, notes
    failures += _versus_baseline(row, base, cfg)
    return failures, notes


def _versus_baseline(row: dict[str, Any], base: dict[str, Any], cfg: ReportConfig) -> list[str]:
    old = {r["label"]: r for r in base["summary"]["rows"]}.get(row["label"])
    if old is None:
        return []
    failures = []
    if row["top1"] is not None and old["top1"] is not None and row["top1"] < old["top1"] - cfg.accuracy_tolerance:
        failures.append(f"{row['label']} top-1 {row['top1']:.2%} vs baseline {old['top1']:.2%} (report {base['id']})")
    if row["p99"] and old["p99"]:
        allowance = max(cfg.min_noise, 2 * (row["spread"] or 0), 2 * (old["spread"] or 0))
        if row["p99"] > old["p99"] * (1 + allowance):
            failures.append(f"{row['label']} p99 {row['p99']:.2f} ms vs baseline {old['p99']:.2f} ms "
                            f"(+{row['p99'] / old['p99'] - 1:.0%}, noise allowance {allowance:.0%})")
    return failures


def deployment_lines(summary: dict[str, Any]) -> list[str]:
    """What the target deploys and why: on a CPU target, bench's choice with its figures."""
    chosen = summary.get("deployment") or {}
    if not chosen.get("label"):
        return []
    return [f"\nDeployed on {summary['target']}: **{chosen['label']}** ({chosen['file']}), speed-ups against "
            f"{chosen['reference']}: {chosen['why']}."]


def halves_lines(summary: dict[str, Any]) -> list[str]:
    """The deployed model against FP32 on the tuning half of the evaluation images and on
    the reporting half that no choice was made on."""
    row = {r["label"]: r for r in summary["rows"]}.get(summary.get("deployed") or "")
    found = (row or {}).get("halves")
    if not found:
        return []
    parts = [f"{name} half ({h['images']} images{', never tuned on' if name == 'reporting' else ''}): agreement "
             f"{_pct(h['top1_agreement'])}{_span(h['top1_agreement_ci95'], _pct)}, {h['flips']} flips, top-1 drop "
             f"{_pts(h['top1_drop'])}{_span(h['top1_drop_ci95'], _pts)} points" for name, h in found.items()]
    return [f"\n{row['label']} against FP32 on the {parts[0]}; on the {parts[1]}."]


def camera_lines(camera: dict[str, Any] | None) -> list[str]:
    """The live loop as a user felt it: its last session's rate, drops and capture-to-label."""
    if not camera:
        return []
    c2l = camera.get("latency_ms", {}).get("capture_to_label") or {}
    return [f"\nCamera ({camera.get('source')}, {camera.get('status')}): {camera.get('frames')} frames at "
            f"{_num(camera.get('fps'), 1)} FPS, {camera.get('dropped_frames', 0)} dropped; capture to label "
            f"p50 {_num(c2l.get('p50'))} / p90 {_num(c2l.get('p90'))} / p99 {_num(c2l.get('p99'))} ms; "
            f"INT8 vs FP32 agreement {_pct(camera.get('top1_agreement'))} on {camera.get('shadow_frames')} frames."]


def route_text(route: dict[str, Any] | None) -> str:
    """What quantization tried before the deployed model, on the tuning half, against its budget."""
    if not route or not route.get("attempts"):
        return ""
    (kind, budget), = route["budget"].items()
    key = "top1_drop" if kind == "top-1 drop" else "disagreement"
    tried = "; ".join(f"{a['method']} {_pct(a[key])} ({'within' if a['within_budget'] else 'over'})"
                      for a in route["attempts"])
    return f" Budget: {kind} <= {_pct(budget)} on {route['tuning_images']} tuning images; tried: {tried}."


def markdown(summary: dict[str, Any], run_id: int, base: dict[str, Any] | None) -> str:
    head = (f"## Report {run_id}: {summary['run']} on {summary['target']}"
            + (f" (baseline {base['id']})" if base else " (no baseline)") + "\n\n"
            + "".join(f"{line}\n" for line in acceptance_lines(summary, base)) + "\n"
            "| model | top-1 | drop vs FP32 [95%] | agreement [95%] | p50 ms | p90 ms | p99 ms | img/s | speed-up | MB |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    lines = [f"| {r['label']} | {_pct(r['top1'])} | {_pts(r['drop'])}{_span(r.get('drop_ci95'), _pts)} | "
             f"{_pct(r['agreement'])}{_span(r.get('agreement_ci95'), _pct)}{_flips(r.get('flips'))} | {_num(r['p50'])} | "
             f"{_num(r['p90'])} | {_num(r['p99'])} | {_num(r['throughput'], 0)} | {_num(r['speedup'])}x | "
             f"{_num(r['size_mb'], 1)} |" for r in summary["rows"]]
    quant = summary.get("quantize") or {}
    extra = [f"\nQuantization: {quant.get('settings') or quant.get('method', '-')}; calibration set "
             f"{str(quant.get('calibration', {}).get('set_sha256', '-'))[:12]} "
             f"({quant.get('calibration', {}).get('images', '-')} images); layers kept in float: "
             f"{', '.join(quant.get('float_layers') or []) or 'none'}.{route_text(quant.get('route'))}"]
    extra += deployment_lines(summary) + halves_lines(summary)
    extra += camera_lines(summary.get("camera"))
    state = summary["environment"].get("jetson_state")
    if state and not state["clocks_locked"]:
        extra.append("**Warning: Jetson clocks are not locked (run `sudo jetson_clocks`); latency varies.**")
    verdict = ["\n**Regressions:**"] + [f"- {f}" for f in summary["failures"]] if summary["failures"] else ["\n**No regression.**"]
    return head + "\n".join(lines) + "\n" + "\n".join(extra + [f"\n_{n}_" for n in summary["notes"]] + verdict) + "\n"


def acceptance_lines(summary: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    """What this report is compared with, and whether it became the baseline, by whom."""
    lines = [f"Compared with baseline: {_describe_baseline(base)}." if base else "Compared with the budgets only."]
    mine = summary.get("accepted")
    if mine:
        lines.append(f"Accepted as the baseline by {mine['by']} at {mine['at']}"
                     + (f", with {mine['with_failures']} regression(s) (--accept-regression)."
                        if mine["with_failures"] else "."))
    return lines


def _describe_baseline(base: dict[str, Any]) -> str:
    if not base["accepted"]:
        return f"report {base['id']}, chosen with --baseline (not accepted)"
    if base.get("accepted_by") is None:
        return f"report {base['id']}, accepted (who and when not recorded)"
    count = base.get("accepted_with_failures")
    return (f"report {base['id']}, accepted by {base['accepted_by']} at {base['accepted_at']}"
            + (f", with {count} regression(s)" if count else ""))


def write_report(folder: Path, run_id: int, summary: dict[str, Any], past: list[dict[str, Any]],
                 base: dict[str, Any] | None) -> None:
    """Write the report into a hidden folder beside ``folder`` and rename it into place:
    a crash leaves no half report, and an existing folder is never overwritten."""
    _refuse_existing(folder, run_id)
    staging = folder.with_name(f".{folder.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir(parents=True)
        _write_report_files(staging, run_id, summary, past, base)
        _refuse_existing(folder, run_id)
        os.rename(staging, folder)
    except OSError as exc:
        raise ArtifactWriteError(f"{folder}: writing the report failed ({exc.strerror or exc}); no folder was "
                                 f"left, its figures are in the history as report {run_id}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after the rename


def _refuse_existing(folder: Path, run_id: int) -> None:
    if os.path.lexists(folder):
        raise StaleArtifactError(f"{folder}: already exists, and it is not report {run_id} of the history beside "
                                 f"it; refusing to overwrite it: restore the history that made it, or move "
                                 f"{folder.parent} aside")


def _write_report_files(folder: Path, run_id: int, summary: dict[str, Any], past: list[dict[str, Any]],
                        base: dict[str, Any] | None) -> None:
    from pipeline.plots import plot_report

    images = plot_report(summary, past, folder)
    write_json(folder / "report.json", {"id": run_id, **summary, "history": [
        {"id": p["id"], "created": p["created"], "commit": p["git_commit"], "accepted": bool(p["accepted"]),
         "accepted_by": p.get("accepted_by"), "accepted_at": p.get("accepted_at"),
         "accepted_with_failures": p.get("accepted_with_failures")} for p in past]})
    md = markdown(summary, run_id, base)
    write_text(folder / "report.md", md + "".join(f"\n![{p.stem}]({p.name})\n" for p in images))
    write_text(folder / "report.html", render_html(summary, md, images))


def render_html(summary: dict[str, Any], md: str, images: list[Path]) -> str:
    """Self-contained: the tables as HTML, the plots as inline PNG data."""
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
                   for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| model", "| ---")))
    header = "".join(f"<th>{h}</th>" for h in ("model", "top-1", "drop vs FP32 [95%]", "agreement [95%]", "p50 ms", "p90 ms",
                                               "p99 ms", "img/s", "speed-up", "MB"))
    notes = "".join(f"<li>{html.escape(line[2:])}</li>" for line in md.splitlines() if line.startswith("- "))
    verdict = "No regression." if not summary["failures"] else "Regressions:"
    status = "".join(f"<p>{html.escape(line)}</p>" for line in acceptance_lines(summary, summary.get("baseline")))
    figures = "".join(f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
                      f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
                      for p in images)
    env = html.escape(json.dumps(summary["environment"], indent=1))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(summary['run'])}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(summary['run'])} on {html.escape(summary['target'])}</h1>{status}"
            f"<table id='results'><tr>{header}</tr>{rows}</table><h2>{verdict}</h2><ul>{notes}</ul>"
            f"{figures}<h2>Environment</h2><pre>{env}</pre></body></html>")


def latest_camera(out: Path) -> dict[str, Any] | None:
    """The newest camera session that classified frames. Skipped: a loop that failed before its
    first frame (status "error: ...", no frames: nothing it measured is a session's figure), a
    name just claimed for a summary being written (empty), a temporary file (hidden)."""
    names = sorted(p for p in (out / "camera").glob("*.json") if not p.name.startswith("."))
    for path in reversed(names):
        record = read_json(path) if path.stat().st_size else None
        if isinstance(record, dict) and record.get("frames"):
            return record
    return None


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _optional(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def _spread(samples: list[float] | None) -> float | None:
    if not samples:
        return None
    values = np.asarray(samples)
    return float((np.percentile(values, 90) - np.median(values)) / np.median(values))


def _order(label: str) -> tuple[int, str]:
    """FP32 rows first, then BF16, then the reduced precisions."""
    return (0 if label.endswith("fp32") else 1 if label.endswith("bf16") else 2, label)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _pts(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.2f}"


def _span(interval: list[float] | None, fmt: Any) -> str:
    """`` [lo, hi]``, a 95% interval, where the record has one (older records do not)."""
    return f" [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else ""


def _flips(count: int | None) -> str:
    return "" if count is None else f", {count} flips"


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
