"""An EMULATOR of ``pycuda.driver`` (pycuda 2025.1), for tests and the simulated Jetson.

No NVIDIA GPU exists on the machines that run the tests, so this stands in for pycuda and
the CUDA driver under it, holding callers to the contract the real pair keeps:

- Device memory is raw bytes owned by ``mem_alloc``'s ``DeviceAllocation``; it is freed
  when that object is collected (as pycuda does), and a copy that reaches outside a live
  allocation raises ``LogicError("cuMemcpyHtoD failed: invalid argument")`` like pycuda.
  New device and page-locked memory is filled with 0xFF bytes (NaN as float32), so
  reading it before a copy has landed is visible.
- Streams are queues. ``memcpy_htod_async``/``memcpy_dtoh_async``, ``Event.record`` and
  TensorRT's ``execute_async_v3`` only *enqueue*; the work runs when the stream is
  synchronised (``Stream.synchronize``, ``Event.synchronize``, ``Context.synchronize``,
  or a synchronous copy, which like CUDA's legacy default stream first waits for the
  work already queued on blocking streams). An output buffer therefore holds its
  result only after synchronisation.
- Asynchronous copies need page-locked host memory (pycuda's documentation: "src must be
  page-locked memory, see, e.g. pagelocked_empty()"). CUDA itself would silently fall
  back to a synchronous copy; the emulator refuses, since that fallback hides the
  missing overlap the code was written for.
- ``Event.time_since`` is measured with ``time.perf_counter`` when the markers *run*;
  asking before both have completed raises pycuda's ``RuntimeError("cuEventElapsedTime
  failed: device not ready")`` (CUDA_ERROR_NOT_READY maps to pycuda's RuntimeError), and
  for an event never recorded ``LogicError(... invalid resource handle)``.
- Mapped (zero-copy) host memory: ``pagelocked_empty(..., mem_flags=host_alloc_flags.DEVICEMAP)``
  returns an array whose ``.base`` (a ``PagelockedHostAllocation``) gives, through
  ``get_device_pointer()``, an emulated device address that aliases the array's own bytes:
  queued GPU work (TensorRT's execute, a copy) reads the host array as it is when the work
  runs and writes into it, so a result shows in the host array once the stream has
  synchronised. The address differs from the host pointer, so code that hands TensorRT
  the host pointer instead of the device pointer faults here. ``get_device_pointer`` on
  memory allocated without DEVICEMAP, or on a GPU whose CAN_MAP_HOST_MEMORY is 0, raises
  ``LogicError("cuMemHostGetDevicePointer failed: invalid argument")``: cuMemHostGetDevicePointer's
  documented contract. (Under unified addressing the real driver maps all page-locked
  memory whatever the flags and may return a pointer anyway; the emulator keeps to the
  documented contract so code that forgets DEVICEMAP fails here rather than on an older
  driver.) ``free()`` unmaps it; a device address kept after that faults.
- Nothing works before ``init()`` and a context (``import pycuda.autoinit``). A context
  needs no ``ctx_flags.MAP_HOST`` for mapped memory: CUDA deprecated that flag in 11.0 (no
  effect; every context since CUDA 3.2 behaves as though it were set).
- A fault while queued work runs (an illegal address) is raised by the call that
  synchronised, and the context stays broken afterwards, as CUDA's sticky errors do.

The GPU is described by environment variables read at import: EDGERESNET_EMULATED_GPU
(default "Orin (nvgpu)"), EDGERESNET_EMULATED_CC ("8.7"), EDGERESNET_EMULATED_CUDA
("12.6.0"), EDGERESNET_EMULATED_INTEGRATED ("0": a discrete GPU; "1": an integrated one, as
every Jetson's is) and EDGERESNET_EMULATED_CAN_MAP_HOST_MEMORY ("1", as on every GPU current
CUDA supports; "0" emulates one that cannot map host memory). Every public name here exists
in pycuda (tests/test_tensorrt_api.py checks them against pycuda's source); emulator
internals start with "_". One of them is for tests: ``_copies`` lists every memcpy call by
CUDA routine, so a test sees whether any was made.
"""
from __future__ import annotations

import bisect
import builtins
import itertools
import os
import time
import weakref
from enum import IntEnum
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np


class Error(Exception):
    """pycuda's base exception."""


class LogicError(Error):
    pass


class LaunchError(Error):
    pass


class MemoryError(Error):  # noqa: A001 - pycuda's name
    pass


class RuntimeError(Error):  # noqa: A001 - pycuda's name
    pass


def _version_tuple(text: str, parts: int) -> Tuple[int, ...]:
    numbers = [int(p) for p in text.strip().split(".") if p != ""]
    return tuple((numbers + [0] * parts)[:parts])


_GPU_NAME = os.environ.get("EDGERESNET_EMULATED_GPU", "Orin (nvgpu)")
_CAPABILITY = _version_tuple(os.environ.get("EDGERESNET_EMULATED_CC", "8.7"), 2)
_CUDA_VERSION = _version_tuple(os.environ.get("EDGERESNET_EMULATED_CUDA", "12.6.0"), 3)


def _switch(variable: str, default: str) -> int:
    """A 0/1 device attribute from the environment; anything else is a setup mistake."""
    value = os.environ.get(variable, default).strip()
    if value not in ("0", "1"):
        raise ValueError(f"{variable}: expected 0 or 1, got {value!r}")
    return int(value)


_INTEGRATED = _switch("EDGERESNET_EMULATED_INTEGRATED", "0")
_CAN_MAP_HOST_MEMORY = _switch("EDGERESNET_EMULATED_CAN_MAP_HOST_MEMORY", "1")
_TOTAL_MEMORY = 8 << 30
_ALIGNMENT = 512  # cuMemAlloc returns at least 256-byte aligned memory
_GUARD = 1 << 16  # unmapped gap between allocations, so overruns do not land in a neighbour
_UNINITIALISED = 0xFF

_state: Dict[str, Any] = {"initialised": False, "sticky": None, "used": 0}
_copies: List[str] = []  # every copy asked for, by CUDA routine: what tests read to see none was made
_contexts: List["Context"] = []


def _identity() -> Tuple[str, Tuple[int, int]]:
    """The emulated GPU's name and compute capability (TensorRT's emulator reads these)."""
    return _GPU_NAME, (_CAPABILITY[0], _CAPABILITY[1])


def _fail(routine: str, what: str, cls: type = LogicError, detail: str = "") -> Error:
    """pycuda's message layout: '<routine> failed: <CUDA's error string>[ - detail]'."""
    return cls(f"{routine} failed: {what}" + (f" - {detail}" if detail else ""))


def _require_context(routine: str) -> None:
    if _state["sticky"]:
        raise _fail(routine, "an illegal memory access was encountered", detail=_state["sticky"])
    if not _state["initialised"]:
        raise _fail(routine, "initialization error")
    if not _contexts:
        raise _fail(routine, "invalid device context")


def init(flags: int = 0) -> None:
    _state["initialised"] = True


def get_version() -> Tuple[int, int, int]:
    """The CUDA version pycuda was built against."""
    return (_CUDA_VERSION[0], _CUDA_VERSION[1], _CUDA_VERSION[2])


def get_driver_version() -> int:
    return _CUDA_VERSION[0] * 1000 + _CUDA_VERSION[1] * 10


class device_attribute(IntEnum):  # noqa: N801 - pycuda's name
    """The CUdevice_attribute values we emulate (pycuda's enum holds every one of CUDA's)."""

    INTEGRATED = 18  # CU_DEVICE_ATTRIBUTE_INTEGRATED: the GPU shares the host's memory
    CAN_MAP_HOST_MEMORY = 19  # CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY


class host_alloc_flags:  # noqa: N801 - pycuda's name
    """cuMemHostAlloc's flags, with CUDA's values (CU_MEMHOSTALLOC_*)."""

    PORTABLE = 1
    DEVICEMAP = 2
    WRITECOMBINED = 4


class Device:
    __slots__ = ("_ordinal",)

    def __init__(self, number: int) -> None:
        if not _state["initialised"]:
            raise _fail("cuDeviceGet", "initialization error")
        if not 0 <= int(number) < 1:
            raise _fail("cuDeviceGet", "invalid device ordinal")
        self._ordinal = int(number)

    @staticmethod
    def count() -> int:
        if not _state["initialised"]:
            raise _fail("cuDeviceGetCount", "initialization error")
        return 1

    def name(self) -> str:
        return _GPU_NAME

    def compute_capability(self) -> Tuple[int, int]:
        return (_CAPABILITY[0], _CAPABILITY[1])

    def total_memory(self) -> int:
        return _TOTAL_MEMORY

    def get_attribute(self, attr: device_attribute) -> int:
        if not isinstance(attr, device_attribute):
            raise TypeError(f"Python argument types did not match C++ signature: expected "
                            f"device_attribute, got {type(attr).__name__}")
        return {device_attribute.INTEGRATED: _INTEGRATED,
                device_attribute.CAN_MAP_HOST_MEMORY: _CAN_MAP_HOST_MEMORY}[attr]

    def make_context(self, flags: int = 0) -> "Context":
        context = Context(self)
        _contexts.append(context)
        return context

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other._ordinal == self._ordinal

    def __hash__(self) -> int:
        return hash(("Device", self._ordinal))


class Context:
    __slots__ = ("_device", "__weakref__")

    def __init__(self, device: Device) -> None:
        self._device = device

    def push(self) -> None:
        _contexts.append(self)

    @staticmethod
    def pop() -> None:
        if not _contexts:
            raise _fail("cuCtxPopCurrent", "invalid device context")
        _contexts.pop()

    @staticmethod
    def get_device() -> Device:
        _require_context("cuCtxGetDevice")
        return _contexts[-1]._device

    @staticmethod
    def synchronize() -> None:
        _require_context("cuCtxSynchronize")
        _drain_all("cuCtxSynchronize")

    def detach(self) -> None:
        if self in _contexts:
            _contexts.remove(self)


# --- device memory: raw bytes at emulated addresses -----------------------------------

_memory: Dict[int, Any] = {}  # base → bytearray (device memory) or np.uint8 array (mapped host memory)
_bases: List[int] = []
_next_address = [0x302000000]


class _Fault(builtins.RuntimeError):
    """A device-side fault raised while queued work runs (becomes a pycuda error)."""


def _reserve(nbytes: int) -> int:
    base = _next_address[0]
    _next_address[0] += -(-nbytes // _ALIGNMENT) * _ALIGNMENT + _GUARD
    return base


def _allocate(nbytes: int) -> int:
    base = _reserve(nbytes)
    _memory[base] = bytearray([_UNINITIALISED]) * nbytes
    bisect.insort(_bases, base)
    _state["used"] += nbytes
    return base


def _map_host(raw: np.ndarray) -> int:
    """A device address for page-locked host bytes: the GPU reads and writes ``raw`` itself."""
    base = _reserve(raw.nbytes)
    _memory[base] = raw
    bisect.insort(_bases, base)
    return base


def _release(base: int) -> None:
    block = _memory.pop(base, None)
    if block is not None:
        _bases.remove(base)
        if isinstance(block, bytearray):  # mapped host memory never counted as device memory
            _state["used"] -= len(block)


def _locate(address: int, nbytes: int) -> Optional[Tuple[bytearray, int]]:
    """The live allocation holding [address, address + nbytes), and the offset in it."""
    index = bisect.bisect_right(_bases, address) - 1
    if index < 0:
        return None
    base = _bases[index]
    block = _memory[base]
    offset = address - base
    if offset + nbytes > len(block) or nbytes < 0:
        return None
    return block, offset


def _read(address: int, nbytes: int) -> bytes:
    """Device bytes (for the TensorRT emulator); ``_Fault`` outside a live allocation."""
    found = _locate(int(address), nbytes)
    if found is None:
        raise _Fault(f"read of {nbytes} bytes at 0x{int(address):x} outside any live allocation")
    block, offset = found
    return bytes(memoryview(block)[offset:offset + nbytes])


def _write(address: int, data: bytes) -> None:
    found = _locate(int(address), len(data))
    if found is None:
        raise _Fault(f"write of {len(data)} bytes at 0x{int(address):x} outside any live allocation")
    block, offset = found
    memoryview(block)[offset:offset + len(data)] = data


class DeviceAllocation:
    """Device memory; freed when collected, as pycuda's is."""

    __slots__ = ("_base", "_freed", "_finalizer", "__weakref__")

    def __init__(self, nbytes: int) -> None:
        self._base = _allocate(nbytes)
        self._freed = False
        self._finalizer = weakref.finalize(self, _release, self._base)

    def __int__(self) -> int:
        return self._base

    def __index__(self) -> int:
        return self._base

    def free(self) -> None:
        if self._freed:
            raise _fail("device_allocation::free", "invalid resource handle")
        self._freed = True
        self._finalizer()


def mem_alloc(bytes: int) -> DeviceAllocation:  # noqa: A002 - pycuda's parameter name
    _require_context("cuMemAlloc")
    nbytes = int(bytes)
    if nbytes <= 0:
        raise _fail("cuMemAlloc", "invalid argument")
    if _state["used"] + nbytes > _TOTAL_MEMORY:
        raise _fail("cuMemAlloc", "out of memory", MemoryError)
    return DeviceAllocation(nbytes)


def mem_get_info() -> Tuple[int, int]:
    _require_context("cuMemGetInfo")
    return _TOTAL_MEMORY - _state["used"], _TOTAL_MEMORY


def _device_pointer(value: Any) -> int:
    if isinstance(value, (DeviceAllocation, int, np.integer)):
        return int(value)
    raise TypeError(f"Python argument types did not match C++ signature: expected a device pointer "
                    f"(DeviceAllocation or int), got {type(value).__name__}")


# --- host memory ----------------------------------------------------------------------

_pinned: Dict[int, Tuple[int, int]] = {}
_ALL_HOST_FLAGS = host_alloc_flags.PORTABLE | host_alloc_flags.DEVICEMAP | host_alloc_flags.WRITECOMBINED


def _pointer(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def _strides(dims: Tuple[int, ...], itemsize: int, order: str) -> Optional[Tuple[int, ...]]:
    """numpy's strides for ``order``; None means C order to ``__array_interface__``."""
    if order == "C":
        return None
    if order != "F":
        raise _fail("numpy_empty", "invalid argument", detail="unrecognized order specifier")
    steps, step = [], itemsize
    for size in dims:
        steps.append(step)
        step *= max(size, 1)
    return tuple(steps)


class HostPointer:
    """Page-locked host memory; pycuda's arrays from ``pagelocked_empty`` hold one as ``.base``."""

    __slots__ = ("_owner", "_interface", "_device", "_finalizer", "__weakref__")

    def __init__(self, owner: np.ndarray, nbytes: int, interface: Dict[str, Any], mapped: bool) -> None:
        self._owner, self._interface = owner, interface
        self._device = _map_host(owner[:nbytes]) if mapped else None
        _pinned[id(self)] = (_pointer(owner), _pointer(owner) + nbytes)
        self._finalizer = weakref.finalize(self, _unpin, id(self), self._device)

    @property
    def __array_interface__(self) -> Dict[str, Any]:
        return self._interface

    def get_device_pointer(self) -> int:
        """The address at which the GPU sees this memory (cuMemHostGetDevicePointer)."""
        _require_context("cuMemHostGetDevicePointer")
        if not self._finalizer.alive:
            raise _fail("cuMemHostGetDevicePointer", "invalid argument", detail="the memory was freed")
        if self._device is None:
            why = ("allocated without host_alloc_flags.DEVICEMAP" if _CAN_MAP_HOST_MEMORY
                   else "this GPU cannot map host memory (CAN_MAP_HOST_MEMORY is 0)")
            raise _fail("cuMemHostGetDevicePointer", "invalid argument", detail=f"not mapped: {why}")
        return self._device


class PagelockedHostAllocation(HostPointer):
    __slots__ = ()

    def free(self) -> None:
        if not self._finalizer.alive:
            raise _fail("pagelocked_host_allocation::free", "invalid resource handle")
        self._finalizer()


HostAllocation = PagelockedHostAllocation  # pycuda's deprecated name for the same class


def _unpin(key: int, device: Optional[int]) -> None:
    _pinned.pop(key, None)
    if device is not None:
        _release(device)


def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    """Page-locked host memory: a numpy array that async copies accept; with
    ``host_alloc_flags.DEVICEMAP`` (and a GPU that can map host memory) also visible to the
    GPU at ``array.base.get_device_pointer()``."""
    _require_context("cuMemHostAlloc")
    if int(mem_flags) & ~_ALL_HOST_FLAGS:
        raise _fail("cuMemHostAlloc", "invalid argument", detail=f"unknown flags 0x{int(mem_flags):x}")
    dims = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    kind = np.dtype(dtype)
    nbytes = kind.itemsize * int(np.prod(dims, dtype=np.int64))
    owner = np.full(max(nbytes, 1), _UNINITIALISED, np.uint8)
    interface = {"shape": dims, "typestr": kind.str, "strides": _strides(dims, kind.itemsize, order),
                 "data": (_pointer(owner), False), "version": 3}
    mapped = bool(int(mem_flags) & host_alloc_flags.DEVICEMAP) and bool(_CAN_MAP_HOST_MEMORY)
    return np.asarray(PagelockedHostAllocation(owner, nbytes, interface, mapped))  # .base is the allocation


def pagelocked_zeros(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    result = pagelocked_empty(shape, dtype, order, mem_flags)
    result.fill(0)
    return result


def _host_bytes(buffer: Any, writable: bool) -> np.ndarray:
    """A uint8 view of a contiguous host buffer, as pycuda's PyBUF_ANY_CONTIGUOUS request."""
    if isinstance(buffer, np.ndarray):
        if buffer.flags.c_contiguous:
            raw = buffer.reshape(-1).view(np.uint8)
        elif buffer.flags.f_contiguous:
            raw = buffer.T.reshape(-1).view(np.uint8)
        else:
            raise ValueError("ndarray is not contiguous")
    else:
        raw = np.frombuffer(buffer, np.uint8)
    if writable and not raw.flags.writeable:
        raise ValueError("buffer source array is read-only")
    return raw


def _is_pagelocked(raw: np.ndarray) -> bool:
    start, end = _pointer(raw), _pointer(raw) + raw.nbytes
    return any(low <= start and end <= high for low, high in _pinned.values())


def _require_pagelocked(raw: np.ndarray, function: str, argument: str) -> None:
    if raw.nbytes and not _is_pagelocked(raw):
        raise LogicError(f"{function}: {argument} must be page-locked memory, see, e.g. "
                         f"pagelocked_empty() (this array is pageable; CUDA would fall back to a "
                         f"synchronous copy and the asynchrony the code relies on is gone)")


# --- streams: queued work, run on synchronisation ---------------------------------------

class _Operation:
    __slots__ = ("seq", "handle", "work", "label", "done")

    def __init__(self, seq: int, handle: int, work: Callable[[], None], label: str) -> None:
        self.seq, self.handle, self.work, self.label, self.done = seq, handle, work, label, False


_LEGACY_STREAM = 0
_sequence = itertools.count(1)
_queues: Dict[int, List[_Operation]] = {}
_streams: Dict[int, Any] = {}
_non_blocking: set = set()
_handles = itertools.count(0x7F3A5C000000, 0x1000)


def _enqueue(handle: int, work: Callable[[], None], label: str) -> _Operation:
    operation = _Operation(next(_sequence), handle, work, label)
    _queues.setdefault(handle, []).append(operation)
    return operation


def _known_stream(handle: int) -> bool:
    if handle == _LEGACY_STREAM:
        return True
    stream = _streams.get(handle)
    return stream is not None and stream() is not None


def _enqueue_on_handle(handle: int, work: Callable[[], None], label: str) -> bool:
    """For the TensorRT emulator: queue work on the stream whose handle it was given."""
    if not _known_stream(int(handle)):
        return False
    _enqueue(int(handle), work, label)
    return True


def _run_stream_until(handle: int, seq: int, routine: str) -> None:
    queue = _queues.get(handle, [])
    while queue and queue[0].seq <= seq:
        operation = queue[0]
        _run_dependencies(operation, routine)
        queue.pop(0)
        _execute(operation, routine)


def _run_dependencies(operation: _Operation, routine: str) -> None:
    """CUDA's legacy default stream waits for earlier work on every blocking stream, and
    blocking streams wait for earlier work on the legacy default stream."""
    if operation.handle == _LEGACY_STREAM:
        for handle, queue in list(_queues.items()):
            if handle != _LEGACY_STREAM and handle not in _non_blocking and queue \
                    and queue[0].seq < operation.seq:
                _run_stream_until(handle, operation.seq - 1, routine)
    elif operation.handle not in _non_blocking:
        legacy = _queues.get(_LEGACY_STREAM, [])
        if legacy and legacy[0].seq < operation.seq:
            _run_stream_until(_LEGACY_STREAM, operation.seq - 1, routine)


def _execute(operation: _Operation, routine: str) -> None:
    operation.done = True
    try:
        operation.work()
    except _Fault as fault:
        _state["sticky"] = f"{operation.label}: {fault}"
        raise _fail(routine, "an illegal memory access was encountered", detail=_state["sticky"]) from None


def _drain_all(routine: str) -> None:
    while True:
        heads = [queue[0] for queue in _queues.values() if queue]
        if not heads:
            return
        first = min(heads, key=lambda op: op.seq)
        _run_stream_until(first.handle, first.seq, routine)


def _stream_handle(stream: Any) -> int:
    if stream is None:
        return _LEGACY_STREAM
    if isinstance(stream, Stream):
        return stream.handle
    raise TypeError(f"Python argument types did not match C++ signature: expected Stream or None, "
                    f"got {type(stream).__name__}")


class Stream:
    __slots__ = ("_handle", "__weakref__")

    def __init__(self, flags: int = 0) -> None:
        _require_context("cuStreamCreate")
        self._handle = next(_handles)
        _streams[self._handle] = weakref.ref(self)
        if flags & 1:  # CU_STREAM_NON_BLOCKING: no implicit ordering with the legacy stream
            _non_blocking.add(self._handle)

    @property
    def handle(self) -> int:
        return self._handle

    def synchronize(self) -> None:
        _require_context("cuStreamSynchronize")
        queue = _queues.get(self._handle, [])
        if queue:
            _run_stream_until(self._handle, queue[-1].seq, "cuStreamSynchronize")

    def is_done(self) -> bool:
        _require_context("cuStreamQuery")
        return not _queues.get(self._handle)

    def wait_for_event(self, event: "Event") -> None:
        _require_context("cuStreamWaitEvent")
        marker = event._marker
        if marker is not None:
            _enqueue(self._handle, lambda: _run_stream_until(marker.handle, marker.seq, "cuStreamWaitEvent"),
                     "wait_for_event")


class Event:
    __slots__ = ("_marker", "_time", "__weakref__")

    def __init__(self, flags: int = 0) -> None:
        _require_context("cuEventCreate")
        self._marker: Optional[_Operation] = None
        self._time = 0.0

    def record(self, stream: Optional[Stream] = None) -> "Event":
        _require_context("cuEventRecord")
        handle = _stream_handle(stream)
        self._marker = _enqueue(handle, self._reached, "event")
        return self

    def _reached(self) -> None:
        self._time = time.perf_counter()

    def synchronize(self) -> "Event":
        _require_context("cuEventSynchronize")
        if self._marker is not None:
            _run_stream_until(self._marker.handle, self._marker.seq, "cuEventSynchronize")
        return self

    def query(self) -> bool:
        _require_context("cuEventQuery")
        return self._marker is None or self._marker.done

    def time_since(self, event: "Event") -> float:
        return _elapsed(event, self)

    def time_till(self, event: "Event") -> float:
        return _elapsed(self, event)


def _elapsed(start: Event, end: Event) -> float:
    _require_context("cuEventElapsedTime")
    if start._marker is None or end._marker is None:
        raise _fail("cuEventElapsedTime", "invalid resource handle")
    if not (start._marker.done and end._marker.done):
        raise _fail("cuEventElapsedTime", "device not ready", RuntimeError)
    return (end._time - start._time) * 1000.0


# --- copies -------------------------------------------------------------------------------

def _check_device_range(address: int, nbytes: int, routine: str) -> None:
    if _locate(address, nbytes) is None:
        raise _fail(routine, "invalid argument",
                    detail=f"{nbytes} bytes at 0x{address:x} are not inside one live allocation")


def memcpy_htod(dest: Any, src: Any) -> None:
    _require_context("cuMemcpyHtoD")
    _copies.append("cuMemcpyHtoD")
    raw, address = _host_bytes(src, writable=False), _device_pointer(dest)
    _check_device_range(address, raw.nbytes, "cuMemcpyHtoD")
    _drain_all("cuMemcpyHtoD")
    _write(address, raw.tobytes())


def memcpy_dtoh(dest: Any, src: Any) -> None:
    _require_context("cuMemcpyDtoH")
    _copies.append("cuMemcpyDtoH")
    raw, address = _host_bytes(dest, writable=True), _device_pointer(src)
    _check_device_range(address, raw.nbytes, "cuMemcpyDtoH")
    _drain_all("cuMemcpyDtoH")
    raw[...] = np.frombuffer(_read(address, raw.nbytes), np.uint8)


def memcpy_htod_async(dest: Any, src: Any, stream: Optional[Stream] = None) -> None:
    _require_context("cuMemcpyHtoDAsync")
    _copies.append("cuMemcpyHtoDAsync")
    raw, address = _host_bytes(src, writable=False), _device_pointer(dest)
    _require_pagelocked(raw, "memcpy_htod_async", "src")
    _check_device_range(address, raw.nbytes, "cuMemcpyHtoDAsync")
    # the host bytes are read when the copy runs, not now: changing them before that counts
    _enqueue(_stream_handle(stream), lambda: _write(address, raw.tobytes()), "memcpy_htod_async")


def memcpy_dtoh_async(dest: Any, src: Any, stream: Optional[Stream] = None) -> None:
    _require_context("cuMemcpyDtoHAsync")
    _copies.append("cuMemcpyDtoHAsync")
    raw, address = _host_bytes(dest, writable=True), _device_pointer(src)
    _require_pagelocked(raw, "memcpy_dtoh_async", "dest")
    _check_device_range(address, raw.nbytes, "cuMemcpyDtoHAsync")

    def _land() -> None:
        raw[...] = np.frombuffer(_read(address, raw.nbytes), np.uint8)

    _enqueue(_stream_handle(stream), _land, "memcpy_dtoh_async")


def memcpy_dtod(dest: Any, src: Any, size: int) -> None:
    _require_context("cuMemcpyDtoD")
    _copies.append("cuMemcpyDtoD")
    target, source = _device_pointer(dest), _device_pointer(src)
    _check_device_range(source, int(size), "cuMemcpyDtoD")
    _check_device_range(target, int(size), "cuMemcpyDtoD")
    _drain_all("cuMemcpyDtoD")
    _write(target, _read(source, int(size)))


def memcpy_dtod_async(dest: Any, src: Any, size: int, stream: Optional[Stream] = None) -> None:
    _require_context("cuMemcpyDtoDAsync")
    _copies.append("cuMemcpyDtoDAsync")
    target, source = _device_pointer(dest), _device_pointer(src)
    _check_device_range(source, int(size), "cuMemcpyDtoDAsync")
    _check_device_range(target, int(size), "cuMemcpyDtoDAsync")
    _enqueue(_stream_handle(stream), lambda: _write(target, _read(source, int(size))), "memcpy_dtod_async")
