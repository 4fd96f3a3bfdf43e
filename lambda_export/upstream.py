"""The one home of every upstream internal that lambda_export relies on (tf2onnx, Keras, TensorFlow).

tf2onnx, Keras and TensorFlow promise compatibility for their public API only. Where we need more (tf2onnx's
optimizer list, the second half of ``from_function`` that takes ``optimizers``, its graph API for a custom op
handler; the operation graph of a functional Keras model), the private symbol is used here and nowhere else:
``tests/architecture/test_upstream_bridge.py`` fails on any underscore attribute of tf2onnx/Keras, any ``getattr`` of
a private name and any import of an internal tf2onnx/Keras module outside this file, and
``tests/conversion/test_upstream_contract.py`` checks each entry of :data:`PRIVATE_SYMBOLS` (it exists, with the
signature and behaviour used here) on the installed versions. An upgrade therefore fails in that one test, naming
the symbol.

Version check: :func:`check_versions` runs once per process, when this module is first imported (by
:mod:`lambda_export.conversion` and :mod:`lambda_export.loading`), and compares the installed versions with
:data:`TESTED`. Another version gives an :class:`UpstreamVersionWarning` (a warning, not an
error): ``pyproject.toml`` already refuses other minors in a normal install, so another version means someone
installed it on purpose (typically to try an upgrade), and refusing to start would also stop the contract test that
tells what the upgrade broke. What breaks is then reported where it breaks: a missing symbol raises a
:class:`~lambda_export.errors.ConversionError` naming it and the tested version (:func:`_symbol`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lambda_export import env
from lambda_export.errors import ConversionError

__all__ = [
    "PRIVATE_SYMBOLS",
    "TESTED",
    "GraphOp",
    "NewOp",
    "Replacement",
    "UpstreamVersionWarning",
    "allow_xla_inlining",
    "check_versions",
    "convert_graph_def",
    "default_optimizers",
    "einsum_relabeller",
    "erfc_as_one_minus_erf",
    "freeze_function",
    "functional_operations",
    "grappler_optimize",
    "inbound_calls",
    "input_layer_name",
    "integer_floor_mod",
    "is_functional",
    "nodes_by_depth",
    "ops_replacer",
    "stable_merge_duplicates",
    "string_equality_rewriter",
    "sublayers",
    "table_lookup_handler",
    "tensor_renames",
]

TESTED: dict[str, str] = {"tf2onnx": "1.17", "keras": "3.15", "tensorflow": "2.21"}
"""distribution → the major.minor the symbols below were written and tested against (any patch release)."""

PRIVATE_SYMBOLS: dict[str, str] = {
    # tf2onnx
    "tf2onnx.convert._convert_common": "from_function's second half, the one entry point taking `optimizers` "
    "(convert_graph_def)",
    "tf2onnx.convert.tensor_names_from_structed": "from_function's output renames (tensor_renames)",
    "tf2onnx.tf_loader.from_function": "freezes a concrete function (freeze_function)",
    "tf2onnx.tf_loader.tf_optimize": "TensorFlow's grappler as tf2onnx runs it (grappler_optimize)",
    "tf2onnx.optimizer._get_optimizers": "tf2onnx's default optimizer list (default_optimizers)",
    "tf2onnx.optimizer.merge_duplicated_nodes_optimizer.MergeDuplicatedNodesOptimizer"
    "._merge_nodes_that_are_duplicated": "overridden to keep the duplicate with the stablest name "
    "(stable_merge_duplicates)",
    "tf2onnx.graph.Graph.get_dtype/make_const/insert_new_node_on_output": "the graph API of a custom op handler "
    "(erfc_as_one_minus_erf)",
    "tf2onnx.graph.Node.type/get_attr_value/attr": "the node API of a custom rewriter (einsum_relabeller)",
    "tf2onnx.utils.make_name/map_onnx_to_numpy_type": "fresh node names and ONNX→NumPy dtypes in an op handler",
    "tf2onnx.graph.Graph.remove_node/make_node/get_shape/find_output_consumers, Node.inputs/is_const/"
    "get_tensor_value": "replace a table lookup by an ai.onnx.ml node (table_lookup_handler)",
    "tf2onnx.graph.Graph.make_node(skip_conversion)/get_nodes/remove_node, Node.output_shapes/output_dtypes": "custom "
    "rewriters replacing nodes before tf2onnx's handlers (string_equality_rewriter, integer_floor_mod)",
    "tf2onnx.graph.Graph.get_nodes/make_const/make_node(skip_conversion)/remove_node/outputs, Node.type/input/"
    "output/output_dtypes/output_shapes/get_tensor_value": "a custom rewriter replacing TensorFlow nodes by the plain "
    "ONNX nodes a plan returns (ops_replacer: complex-valued FFT pipelines, lambda_export/spectral.py)",
    # Keras
    "keras Functional._operations": "the operations of a functional model, nested models included "
    "(functional_operations, is_functional)",
    "keras Operation._inbound_nodes": "the calls of an operation (inbound_calls)",
    "keras KerasTensor._keras_history.operation": "the InputLayer that made a model input (input_layer_name)",
    "keras Node.arguments.args/kwargs, Node.outputs": "what one call read and produced (inbound_calls)",
    "keras Layer._flatten_layers": "every layer a custom layer tracks (sublayers)",
    "keras Functional._nodes_by_depth, Sequential._functional": "a functional graph by depth (nodes_by_depth)",
    # TensorFlow
    "tensorflow FunctionDef attrs _XlaMustCompile/_noinline": "functions Keras compiles with XLA (allow_xla_inlining)",
}
"""Every private or internal upstream symbol used here → what for (the function of this module that uses it)."""


class UpstreamVersionWarning(UserWarning):
    """An upstream package is at a version that this module's private symbols were not tested with."""


def check_versions(*, warn: bool = True) -> tuple[str, ...]:
    """A message for each installed distribution of :data:`TESTED` at another major.minor, each also given as an
    :class:`UpstreamVersionWarning` when ``warn``. Runs once when this module is first imported (start-up)."""
    messages = []
    for distribution, tested in TESTED.items():
        names = ("tensorflow", "tensorflow-cpu") if distribution == "tensorflow" else (distribution,)
        installed = env.distribution_version(*names)
        if installed is None or installed == tested or installed.startswith(f"{tested}."):
            continue
        messages.append(
            f"{distribution} {installed} is installed; lambda_export uses private {distribution} symbols tested with "
            f"{distribution} {tested}.x only (lambda_export/upstream.py lists them; "
            "tests/conversion/test_upstream_contract.py checks them): conversions may fail or differ"
        )
    for message in messages if warn else []:
        warnings.warn(message, UpstreamVersionWarning, stacklevel=2)
    return tuple(messages)


def _symbol(owner: Any, name: str, where: str) -> Any:
    """``owner.name``, or a ConversionError naming the symbol and the version it was tested with."""
    try:
        return getattr(owner, name)
    except AttributeError:
        package = where.split(".")[0]
        raise ConversionError(
            f"{where}.{name} is missing from the installed {package} {env.distribution_version(package)}; "
            f"lambda_export needs it and was tested with {package} {TESTED.get(package, '?')}.x"
        ) from None


check_versions()


# -- tf2onnx: conversion -------------------------------------------------------------------------------------------


def freeze_function(concrete: Any, input_names: list[str], output_names: list[str]) -> Any:
    """The frozen ``GraphDef`` of a concrete function, as ``tf2onnx.convert.from_function`` freezes it.

    ``large_model=False``: tf2onnx's large-model path calls ``np.product``, which NumPy 2 removed.
    """
    from tf2onnx import tf_loader

    return _symbol(tf_loader, "from_function", "tf2onnx.tf_loader")(
        concrete, input_names, output_names, large_model=False
    )


def grappler_optimize(input_names: list[str], output_names: list[str], graph_def: Any) -> Any:
    """TensorFlow's grappler on a frozen graph, as tf2onnx runs it (call inside a ``tf.Graph().as_default()``)."""
    from tf2onnx import tf_loader

    return _symbol(tf_loader, "tf_optimize", "tf2onnx.tf_loader")(input_names, output_names, graph_def)


def tensor_renames(concrete: Any, input_names: list[str], output_names: list[str]) -> dict[str, str]:
    """The renames ``from_function`` applies to the graph's inputs/outputs (structured output names)."""
    from tf2onnx import convert

    return _symbol(convert, "tensor_names_from_structed", "tf2onnx.convert")(concrete, input_names, output_names)


def convert_graph_def(
    frozen: Any,
    *,
    name: str,
    opset: int,
    input_names: list[str],
    output_names: list[str],
    tensors_to_rename: dict[str, str],
    optimizers: dict[str, Callable[[], Any]],
    custom_rewriter: list[Callable[..., Any]] | None = None,
    custom_op_handlers: dict[str, Any] | None = None,
) -> Any:
    """A frozen graph → ONNX ``ModelProto`` through tf2onnx with this call's ``optimizers`` (nothing global changed).

    ``_convert_common`` is ``from_function``'s own second half and the one entry point that takes ``optimizers``.
    ``continue_on_error=True`` as in ``from_function``: unconverted ops stay in the graph, the caller checks for them.
    """
    from tf2onnx import convert

    proto, _ = _symbol(convert, "_convert_common", "tf2onnx.convert")(
        frozen,
        name=name,
        continue_on_error=True,
        opset=opset,
        custom_rewriter=custom_rewriter,
        custom_op_handlers=custom_op_handlers,
        input_names=input_names,
        output_names=output_names,
        tensors_to_rename=tensors_to_rename,
        optimizers=optimizers,
    )
    return proto


# -- tf2onnx: optimizers -------------------------------------------------------------------------------------------


def default_optimizers() -> dict[str, Callable[[], Any]]:
    """tf2onnx's default optimizer list (name → factory), a copy the caller may change."""
    from tf2onnx import optimizer

    return dict(_symbol(optimizer, "_get_optimizers", "tf2onnx.optimizer")())


def stable_merge_duplicates(sort_key: Callable[[str], Any]) -> Any:
    """tf2onnx's ``MergeDuplicatedNodesOptimizer``, keeping the duplicate whose name sorts first by ``sort_key``.

    tf2onnx keeps the first duplicate in its node order, which changes from one process to the next; sorting the
    candidates first (the base class sorts them again, stably, by output count) makes the survivor's name stable.
    """
    from tf2onnx.optimizer.merge_duplicated_nodes_optimizer import MergeDuplicatedNodesOptimizer

    where = "tf2onnx.optimizer.merge_duplicated_nodes_optimizer.MergeDuplicatedNodesOptimizer"
    merge = _symbol(MergeDuplicatedNodesOptimizer, "_merge_nodes_that_are_duplicated", where)

    class StableMergeDuplicates(MergeDuplicatedNodesOptimizer):
        def _merge_nodes_that_are_duplicated(self, nodes_to_process: list[Any], graph: Any) -> None:
            nodes_to_process.sort(key=lambda node: (sort_key(node.name), node.name))
            merge(self, nodes_to_process, graph)

    return StableMergeDuplicates()


# -- tf2onnx: graph API of rewriters and op handlers ---------------------------------------------------------------


def einsum_relabeller(relabel: Callable[[str], str]) -> Callable[[Any, list[Any]], list[Any]]:
    """A tf2onnx ``custom_rewriter`` that replaces each Einsum equation ``e`` by ``relabel(e)`` before the handlers."""

    def rewriter(graph: Any, ops: list[Any]) -> list[Any]:
        for node in ops:
            if node.type == "Einsum":
                equation = node.get_attr_value("equation")
                text = equation.decode() if isinstance(equation, bytes) else str(equation)
                node.attr["equation"].s = relabel(text).encode()
        return ops

    return rewriter


def integer_floor_mod(ctx: Any, ops: list[Any]) -> list[Any]:
    """A tf2onnx ``custom_rewriter``: an integer ``FloorMod`` becomes ONNX ``Mod`` (``fmod=0``: the remainder takes
    the divisor's sign, which is TensorFlow's floor modulo for integers).

    tf2onnx 1.17 writes ``x − (x / y) · y`` with ONNX's integer ``Div``, which truncates: ``FloorMod(−3, 2)`` gives −1,
    not 1 (``IntegerLookup(num_oov_indices=2)`` sends a negative out-of-vocabulary id to the wrong OOV index).
    """
    from onnx import TensorProto

    integers = {
        TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
        TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
    }  # fmt: skip
    for node in list(ops):
        if node.type == "FloorMod" and ctx.get_dtype(node.input[0]) in integers:
            name, inputs, outputs = node.name, list(node.input), list(node.output)
            shapes, dtypes = node.output_shapes, node.output_dtypes
            ctx.remove_node(name)
            ctx.make_node("Mod", inputs, attr={"fmod": 0}, name=name, outputs=outputs, shapes=shapes, dtypes=dtypes)
    return ctx.get_nodes()


def erfc_as_one_minus_erf(ctx: Any, node: Any, name: str, args: Any) -> None:
    """A tf2onnx op handler for ``Erfc``: the node becomes ``Erf`` followed by ``1 − ·`` (see conversion.py)."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}/one"), np.array(1, dtype=dtype))
    node.type = "Erf"
    ctx.insert_new_node_on_output(
        "Sub", node.output[0], name=utils.make_name(f"{node.name}/one_minus"), inputs=[one.output[0], node.output[0]]
    )


def table_lookup_handler(
    build: Callable[[str, str, Any], tuple[str, dict[str, Any]] | None],
) -> Callable[[Any, Any, str, Any], None]:
    """A tf2onnx op handler for ``LookupTableFindV2`` that asks ``build`` what replaces the lookup.

    ``build(table, node, default)`` gets the name of the node that holds the table (a ``Placeholder`` standing for a
    captured table resource, Identity nodes skipped), the lookup node's name and the default value (a NumPy array,
    or the name of the tensor that holds it when it is not a constant: a captured value is a graph input), and returns ``(op_type, attributes)`` of the ``ai.onnx.ml`` node that maps the
    keys to the values, or None to leave the node unconverted (the caller reports why). The replacement reads the
    lookup's keys and writes its output; the table's node goes when nothing else reads it.
    """

    def handler(ctx: Any, node: Any, name: str, args: Any) -> None:
        table = node.inputs[0]
        while table.type == "Identity":
            table = table.inputs[0]
        default = node.inputs[2]
        value = default.get_tensor_value(as_list=False) if default.is_const() else node.input[2]
        built = build(table.name, node.name, value)
        if built is None:
            return
        op_type, attributes = built
        keys, outputs = node.input[1], list(node.output)
        shape, dtype = ctx.get_shape(outputs[0]) or ctx.get_shape(keys), ctx.get_dtype(outputs[0])
        ctx.remove_node(node.name)
        ctx.make_node(
            op_type,
            [keys],
            attr=attributes,
            name=node.name,
            outputs=outputs,
            shapes=[shape],
            dtypes=[dtype],
            domain="ai.onnx.ml",
        )
        if not ctx.find_output_consumers(table.output[0]):
            ctx.remove_node(table.name)

    return handler


def string_equality_rewriter(
    value_of: Callable[[str], Any], refused: Callable[[str], None]
) -> Callable[[Any, list[Any]], list[Any]]:
    """A tf2onnx ``custom_rewriter``: ``Equal``/``NotEqual`` of a string tensor and one string becomes
    ``CategoryMapper`` (the string → 1, anything else → 0), ``Cast`` to bool (and ``Not``).

    tf2onnx 1.17 converts a string ``Equal`` by casting both sides to numbers ("FIXME: casting is not the same as
    equal"), which ONNX Runtime refuses at run time (``stoll``); ONNX's ``Equal`` takes strings from opset 19 only,
    beyond tf2onnx's 18. Keras' ``StringLookup(mask_token=...)`` compares its input with the mask token this way.
    ``value_of(tensor)`` gives the value of a tensor that is not a constant in tf2onnx's graph (a captured value is a
    graph input), or None; a string comparison with no single known string on either side goes to
    ``refused(node name)`` and is left as it is.
    """
    from onnx import TensorProto

    def known(node: Any, position: int) -> Any:
        source = node.inputs[position]
        if source is not None and source.is_const():
            return source.get_tensor_value(as_list=False)
        return value_of(node.input[position])

    def rewriter(ctx: Any, ops: list[Any]) -> list[Any]:
        for node in list(ops):
            if node.type not in ("Equal", "NotEqual") or ctx.get_dtype(node.input[0]) != TensorProto.STRING:
                continue
            for data, other in ((0, 1), (1, 0)):
                value = known(node, other)
                if (
                    value is not None
                    and np.size(value) == 1
                    and np.ndim(value) <= len(ctx.get_shape(node.input[data]) or ())
                ):
                    break
            else:
                refused(node.name)
                continue
            token = np.asarray(value).reshape(()).item()
            token = token if isinstance(token, bytes) else str(token).encode()
            source, outputs, name, negate = node.input[data], list(node.output), node.name, node.type == "NotEqual"
            shape = ctx.get_shape(outputs[0]) or ctx.get_shape(source)
            ctx.remove_node(name)
            mapper = ctx.make_node(
                "CategoryMapper",
                [source],
                attr={"cats_strings": [token], "cats_int64s": [1], "default_int64": 0},
                name=f"{name}/is_token",
                shapes=[shape],
                dtypes=[TensorProto.INT64],
                domain="ai.onnx.ml",
            )
            if negate:
                cast = ctx.make_node(
                    "Cast", mapper.output, attr={"to": TensorProto.BOOL}, name=f"{name}/equal", shapes=[shape],
                    dtypes=[TensorProto.BOOL],
                )  # fmt: skip
                ctx.make_node("Not", cast.output, name=name, outputs=outputs, shapes=[shape], dtypes=[TensorProto.BOOL])
            else:
                ctx.make_node(
                    "Cast", mapper.output, attr={"to": TensorProto.BOOL}, name=name, outputs=outputs,
                    shapes=[shape], dtypes=[TensorProto.BOOL],
                )  # fmt: skip
        return ctx.get_nodes()

    return rewriter


@dataclass(frozen=True)
class GraphOp:
    """A node of tf2onnx's graph as :func:`ops_replacer` shows it to a plan, in plain values."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dtypes: tuple[int | None, ...]
    """The ONNX element type of each output (``onnx.TensorProto`` numbers; complex64 is 14)."""
    shapes: tuple[tuple[int, ...] | None, ...]
    """Each output's shape, -1 for an unknown dim, None for an unknown rank."""
    read: Callable[[], np.ndarray | None] = field(default=lambda: None, compare=False, repr=False)

    @property
    def value(self) -> np.ndarray | None:
        """A ``Const`` node's value (read when asked: a frozen model's weights are ``Const`` nodes too)."""
        return self.read()


@dataclass(frozen=True)
class NewOp:
    """A standard ONNX node a plan adds: one output, its element type and (where known) its shape."""

    type: str
    inputs: tuple[str, ...]
    output: str
    dtype: int
    shape: tuple[int, ...] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Replacement:
    """What a plan replaces: nodes removed (by name), constants added (tensor name → value), ONNX nodes added (in
    order). A removed node's output that other nodes read must be the output of an added node."""

    removed: list[str] = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    nodes: list[NewOp] = field(default_factory=list)


def ops_replacer(plan: Callable[[list[GraphOp], list[str]], Replacement | None]) -> Callable[[Any, list[Any]], Any]:
    """A tf2onnx ``custom_rewriter`` that shows ``plan`` the graph (its nodes, the graph's output tensors) before the
    op handlers run and applies the :class:`Replacement` it returns (None: nothing changes). The added nodes are ONNX
    nodes already (tf2onnx's handlers skip them)."""

    def rewriter(ctx: Any, ops: list[Any]) -> list[Any]:
        nodes = ctx.get_nodes()
        view = [
            GraphOp(
                type=node.type,
                name=node.name,
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                dtypes=tuple(node.output_dtypes),
                shapes=tuple(None if shape is None else tuple(shape) for shape in node.output_shapes),
                read=(lambda node=node: node.get_tensor_value(as_list=False)) if node.type == "Const" else lambda: None,
            )
            for node in nodes
        ]
        replacement = plan(view, list(ctx.outputs))
        if replacement is None:
            return nodes
        for name in replacement.removed:
            ctx.remove_node(name)
        for name, value in replacement.constants.items():
            ctx.make_const(name, value)
        for new in replacement.nodes:
            ctx.make_node(
                new.type, list(new.inputs), attr=dict(new.attrs), name=new.output.split(":")[0],
                outputs=[new.output], shapes=None if new.shape is None else [list(new.shape)], dtypes=[new.dtype],
                skip_conversion=True,
            )  # fmt: skip
        return ctx.get_nodes()

    return rewriter


# -- TensorFlow ----------------------------------------------------------------------------------------------------


def allow_xla_inlining(graph_def: Any) -> bool:
    """Let TensorFlow's optimizer inline the functions Keras compiles with XLA; True if there were any.

    Keras 3 runs some ops on the CPU through ``tf.function(jit_compile=True)`` (grouped and depthwise-multiplier
    convolutions: ConvNeXt's depthwise ``Conv2D(groups=C)``); such a function is marked ``_noinline``, stays a
    ``StatefulPartitionedCall`` in the frozen graph, and tf2onnx cannot convert that. Its body is ordinary ops.
    """
    compiled = set()
    for function in graph_def.library.function:
        if "_XlaMustCompile" in function.attr and function.attr["_XlaMustCompile"].b:
            compiled.add(function.signature.name)
            for key in ("_noinline", "_XlaMustCompile"):
                if key in function.attr:
                    del function.attr[key]
    for node in graph_def.node:  # the call sites carry the mark too
        if "f" in node.attr and node.attr["f"].func.name in compiled and "_XlaMustCompile" in node.attr:
            del node.attr["_XlaMustCompile"]
    return bool(compiled)


# -- Keras: the operation graph of a functional model --------------------------------------------------------------


def is_functional(operation: Any) -> bool:
    """Whether ``operation`` is a functional model (it has an operation graph to walk)."""
    return hasattr(operation, "_operations")


def functional_operations(model: Any) -> list[Any]:
    """The operations (layers, ops, nested models) of a functional Keras model; empty for any other object."""
    return list(getattr(model, "_operations", None) or [])


def inbound_calls(operation: Any) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], list[Any]]]:
    """(positional arguments, keyword arguments, outputs) of each call of ``operation`` in a functional graph."""
    for node in getattr(operation, "_inbound_nodes", None) or []:
        arguments = node.arguments
        yield tuple(arguments.args), dict(arguments.kwargs), list(node.outputs)


def all_calls(model: Any) -> Iterator[tuple[Any, tuple[Any, ...], dict[str, Any], list[Any]]]:
    """(operation, positional arguments, keyword arguments, outputs) of every call in ``model``'s functional graph
    and in the graphs of the functional models nested in it (each model walked once)."""
    pending, seen = [model], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for operation in functional_operations(current):
            if is_functional(operation):
                pending.append(operation)
            for args, kwargs, outputs in inbound_calls(operation):
                yield operation, args, kwargs, outputs


def input_layer_name(tensor: Any) -> str | None:
    """The name of the ``InputLayer`` that made the model input ``tensor`` (None when it was not made by one).

    ``keras.Input(shape)`` without a name makes an ``InputLayer`` named ``input_layer`` (``input_layer_N``) whose
    tensor is named ``keras_tensor_N``: the layer's name is the model's own (``model.summary()``, plain tf2onnx's input
    name); with a name both carry it.
    """
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None)
    if operation is None or type(operation).__name__ != "InputLayer":
        return None
    name = getattr(operation, "name", None)
    return name if isinstance(name, str) and name else None


def sublayers(operation: Any) -> list[Any]:
    """Every layer ``operation`` tracks, recursively, itself excluded (empty when it tracks none or cannot say)."""
    flatten = getattr(operation, "_flatten_layers", None)
    if flatten is None:
        return []
    try:
        return list(flatten(include_self=False, recursive=True))
    except Exception:  # a custom layer's own tracking can be anything
        return []


def nodes_by_depth(model: Any) -> dict[int, list[Any]] | None:
    """A functional model's (or a Sequential's inner functional model's) nodes by depth; None for other models."""
    graph = model if hasattr(model, "_nodes_by_depth") else getattr(model, "_functional", None)
    found = getattr(graph, "_nodes_by_depth", None)
    return found if isinstance(found, dict) else None
