"""A FAKE of the TensorRT 10 Python API, for tests only.

TensorRT cannot be installed on machines without an NVIDIA GPU (this one and CI), so the
engine builder and the calibrator are tested against this small, strict stand-in:
- it exposes only names that NVIDIA's real 10.3 bindings hold (tests/test_tensorrt_api.py
  checks every public name here against the wheel's strings);
- its objects use ``__slots__``, so a removed or misspelled API (``build_engine``,
  ``max_workspace_size``, ``execute_async_v2``, bindings) raises AttributeError;
- it records every call in ``CALLS`` so tests can check the sequence against the
  documented API. Real engines are built by the tests marked ``tensorrt``.
"""
from __future__ import annotations

from enum import Enum

__version__ = "10.3.0"
CALLS: list[tuple] = []
NUM_DLA_CORES = [0]  # what the fake device has; tests set it


class Logger:
    __slots__ = ("min_severity",)
    WARNING = 2

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity


class MemoryPoolType(Enum):
    WORKSPACE = 0


class NetworkDefinitionCreationFlag(Enum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 5


class BuilderFlag(Enum):
    FP16 = 0
    INT8 = 1
    GPU_FALLBACK = 3


class DeviceType(Enum):
    GPU = 0
    DLA = 1


class ITensor:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class INetworkDefinition:
    __slots__ = ("inputs", "source")

    def __init__(self) -> None:
        self.inputs: list[ITensor] = []
        self.source = b""

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


class OnnxParser:
    __slots__ = ("network", "errors")

    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network, self.errors = network, []

    def parse(self, model: bytes) -> bool:
        import onnx

        CALLS.append(("parse", len(model)))
        try:
            proto = onnx.load_from_string(model)
        except Exception as exc:  # noqa: BLE001 - the real parser reports, it does not raise
            self.errors.append(f"ModelImporter: {exc}")
            return False
        self.network.inputs = [ITensor(i.name) for i in proto.graph.input]
        self.network.source = model
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class IOptimizationProfile:
    __slots__ = ("shapes",)

    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob or b"fake-timing-cache"

    def serialize(self) -> bytes:
        return self.blob


class IBuilderConfig:
    __slots__ = ("flags", "pools", "builder_optimization_level", "default_device_type", "DLA_core",
                 "int8_calibrator", "profiles", "timing_cache")

    def __init__(self) -> None:
        self.flags, self.pools, self.profiles = set(), {}, []
        self.builder_optimization_level, self.default_device_type, self.DLA_core = 3, DeviceType.GPU, -1
        self.int8_calibrator, self.timing_cache = None, None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self.timing_cache


class Builder:
    __slots__ = ("logger",)

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    @property
    def num_DLA_cores(self) -> int:
        return NUM_DLA_CORES[0]

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        CALLS.append(("create_network", flags))
        return INetworkDefinition()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes:
        CALLS.append(("build_serialized_network", network, config))
        flags = repr(sorted(f.name for f in config.flags)).encode()
        return b"fake-plan:" + flags + b"\n" + network.source  # the fake "runs" the ONNX itself


class TensorIOMode(Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class _DataType(Enum):
    FLOAT = 0


class Runtime:
    __slots__ = ("logger",)

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> "ICudaEngine | None":
        if not serialized_engine.startswith(b"fake-plan:"):
            return None
        return ICudaEngine(serialized_engine.split(b"\n", 1)[1])


class ICudaEngine:
    """Executes the ONNX it was "built" from with ONNX Runtime, so tests get real outputs."""

    __slots__ = ("session", "names")

    def __init__(self, onnx_bytes: bytes) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.names = [self.session.get_inputs()[0].name, self.session.get_outputs()[0].name]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.names[0] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> _DataType:
        return _DataType.FLOAT

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)


class IExecutionContext:
    __slots__ = ("engine", "shapes", "addresses")

    def __init__(self, engine: ICudaEngine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        CALLS.append(("set_input_shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.shapes:
            return self.shapes[name]
        batch = self.shapes[self.engine.names[0]][0]
        return (batch, self.engine.session.get_outputs()[0].shape[1])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        from tests.fake_pycuda import DEVICE

        source, target = self.engine.names
        x = DEVICE[self.addresses[source]].reshape(self.shapes[source])
        DEVICE[self.addresses[target]][...] = self.engine.session.run(None, {source: x})[0].ravel()
        CALLS.append(("execute_async_v3", stream_handle))
        return True


class IInt8Calibrator:
    """Base of the implicit calibrators; TensorRT calls their four methods while building."""


class IInt8EntropyCalibrator2(IInt8Calibrator):
    pass


class IInt8MinMaxCalibrator(IInt8Calibrator):
    pass


