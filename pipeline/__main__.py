"""The one command line: ``python -m pipeline <stage> [--config FILE] [--set key=value ...]``.

Only this module parses arguments and turns errors into exit codes; stages are functions
``run(cfg) -> Path`` looked up by name in :data:`STAGES`, imported only when chosen so
``--help`` is instant and a stage's heavy dependencies load only when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import load_config
from pipeline.errors import PipelineError, RegressionError, one_line


@dataclass(frozen=True)
class Flag:
    """A stage-specific flag that is shorthand for one configuration key."""

    name: str
    key: str
    help: str
    is_switch: bool = False
    is_text: bool = True  # quoted as a string; False: parsed as a TOML value (numbers)


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    summary: str
    description: str
    flags: tuple[Flag, ...] = ()


COMMON_FLAGS = (
    Flag("--run", "run.name", "run name: artifacts go to build/<run>/ (default: <data>-<model>)"),
    Flag("--data", "data.path", "an ImageFolder tree (train/<class>/*, val/<class>/*)"),
    Flag("--dataset", "data.name", "a named dataset: digits, cifar10, imagenette"),
)
ARCH_FLAG = Flag("--model", "model.name", "architecture, e.g. resnet20, resnet18, plain56")
MODEL_FILE_FLAG = Flag("--model", "evaluate.model", "a model file: checkpoint (.pt), ONNX or engine")
TARGET_FLAG = Flag("--target", "engine.target", "a profile in targets/ (see `targets`), or jetson")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("train", "pipeline.workstation.train", "train a ResNet; writes build/<run>/model.pt",
          "Train a ResNet on the configured dataset. Writes last.pt each epoch, best.pt on "
          "improvement, and model.pt, train.json and train.png when training ends.",
          (ARCH_FLAG,
           Flag("--resume", "train.resume", "continue from build/<run>/last.pt", is_switch=True),
           Flag("--weights", "model.weights", "fine-tune from a torchvision-format state dict"))),
    Stage("import", "pipeline.workstation.import_model", "bring your own classifier: ONNX or torchvision",
          "Write build/<run>/model.fp32.onnx from a classifier trained elsewhere: --onnx FILE, or "
          "--torchvision NAME --weights STATE_DICT (a local file), with --classes labels.txt (one label a "
          "line, or id<TAB>name) and --preprocessing imagenet|file.json. Refuses what cannot be deployed "
          "(non-image input, open spatial size, operators TensorRT lacks). The data's class folders are "
          "matched to the model's labels by name; calibrate, quantize, evaluate, bundle and the rest "
          "then take the run as their own.",
          (Flag("--onnx", "imported.onnx", "the classifier as ONNX (FP32)"),
           Flag("--torchvision", "imported.torchvision", "a torchvision architecture, e.g. mobilenet_v3_small"),
           Flag("--weights", "imported.weights", "its state dict (a local .pth, loaded weights-only)"),
           Flag("--classes", "imported.classes", "labels file: one label a line, in output order"),
           Flag("--preprocessing", "imported.preprocessing", "imagenet (default) or a JSON file"))),
    Stage("export", "pipeline.workstation.export", "export model.pt to model.fp32.onnx and check parity",
          "Export build/<run>/model.pt to ONNX (dynamic batch, metadata), run onnx.checker, and "
          "compare ONNX Runtime with PyTorch on real val images; fail above the tolerance."),
    Stage("calibrate", "pipeline.workstation.calibrate", "choose the INT8 calibration set from the train split",
          "Pick a class-balanced, seeded set of training images (default 512) and write "
          "build/<run>/calibration/manifest.json with each file's label and sha256.",
          (Flag("--images", "calibrate.images", "how many images (0: 512, or all when fewer)",
                is_text=False),
           Flag("--skip-bad-images", "calibrate.skip_bad_images", "skip unreadable images",
                is_switch=True))),
    Stage("quantize", "pipeline.workstation.quantize", "INT8 Q/DQ ONNX (TensorRT rules + CPU rendering)",
          "NNCF post-training quantization of model.fp32.onnx from the calibration manifest; "
          "writes model.int8.onnx (TensorRT rules, checked), model.int8.cpu.onnx (UINT8 "
          "activations for ONNX Runtime on x86) and quantize.json. With a budget judged on the "
          "tuning half of val (--max-drop or --max-disagreement), a miss goes to quantization-"
          "aware fine-tuning (--qat-steps) and then to NNCF's accuracy control (float layers).",
          (Flag("--method", "quantize.method", "nncf (default) or onnxruntime (the peer)"),
           Flag("--max-drop", "quantize.max_drop", "accuracy budget: max top-1 drop, e.g. 0.005",
                is_text=False),
           Flag("--max-disagreement", "quantize.max_disagreement",
                "accuracy budget: max share of tuning images whose top-1 differs from FP32, e.g. 0.005",
                is_text=False),
           Flag("--qat-steps", "quantize.qat_steps",
                "where PTQ misses the budget: quantization-aware fine-tuning steps before float layers",
                is_text=False))),
    Stage("quant-search", "pipeline.workstation.quant_search", "which INT8 settings agree best with FP32",
          "Quantize with NNCF's activation range estimators (mean min-max, min-max, percentile, "
          "histogram/MSE), calibration sets of 256-2,048 images and per-channel or per-tensor "
          "weights, one factor at a time; "
          "score each signed file against FP32 on the tuning half of val; writes "
          "bench/quant-search.{json,png} and the --set overrides of the best."),
    Stage("evaluate", "pipeline.device.evaluate", "accuracy of the target's models, INT8 vs FP32",
          "Top-1/top-5, per-class accuracy and confusion with INT8-vs-FP32 agreement and flips, "
          "for the models the target deploys: on cpu the run's ONNX models and checkpoint; on a "
          "TensorRT target its engines (in a run unpacked from a bundle, on the bundle's labelled "
          "images). --model FILE --data DIR scores any model on any labelled folder.",
          (TARGET_FLAG, MODEL_FILE_FLAG,
           Flag("--out", "evaluate.out", "write the standalone result as JSON"))),
    Stage("check-qdq", "calibration.check", "check a Q/DQ ONNX against TensorRT's rules",
          "Check every QuantizeLinear/DequantizeLinear of --model FILE: signed INT8, zero point "
          "0, per-tensor activation and per-channel (output axis) weight scales, finite > 0.",
          (MODEL_FILE_FLAG,)),
    Stage("cache-to-qdq", "calibration.from_cache", "TensorRT calibration cache -> Q/DQ ONNX",
          "Insert Q/DQ nodes (TensorRT rules) into build/<run>/model.fp32.onnx from the "
          "per-tensor scales of a TensorRT calibration cache; writes model.int8.from-cache.onnx.",
          (Flag("--cache", "quantize.cache", "the calibration cache file"),)),
    Stage("bench", "pipeline.device.bench", "latency of every model this machine runs for the target",
          "Time torch, ONNX Runtime and (on a GPU target) TensorRT models with one harness: fixed "
          "batch, warm-up, interleaved timed runs; writes bench/<runtime>-<precision>.json.",
          (TARGET_FLAG,)),
    Stage("crosscheck", "pipeline.device.crosscheck", "Polygraphy cross-check: our engine vs ONNX Runtime",
          "Run the target's engine with NVIDIA's Polygraphy, beside an engine Polygraphy builds from the "
          "same ONNX and ONNX Runtime on the Q/DQ model, over the run's labelled images; writes "
          "crosscheck/<target>.json, exits 1 below the target's min_agreement. Needs TensorRT, "
          "polygraphy and onnxruntime.",
          (TARGET_FLAG,)),
    Stage("report", "pipeline.device.report", "regression report with history; non-zero exit on regression",
          "Gather eval, bench, quantize and camera JSON into reports/<id>/report.{json,md,html}, "
          "append to the SQLite history, compare with the baseline and the target's budgets.",
          (TARGET_FLAG,
           Flag("--baseline", "report.baseline", "history id to compare with (default: last accepted)",
                is_text=False),
           Flag("--accept", "report.accept", "mark this report as the accepted baseline", is_switch=True),
           Flag("--accept-regression", "report.accept_regression",
                "with --accept: accept it even though it failed its gate (recorded as such)", is_switch=True))),
    Stage("bench-quant", "pipeline.workstation.bench_quant", "FP32 vs INT8 renderings vs peer: accuracy, latency",
          "Side by side in one run: top-1, drop and agreement (from eval/) and ONNX Runtime "
          "batch-1 latency, interleaved, same threads; writes bench/quant.json and quant.png."),
    Stage("engine", "pipeline.device.engine", "build TensorRT engines for a target profile",
          "Build engines/<target>/model.<precision>.engine (and the FP32 reference engine) from "
          "the Q/DQ or FP32 ONNX, on the machine that will run them; --target jetson detects "
          "the Jetson model. Needs TensorRT and pycuda.",
          (TARGET_FLAG,)),
    Stage("triton", "pipeline.device.triton", "Triton Inference Server model repository for a target",
          "Write build/<run>/model_repository/: the target's engine for the TensorRT backend "
          "(<name>_int8_trt, left out on the cpu target) and model.fp32.onnx/model.int8.onnx for the "
          "ONNX Runtime backend, each with config.pbtxt (I/O from the graph, max batch from the "
          "profile, dynamic batching, preprocessing as parameters) and labels.txt.",
          (TARGET_FLAG,)),
    Stage("bench-triton", "pipeline.workstation.serve_triton", "served latency: the ONNX model behind a real Triton",
          "Serve the repository's <name>_int8_onnx (triton.serve_model) with PyTriton's Triton server on "
          "localhost through ONNX Runtime, send real val images with tritonclient at concurrency 1, 4 "
          "and 16 (each level bounded in requests and seconds); writes bench/triton.json and "
          "triton.png. Needs nvidia-pytriton and tritonclient."),
    Stage("deepstream", "pipeline.device.deepstream", "DeepStream nvinfer config, folded models and engine",
          "Write build/<run>/deepstream/: the run's models with the normalisation nvinfer cannot express "
          "folded into the graph and a Softmax on the logits, a TensorRT engine of the folded INT8 model "
          "for --target, nvinfer's labels.txt and config_infer_primary.txt (process_mode 2: "
          "config_infer_secondary.txt). Needs TensorRT and pycuda.",
          (TARGET_FLAG,)),
    Stage("unpack", "pipeline.device.unpack", "unpack a bundle into a run (on the device)",
          "Check a bundle made by `bundle` (every member a plain file listed in SHA256SUMS with "
          "its hash) and move its files into build/<run>/, which must be empty or hold this very "
          "bundle; the run's later stages then read only the bundle's files.",
          (Flag("--bundle", "engine.bundle", "the bundle-<target>.tar.gz to unpack"),)),
    Stage("bundle", "pipeline.device.bundle", "pack models, labelled images and a clip for a device",
          "Write build/<run>/bundle-<target>.tar.gz with the ONNX models, labels, target profiles, "
          "a labelled evaluation set from the val split, a replay clip and SHA256SUMS: everything "
          "the device needs to build, score and report its engines.",
          (TARGET_FLAG,)),
    Stage("camera", "pipeline.device.camera.loop", "live classification: INT8 beside its FP32 reference",
          "Classify frames from --source (camera index, video file, URL, csi://N, image folder or "
          "replay:clip.mp4) with the INT8 model; every Nth frame the FP32 reference runs on the "
          "same input. Writes camera/<session>.json (and --video-out).",
          (Flag("--source", "camera.source", "0, video file, rtsp://..., csi://0, folder, replay:clip.mp4"),
           TARGET_FLAG,
           Flag("--model", "camera.model", "the INT8 model (engine or ONNX)"),
           Flag("--reference", "camera.reference", "the FP32 reference (engine, ONNX or checkpoint)"),
           Flag("--shadow-every", "camera.shadow_every", "run FP32 on every Nth frame", is_text=False),
           Flag("--headless", "camera.headless", "no window even where a display exists", is_switch=True),
           Flag("--video-out", "camera.video_out", "write the annotated video here"),
           Flag("--preview-port", "camera.preview_port", "MJPEG preview on http://127.0.0.1:PORT (0: any)",
                is_text=False),
           Flag("--smoothing", "camera.smoothing", "temporal smoothing of the shown label, 0..1",
                is_text=False),
           Flag("--summary", "camera.summary", "write the summary JSON here"),
           Flag("--max-frames", "camera.max_frames", "stop after N frames", is_text=False))),
    Stage("make-clip", "pipeline.device.camera.clip", "a labelled replay clip from an image folder",
          "Write a video of images from --data (a tree's val split, or one split) with slow drift "
          "and zoom, and <clip>.labels.json beside it, for `camera --source replay:<clip>`.",
          (Flag("--out", "camera.out", "the clip to write: .avi (MJPEG), .mp4, .mkv (FFV1), or "
                                       "folder/%%06d.png (lossless, any OpenCV)"),)),
    Stage("bench-camera", "pipeline.workstation.camera_bench", "camera loop: per-stage time and end-to-end FPS",
          "On replay clips from the val split at 640x480 and 224x224: decode, preprocess, INT8 "
          "and FP32 inference timed alone, then the loop's FPS; writes bench/camera.json.",
          (TARGET_FLAG,)),
    Stage("experiment-degradation", "pipeline.workstation.experiment", "plain vs residual nets: the degradation experiment",
          "Train plain20, plain56, resnet20 and resnet56 with one recipe on the same data; plot "
          "training (dashed) and val (solid) error, state the outcome, and plot the residual "
          "branches' relative output norms of the trained resnet56."),
    Stage("targets", "targets.listing", "list target profiles and which fits this machine",
          "List the TensorRT/ONNX Runtime target profiles in targets/, the facts detected "
          "about this machine (Jetson model, L4T/JetPack, GPU, TensorRT) and which profile fits."),
    Stage("config-stamps", "pipeline.workstation.stamps", "write the resolved configuration for Make",
          "Write build/<run>/stamps/<stage>.toml with the settings each workstation stage reads, "
          "rewriting a file only when it changes, so Make rebuilds what a --set override changed."),
    Stage("resolve-target", "targets.resolve", "print the profile a TARGET names on this machine",
          "Print the target profile --target resolves to here (jetson: the detected Jetson's "
          "profile), as every stage resolves it; Make uses it for the engines/<profile>/ paths.",
          (TARGET_FLAG,)),
    Stage("models", "pipeline.workstation.models.listing", "list the model names",
          "List every registered architecture with its family and depth."),
)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline",
                                     description="edgeresnet: train, export, quantize and deploy a ResNet.")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.summary, description=stage.description)
        p.add_argument("--config", type=Path, help="TOML configuration file (see configs/)")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override one configuration value, e.g. --set train.epochs=5")
        for flag in COMMON_FLAGS + stage.flags:
            if flag.is_switch:
                p.add_argument(flag.name, action="store_true", help=flag.help)
            else:
                p.add_argument(flag.name, metavar=flag.key.split(".")[-1].upper(), help=flag.help)
    return parser


def overrides(args: argparse.Namespace, stage: Stage) -> list[str]:
    """``--set`` items, with the shorthand flags turned into the keys they stand for."""
    sets = list(args.sets)
    for flag in COMMON_FLAGS + stage.flags:
        value = getattr(args, flag.name.lstrip("-").replace("-", "_"))
        if flag.is_switch and value:
            sets.append(f"{flag.key}=true")
        elif not flag.is_switch and value is not None:
            sets.append(f"{flag.key}={json.dumps(value) if flag.is_text else value}")
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    """The one error boundary: a regression exits 1, a library error (``PipelineError``) is
    one line and exit 2, anything unexpected is one line naming a log with the traceback
    and exit 3. No traceback reaches the terminal."""
    args = build_parser().parse_args(argv)
    stage = STAGES[args.stage]
    cfg = None
    try:
        cfg = load_config(args.config, overrides(args, stage))
        importlib.import_module(stage.module).run(cfg)
    except RegressionError as exc:  # the gate's verdict, distinct from a usage error
        _say(f"regression: {one_line(exc)}")
        return 1
    except PipelineError as exc:
        _say(f"error: {one_line(exc)}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the boundary: a bug of ours, reported with its log
        log = write_crash_log(stage.name, Path(cfg.run.root) if cfg else Path("build"))
        where = f"traceback in {log}" if log else "the traceback could not be written"
        _say(f"internal error in {stage.name}: {type(exc).__name__}: {one_line(exc)} ({where}; "
             f"please report it)")
        return 3
    return 0


def _say(line: str) -> None:
    """``line`` to stderr in one write: under torchrun (``python -u``) print's two writes,
    the text then the newline, interleaved with the other ranks' lines."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def write_crash_log(stage: str, root: Path) -> Path | None:
    """The current traceback in ``<root>/logs/<stage>-<time>.log``; None if it cannot be written."""
    import time
    import traceback

    path = root / "logs" / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"python -m pipeline {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}", encoding="utf-8")
    except OSError:
        return None
    return path


if __name__ == "__main__":
    sys.exit(main())
