"""Optional dependencies, imported where used and explained when missing.

``import pipeline`` must work without TensorRT, pycuda or NNCF (a workstation trains
without TensorRT; a Jetson deploys without torch), so each is imported through
:func:`import_optional`, which names the package, why it is needed and how to get it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import MissingDependencyError


def import_optional(module: str, why: str, how: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying why and how."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{module} is needed {why} but cannot be imported "
                                     f"({exc}); {how}") from None


def import_pycuda(why: str) -> ModuleType:
    """``pycuda.driver`` with a CUDA context created (``pycuda.autoinit``)."""
    how = "make setup-device installs pycuda (it needs the CUDA toolkit)"
    cuda = import_optional("pycuda.driver", why, how)
    import_optional("pycuda.autoinit", "to create a CUDA context", how)
    return cuda
