"""Progress for long work: a live bar on a terminal, nothing per step in a log file.

CI logs and ``make | tee`` would otherwise fill with thousands of redrawn bar lines; the
stages print one summary line per epoch or step instead.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def interactive() -> bool:
    """True when stderr is a terminal someone is watching."""
    return sys.stderr.isatty()


def progress(iterable: Iterable[Any], enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm`` shown only where ``enabled`` and on a terminal; never left on screen."""
    return tqdm(iterable, disable=not (enabled and interactive()), leave=False, **kwargs)
