"""``make crosscheck``: NVIDIA's Polygraphy checks our engine against ONNX Runtime on the
deployed Q/DQ model and real labelled images.

Our builder and runner cannot run where we test them (no TensorRT here); Polygraphy can't
either, but NVIDIA tests it against real TensorRT 8.5 to 11. So on a machine with TensorRT
it gives the independent view: three runners over the same batches,

- ``engine``: our built engine file, loaded and run by Polygraphy's runtime (not ours);
- ``polygraphy``: an engine Polygraphy builds itself from the same ONNX, with the precision
  semantics our sidecar records (strong typing, or the same builder flags);
- ``onnxruntime``: the Q/DQ ONNX on ONNX Runtime, the numbers the INT8 accuracy is measured on.

If ``engine`` disagrees with ONNX Runtime while ``polygraphy`` agrees, our builder or the
sidecar's semantics are wrong; if both disagree, TensorRT computes the model differently.
The target's ``min_agreement`` gates the ``engine`` row. Polygraphy and ONNX Runtime are
not in the device environment by default: ``pip install polygraphy onnxruntime`` there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from pipeline.artifacts import provenance, read_json, sidecar_path, write_json
from pipeline.config import Config
from pipeline.device.evaluate import evaluation_split
from pipeline.errors import ConfigError, RegressionError, StaleArtifactError
from pipeline.onnx_meta import load_onnx, read_metadata
from pipeline.optional import import_optional
from pipeline.preprocess import Preprocessing, load_images
from targets.detect import target_profile
from targets.profile import TargetProfile

HOW = "pip install polygraphy==0.53.6 onnxruntime into this environment (the device venv too)"
REFERENCE = "onnxruntime"


def run(cfg: Config) -> Path:
    profile = target_profile(cfg.engine.target)
    if profile.runtime != "tensorrt":
        raise ConfigError(f"crosscheck: target {profile.name} runs no TensorRT engine; give a TensorRT target")
    engine = cfg.run_dir / "engines" / profile.name / f"model.{profile.precision}.engine"
    if not engine.is_file():
        raise StaleArtifactError(f"{engine}: no engine to cross-check; run make engine first")
    record = read_json(sidecar_path(engine))
    onnx_path = cfg.run_dir / record["onnx_file"]
    import_optional("tensorrt", "for the cross-check's engines", "on a Jetson it comes with JetPack")
    runners = polygraphy_runners(engine, onnx_path, record, profile)
    labels, batches = image_batches(cfg, onnx_path, record["shapes"]["max"][0])
    results = compare(run_all(runners, batches), labels)
    out = write_json(cfg.run_dir / "crosscheck" / f"{profile.name}.json",
                     {**provenance("crosscheck", {"engine": engine, "onnx": onnx_path}),
                      "target": profile.name, "precision_semantics": record.get("precision_semantics"),
                      "images": int(len(labels)), "runners": results})
    print_rows(results)
    agreement = results["engine"]["agreement"]
    if agreement < profile.min_agreement:
        raise RegressionError(f"{engine}: agrees with ONNX Runtime on {agreement:.2%} of {len(labels)} images, "
                              f"below {profile.name}'s min_agreement {profile.min_agreement:.2%} (see {out})")
    return out


def polygraphy_runners(engine: Path, onnx_path: Path, record: Dict[str, Any], profile: TargetProfile) -> Dict[str, Any]:
    """Polygraphy's runners: our engine, Polygraphy's own build of the ONNX, ONNX Runtime."""
    import_optional("onnxruntime", "for the cross-check's reference", HOW)
    trt = import_optional("polygraphy.backend.trt", "for the cross-check", HOW)
    common = import_optional("polygraphy.backend.common", "for the cross-check", HOW)
    onnxrt = import_optional("polygraphy.backend.onnxrt", "for the cross-check", HOW)
    semantics = record.get("precision_semantics") or {"typing": "strong", "flags": []}
    name = input_name(onnx_path)
    shapes = trt.Profile().add(name, *[tuple(record["shapes"][k]) for k in ("min", "opt", "max")])
    flags = {flag.lower(): True for flag in semantics["flags"]}
    if record.get("dla_core", -1) >= 0:
        flags.update(use_dla=True, allow_gpu_fallback=profile.gpu_fallback)
    network = trt.NetworkFromOnnxPath(str(onnx_path), strongly_typed=semantics["typing"] == "strong")
    built = trt.EngineFromNetwork(network, config=trt.CreateConfig(profiles=[shapes], **flags))
    return {"engine": trt.TrtRunner(trt.EngineFromBytes(common.BytesFromPath(str(engine)))),
            "polygraphy": trt.TrtRunner(built),
            REFERENCE: onnxrt.OnnxrtRunner(onnxrt.SessionFromOnnx(str(onnx_path), providers=["cpu"]))}


def image_batches(cfg: Config, onnx_path: Path, batch: int) -> tuple:
    """The run's labelled evaluation images (the bundle's on a device), preprocessed as
    deployed, in batches of the engine's largest shape (full batches only: a DLA engine's
    shape is static)."""
    meta = read_metadata(onnx_path)
    split = evaluation_split(cfg, tuple(meta["classes"]), tuple(meta["class_names"]))
    pre = Preprocessing.from_dict(meta["preprocessing"])
    usable = len(split.files) - len(split.files) % batch
    if usable == 0:
        raise ConfigError(f"{split.root}: {len(split.files)} images, fewer than one batch of {batch}")
    inputs = pre.normalize(load_images(split.files[:usable], pre.prepare, cfg.data.workers, "crosscheck images"))
    name = input_name(onnx_path)
    return np.asarray(split.labels[:usable]), [{name: inputs[i:i + batch]} for i in range(0, usable, batch)]


def run_all(runners: Dict[str, Any], batches: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Polygraphy's Comparator runs each runner over the same batches; the logits, joined."""
    comparator = import_optional("polygraphy.comparator", "for the cross-check", HOW)
    named = [_named(runner, name) for name, runner in runners.items()]
    results = comparator.Comparator.run(named, data_loader=batches)
    return {name: np.concatenate([list(it.values())[0] for it in results[name]]) for name in runners}


def compare(logits: Dict[str, np.ndarray], labels: np.ndarray) -> Dict[str, Dict[str, float]]:
    """Per runner: top-1 agreement with ONNX Runtime, how many images flip, the largest
    logit difference, and top-1 accuracy on the labels."""
    reference = logits[REFERENCE]
    rows = {}
    for name, values in logits.items():
        same = values.argmax(1) == reference.argmax(1)
        rows[name] = {"agreement": float(same.mean()), "flips": int((~same).sum()),
                      "max_abs_diff": float(np.abs(values - reference).max()),
                      "top1": float((values.argmax(1) == labels).mean())}
    return rows


def print_rows(rows: Dict[str, Dict[str, float]]) -> None:
    print(f"{'runner':<12} {'agree':>8} {'flips':>6} {'max |Δ|':>9} {'top-1':>8}")
    for name, row in rows.items():
        print(f"{name:<12} {row['agreement']:8.2%} {row['flips']:6d} {row['max_abs_diff']:9.4f} {row['top1']:8.2%}")


def input_name(onnx_path: Path) -> str:
    """The model's one image input (the graph's first input that is not a weight)."""
    graph = load_onnx(onnx_path).graph
    weights = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in weights)


def _named(runner: Any, name: str) -> Any:
    runner.name = name  # Comparator keys its results by runner name
    return runner
