"""The evaluate stage: top-1/top-5, per-class accuracy and confusion of any model on
labelled images, through the Runner interface, and INT8-vs-FP32 agreement with flips.

In a run it scores the models the target deploys on the same decoded images and writes
``eval/<runtime>-<precision>.json``: on a CPU target every row bench times (the run's ONNX
files on every installed CPU runtime, BF16 where the CPU has it, the checkpoint) on the val
split, so that whichever bench chooses has its accuracy; on a TensorRT target the target's engines (the FP32
reference engine first), on the val split or, in a run unpacked from a bundle, on the
labelled images the bundle carries. ``--model FILE --data DIR`` scores any model on any
labelled folder.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from pipeline.artifacts import provenance, write_json
from pipeline.config import Config
from pipeline.device.bundle import EVAL_SET, is_device_run
from pipeline.device.deployment import cpu_models, deployment
from pipeline.errors import DataError
from pipeline.imagefolder import ImageSplit, for_model, laid_out_split, open_split
from pipeline.preprocess import Preprocessing, load_images
from pipeline.runners.base import ModelInfo, Runner
from pipeline.runners.compare import paired_change_interval, require_finite, softmax, wilson_interval
from pipeline.runners.registry import ModelSpec, open_model
from targets.detect import target_profile
from targets.profile import TargetProfile


@dataclass
class Scores:
    """Predictions of one model on one split, and the figures derived from them."""

    info: ModelInfo
    top1: np.ndarray      # (N,) predicted class
    top5_hit: np.ndarray  # (N,) bool
    confidence: np.ndarray  # (N,) softmax probability of the top-1 class
    labels: np.ndarray
    scored: tuple = ()  # the data's classes where the model has more (ImageSplit.scored); () all

    def subset(self, keep: np.ndarray) -> "Scores":
        return Scores(self.info, self.top1[keep], self.top5_hit[keep], self.confidence[keep], self.labels[keep],
                      self.scored)

    def summary(self) -> Dict[str, Any]:
        """Top-1 is over the model's whole output; per-class accuracy and the confusion are
        over the data's classes (for a 1,000-class model checked on 10 of them, 10 rows, and
        a last column for predictions outside them)."""
        scored = np.asarray(self.scored or range(len(self.info.classes)), dtype=np.int64)
        column = np.full(len(self.info.classes), len(scored), dtype=np.int64)  # outside the data's classes
        column[scored] = np.arange(len(scored))
        row = column[self.labels]
        confusion = np.zeros((len(scored), len(scored) + (len(scored) < len(self.info.classes))), dtype=np.int64)
        np.add.at(confusion, (row, column[self.top1]), 1)
        per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
        names = [self.info.class_names[i] for i in scored]
        record = {"images": int(len(self.labels)), "top1": float((self.top1 == self.labels).mean()),
                  "top5": float(self.top5_hit.mean()), "per_class": dict(zip(names, map(float, per_class))),
                  "confusion": confusion.tolist()}
        if len(scored) < len(self.info.classes):
            record.update(model_classes=len(self.info.classes), confusion_classes=names + ["(other labels)"])
        return record


def run(cfg: Config) -> Path:
    """Score the target's models (or ``evaluate.model``) and return the last JSON written."""
    if cfg.evaluate.model:
        return evaluate_file(cfg)
    out = cfg.run_dir
    profile = target_profile(cfg.engine.target)
    models = deployed_models(out, profile)
    opened = [m.open(cfg.evaluate.threads) for m in models]
    split = evaluation_split(cfg, opened[0][1].classes, opened[0][1].class_names)
    # what each runner runs at once: an engine splits the fed batches to its profile's max
    batching = [{"fed": cfg.evaluate.batch_size, "runs": min(cfg.evaluate.batch_size, getattr(r, "max_batch", 1 << 30))}
                for r, _ in opened]
    cache: Dict[Preprocessing, np.ndarray] = {}
    scores = [score(runner, info, split, cfg, cache) for runner, info in opened]
    reference = scores[0]
    reporting = reporting_half(split)
    written = [_write(m.label, s, reference, split, reporting, out / "eval", profile, b)
               for m, s, b in zip(models, scores, batching)]
    print_table(scores, reference, [m.label for m in models])
    return written[-1]


def deployed_models(out: Path, profile: TargetProfile) -> List[ModelSpec]:
    """What this target runs, the FP32 reference first: its engines, or every row a CPU
    target measures."""
    if profile.on_cpu:
        models = list(cpu_models(out).values())
        if not models:
            raise DataError(f"{out}: no model to evaluate (expected model.fp32.onnx, model.int8.onnx or model.pt)")
        return models
    chosen = deployment(out, profile)
    wanted = [chosen.reference, chosen.model] if chosen.model != chosen.reference else [chosen.reference]
    missing = [m.path for m in wanted if not m.path.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: not built; run make engine TARGET={profile.name} first")
    return wanted


def evaluation_split(cfg: Config, classes: tuple[str, ...], class_names: tuple[str, ...]) -> ImageSplit:
    """The labelled images a run is scored on, in the model's label space: the bundle's in
    a device run, else the val split of ``data.path`` or of the named dataset (laid out by
    the workstation)."""
    if is_device_run(cfg.run_dir):
        return for_model(open_split(cfg.run_dir / EVAL_SET), classes, class_names)
    return for_model(laid_out_split(cfg.data, "val"), classes, class_names)


def evaluate_file(cfg: Config) -> Path | None:
    """``evaluate --model FILE --data DIR``: any model on an ImageFolder tree or one split."""
    model = Path(cfg.evaluate.model)
    runner, info = open_model(model, cfg.evaluate.threads, cfg.evaluate.runtime)
    split = for_model(open_split(Path(cfg.data.path)), info.classes, info.class_names) if cfg.data.path \
        else evaluation_split(cfg, info.classes, info.class_names)
    scores = score(runner, info, split, cfg, {})
    print_table([scores], scores, [f"{info.runtime}-{info.precision}"])
    if not cfg.evaluate.out:
        return None
    return write_json(Path(cfg.evaluate.out), {**provenance("evaluate", {"model": model}),
                                               "data": str(split.root), **scores.summary()})


def score(runner: Runner, info: ModelInfo, split: ImageSplit, cfg: Config,
          cache: Dict[Preprocessing, np.ndarray]) -> Scores:
    """Run one model over ``split`` and close it; images are decoded once per
    preprocessing definition."""
    if tuple(split.classes) != info.classes:  # a split is put in a model's label space by for_model
        raise DataError(f"{split.root}: classes ({len(split.classes)}) differ from {info.path}'s "
                        f"({len(info.classes)}); the model was trained on other data")
    pre = info.preprocessing
    if pre not in cache:
        cache[pre] = pre.normalize(load_images(split.files, pre.prepare, cfg.data.workers, f"load {split.root}"))
    inputs = cache[pre]
    try:
        logits = np.concatenate([_run_finite(runner, inputs, i, cfg.evaluate.batch_size, info.path)
                                 for i in range(0, len(inputs), cfg.evaluate.batch_size)])
    finally:
        runner.close()
    labels = np.asarray(split.labels)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    probs = softmax(logits)
    return Scores(info, logits.argmax(1), (top5 == labels[:, None]).any(1), probs.max(1), labels, split.scored)


def _run_finite(runner: Runner, inputs: np.ndarray, start: int, size: int, path: Path) -> np.ndarray:
    """One batch's logits; NaN or infinite ones are refused (argmax would pick a class)."""
    logits = runner.run(inputs[start:start + size])
    require_finite(logits, str(path), start // size, start)
    return logits


def compare(candidate: Scores, reference: Scores, files: tuple) -> Dict[str, Any]:
    """Agreement and drop (see :func:`agreement`) and the images whose label flipped."""
    flipped = np.nonzero(candidate.top1 != reference.top1)[0]
    names = candidate.info.class_names
    return {"reference": str(reference.info.path), **agreement(candidate, reference),
            "flipped": [{"file": str(files[i]), "label": names[candidate.labels[i]],
                         "reference": names[reference.top1[i]], "candidate": names[candidate.top1[i]]}
                        for i in flipped]}


def agreement(candidate: Scores, reference: Scores) -> Dict[str, Any]:
    """Top-1 agreement with the reference (95% Wilson interval) and flips, and the top-1 drop
    (paired 95% interval): at 1,000 images an agreement near 99% is known to about ±0.6
    points, so a figure without its interval says little."""
    n, flips = len(candidate.top1), int((candidate.top1 != reference.top1).sum())
    right, ref_right = candidate.top1 == candidate.labels, reference.top1 == reference.labels
    lost, gained = int((ref_right & ~right).sum()), int((right & ~ref_right).sum())
    return {"top1_agreement": (n - flips) / max(1, n), "top1_agreement_ci95": wilson_interval(n - flips, n),
            "flips": flips, "top1_drop": float(ref_right.mean() - right.mean()),
            "top1_drop_ci95": paired_change_interval(lost, gained, n),
            "mean_confidence_change": float((candidate.confidence - reference.confidence).mean())}


def print_table(scores: List[Scores], reference: Scores, labels: List[str]) -> None:
    """One line per model under its label (the same file on two runtimes is two lines)."""
    print(f"{'model':<22} {'top-1':>7} {'top-5':>7} {'drop':>7} {'agree':>7}  file")
    base = float((reference.top1 == reference.labels).mean())
    for s, label in zip(scores, labels):
        top1 = float((s.top1 == s.labels).mean())
        agree = float((s.top1 == reference.top1).mean())
        print(f"{label:<22} {top1:>7.2%} {s.top5_hit.mean():>7.2%} "
              f"{100 * (base - top1):>6.2f}p {agree:>7.2%}  {s.info.path.name}")


def _write(label: str, scores: Scores, reference: Scores, split: ImageSplit, reporting: np.ndarray, folder: Path,
           profile: TargetProfile, batching: Dict[str, int]) -> Path:
    path = folder / f"{label}.json"
    record = {**provenance("evaluate", {"model": scores.info.path}), "data": str(split.root),
              "target": profile.name, "runtime": scores.info.runtime, "precision": scores.info.precision,
              "batching": batching, **scores.summary(), "versus_reference": compare(scores, reference, split.files),
              "halves": halves(scores, reference, reporting)}
    return write_json(path, record)


def reporting_half(split: ImageSplit) -> np.ndarray:
    """Which images are the reporting half (True) and which the tuning half: by the parity of
    a hash of each image's class and file name, so a tree splits the same way on every
    machine and run (a bundle's copy of val included), and adding images moves none. Choices
    made by looking at results (calibration size, range estimators, layers kept in float)
    are made on the tuning half and reported on the other, which they never saw. The class
    is the image's folder, not the model's label for it: an imported model's halves of a
    tree are those of a model trained on it."""
    keys = (f"{Path(f).parent.name}/{Path(f).name}" for f in split.files)
    return np.array([hashlib.sha256(key.encode()).digest()[0] % 2 == 1 for key in keys], dtype=bool)


def tuning_split(cfg: Config, classes: tuple[str, ...], class_names: tuple[str, ...]) -> ImageSplit:
    """The tuning half of val, in the model's label space: every choice is made on it, none
    on the reporting half."""
    split = for_model(laid_out_split(cfg.data, "val"), classes, class_names)
    keep = np.nonzero(~reporting_half(split))[0]
    return ImageSplit(split.root, tuple(split.files[i] for i in keep), tuple(split.labels[i] for i in keep),
                      split.classes, split.names)


def halves(scores: Scores, reference: Scores, reporting: np.ndarray) -> Dict[str, Any]:
    """Agreement and top-1 drop, with intervals and flips, on each half (the flipped images
    themselves are listed once, in ``versus_reference``)."""
    return {name: {"images": int(keep.sum()), **agreement(scores.subset(keep), reference.subset(keep))}
            for name, keep in (("tuning", ~reporting), ("reporting", reporting))}
