"""``python -m pipeline models``: the registry as a table."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.workstation.models import MODELS


def run(cfg: Config) -> Path | None:
    """Print every model name with its family, depth, block and options."""
    print(f"{'name':<10} {'family':<9} {'depth':>5}  {'block':<10} options")
    for spec in MODELS.values():
        print(f"{spec.name:<10} {spec.family:<9} {spec.depth:>5}  {spec.block.__name__:<10} "
              f"{', '.join(spec.options)}")
    return None
