"""``quant-search``: which post-training settings make the signed INT8 file (the one
engines are built from) agree best with FP32, judged on the tuning half of val only.

Every candidate stays within TensorRT's rules (signed INT8, zero point 0, per-tensor
activations); what varies is NNCF's activation range estimator, weight granularity, and
the calibration set size (seeded, class-balanced selections from train, as the calibrate
stage makes them). Post-ReLU tensors are not a dimension: NNCF refuses signed activations
on every hardware configuration it has, and for a min/max estimator quantizing them
directly as signed INT8 gives the very scale the UINT8 rewrite gives (max/127). The search goes one factor at a
time from NNCF's defaults, each round keeping the best of the last, so it costs about a
dozen quantizations rather than the full grid, and a change replaces the setting before it
only when its gain is significant (paired 95% interval above 0), not for a flip or two. Each candidate's signed file is scored with
ONNX Runtime, the host runtime for Q/DQ models, against the FP32 file on the tuning half;
the reporting half is never read here, so the figures ``evaluate`` gives for it stay honest.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from calibration.qdq import check_tensorrt_qdq, to_tensorrt_rules
from calibration.select import DEFAULT_IMAGES, select_calibration_set
from pipeline.artifacts import provenance, write_json
from pipeline.config import ACTIVATION_RANGES, Config, QuantizeConfig
from pipeline.device.evaluate import Scores, agreement, score, tuning_split
from pipeline.errors import StaleArtifactError
from pipeline.imagefolder import ImageSplit
from pipeline.onnx_meta import read_metadata
from pipeline.plots import plot_search
from pipeline.preprocess import Preprocessing, load_images
from pipeline.runners.compare import paired_change_interval
from pipeline.runners.registry import open_model
from pipeline.workstation.data import open_dataset
from pipeline.workstation.bench_quant import agreement_text, change_text, versus_text
from pipeline.workstation.quantize import quantize_nncf

SIZES = (256, 512, 1024, 2048)


@dataclass(frozen=True)
class Candidate:
    """One point of the search: the settings quantize would be given."""

    activation_range: str = "mean_minmax"
    weights: str = "per_channel"
    images: int = 512

    @property
    def label(self) -> str:
        return f"{self.activation_range} {self.weights.replace('_', '-')} {self.images}"

    def settings(self) -> dict[str, Any]:
        """The ``--set`` overrides that make ``make quantize`` produce this candidate."""
        return {"quantize.activation_range": self.activation_range,
                "quantize.weights": self.weights, "calibrate.images": self.images}

    def config(self, base: QuantizeConfig) -> QuantizeConfig:
        return dataclasses.replace(base, activation_range=self.activation_range, weights=self.weights,
                                   max_drop=0.0, max_disagreement=0.0)


def rounds(train_images: int) -> list[Callable[[Candidate], list[Candidate]]]:
    """The search, one factor at a time: the range estimator, then calibration size, then
    weight granularity, each applied to the best candidate so far."""
    sizes = [n for n in SIZES if n <= train_images]
    return [
        lambda best: [dataclasses.replace(best, activation_range=r) for r in ACTIVATION_RANGES],
        lambda best: [dataclasses.replace(best, images=n) for n in sizes if n != best.images],
        lambda best: [dataclasses.replace(best, weights="per_tensor")],
    ]


def run(cfg: Config) -> Path:
    out = cfg.run_dir
    fp32_path = out / "model.fp32.onnx"
    meta = read_metadata(fp32_path)
    pre = Preprocessing.from_dict(meta["preprocessing"])
    fp32 = onnx.load(str(fp32_path))
    tuning = tuning_split(cfg, tuple(meta["classes"]), tuple(meta["class_names"]))
    cache: dict[Preprocessing, np.ndarray] = {}
    reference = _score_file(fp32_path, tuning, cfg, cache)
    train = open_dataset(cfg.data).split("train")
    calibration = CalibrationPool(train, pre, cfg)
    start = Candidate(images=min(cfg.calibrate.images or DEFAULT_IMAGES, len(train)))
    rows: dict[Candidate, dict[str, Any]] = {}
    agrees: dict[Candidate, np.ndarray] = {}
    best = start
    print(f"quant-search: {len(tuning)} tuning images (half of {tuning.root}), ONNX Runtime, signed file")
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        for make in [lambda _: [start]] + rounds(len(train)):
            for candidate in make(best):
                if candidate not in rows:
                    scores, rows[candidate] = _try(candidate, fp32, calibration, tuning, reference, cfg, cache,
                                                   Path(scratch))
                    agrees[candidate] = scores.top1 == reference.top1
                    rows[candidate]["versus_incumbent"] = versus(agrees[candidate], agrees[best], best)
                    print(_line(rows[candidate]))
            best = challenge(best, [c for c in make(best) if c != best], rows)
    return _write(out, cfg, rows, best, tuning)


def versus(candidate: np.ndarray, incumbent: np.ndarray, label: Candidate) -> dict[str, Any]:
    """The candidate's agreement change over the incumbent, paired on the same images, with
    its 95% interval: only images one agrees on and the other does not count."""
    gained, lost = int((candidate & ~incumbent).sum()), int((~candidate & incumbent).sum())
    low, high = paired_change_interval(lost, gained, len(candidate))
    return {"against": label.label, "change": (gained - lost) / max(1, len(candidate)), "change_ci95": [-high, -low]}


def challenge(incumbent: Candidate, round_: list[Candidate], rows: dict[Candidate, dict[str, Any]]) -> Candidate:
    """The round's best (fewest flips, then the smaller drop, then the earlier) replaces the
    incumbent only when its gain is significant (the interval excludes 0): a flip or two on
    1,500 images is noise, and chasing it trades a known setting for luck."""
    if not round_:
        return incumbent
    best = min(round_, key=lambda c: (rows[c]["flips"], rows[c]["top1_drop"], round_.index(c)))
    return best if rows[best]["versus_incumbent"]["change_ci95"][0] > 0 else incumbent


class CalibrationPool:
    """Calibration inputs of any size, each image decoded once: the calibrate stage's seeded,
    class-balanced selection, so the candidate at the configured size is the manifest's set."""

    def __init__(self, train: ImageSplit, pre: Preprocessing, cfg: Config) -> None:
        self.train, self.pre, self.cfg = train, pre, cfg
        self.loaded: dict[Path, np.ndarray] = {}

    def inputs(self, images: int) -> np.ndarray:
        files = [self.train.files[i] for i in select_calibration_set(self.train, images, self.cfg.run.seed)]
        todo = [f for f in files if f not in self.loaded]
        if todo:
            decoded = self.pre.normalize(load_images(todo, self.pre.prepare, self.cfg.data.workers,
                                                     "calibration images"))
            self.loaded.update(zip(todo, decoded))
        return np.stack([self.loaded[f] for f in files])


def _try(candidate: Candidate, fp32: onnx.ModelProto, calibration: CalibrationPool, tuning: ImageSplit,
         reference: Scores, cfg: Config, cache: dict[Preprocessing, np.ndarray],
         scratch: Path) -> tuple[Scores, dict[str, Any]]:
    """Quantize with the candidate's settings, render to TensorRT's rules, score the signed file."""
    begin = time.perf_counter()
    model, rewritten = to_tensorrt_rules(quantize_nncf(fp32, calibration.inputs(candidate.images),
                                                       candidate.config(cfg.quantize)))
    seconds = time.perf_counter() - begin
    problems = check_tensorrt_qdq(model)
    if problems:
        raise StaleArtifactError(f"quant-search {candidate.label}: breaks TensorRT's rules ({problems[0]})")
    path = scratch / "candidate.onnx"
    onnx.save(model, str(path))
    scores = _score_file(path, tuning, cfg, cache)
    figures = agreement(scores, reference)
    return scores, {"candidate": candidate.label, "settings": candidate.settings(), "uint8_rewritten": rewritten,
            "quantize_seconds": seconds, "tuning_images": len(tuning), **figures}


def _score_file(path: Path, split: ImageSplit, cfg: Config, cache: dict[Preprocessing, np.ndarray]) -> Scores:
    runner, info = open_model(path, cfg.evaluate.threads, "onnxruntime")
    return score(runner, info, split, cfg, cache)


def _line(row: dict[str, Any]) -> str:
    return (f"  {row['candidate']:<30} agreement {agreement_text(row)} flips {row['flips']:>3}  "
            f"top-1 change {change_text(row)}  {versus_text(row)}  "
            f"({row['quantize_seconds']:.0f} s)")


def _write(out: Path, cfg: Config, rows: dict[Candidate, dict[str, Any]], best: Candidate,
           tuning: ImageSplit) -> Path:
    overrides = " ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in best.settings().items())
    record = {**provenance("quant-search", {"fp32": out / "model.fp32.onnx"}),
              "tuning": {"root": str(tuning.root), "images": len(tuning)}, "scored_with": "onnxruntime",
              "rows": list(rows.values()), "best": rows[best], "overrides": overrides}
    path = write_json(out / "bench" / "quant-search.json", record)
    plot_search(list(rows.values()), best.label, out / "bench" / "quant-search.png")
    print(f"kept on the tuning half: {best.label} (a change is kept only when significantly better); "
          f"quantize with it: {overrides}")
    return path
