"""Running the two sides of a parity check: the Keras reference and the ONNX model handed to ONNX Runtime.

* :func:`load_onnx_model`: an ``onnx.ModelProto`` as given, or read from a file with :func:`lambda_export.io.load_onnx`.
* :func:`model_bytes`: the serialized model for an ONNX Runtime session (refused above protobuf's 2 GiB limit);
  :func:`session_source`: a temporary file for one instead (with external data for a larger model). Both are
  :mod:`lambda_export.io`'s (:func:`~lambda_export.io.model_bytes`, :func:`~lambda_export.io.write_model_file`).
* :func:`keras_feed`, :func:`run_keras`: call the Keras model in inference mode on TensorFlow's CPU, as the converter's
  traced function calls it; eagerly, or (``graph=True``, the parity check's references) through a ``tf.function``
  traced once per input signature (any batch) and kept for the model (:func:`_graph_function`).

Sessions themselves come from :func:`lambda_export.ort.session`; :func:`ort_failure` turns ONNX Runtime's refusal to
load or run the graph into a :class:`~lambda_export.errors.ConversionError` naming the node.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lambda_export.errors import ConversionError, InputError
from lambda_export.io import load_onnx, write_model_file
from lambda_export.io import model_bytes as serialized
from lambda_export.loading import LoadedModel

__all__ = ["keras_feed", "load_onnx_model", "model_bytes", "ort_failure", "run_keras", "session_source"]


def load_onnx_model(onnx_model: Any) -> tuple[onnx.ModelProto, str | None]:
    """``(model, its path)``: an ``onnx.ModelProto`` as it is (path None), else a path read with ``load_onnx``.

    Raises:
        InputError: a missing or unreadable file (the message of :func:`lambda_export.io.load_onnx`).
    """
    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model, None
    path = Path(os.fspath(onnx_model))
    return load_onnx(path), str(path)


def model_bytes(model: onnx.ModelProto) -> bytes:
    """The serialized ``model`` for ``InferenceSession``.

    Raises:
        InputError: the model is larger than one protobuf message can be (2 GiB).
    """
    try:
        return serialized(model)  # tensor by tensor: SerializeToString() peaks at several times the model
    except InputError as exc:  # over protobuf's limit
        raise InputError(
            "the ONNX model is larger than 2 GiB: verify the saved file (with its external data) instead"
        ) from exc


@contextlib.contextmanager
def session_source(model: onnx.ModelProto) -> Iterator[str]:
    """A temporary file that ``ort.session`` loads ``model`` from (removed afterwards), written tensor by tensor: ONNX
    Runtime then holds the only serialized copy (bytes in memory would be one more). A model over protobuf's 2 GiB
    limit gets its weights beside it as ONNX external data."""
    with tempfile.TemporaryDirectory(prefix="lambda_export_parity.") as folder:
        path = os.path.join(folder, "model.onnx")
        write_model_file(model, path)  # model.onnx.data beside it over protobuf's limit
        yield path


def keras_feed(loaded: LoadedModel, feed: dict[str, np.ndarray]) -> Any:
    """The argument the Keras model is called with, as the converter's traced function calls it."""
    try:
        dict_inputs = isinstance(loaded.model.input, dict)
    except (AttributeError, ValueError):
        dict_inputs = False
    if dict_inputs:
        return {info.name: feed[info.name] for info in loaded.inputs}
    arrays = [feed[info.name] for info in loaded.inputs]
    return arrays[0] if len(arrays) == 1 else arrays


def run_keras(model: Any, argument: Any, *, graph: bool = False) -> list[np.ndarray]:
    """``model(argument, training=False)`` on TensorFlow's CPU, its outputs flattened to NumPy arrays.

    ``graph``: through a ``tf.function`` of the call traced once per input signature, batch left open, and kept for
    the model (:func:`_graph_function`): what ``model.predict`` runs, and what the converter traces. The parity check
    calls the model a dozen times (its references and the jittered draws of TensorFlow's own error); eagerly, Keras 3
    rebuilds and XLA-compiles a ``tf.function`` for every grouped convolution at every call (ConvNeXt's depthwise
    ``Conv2D(groups=C)``: 9 s a call for ConvNeXtBase at 64x64 under load, 2.7 s through the function). A model whose
    call cannot be traced runs eagerly.
    """
    import keras
    import tensorflow as tf

    if graph:
        function, flat = _graph_function(model, argument)
        if function is not None:
            with tf.device("/CPU:0"):
                result = function(*[tf.constant(a) for a in flat])
            return [np.asarray(t) for t in result]
    with tf.device("/CPU:0"):
        result = model(argument, training=False)
    return [np.asarray(t) for t in keras.tree.flatten(result)]


_GRAPHS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
"""Per Keras model: input signature → its traced call (None: the trace failed, run eagerly)."""


def _graph_function(model: Any, argument: Any) -> tuple[Any, list[Any]]:
    """``(function, flat arguments)``: the model's call on arguments shaped like ``argument`` (any batch) as a
    concrete ``tf.function``, traced at the first call of that signature; ``(None, ...)`` when it cannot be traced."""
    import keras
    import tensorflow as tf

    flat = [np.asarray(a) for a in keras.tree.flatten(argument)]
    structure = keras.tree.map_structure(lambda _: 0, argument)  # the nesting, without the arrays
    key = (repr(structure), tuple((a.shape[1:], a.ndim, a.dtype.str) for a in flat))
    try:
        functions = _GRAPHS.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        return None, flat
    if key not in functions:
        specs = [
            tf.TensorSpec(
                (None, *a.shape[1:]) if a.ndim else (),
                tf.string if a.dtype.kind in "OUS" else tf.as_dtype(a.dtype),
            )
            for a in flat
        ]

        def call(*args: Any) -> list[Any]:
            packed = keras.tree.pack_sequence_as(structure, list(args))
            return list(keras.tree.flatten(model(packed, training=False)))

        try:
            with tf.device("/CPU:0"):
                functions[key] = tf.function(call, input_signature=specs).get_concrete_function()
        except Exception:  # a call that only runs eagerly
            functions[key] = None
    return functions[key], flat


# how ONNX Runtime names the node it failed at: while running ("... running Reshape node. Name:'r' Status Message:
# ...") and while loading ("... Node (r) Op (Reshape) [ShapeInferenceError] ..." or "... Node:r Output:...")
_RUN_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)' Status Message: ")
_LOAD_NODE = re.compile(r"Node \(([^)]*)\) Op \(([^)]*)\)")
_TYPE_NODE = re.compile(r"of operator \(([^)]*)\) in node \(([^)]*)\)")
_SOURCE = re.compile(r"^/\S+:\d+ [^()]*\([^()]*\) ")  # ORT's C++ file, line and function before its message
_ORT_CODE = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def ort_failure(
    exc: BaseException, provider: str, precision: str = "fp32", stage: str = "run", batch: int | None = None
) -> ConversionError:
    """The :class:`ConversionError` (exit code 3) for ONNX Runtime failing to load (``stage="load"``) or run the
    graph: one line with the provider, the node and op ONNX Runtime names, and its own message.

    A graph that ONNX Runtime cannot run is a broken conversion, whatever the numbers would have been: a parity
    failure (exit 1) would send the user looking for a wrong weight.
    """
    text = " ".join(str(exc).split())
    node = _RUN_NODE.search(text)
    if node:
        where, detail = f"node {node.group(2)!r} ({node.group(1)})", _SOURCE.sub("", text[node.end() :])
    else:
        load, typed = _LOAD_NODE.search(text), _TYPE_NODE.search(text)
        if load:
            where = f"node {load.group(1)!r} ({load.group(2)})"
        else:
            where = f"node {typed.group(2)!r} ({typed.group(1)})" if typed else "the graph"
        detail = _ORT_CODE.sub("", text)
    model = "the ONNX model" if precision == "fp32" else f"the {precision} ONNX model"
    action = f"load {model}" if stage == "load" else f"run {model}" + (f" at batch {batch}" if batch else "")
    detail = detail if len(detail) <= 400 else detail[:399] + "…"
    return ConversionError(f"ONNX Runtime ({provider}) cannot {action}: {where}: {detail or type(exc).__name__}")
