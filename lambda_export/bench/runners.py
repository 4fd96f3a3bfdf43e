"""What gets timed: TensorFlow functions, the ONNX exports ONNX Runtime runs, their inputs and files.

* TensorFlow: :func:`configure_tensorflow` (thread pools, before TF runs anything) and :func:`tf_function` (a
  concrete ``tf.function`` in graph mode or with XLA).
* ONNX: :func:`portable_export` (the export that is timed: ``optimize="speed"``, the default, plus the ``optimize="size"``
  graph), :func:`export_tf2onnx_plain` (the plain tf2onnx anchor) and :func:`matmul_model` (the GEMM ceiling); ONNX
  Runtime sessions come from :func:`lambda_export.ort.cpu_session`.
* Inputs and outputs: :func:`make_feed` (seeded inputs), :func:`as_numpy` / :func:`first_output`.
* Files: :func:`serialize_model` and :func:`graph_info` (nodes, size, op histogram of a written export).

TensorFlow, tf2onnx, ONNX and the conversion are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lambda_export.bench.timing import BenchSettings

__all__ = [
    "LARGE_MODEL_BYTES",
    "as_numpy",
    "configure_tensorflow",
    "export_tf2onnx_plain",
    "first_output",
    "graph_info",
    "int8_export",
    "make_feed",
    "matmul_model",
    "openvino_runner",
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


LARGE_MODEL_BYTES = 1_900_000_000  # above this a model goes to ONNX Runtime as a file with external data, not bytes


def portable_export(model: Any, settings: BenchSettings, input_shapes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The export that is timed: the ``portable`` export with the performance passes that ``convert(...,
    optimize="speed")`` runs (the default: ``lambda-export MODEL``), and, with ``settings.compare_raw``, the
    ``optimize="size"`` graph (the fewest nodes) when the passes changed anything.

    The model is converted once (``optimize="size"``) and the passes run on a copy, exactly as ``convert`` runs
    them (same function, same target, after the same clean-up); only node names differ from a separate
    ``optimize="speed"`` conversion. Converting twice would cost a second memory peak (≈ 20× the position embedding;
    before ``conversion._collecting`` a second conversion of the 268 MB T=1024, u=4 embedding was OOM-killed).
    """
    import copy

    from lambda_export.conversion import convert
    from lambda_export.lean import serialized_size
    from lambda_export.passes import optimize_for_ort

    started = time.perf_counter()
    result = convert(model, opset=settings.opset, target=settings.target, input_shapes=input_shapes, optimize="size")
    # over protobuf's 2 GB (a 56×56, u=4 global layer) the model is neither copied nor serialized in memory: the
    # passes run in place and the size graph is not timed separately
    large = serialized_size(result.model) > LARGE_MODEL_BYTES
    speed = result.model if large else copy.deepcopy(result.model)
    performance = optimize_for_ort(speed, target=settings.target)
    convert_s = time.perf_counter() - started
    raw_bytes = result.model.SerializeToString() if settings.compare_raw and performance and not large else None
    if performance:
        result.passes = [*result.passes, *performance]
    return {
        "result": result,
        "model": speed,
        "raw_bytes": raw_bytes,
        "convert_s": convert_s,
        "performance_passes": performance,
    }


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


def int8_export(model: Any, float_model: Any, target: str) -> dict[str, Any]:
    """The int8 QDQ model that ``lambda-export MODEL --quantize int8`` makes of ``float_model`` (the timed portable
    export): :func:`lambda_export.quantization.quantize` without ``--calibration`` (generated N(0, 1) inputs, like the
    benchmark's own), the sensitivity measurement included, no verdict (the benchmark compares outputs itself).

    Returns ``model`` (the int8 ModelProto), ``quantize_s`` and ``float_groups`` (what stayed in float).
    """
    from lambda_export.quantization import quantize

    started = time.perf_counter()
    result = quantize(model, onnx_model=float_model, target=target, verify=False, timing=False)
    return {
        "model": result.model,
        "quantize_s": time.perf_counter() - started,
        "float_groups": result.selection.float_groups,
    }


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


def serialize_model(model: Any, folder: Path, name: str) -> tuple[str, int]:
    """Write ``model`` to ``folder/name`` (external data above 1.9 GB); return (path, bytes on disk)."""
    import onnx

    from lambda_export.lean import serialized_size

    path = folder / name
    if serialized_size(model) > LARGE_MODEL_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, location=name + ".data")
        size = path.stat().st_size + (folder / (name + ".data")).stat().st_size
    else:
        path.write_bytes(model.SerializeToString())
        size = path.stat().st_size
    return str(path), size


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
