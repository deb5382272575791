"""Runners: one interface (``run(batch) -> logits``, ``close()``) over every backend."""
from pipeline.runners.base import Runner
from pipeline.runners.compare import Parity, compare_runners

__all__ = ["Parity", "Runner", "compare_runners"]
