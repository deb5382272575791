"""An EMULATOR of NVIDIA TensorRT's Python API (8.5, 10.3 or 11.4), for tests and the
simulated Jetson. TensorRT needs an NVIDIA GPU; none exists where the tests run.

With ``tests/emulator`` on ``sys.path`` this package *is* ``import tensorrt`` (its device
memory and streams come from the sibling ``pycuda`` emulator). It enforces TensorRT's
contract instead of a happy path:

- Names: every public class, function, method and class attribute exists in NVIDIA's
  real binding wheel of the emulated version (tests/test_tensorrt_api.py reads them out of
  ``tensorrt.so``); objects use ``__slots__``, so removed or misspelled API
  (``build_engine``, ``max_workspace_size``, ``execute_async_v2``, ``num_bindings``)
  raises AttributeError as the real bindings do.
- Versions, chosen by EDGERESNET_TRT_EMULATE when imported (default "10.3.0"; the value
  becomes ``__version__``): "8.5.x" (JetPack 5) has no ``builder_optimization_level``, has
  EXPLICIT_BATCH and no STRONGLY_TYPED, and its ONNX parser refuses a network created
  without EXPLICIT_BATCH; "10.3.x" (JetPack 6) has TensorRT 10.3's names; "11.4.x" has no
  FP16/INT8 builder flags, no implicit calibration (no ``IInt8*Calibrator``, no
  ``int8_calibrator``) and no EXPLICIT_BATCH.
- Building: the ONNX parser never raises: a bad model makes ``parse`` return False with
  ``ParserError``s. ``IOptimizationProfile.set_shape`` raises RuntimeError for shapes
  whose ranks disagree or that are not min <= opt <= max (as the bindings do). The builder
  logs an error and returns None for a dynamic input without an optimisation profile,
  profile shapes that disagree with the network's static dimensions, a DLA core the
  device lacks, or DLA with dynamic shapes or no FP16/INT8 and no GPU_FALLBACK (with
  GPU_FALLBACK it warns that the layers run on the GPU). With INT8, a calibrator and no
  Q/DQ in the network it really calibrates: read_calibration_cache, get_batch_size, then
  get_batch until it returns None, reading each batch (the calibration profile's opt
  shape, profile 0 if unset) from emulated device memory, and write_calibration_cache
  with TensorRT's text layout and per-tensor scales measured with ONNX Runtime.
- The plan is a small header (magic, emulated TensorRT version, the GPU's name and
  compute capability, flags, profiles, I/O names, dtypes and shapes) followed by the ONNX
  bytes. ``Runtime.deserialize_cuda_engine`` returns None (logging TensorRT's messages)
  for bytes that are not a plan, a plan from another TensorRT version, or one built for
  another compute capability.
- Running: ``set_input_shape`` returns False, recording nothing, for a wrong rank, a static
  dimension mismatch or a shape outside the profile; ``execute_async_v3`` returns False when
  an input shape or an I/O address is missing or the stream handle is unknown; otherwise it
  ENQUEUES on that pycuda stream an operation that reads the inputs from emulated device
  memory, runs the ONNX with ONNX Runtime (CPU, one session per engine) and writes the
  outputs to device memory. The numbers are therefore ONNX Runtime's on the ONNX the plan
  holds, with one exception: a weakly typed engine built with the FP16 flag lets TensorRT
  run unquantized layers in FP16, so its float weights and every float activation outside
  Q/DQ are rounded through FP16 (a Cast pair after each such layer), while a strongly typed
  or FP32 engine computes exactly what ONNX Runtime computes on the file. A layer pinned to
  FP32 (``layer.precision`` with OBEY_PRECISION_CONSTRAINTS) keeps its FP32 weights and
  outputs there, and cannot run on the DLA (``can_run_on_DLA`` is False; a layer given
  ``config.set_device_type(layer, GPU)`` runs on the GPU without GPU_FALLBACK). Implicit
  calibration does not change them (the cache's scales are not applied).

Test hooks (module-level lists, not TensorRT API): CALLS records calls, LOG records every
(severity, message) the emulator logs, NUM_DLA_CORES holds the device's DLA count
(EDGERESNET_EMULATED_DLA_CORES, default 0).
"""
from __future__ import annotations

import json
import os
import struct
import sys
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycuda.driver as _cuda

__version__ = os.environ.get("EDGERESNET_TRT_EMULATE", "10.3.0")
_MODES = ((8, 5), (10, 3), (11, 4))


def _mode_of(version: str) -> Tuple[int, int]:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        major, minor = -1, -1
    if (major, minor) not in _MODES:
        raise RuntimeError(f"EDGERESNET_TRT_EMULATE: expected a TensorRT version 8.5.x, 10.3.x or "
                           f"11.4.x, got {version!r}")
    return major, minor


_MODE = _mode_of(__version__)
CALLS: list = []
LOG: list = []
NUM_DLA_CORES = [int(os.environ.get("EDGERESNET_EMULATED_DLA_CORES", "0"))]
_PLAN_MAGIC = b"EDGERESNET-EMULATED-TENSORRT-PLAN\0"
_TIMING_MAGIC = b"EDGERESNET-EMULATED-TENSORRT-TIMING-CACHE\0"


class _PyEnum(Enum):
    """pybind11's enums: int() and indexing give the value; == compares members only."""

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return int(self.value)


def _mode_enum(cls: Any, drop: Sequence[str] = (), add: Sequence[Tuple[str, int]] = ()) -> Any:
    members = [(m.name, m.value) for m in cls if m.name not in drop] + list(add)
    return _PyEnum(cls.__name__, members, module=__name__, qualname=cls.__qualname__)


# --- enums --------------------------------------------------------------------------------

# Made by a call, not a class statement: NVIDIA's tensorrt.so holds this one name only as
# the tail of "nvinfer1::DataType", which ../shared/tools/trt_oracle.py does not read as a
# name (tests/test_tensorrt_api.py does, and checks it with its members).
DataType = _PyEnum("DataType", [("FLOAT", 0), ("HALF", 1), ("INT8", 2), ("INT32", 3), ("BOOL", 4), ("UINT8", 5),
                                ("FP8", 6), ("BF16", 7), ("INT64", 8), ("INT4", 9)], module=__name__)


class TensorIOMode(_PyEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(_PyEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3


class NetworkDefinitionCreationFlag(_PyEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(_PyEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10
    DIRECT_IO = 11


class DeviceType(_PyEnum):
    GPU = 0
    DLA = 1


class LayerType(_PyEnum):
    CONVOLUTION = 0
    ACTIVATION = 2
    POOLING = 3
    SCALE = 5
    SOFTMAX = 6
    CONCATENATION = 8
    ELEMENTWISE = 9
    UNARY = 11
    SHUFFLE = 13
    PADDING = 14
    SLICE = 15
    REDUCE = 16
    CONSTANT = 18
    IDENTITY = 20
    MATRIX_MULTIPLY = 21
    GATHER = 17
    QUANTIZE = 33
    DEQUANTIZE = 34


class LayerInformationFormat(_PyEnum):
    ONELINE = 0
    JSON = 1


class CalibrationAlgoType(_PyEnum):
    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


class ErrorCode(_PyEnum):
    SUCCESS = 0
    INTERNAL_ERROR = 1
    MODEL_DESERIALIZE_FAILED = 3
    INVALID_VALUE = 4
    INVALID_GRAPH = 5
    INVALID_NODE = 6
    UNSUPPORTED_GRAPH = 7
    UNSUPPORTED_NODE = 8

    def __str__(self) -> str:
        return self.name


# --- logging ------------------------------------------------------------------------------

class ILogger:
    __slots__ = ()

    class Severity(_PyEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def log(self, severity: "ILogger.Severity", msg: str) -> None:
        raise RuntimeError('Tried to call pure virtual function "ILogger::log"')


class Logger(ILogger):
    __slots__ = ("_min_severity",)
    INTERNAL_ERROR = ILogger.Severity.INTERNAL_ERROR
    ERROR = ILogger.Severity.ERROR
    WARNING = ILogger.Severity.WARNING
    INFO = ILogger.Severity.INFO
    VERBOSE = ILogger.Severity.VERBOSE

    def __init__(self, min_severity: Optional["ILogger.Severity"] = None) -> None:
        severity = ILogger.Severity.WARNING if min_severity is None else min_severity
        if not isinstance(severity, ILogger.Severity):
            raise TypeError(f"Logger(): incompatible function arguments: expected tensorrt.ILogger.Severity, "
                            f"got {type(min_severity).__name__}")
        self._min_severity = severity

    @property
    def min_severity(self) -> "ILogger.Severity":
        return self._min_severity

    def log(self, severity: "ILogger.Severity", msg: str) -> None:
        if int(severity) <= int(self._min_severity):
            print(f"[TRT] [{'FEWIV'[int(severity)]}] {msg}", file=sys.stderr)


def _log(logger: Optional[ILogger], severity: str, message: str) -> None:
    LOG.append((severity, message))
    if logger is not None:
        logger.log(ILogger.Severity[severity], message)


def _require_logger(logger: Any, where: str) -> ILogger:
    if not isinstance(logger, ILogger):
        raise TypeError(f"{where}: incompatible function arguments: expected tensorrt.ILogger, "
                        f"got {type(logger).__name__}")
    return logger


# --- small value types ----------------------------------------------------------------------

class Dims(tuple):
    """A shape; compares equal to the tuple of its dimensions."""

    __slots__ = ()
    MAX_DIMS = 8

    def __new__(cls, shape: Sequence[int] = ()) -> "Dims":
        values = tuple(int(d) for d in shape)
        if len(values) > cls.MAX_DIMS:
            raise ValueError("The number of input dims exceeds the maximum allowed number of dimensions")
        return super().__new__(cls, values)


def _dims(value: Any, where: str) -> Dims:
    try:
        return Dims(value)
    except TypeError:
        raise TypeError(f"{where}: incompatible function arguments: expected a shape (a sequence of "
                        f"ints), got {value!r}") from None


class IHostMemory(bytes):
    """Serialized data (a plan, a timing cache); a buffer, so bytes(...) and writes work."""

    __slots__ = ()

    @property
    def nbytes(self) -> int:
        return len(self)


_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 7: "INT64", 16: "BF16"}
_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
          "UINT8": np.uint8, "INT64": np.int64}


def _gpu() -> Tuple[str, str]:
    name, (major, minor) = _cuda._identity()
    return name, f"{major}.{minor}"


# --- the network and the ONNX parser ------------------------------------------------------------

class ITensor:
    __slots__ = ("_name", "_shape", "_dtype", "_is_input", "_symbols")

    def __init__(self, name: str, shape: Dims, dtype: Any, is_input: bool, symbols: List[Any]) -> None:
        self._name, self._shape, self._dtype, self._is_input, self._symbols = name, shape, dtype, is_input, symbols

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> Dims:
        return self._shape

    @property
    def dtype(self) -> Any:
        return self._dtype

    @property
    def is_network_input(self) -> bool:
        return self._is_input


class INetworkDefinition:
    __slots__ = ("_flags", "_explicit_batch", "_model", "_onnx", "_inputs", "_outputs", "_layers")

    def __init__(self, flags: int, explicit_batch: bool) -> None:
        self._flags, self._explicit_batch = flags, explicit_batch
        self._layers: Dict[int, "ILayer"] = {}  # one object per layer: settings on it persist
        self._model: Any = None
        self._onnx = b""
        self._inputs: List[ITensor] = []
        self._outputs: List[ITensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def num_layers(self) -> int:
        return 0 if self._model is None else len(self._model.graph.node)

    @property
    def has_implicit_batch_dimension(self) -> bool:
        return not self._explicit_batch

    def get_input(self, index: int) -> Optional[ITensor]:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> Optional[ITensor]:
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def get_layer(self, index: int) -> Optional["ILayer"]:
        if self._model is None or not 0 <= index < len(self._model.graph.node):
            return None
        if index not in self._layers:
            node = self._model.graph.node[index]
            self._layers[index] = ILayer(node.name or f"{node.op_type}_{index}",
                                         _LAYER_TYPES.get(node.op_type, LayerType.UNARY), len(node.output))
        return self._layers[index]


# The ONNX parser's layer for each ONNX operator (the emulator's table).
_LAYER_TYPES = {"Conv": LayerType.CONVOLUTION, "Relu": LayerType.ACTIVATION, "Clip": LayerType.ACTIVATION,
                "Sigmoid": LayerType.ACTIVATION, "MaxPool": LayerType.POOLING, "AveragePool": LayerType.POOLING,
                "GlobalAveragePool": LayerType.POOLING, "ReduceMean": LayerType.REDUCE,
                "BatchNormalization": LayerType.SCALE, "Softmax": LayerType.SOFTMAX, "Concat": LayerType.CONCATENATION,
                "Add": LayerType.ELEMENTWISE, "Sub": LayerType.ELEMENTWISE, "Mul": LayerType.ELEMENTWISE,
                "Slice": LayerType.SLICE, "Pad": LayerType.PADDING, "Flatten": LayerType.SHUFFLE, "Reshape": LayerType.SHUFFLE, "Transpose": LayerType.SHUFFLE,
                "Constant": LayerType.CONSTANT, "Identity": LayerType.IDENTITY, "Gemm": LayerType.MATRIX_MULTIPLY,
                "MatMul": LayerType.MATRIX_MULTIPLY, "Gather": LayerType.GATHER,
                "QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE}
# What the emulated DLA runs: convolutions, activations, pooling, scales, element-wise, concat,
# softmax, shuffles, slices, padding, Q/DQ. Not NVIDIA's table (which only hardware can settle): a deterministic stand-in,
# under which a ResNet's classifier head (Gemm), reductions and gathers fall back to the GPU.
_DLA_LAYERS = {LayerType.CONVOLUTION, LayerType.ACTIVATION, LayerType.POOLING, LayerType.SCALE, LayerType.SOFTMAX,
               LayerType.CONCATENATION, LayerType.ELEMENTWISE, LayerType.SHUFFLE, LayerType.SLICE,
               LayerType.PADDING, LayerType.QUANTIZE,
               LayerType.DEQUANTIZE, LayerType.IDENTITY}


class ILayer:
    __slots__ = ("_name", "_type", "_outputs", "_precision", "_output_types")

    def __init__(self, name: str, layer_type: Any, outputs: int = 1) -> None:
        self._name, self._type, self._outputs = name, layer_type, outputs
        self._precision: Any = None
        self._output_types: Dict[int, Any] = {}

    @property
    def num_outputs(self) -> int:
        return self._outputs

    @property
    def precision(self) -> Any:
        return DataType.FLOAT if self._precision is None else self._precision

    @precision.setter
    def precision(self, dtype: Any) -> None:
        if not isinstance(dtype, DataType):
            raise TypeError("precision: expected tensorrt.DataType")
        self._precision = dtype

    @property
    def precision_is_set(self) -> bool:
        return self._precision is not None

    def set_output_type(self, index: int, dtype: Any) -> None:
        if not isinstance(dtype, DataType) or not 0 <= index < self._outputs:
            raise TypeError("set_output_type(): incompatible function arguments")
        self._output_types[index] = dtype

    def get_output_type(self, index: int) -> Any:
        return self._output_types.get(index, DataType.FLOAT)

    @property
    def name(self) -> str:
        return self._name

    @property
    def type(self) -> Any:
        return self._type


class ParserError:
    __slots__ = ("_code", "_desc", "_func", "_node", "_node_name", "_node_operator")

    def __init__(self, code: ErrorCode, desc: str, func: str, node: int = -1, node_name: str = "",
                 node_operator: str = "") -> None:
        self._code, self._desc, self._func = code, desc, func
        self._node, self._node_name, self._node_operator = node, node_name, node_operator

    def code(self) -> ErrorCode:
        return self._code

    def desc(self) -> str:
        return self._desc

    def file(self) -> str:
        return "ModelImporter.cpp"

    def line(self) -> int:
        return 0

    def func(self) -> str:
        return self._func

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._node_name

    def node_operator(self) -> str:
        return self._node_operator

    def __str__(self) -> str:  # the bindings' parserErrorStr
        info = f"({self._func}): {self._code}: {self._desc}"
        if _MODE < (10, 0):
            return f"In node {self._node} {info}"
        if self._code == ErrorCode.MODEL_DESERIALIZE_FAILED:
            return info
        return f"In node {self._node} with name: {self._node_name} and operator: {self._node_operator} {info}"

    __repr__ = __str__


_IMPLICIT_BATCH = ('Assertion failed: !_importer_ctx.network()->hasImplicitBatchDimension() && "This version '
                   'of the ONNX parser only supports TensorRT INetworkDefinitions with an explicit batch '
                   'dimension. Please ensure the network was created using the EXPLICIT_BATCH '
                   'NetworkDefinitionCreationFlag."')


class OnnxParser:
    __slots__ = ("_network", "_logger", "_errors")

    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        if not isinstance(network, INetworkDefinition):
            raise TypeError("OnnxParser(): incompatible function arguments: expected tensorrt.INetworkDefinition")
        self._network, self._logger = network, _require_logger(logger, "OnnxParser()")
        self._errors: List[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Optional[ParserError]:
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse(self, model: Any, path: Optional[str] = None) -> bool:
        """Never raises: a model TensorRT cannot import makes it return False."""
        blob = bytes(memoryview(model))
        CALLS.append(("parse", len(blob)))
        if self._network._model is not None:
            _log(self._logger, "ERROR", "Parse was called with a non-empty network definition")
            return False
        if self._network.has_implicit_batch_dimension:
            return self._error(ErrorCode.INVALID_VALUE, _IMPLICIT_BATCH, "importModel")
        import onnx

        try:
            proto = onnx.load_from_string(blob)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
            return self._error(ErrorCode.MODEL_DESERIALIZE_FAILED, "Failed to parse the ONNX model.", "parse")
        if not proto.graph.output or not proto.graph.node:
            return self._error(ErrorCode.INVALID_GRAPH, "the ONNX graph has no nodes or no outputs",
                               "importModel")
        problem = _onnxruntime_refusal(blob)
        if problem:
            return self._error(ErrorCode.UNSUPPORTED_NODE, problem, "importModel")
        initializers = {t.name for t in proto.graph.initializer}
        tensors = []
        for value, is_input in [(v, True) for v in proto.graph.input if v.name not in initializers] + \
                               [(v, False) for v in proto.graph.output]:
            tensor = _tensor_of(value, is_input)
            if tensor is None:
                return self._error(ErrorCode.UNSUPPORTED_NODE, f"{value.name}: data type "
                                   f"{value.type.tensor_type.elem_type} is not supported by TensorRT "
                                   f"{__version__}", "importInput")
            tensors.append(tensor)
        self._network._model, self._network._onnx = proto, blob
        self._network._inputs = [t for t in tensors if t._is_input]
        self._network._outputs = [t for t in tensors if not t._is_input]
        return True

    def _error(self, code: ErrorCode, desc: str, func: str) -> bool:
        error = ParserError(code, desc, func)
        self._errors.append(error)
        _log(self._logger, "ERROR", f"ModelImporter.cpp: {error}")
        return False


def _onnxruntime_refusal(blob: bytes) -> str:
    """The emulator runs with ONNX Runtime: what it cannot load, the emulator cannot import."""
    import onnxruntime

    try:
        onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own exception types
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ""


def _tensor_of(value: Any, is_input: bool) -> Optional[ITensor]:
    kind = _ONNX_TYPES.get(value.type.tensor_type.elem_type)
    if kind is None or kind not in DataType.__members__:
        return None
    symbols: List[Any] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            symbols.append(int(dim.dim_value))
        else:
            symbols.append(dim.dim_param or "?")
    shape = Dims([s if isinstance(s, int) else -1 for s in symbols])
    return ITensor(value.name, shape, DataType[kind], is_input, symbols)


# --- optimisation profiles, timing cache, builder config ------------------------------------

class IOptimizationProfile:
    __slots__ = ("_shapes",)

    def __init__(self) -> None:
        self._shapes: Dict[str, List[Optional[Dims]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        """As the bindings: RuntimeError when a shape disagrees in rank or order with the others."""
        for index, (label, value) in enumerate((("min", min), ("opt", opt), ("max", max))):
            if not self._set(str(input), index, _dims(value, "set_shape()")):
                raise RuntimeError(f"Shape provided for {label} is inconsistent with other shapes.")

    def _set(self, name: str, index: int, dims: Dims) -> bool:
        entry = self._shapes.setdefault(name, [None, None, None])
        if any(d < 0 for d in dims):
            return False
        for other_index, other in enumerate(entry):
            if other is None or other_index == index:
                continue
            if len(other) != len(dims):
                return False
            low, high = (other, dims) if other_index < index else (dims, other)
            if any(a > b for a, b in zip(low, high)):
                return False
        entry[index] = dims
        return True

    def get_shape(self, input: str) -> List[Dims]:  # noqa: A002
        entry = self._shapes.get(str(input))
        return [] if entry is None or entry[0] is None else [d for d in entry if d is not None]

    def __bool__(self) -> bool:
        return all(all(d is not None for d in entry) for entry in self._shapes.values())


class ITimingCache:
    __slots__ = ("_version", "_device", "_entries")

    def __init__(self, version: str, device: str, entries: Sequence[str] = ()) -> None:
        self._version, self._device, self._entries = version, device, set(entries)

    def serialize(self) -> IHostMemory:
        body = json.dumps({"tensorrt": self._version, "device": self._device,
                           "entries": sorted(self._entries)}).encode()
        return IHostMemory(_TIMING_MAGIC + body)

    def reset(self) -> bool:
        self._entries.clear()
        return True


def _this_device() -> str:
    name, capability = _gpu()
    return f"{name} (compute {capability})"


class IBuilderConfig:
    __slots__ = ("_logger", "_flags", "_pools", "_level", "_device_type", "_dla_core", "_calibrator",
                 "_profiles", "_calibration_profile", "_timing_cache", "_layer_devices")

    def __init__(self, logger: ILogger) -> None:
        self._logger, self._flags, self._pools, self._level = logger, 0, {}, 3
        self._device_type: Any = DeviceType.GPU
        self._dla_core = -1
        self._calibrator: Any = None
        self._profiles: List[IOptimizationProfile] = []
        self._calibration_profile: Optional[IOptimizationProfile] = None
        self._timing_cache: Optional[ITimingCache] = None
        self._layer_devices: Dict[str, Any] = {}

    def set_device_type(self, layer: "ILayer", device_type: Any) -> None:
        if not isinstance(layer, ILayer) or not isinstance(device_type, DeviceType):
            raise TypeError("set_device_type(): incompatible function arguments")
        self._layer_devices[layer.name] = device_type

    def get_device_type(self, layer: "ILayer") -> Any:
        return self._layer_devices.get(layer.name, self._device_type)

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        if not isinstance(pool, MemoryPoolType) or int(pool_size) < 0:
            raise TypeError("set_memory_pool_limit(): incompatible function arguments: expected "
                            "(tensorrt.MemoryPoolType, int >= 0)")
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(pool, _cuda._TOTAL_MEMORY if pool == MemoryPoolType.WORKSPACE else 0)

    @property
    def builder_optimization_level(self) -> int:
        return self._level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level: int) -> None:
        if not 0 <= int(level) <= 5:
            _log(self._logger, "ERROR", f"IBuilderConfig::setBuilderOptimizationLevel: level {level} is "
                                        f"outside [0, 5]; left at {self._level}")
            return
        self._level = int(level)

    def _flag(self, flag: Any) -> int:
        if not isinstance(flag, BuilderFlag):
            raise TypeError(f"incompatible function arguments: expected tensorrt.BuilderFlag, got {flag!r}")
        return 1 << int(flag)

    def set_flag(self, flag: Any) -> None:
        self._flags |= self._flag(flag)

    def clear_flag(self, flag: Any) -> None:
        self._flags &= ~self._flag(flag)

    def get_flag(self, flag: Any) -> bool:
        return bool(self._flags & self._flag(flag))

    @property
    def flags(self) -> int:
        return self._flags

    @flags.setter
    def flags(self, value: int) -> None:
        self._flags = int(value)

    def _flag_names(self) -> List[str]:
        return [m.name for m in BuilderFlag if self._flags & (1 << int(m))]

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not isinstance(profile, IOptimizationProfile):
            raise TypeError("add_optimization_profile(): expected tensorrt.IOptimizationProfile")
        if not profile:
            _log(self._logger, "ERROR", "IBuilderConfig::addOptimizationProfile: the profile is not valid "
                                        "(some input has min/opt/max only partly set)")
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def set_calibration_profile(self, profile: Optional[IOptimizationProfile]) -> bool:
        if profile is not None and not profile:
            return False
        self._calibration_profile = profile
        return True

    def get_calibration_profile(self) -> Optional[IOptimizationProfile]:
        return self._calibration_profile

    @property
    def int8_calibrator(self) -> Any:
        return self._calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator: Any) -> None:
        if calibrator is not None and not isinstance(calibrator, _IInt8Calibrator):
            raise TypeError(f"int8_calibrator: incompatible type: expected tensorrt.IInt8Calibrator, got "
                            f"{type(calibrator).__name__}")
        self._calibrator = calibrator

    @property
    def default_device_type(self) -> Any:
        return self._device_type

    @default_device_type.setter
    def default_device_type(self, device_type: Any) -> None:
        if not isinstance(device_type, DeviceType):
            raise TypeError("default_device_type: expected tensorrt.DeviceType")
        self._device_type = device_type

    @property
    def DLA_core(self) -> int:  # noqa: N802 - TensorRT's name
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, core: int) -> None:  # noqa: N802
        self._dla_core = int(core)

    def can_run_on_DLA(self, layer: "ILayer") -> bool:  # noqa: N802 - TensorRT's name
        """The layer's type is one the DLA runs, and a reduced precision is allowed (the DLA
        has no FP32)."""
        if not isinstance(layer, ILayer):
            raise TypeError("can_run_on_DLA(): incompatible function arguments: expected tensorrt.ILayer")
        return layer.type in _DLA_LAYERS and any(n in ("FP16", "INT8") for n in self._flag_names()) \
            and not _pinned_fp32(layer, self)

    def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache:
        """An empty blob gives a new cache; a blob TensorRT cannot read is reported and a new
        cache returned ("The timing cache will not be used!"), as TensorRT does."""
        blob = bytes(memoryview(serialized_timing_cache))
        fresh = ITimingCache(__version__, _this_device())
        if not blob:
            return fresh
        if not blob.startswith(_TIMING_MAGIC):
            return self._unreadable_cache("Serialization assertion magicTagRead == kMAGIC_TAG failed."
                                          "Magic tag does not match", fresh)
        record = json.loads(blob[len(_TIMING_MAGIC):].decode())
        if record["tensorrt"] != __version__:
            return self._unreadable_cache(f"Serialization assertion version == kSERIALIZATION_VERSION failed."
                                          f"Version tag does not match (cache {record['tensorrt']}, "
                                          f"TensorRT {__version__})", fresh)
        return ITimingCache(record["tensorrt"], record["device"], record["entries"])

    def _unreadable_cache(self, why: str, fresh: ITimingCache) -> ITimingCache:
        _log(self._logger, "ERROR", f"1: [stdArchiveReader.cpp::StdArchiveReader] Error Code 1: Serialization ({why})")
        _log(self._logger, "ERROR", "4: The timing cache will not be used!")
        return fresh

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, ITimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments: expected tensorrt.ITimingCache")
        if cache._device != _this_device():
            if not ignore_mismatch:
                _log(self._logger, "ERROR", f"IBuilderConfig::setTimingCache: the timing cache was made on "
                                            f"{cache._device}, this device is {_this_device()}; not used "
                                            f"(ignore_mismatch=False)")
                return False
            _log(self._logger, "WARNING", f"using a timing cache made on {cache._device} on {_this_device()}")
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> Optional[ITimingCache]:
        return self._timing_cache


# --- the builder ----------------------------------------------------------------------------------

class Builder:
    __slots__ = ("_logger",)

    def __init__(self, logger: ILogger) -> None:
        self._logger = _require_logger(logger, "Builder()")

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - TensorRT's name
        return NUM_DLA_CORES[0]

    def create_network(self, flags: int = 0) -> Optional[INetworkDefinition]:
        CALLS.append(("create_network", flags))
        known = 0
        for member in NetworkDefinitionCreationFlag:
            known |= 1 << int(member)
        if int(flags) & ~known:
            _log(self._logger, "ERROR", f"IBuilder::createNetworkV2: Error Code 3: API Usage Error (invalid "
                                        f"NetworkDefinitionCreationFlag bits in {flags:#x} for TensorRT {__version__})")
            return None
        explicit = _MODE >= (10, 0) or bool(int(flags) & 1)
        return INetworkDefinition(int(flags), explicit)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self._logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> Optional[IHostMemory]:
        """The plan, or None after logging why, as TensorRT does."""
        CALLS.append(("build_serialized_network", network, config))
        try:
            return _build(self._logger, network, config)
        except _BuildError as refusal:
            _log(self._logger, "ERROR", str(refusal))
            return None


class _BuildError(Exception):
    pass


def _build(logger: ILogger, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory:
    if not isinstance(network, INetworkDefinition) or not isinstance(config, IBuilderConfig):
        raise TypeError("build_serialized_network(): incompatible function arguments")
    if network._model is None or not network._outputs:
        raise _BuildError("4: [network.cpp::validate] Error Code 4: Internal Error (Network must have at "
                          "least one output)")
    profiles = _check_profiles(network, config)
    strongly_typed = _MODE >= (10, 0) and bool(network._flags & (1 << 1))
    precision = [n for n in config._flag_names() if n in ("FP16", "INT8")]
    if strongly_typed and precision:
        raise _BuildError(f"Error Code 3: API Usage Error (BuilderFlag::k{precision[0]} is not allowed "
                          f"for a strongly typed network)")
    placement = _place_layers(logger, network, config, profiles)
    calibration = _maybe_calibrate(logger, network, config, profiles)
    _use_timing_cache(logger, network, config)
    name, capability = _gpu()
    header = {"tensorrt": __version__, "gpu": name, "compute_capability": capability,
              "flags": config._flag_names(), "typing": "strong" if strongly_typed or _MODE >= (11, 0) else "weak",
              "device": "DLA" if "DLA" in placement.values() else "GPU",
              "dla_core": config._dla_core if "DLA" in placement.values() else -1, "layers": placement,
              "optimization_level": config._level, "profiles": profiles, "calibration": calibration,
              "fp32_layers": [layer.name for layer in network._layers.values() if _pinned_fp32(layer, config)],
              "io": [{"name": t.name, "mode": "INPUT" if t._is_input else "OUTPUT", "dtype": t.dtype.name,
                      "symbols": t._symbols} for t in network._inputs + network._outputs]}
    text = json.dumps(header).encode()
    return IHostMemory(_PLAN_MAGIC + struct.pack(">I", len(text)) + text + network._onnx)


def _check_profiles(network: INetworkDefinition, config: IBuilderConfig) -> List[Dict[str, List[List[int]]]]:
    """TensorRT's build-time profile validation; static inputs get min = opt = max."""
    inputs = {t.name: t for t in network._inputs}
    dynamic = [t.name for t in network._inputs if -1 in t.shape]
    if dynamic and not config._profiles:
        raise _BuildError("4: [network.cpp::validate] Error Code 4: Internal Error (Network has dynamic or "
                          "shape inputs, but no optimization profile has been defined.)")
    resolved = []
    for index, profile in enumerate(config._profiles or [IOptimizationProfile()]):
        entry = {}
        for name in profile._shapes:
            if name not in inputs:
                raise _BuildError(f"4: Error Code 4: Internal Error (optimization profile {index} has shapes "
                                  f"for {name}, which is not a network input)")
        for name, tensor in inputs.items():
            shapes = profile.get_shape(name)
            if not shapes:
                if name in dynamic:
                    raise _BuildError(f"4: [network.cpp::validate] Error Code 4: Internal Error ({name}: "
                                      f"dynamic input is missing dimensions in profile {index}.)")
                shapes = [tensor.shape] * 3
            _check_against_network(name, tensor.shape, shapes, index)
            entry[name] = [list(s) for s in shapes]
        resolved.append(entry)
    return resolved


def _check_against_network(name: str, network_shape: Dims, shapes: List[Dims], index: int) -> None:
    low, opt, high = shapes
    if len(low) != len(network_shape):
        raise _BuildError(f"4: Error Code 4: Internal Error ({name}: number of dimensions is {len(low)} in "
                          f"profile {index}, but {len(network_shape)} in the network definition)")
    for axis, expected in enumerate(network_shape):
        if expected != -1 and not low[axis] == opt[axis] == high[axis] == expected:
            raise _BuildError(f"4: Error Code 4: Internal Error ({name}: for dimension number {axis} in profile "
                              f"{index} does not match network definition (got min={low[axis]}, "
                              f"opt={opt[axis]}, max={high[axis]}), expected min=opt=max={expected}).)")


def _place_layers(logger: ILogger, network: INetworkDefinition, config: IBuilderConfig,
                  profiles: List[Dict[str, Any]]) -> Dict[str, str]:
    """Layer name → "GPU" or "DLA". DLA needs a core the device has, FP16 or INT8, static
    shapes and layers it runs; what it cannot run goes to the GPU with GPU_FALLBACK, and
    without it the build fails."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    if config._device_type != DeviceType.DLA:
        return {layer.name: "GPU" for layer in layers}
    if not 0 <= config._dla_core < NUM_DLA_CORES[0]:
        raise _BuildError(f"2: Error Code 2: Internal Error (DLA core {config._dla_core} requested, this "
                          f"device has {NUM_DLA_CORES[0]} DLA core(s))")
    fallback = config.get_flag(BuilderFlag.GPU_FALLBACK)
    reduced = any(n in ("FP16", "INT8") for n in config._flag_names())
    dynamic = any(shapes[0] != shapes[2] for profile in profiles for shapes in profile.values())
    reasons = ([] if reduced else ["DLA runs only FP16 or INT8 layers and neither flag is set"]) + \
              (["DLA supports only static shapes (min = opt = max) and the profile is dynamic"] if dynamic else [])
    on_gpu = {layer.name for layer in layers if config.get_device_type(layer) == DeviceType.GPU}
    layers = [layer for layer in layers if layer.name not in on_gpu]
    refused = [layer.name for layer in layers if reasons or not config.can_run_on_DLA(layer)]
    if refused and not fallback:
        why = "; ".join(reasons) or f"layer {refused[0]} cannot run on DLA"
        raise _BuildError(f"2: Error Code 2: Internal Error (cannot build for DLA core {config._dla_core}: "
                          f"{why}; GPU_FALLBACK is not set)")
    if reasons:
        _log(logger, "WARNING", f"{'; '.join(reasons)}: every layer falls back to the GPU (GPU_FALLBACK)")
    for name in refused if not reasons else []:
        _log(logger, "WARNING", f"Layer '{name}' is not supported on DLA, falling back to GPU.")
    return {**{name: "GPU" for name in on_gpu},
            **{layer.name: "GPU" if layer.name in refused else "DLA" for layer in layers}}


def _pinned_fp32(layer: ILayer, config: IBuilderConfig) -> bool:
    """A layer whose FP32 precision the builder must obey (the DLA has no FP32)."""
    return layer._precision == DataType.FLOAT and config.get_flag(BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def _use_timing_cache(logger: ILogger, network: INetworkDefinition, config: IBuilderConfig) -> None:
    cache = config._timing_cache
    if cache is None or config.get_flag(BuilderFlag.DISABLE_TIMING_CACHE):
        return
    precision = ",".join(n for n in config._flag_names() if n in ("FP16", "INT8", "TF32"))
    keys = {f"{node.op_type}:{node.name}:{precision}" for node in network._model.graph.node}
    hits = len(keys & cache._entries)
    cache._entries |= keys
    _log(logger, "INFO", f"timing cache: {hits} hits, {len(keys) - hits} new entries")


# --- implicit INT8 calibration --------------------------------------------------------------------

def _version_code() -> int:
    major, minor, patch = ([int(p) for p in __version__.split(".")] + [0, 0, 0])[:3]
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


_ALGORITHM_NAMES = {"ENTROPY_CALIBRATION_2": "EntropyCalibration2", "MINMAX_CALIBRATION": "MinMaxCalibration",
                    "ENTROPY_CALIBRATION": "EntropyCalibration", "LEGACY_CALIBRATION": "LegacyCalibration"}


def _maybe_calibrate(logger: ILogger, network: INetworkDefinition, config: IBuilderConfig,
                     profiles: List[Dict[str, Any]]) -> Optional[str]:
    calibrator = config._calibrator
    if calibrator is None or not config.get_flag(BuilderFlag.INT8):
        return None
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in network._model.graph.node):
        _log(logger, "WARNING", "Calibrator won't be used in explicit precision mode. Use quantization aware "
                                "training to generate network with Quantize/Dequantize nodes.")
        return None
    header = f"TRT-{_version_code()}-{_ALGORITHM_NAMES[calibrator.get_algorithm().name]}"
    cached = calibrator.read_calibration_cache()
    if cached:
        text = bytes(memoryview(cached)).decode("ascii", "replace")
        if text.splitlines()[0].strip() == header:
            return text
        _log(logger, "WARNING", f"calibration cache header {text.splitlines()[0]!r} is not {header!r}; "
                                f"calibrating again")
    text = _calibrate(logger, network, config, profiles, calibrator, header)
    calibrator.write_calibration_cache(memoryview(text.encode("ascii")))
    return text


def _calibration_shapes(logger: ILogger, network: INetworkDefinition, config: IBuilderConfig,
                        profiles: List[Dict[str, Any]]) -> Dict[str, Tuple[int, ...]]:
    if config._calibration_profile is not None:
        return {t.name: tuple(config._calibration_profile.get_shape(t.name)[1]) for t in network._inputs}
    if any(-1 in t.shape for t in network._inputs):
        _log(logger, "WARNING", "Calibration Profile is not defined. Calibrating with Profile 0")
    return {name: tuple(shapes[1]) for name, shapes in profiles[0].items()}


def _calibrate(logger: ILogger, network: INetworkDefinition, config: IBuilderConfig,
               profiles: List[Dict[str, Any]], calibrator: Any, header: str) -> str:
    shapes = _calibration_shapes(logger, network, config, profiles)
    batch_size = calibrator.get_batch_size()
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise _BuildError(f"calibrator.get_batch_size() returned {batch_size!r}; expected a positive int")
    names = [t.name for t in network._inputs]
    if any(shapes[n][0] != batch_size for n in names):
        _log(logger, "WARNING", f"calibrator batch size {batch_size} differs from the calibration shapes "
                                f"{shapes}: TensorRT reads the opt shape from each batch pointer")
    session, outputs = _calibration_session(network._model)
    measured = [n for n in names if _dtype_of(network, n) == np.float32] + outputs
    extremes: Dict[str, List[float]] = {name: [] for name in measured}
    batches = 0
    while True:
        pointers = calibrator.get_batch(list(names))
        if not pointers:
            break
        if len(pointers) != len(names):
            raise _BuildError(f"calibrator.get_batch({names}) returned {len(pointers)} pointers")
        feeds = {name: _read_tensor(int(ptr), shapes[name], _dtype_of(network, name))
                 for name, ptr in zip(names, pointers)}
        values = dict(feeds)
        values.update(zip(outputs, session.run(outputs, feeds)))
        for name in measured:
            magnitude = np.abs(np.asarray(values[name], np.float64))
            extremes[name].append(float(magnitude.max()) if header.endswith("MinMaxCalibration")
                                  else float(np.percentile(magnitude, 99.99)))
        batches += 1
    if not batches:
        raise _BuildError("Calibration failure occurred with no scaling factors detected. This could be due to "
                          "no int8 calibrator or insufficient custom scales for network layers.")
    _log(logger, "INFO", f"calibrated {len(measured)} tensors on {batches} batches")
    lines = [header]
    for name, values in extremes.items():
        scale = max(max(values) if header.endswith("MinMaxCalibration") else float(np.mean(values)), 1e-8) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def _dtype_of(network: INetworkDefinition, name: str) -> Any:
    return _NUMPY[next(t for t in network._inputs if t.name == name).dtype.name]


def _read_tensor(address: int, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        data = _cuda._read(address, nbytes)
    except _cuda._Fault as fault:
        raise _BuildError(f"calibration batch: {fault} (an illegal memory access on a real GPU)") from None
    return np.frombuffer(data, dtype).reshape(shape)


def _calibration_session(model: Any) -> Tuple[Any, List[str]]:
    """ONNX Runtime over the network with every float activation exposed as an output."""
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(probe)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    present = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            value = known.get(out)
            if out and value is not None and value.type.tensor_type.elem_type == 1 and out not in present:
                probe.graph.output.append(value)
                present.add(out)
    float_outputs = [o.name for o in probe.graph.output if o.type.tensor_type.elem_type == 1]
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, float_outputs


# --- the runtime: plans, engines, execution contexts ---------------------------------------------

class Runtime:
    __slots__ = ("_logger",)

    def __init__(self, logger: ILogger) -> None:
        self._logger = _require_logger(logger, "Runtime()")

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Optional["ICudaEngine"]:
        """The engine, or None (with TensorRT's log lines) for bytes that are not a plan of
        this TensorRT version for this GPU's compute capability."""
        blob = bytes(memoryview(serialized_engine))
        CALLS.append(("deserialize_cuda_engine", len(blob)))
        header, onnx_bytes = _read_plan(blob)
        if header is None:
            return self._refuse("1: [stdArchiveReader.cpp::StdArchiveReader] Error Code 1: Serialization "
                                "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
        if header["tensorrt"] != __version__:
            return self._refuse(f"6: The engine plan file is not compatible with this version of TensorRT, "
                                f"expecting library version {__version__} got {header['tensorrt']}, please rebuild.")
        name, capability = _gpu()
        if header["compute_capability"] != capability:
            return self._refuse(f"6: The engine plan file is generated on an incompatible device, expecting "
                                f"compute {capability} got compute {header['compute_capability']}, please rebuild.")
        if header["gpu"] != name:
            _log(self._logger, "WARNING", "Using an engine plan file across different models of devices is not "
                                          "recommended and is likely to affect performance or even cause errors.")
        return ICudaEngine(header, onnx_bytes, blob, self._logger)

    def _refuse(self, message: str) -> None:
        _log(self._logger, "ERROR", message)
        _log(self._logger, "ERROR", "4: [runtime.cpp::deserializeCudaEngine] Error Code 4: Internal Error "
                                    "(Engine deserialization failed.)")
        return None


def _read_plan(blob: bytes) -> Tuple[Optional[Dict[str, Any]], bytes]:
    if not blob.startswith(_PLAN_MAGIC) or len(blob) < len(_PLAN_MAGIC) + 4:
        return None, b""
    start = len(_PLAN_MAGIC) + 4
    (length,) = struct.unpack(">I", blob[len(_PLAN_MAGIC):start])
    try:
        return json.loads(blob[start:start + length].decode()), blob[start + length:]
    except ValueError:
        return None, b""


class _TensorInfo:
    __slots__ = ("name", "is_input", "dtype", "symbols")

    def __init__(self, record: Dict[str, Any]) -> None:
        self.name, self.is_input = record["name"], record["mode"] == "INPUT"
        self.dtype, self.symbols = DataType[record["dtype"]], record["symbols"]

    @property
    def shape(self) -> Dims:
        return Dims([s if isinstance(s, int) else -1 for s in self.symbols])


class ICudaEngine:
    """A deserialized plan; runs its ONNX with one ONNX Runtime session."""

    __slots__ = ("_header", "_onnx", "_plan", "_logger", "_tensors", "_session")

    def __init__(self, header: Dict[str, Any], onnx_bytes: bytes, plan: bytes, logger: ILogger) -> None:
        import onnxruntime

        self._header, self._onnx, self._plan, self._logger = header, onnx_bytes, plan, logger
        self._tensors = [_TensorInfo(record) for record in header["io"]]
        if header.get("typing") == "weak" and "FP16" in header["flags"]:
            onnx_bytes = _fp16_storage(onnx_bytes, set(header.get("fp32_layers", ())))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # no idle thread pool spinning beside other runners
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(onnx_bytes, sess_options=options,
                                                     providers=["CPUExecutionProvider"])

    def _tensor(self, name: str) -> Optional[_TensorInfo]:
        return next((t for t in self._tensors if t.name == name), None)

    @property
    def name(self) -> str:
        return "emulated engine"

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._header["profiles"])

    def get_tensor_name(self, index: int) -> Optional[str]:
        return self._tensors[index].name if 0 <= index < len(self._tensors) else None

    def get_tensor_mode(self, name: str) -> Any:
        tensor = self._tensor(name)
        if tensor is None:
            return TensorIOMode.NONE
        return TensorIOMode.INPUT if tensor.is_input else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        tensor = self._tensor(name)
        return DataType.FLOAT if tensor is None else tensor.dtype

    def get_tensor_shape(self, name: str) -> Dims:
        tensor = self._tensor(name)
        return Dims() if tensor is None else tensor.shape

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Dims]:
        tensor = self._tensor(name)
        if tensor is None or not tensor.is_input or not 0 <= profile_index < len(self._header["profiles"]):
            _log(self._logger, "ERROR", f"ICudaEngine::getProfileShape: Error Code 3: API Usage Error ({name!r} "
                                        f"is not an input of this engine, or profile {profile_index} does not exist)")
            return [Dims(), Dims(), Dims()]
        return [Dims(s) for s in self._header["profiles"][profile_index][name]]

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)

    def create_engine_inspector(self) -> "EngineInspector":
        return EngineInspector(self)

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._plan)


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _fp16_storage(onnx_bytes: bytes, fp32_layers: set = frozenset()) -> bytes:
    """The model as a weakly typed FP16 engine computes it: float weights rounded to FP16
    (Q/DQ scales stay FP32, as TensorRT keeps them) and each float output of a layer outside
    Q/DQ rounded through FP16, except the layers pinned to FP32 (their weights and outputs)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(onnx_bytes))
    graph = model.graph
    floats = {v.name for v in list(graph.value_info) + list(graph.output) if v.type.tensor_type.elem_type == 1}
    scales = {name for node in graph.node if node.op_type in _QDQ for name in node.input[1:]}
    pinned = {name for node in graph.node if node.name in fp32_layers for name in node.input}
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == 1 and tensor.name not in scales | pinned:
            rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    casts = []
    for node in graph.node:
        if node.op_type in _QDQ or node.name in fp32_layers:
            continue
        for slot, name in enumerate(node.output):
            if name in floats:
                node.output[slot] = f"{name}__fp32"
                casts += [helper.make_node("Cast", [f"{name}__fp32"], [f"{name}__fp16"], to=10),
                          helper.make_node("Cast", [f"{name}__fp16"], [name], to=1)]
    graph.node.extend(casts)
    order = _topological([_copy(n) for n in graph.node], {i.name for i in graph.input} | {t.name for t in graph.initializer})
    del graph.node[:]
    graph.node.extend(order)
    return model.SerializeToString()


def _topological(nodes: List[Any], ready: set) -> List[Any]:
    """ONNX wants producers before consumers: the appended Cast pairs, put in place."""
    ordered, pending = [], list(nodes)
    while pending:
        runnable = [n for n in pending if all(not i or i in ready for i in n.input)]
        if not runnable:
            raise RuntimeError("emulated FP16 rendering: the graph has a cycle or a missing input")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        done = {id(n) for n in runnable}
        pending = [n for n in pending if id(n) not in done]
    return ordered


def _copy(node: Any) -> Any:
    fresh = type(node)()
    fresh.CopyFrom(node)
    return fresh


class EngineInspector:
    """Layer names as TensorRT's inspector gives them at the default verbosity: a run of
    consecutive DLA layers is one ``{ForeignNode[first...last]}`` layer."""

    __slots__ = ("_engine",)

    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine

    def get_engine_information(self, format: Any) -> str:  # noqa: A002 - TensorRT's name
        names: List[str] = []
        run: List[str] = []
        for name, device in list(self._engine._header.get("layers", {}).items()) + [("", "GPU")]:
            if device == "DLA":
                run.append(name)
                continue
            if run:
                names.append(f"{{ForeignNode[{run[0]}...{run[-1]}]}}")
                run = []
            if name:
                names.append(name)
        bindings = [t.name for t in self._engine._tensors]
        if format == LayerInformationFormat.JSON:
            return json.dumps({"Layers": names, "Bindings": bindings})
        return "\n".join(names + bindings)


class IExecutionContext:
    __slots__ = ("_engine", "_shapes", "_addresses", "_inferred")

    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine
        self._shapes: Dict[str, Dims] = {}
        self._addresses: Dict[str, int] = {}
        self._inferred: Dict[Tuple[Any, ...], Dict[str, Dims]] = {}

    @property
    def engine(self) -> ICudaEngine:
        return self._engine

    @property
    def active_optimization_profile(self) -> int:
        return 0

    def set_input_shape(self, name: str, shape: Any) -> bool:
        """False, changing nothing, for a shape the engine or its profile does not accept."""
        dims = _dims(shape, "set_input_shape()")
        CALLS.append(("set_input_shape", name, tuple(dims)))
        problem = self._shape_problem(name, dims)
        if problem:
            _log(self._engine._logger, "ERROR", f"IExecutionContext::setInputShape: Error Code 3: API Usage Error "
                                                f"(Parameter check failed, condition: {problem})")
            return False
        self._shapes[name] = dims
        return True

    def _shape_problem(self, name: str, dims: Dims) -> str:
        tensor = self._engine._tensor(name)
        if tensor is None or not tensor.is_input:
            return f"{name!r} is not an input tensor of this engine."
        expected = tensor.shape
        if len(dims) != len(expected):
            return f"dims.nbDims == expected.nbDims. {name}: rank {len(dims)} given, the engine's is {len(expected)}."
        if any(e != -1 and d != e for d, e in zip(dims, expected)):
            return (f"engineDims.d[i] == dims.d[i]. Static dimension mismatch while setting input shape for "
                    f"{name}. Set dimensions are {list(dims)}. Expected dimensions are {list(expected)}.")
        low, _, high = self._engine._header["profiles"][0][name]
        if any(not lo <= d <= hi for d, lo, hi in zip(dims, low, high)):
            return (f"satisfyProfile. Set dimension {list(dims)} for tensor {name} does not satisfy any "
                    f"optimization profiles. Valid range for profile 0: {list(low)}..{list(high)}.")
        return ""

    def get_tensor_shape(self, name: str) -> Dims:
        tensor = self._engine._tensor(name)
        if tensor is None:
            return Dims()
        if tensor.is_input:
            return self._shapes.get(name, tensor.shape)
        return self._output_shapes().get(name, tensor.shape)

    def _output_shapes(self) -> Dict[str, Dims]:
        """Output shapes from the set input shapes: shared ONNX dim names first, ONNX shape
        inference for the rest; -1 where still unknown."""
        inputs = [t for t in self._engine._tensors if t.is_input]
        if any(t.name not in self._shapes and -1 in t.shape for t in inputs):
            return {}
        key = tuple(tuple(self._shapes.get(t.name, t.shape)) for t in inputs)
        if key not in self._inferred:
            self._inferred[key] = _infer_outputs(self._engine, {t.name: self._shapes.get(t.name, t.shape)
                                                                for t in inputs})
        return self._inferred[key]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        tensor = self._engine._tensor(name)
        address = int(memory)
        if tensor is None:
            _log(self._engine._logger, "ERROR", f"IExecutionContext::setTensorAddress: Error Code 3: API Usage "
                                                f"Error (The tensor name {name!r} is not an input or output)")
            return False
        if address % 256:
            _log(self._engine._logger, "ERROR", f"IExecutionContext::setTensorAddress: Error Code 3: API Usage "
                                                f"Error (address 0x{address:x} of {name} is not 256-byte aligned)")
            return False
        if address:
            self._addresses[name] = address
        else:
            self._addresses.pop(name, None)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        """Enqueue the inference on the stream; False (logged) when TensorRT would refuse."""
        CALLS.append(("execute_async_v3", stream_handle))
        plan = self._plan_execution()
        if isinstance(plan, str):
            _log(self._engine._logger, "ERROR", f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error "
                                                f"(Parameter check failed, condition: {plan})")
            return False
        work = _inference(self._engine._session, plan)
        if not _cuda._enqueue_on_handle(int(stream_handle), work, "TensorRT enqueueV3"):
            _log(self._engine._logger, "ERROR", f"IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime "
                                                f"(invalid resource handle: stream 0x{int(stream_handle):x})")
            return False
        return True

    def _plan_execution(self) -> Any:
        """(name, address, shape, dtype, is_input) per tensor, or what is missing."""
        missing = [t.name for t in self._engine._tensors if t.is_input and -1 in t.shape and t.name not in self._shapes]
        if missing:
            return (f"inputShapesSpecified. Not all shapes are specified. Following input tensors' dimensions are "
                    f"not specified: {', '.join(missing)}.")
        plan = []
        for tensor in self._engine._tensors:
            if tensor.name not in self._addresses:
                kind = "input" if tensor.is_input else "output"
                return (f"Address is not set for {kind} tensor {tensor.name}. Call setInputTensorAddress or "
                        f"setTensorAddress before enqueue/execute.")
            shape = self.get_tensor_shape(tensor.name)
            if -1 in shape:
                return f"the shape of output {tensor.name} depends on data: an IOutputAllocator is needed."
            plan.append((tensor.name, self._addresses[tensor.name], tuple(shape), _NUMPY[tensor.dtype.name],
                         tensor.is_input))
        return plan


def _inference(session: Any, plan: List[Tuple[str, int, Tuple[int, ...], Any, bool]]) -> Callable[[], None]:
    """What runs when the stream reaches the enqueued inference: device bytes in, ONNX
    Runtime, device bytes out."""

    def _run() -> None:
        feeds = {}
        for name, address, shape, dtype, is_input in plan:
            if is_input:
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                feeds[name] = np.frombuffer(_cuda._read(address, nbytes), dtype).reshape(shape)
        outputs = [entry for entry in plan if not entry[4]]
        try:
            results = session.run([entry[0] for entry in outputs], feeds)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's error types
            raise _cuda._Fault(f"inference failed: {exc}") from None
        for (name, address, shape, dtype, _), value in zip(outputs, results):
            value = np.ascontiguousarray(value, dtype)
            if value.shape != shape:
                raise _cuda._Fault(f"output {name} came out {value.shape}, the context resolved {shape}")
            _cuda._write(address, value.tobytes())

    return _run


def _infer_outputs(engine: ICudaEngine, shapes: Dict[str, Dims]) -> Dict[str, Dims]:
    known: Dict[str, int] = {}
    for tensor in engine._tensors:
        if tensor.is_input:
            for symbol, value in zip(tensor.symbols, shapes[tensor.name]):
                if isinstance(symbol, str) and symbol != "?":
                    known[symbol] = int(value)
    result = {}
    unresolved = False
    for tensor in engine._tensors:
        if not tensor.is_input:
            dims = [s if isinstance(s, int) else known.get(s, -1) for s in tensor.symbols]
            unresolved = unresolved or -1 in dims
            result[tensor.name] = Dims(dims)
    if unresolved:
        result.update(_onnx_shape_inference(engine._onnx, shapes, result))
    return result


def _onnx_shape_inference(onnx_bytes: bytes, shapes: Dict[str, Dims], partial: Dict[str, Dims]) -> Dict[str, Dims]:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    for value in model.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(model)
    result = {}
    for value in inferred.graph.output:
        if value.name in partial and -1 in partial[value.name]:
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                    for d in value.type.tensor_type.shape.dim]
            result[value.name] = Dims(dims)
    return result


# --- implicit calibration: the classes a Python calibrator derives from -----------------------

class _PybindType(type):
    """pybind11 refuses an instance whose Python __init__ did not call the base __init__."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        if not getattr(instance, "_constructed", False):
            base = next(c for c in cls.__mro__ if c.__module__ == __name__ and not c.__name__.startswith("_"))
            raise TypeError(f"tensorrt.tensorrt.{base.__name__}.__init__() must be called when overriding __init__")
        return instance


def _pure_virtual(method: str) -> RuntimeError:
    return RuntimeError(f'Tried to call pure virtual function "IInt8Calibrator::{method}"')


class IInt8Calibrator(metaclass=_PybindType):
    __slots__ = ("_constructed", "__weakref__")

    def __init__(self) -> None:
        self._constructed = True

    def get_algorithm(self) -> Any:
        raise _pure_virtual("getAlgorithm")

    def get_batch_size(self) -> int:
        raise _pure_virtual("getBatchSize")

    def get_batch(self, names: List[str]) -> Any:
        raise _pure_virtual("getBatch")

    def read_calibration_cache(self) -> Any:
        raise _pure_virtual("readCalibrationCache")

    def write_calibration_cache(self, cache: Any) -> None:
        raise _pure_virtual("writeCalibrationCache")


class IInt8EntropyCalibrator2(IInt8Calibrator):
    __slots__ = ()

    def get_algorithm(self) -> Any:
        return CalibrationAlgoType.ENTROPY_CALIBRATION_2


class IInt8MinMaxCalibrator(IInt8Calibrator):
    __slots__ = ()

    def get_algorithm(self) -> Any:
        return CalibrationAlgoType.MINMAX_CALIBRATION


_IInt8Calibrator = IInt8Calibrator


# --- what the emulated version has and lacks ---------------------------------------------------

if _MODE < (10, 0):  # TensorRT 8.5 (JetPack 5)
    DataType = _mode_enum(DataType, drop=("FP8", "BF16", "INT64", "INT4"))
    NetworkDefinitionCreationFlag = _mode_enum(NetworkDefinitionCreationFlag, drop=("STRONGLY_TYPED",))
    del IBuilderConfig.builder_optimization_level  # came in 8.6
    del ParserError.node_name, ParserError.node_operator
if _MODE >= (11, 0):  # TensorRT 11: explicit quantization only, always explicit batch
    DataType = _mode_enum(DataType, add=(("FP4", 10), ("E8M0", 11)))
    NetworkDefinitionCreationFlag = _mode_enum(NetworkDefinitionCreationFlag, drop=("EXPLICIT_BATCH",))
    BuilderFlag = _mode_enum(BuilderFlag, drop=("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS",
                                                "PREFER_PRECISION_CONSTRAINTS", "REFIT"))
    del ILayer.precision, ILayer.precision_is_set, ILayer.set_output_type  # went with weak typing
    del IBuilderConfig.int8_calibrator, IBuilderConfig.set_calibration_profile
    del IBuilderConfig.get_calibration_profile
    del IInt8Calibrator, IInt8EntropyCalibrator2, IInt8MinMaxCalibrator, CalibrationAlgoType
