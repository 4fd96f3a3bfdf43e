"""Exact constant folding of what a conversion computes from weights passed as graph inputs (step "convert").

:func:`lambda_export.conversion.run_tf2onnx` can trace the large weights of a model as graph inputs instead of
constants frozen into the TensorFlow graph (tf2onnx, its optimizers and TensorFlow's grappler would each copy them
several times). tf2onnx then leaves the work it would have folded on those weights in the graph: the kernel
transposes of convolutions (HWIO → OIHW), reshapes and casts of projection kernels, the gather of a relative position
table, the per-channel arithmetic of normalisations. :func:`attach_weights` turns those graph inputs into initializers
and :func:`fold_weights` folds, with NumPy and in place, every node whose inputs are all constant and at least one of
them is computed from such a weight.

Only operations whose NumPy result is bit-identical to what an ONNX runtime computes are folded: data movement
(Identity, Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Concat, Gather, Slice with positive steps, Shape, Size),
Cast, and the correctly rounded IEEE operations Add, Sub, Mul, Div (floating point), Neg, Abs, Sqrt, Reciprocal.
Each intermediate array is dropped as soon as nothing reads it any more, so folding a chain of 2.5 GB tensors holds at
most two of them at a time (a view costs nothing); an initializer is written (copied into its ``TensorProto``) only for
what the graph still reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from lambda_export.graph import attribute, subgraph_reads

__all__ = ["FOLDABLE", "attach_weights", "fold_weights", "squeeze_matmul_weights"]


def _ints(values: Any) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


class _Reshaped:
    """The C-order data of ``base`` seen with shape ``shape``: a reshape NumPy could only do by copying (``base`` is
    a transposed view). Written as an initializer straight from ``base`` (``tobytes`` is C-order); another fold that
    reads it gets the copy."""

    def __init__(self, base: np.ndarray, shape: tuple[int, ...]) -> None:
        self.base, self.shape = base, shape

    def array(self) -> np.ndarray:
        return np.reshape(self.base, self.shape)


Value = np.ndarray | _Reshaped


def _reshaped(x: Value, shape: list[int]) -> Value:
    """``x`` with a new shape, without copying: a view, or a :class:`_Reshaped` of its base."""
    if isinstance(x, _Reshaped):
        return _Reshaped(x.base, _resolve(x.shape, shape))
    dims = _resolve(x.shape, shape)
    try:
        return np.reshape(x, dims, copy=False)
    except ValueError:
        return _Reshaped(x, dims)


def _resolve(old: tuple[int, ...], shape: list[int]) -> tuple[int, ...]:
    """``shape`` with its -1 resolved for ``old``'s element count (raises ValueError when they do not match)."""
    total = int(np.prod(old, dtype=np.int64))
    dims = list(shape)
    if dims.count(-1) > 1:
        raise ValueError("more than one -1")
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        if known == 0 or total % known:
            raise ValueError("cannot infer -1")
        dims[dims.index(-1)] = total // known
    if int(np.prod(dims, dtype=np.int64)) != total or any(d < 0 for d in dims):
        raise ValueError("element count differs")
    return tuple(dims)


def _reshape(node: onnx.NodeProto, x: Value, shape: np.ndarray) -> Value:
    dims = _ints(shape)
    if not attribute(node, "allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return _reshaped(x, dims)


def _squeeze(node: onnx.NodeProto, x: Value, axes: np.ndarray | None = None) -> Value:
    axes_list = _ints(axes) if axes is not None else attribute(node, "axes")
    rank = len(x.shape)
    if axes_list is None:
        dropped = {i for i, d in enumerate(x.shape) if d == 1}
    else:
        dropped = {a % rank for a in axes_list}
        if any(x.shape[a] != 1 for a in dropped):
            raise ValueError("squeezing a dim that is not 1")
    return _reshaped(x, [d for i, d in enumerate(x.shape) if i not in dropped])


def _unsqueeze(node: onnx.NodeProto, x: Value, axes: np.ndarray | None = None) -> Value:
    axes_list = _ints(axes) if axes is not None else list(attribute(node, "axes"))
    rank = len(x.shape) + len(axes_list)
    positions = {a % rank for a in axes_list}
    rest = iter(x.shape)
    return _reshaped(x, [1 if i in positions else next(rest) for i in range(rank)])


def _flatten(node: onnx.NodeProto, x: Value) -> Value:
    rank = len(x.shape)
    axis = int(attribute(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return _reshaped(x, [outer, int(np.prod(x.shape[axis:], dtype=np.int64))])


def _transpose(node: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    perm = attribute(node, "perm")
    return np.transpose(x, None if perm is None else list(perm))  # a view: copied once, when written


def _gather(node: onnx.NodeProto, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    axis = int(attribute(node, "axis", 0)) % x.ndim
    size = x.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError("index out of range")  # a runtime error, not something to fold
    return np.take(x, indices, axis=axis)


def _slice(
    node: onnx.NodeProto,
    x: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    starts_list, ends_list = _ints(starts), _ints(ends)
    axes_list = _ints(axes) if axes is not None else list(range(len(starts_list)))
    steps_list = _ints(steps) if steps is not None else [1] * len(starts_list)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts_list, ends_list, axes_list, steps_list, strict=True):
        if step <= 0:
            raise ValueError("only positive steps are folded")  # ONNX clamps negative steps differently
        index[axis % x.ndim] = slice(start, end, step)  # positive steps: Python clamps as ONNX does
    return x[tuple(index)]


def _concat(node: onnx.NodeProto, *xs: np.ndarray) -> np.ndarray:
    return np.concatenate(xs, axis=int(attribute(node, "axis")))


def _cast(node: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(attribute(node, "to"))))
    if x.dtype == dtype:
        return x
    if x.dtype.kind == "f" and dtype.kind in "iub":
        raise ValueError("float to integer casts are left to the runtime")  # NaN/overflow behaviour differs
    return x.astype(dtype)


def _shape(node: onnx.NodeProto, x: Value) -> np.ndarray:
    dims = np.array(x.shape, dtype=np.int64)
    start, end = attribute(node, "start", 0), attribute(node, "end", None)
    return dims[start:end]


def _same_dtype(function: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """An elementwise NumPy function applied only when all operands share one dtype (NumPy would promote)."""

    def apply(node: onnx.NodeProto, *xs: np.ndarray) -> np.ndarray:
        if len({x.dtype for x in xs}) != 1:
            raise TypeError("mixed dtypes")
        return np.asarray(function(*xs), dtype=xs[0].dtype)

    return apply


def _float_only(function: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def apply(node: onnx.NodeProto, *xs: np.ndarray) -> np.ndarray:
        if xs[0].dtype.kind != "f":
            raise TypeError("integer division is the runtime's")  # ONNX truncates, NumPy floors
        return _same_dtype(function)(node, *xs)

    return apply


SHAPE_ONLY = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Size"})
"""Folds that read only the shape of their first input (it may stay a lazy :class:`_Reshaped`)."""

FOLDABLE: dict[str, Callable[..., Any]] = {
    "Identity": lambda node, x: x,
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Gather": _gather,
    "Slice": _slice,
    "Cast": _cast,
    "Shape": _shape,
    "Size": lambda node, x: np.array(int(np.prod(x.shape, dtype=np.int64)), dtype=np.int64),
    "Add": _same_dtype(np.add),
    "Sub": _same_dtype(np.subtract),
    "Mul": _same_dtype(np.multiply),
    "Div": _float_only(np.divide),
    "Neg": _same_dtype(np.negative),
    "Abs": _same_dtype(np.abs),
    "Sqrt": _float_only(np.sqrt),
    "Reciprocal": _float_only(np.reciprocal),
}
"""op type → NumPy implementation ``f(node, *inputs)``, exact for the cases it does not refuse (it raises on the
others, which are then left to the runtime)."""


def squeeze_matmul_weights(model: onnx.ModelProto, names: Iterable[str]) -> int:
    """Drop the leading 1s of the initializers in ``names`` that only MatMuls read, as second operand, where the first
    operand has at least their rank (the same product); return how many. The shape is edited in place: no data is
    copied. (The clean-up pass ``squeeze_matmul_constants`` does the same for the other constants, by writing a new
    initializer: for a weight of gigabytes, two more copies of it.)"""
    from lambda_export.graph import static_shapes

    wanted = set(names)
    graph = model.graph
    candidates = {
        init.name: init
        for init in graph.initializer
        if init.name in wanted and len(init.dims) > 2 and all(d == 1 for d in init.dims[:-2])
    }
    if not candidates:
        return 0
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name in candidates:
                readers.setdefault(name, []).append(node)
        for name in subgraph_reads(node):
            if name in candidates:
                readers.setdefault(name, []).append(node)  # read inside a body: left alone
    outputs = {value.name for value in graph.output}
    shapes = static_shapes(model)
    squeezed = 0
    for name, init in candidates.items():
        users = readers.get(name, [])
        if not users or name in outputs:
            continue
        if any(
            node.op_type != "MatMul"
            or list(node.input).count(name) != 1
            or node.input[1] != name
            or len(shapes.get(node.input[0]) or ()) < len(init.dims)
            for node in users
        ):
            continue
        dims = list(init.dims[-2:])
        del init.dims[:]
        init.dims.extend(dims)
        squeezed += 1
    return squeezed


def attach_weights(graph: onnx.GraphProto, weights: dict[str, Callable[[], np.ndarray]]) -> None:
    """Fold what the graph computes from the graph inputs named in ``weights``, then make them initializers.

    ``weights`` maps a graph input name to a function returning its value (called once, when needed: a view of the
    framework's own buffer costs no memory). The inputs are removed from ``graph.input``; the folded results and the
    weights still read become initializers (see :func:`fold_weights`).
    """
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    fold_weights(graph, weights)


def fold_weights(graph: onnx.GraphProto, weights: dict[str, Callable[[], np.ndarray]]) -> int:
    """Fold, in place, the nodes of ``graph`` computed from ``weights`` and constants only; return how many.

    A node is folded when its op is in :data:`FOLDABLE`, every input is a weight, an initializer, or a folded result,
    at least one comes from a weight, none of its outputs is a graph output, and its NumPy implementation accepts the
    case. Weights and folded results that are still read (by a node, a subgraph or as a graph output) become
    initializers, in the order of their first reader; the rest is dropped, and so are the initializers that only
    folded nodes read.
    """
    readers = _reader_counts(graph)
    outputs = {value.name for value in graph.output}
    initializers = {init.name: init for init in graph.initializer}
    known: dict[str, Any] = dict(weights)  # weight-derived values: a function (not read yet), an array, a _Reshaped
    removed: set[int] = set()
    changed = True
    while changed:  # tf2onnx's node order is nearly topological: another round catches the rest
        changed = False
        for position, node in enumerate(graph.node):
            if position in removed or node.domain not in ("", "ai.onnx") or node.op_type not in FOLDABLE:
                continue
            names = list(node.input)
            while names and not names[-1]:
                names.pop()  # trailing optional inputs left out
            if not names or "" in names or not any(name in known for name in names):
                continue
            if not all(name in known or name in initializers for name in names):
                continue
            if len(node.output) != 1 or node.output[0] in outputs:
                continue
            values = [
                _value(known, initializers, name, lazy=index == 0 and node.op_type in SHAPE_ONLY)
                for index, name in enumerate(names)
            ]
            try:
                result = FOLDABLE[node.op_type](node, *values)
            except (ValueError, TypeError, IndexError):
                continue
            del values
            known[node.output[0]] = result
            del result  # the only reference to a large intermediate must be the one in `known`
            removed.add(position)
            changed = True
            for name in names:
                readers[name] -= 1
                if readers[name] == 0 and name not in outputs:
                    known.pop(name, None)  # nothing reads it any more: a large intermediate is freed here
    if removed:
        for position in sorted(removed, reverse=True):
            del graph.node[position]
    still_read = {name for name, count in readers.items() if count > 0} | outputs
    for position in reversed(range(len(graph.initializer))):
        if graph.initializer[position].name not in still_read:
            del graph.initializer[position]  # by position: rebuilding the list would copy every tensor
    for name in _in_graph_order(graph, [name for name in known if name in still_read]):
        _fill(graph.initializer.add(), known, name)  # in place: append() would copy (and refuses 2 GB)
    return len(removed)


def _value(known: dict[str, Any], initializers: dict[str, onnx.TensorProto], name: str, *, lazy: bool) -> Value:
    """The value of ``name`` for a fold (a :class:`_Reshaped` stays lazy when ``lazy``)."""
    if name not in known:
        return numpy_helper.to_array(initializers[name])
    value = known[name]
    if callable(value):
        value = known[name] = np.asarray(value())
    if isinstance(value, _Reshaped) and not lazy:
        value = known[name] = value.array()
    return value


def _reader_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many times each name is read: node inputs, plus once per node whose subgraphs read it by name."""
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
        for name in subgraph_reads(node):
            counts[name] = counts.get(name, 0) + 1
    return counts


def _in_graph_order(graph: onnx.GraphProto, names: Iterable[str]) -> list[str]:
    """``names`` ordered by their first reader in ``graph`` (deterministic whatever order they were found in)."""
    wanted = set(names)
    order: list[str] = []
    for node in graph.node:
        for name in [*node.input, *sorted(subgraph_reads(node))]:
            if name in wanted:
                order.append(name)
                wanted.discard(name)
    order.extend(sorted(wanted))  # graph outputs read by no node
    return order


def _fill(tensor: onnx.TensorProto, known: dict[str, Any], name: str) -> None:
    """Make ``tensor`` hold ``known[name]`` (removed from ``known`` first): its data is copied once into ``raw_data``
    (through one ``bytes`` object, C-order whatever the strides) while nothing else holds a folded copy of it."""
    value = known.pop(name)
    if callable(value):
        value = np.asarray(value())
    base = value.base if isinstance(value, _Reshaped) else value
    shape = tuple(value.shape)
    if base.dtype == object or base.dtype.kind in "SU" or base.dtype.byteorder == ">":
        tensor.CopyFrom(numpy_helper.from_array(np.reshape(base, shape), name))
        return
    tensor.name = name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(base.dtype)
    tensor.dims.extend(shape)
    data = base.tobytes()  # C order: also the data of the reshaped view
    del value, base  # a folded array is freed before its bytes are copied into the tensor
    tensor.raw_data = data
