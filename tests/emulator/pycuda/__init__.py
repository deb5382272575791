"""An EMULATOR of pycuda (``pycuda.driver``, ``pycuda.autoinit``): no GPU exists here.

With ``tests/emulator`` on ``sys.path`` this package *is* ``import pycuda``, as it will be
in the simulated Jetson. See ``driver.py`` for the contract it enforces.
"""
from __future__ import annotations

VERSION = (2025, 1, 2)
VERSION_STATUS = ""
VERSION_TEXT = "2025.1.2"
