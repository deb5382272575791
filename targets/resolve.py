"""``python -m pipeline resolve-target --target T``: print the profile a TARGET names here.

Make asks this once for the device targets, so its file names (``engines/<profile>/``)
are the ones the stages write: ``jetson`` resolves to the Jetson this machine is.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from targets.detect import target_profile


def run(cfg: Config) -> Path | None:
    print(target_profile(cfg.engine.target, fit=False).name)
    return None
