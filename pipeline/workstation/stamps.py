"""``python -m pipeline config-stamps``: the resolved configuration as Make sees it.

Make compares file times, not values: ``SET="--set train.lr=0.05"`` changes no file, so a
user would get the old model. This writes, for each workstation stage, the configuration
sections that stage reads to ``<run>/stamps/<stage>.toml``, and rewrites a file only when
its content changes; the stage's Make rule depends on its stamp, so exactly the stages
whose settings changed are rebuilt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from pipeline.artifacts import write_text
from pipeline.config import Config, config_to_dict

# what each stage's output depends on, besides its input files
STAGE_SECTIONS = {
    "train": ("data", "model", "preprocess", "train"),
    "export": ("export",),
    "calibrate": ("data", "calibrate"),
    "quantize": ("quantize",),
}
IGNORED = {"data": ("workers", "download"), "train": ("resume", "threads", "device")}  # how, not what


def run(cfg: Config) -> Path:
    folder = cfg.run_dir / "stamps"
    resolved = config_to_dict(cfg)
    for stage, sections in STAGE_SECTIONS.items():
        text = stamp_text(resolved, sections, cfg.run.seed)
        path = folder / f"{stage}.toml"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text(path, text)
    return folder


def stamp_text(resolved: Dict[str, Any], sections: tuple, seed: int) -> str:
    """The sections' values as sorted ``section.key = value`` lines (and the seed)."""
    lines = [f"run.seed = {seed!r}"]
    for section in sections:
        for key, value in sorted(resolved[section].items()):
            if key not in IGNORED.get(section, ()):
                lines.append(f"{section}.{key} = {value!r}")
    return "\n".join(lines) + "\n"
