"""EMULATED ``pycuda.autoinit``: initialise the (emulated) driver and make a context on
device 0, as pycuda's does; ``context`` and ``device`` are the names pycuda exports."""
from __future__ import annotations

import pycuda.driver as cuda

cuda.init()
device = cuda.Device(0)
context = device.make_context()
