"""The float64 truth of the relative rule: the Keras model's own TensorFlow graph, run in float64 with the same weights.

* :func:`float64_model`: a :class:`Float64Model` of the model, or why there can be none.
* :func:`run_float64`: call it on the same inputs (float inputs widened to float64 exactly, integers unchanged); it
  refuses a result with a float output that is not float64.

How: the model's call (``model(x, training=False)``, as the converter traces it) is traced into a TensorFlow graph
with float32 inputs, its variables are frozen into constants as the conversion freezes them
(:func:`lambda_export.upstream.freeze_function`; a weight over 2 GB cannot be frozen: no float64 truth then), the
library's functions get new names, and then every float32 in the graph becomes float64:
the inputs, the constants (weights, and the Python numbers a layer's code put in the graph; all exactly widened), and
the ``T``/``dtype``/``DstT``/... type attributes of every op, inside function bodies too (the loops of recurrent
layers); every complex64 likewise becomes complex128 (types such as ``Tout``/``Tcomplex``, complex constants), so FFT
front ends (``rfft``, ``stft``) and FNet's token mixing compute in float64 too. Strings, integers and booleans are left
as they are; a lookup table the call captured (``StringLookup``/``IntegerLookup``; freezing leaves its handle a
placeholder) is fed the model's own table at every call, so string inputs get a float64 truth too. The graph is then imported and run as it is. TensorFlow ops without a float64 CPU kernel (``MaxPool3D``,
``AvgPool3D``) are replaced by an exact float64 equivalent: 3-D pooling is separable into 2-D pooling over
(height, width) and a second pooling over depth. ``ResizeBilinear`` (Keras' bilinear ``UpSampling2D`` and
``Resizing``), whose output is float32 whatever its input, is replaced by the same interpolation computed in float64
(gathers and lerps, its ``align_corners``/``half_pixel_centers`` honoured); ``ResizeNearestNeighbor`` has a float64
kernel (a copy). ``ResizeBicubic``, ``ResizeArea`` and ``ScaleAndTranslate`` (bicubic, area, lanczos, gaussian or
antialiased resizing) are not replaced: no float64 truth then.

Why the graph and not a clone of the Keras model under a float64 dtype policy (what this module did before): a clone
rebuilds every layer from its config with ``dtype="float64"``, which fails for layers whose config does not rebuild
with another dtype (many of keras-hub's, ``TimeDistributed``), and it silently leaves float32 whatever a layer creates
outside its config: ``SpectralNormalization(Conv2D)`` kept its wrapped layer in float32, so its "float64" outputs were
float32's bit for bit, TensorFlow's own error was 0, and a right export was failed. The graph does not depend on any
layer's config, wrapper or Python code: whatever the call computes, nested models, wrappers (``SpectralNormalization``,
``TimeDistributed``, ``Bidirectional``) and custom layers with raw TensorFlow ops included, is computed in float64.
The model itself is never touched (no dtype policy or variable of it changes).

A :class:`Float64Model` is checked when it is built: no float32 (or float16/bfloat16) type may be left in its graph,
and on a probe input its float outputs must not all equal the float32 model's bit for bit (a "float64" model that
computes in float32 would make TensorFlow's own error 0 and the rule fail right exports). Either gives a reason, and
the absolute rule decides.

The float32 weights and inputs are exactly representable in float64, so the graph computes the float32 model's
function with 2⁻⁵³ roundings instead of 2⁻²⁴: its error is ~10⁹ times smaller than float32's, a truth for both
TensorFlow's float32 run and the ONNX export. The weights are those of the moment :func:`float64_model` ran.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from lambda_export.errors import first_line
from lambda_export.loading import LoadedModel
from lambda_export.parity.inputs import numpy_dtype, string_vocabularies
from lambda_export.parity.running import keras_feed

__all__ = ["Float64Model", "float64_model", "run_float64"]

_POOL3D = {"MaxPool3D": "MAX", "AvgPool3D": "AVG"}  # no float64 kernel in TensorFlow: replaced (see _pool3d_function)
_FLOAT_OUTPUT = ("ResizeBilinear",)  # float32 output whatever the input type: replaced (see _bilinear_function)
_NO_FLOAT64 = (*_POOL3D, "ResizeBicubic", "ResizeArea", "ScaleAndTranslate")
"""Ops without a float64 kernel or result in TensorFlow; one left in the graph means no float64 truth."""


class _RefusedError(Exception):
    """The model cannot be run in float64 (the message says why)."""


def _wide_types() -> dict[int, int]:
    """The narrow TensorFlow types the widening replaces: float32 → float64, complex64 → complex128 (a complex64 is a
    pair of float32s: an FFT of a float32 signal would otherwise stay a float32 computation)."""
    from tensorflow.core.framework import types_pb2

    return {types_pb2.DT_FLOAT: types_pb2.DT_DOUBLE, types_pb2.DT_COMPLEX64: types_pb2.DT_COMPLEX128}


_WIDE_NUMPY = {np.dtype(np.float32): np.float64, np.dtype(np.complex64): np.complex128}


def _widen_attr(attr: Any, wide: dict[int, int]) -> None:
    """Widen one ``AttrValue`` (a type, a list of types, a constant tensor, a function's) by ``wide`` (type → type):
    float32 → float64, complex64 → complex128."""
    import tensorflow as tf

    kind = attr.WhichOneof("value")
    if kind == "type" and attr.type in wide:
        attr.type = wide[attr.type]
    elif kind == "list":
        for index, item in enumerate(attr.list.type):
            if item in wide:
                attr.list.type[index] = wide[item]
    elif kind == "tensor" and attr.tensor.dtype in wide:
        narrow = tf.make_ndarray(attr.tensor)
        widened = narrow.astype(_WIDE_NUMPY[narrow.dtype])  # exact
        attr.tensor.CopyFrom(tf.make_tensor_proto(widened, dtype=tf.as_dtype(wide[attr.tensor.dtype])))
    elif kind == "func":
        for inner in attr.func.attr.values():
            _widen_attr(inner, wide)


def _widen_graph(graph_def: Any) -> None:
    """Every float32 of ``graph_def`` (nodes, function bodies and signatures) made float64, every complex64
    complex128, in place. Other types (strings, integers, booleans, resources) are left as they are."""
    wide = _wide_types()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
        for arg in [*function.signature.input_arg, *function.signature.output_arg]:
            if arg.type in wide:
                arg.type = wide[arg.type]
        for attr in function.attr.values():
            _widen_attr(attr, wide)
        for arg_attrs in function.arg_attr.values():
            for attr in arg_attrs.attr.values():
                _widen_attr(attr, wide)
    for node in nodes:
        for attr in node.attr.values():
            _widen_attr(attr, wide)


_RENAMED = iter(range(1 << 62))


def _rename_functions(graph_def: Any) -> None:
    """Give every function of ``graph_def``'s library a new name (references too): the float32 definitions of the
    same names are already registered in TensorFlow's context, and a different definition of a name is refused."""
    suffix = f"_float64_{next(_RENAMED)}"
    names = {f.signature.name: f.signature.name + suffix for f in graph_def.library.function}

    def rename_attr(attr: Any) -> None:
        kind = attr.WhichOneof("value")
        if kind == "func":
            attr.func.name = names.get(attr.func.name, attr.func.name)
            for inner in attr.func.attr.values():
                rename_attr(inner)
        elif kind == "list":
            for func in attr.list.func:
                func.name = names.get(func.name, func.name)

    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        function.signature.name = names[function.signature.name]
        nodes.extend(function.node_def)
    for gradient in graph_def.library.gradient:
        gradient.function_name = names.get(gradient.function_name, gradient.function_name)
    for node in nodes:
        node.op = names.get(node.op, node.op)
        for attr in node.attr.values():
            rename_attr(attr)


def _narrow_types(graph_def: Any) -> list[str]:
    """Nodes of ``graph_def`` (function bodies included) that still compute in a float type other than float64."""
    from tensorflow.core.framework import types_pb2

    narrow = {
        types_pb2.DT_FLOAT: "float32",
        types_pb2.DT_HALF: "float16",
        types_pb2.DT_BFLOAT16: "bfloat16",
        types_pb2.DT_COMPLEX64: "complex64",
    }
    found = []
    for node in [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]:
        for attr in node.attr.values():
            kind = attr.WhichOneof("value")
            types = [attr.type] if kind == "type" else list(attr.list.type) if kind == "list" else []
            if kind == "tensor":
                types = [attr.tensor.dtype]
            hits = [narrow[t] for t in types if t in narrow]
            if hits:
                found.append(f"{node.name} ({node.op}, {hits[0]})")
                break
    return found


def _pool3d_function(node: Any) -> Any:
    """A float64 ``tf.function`` computing ``node`` (a MaxPool3D/AvgPool3D) exactly: 2-D pooling over (height,
    width) of every depth slice, then 2-D pooling over (depth, 1). Both max and average pooling of a box are separable
    (with SAME padding too: the padded positions are left out of the max and of the average's count per axis)."""
    import tensorflow as tf

    kind = _POOL3D[node.op]
    ksize, strides = list(node.attr["ksize"].list.i), list(node.attr["strides"].list.i)
    padding = node.attr["padding"].s.decode()
    channels_first = node.attr["data_format"].s.decode() == "NCDHW"
    if channels_first:
        ksize, strides = [ksize[0], *ksize[2:], ksize[1]], [strides[0], *strides[2:], strides[1]]
    if ksize[0] != 1 or ksize[4] != 1 or strides[0] != 1 or strides[4] != 1:
        raise _RefusedError(f"{node.op} {node.name!r} pools over the batch or the channels")

    def pool(x: Any, window: list[int], stride: list[int]) -> Any:
        pool2d = tf.nn.max_pool2d if kind == "MAX" else tf.nn.avg_pool2d
        return pool2d(x, window, stride, padding)

    @tf.function(input_signature=[tf.TensorSpec([None] * 5, tf.float64)])
    def pool3d(x: Any) -> Any:
        if channels_first:
            x = tf.transpose(x, [0, 2, 3, 4, 1])
        shape = tf.shape(x)
        batch, depth, channels = shape[0], shape[1], shape[4]
        y = pool(tf.reshape(x, tf.stack([batch * depth, shape[2], shape[3], channels])), ksize[2:4], strides[2:4])
        inner = tf.shape(y)
        y = pool(tf.reshape(y, tf.stack([batch, depth, inner[1] * inner[2], channels])), [ksize[1], 1], [strides[1], 1])
        y = tf.reshape(y, tf.stack([batch, tf.shape(y)[1], inner[1], inner[2], channels]))
        return tf.transpose(y, [0, 4, 1, 2, 3]) if channels_first else y

    return pool3d.get_concrete_function()


def _bilinear_function(node: Any) -> Any:
    """A float64 ``tf.function`` of (images, size) computing ``node`` (a ResizeBilinear, whose output is float32 for
    every input type) as TensorFlow's kernel does, in float64: source coordinate ``(i + 0.5)·scale − 0.5`` with
    ``half_pixel_centers`` (what Keras' UpSampling2D and Resizing use), ``i·scale`` otherwise, ``scale = in / out``
    (``(in − 1) / (out − 1)`` with ``align_corners`` and out > 1); the rows ``max(floor, 0)`` and
    ``min(ceil, in − 1)`` interpolated with weight ``coordinate − floor``, along the width then the height."""
    import tensorflow as tf

    half_pixel = bool(node.attr["half_pixel_centers"].b)
    align = bool(node.attr["align_corners"].b)
    dtype = tf.as_dtype(node.attr["T"].type)

    def weights(in_size: Any, out_size: Any) -> tuple[Any, Any, Any]:
        size_in, size_out = tf.cast(in_size, tf.float64), tf.cast(out_size, tf.float64)
        if align:
            scale = tf.where(out_size > 1, (size_in - 1) / tf.maximum(size_out - 1, 1), size_in / size_out)
        else:
            scale = size_in / size_out
        position = tf.range(size_out, dtype=tf.float64)
        source = (position + 0.5) * scale - 0.5 if half_pixel else position * scale
        low = tf.floor(source)
        lower = tf.maximum(tf.cast(low, tf.int32), 0)
        upper = tf.minimum(tf.cast(tf.math.ceil(source), tf.int32), in_size - 1)
        return lower, upper, source - low

    @tf.function(input_signature=[tf.TensorSpec([None] * 4, dtype), tf.TensorSpec([2], tf.int32)])
    def resize(images: Any, size: Any) -> Any:
        x = tf.cast(images, tf.float64)
        shape = tf.shape(x)
        top, bottom, y_lerp = weights(shape[1], size[0])
        left, right, x_lerp = weights(shape[2], size[1])
        x_lerp = tf.reshape(x_lerp, [1, 1, -1, 1])
        rows_top, rows_bottom = tf.gather(x, top, axis=1), tf.gather(x, bottom, axis=1)
        top_row = (
            tf.gather(rows_top, left, axis=2)
            + (tf.gather(rows_top, right, axis=2) - tf.gather(rows_top, left, axis=2)) * x_lerp
        )
        bottom_row = (
            tf.gather(rows_bottom, left, axis=2)
            + (tf.gather(rows_bottom, right, axis=2) - tf.gather(rows_bottom, left, axis=2)) * x_lerp
        )
        return top_row + (bottom_row - top_row) * tf.reshape(y_lerp, [1, -1, 1, 1])

    return resize.get_concrete_function()


def _replace_pool3d(graph_def: Any) -> None:
    """Each top-level node of ``graph_def`` that has no float64 kernel or result (MaxPool3D/AvgPool3D,
    ResizeBilinear) made a call of its float64 equivalent, in place; one inside a function body is refused."""
    for node in graph_def.node:
        if node.op in _POOL3D:
            concrete = _pool3d_function(node)
        elif node.op in _FLOAT_OUTPUT:
            concrete = _bilinear_function(node)
        else:
            continue
        library = concrete.graph.as_graph_def().library
        known = {f.signature.name for f in graph_def.library.function}
        for function in [concrete.function_def, *library.function]:
            if function.signature.name not in known:
                graph_def.library.function.add().CopyFrom(function)
                known.add(function.signature.name)
        node.op = concrete.function_def.signature.name
        node.ClearField("attr")
    inner = [f"{n.name} ({n.op})" for f in graph_def.library.function for n in f.node_def if n.op in _NO_FLOAT64]
    left = [f"{n.name} ({n.op})" for n in graph_def.node if n.op in _NO_FLOAT64]
    if inner or left:
        raise _RefusedError(f"{(inner or left)[0]} does not compute in float64 in TensorFlow")


def _structure(argument: Any) -> tuple[Any, list[Any]]:
    """``(structure, flat arrays)`` of a Keras call argument (an array, a list or a dict of arrays)."""
    import keras

    return argument, list(keras.tree.flatten(argument))


class Float64Model:
    """A Keras model's call run as a float64 TensorFlow graph (see the module docstring); ``model`` is untouched.

    Reading an attribute it lacks reads the Keras model's (``layers``, ``input`` ...): the layer locator walks the
    model's layer graph through it, and runs the per-layer models it builds with :func:`run_float64`.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._functions: dict[Any, tuple[Any, Any, list[str]]] = {}

    def __getattr__(self, name: str) -> Any:
        if name in ("model", "_functions"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def _function(self, structure: Any, flat: list[np.ndarray]) -> tuple[Any, Any, list[str]]:
        """The float64 graph function for arguments shaped like ``flat`` (any batch), traced once per signature."""
        key = (repr(structure_spec(structure)), tuple((a.shape[1:], a.dtype.str) for a in flat))
        if key not in self._functions:
            self._functions[key] = _trace(self.model, structure, flat)
        return self._functions[key]

    def __call__(self, argument: Any) -> list[np.ndarray]:
        """The outputs (flattened) of the model on ``argument`` (float arrays widened to float64 here)."""
        import tensorflow as tf

        structure, flat = _structure(argument)
        flat = [np.asarray(a) for a in flat]
        function, _, _ = self._function(structure, flat)
        wide = [
            a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.complex128) if a.dtype.kind == "c" else a
            for a in flat
        ]
        with tf.device("/CPU:0"):
            outputs = function(*[tf.constant(a) for a in wide])
        return [np.asarray(t) for t in outputs]

    def narrow_nodes(self, argument: Any) -> list[str]:
        """The graph's nodes that do not compute in float64 (empty for a genuine float64 graph)."""
        structure, flat = _structure(argument)
        return self._function(structure, [np.asarray(a) for a in flat])[2]


def structure_spec(structure: Any) -> Any:
    """``structure`` with its arrays replaced by None (the shape of a call argument, for a cache key)."""
    import keras

    return keras.tree.map_structure(lambda _: None, structure)


def _trace(model: Any, structure: Any, flat: list[np.ndarray]) -> tuple[Any, Any, list[str]]:
    """Trace ``model(structure-of-flat, training=False)`` with float32 inputs, freeze its variables into constants
    (as the conversion freezes them: :func:`lambda_export.upstream.freeze_function`), widen to float64, import."""
    import keras
    import tensorflow as tf

    from lambda_export import upstream

    specs = [
        tf.TensorSpec(
            (None, *a.shape[1:]) if a.ndim else (),
            {"f": tf.float32, "c": tf.complex64, "O": tf.string, "U": tf.string, "S": tf.string}.get(a.dtype.kind)
            or tf.as_dtype(a.dtype),
        )
        for a in flat
    ]

    def forward(*args: Any) -> list[Any]:
        argument = keras.tree.pack_sequence_as(structure, list(args))
        return list(keras.tree.flatten(model(argument, training=False)))

    with tf.device("/CPU:0"):
        concrete = tf.function(forward, input_signature=specs).get_concrete_function()
        inputs = [t.name for t in concrete.inputs if t.dtype != tf.dtypes.resource]
        outputs = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
        graph_def = upstream.freeze_function(concrete, inputs, outputs)
    tables = _captured_tables(concrete, graph_def)
    _widen_graph(graph_def)
    _rename_functions(graph_def)
    _replace_pool3d(graph_def)
    narrow = _narrow_types(graph_def)

    def imported() -> None:
        tf.graph_util.import_graph_def(graph_def, name="")

    with tf.device("/CPU:0"):
        wrapped = tf.compat.v1.wrap_function(imported, [])
    graph = wrapped.graph
    pruned = wrapped.prune(
        [graph.get_tensor_by_name(name) for name in [*inputs[: len(specs)], *tables]],
        [graph.get_tensor_by_name(name) for name in outputs],
    )
    handles = list(tables.values())

    def function(*args: Any) -> Any:
        return pruned(*args, *handles)

    return function, graph_def, narrow


def _captured_tables(concrete: Any, graph_def: Any) -> dict[str, Any]:
    """Tensor name → eager resource handle of each table (a ``StringLookup``'s, an ``IntegerLookup``'s) the traced
    function captured: freezing leaves its handle a ``Placeholder`` (see :mod:`lambda_export.lookups`), which the
    float64 graph is fed with the model's own table at every call. Tables hold strings and integers: nothing to
    widen, and the lookups compute exactly as in the float32 model."""
    import tensorflow as tf

    captures = list(concrete.captured_inputs)
    placeholders = concrete.inputs[len(concrete.inputs) - len(captures) :] if captures else []
    left = {node.name for node in graph_def.node if node.op == "Placeholder"}
    return {
        placeholder.name: value
        for placeholder, value in zip(placeholders, captures, strict=True)
        if placeholder.dtype == tf.dtypes.resource and placeholder.name.split(":")[0] in left
    }


def _message(exc: BaseException) -> str:
    """The line of a TensorFlow error that says what went wrong (a traced function's error starts "in user code:"
    and ends with it)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Keras colours its messages
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Keras ends a layer's error with "Arguments received by X.call():" and one "• name=value" line per argument
    said = [line for line in lines if not line.startswith(("•", "Arguments received by"))]
    if len(lines) > 1 and lines[0] == "in user code:" and said:
        return f"{type(exc).__name__}: {said[-1]}"
    return first_line(exc)


def _probe_argument(model: Any, shapes: dict[str, tuple[int, ...]] | None = None) -> Any:
    """A small deterministic call argument for ``model``: N(0, 1) floats, ones for integer inputs, the first token
    of its vocabulary for a string input (:func:`lambda_export.parity.inputs.string_vocabularies`), batch 2.

    ``shapes`` (by input name) gives the shape of an input whose dims the model leaves unknown: the parity check's
    own inputs, so that a model that needs a long sequence (a strided Conv1D front end with a 127-wide kernel) is
    probed at a length it can run; without it an unknown dim is 2."""
    from lambda_export.graph import TensorInfo

    rng = np.random.default_rng(0)
    arrays = {}
    infos = [TensorInfo(str(t.name), tuple(t.shape), str(t.dtype)) for t in model.inputs]
    vocabularies = string_vocabularies(model, infos)
    shapes = shapes or {}
    by_position = list(shapes.values()) if len(shapes) == len(infos) else []
    for position, (tensor, info) in enumerate(zip(model.inputs, infos, strict=True)):
        # by name; else by position (an unnamed keras.Input exports under its InputLayer's name, not the tensor's)
        known = shapes.get(info.name, by_position[position] if by_position else None)
        if known is not None and len(known) == len(tensor.shape):
            batch = 2 if tensor.shape[0] is None else int(tensor.shape[0])
            rest = (int(k) if d is None else int(d) for d, k in zip(tensor.shape[1:], known[1:], strict=True))
            shape = (batch, *rest)
        else:
            shape = tuple(2 if d is None else int(d) for d in tensor.shape)
        dtype = numpy_dtype(str(tensor.dtype))
        if dtype.kind == "O":
            tokens = vocabularies[info.name].tokens
            array = np.empty(shape, dtype=object)
            array[...] = tokens[0] if tokens else "a"
            arrays[tensor.name] = array
            continue
        arrays[tensor.name] = (
            rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.ones(shape, dtype=dtype)
        )
    # the structure the parity check calls the model with (lambda_export.parity.running.keras_feed): a dict for dict
    # inputs, else a bare array for one input and a flat list for several. The float64 graph is traced once per call
    # structure, so a probe shaped otherwise (the [array] of a model built with inputs=[x], as keras.applications
    # builds theirs) would trace, freeze and widen the whole graph a second time at the first parity run.
    try:
        if isinstance(model.input, dict):
            return {name: arrays[t.name] for name, t in model.input.items()}
    except (AttributeError, ValueError):
        pass
    flat = [arrays[t.name] for t in model.inputs]
    return flat[0] if len(flat) == 1 else flat


def float64_model(
    model: Any, probe_shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[Float64Model | None, str | None]:
    """``(Float64Model, None)``: ``model`` computing in float64 with its exact weights; ``(None, why)`` when not.

    ``probe_shapes``: the shapes of the inputs it will run on, by input name (the probe takes its unknown dims from
    them; see :func:`_probe_argument`).

    The model's graph is traced, frozen and widened to float64 (see the module docstring), then checked on a probe
    input: it must run, return float64, keep no float32/float16 node, and its float outputs must not all equal the
    float32 model's bit for bit (that would be float32 computing, not float64). Anything else gives a reason.
    """
    import keras

    if not isinstance(model, keras.Model):
        return None, f"{type(model).__name__} is not a Keras model"
    result = Float64Model(model)
    try:
        argument = _probe_argument(model, probe_shapes)
        narrow = result.narrow_nodes(argument)
        if narrow:
            return None, f"node {narrow[0]} does not compute in float64 in the model's float64 graph"
        wide = result(argument)
        single = _run_float32(model, argument)
    except _RefusedError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"the model's graph cannot run in float64: {_message(exc)}"
    if len(wide) != len(single):
        return None, f"the float64 graph returns {len(wide)} outputs, the model {len(single)}"
    pairs = [(w, s) for w, s in zip(wide, single, strict=True) if s.dtype.kind == "f"]
    not_wide = [w.dtype for w, _ in pairs if w.dtype != np.float64]
    if not_wide:
        return None, f"the float64 graph returns {not_wide[0]} outputs"
    if pairs and all(np.array_equal(w, s.astype(np.float64)) for w, s in pairs):
        return None, (
            "the float64 model's outputs equal the float32 model's bit for bit on a probe input: it does not compute "
            "in float64"
        )
    return result, None


def _run_float32(model: Any, argument: Any) -> list[np.ndarray]:
    import keras
    import tensorflow as tf

    with tf.device("/CPU:0"):
        result = model(argument, training=False)
    return [np.asarray(t) for t in keras.tree.flatten(result)]


def run_float64(model: Any, loaded: LoadedModel | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The float64 outputs of ``model`` (a :class:`Float64Model`, or a Keras model, traced here) on ``feed`` (float
    inputs widened to float64; integer and boolean ones as given), called as ``loaded``'s model is.

    Raises:
        ValueError: a float output that is not float64.
    """
    runner = model if isinstance(model, Float64Model) else Float64Model(model)
    if loaded is not None:
        argument = keras_feed(loaded, feed)
    else:
        arrays = [feed[t.name] for t in runner.model.inputs]
        argument = arrays[0] if len(arrays) == 1 else arrays
    outputs = runner(argument)
    for index, array in enumerate(outputs):
        if array.dtype.kind == "f" and array.dtype != np.float64:
            raise ValueError(f"output {index} of the float64 model is {array.dtype}")
    return outputs
