"""The deployment bundle: train on a workstation, build and score the engine on the device.

``make bundle TARGET=jetson`` packs everything the device needs and nothing it must
fetch: the ONNX models, labels, the target profiles, a small labelled evaluation set from
the val split (so the device scores its own engines and the report gates them), a replay
clip for the camera loop, and SHA256SUMS. On the device, :func:`unpack_bundle` reads the
archive as hostile: only regular files with plain relative names, every one listed in
SHA256SUMS with its hash, checked in a scratch folder before anything reaches the run;
and a bundle goes only into an empty run or the run it was unpacked into before.
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import pipeline
from pipeline.artifacts import atomic_path, read_json, sha256_file, write_json
from pipeline.config import BundleConfig, Config
from pipeline.device.camera.clip import labels_path, make_clip
from pipeline.errors import ConfigError, StaleArtifactError
from pipeline.imagefolder import ImageSplit, for_model, laid_out_split
from pipeline.onnx_meta import read_metadata
from pipeline.preprocess import Preprocessing
from targets.profile import PROFILE_DIR, load_profiles

FORMAT = "edgeresnet.bundle/1"
RECORD = "bundle.json"          # in the archive and, once unpacked, in the run: a device run
EVAL_SET = "evalset"            # evalset/<class>/<image>: labelled val images
CLIP = "clip/replay.avi"        # MJPEG: OpenCV reads it without FFmpeg (JetPack's OpenCV)
SUMS = "SHA256SUMS"
COMMON_FILES = ("model.fp32.onnx", "model.fp32.onnx.json", "model.int8.onnx", "quantize.json",
                "calibration/manifest.json")
CPU_FILES = ("model.int8.cpu.onnx",)  # only a CPU target may deploy the UINT8 rendering (bench chooses)


def run(cfg: Config) -> Path:
    target = cfg.engine.target
    out = cfg.run_dir / f"bundle-{target}.tar.gz"
    val = laid_out_split(cfg.data, "val")
    path = make_bundle(cfg.run_dir, out, target, val, cfg.bundle, cfg.run.seed, calibrates_on_device(target))
    print(f"bundle {path}: copy it to the device and run `make engine TARGET={target} RUN={cfg.run_name} "
          f"BUNDLE=<path to>/{path.name}` there (see README, On the Jetson)")
    return path


def is_device_run(run_dir: Path) -> bool:
    """A run unpacked from a bundle: its stages read the bundle's files, never retrain."""
    return (Path(run_dir) / RECORD).is_file()


def make_bundle(run_dir: Path, out: Path, target: str, val: ImageSplit, cfg: BundleConfig,
                seed: int = 0, calibration: bool = False) -> Path:
    """Archive the run's deployable files, profiles, labels, evaluation set, clip, sums, and
    with ``calibration`` the preprocessed calibration tensors."""
    files = _run_files(run_dir, target)
    meta = read_metadata(files["model.fp32.onnx"])
    names, classes = meta["class_names"], meta["classes"]
    labelled = for_model(val, classes, names)  # val's folders by name among the model's labels
    files.update({f"targets/{p.name}": p for p in sorted(PROFILE_DIR.glob("*.toml"))})
    if calibration:
        files.update(_calibration_tensors(run_dir, meta))
    files.update(_eval_set(val, cfg.eval_images, seed))
    with tempfile.TemporaryDirectory() as scratch:
        clip = make_clip(labelled, Path(scratch) / "replay.avi", cfg.clip_images, cfg.clip_frames,
                         tuple(cfg.clip_size), seed)
        files.update({CLIP: clip, str(labels_path(Path(CLIP))): labels_path(clip)})
        texts = {"labels.txt": "\n".join(names) + "\n", **_eval_labels(val, labelled),
                 RECORD: json.dumps(_record(run_dir, target, val, files, cfg, seed), indent=2) + "\n"}
        _write_archive(out, files, texts)
    return out


def _run_files(run_dir: Path, target: str) -> Dict[str, Path]:
    wanted = COMMON_FILES + (CPU_FILES if _runtime(target) != "tensorrt" else ())
    files = {name: run_dir / name for name in wanted if (run_dir / name).is_file()}
    for needed in ("model.fp32.onnx", "model.int8.onnx"):
        if needed not in files:
            raise StaleArtifactError(f"{run_dir}: nothing to bundle (no {needed}); run make demo first")
    return files


def calibrates_on_device(target: str) -> bool:
    """Whether the target's profile (any Jetson's, for ``jetson``) uses the implicit calibrator."""
    profiles = load_profiles()
    chosen = [p for p in profiles.values() if p.kind == "jetson"] if target == "jetson" else \
        [profiles[target]] if target in profiles else []
    return any(p.calibrator for p in chosen)


def _calibration_tensors(run_dir: Path, meta: Dict[str, Any]) -> Dict[str, Path]:
    """The preprocessed calibration set: the device's copy of the manifest names workstation
    paths it does not have."""
    from calibration import tensors

    tensors.ensure_tensors(run_dir, Preprocessing.from_dict(meta["preprocessing"]))
    return {tensors.TENSORS: run_dir / tensors.TENSORS, tensors.RECORD: run_dir / tensors.RECORD}


def _runtime(target: str) -> str:
    """The runtime a bundle's target runs: ``jetson`` is any Jetson (TensorRT)."""
    if target == "jetson":
        return "tensorrt"
    profiles = load_profiles()
    if target not in profiles:
        raise ConfigError(f"unknown target '{target}'; choose one of: {', '.join(profiles)}, or jetson")
    return profiles[target].runtime


def _eval_set(val: ImageSplit, images: int, seed: int) -> Dict[str, Path]:
    """A class-balanced, seeded choice of val images (at least one per class), by the same
    selection calibration uses, named ``evalset/<class>/<index>-<file>``."""
    from calibration.select import select_balanced

    chosen = select_balanced(val, max(images, len(val.classes)), seed)
    return {f"{EVAL_SET}/{val.classes[val.labels[i]]}/{i:05d}-{val.files[i].name}": val.files[i] for i in chosen}


def _eval_labels(val: ImageSplit, labelled: ImageSplit) -> Dict[str, str]:
    """``evalset/classes.tsv`` where the model's labels are not the folders' names: each
    folder with the label it was matched to, so the device scores by the same mapping."""
    if labelled is val:
        return {}
    label_of = {val.classes[a]: labelled.classes[b] for a, b in zip(val.labels, labelled.labels)}
    return {f"{EVAL_SET}/classes.tsv": "".join(f"{folder}\t{label}\n" for folder, label in sorted(label_of.items()))}


def _record(run_dir: Path, target: str, val: ImageSplit, files: Dict[str, Path], cfg: BundleConfig,
            seed: int) -> Dict[str, Any]:
    evals = [n for n in files if n.startswith(EVAL_SET + "/")]  # the images (classes.tsv is a text)
    return {"format": FORMAT, "run": run_dir.name, "target": target, "producer": f"edgeresnet {pipeline.__version__}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "eval_set": {"images": len(evals), "source": str(val.root), "seed": seed},
            "clip": {"file": CLIP, "images": cfg.clip_images, "frames_per_image": cfg.clip_frames,
                     "size": list(cfg.clip_size)},
            "models": sorted(n for n in files if n.endswith(".onnx"))}


def _write_archive(out: Path, files: Dict[str, Path], texts: Dict[str, str]) -> None:
    blobs = {name: text.encode() for name, text in texts.items()}
    sums = "".join(f"{sha256_file(p)}  {name}\n" for name, p in files.items())
    sums += "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in blobs.items())
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, path in files.items():
            tar.add(path, arcname=name)
        for name, data in {**blobs, SUMS: sums.encode()}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))


def unpack_bundle(bundle: Path, run_dir: Path, limit_bytes: int = 8192 << 20) -> List[str]:
    """Check the archive in a scratch folder, then move its files into ``run_dir``.

    Refused, before anything reaches the run: a member that is not a regular file (links,
    hard links, folders, devices), a name that is not a plain relative path or comes twice,
    more than ``limit_bytes`` in all (a decompression bomb is refused at its header, before
    its data is inflated), a file missing from SHA256SUMS or differing from it, and a run
    that already holds other files. The same bundle unpacked again is a no-op."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise StaleArtifactError(f"{bundle}: bundle not found")
    digest = sha256_file(bundle)
    if _already_unpacked(run_dir, digest):
        return []
    _require_empty_run(run_dir, bundle)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run_dir.parent, prefix=f".{run_dir.name}.unpack.") as scratch:
        names = _extract_checked(bundle, Path(scratch), limit_bytes)
        record = read_json(Path(scratch) / RECORD)
        if not isinstance(record, dict):
            raise StaleArtifactError(f"{bundle}: {RECORD} is not a JSON object")
        record.update(bundle=str(bundle.resolve()), bundle_sha256=digest,
                      unpacked=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_json(Path(scratch) / RECORD, record)
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(names, key=lambda n: n == RECORD):  # the marker last
            target = run_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(scratch) / name), str(target))
    return names


def _already_unpacked(run_dir: Path, digest: str) -> bool:
    record = run_dir / RECORD
    return record.is_file() and read_json(record).get("bundle_sha256") == digest


def _require_empty_run(run_dir: Path, bundle: Path) -> None:
    held = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if held:
        what = "another bundle" if RECORD in held else "another run (" + ", ".join(held[:4]) + ")"
        raise StaleArtifactError(f"{bundle}: {run_dir} already holds {what}; unpack into a new run "
                                 f"(RUN=<name>) or remove {run_dir} first")


def _extract_checked(bundle: Path, scratch: Path, limit_bytes: int) -> List[str]:
    """Extract regular files only, member by member as the archive is read, by checks of
    our own (``tarfile``'s ``filter`` is missing from JetPack 5's Python 3.8.10), then
    verify every checksum."""
    names: List[str] = []
    total = 0
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            for member in tar:
                target = _checked_member(bundle, member, scratch, set(names))
                total += member.size
                if total > limit_bytes:
                    raise StaleArtifactError(f"{bundle}: unpacks to more than {limit_bytes >> 20} MiB "
                                             f"(at {member.name!r}); refused (bundle.max_unpacked_mb)")
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                names.append(member.name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise StaleArtifactError(f"{bundle}: not a readable bundle ({exc})") from None
    return _verify_sums(bundle, scratch, names)


def _checked_member(bundle: Path, member: tarfile.TarInfo, scratch: Path, seen: Set[str]) -> Path:
    """Where ``member`` may be written in ``scratch``, or a refusal naming it."""
    name = member.name
    if not member.isfile():
        raise StaleArtifactError(f"{bundle}: member {name!r} is not a regular file (links, hard links, "
                                 f"folders and devices are refused)")
    clean = posixpath.normpath(name) if name else ""
    if (not name or clean != name or name.startswith("/") or clean.startswith("..") or "\\" in name
            or "\0" in name or any(part in ("", ".", "..") for part in name.split("/"))):
        raise StaleArtifactError(f"{bundle}: member name {name!r} is not a plain relative path")
    if name in seen:
        raise StaleArtifactError(f"{bundle}: member {name!r} appears twice")
    target = (scratch / name).resolve()
    root = scratch.resolve()
    if root not in target.parents:
        raise StaleArtifactError(f"{bundle}: member {name!r} would land outside the folder")
    return target


def _verify_sums(bundle: Path, scratch: Path, members: List[str]) -> List[str]:
    listed = read_sums(bundle, scratch / SUMS)
    unlisted = sorted(set(members) - set(listed) - {SUMS})
    if unlisted:
        raise StaleArtifactError(f"{bundle}: {unlisted[0]} is not listed in {SUMS}")
    for name, digest in listed.items():
        if name not in members or sha256_file(scratch / name) != digest:
            raise StaleArtifactError(f"{bundle}: {name} is missing or damaged (checksum differs); "
                                     f"copy the bundle again")
    if RECORD not in listed:
        raise StaleArtifactError(f"{bundle}: no {RECORD} inside; not an edgeresnet bundle")
    return [n for n in listed if not n.startswith("targets/")]


def read_sums(bundle: Path, sums: Path) -> Dict[str, str]:
    """SHA256SUMS as ``name → digest``: each line ``<64 hex digits>  <name>``, each name once."""
    if not sums.is_file():
        raise StaleArtifactError(f"{bundle}: no {SUMS} inside; not an edgeresnet bundle")
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise StaleArtifactError(f"{bundle}: {SUMS} is not UTF-8 text") from None
    listed: Dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, digest = parse_sum_line(line)
        if name is None:
            raise StaleArtifactError(f"{bundle}: {SUMS} line {number} is not '<sha256>  <name>': {line[:80]!r}")
        if name in listed:
            raise StaleArtifactError(f"{bundle}: {SUMS} lists {name!r} twice")
        listed[name] = digest
    return listed


def parse_sum_line(line: str) -> Tuple[str | None, str]:
    """``(name, digest)`` of a ``sha256sum`` line, ``(None, "")`` when it is not one."""
    digest, sep, name = line.partition("  ")
    if not sep or not name or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None, ""
    return name, digest
