"""Typed errors for library code.

Library code raises these; only ``pipeline.__main__`` turns them into one line on stderr
and a non-zero exit code, so every failure a user can cause reads the same way.
"""
from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can act on; its message is the one line they will see."""


class ConfigError(PipelineError):
    """A configuration value, key or name that is not valid."""


class DataError(PipelineError):
    """A dataset that is missing, empty, or holds an unreadable file."""


class CheckpointError(PipelineError):
    """A file that is not one of our checkpoints, or belongs to another model."""


class ExportError(PipelineError):
    """An ONNX export that failed its checks (checker, parity with PyTorch)."""


class StaleArtifactError(PipelineError):
    """An input artifact that does not match what the consumer expects."""


class ArtifactWriteError(PipelineError):
    """An artifact that could not be written (disk full, read-only folder, a folder in the way)."""


class MissingDependencyError(PipelineError):
    """An optional package that this step needs is not installed."""


class RegressionError(PipelineError):
    """A report whose figures regressed beyond the budgets or the baseline (exit code 1)."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some libraries' messages span several)."""
    return "; ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
