"""The TensorRT and pycuda EMULATORS (tests/emulator), imported the way the simulated
Jetson imports them: ``tests/emulator`` on ``sys.path``, then ``import tensorrt``,
``import pycuda.driver`` and ``import pycuda.autoinit`` as top-level modules.

The ``trt_emulator`` fixture yields an :class:`Emulated` holding the two modules. A test
that wants another TensorRT version or GPU sets the environment with monkeypatch
(EDGERESNET_TRT_EMULATE, EDGERESNET_EMULATED_GPU, EDGERESNET_EMULATED_CC, ...) and calls
``reload()`` for fresh modules. Afterwards, or on ``close()``, the modules leave
``sys.modules`` and the folder leaves ``sys.path``, so the rest of the suite sees no
TensorRT (tests check the "tensorrt is needed ... make setup-device" refusal).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator

import pytest

EMULATOR = str(Path(__file__).resolve().parent / "emulator")


def _emulated(name: str) -> bool:
    return name.split(".")[0] in ("tensorrt", "pycuda")


class Emulated:
    """``trt`` and ``cuda`` (``pycuda.driver``) as freshly imported emulator modules."""

    trt: ModuleType
    cuda: ModuleType

    def __init__(self) -> None:
        self._saved: Dict[str, ModuleType] = {n: m for n, m in sys.modules.items() if _emulated(n)}
        self._open = False

    def reload(self) -> "Emulated":
        """Import both emulators afresh, honouring the environment as it is now."""
        self._forget()
        sys.path.insert(0, EMULATOR)
        self._open = True
        importlib.invalidate_caches()
        self.trt = importlib.import_module("tensorrt")
        self.cuda = importlib.import_module("pycuda.driver")
        importlib.import_module("pycuda.autoinit")
        return self

    def close(self) -> None:
        """Remove the emulators; whatever was imported before comes back."""
        self._forget()
        sys.modules.update(self._saved)

    def _forget(self) -> None:
        for name in [n for n in sys.modules if _emulated(n)]:
            del sys.modules[name]
        if self._open:
            sys.path.remove(EMULATOR)
            self._open = False


@pytest.fixture
def trt_emulator() -> Iterator[Emulated]:
    emulated = Emulated()
    try:
        yield emulated.reload()
    finally:
        emulated.close()
