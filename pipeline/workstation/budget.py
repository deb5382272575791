"""An accuracy budget for INT8 (``max_drop`` on top-1, or ``max_disagreement`` with FP32),
judged on the signed file users deploy, on the tuning half of val, and the route to meet it.

The route, cheapest first, stops at the first INT8 model within budget:

1. post-training quantization, every layer INT8;
2. quantization-aware fine-tuning from the checkpoint (``qat_steps`` > 0), every layer INT8;
3. NNCF's accuracy control, which keeps the fewest layers in float that meet the budget
   (by its ranking; the float layers are named in quantize.json and the report).

Each attempt's figures are recorded, so a report says not only what was deployed but what
was tried before it.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from calibration.qdq import float_layers, to_tensorrt_rules
from pipeline.config import Config, QuantizeConfig
from pipeline.device.evaluate import tuning_split
from pipeline.errors import DataError
from pipeline.optional import import_optional
from pipeline.preprocess import Preprocessing, load_images


class Judge:
    """Candidate models scored on the tuning images as the budget counts: each image is a hit
    when the signed rendering's top-1 is its label (``max_drop``) or FP32's top-1
    (``max_disagreement``, where FP32 itself scores 1)."""

    def __init__(self, fp32: onnx.ModelProto, x: np.ndarray, labels: np.ndarray, q: QuantizeConfig) -> None:
        self.name, self.x = fp32.graph.input[0].name, x
        reference = predictions(fp32, x)
        self.targets = labels if q.max_drop else reference
        self.baseline = float((reference == self.targets).mean())
        self.budget = q.max_drop or q.max_disagreement
        self.kind, self.key = ("top-1 drop", "top1_drop") if q.max_drop else ("disagreement", "disagreement")

    def score(self, candidate: onnx.ModelProto) -> float:
        return float((predictions(to_tensorrt_rules(candidate)[0], self.x) == self.targets).mean())

    def figures(self, method: str, candidate: onnx.ModelProto) -> dict[str, Any]:
        value = self.score(candidate)
        return {"method": method, self.key: self.baseline - value,
                "within_budget": self.baseline - value <= self.budget + 1e-12}

    def hits_function(self) -> Any:
        """NNCF's validation function: (mean, per-image hits) for a candidate and items.

        NNCF calls it once per item while ranking layers, so the last candidate's session is
        kept, with the candidate itself: an ``id`` alone is reused by the next candidate once
        NNCF frees one, and a stale session scored the wrong model (accuracy control then
        stopped "within budget" on a model the judge measured over it)."""
        last: list[Any] = [None, None]  # the candidate and its session

        def hits(candidate: onnx.ModelProto, items: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[float]]:
            if last[0] is not candidate:
                signed = to_tensorrt_rules(candidate)[0]
                last[:] = [candidate, ort.InferenceSession(signed.SerializeToString(),
                                                           providers=["CPUExecutionProvider"])]
            session = last[1]
            found = [float(session.run(None, {self.name: x})[0].argmax() == y) for x, y in items]
            return float(np.mean(found)), found

        return hits


def quantize_within_budget(cfg: Config, fp32: onnx.ModelProto, inputs: np.ndarray, meta: dict[str, Any],
                           ptq: onnx.ModelProto, advanced: Any) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The INT8 model (NNCF's rendering, UINT8 after ReLUs) and the route that made it, from
    the post-training model ``ptq`` and the NNCF parameters (``advanced``) that made it;
    ``meta`` is the FP32 file's metadata (its classes and preprocessing)."""
    q = cfg.quantize
    pre = Preprocessing.from_dict(meta["preprocessing"])
    x, labels = control_set(cfg, (tuple(meta["classes"]), tuple(meta["class_names"])), pre)
    judge = Judge(fp32, x, labels, q)
    attempts = [judge.figures("ptq", ptq)]
    _say(judge, attempts[-1])
    if attempts[-1]["within_budget"]:
        return ptq, _route("ptq", judge, attempts)
    if q.qat_steps:
        from pipeline.workstation.qat import finetune

        qat = finetune(cfg, inputs, pre, advanced)
        attempts.append(judge.figures("qat", qat))
        _say(judge, attempts[-1])
        if attempts[-1]["within_budget"]:
            return qat, _route("qat", judge, attempts)
    controlled = accuracy_control(fp32, inputs, (x, judge.targets), judge, advanced)
    if not any(n.op_type == "QuantizeLinear" for n in controlled.graph.node):
        raise DataError(f"{cfg.run_dir / 'model.int8.onnx'}: no INT8 model is within the budget ({judge.kind} "
                        f"<= {judge.budget:g} on {len(x)} tuning images): accuracy control kept every layer "
                        f"in float; loosen the budget")
    attempts.append(judge.figures("accuracy-control", controlled))
    _say(judge, attempts[-1])
    if not attempts[-1]["within_budget"]:
        raise DataError(f"{cfg.run_dir / 'model.int8.onnx'}: no INT8 model is within the budget ({judge.kind} "
                        f"<= {judge.budget:g} on {len(x)} tuning images): the closest, accuracy control with "
                        f"{len(float_layers(controlled))} layers in float, measures "
                        f"{attempts[-1][judge.key]:.2%}; loosen the budget")
    return controlled, _route("accuracy-control", judge, attempts)


def _route(method: str, judge: Judge, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"method": method, "budget": {judge.kind: judge.budget}, "tuning_images": len(judge.x),
            "attempts": attempts}


def _say(judge: Judge, attempt: dict[str, Any]) -> None:
    verdict = "within" if attempt["within_budget"] else "over"
    print(f"  {attempt['method']}: {judge.kind} {attempt[judge.key]:.2%} on {len(judge.x)} tuning images, "
          f"{verdict} the budget of {judge.budget:.2%}")


def control_set(cfg: Config, labels: tuple[tuple[str, ...], tuple[str, ...]],
                pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Images for the budget: the tuning half of val (``control_images`` of them, a seeded
    sample, when set). Training images would flatter the model (it was fit to them, so few
    of them flip); the reporting half is never read, so the figures evaluate gives there
    are of images no choice was made on. ``labels``: the model's class ids and names."""
    split = tuning_split(cfg, *labels)
    picks = list(range(len(split)))
    if cfg.quantize.control_images:
        picks = sorted(random.Random(cfg.run.seed + 1).sample(picks, min(cfg.quantize.control_images, len(split))))
    images = load_images([split.files[i] for i in picks], pre.prepare, cfg.data.workers, "tuning images")
    return pre.normalize(images), np.array([split.labels[i] for i in picks])


def accuracy_control(model: onnx.ModelProto, inputs: np.ndarray, validation: tuple[np.ndarray, np.ndarray],
                     judge: Judge, advanced: Any) -> onnx.ModelProto:
    """NNCF's accuracy control with the judge's hits as the metric: layers go back to float
    until the signed file is within budget."""
    nncf = import_optional("nncf", "for accuracy-aware quantization", "pip install -r requirements.txt")
    name = model.graph.input[0].name
    calibration = nncf.Dataset(list(inputs[:, None]), lambda item: {name: item})
    items = nncf.Dataset(list(zip(validation[0][:, None], validation[1])), lambda item: {name: item[0]})
    return nncf.quantize_with_accuracy_control(
        model, calibration, items, judge.hits_function(), max_drop=judge.budget,
        drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.CPU, subset_size=len(inputs),
        advanced_quantization_parameters=advanced)


def predictions(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Top-1 of ``model`` on ``x`` with ONNX Runtime, in batches of 64."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = model.graph.input[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 64]})[0].argmax(1) for i in range(0, len(x), 64)])
