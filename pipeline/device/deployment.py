"""What a target deploys, and the FP32 reference it is measured against.

A TensorRT target deploys its engine. A CPU target deploys the fastest INT8 model `make
bench` measured on this machine, over every CPU runtime installed (ONNX Runtime,
OpenVINO) and both INT8 renderings: machines differ (OpenVINO runs the signed
``model.int8.onnx`` at full speed on VNNI/AMX; an AVX2-only CPU may answer otherwise), so
it is measured, not assumed. ``model.int8.onnx``, the file engines are built from, is
preferred unless the UINT8 rendering beats it by more than the profile's
``same_file_margin``; the profile can fix the runtime and the rendering instead. The
choice is written to ``deploy/<target>.json`` with the figures behind it, and the camera,
the report and the engine stage read it from there. Its FP32 reference is the FP32 file on
the same runtime, in true f32.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

from pipeline.artifacts import read_json, write_json
from pipeline.device.environment import cpu_model
from pipeline.errors import DataError, StaleArtifactError
from pipeline.runners.registry import ModelSpec
from targets.detect import system_root
from targets.profile import INT8_RENDERINGS, TargetProfile

# the run's ONNX files and the precision label each is filed under on a CPU runtime
ONNX_FILES = {"model.fp32.onnx": "fp32", "model.int8.onnx": "int8", "model.int8.cpu.onnx": "int8-cpu",
              "model.int8.ort.onnx": "int8-ort"}
FILE_OF = {label: name for name, label in ONNX_FILES.items()}
CPU_RUNTIMES = ("onnxruntime", "openvino")
SAME_FILE = "int8"  # model.int8.onnx: the file TensorRT engines are built from


@dataclass(frozen=True)
class Deployment:
    """The deployed model and its FP32 reference, and why this one."""

    model: ModelSpec
    reference: ModelSpec
    why: str
    record: Dict[str, Any]  # deploy/<target>.json as bench wrote it ({} where nothing was measured)


def installed_cpu_runtimes() -> list[str]:
    """The CPU runtimes importable here (found, not imported: OpenVINO takes a while)."""
    return [name for name in CPU_RUNTIMES if importlib.util.find_spec(name) is not None]


def cpu_models(out: Path) -> Dict[str, ModelSpec]:
    """Every row a CPU target measures: the run's ONNX files on each installed CPU runtime,
    the FP32 file in BF16 on OpenVINO where the CPU has BF16, and the PyTorch checkpoint.
    The first is ONNX Runtime's FP32, the reference that agreement is measured against."""
    runtimes = installed_cpu_runtimes()
    missing = [name for name in CPU_RUNTIMES if name not in runtimes]
    if missing:
        print(f"note: {', '.join(missing)} not installed; its rows are left out (make setup installs it)")
    files = {name: label for name, label in ONNX_FILES.items() if (out / name).is_file()}
    specs = {f"{runtime}-{label}": ModelSpec(f"{runtime}-{label}", out / name, runtime)
             for runtime in runtimes for name, label in files.items()}
    if "openvino-fp32" in specs and _openvino_has_bf16():
        specs["openvino-bf16"] = ModelSpec("openvino-bf16", out / "model.fp32.onnx", "openvino", "bf16")
    if (out / "model.pt").is_file():
        specs["torch-fp32"] = ModelSpec("torch-fp32", out / "model.pt", "torch")
    return dict(sorted(specs.items(), key=lambda item: _order(item[0])))


def choose_cpu(profile: TargetProfile, p50_ms: Dict[str, float]) -> Dict[str, Any]:
    """The label a CPU target deploys, given the median latencies bench measured, and why."""
    allowed = {label: ms for label, ms in p50_ms.items() if _deployable(profile, label)}
    if not allowed:
        raise DataError(f"target {profile.name}: none of the measured models ({', '.join(p50_ms) or 'none'}) "
                        f"is one it may deploy (runtime {profile.runtime}, {profile.precision}, "
                        f"int8_rendering {profile.int8_rendering}); run make quantize")
    fastest = min(allowed, key=allowed.__getitem__)
    chosen, why = fastest, f"{fastest} was the fastest at {allowed[fastest]:.3f} ms p50"
    same = [label for label in allowed if _precision(label) == SAME_FILE]
    if profile.precision == "int8" and same:
        best_same = min(same, key=allowed.__getitem__)
        slower = allowed[best_same] / allowed[fastest] - 1
        if best_same == fastest:
            why += ", on model.int8.onnx, the file engines are built from"
        elif slower <= profile.same_file_margin:
            chosen = best_same
            why = (f"{best_same} runs model.int8.onnx, the file engines are built from, at {allowed[best_same]:.3f} "
                   f"ms p50, within same_file_margin ({profile.same_file_margin:.0%}) of the fastest, {fastest} "
                   f"({allowed[fastest]:.3f} ms, {slower:.0%} faster)")
        else:
            why += (f"; model.int8.onnx's best ({best_same}, {allowed[best_same]:.3f} ms) is {slower:.0%} slower, "
                    f"beyond same_file_margin ({profile.same_file_margin:.0%})")
    others = ", ".join(f"{label} {ms:.3f}" for label, ms in sorted(allowed.items(), key=lambda kv: kv[1])
                       if label != chosen)
    return {"target": profile.name, "label": chosen, "reference": f"{_runtime(chosen)}-fp32",
            "why": why + (f" (others, ms p50: {others})" if others else ""), "p50_ms": allowed,
            "same_file_margin": profile.same_file_margin, "cpu": cpu_model(system_root())}


def write_choice(out: Path, choice: Dict[str, Any]) -> Path:
    return write_json(choice_path(out, choice["target"]), choice)


def choice_path(out: Path, target: str) -> Path:
    return out / "deploy" / f"{target}.json"


def deployment(out: Path, profile: TargetProfile) -> Deployment:
    """What ``profile`` deploys from run folder ``out``: its engines, a CPU runtime the
    profile fixes, or the one bench chose on this machine."""
    if not profile.on_cpu:
        folder = out / "engines" / profile.name
        return Deployment(ModelSpec(f"tensorrt-{profile.precision}", folder / f"model.{profile.precision}.engine"),
                          ModelSpec("tensorrt-fp32", folder / "model.fp32.engine"), "the target's engine", {})
    fixed = _fixed_label(profile)
    record = {} if fixed else _measured_choice(out, profile)
    label = fixed or record["label"]
    runtime = _runtime(label)
    return Deployment(ModelSpec(label, out / FILE_OF[_precision(label)], runtime),
                      ModelSpec(f"{runtime}-fp32", out / "model.fp32.onnx", runtime),
                      f"fixed by targets/{profile.name}.toml" if fixed else record["why"], record)


def _measured_choice(out: Path, profile: TargetProfile) -> Dict[str, Any]:
    path = choice_path(out, profile.name)
    if not path.is_file():
        raise StaleArtifactError(f"{path}: no runtime chosen for target {profile.name} on this machine yet; run "
                                 f"make bench TARGET={profile.name} (it measures each CPU runtime), or fix runtime "
                                 f"and int8_rendering in targets/{profile.name}.toml")
    record = read_json(path)
    here = cpu_model(system_root())
    if not isinstance(record, dict) or not _deployable(profile, str(record.get("label", ""))):
        raise StaleArtifactError(f"{path}: not a deployment choice for target {profile.name} as its profile "
                                 f"stands; run make bench TARGET={profile.name} again")
    if record.get("cpu") != here:
        raise StaleArtifactError(f"{path}: chosen on another CPU ({record.get('cpu')}; this one is {here}); "
                                 f"run make bench TARGET={profile.name} here")
    return record


def _fixed_label(profile: TargetProfile) -> str:
    """The label a profile fixes by itself (runtime and rendering named), else ""."""
    if profile.runtime == "auto":
        return ""
    if profile.precision == "fp32":
        return f"{profile.runtime}-fp32"
    return f"{profile.runtime}-{profile.int8_rendering}" if profile.int8_rendering != "auto" else ""


def _deployable(profile: TargetProfile, label: str) -> bool:
    if _runtime(label) not in CPU_RUNTIMES or profile.runtime not in ("auto", _runtime(label)):
        return False
    if profile.precision == "fp32":
        return _precision(label) == "fp32"
    return _precision(label) in INT8_RENDERINGS and profile.int8_rendering in ("auto", _precision(label))


def split_label(label: str) -> Tuple[str, str]:
    """(runtime, precision) of a ``<runtime>-<precision>`` label: ``openvino-int8-cpu`` →
    (openvino, int8-cpu)."""
    runtime, _, precision = label.partition("-")
    return runtime, precision


def _runtime(label: str) -> str:
    return split_label(label)[0]


def _precision(label: str) -> str:
    return split_label(label)[1]


def _order(label: str) -> tuple:
    """ONNX Runtime's FP32 first (the reference), then the other FP32 rows, then INT8."""
    precision = _precision(label)
    return (label != "onnxruntime-fp32", precision not in ("fp32", "bf16"), CPU_RUNTIMES.index(_runtime(label))
            if _runtime(label) in CPU_RUNTIMES else len(CPU_RUNTIMES), label)


def _openvino_has_bf16() -> bool:
    from pipeline.runners.openvino_runner import has_bf16

    return has_bf16()
