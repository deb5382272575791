"""``python -m pipeline unpack --bundle FILE``: a bundle becomes a device run.

Its own stage (not a side effect of ``engine``) so Make sees one file, ``bundle.json``,
that every later device target depends on instead of the workstation's training chain.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.device.bundle import RECORD, unpack_bundle
from pipeline.errors import ConfigError


def run(cfg: Config) -> Path:
    if not cfg.engine.bundle:
        raise ConfigError("unpack: give --bundle FILE (make ... BUNDLE=<path>/bundle-<target>.tar.gz)")
    names = unpack_bundle(Path(cfg.engine.bundle), cfg.run_dir, cfg.bundle.max_unpacked_mb << 20)
    if names:
        print(f"unpacked {len(names)} files from {cfg.engine.bundle} into {cfg.run_dir}")
    else:
        print(f"{cfg.run_dir} already holds {cfg.engine.bundle}")
    return cfg.run_dir / RECORD
