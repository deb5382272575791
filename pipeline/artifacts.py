"""Artifact files: atomic writes, content hashes, self-describing JSON sidecars.

A stage that fails half-way must never leave a file that the next stage (or Make, which
only looks at timestamps) would take for a finished artifact. Everything is written to a
temporary name in the destination folder and renamed into place only when complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pipeline
from pipeline.errors import ArtifactWriteError, StaleArtifactError


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only on success.

    The file gets the permissions a plain ``open`` would (0666 less the umask): mkstemp
    makes it 0600, and an engine or ONNX that Triton, DeepStream or a service running as
    another user cannot read is not deployable. A write that fails (disk full, read-only
    folder, ``final`` a folder) is one error naming ``final``, and leaves nothing behind."""
    final = Path(final)
    if final.is_dir():
        raise ArtifactWriteError(f"{final}: is a folder, expected a file to write")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{final.suffix}", dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise ArtifactWriteError(f"{final}: cannot write here ({exc.strerror or exc})") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, final)
    except OSError as exc:
        raise ArtifactWriteError(f"{final}: writing failed ({exc.strerror or exc}); nothing was written") from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; it replaces ``final`` only when the block
    completes. A reader (Triton, DeepStream) sees the old folder or the new, never a
    mixture; on failure the temporary folder goes and ``final`` is as it was. The folder
    gets a plain ``mkdir``'s permissions (mkdtemp's 0700 would hide it from a server
    running as another user)."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as exc:
        raise ArtifactWriteError(f"{final}: cannot write here ({exc.strerror or exc})") from None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~umask())
        _swap_in(staging, final)
    except OSError as exc:
        raise ArtifactWriteError(f"{final}: writing failed ({exc.strerror or exc}); nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, final: Path) -> None:
    """Rename the finished folder into place; an old one is moved aside first, put back if
    the rename fails, and removed after."""
    if not final.exists():
        os.replace(staging, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    try:
        os.replace(final, old / final.name)
        try:
            os.replace(staging, final)
        except OSError:
            os.replace(old / final.name, final)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON artifact; a missing or malformed one is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StaleArtifactError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise StaleArtifactError(f"{path}: not valid JSON ({exc})") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, streamed so large models need no extra memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_input(path: Path) -> dict[str, str]:
    """Name and hash of an input, for an artifact's provenance record."""
    return {"path": str(path), "sha256": sha256_file(path)}


def provenance(stage: str, inputs: dict[str, Path]) -> dict[str, Any]:
    """What produced an artifact and from what: recorded in every sidecar."""
    return {
        "stage": stage,
        "producer": f"edgeresnet {pipeline.__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "inputs": {name: describe_input(p) for name, p in inputs.items()},
    }


def check_input_unchanged(record: dict[str, Any], name: str, path: Path, artifact: Path) -> None:
    """Refuse an artifact whose recorded input ``name`` no longer matches ``path``'s bytes."""
    recorded = record.get("inputs", {}).get(name, {}).get("sha256")
    if recorded is None:
        raise StaleArtifactError(f"{artifact}: records no input '{name}'; rebuild it")
    if recorded != sha256_file(path):
        raise StaleArtifactError(f"{artifact}: was made from another {path} "
                                 f"(hash differs); rebuild it")


def sidecar_path(artifact: Path) -> Path:
    """The JSON that describes ``artifact``: ``<name>.json`` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")
