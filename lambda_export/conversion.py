"""Keras model → ONNX through tf2onnx, with the graph rewrites and checks (steps "convert", "rewrite", "check").

Entry point: :func:`convert`. The output is deterministic (same model → byte-identical file), carries provenance in
``metadata_props``, and is written atomically (temporary file + rename).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import io
import logging
import os
import re
import tempfile
import warnings as pywarnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lambda_export import env, ort, upstream
from lambda_export.errors import ConversionError, InputError, described, first_line
from lambda_export.folding import attach_weights, squeeze_matmul_weights
from lambda_export.graph import (
    TensorInfo,
    UniqueNames,
    all_nodes,
    canonical_order,
    rename_reads,
    skeleton,
    toposort,
)
from lambda_export.io import save_model_atomic, too_large_for_protobuf, write_model_file
from lambda_export.loading import LoadedModel, load_model
from lambda_export.lookups import HASHING_OPS, TableLookups
from lambda_export.passes.pipelines import DEFAULT_OPTIMIZE, OPTIMIZE_CHOICES, rewrite_for_target
from lambda_export.spectral import SpectralLowering
from lambda_export.targets import TARGETS, check_target

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "OPTIMIZE_CHOICES",
    "ConvertResult",
    "ExportOptions",
    "convert",
    "run_tf2onnx",
]

MIN_OPSET, MAX_OPSET = 13, 18
WEIGHT_INPUT_BYTES: int | None = 64 * 1024
"""Weights of this many bytes or more are traced as graph inputs and attached as initializers after tf2onnx (see
:func:`_convert_with_weight_inputs`); smaller ones (batch-norm statistics, biases) are frozen constants that TensorFlow
and tf2onnx fold as before. None: every weight frozen (tf2onnx's own way)."""


@dataclass
class ConvertResult:
    """What :func:`convert` produced.

    Attributes:
        model: the ONNX ``ModelProto``.
        inputs / outputs: name, shape (None = dynamic) and dtype of each graph input / output, in order.
        op_histogram: op type → node count.
        warnings: everything the user should know (unrewritten Einsum, target issues, ...).
        passes: the rewrite passes that changed the graph (see :mod:`lambda_export.passes.pipelines`).
        pass_log: one line per pass run: what it rewrote and, where it looked and refused, why (``-v`` prints it).
        target_issues: nodes the chosen target would refuse (empty when the graph fits the target).
        path: where the model was written, if an output path was given.
        loaded: the loaded Keras model (reused by the parity check).
    """

    model: onnx.ModelProto
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_histogram: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)
    target_issues: list[str] = field(default_factory=list)
    path: str | None = None
    loaded: LoadedModel | None = None
    pass_log: list[str] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [info.name for info in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [info.name for info in self.outputs]

    @property
    def node_count(self) -> int:
        return len(self.model.graph.node)


def _resolve_shapes(
    loaded: LoadedModel, batch_size: int | None, input_shapes: dict[str, tuple[int | None, ...]] | None
) -> list[TensorInfo]:
    """Apply ``batch_size`` and ``input_shapes`` overrides; every non-batch dim must end up static."""
    overrides = dict(input_shapes or {})
    names = {info.name for info in loaded.inputs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputError(
            f"input_shapes names unknown input(s) {', '.join(unknown)}; the model's inputs are {', '.join(sorted(names))}",
            argument="input_shapes",
        )
    resolved = []
    for info in loaded.inputs:
        shape = list(info.shape)
        if info.name in overrides:
            new = tuple(overrides[info.name])
            if len(new) != len(shape):
                raise InputError(
                    f"input_shapes {info.name}: {len(new)} dims given, the input has {len(shape)} {tuple(info.shape)}",
                    argument="input_shapes",
                )
            for axis, (old, dim) in enumerate(zip(shape, new, strict=True)):
                if old is not None and dim is not None and old != dim:
                    raise InputError(
                        f"input_shapes {info.name}: dim {axis} is fixed to {old} by the model, cannot set {dim}",
                        argument="input_shapes",
                    )
            shape = list(new)
        if batch_size is not None and shape:
            if shape[0] is not None and shape[0] != batch_size:
                raise InputError(f"input {info.name}: the model fixes the batch size to {shape[0]}, not {batch_size}")
            shape[0] = batch_size
        missing = [axis for axis, dim in enumerate(shape) if dim is None and axis != 0]
        if missing:
            dims = ",".join("?" if d is None else str(d) for d in shape)
            raise InputError(
                f"input {info.name} has unknown dims {tuple(shape)}: give them with "
                f"input_shapes {info.name}={dims} (replace each ? after the batch by a size)",
                argument="input_shapes",
            )
        resolved.append(TensorInfo(info.name, tuple(shape), info.dtype))
    return resolved


def _relabel_einsum_equation(equation: str) -> str:
    """Rename the subscripts of an einsum equation to distinct lower-case letters (a bijection).

    tf2onnx lower-cases equations (``bIi,iK->bIK`` would become ``bii,ik->bik``, a diagonal); relabelling first makes
    its ``lower()`` a no-op. Lower-case letters keep their names, upper-case ones take unused lower-case letters.

    Raises:
        ConversionError: more than 26 distinct subscripts (ONNX runtimes and tf2onnx need lower-case ones).
    """
    if equation == equation.lower():
        return equation
    letters = sorted({c for c in equation if c.isalpha()}, key=lambda c: (c.isupper(), c))
    free = iter(c for c in "abcdefghijklmnopqrstuvwxyz" if c not in equation)
    mapping = {}
    for letter in letters:
        if letter.islower():
            mapping[letter] = letter
            continue
        replacement = next(free, None)
        if replacement is None:
            raise ConversionError(f"einsum equation {equation!r} uses more than 26 distinct subscripts")
        mapping[letter] = replacement
    return "".join(mapping.get(c, c) for c in equation)


def _collecting(factory: Callable[[], Any]) -> Callable[[], Any]:
    """A tf2onnx optimizer factory that first frees the graph copies dropped by the previous optimizers."""

    def make() -> Any:
        gc.collect()
        return factory()

    return make


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Freeze the objects that exist now so that collections inside only scan new ones; collect the rest at the end."""
    gc.freeze()
    try:
        yield
    finally:
        gc.collect()
        gc.unfreeze()


def tf2onnx_optimizers(*, einsum: bool) -> dict[str, Callable[[], Any]]:
    """tf2onnx's optimizer list for one conversion, each optimizer preceded by a garbage collection.

    tf2onnx's ``optimize_graph`` deep-copies the whole graph, constants included, before every optimizer of every
    round, and the graphs it drops hold reference cycles, so they wait for a full garbage collection: a 39 MB position
    embedding made the process grow by 2.1 GB, and a 630 MB one was OOM-killed at 24 GB. Collecting before each
    optimizer keeps the peak near 20× the largest constant (what remains is mostly TensorFlow's grappler).

    ``einsum=False`` (our conversion, not tf2onnx's own) leaves out tf2onnx's ``EinsumOptimizer``, which decomposes
    Einsum with Shape/Gather/ReduceProd chains when the batch is dynamic (:mod:`lambda_export.passes.einsum` rewrites
    those nodes with static reshapes), and merges duplicated nodes deterministically (tf2onnx keeps the first
    duplicate in its node order, which changes from one process to the next, so the surviving node's name,
    ``lstm/zeros`` or ``lstm/zeros_1``, did too, and with it the exported file; :func:`upstream.stable_merge_duplicates`
    keeps the one with the smallest name without counters). The list is read from tf2onnx (not modified): the
    conversion passes it per call, nothing global changes.
    """
    factories = upstream.default_optimizers()
    if not einsum:
        del factories["einsum_optimizer"]
        factories["merge_duplication"] = lambda: upstream.stable_merge_duplicates(_strip_counters)
    return {name: _collecting(factory) for name, factory in factories.items()}


_relabel_einsums = upstream.einsum_relabeller(_relabel_einsum_equation)
"""A tf2onnx ``custom_rewriter``: relabel mixed-case Einsum equations before tf2onnx's handler lower-cases them."""

_ERFC_AS_ERF = {"Erfc": (upstream.erfc_as_one_minus_erf, [])}
"""A tf2onnx op handler: ``Erfc(x) = 1 − Erf(x)``.

Keras' default ``gelu`` is the exact one, which TensorFlow lowers to ``Erfc``; ONNX has no Erfc (and tf2onnx 1.17
leaves the op unconverted), but it has ``Erf`` from opset 9. The subtraction has an absolute error of about one
float32 ulp of 1 (6e-8); gelu's ``x · Erfc(−x/√2) / 2`` keeps it absolute (|x| · 3e-8), which is what the parity
check measures."""


def run_tf2onnx(
    function: Any,
    signature: list[Any],
    opset: int,
    *,
    plain: bool = False,
    weights: Sequence[Callable[[], np.ndarray]] = (),
    model: Any = None,
) -> onnx.ModelProto:
    """Convert a ``tf.function`` with tf2onnx (what ``tf2onnx.convert.from_function`` does), per call configured.

    With ``plain`` the conversion is tf2onnx's own (its full optimizer list, equations as tf2onnx reads them), for
    side-by-side comparisons. Otherwise mixed-case einsum equations are relabelled first (tf2onnx's ``Einsum``
    handler lower-cases them, turning ``bIi,iK->bIK`` into a diagonal), the ``EinsumOptimizer`` is left out and
    ``Erfc`` (exact gelu) is converted as ``1 − Erf``. Constants the function captured become initializers. Both
    keep the conversion's memory bounded (:func:`tf2onnx_optimizers`). Nothing global in tf2onnx is modified, so
    conversions in other threads are not affected.

    ``weights``: the last ``len(weights)`` entries of ``signature`` are weights the function takes as arguments (see
    :func:`_tf2onnx_convert`), each given here as a function returning its value. tf2onnx converts them as graph
    inputs (nothing to freeze, fold or deep-copy); then what the graph computes from them alone is folded and they
    become initializers (:func:`lambda_export.folding.attach_weights`).

    Lookup tables the function captured (``StringLookup``, ``IntegerLookup``) are read now and their lookups become
    ``ai.onnx.ml`` nodes (:mod:`lambda_export.lookups`); ``model`` (optional) names the layer holding each table in
    errors. Complex-valued FFT pipelines (FNet's token mixing, spectrogram front ends) are lowered to real ONNX ops
    (:mod:`lambda_export.spectral`).

    Raises:
        ConversionError: a lookup table that cannot be resolved (naming its layer), an op on complex values that is
            not lowered (naming the op).
    """
    import tensorflow as tf

    concrete = function.get_concrete_function(*signature)
    input_names = [t.name for t in concrete.inputs if t.dtype != tf.dtypes.resource]
    output_names = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
    # constants the function captured (Keras 3 Normalization's mean/variance, Rescaling's scale) are placeholders
    # after the signature's: their values become initializers, not extra graph inputs
    placeholders = concrete.inputs[len(concrete.inputs) - len(concrete.captured_inputs) :]
    captured = {
        placeholder.name: value
        for placeholder, value in zip(placeholders, concrete.captured_inputs, strict=True)
        if placeholder.dtype != tf.dtypes.resource
    }
    renames = upstream.tensor_renames(concrete, input_names, output_names)
    lookups = TableLookups.of(concrete, model)
    spectral = SpectralLowering.of(concrete, opset)  # complex FFT pipelines → real ONNX ops (lambda_export/spectral.py)
    with tf.device("/cpu:0"), _frozen_heap(), _tensorflow_warnings_off():
        frozen = upstream.freeze_function(concrete, input_names, output_names)
        if not plain:
            lookups.pin_shapes(frozen)
            spectral.pin_shapes(frozen)
        if not plain and upstream.allow_xla_inlining(frozen):
            with tf.Graph().as_default():  # grappler runs on a graph, as in tf_loader.from_function
                frozen = upstream.grappler_optimize(input_names, output_names, frozen)
        proto = upstream.convert_graph_def(
            frozen,
            name=concrete.name,
            opset=opset,
            custom_rewriter=None
            if plain
            else [_relabel_einsums, upstream.integer_floor_mod, *lookups.rewriters(), *spectral.rewriters()],
            custom_op_handlers=None if plain else {**_ERFC_AS_ERF, **lookups.handlers()},
            input_names=input_names,
            output_names=output_names,
            tensors_to_rename=renames,
            optimizers=tf2onnx_optimizers(einsum=plain),
        )
    if not plain:
        lookups.check(proto)
        spectral.check()
    _inline_captured(proto, captured)
    if weights:
        before = {init.name for init in proto.graph.initializer}
        names = [spec.name for spec in signature[len(signature) - len(weights) :]]
        attach_weights(proto.graph, dict(zip(names, weights, strict=True)))
        new = {init.name for init in proto.graph.initializer} - before
        squeeze_matmul_weights(proto, new)
    return proto


@contextlib.contextmanager
def _tensorflow_warnings_off() -> Iterator[None]:
    """TensorFlow's Python warnings off for the duration: freezing a function that captured a lookup table prints
    "Issue encountered when serializing table_initializer ... probably safe to ignore" (three lines) on stderr."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _inline_captured(model: onnx.ModelProto, captured: dict[str, Any]) -> None:
    """Turn the graph inputs that stand for captured constants into initializers holding their values (and drop
    those no node reads: a lookup's default value, a mask token, once the lookup is an ai.onnx.ml node)."""
    read = {name for node in all_nodes(model.graph) for name in node.input}
    values = {}
    for value in model.graph.input:
        if value.name in captured:
            values[value.name] = np.asarray(captured[value.name])
    if not values:
        return
    kept = [value for value in model.graph.input if value.name not in values]
    values = {name: array for name, array in values.items() if name in read}
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(array, name) for name, array in values.items())


def _tf2onnx_convert(loaded: LoadedModel, inputs: list[TensorInfo], opset: int) -> onnx.ModelProto:
    """The Keras model's forward pass as a ``tf.function`` with the resolved input signature, through tf2onnx."""
    import keras
    import tensorflow as tf

    model = loaded.model
    signature = [tf.TensorSpec(info.shape, tf.as_dtype(info.dtype), name=info.name) for info in inputs]
    dict_inputs = isinstance(model.input, dict) if hasattr(model, "input") else False

    @tf.autograph.experimental.do_not_convert
    def forward(*args: Any) -> list[Any]:
        if dict_inputs:
            feed = {info.name: arg for info, arg in zip(inputs, args, strict=True)}
        else:
            feed = args[0] if len(args) == 1 else list(args)
        result = keras.tree.flatten(model(feed, training=False))
        return [tf.identity(t) for t in result]

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    variables = weight_inputs(model)
    if variables:
        proto = _convert_with_weight_inputs(forward, signature, variables, opset, model)
        if proto is not None:
            return proto
    function = tf.function(forward, input_signature=signature)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            proto = run_tf2onnx(function, signature, opset, model=model)
    except ConversionError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        first = text[0] if text else ""
        # TensorFlow refuses to freeze a tensor over 2 GB; tf2onnx's own constant folding of one (e.g. a relative
        # embedding gathered to 2.5 GB) fails inside protobuf with a DecodeError of the ONNX attribute instead
        if "larger than 2GB" in first or (type(exc).__name__ == "DecodeError" and "onnx.AttributeProto" in first):
            raise ConversionError(_too_large_message(model)) from exc
        raise ConversionError(f"tf2onnx failed: {described(exc, None)}") from exc
    return proto


def weight_inputs(model: Any, min_bytes: int | None = None) -> list[Any]:
    """The model's variables traced as graph inputs rather than frozen constants: those of ``min_bytes`` or more
    (default :data:`WEIGHT_INPUT_BYTES`; None there switches the weight inputs off), in ``model.weights`` order."""
    threshold = WEIGHT_INPUT_BYTES if min_bytes is None else min_bytes
    if threshold is None:
        return []
    chosen, seen = [], set()
    for variable in getattr(model, "weights", []):
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        size = int(np.prod(variable.shape, dtype=np.int64)) * np.dtype(variable.dtype).itemsize
        if size >= threshold:
            chosen.append(variable)
    return chosen


def _convert_with_weight_inputs(
    forward: Callable[..., Any], signature: list[Any], variables: list[Any], opset: int, model: Any = None
) -> onnx.ModelProto | None:
    """``forward`` traced with ``variables`` as extra arguments (a ``keras.StatelessScope`` maps each variable to its
    argument), converted by :func:`run_tf2onnx` with their values attached as initializers after the conversion.

    TensorFlow freezes captured variables into constants (a full copy), its grappler and tf2onnx's graph copy them
    again and tf2onnx's optimizers deep-copy the whole graph before each of them: ResNet50's 102 MB of weights
    made a conversion peak at 2.9 GB, and TensorFlow refuses to freeze a tensor over 2 GB at all. As arguments they
    are placeholders: the graph that TensorFlow and tf2onnx process holds no weight data. What tf2onnx would have
    folded on them (kernel transposes, reshapes, the gather of a relative position table) is folded afterwards, exactly
    (:mod:`lambda_export.folding`).

    Returns None when this trace or its conversion fails, or leaves an operation unconverted (a tf2onnx handler that
    needs a constant operand): the caller then converts the ordinary way, with the weights frozen.
    """
    import keras
    import tensorflow as tf

    specs = [
        tf.TensorSpec(tuple(variable.shape), tf.as_dtype(variable.dtype), name=f"weight_{index}")
        for index, variable in enumerate(variables)
    ]
    taken = len(signature)

    @tf.autograph.experimental.do_not_convert
    def with_weights(*args: Any) -> list[Any]:
        with keras.StatelessScope(state_mapping=list(zip(variables, args[taken:], strict=True))):
            return forward(*args[:taken])

    def value(variable: Any) -> Callable[[], np.ndarray]:
        # the backend variable's buffer (a read of a CPU resource variable is not a copy), not Keras' np.array copy
        return lambda: np.asarray(getattr(variable, "value", variable))

    function = tf.function(with_weights, input_signature=[*signature, *specs])
    try:
        with contextlib.redirect_stdout(io.StringIO()), pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            proto = run_tf2onnx(
                function, [*signature, *specs], opset, weights=[value(v) for v in variables], model=model
            )
    except Exception as exc:  # any failure here means: convert the ordinary way
        logging.getLogger(__name__).debug("weights as graph inputs failed, freezing them instead: %s", exc)
        return None
    if _unconverted_ops(proto) or len(proto.graph.input) != len(signature):
        return None
    return proto


def _unconverted_ops(model: onnx.ModelProto) -> list[str]:
    """``op (node)`` for each node that is not a standard ONNX op (tf2onnx leaves TensorFlow ops it cannot convert)."""
    return [f"{node.op_type} ({node.name})" for node in all_nodes(model.graph) if not _is_onnx_op(node)]


_ONNX_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml"}
"""The domains of ONNX's own operator sets (the default one under both its names, and the ML one), as onnx.defs
names them."""


def _is_onnx_op(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is an operator of ONNX's own sets (``ai.onnx.ml``'s CategoryMapper and LabelEncoder, which
    table lookups become, included), not a TensorFlow op tf2onnx left."""
    from onnx import defs

    domain = _ONNX_DOMAINS.get(node.domain)
    return domain is not None and defs.has(node.op_type, domain)


def _too_large_message(model: Any) -> str:
    """The error for a tensor TensorFlow cannot freeze (over 2 GB), naming the largest weight."""
    weights = [(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize, w.path) for w in getattr(model, "weights", [])]
    size, name = max(weights, default=(0, "?"))
    return (
        f"a tensor is over 2 GB, which TensorFlow cannot freeze into the graph that tf2onnx converts (a weight, or a "
        f"constant computed from weights such as a gathered relative position embedding; largest weight: {name}, "
        f"{size / 2**30:.2f} GiB); use a smaller global layer (e.g. u=1) or a local one"
    )


def _check_converted(model: onnx.ModelProto) -> None:
    """Fail loudly on what tf2onnx returns as if fine: unconverted TF ops, invalid graphs, graphs ORT refuses."""
    bad = []
    for node in all_nodes(model.graph):  # tf2onnx leaves unconverted ops in If/Loop bodies too (tf.cond)
        if not _is_onnx_op(node):
            bad.append(f"{node.op_type} ({node.name})")
    if bad:
        hashes = sorted({HASHING_OPS[op.split(" ")[0]] for op in bad if op.split(" ")[0] in HASHING_OPS})
        why = (
            f": {' and '.join(hashes)} string hashing (keras Hashing, or a StringLookup/IntegerLookup hashing "
            "out-of-vocabulary values with num_oov_indices > 1 or oov_method='farmhash') has no ONNX equivalent"
            if hashes
            else ""
        )
        raise ConversionError(f"TensorFlow op(s) with no ONNX conversion: {', '.join(sorted(set(bad)))}{why}")
    large = too_large_for_protobuf(model)
    try:
        # the graph without the weight data: onnx.checker serializes what it checks (refusing models over 2 GiB) and
        # its shape inference copies it again; ONNX Runtime below reads every initializer anyway
        onnx.checker.check_model(_without_weights(model), full_check=True)
    except Exception as exc:
        raise ConversionError(f"the exported graph is invalid: {first_line(exc, None)}") from exc
    if not large:
        try:
            # from a file written tensor by tensor, so that ONNX Runtime holds the only serialized copy, and without
            # its layout optimizations (NCHWc copies of the convolution weights): a load check that costs ~1.8x the
            # weights, not ~4x (ResNet50: +171 MB, not +381 MB); the parity check runs every optimization
            with tempfile.TemporaryDirectory(prefix="lambda_export_check.") as folder:
                path = os.path.join(folder, "model.onnx")
                write_model_file(model, path, external_data=False)
                ort.session(path, layout=False)
        except Exception as exc:
            raise ConversionError(f"ONNX Runtime refuses the exported graph: {str(exc).strip()[:300]}") from exc


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without weight data, to check the structure of models too large to serialise.

    Initializers become typed graph inputs (small integer ones, shapes and axes, keep their values).
    """
    copy = skeleton(model)
    del copy.metadata_props[:]
    copy.ir_version = model.ir_version
    return copy


def _rename_io(model: onnx.ModelProto, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
    """Give graph inputs/outputs the Keras names (tf2onnx appends ':0' and names outputs 'Identity:0'), and an output
    whose rank tf2onnx could not tell (after a table lookup: none, or a scalar's) the Keras output's shape.

    Raises:
        ConversionError: the graph has other inputs or outputs than the model (naming the extra or missing ones).
    """
    graph = model.graph
    _check_count("input", [value.name for value in graph.input], [info.name for info in inputs])
    _check_count("output", [value.name for value in graph.output], [info.name for info in outputs])
    mapping = {}
    for value, info in zip(graph.input, inputs, strict=True):
        mapping[value.name] = info.name
    for value, info in zip(graph.output, outputs, strict=True):
        mapping[value.name] = info.name
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type and len(tensor_type.shape.dim) != len(info.shape):
            tensor_type.ClearField("shape")  # tf2onnx's guess after an op of unknown shape (a lookup) was wrong
            tensor_type.shape.SetInParent()
            for dim in info.shape:
                if dim is None:
                    tensor_type.shape.dim.add().dim_param = "unk"
                else:
                    tensor_type.shape.dim.add().dim_value = int(dim)
    for value in [*graph.input, *graph.output]:
        value.name = mapping.get(value.name, value.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
    rename_reads(graph, mapping, subgraphs_only=True)


def _check_count(kind: str, found: list[str], expected: list[str]) -> None:
    """A ConversionError unless the graph has as many ``kind``s (inputs/outputs) as the Keras model, naming the extra
    graph ones (tf2onnx lists the model's own first) or the model's missing ones."""
    if len(found) == len(expected):
        return
    if len(found) > len(expected):
        extra = found[len(expected) :]
        why = (
            " (a captured resource tf2onnx could not resolve, e.g. a lookup table)"
            if any("table_handle" in name or "resource" in name.lower() for name in extra)
            else ""
        )
        raise ConversionError(
            f"the converted graph has {len(found)} {kind}s, the model {len(expected)} "
            f"({', '.join(expected) or 'none'}); extra graph {kind}(s): {', '.join(extra)}{why}"
        )
    raise ConversionError(
        f"the converted graph has {len(found)} {kind}s ({', '.join(found) or 'none'}), the model {len(expected)}: "
        f"{', '.join(expected[len(found) :])} missing"
    )


_COUNTER = re.compile(r"(__\d+)+")


def _strip_counters(name: str) -> str:
    """``name`` without tf2onnx's process-global counters (``Reshape__123`` → ``Reshape``)."""
    return _COUNTER.sub("", name)


def _canonical_names(model: onnx.ModelProto) -> None:
    """Deterministic, readable names: drop tf2onnx's process-global counters, then de-duplicate in graph order."""
    graph = model.graph
    keep = {v.name for v in [*graph.input, *graph.output]}
    tensor_names = UniqueNames(taken=keep)
    mapping: dict[str, str] = {}

    def fresh(name: str) -> str:
        return tensor_names.new(_COUNTER.sub("", name).replace(":0", "") or "t")

    init_names = {init.name for init in graph.initializer}
    for node in graph.node:  # names assigned in node order: tf2onnx's initializer order varies between runs
        for position, name in enumerate(node.input):
            if name in init_names and name not in mapping:
                # tf2onnx's optimizers name the constants they create nondeterministically (const_fold_opt__7 in
                # one run, new_shape__9 in the next): name those after their first reader instead
                readable = name if "/" in name else f"{_COUNTER.sub('', node.name) or node.op_type}/input{position}"
                mapping[name] = fresh(readable)
        for name in node.output:
            if name not in keep and name not in mapping:
                mapping[name] = fresh(name)
    for init in graph.initializer:
        if init.name not in mapping:
            mapping[init.name] = fresh(init.name)
    for init in graph.initializer:
        init.name = mapping[init.name]
    node_names = UniqueNames()
    for i, node in enumerate(graph.node):
        for j, name in enumerate(node.input):
            node.input[j] = mapping.get(name, name)
        for j, name in enumerate(node.output):
            node.output[j] = mapping.get(name, name)
        node.name = node_names.new(_COUNTER.sub("", node.name) or f"{node.op_type}_{i}")
    rename_reads(graph, mapping, subgraphs_only=True)  # Loop bodies read outer tensors by name
    for value in graph.value_info:
        value.name = mapping.get(value.name, value.name)
    # dynamic dims: tf2onnx numbers them with a process-global counter (unk__123)
    for value in [*graph.input, *graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_param = "batch" if axis == 0 else f"{value.name}_dim{axis}"
    graph.doc_string = "exported by lambda-export"
    graph.name = "lambda_export"
    # initializers in a stable order (name), nodes keep their topological order; sorted in place (a new list would
    # copy every tensor into the model again)
    graph.initializer.sort(key=lambda t: t.name)


def _versions() -> dict[str, str | None]:
    """The library versions written into every exported model's metadata."""
    from lambda_export.version import __version__

    return {
        "tensorflow_version": env.distribution_version("tensorflow", "tensorflow-cpu"),
        "keras_version": env.distribution_version("keras"),
        "tf2onnx_version": env.distribution_version("tf2onnx"),
        "onnx_version": onnx.__version__,
        "lambda_export_version": __version__,
    }


@dataclass(frozen=True)
class ExportOptions:
    """The float32 export's options: what :func:`convert` takes besides the source and the output, and what
    :func:`lambda_export.quantize` passes on to it when it converts (one record, one check, no repeated handling).

    Attributes:
        target: a key of :data:`lambda_export.targets.TARGETS`; the result is checked against it.
        opset: ONNX opset, :data:`MIN_OPSET` to :data:`MAX_OPSET`.
        optimize: one of :data:`OPTIMIZE_CHOICES` (see :func:`convert`).
        batch_size: fix the batch dimension; None keeps it dynamic.
        input_shapes: full shapes for inputs with unknown dims, by input name.
        trust_code: allow ``Lambda`` layers (their loading executes code from the file).
        imports: modules or ``.py`` files registering custom layers, imported before loading.
    """

    target: str = "portable"
    opset: int = 17
    optimize: str = DEFAULT_OPTIMIZE
    batch_size: int | None = None
    input_shapes: dict[str, tuple[int | None, ...]] | None = None
    trust_code: bool = False
    imports: tuple[str, ...] = ()

    def check(self) -> None:
        """Refuse an opset, target, optimize level or batch size :func:`convert` cannot use (before any slow work).

        Raises:
            InputError: naming the argument.
        """
        if not MIN_OPSET <= int(self.opset) <= MAX_OPSET:
            raise InputError(f"opset {self.opset}: supported opsets are {MIN_OPSET} to {MAX_OPSET}", argument="opset")
        if self.target not in TARGETS:
            raise InputError(f"target {self.target!r}: choose one of {', '.join(TARGETS)}", argument="target")
        if self.optimize not in OPTIMIZE_CHOICES:
            raise InputError(
                f"optimize {self.optimize!r}: choose one of {', '.join(OPTIMIZE_CHOICES)}", argument="optimize"
            )
        if self.batch_size is not None and self.batch_size <= 0:
            raise InputError(f"batch_size {self.batch_size}: must be a positive integer", argument="batch_size")

    def load(self, source: Any) -> LoadedModel:
        """``source`` loaded with these options' ``trust_code`` and ``imports``."""
        return load_model(source, trust_code=self.trust_code, imports=self.imports)

    def convert_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`convert` these options stand for."""
        return {
            "target": self.target,
            "opset": self.opset,
            "optimize": self.optimize,
            "batch_size": self.batch_size,
            "input_shapes": self.input_shapes,
            "trust_code": self.trust_code,
            "imports": self.imports,
        }


def convert(
    source: Any,
    output: str | os.PathLike[str] | None = None,
    *,
    opset: int = 17,
    batch_size: int | None = None,
    input_shapes: dict[str, tuple[int | None, ...]] | None = None,
    target: str = "portable",
    optimize: str = DEFAULT_OPTIMIZE,
    trust_code: bool = False,
    imports: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
    loaded: LoadedModel | None = None,
) -> ConvertResult:
    """Convert a Keras model to ONNX, rewrite it for ``target``, check it, and optionally save it.

    Steps: check the options (:class:`ExportOptions`) → load → trace with tf2onnx, canonical names
    (:func:`_traced`) → rewrite for the target (:func:`_rewritten`) → target check and provenance metadata
    (:func:`_stamp`) → an atomic write.

    Args:
        source: path to ``.h5`` / ``.keras`` / SavedModel folder, or an in-memory ``keras.Model``.
        output: where to write the ``.onnx`` file (atomically); None keeps it in memory.
        opset: ONNX opset, 13 to 18.
        batch_size: fix the batch dimension; None keeps it dynamic.
        input_shapes: full shapes for inputs with unknown dims, by input name, e.g. ``{"x": (None, 64, 64, 3)}``.
        target: a key of :data:`lambda_export.targets.TARGETS`; the result is checked against it.
        optimize: ``"speed"`` (the default: the clean-up passes and the exact ONNX Runtime CPU passes of
            :mod:`lambda_export.passes.performance`, which regroup the same products into faster kernels; a pass whose
            result ``target`` would refuse is not applied) or ``"size"`` (the clean-up passes only: the fewest
            nodes). Both give the same numbers up to the order of floating-point additions.
        trust_code: allow ``Lambda`` layers (their loading executes code from the file).
        imports: modules or ``.py`` files registering custom layers, imported before loading.
        overwrite: replace an existing output file.
        loaded: an already loaded model (skips loading ``source``).

    Raises:
        InputError: unreadable input, bad shapes/arguments, unwritable output (exit code 2).
        ConversionError: tf2onnx failed or produced an invalid graph (exit code 3).
    """
    options = ExportOptions(
        target=target,
        opset=opset,
        optimize=optimize,
        batch_size=batch_size,
        input_shapes=input_shapes,
        trust_code=trust_code,
        imports=tuple(imports),
    )
    options.check()
    if output is not None and Path(output).exists() and not overwrite:
        raise InputError(f"{output} exists; pass overwrite=True to replace it", argument="overwrite=True")
    if loaded is None:
        loaded = options.load(source)
    inputs = _resolve_shapes(loaded, batch_size, input_shapes)
    model = _traced(loaded, inputs, int(opset))
    model, passes, ran, warnings, pass_log = _rewritten(model, target, optimize)
    issues = [str(offense) for offense in check_target(model, target)]
    if issues:
        warnings.append(f"{len(issues)} node(s) may not load on target {target!r}: " + "; ".join(issues[:5]))
    _stamp(model, loaded, options, ran)
    result = ConvertResult(
        model=model,
        inputs=inputs,
        outputs=_output_infos(model, loaded.outputs),
        op_histogram=dict(sorted(collections.Counter(node.op_type for node in model.graph.node).items())),
        warnings=warnings,
        passes=passes,
        target_issues=issues,
        loaded=loaded,
        pass_log=pass_log,
    )
    if output is not None:
        result.path = save_model_atomic(model, output, overwrite=overwrite)
    return result


def _traced(loaded: LoadedModel, inputs: list[TensorInfo], opset: int) -> onnx.ModelProto:
    """tf2onnx's graph of the model, sorted, with the Keras input/output names, checked, and canonically named."""
    model = _tf2onnx_convert(loaded, inputs, opset)
    toposort(model.graph)  # tf2onnx's own sort ignores what Loop bodies read from the main graph
    canonical_order(model.graph, _strip_counters)  # tf2onnx's node order differs from one process to the next
    _rename_io(model, inputs, loaded.outputs)
    _check_converted(model)
    _canonical_names(model)  # the passes name new tensors after these: run-independent from here on
    return model


def _rewritten(
    model: onnx.ModelProto, target: str, optimize: str
) -> tuple[onnx.ModelProto, list[str], list[str], list[str], list[str]]:
    """The rewrite passes for ``target`` (see :mod:`lambda_export.passes.pipelines`), then canonical order and names
    again, no value_info, only the opset imports the nodes use, and the checks: (model, passes that changed it,
    passes that ran, warnings, the per-pass log)."""
    rewritten = rewrite_for_target(model, target, optimize, check=_check_converted)
    model, passes, warnings = rewritten.model, rewritten.passes, list(rewritten.warnings)
    canonical_order(model.graph, _strip_counters)
    _canonical_names(model)
    del model.graph.value_info[:]
    used_domains = {node.domain for node in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used_domains or (o.domain == "ai.onnx" and "" in used_domains)]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    _check_converted(model)
    return model, list(passes), rewritten.ran, warnings, rewritten.log_lines()


def _stamp(model: onnx.ModelProto, loaded: LoadedModel, options: ExportOptions, ran: list[str]) -> None:
    """The producer and the provenance ``metadata_props``: source hash, the rewrite passes that ran (not only those
    that changed the graph: which of them find work depends on tf2onnx's redundant nodes, which vary from one run to
    the next in one process, while the written graph does not), target, optimize, opset, versions."""
    from lambda_export.version import __version__

    model.producer_name = "lambda-export"
    model.producer_version = __version__
    metadata = {
        "source_sha256": loaded.sha256 or "in-memory",
        "source": os.path.basename(loaded.source) if loaded.source else "in-memory",
        "rewrite_passes": ",".join(ran),
        "target": options.target,
        "optimize": options.optimize,
        "opset": str(options.opset),
        **_versions(),
    }
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)


def _output_infos(model: onnx.ModelProto, outputs: list[TensorInfo]) -> list[TensorInfo]:
    _check_count("output", [value.name for value in model.graph.output], [info.name for info in outputs])
    infos = []
    for value, info in zip(model.graph.output, outputs, strict=True):
        dims = value.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        infos.append(TensorInfo(info.name, shape or info.shape, np.dtype(dtype).name))
    return infos
