"""Serve a model of the Triton repository behind a real Triton server, and measure it from
the client side (``bench-triton``).

PyTriton (``nvidia-pytriton``) bundles a real ``tritonserver``; it serves Python callables
through Triton's Python backend. We bind our ONNX Runtime runner on the repository's own
``1/model.onnx`` to it on localhost, under the model name, input/output names and dims
that the repository's ``config.pbtxt`` declares: they are read from that file (parsed
with Triton's ``ModelConfig`` message from tritonclient), so the served model and the
repository cannot drift apart. Clients (tritonclient, HTTP or gRPC) then see what a Triton
with the ONNX Runtime backend would serve, with Triton's HTTP/gRPC front end, scheduler
and dynamic batcher in the path; only the backend differs (Python → ONNX Runtime here,
the onnxruntime/TensorRT backends on NVIDIA hardware).

Two things about PyTriton's bundled server on a workstation, each handled in
:func:`python_backend_environment`: its Python-backend stub links ``libpython3.X.so`` by
name, and finds the system's copy first when the interpreter is another build of the same
version (pyenv), which then fails inside the stub (``RLock`` lacks ``_recursion_count``);
and the stub's compiled side reads NumPy 1.x arrays only (under NumPy 2 every output
arrives empty), so where this environment has NumPy 2 the stub runs in a small
environment of its own with NumPy 1.x and pyzmq (``make setup`` makes it).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import sys
import sysconfig
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.artifacts import provenance, write_json
from pipeline.config import Config, TritonConfig
from pipeline.device.evaluate import evaluation_split
from pipeline.device.latency import measure_latency, summarize
from pipeline.device.triton import PREPROCESSING_KEY, REPOSITORY, VERSION, model_name
from pipeline.errors import MissingDependencyError, PipelineError, StaleArtifactError, one_line
from pipeline.onnx_meta import read_metadata
from pipeline.optional import import_optional
from pipeline.plots import plot_served_latency
from pipeline.preprocess import Preprocessing, load_images
from pipeline.runners.registry import open_model

HOST = "127.0.0.1"
PYTRITON_HOW = ("make setup installs it (pip install --no-deps -r requirements-pytriton.txt, and the "
                "Python-backend stub's environment)")
TRITONCLIENT_HOW = "pip install 'tritonclient[all]' (make setup installs it)"
STUB_ENV = "triton-stub"  # beside this environment's bin/: NumPy 1.x and pyzmq for PyTriton's stub
STUB_REQUIREMENTS = "numpy 1.x and pyzmq"


class ServingError(PipelineError):
    """A served model that failed to start, or a request to it that failed."""


# --- what the repository declares ------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One model folder of the repository as its config.pbtxt declares it."""

    folder: Path
    name: str
    input_name: str
    input_dims: Tuple[int, ...]
    output_name: str
    output_dims: Tuple[int, ...]
    max_batch: int
    preferred_batch: Tuple[int, ...]
    max_queue_delay_us: int
    labels: Tuple[str, ...]
    preprocessing: Preprocessing


def read_model_config(path: Path) -> Any:
    """A config.pbtxt parsed into Triton's own ``ModelConfig`` protobuf message; a file
    Triton would refuse to parse is refused here, naming it."""
    pb = import_optional("tritonclient.grpc.model_config_pb2", "to read Triton's config.pbtxt", TRITONCLIENT_HOW)
    from google.protobuf import text_format

    try:
        return text_format.Parse(Path(path).read_text(encoding="utf-8"), pb.ModelConfig())
    except FileNotFoundError:
        raise StaleArtifactError(f"{path}: not found; run make triton first") from None
    except text_format.ParseError as exc:
        raise StaleArtifactError(f"{path}: not a valid Triton model config ({exc})") from None


def served_model(folder: Path) -> ServedModel:
    """What ``folder``'s config.pbtxt and labels.txt declare (one input, one output)."""
    folder = Path(folder)
    config = read_model_config(folder / "config.pbtxt")
    if len(config.input) != 1 or len(config.output) != 1:
        raise StaleArtifactError(f"{folder / 'config.pbtxt'}: expected one input and one output")
    inp, out = config.input[0], config.output[0]
    labels = tuple((folder / out.label_filename).read_text(encoding="utf-8").splitlines()) \
        if out.label_filename else ()
    batcher = config.dynamic_batching
    pre = Preprocessing.from_dict(json.loads(config.parameters[PREPROCESSING_KEY].string_value))
    return ServedModel(folder, config.name, inp.name, tuple(inp.dims), out.name, tuple(out.dims),
                       config.max_batch_size, tuple(batcher.preferred_batch_size),
                       batcher.max_queue_delay_microseconds, labels, pre)


def repository_model(cfg: Config) -> ServedModel:
    """The ONNX model ``bench-triton`` serves: ``<name>_<serve_model>_onnx`` of the run's repository."""
    folder = cfg.run_dir / REPOSITORY / f"{model_name(cfg.run_name)}_{cfg.triton.serve_model}_onnx"
    if not (folder / "config.pbtxt").is_file():
        raise StaleArtifactError(f"{folder}: no such model in the repository; run make triton "
                                 f"TARGET={cfg.engine.target} first")
    return served_model(folder)


# --- the server ------------------------------------------------------------------------------


def free_ports(count: int) -> List[int]:
    """Ports nothing listens on now, so a server starts beside anything else running."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def stub_environment() -> Path:
    """Where PyTriton's Python-backend stub finds NumPy 1.x and pyzmq: this environment if
    its NumPy is 1.x, else ``<prefix>/triton-stub``, which must hold them."""
    if int(np.__version__.split(".")[0]) < 2:
        return Path(sys.exec_prefix)
    env = Path(sys.prefix) / STUB_ENV
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = env / "lib" / version / "site-packages"
    if not list(site.glob("numpy-1.*.dist-info")) or not (site / "zmq").is_dir():
        raise MissingDependencyError(f"{env}: PyTriton's Python-backend stub needs {STUB_REQUIREMENTS} "
                                     f"(this environment has NumPy {np.__version__}, whose arrays the stub "
                                     f"returns empty); {PYTRITON_HOW}")
    return env


@contextlib.contextmanager
def python_backend_environment() -> Iterator[None]:
    """While a PyTriton server starts: this interpreter's libpython first on the library
    path, and the stub's Python environment (see the module's docstring for why)."""
    server = import_optional("pytriton.server.triton_server", "to serve models with Triton", PYTRITON_HOW)
    env = stub_environment()
    saved_path = os.environ.get("LD_LIBRARY_PATH")
    saved_env = server.get_triton_python_backend_python_env
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir and list(Path(libdir).glob("libpython3*.so*")):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, saved_path) if p)
    server.get_triton_python_backend_python_env = lambda: env
    try:
        yield
    finally:
        server.get_triton_python_backend_python_env = saved_env
        if saved_path is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = saved_path


class TritonServing:
    """A PyTriton server on localhost serving ``model`` (a folder of the repository)
    through our ONNX Runtime runner on its ``1/model.onnx``. A context manager: the server
    stops, and the runner closes, on the way out whatever happened."""

    def __init__(self, model: ServedModel, threads: int = 0, log_file: Optional[Path] = None) -> None:
        self.model = model
        self.threads = threads
        self.log_file = log_file
        self.http_url = self.grpc_url = ""
        self.batch_sizes: List[int] = []  # what Triton's dynamic batcher handed the runner, in order
        self._triton: Any = None
        self._runner: Any = None

    def __enter__(self) -> "TritonServing":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        triton = import_optional("pytriton.triton", "to serve models with Triton", PYTRITON_HOW)
        self._runner, _ = open_model(self.model.folder / VERSION / "model.onnx", self.threads, "onnxruntime")
        http, grpc, metrics = free_ports(3)
        settings = triton.TritonConfig(http_address=HOST, http_port=http, grpc_address=HOST, grpc_port=grpc,
                                       allow_metrics=False, metrics_port=metrics, exit_timeout_secs=5,
                                       log_file=self.log_file)
        if self.log_file is not None:
            Path(self.log_file).parent.mkdir(parents=True, exist_ok=True)
        with python_backend_environment():
            self._triton = triton.Triton(config=settings)
            self._bind()
            try:
                self._triton.run()
            except Exception as exc:  # PyTriton's and tritonclient's own exception types
                raise ServingError(f"{self.model.folder}: Triton did not start serving it ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}; log: {self.log_file})") from None
        self.http_url, self.grpc_url = f"{HOST}:{http}", f"{HOST}:{grpc}"

    def _bind(self) -> None:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

        model, runner, sizes = self.model, self._runner, self.batch_sizes

        @batch
        def infer(**inputs: np.ndarray) -> Dict[str, np.ndarray]:
            sizes.append(len(inputs[model.input_name]))  # list.append: atomic across threads
            return {model.output_name: runner.run(inputs[model.input_name])}

        batcher = DynamicBatcher(max_queue_delay_microseconds=model.max_queue_delay_us,
                                 preferred_batch_size=list(model.preferred_batch) or None)
        self._triton.bind(model_name=model.name, infer_func=infer,
                          inputs=[Tensor(name=model.input_name, dtype=np.float32, shape=model.input_dims)],
                          outputs=[Tensor(name=model.output_name, dtype=np.float32, shape=model.output_dims)],
                          config=ModelConfig(max_batch_size=model.max_batch, batcher=batcher), strict=True)

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def url(self, protocol: str) -> str:
        return self.http_url if protocol == "http" else self.grpc_url


# --- the client ------------------------------------------------------------------------------


class TritonClient:
    """tritonclient over HTTP or gRPC for one served model: logits for a float batch, and
    the model config the server reports. One per thread (tritonclient's clients are not
    meant to be shared between threads)."""

    def __init__(self, protocol: str, url: str, model: ServedModel) -> None:
        self.module = import_optional(f"tritonclient.{protocol}", f"to send requests over {protocol}",
                                      TRITONCLIENT_HOW)
        self.protocol = protocol
        self.model = model
        self.client = self.module.InferenceServerClient(url)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        request = self.module.InferInput(self.model.input_name, list(batch.shape), "FP32")
        request.set_data_from_numpy(np.ascontiguousarray(batch, np.float32))
        wanted = [self.module.InferRequestedOutput(self.model.output_name)]
        try:
            result = self.client.infer(self.model.name, [request], outputs=wanted)
        except Exception as exc:  # tritonclient's InferenceServerException and transport errors
            raise ServingError(f"{self.model.name}: {self.protocol} request failed ({one_line(exc)})") from None
        return result.as_numpy(self.model.output_name)

    def reported_config(self) -> Dict[str, Any]:
        """The served model's config as the server reports it: name, max batch, and each
        input's and output's name, data type and dims."""
        if self.protocol == "grpc":
            from google.protobuf import json_format

            reply = self.client.get_model_config(self.model.name).config
            config = json_format.MessageToDict(reply, preserving_proto_field_name=True)
        else:
            config = self.client.get_model_config(self.model.name)
        tensors = {kind: [{"name": t["name"], "data_type": t["data_type"], "dims": [int(d) for d in t["dims"]]}
                          for t in config.get(kind, [])] for kind in ("input", "output")}
        return {"name": config["name"], "max_batch_size": int(config.get("max_batch_size", 0)), **tensors}

    def close(self) -> None:
        self.client.close()


# --- the benchmark ---------------------------------------------------------------------------


def run(cfg: Config) -> Path:
    """``bench-triton``: serve the run's ONNX model, check the served labels against the
    runner's, time the levels; writes bench/triton.json and bench/triton.png."""
    require_serving(cfg.triton.bench_protocol)
    model = repository_model(cfg)
    images = bench_images(cfg, model)
    expected, direct = direct_figures(model, images, cfg.triton.threads)
    out = cfg.run_dir / "bench"
    with TritonServing(model, cfg.triton.threads, out / "triton-server.log") as server:
        record = bench_served(server, model, images, cfg.triton)
    agreement = float(np.mean(np.asarray(record.pop("served_top1")) == expected))
    record = {**provenance("bench-triton", {"model": model.folder / VERSION / "model.onnx",
                                            "config": model.folder / "config.pbtxt"}),
              "model": model.name, "top1_agreement_with_runner": agreement,
              "runner_alone_p50_ms": direct.median, **record}
    path = write_json(out / "triton.json", record)
    plot_served_latency(record["levels"], out / "triton.png",
                        f"{model.name} served by Triton (PyTriton, ONNX Runtime), {record['protocol']}")
    print_levels(record)
    if agreement < 1.0:
        raise ServingError(f"{path}: the served model's top-1 differs from the runner's on "
                           f"{1 - agreement:.1%} of the images")
    return path


def require_serving(protocol: str) -> None:
    """Fail before any work where the server or the client cannot be imported."""
    import_optional("pytriton.triton", "to serve models with Triton", PYTRITON_HOW)
    import_optional(f"tritonclient.{protocol}", f"to send requests over {protocol}", TRITONCLIENT_HOW)
    stub_environment()


def bench_images(cfg: Config, model: ServedModel) -> np.ndarray:
    """``triton.bench_images`` val images spread over the split, preprocessed as the
    served config's parameters say (what a client reads back): float32 (N, 3, S, S)."""
    split = evaluation_split(cfg, *model_classes(model))
    picks = np.unique(np.linspace(0, len(split) - 1, min(cfg.triton.bench_images, len(split))).astype(int))
    pre = model.preprocessing
    return pre.normalize(load_images([split.files[i] for i in picks], pre.prepare, cfg.data.workers,
                                     "load images", show_progress=False))


def model_classes(model: ServedModel) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The model's class ids and names from the ONNX it serves, which the data's folders
    are matched against."""
    meta = read_metadata(model.folder / VERSION / "model.onnx")
    return tuple(meta["classes"]), tuple(meta["class_names"])


def direct_figures(model: ServedModel, images: np.ndarray, threads: int = 0) -> Tuple[np.ndarray, Any]:
    """The runner alone, outside any server: its top-1 on ``images`` (what the served answers
    must equal) and its latency on one image (what serving adds is measured against)."""
    runner, _ = open_model(model.folder / VERSION / "model.onnx", threads, "onnxruntime")
    try:
        top1 = np.concatenate([runner.run(images[i:i + model.max_batch]).argmax(1)
                               for i in range(0, len(images), model.max_batch)])
        return top1, measure_latency(runner, images[:1], runs=50, warmup_s=0.5)[0]
    finally:
        runner.close()


def served_top1(client: TritonClient, images: np.ndarray) -> np.ndarray:
    """Top-1 of every image as served, in batches up to the model's max batch."""
    step = client.model.max_batch
    return np.concatenate([client.infer(images[i:i + step]).argmax(1) for i in range(0, len(images), step)])


def bench_served(server: TritonServing, model: ServedModel, images: np.ndarray,
                 settings: TritonConfig) -> Dict[str, Any]:
    """The served top-1 of every image (also the warm-up), then each concurrency level."""
    protocol = settings.bench_protocol
    client = TritonClient(protocol, server.url(protocol), model)
    try:
        top1 = served_top1(client, images)
    finally:
        client.close()
    levels = []
    for level in settings.bench_concurrency:
        del server.batch_sizes[:]
        timed = measure_level(lambda: TritonClient(protocol, server.url(protocol), model), level, images,
                              settings.bench_requests, settings.bench_seconds)
        levels.append({**timed, "runner_batches": len(server.batch_sizes),
                       "mean_batch": float(np.mean(server.batch_sizes)) if server.batch_sizes else 0.0})
    return {"protocol": protocol, "server": server_description(), "batch_per_request": 1,
            "images": int(len(images)), "cores": os.cpu_count(), "runner_threads": settings.threads or os.cpu_count(),
            "limits": {"requests": settings.bench_requests, "seconds": settings.bench_seconds},
            "served_top1": top1.tolist(), "levels": levels}


def measure_level(connect: Callable[[], TritonClient], concurrency: int, images: np.ndarray,
                  max_requests: int, max_seconds: float) -> Dict[str, Any]:
    """``concurrency`` threads, each with its own client, send one image a request until
    ``max_requests`` have been sent in all or ``max_seconds`` have passed; latency per
    request (ms) and throughput (images/s over the level's wall time)."""
    clients = [connect() for _ in range(concurrency)]
    issued = itertools.count()
    start = threading.Event()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            t0 = time.perf_counter()
            deadline = t0 + max_seconds
            futures = [pool.submit(_send_until, c, images, issued, max_requests, deadline, start) for c in clients]
            start.set()
            samples = [ms for future in futures for ms in future.result()]
            wall = time.perf_counter() - t0
    finally:
        for client in clients:
            client.close()
    stats = summarize(np.asarray(samples, dtype=np.float64), 1, f"concurrency {concurrency}")
    return {"concurrency": concurrency, "requests": len(samples), "seconds": wall,
            "stopped_by": "requests" if len(samples) >= max_requests else "time",
            "p50_ms": stats.median, "p90_ms": stats.p90, "p99_ms": stats.p99, "mean_ms": stats.mean,
            "max_ms": stats.max, "throughput": len(samples) / wall}


def _send_until(client: TritonClient, images: np.ndarray, issued: Iterator[int], max_requests: int,
                deadline: float, start: threading.Event) -> List[float]:
    start.wait()
    samples = []
    while time.perf_counter() < deadline:
        index = next(issued)  # itertools.count: one number per call, across threads
        if index >= max_requests:
            break
        image = images[index % len(images)][None]  # (1, 3, S, S)
        t0 = time.perf_counter()
        client.infer(image)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def server_description() -> str:
    from importlib.metadata import version

    return (f"PyTriton {version('nvidia-pytriton')} (Triton's Python backend -> ONNX Runtime on the CPU), "
            f"tritonclient {version('tritonclient')}")


def print_levels(record: Dict[str, Any]) -> None:
    print(f"{record['model']} served by Triton over {record['protocol']} ({record['images']} val images, "
          f"batch 1 a request, top-1 as the runner's on {record['top1_agreement_with_runner']:.0%}; "
          f"the runner alone: {record['runner_alone_p50_ms']:.2f} ms p50):")
    print(format_levels(record["levels"]))


def format_levels(levels: Sequence[Dict[str, Any]]) -> str:
    """The served-latency table (Markdown, as the README and reports show tables)."""
    rows = ["| concurrency | requests | p50 ms | p90 ms | p99 ms | images/s | mean batch run | stopped by |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    rows += [f"| {lv['concurrency']} | {lv['requests']} | {lv['p50_ms']:.2f} | {lv['p90_ms']:.2f} | "
             f"{lv['p99_ms']:.2f} | {lv['throughput']:.1f} | {lv['mean_batch']:.1f} | {lv['stopped_by']} |"
             for lv in levels]
    return "\n".join(rows)
