"""A production-style inference service for an exported model: Starlette + uvicorn + ONNX Runtime, nothing else.

No TensorFlow (or Keras, tf2onnx, torch) is imported at serving time: ``GET /health`` reports which of those modules are
loaded in the server process (none, normally).

Endpoints:
    ``GET /health``    liveness/readiness: model, inputs/outputs, providers, batching settings, counters.
    ``GET /metadata``  the model file (path, sha256, size) and its ONNX metadata (producer, provenance written by
                       ``lambda-export``).
    ``POST /predict``  ``{"inputs": {"<input name>": <nested list, batch first>}}`` →
                       ``{"outputs": {"<output name>": <nested list>}, "rows": n, ...}``. Bad requests get a 4xx with a
                       JSON body ``{"error": {"code": ..., "message": ...}}``.

Concurrency: requests are validated on the event loop, then queued for a *micro-batcher* that concatenates concurrent
requests (up to ``--max-batch`` rows, waiting at most ``--max-wait-ms`` after the oldest one) into one ONNX Runtime run
on a pool of ``--sessions`` sessions, each driven by its own executor thread. Startup loads and warms the sessions;
shutdown (SIGTERM/SIGINT) stops accepting connections, finishes queued and running batches, then exits with status 0.

Run::

    python examples/python_service/app.py --model demo.onnx --port 8000        # --port 0 picks a free port
    LAMBDA_SERVICE_MODEL=demo.onnx uvicorn --factory app:create_app_from_env --app-dir examples/python_service
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

LOG = logging.getLogger("lambda_service")

#: Modules that must not be loaded in the serving process.
HEAVY_MODULES = ("tensorflow", "keras", "tf2onnx", "torch")
#: ONNX Runtime type strings this service accepts, and the NumPy dtype fed for each.
ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class ServiceError(Exception):
    """An error answered as ``{"error": {"code": code, "message": message}}`` with HTTP status ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class ModelLoadError(RuntimeError):
    """The model file is missing or ONNX Runtime cannot load it."""


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (None = dynamic dimension), ONNX type and NumPy dtype."""

    name: str
    shape: tuple[int | None, ...]
    ort_type: str
    dtype: np.dtype | None

    @classmethod
    def from_ort(cls, node: Any) -> TensorSpec:
        """Build from an ``onnxruntime.NodeArg``."""
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in node.shape)
        dtype = ORT_DTYPES.get(node.type)
        return cls(node.name, shape, node.type, None if dtype is None else np.dtype(dtype))

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description; dynamic dimensions are null."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.ort_type}

    def shape_text(self) -> str:
        """E.g. ``(batch, 32, 32, 3)``."""
        dims = ["batch" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(self.shape)]
        return "(" + ", ".join(dims) + ")"


@dataclass
class ServiceConfig:
    """Settings of one service instance (see ``--help`` for each)."""

    model: Path
    sessions: int = 1
    threads: int | None = None
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_request_rows: int = 32
    max_queue_rows: int = 4096
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout_s: float = 30.0

    def threads_per_session(self) -> int:
        """Intra-op threads per session: given, or the usable cores divided among the sessions."""
        if self.threads:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.sessions)


class SessionPool:
    """``count`` ONNX Runtime sessions of one model, each used by one thread of a dedicated executor at a time."""

    def __init__(self, config: ServiceConfig) -> None:
        path = config.model
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads_per_session()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.sessions = [
                ort.InferenceSession(str(path), options, providers=config.providers) for _ in range(config.sessions)
            ]
        except Exception as error:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {error}") from error
        first = self.sessions[0]
        self.inputs = [TensorSpec.from_ort(node) for node in first.get_inputs()]
        self.outputs = [TensorSpec.from_ort(node) for node in first.get_outputs()]
        unsupported = [spec.name for spec in self.inputs if spec.dtype is None]
        if unsupported:
            raise ModelLoadError(f"{path}: inputs {unsupported} have types this service does not accept")
        self.providers = first.get_providers()
        self.threads = options.intra_op_num_threads
        self.metadata = first.get_modelmeta()
        #: Requests can be concatenated along axis 0 only if every input and output has a dynamic batch dimension.
        self.batchable = all(spec.shape and spec.shape[0] is None for spec in self.inputs + self.outputs)
        self._free: SimpleQueue[ort.InferenceSession] = SimpleQueue()
        for session in self.sessions:
            self._free.put(session)
        self.executor = ThreadPoolExecutor(max_workers=len(self.sessions), thread_name_prefix="ort-session")

    @property
    def size(self) -> int:
        return len(self.sessions)

    def warm_up(self) -> None:
        """Run one zero batch through every session (only when all non-batch dimensions are static)."""
        if not all(None not in spec.shape[1:] for spec in self.inputs):
            return
        feeds = {
            spec.name: np.zeros((1 if spec.shape[0] is None else spec.shape[0], *spec.shape[1:]), spec.dtype)
            for spec in self.inputs
        }
        for session in self.sessions:
            session.run(None, feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Blocking inference on a free session (called from the executor)."""
        session = self._free.get()
        try:
            values = session.run(None, feeds)
        finally:
            self._free.put(session)
        return {spec.name: value for spec, value in zip(self.outputs, values, strict=True)}

    def close(self) -> None:
        """Wait for running inferences and stop the executor threads."""
        self.executor.shutdown(wait=True)


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    signature: tuple[Any, ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float


@dataclass
class Stats:
    """Counters reported by ``/health``."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    largest_batch: int = 0
    client_errors: int = 0
    server_errors: int = 0


class MicroBatcher:
    """Queues validated requests and runs them in batches on a :class:`SessionPool`.

    A batch holds requests with the same per-row shapes, at most ``max_batch`` rows (a single larger request runs
    alone); the batcher waits at most ``max_wait_s`` after the oldest queued request for more to arrive, and while all
    sessions are busy the queue keeps growing into the next batch. Each request gets back its own slice of the outputs.
    """

    def __init__(self, pool: SessionPool, config: ServiceConfig, stats: Stats) -> None:
        self.pool = pool
        self.max_batch = config.max_batch if pool.batchable else 1
        self.max_wait_s = config.max_wait_ms / 1e3 if pool.batchable else 0.0
        self.max_queue_rows = config.max_queue_rows
        self.stats = stats
        self.queued_rows = 0
        self._pending: deque[_Pending] = deque()
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the batching task (needs the running event loop)."""
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.pool.size)
        self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        """Refuse new requests, run everything queued, wait for running batches."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)  # a crashed loop was logged already
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def submit(self, feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Queue one validated request and wait for its outputs."""
        if self._stopping or self._task is None or self._task.done() or self._wakeup is None:
            raise ServiceError(503, "shutting_down", "the service is shutting down")
        if self.queued_rows + rows > self.max_queue_rows:
            raise ServiceError(
                503, "overloaded", f"more than {self.max_queue_rows} rows queued; retry later", {"Retry-After": "1"}
            )
        loop = asyncio.get_running_loop()
        signature = tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feeds.items()))
        item = _Pending(feeds, rows, signature, loop.create_future(), loop.time())
        self._pending.append(item)
        self.queued_rows += rows
        self._wakeup.set()
        return await item.future

    def _rows_like(self, signature: tuple[Any, ...]) -> int:
        return sum(p.rows for p in self._pending if p.signature == signature and not p.future.done())

    def _take(self, signature: tuple[Any, ...]) -> list[_Pending]:
        """Remove and return the oldest requests with this signature that fit in one batch."""
        batch: list[_Pending] = []
        rest: deque[_Pending] = deque()
        rows = 0
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():  # cancelled (timed out) while queued
                self.queued_rows -= item.rows
            elif item.signature == signature and (not batch or rows + item.rows <= self.max_batch):
                batch.append(item)
                rows += item.rows
                self.queued_rows -= item.rows
            else:
                rest.append(item)
        self._pending = rest
        return batch

    async def _loop(self) -> None:
        try:
            await self._batch_forever()
        except Exception as error:  # a bug here must not leave requests hanging until their timeout
            LOG.exception("the micro-batcher stopped")
            self._stopping = True
            while self._pending:
                item = self._pending.popleft()
                if not item.future.done():
                    item.future.set_exception(error)
            raise

    async def _batch_forever(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            while self._pending and self._pending[0].future.done():
                self.queued_rows -= self._pending.popleft().rows
            if not self._pending:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._pending[0]
            deadline = first.enqueued + self.max_wait_s
            while not self._stopping and self._rows_like(first.signature) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            await self._slots.acquire()  # a session is free; requests that came meanwhile join this batch
            batch = self._take(first.signature)
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        assert self._slots is not None
        rows = sum(item.rows for item in batch)
        try:
            names = batch[0].feeds.keys()
            feeds = (
                batch[0].feeds
                if len(batch) == 1
                else {name: np.concatenate([item.feeds[name] for item in batch]) for name in names}
            )
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.pool.executor, self.pool.run, feeds)
            if len(batch) > 1 and any(value.shape[:1] != (rows,) for value in outputs.values()):
                raise RuntimeError(f"an output's first dimension is not the batch of {rows} rows")
        except Exception as error:
            LOG.exception("inference failed for a batch of %d rows", rows)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, rows)
            offset = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(
                        {name: value[offset : offset + item.rows] for name, value in outputs.items()}
                    )
                offset += item.rows
        finally:
            self._slots.release()


# --- request parsing and validation ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ServiceError(422, "non_finite", f"the request contains {name}; inputs must be finite numbers")


async def read_json(request: Request, limit: int) -> Any:
    """Read a JSON body of at most ``limit`` bytes (413 above), rejecting NaN/Infinity literals (422)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ServiceError(
            415, "unsupported_media_type", "send the request body as JSON (Content-Type: application/json)"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, "body_too_large", f"the body has {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ServiceError(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
    if not body:
        raise ServiceError(400, "empty_body", 'empty body; send {"inputs": {"<name>": [...]}}')
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ServiceError(400, "invalid_json", "the JSON is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ServiceError(400, "invalid_json", f"the body is not valid JSON: {error}") from None


def _to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    """Convert one input's nested list to an array of the model's dtype, checking type, shape and finiteness."""
    assert spec.dtype is not None
    where = f"input {spec.name!r}"
    if not isinstance(value, list):
        raise ServiceError(
            422, "invalid_input", f"{where} must be a nested list of numbers of shape {spec.shape_text()}"
        )
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        raise ServiceError(
            422, "invalid_input", f"{where} is a ragged nested list (sub-lists of unequal length)"
        ) from None
    if array.dtype.kind not in "iuf":
        kind = {"b": "booleans", "U": "strings", "O": "null, ragged or mixed values"}.get(
            array.dtype.kind, "non-numbers"
        )
        raise ServiceError(422, "invalid_dtype", f"{where} contains {kind}; expected numbers ({spec.ort_type})")
    if array.ndim != len(spec.shape) or any(
        want is not None and got != want for got, want in zip(array.shape, spec.shape, strict=True)
    ):
        raise ServiceError(
            422, "invalid_shape", f"{where} has shape {tuple(array.shape)}; the model expects {spec.shape_text()}"
        )
    if (spec.dtype.kind in "iu" and array.dtype.kind == "f") and (
        not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array))
    ):
        raise ServiceError(422, "invalid_dtype", f"{where} must hold integers ({spec.ort_type})")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(array, dtype=spec.dtype)
    if spec.dtype.kind == "f" and not np.all(np.isfinite(converted)):
        count = int(np.size(converted) - np.count_nonzero(np.isfinite(converted)))
        raise ServiceError(
            422, "non_finite", f"{where} has {count} value(s) that are not finite as {spec.dtype.name} (out of range)"
        )
    return converted


def validate_request(payload: Any, specs: list[TensorSpec], max_rows: int) -> tuple[dict[str, np.ndarray], int]:
    """Check the request body against the model's inputs; return the feeds and the number of rows (batch size)."""
    expected = {spec.name: spec.shape_text() for spec in specs}
    usage = 'the body must be a JSON object {"inputs": {name: nested list}} with inputs ' + json.dumps(expected)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
        raise ServiceError(422, "invalid_request", usage)
    extra = sorted(set(payload) - {"inputs"})
    if extra:
        raise ServiceError(422, "invalid_request", f"unknown top-level field(s) {extra}; {usage}")
    inputs = payload["inputs"]
    missing = [name for name in expected if name not in inputs]
    unknown = sorted(set(inputs) - set(expected))
    if missing or unknown:
        raise ServiceError(
            422, "invalid_input_names", f"missing input(s) {missing}, unknown input(s) {unknown}; {usage}"
        )
    feeds = {spec.name: _to_array(inputs[spec.name], spec) for spec in specs}
    batch_sizes = {array.shape[0] if array.ndim else 1 for array in feeds.values()}
    if len(batch_sizes) != 1:
        raise ServiceError(422, "invalid_shape", f"the inputs have different batch sizes {sorted(batch_sizes)}")
    rows = batch_sizes.pop()
    if rows < 1:
        raise ServiceError(422, "invalid_shape", "the batch is empty")
    if rows > max_rows:
        raise ServiceError(413, "batch_too_large", f"the request has {rows} rows; the limit is {max_rows} per request")
    return feeds, rows


# --- the application ---------------------------------------------------------------------------------------------


@dataclass
class Service:
    """Everything an endpoint needs: settings, sessions, batcher, counters."""

    config: ServiceConfig
    pool: SessionPool
    stats: Stats
    batcher: MicroBatcher
    sha256: str
    started: float = field(default_factory=time.monotonic)
    draining: bool = False

    def model_info(self) -> dict[str, Any]:
        return {
            "model": self.config.model.name,
            "inputs": [spec.describe() for spec in self.pool.inputs],
            "outputs": [spec.describe() for spec in self.pool.outputs],
        }


def _service(request: Request) -> Service:
    return request.app.state.service


async def health(request: Request) -> Response:
    """Liveness and readiness, with what is loaded and how the service batches."""
    service = _service(request)
    loaded = [name for name in HEAVY_MODULES if name in sys.modules]
    body = {
        "status": "draining" if service.draining else "ok",
        **service.model_info(),
        "providers": service.pool.providers,
        "onnxruntime_version": ort.__version__,
        "sessions": service.pool.size,
        "threads_per_session": service.pool.threads,
        "batching": {
            "enabled": service.pool.batchable,
            "max_batch": service.batcher.max_batch,
            "max_wait_ms": service.batcher.max_wait_s * 1e3,
            "queued_rows": service.batcher.queued_rows,
        },
        "stats": vars(service.stats),
        "uptime_s": round(time.monotonic() - service.started, 3),
        "pid": os.getpid(),
        "heavy_modules_loaded": loaded,
        "tensorflow_loaded": "tensorflow" in sys.modules,
    }
    return JSONResponse(body, status_code=503 if service.draining else 200)


async def metadata(request: Request) -> Response:
    """The model file and the metadata stored in it (``lambda-export`` writes its provenance there)."""
    service = _service(request)
    meta = service.pool.metadata
    return JSONResponse(
        {
            **service.model_info(),
            "path": str(service.config.model),
            "sha256": service.sha256,
            "size_bytes": service.config.model.stat().st_size,
            "producer_name": meta.producer_name,
            "graph_name": meta.graph_name,
            "domain": meta.domain,
            "description": meta.description,
            "version": None if meta.version == 2**63 - 1 else meta.version,  # ORT reports INT64_MAX when unset
            "custom_metadata": dict(meta.custom_metadata_map),
        }
    )


async def predict(request: Request) -> Response:
    """Validate the JSON request, run it through the micro-batcher, return the outputs as nested lists."""
    service = _service(request)
    start = time.perf_counter()
    payload = await read_json(request, service.config.max_body_bytes)
    feeds, rows = validate_request(payload, service.pool.inputs, service.config.max_request_rows)
    try:
        async with asyncio.timeout(service.config.request_timeout_s):
            outputs = await service.batcher.submit(feeds, rows)
    except TimeoutError:
        raise ServiceError(504, "timeout", f"no result within {service.config.request_timeout_s} s") from None
    except ServiceError:
        raise
    except Exception as error:
        raise ServiceError(500, "inference_failed", f"{type(error).__name__}: {error}") from None
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ServiceError(500, "non_finite_output", f"the model produced non-finite values in {name!r}")
    service.stats.requests += 1
    service.stats.rows += rows
    return JSONResponse(
        {
            "model": service.config.model.name,
            "rows": rows,
            "outputs": {name: value.tolist() for name, value in outputs.items()},
            "latency_ms": round((time.perf_counter() - start) * 1e3, 3),
        }
    )


async def _service_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServiceError)
    service = getattr(request.app.state, "service", None)
    if service is not None:
        if error.status >= 500:
            service.stats.server_errors += 1
        else:
            service.stats.client_errors += 1
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message}}, status_code=error.status, headers=error.headers
    )


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": error.detail}}, status_code=error.status_code, headers=error.headers
    )


def create_app(config: ServiceConfig, announce: str | None = None) -> Starlette:
    """Load the model (raises :class:`ModelLoadError`) and build the ASGI app.

    Args:
        config: service settings.
        announce: if given, printed as ``READY <announce>`` on stdout once the service accepts requests.
    """
    pool = SessionPool(config)
    pool.warm_up()
    stats = Stats()
    service = Service(
        config=config,
        pool=pool,
        stats=stats,
        batcher=MicroBatcher(pool, config, stats),
        sha256=hashlib.sha256(config.model.read_bytes()).hexdigest(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.batcher.start()
        LOG.info(
            "serving %s: inputs %s, providers %s, %d session(s) x %d thread(s), batching %s",
            config.model,
            [f"{s.name}{s.shape_text()}" for s in pool.inputs],
            pool.providers,
            pool.size,
            pool.threads,
            f"up to {service.batcher.max_batch} rows / {config.max_wait_ms} ms" if pool.batchable else "off",
        )
        if announce:
            print(f"READY {announce}", flush=True)
        try:
            yield
        finally:
            service.draining = True
            await service.batcher.stop()
            pool.close()
            LOG.info("shutdown complete: %s", vars(stats))

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metadata", metadata, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
        ],
        exception_handlers={ServiceError: _service_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory``: the model path comes from ``LAMBDA_SERVICE_MODEL``."""
    model = os.environ.get("LAMBDA_SERVICE_MODEL")
    if not model:
        raise SystemExit("set LAMBDA_SERVICE_MODEL to the .onnx file to serve")
    return create_app(ServiceConfig(model=Path(model)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    defaults = ServiceConfig(model=Path())
    parser = argparse.ArgumentParser(description="Serve an exported ONNX model over HTTP (ONNX Runtime only).")
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file (from `lambda-export`)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--sessions", type=int, default=defaults.sessions, help="ONNX Runtime sessions (default 1)")
    parser.add_argument("--threads", type=int, help="intra-op threads per session (default: cores / sessions)")
    parser.add_argument("--provider", action="append", help="execution provider, repeatable (default CPU)")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, help="rows per ORT run (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms, help="batching wait (default 2)")
    parser.add_argument("--max-request-rows", type=int, default=defaults.max_request_rows, help="rows per request")
    parser.add_argument("--max-queue-rows", type=int, default=defaults.max_queue_rows, help="queued rows before 503")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, help="request body limit")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s, help="seconds (504)")
    parser.add_argument("--graceful-timeout", type=int, default=10, help="seconds to finish requests at shutdown")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    for name in ("sessions", "max_batch", "max_request_rows", "max_queue_rows", "max_body_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.max_wait_ms < 0 or args.request_timeout <= 0:
        parser.error("--max-wait-ms must be >= 0 and --request-timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Load the model, bind the socket, serve until SIGTERM/SIGINT; returns the exit status."""
    import uvicorn  # only needed to serve, not to import create_app

    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServiceConfig(
        model=args.model,
        sessions=args.sessions,
        threads=args.threads,
        providers=args.provider or ["CPUExecutionProvider"],
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_request_rows=args.max_request_rows,
        max_queue_rows=args.max_queue_rows,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout,
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # listen now: clients that connect right after READY wait in the backlog
        host, port = sock.getsockname()[:2]
        url = f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"
        app = create_app(config, announce=url)
    except (OSError, ModelLoadError) as error:
        sock.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_graceful_shutdown=args.graceful_timeout,
            lifespan="on",
        )
    )
    # uvicorn handles SIGTERM/SIGINT gracefully, then re-raises the signal to the handler that was installed before
    # it started; make that one a no-op so that a graceful shutdown exits with status 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
