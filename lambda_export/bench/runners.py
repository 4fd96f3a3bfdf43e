"""What gets timed: TensorFlow functions, the ONNX exports ONNX Runtime runs, their inputs and files.

* TensorFlow: :func:`configure_tensorflow` (thread pools, before TF runs anything) and :func:`tf_function` (a
  concrete ``tf.function`` in graph mode or with XLA).
* ONNX: :func:`portable_export` (the export that is timed: what :func:`lambda_export.conversion.convert` returns with
  ``optimize="speed"``, the default, and, to compare, its ``optimize="size"`` graph), :func:`int8_export` (what
  ``--quantize int8`` makes of it), :func:`export_tf2onnx_plain` (the plain tf2onnx anchor) and :func:`matmul_model`
  (the GEMM ceiling), :func:`conv_model` (the convolution ceiling); ONNX Runtime sessions come from :func:`lambda_export.ort.cpu_session`.
* Inputs and outputs: :func:`make_feed` (seeded inputs), :func:`as_numpy` / :func:`first_output`.
* Runners built in a worker process of their own (for :class:`lambda_export.timing.IsolatedRunners`):
  :func:`ort_worker_runner`, :func:`openvino_worker_runner`, :func:`keras_worker_runner`.
* Files: :func:`serialize_model` (through :func:`lambda_export.io.write_model_file`) and :func:`graph_info` (nodes,
  size, op histogram of a written export).

TensorFlow, tf2onnx, ONNX and the conversion are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lambda_export.bench.settings import BenchSettings

__all__ = [
    "Int8Export",
    "PortableExport",
    "as_numpy",
    "configure_tensorflow",
    "conv_model",
    "export_tf2onnx_plain",
    "first_output",
    "graph_info",
    "int8_export",
    "keras_worker_runner",
    "make_feed",
    "matmul_model",
    "openvino_runner",
    "openvino_worker_runner",
    "ort_worker_runner",
    "portable_export",
    "serialize_model",
    "tf_function",
]


def configure_tensorflow(threads: int) -> dict[str, Any]:
    """Set TF's intra/inter-op thread pools to ``threads`` (must run before TF executes anything)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    note = None
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:  # the runtime was initialised already
        note = f"could not set TF threads: {exc}"
    return {
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "note": note,
    }


def tf_function(model: Any, xla: bool, input_specs: list[Any]) -> Any:
    """The concrete ``tf.function`` (inference mode; ``jit_compile=xla``) of ``model`` for ``input_specs``."""
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert
    def forward(*args: Any) -> Any:
        return model(args[0] if len(args) == 1 else list(args), training=False)

    return tf.function(forward, jit_compile=xla).get_concrete_function(*input_specs)


def as_numpy(result: Any) -> Any:
    """A TF result as host NumPy arrays (a list for several outputs), so both runtimes end with host arrays."""
    if isinstance(result, (list, tuple)):
        return [np.asarray(r) for r in result]
    if isinstance(result, dict):
        return [np.asarray(r) for r in result.values()]
    return np.asarray(result)


def first_output(result: Any) -> np.ndarray:
    """The first array of a (possibly nested) list of outputs."""
    while isinstance(result, (list, tuple)):
        result = result[0]
    return np.asarray(result)


def make_feed(inputs: Sequence[Any], batch: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs (float N(0, 1); integers in [0, 10)) for TensorInfo-like ``inputs`` at ``batch``."""
    rng = np.random.default_rng(seed)
    arrays = []
    for info in inputs:
        shape = (batch, *[int(d) for d in info.shape[1:]])
        dtype = np.dtype(info.dtype)
        if np.issubdtype(dtype, np.integer):
            arrays.append(rng.integers(0, 10, shape).astype(dtype))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def export_tf2onnx_plain(model: Any, inputs: Sequence[Any], opset: int) -> tuple[Any, str]:
    """The anchor: tf2onnx's own export with default settings (its optimisers, none of our rewrites).

    Same opset and input signature (dynamic batch) as the portable export. Returns (ModelProto, how).
    """
    import logging

    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    signature = [tf.TensorSpec(info.shape, tf.as_dtype(info.dtype), name=info.name) for info in inputs]
    from lambda_export.conversion import run_tf2onnx, tf2onnx_optimizers

    sink = io.StringIO()
    # tf2onnx's own optimizer list; each is preceded by a garbage collection, which bounds the memory and leaves
    # the graph as tf2onnx makes it
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            optimizers = tf2onnx_optimizers(einsum=True)
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, optimizers=optimizers)
            how = "tf2onnx.convert.from_keras"
        except Exception:
            function = tf.function(lambda *args: model(args[0] if len(args) == 1 else list(args), training=False))
            proto = run_tf2onnx(function, signature, opset, plain=True)
            how = "tf2onnx.convert.from_function (from_keras failed)"
    return proto, how


@dataclass
class PortableExport:
    """The exports of one Keras model that the benchmark times on ONNX Runtime.

    Attributes:
        result: what ``convert(model, optimize="speed")`` returns (its ``model`` is the timed graph, byte for byte
            the file ``lambda-export MODEL`` writes for an in-memory model).
        size_model: ``convert(model, optimize="size")``'s graph, when it was asked for, the performance passes
            changed the speed graph and the model fits in one protobuf message (else None: not timed separately).
        convert_s: seconds of the speed conversion.
        performance_passes: the passes of :data:`lambda_export.passes.pipelines.PERFORMANCE` that changed the graph.
    """

    result: Any
    size_model: Any = None
    convert_s: float = 0.0
    performance_passes: list[str] = field(default_factory=list)

    @property
    def model(self) -> Any:
        """The timed graph (``result.model``)."""
        return self.result.model


def portable_export(
    model: Any, settings: BenchSettings, input_shapes: dict[str, Any] | None = None, *, size_graph: bool = True
) -> PortableExport:
    """The export that is timed: ``convert(model, optimize="speed")`` (the default: ``lambda-export MODEL``), the
    function the command runs, not a copy of its pipeline; and, with ``size_graph`` and ``settings.compare_raw``,
    ``convert(model, optimize="size")`` (the fewest nodes) when the performance passes changed anything.

    The second conversion reuses the loaded model; it runs after the first has returned (its memory peak, ≈ 2.4× the
    largest weight, is not added to the first's) and not at all for a model over protobuf's limit.
    """
    from lambda_export.conversion import convert
    from lambda_export.io import too_large_for_protobuf
    from lambda_export.passes.pipelines import PERFORMANCE

    options = {"opset": settings.opset, "target": settings.target, "input_shapes": input_shapes}
    started = time.perf_counter()
    result = convert(model, optimize="speed", **options)
    convert_s = time.perf_counter() - started
    performance = {step.name for step in PERFORMANCE}
    export = PortableExport(result, None, convert_s, [name for name in result.passes if name in performance])
    if size_graph and settings.compare_raw and export.performance_passes and not too_large_for_protobuf(result.model):
        export.size_model = convert(model, optimize="size", loaded=result.loaded, **options).model
    return export


def openvino_runner(path: str, inputs: Sequence[Any], threads: int) -> Callable[[Sequence[np.ndarray]], Any]:
    """The ``.onnx`` file at ``path`` compiled by OpenVINO for the CPU, as a function of the input arrays.

    What a user who picks OpenVINO for the same file would run: f32 inference precision pinned (OpenVINO 2026
    compiles in bf16 by default on CPUs with AVX-512 BF16, which is not the same numbers), ``threads`` inference
    threads, the latency hint (one stream). The arrays are fed by position, in the order of ``inputs``.

    Raises:
        ImportError: OpenVINO is not installed (the ``openvino`` extra).
    """
    import openvino as ov

    compiled = ov.Core().compile_model(
        path,
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()
    positions = range(len(inputs))

    def run(arrays: Sequence[np.ndarray]) -> Any:
        return [result.copy() for result in request.infer(dict(zip(positions, arrays, strict=True))).values()]

    return run


@dataclass
class Int8Export:
    """The int8 QDQ model (``model``), the seconds it took (``quantize_s``) and what stayed in float."""

    model: Any
    quantize_s: float
    float_groups: list[str]


def int8_export(model: Any, float_model: Any, target: str) -> Int8Export:
    """The int8 QDQ model that ``lambda-export MODEL --quantize int8`` makes of ``float_model`` (the timed portable
    export): :func:`lambda_export.quantization.quantize` without ``--calibration`` (generated N(0, 1) inputs, like the
    benchmark's own), the sensitivity measurement included, no verdict (the benchmark compares outputs itself).
    """
    from lambda_export.quantization import quantize

    started = time.perf_counter()
    result = quantize(model, onnx_model=float_model, target=target, verify=False, timing=False)
    return Int8Export(result.model, time.perf_counter() - started, list(result.selection.float_groups))


def matmul_model(flops: int) -> tuple[Any, tuple[int, int, int]]:
    """A one-MatMul ONNX model (s×s input, constant s×s weight) with 2·s³ ≈ ``flops``: the GEMM ceiling."""
    import onnx
    from onnx import helper, numpy_helper

    size = round((max(flops, 2 * 64**3) / 2) ** (1 / 3))
    size = max(64, min(size, 4096))
    weight = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "matmul_ceiling",
        [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, (size, size, size)


def conv_model(channels: int = 128, size: int = 32, batch: int = 8) -> tuple[Any, int]:
    """A one-Conv ONNX model (3×3, stride 1, ``channels`` in and out, ``size``² NCHW input at ``batch``, constant
    weight) and its FLOPs (2 · multiply-adds): the convolution ceiling, the rate ONNX Runtime reaches on the kind of
    operation a convolutional network spends its time in (ResNet-like stages: 64–256 channels at 16²–64²)."""
    import onnx
    from onnx import helper, numpy_helper

    weight = np.random.default_rng(1).standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.05
    shape = [batch, channels, size, size]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])],
        "conv_ceiling",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, 2 * batch * channels * channels * 9 * size * size


def serialize_model(model: Any, folder: Path, name: str) -> tuple[str, int]:
    """Write ``model`` to ``folder/name`` (``name.data`` beside it when it is too large for protobuf, as
    :func:`lambda_export.io.write_model_file` decides); return (path, bytes on disk)."""
    from lambda_export.io import write_model_file  # here: io imports onnx, which the memory workers must not load

    path = folder / name
    return str(path), write_model_file(model, path)


def graph_info(model: Any, path: str, size: int) -> dict[str, Any]:
    """Node count, file size and op-type histogram of an export written to ``path`` (``size`` bytes on disk)."""
    import collections

    histogram = collections.Counter(node.op_type for node in model.graph.node)
    return {
        "nodes": len(model.graph.node),
        "file_bytes": size,
        "file_mb": round(size / 1e6, 3),
        "op_histogram": dict(sorted(histogram.items())),
        "file": os.path.basename(path),
    }


# Runners built inside a worker process (lambda_export.timing.IsolatedRunners): module-level functions, so that a
# spawned worker imports them by name; each returns the function of the inputs (a list of arrays, by position) to time.


def ort_worker_runner(path: str | bytes, threads: int) -> Callable[[Sequence[np.ndarray]], Any]:
    """The ``.onnx`` file at ``path`` (or a serialized model) on ONNX Runtime's CPU provider (:func:`lambda_export.ort.cpu_session`,
    ``threads`` intra-op threads), as a function of the input arrays (by position)."""
    from lambda_export.ort import cpu_session

    session = cpu_session(path, threads)
    names = [value.name for value in session.get_inputs()]

    def run(arrays: Sequence[np.ndarray]) -> Any:
        return session.run(None, dict(zip(names, arrays, strict=True)))

    return run


def openvino_worker_runner(path: str, threads: int, count: int = 1) -> Callable[[Sequence[np.ndarray]], Any]:
    """:func:`openvino_runner` for a file of ``count`` inputs (built in the worker)."""
    return openvino_runner(path, [None] * count, threads)


def keras_worker_runner(
    build: Callable[..., Any], args: tuple[Any, ...], threads: int, xla: bool
) -> Callable[[Sequence[np.ndarray]], Any]:
    """The Keras model ``build(*args)`` in TensorFlow (thread pools set to ``threads`` first), as a ``tf.function``
    in graph mode or with XLA (``xla``; traced for each new input shape, so the warm-up compiles), returning host
    arrays. The arrays become tensors once per new input list, as a caller that keeps its tensors would have them."""
    configure_tensorflow(threads)
    import tensorflow as tf

    model = build(*args)

    @tf.autograph.experimental.do_not_convert
    def forward(*tensors: Any) -> Any:
        return model(tensors[0] if len(tensors) == 1 else list(tensors), training=False)

    function = tf.function(forward, jit_compile=xla)
    held: dict[str, Any] = {"arrays": None, "tensors": None}

    def run(arrays: Sequence[np.ndarray]) -> Any:
        if held["arrays"] is not arrays:
            held["arrays"], held["tensors"] = arrays, [tf.constant(a) for a in arrays]
        return as_numpy(function(*held["tensors"]))

    return run
