"""Rewrite ONNX ``Einsum`` nodes into Transpose / Reshape / MatMul / Mul / ReduceSum (and Slice / Squeeze / Unsqueeze).

Why: several runtimes have no Einsum (onnxruntime-web's WebGL backend, TFLite, TensorRT before 8.2 and then only a-z),
and tf2onnx (1.17) lower-cases equations, silently turning ``bIi,iK->bIK`` into ``bii,ik->bik``. This pass computes exactly what ``numpy.einsum`` computes, with standard ops.

Approach, per Einsum node:

1. Parse and validate the equation (:func:`~lambda_export.passes.einsum_spec.parse_einsum_equation`): every
   subscript and every dimension covered by ``...`` becomes an integer label, as numpy reads them.
2. Shapes come from ``onnx.shape_inference``. A label's size is the static size any operand gives it. An operand axis
   that is statically 1 while another operand has the same label with another or an unknown size is a numpy broadcast:
   the axis is removed from that operand. This is exact for summed labels too, since ``x * sum(y) == sum(x * y)``.
   The copies of a subscript repeated within one operand must have one size, as numpy requires.
3. Diagonals: in an operand where a label repeats (``ii->i``, ``...ii->...i``, ``iij,jk->ik``, ``iii->i``), its ``k``
   copies (size ``n``) are moved next to each other (Transpose, when they are not adjacent already), flattened into one
   axis of ``n**k`` elements (Reshape) and every ``(n**k - 1) / (n - 1)``-th element is kept (Slice: start 0, step
   ``1 + n + ... + n**(k-1)``; one Slice for all repeated labels of an operand), so the label then appears once and
   the operand goes on as any other. This is pure data movement: off-diagonal elements are never read, so an ``inf``
   there stays out of the result (a mask multiply would turn it into NaN). A trace (``ii->``) is this diagonal then a
   ReduceSum. The diagonal goes where the label first or last occurs, whichever gives fewer nodes in all.
4. Labels that occur in one operand only and not in the output are summed away first (ReduceSum).
5. Operands are contracted pairwise, greedily: pairs that share a label first, then the smallest static result, then the
   left-most pair. A pair's labels are batch (in both, still needed), contracted (in both, no longer needed),
   left-only and right-only. With contracted labels: Transpose to ``[batch, left, contracted]`` and
   ``[batch, contracted, right]``, Reshape each group to one axis, MatMul, Reshape the result back (with no batch label,
   one side may keep its free axes un-merged: an N-D @ 2-D or 2-D @ N-D MatMul). With no contracted label (outer
   product): Mul with broadcasting. With no free label (dot product): Mul + ReduceSum. Several layouts (operand order,
   order of batch and contracted labels, which side keeps its axes) are built and the one with the fewest nodes is
   kept, so e.g. ``bnhk,bnkv->bnhv`` becomes a single MatMul.
6. The last tensor is reduced to the output labels and transposed into the output order.

Reshape targets are static numbers wherever sizes are known, so statically shaped graphs get no Shape/Gather nodes.
Unknown (batch-like) dims use 0 (copy; only where the same labels sit on the same axis of the input) or a single -1;
pure insert/remove of size-1 axes uses Unsqueeze/Squeeze. Only when neither works are sizes read at run time
(Shape + Slice + Mul + Concat), and a warning says so.

Left as Einsum, with a warning: a subscript repeated within one operand (diagonal / trace) whose size no operand gives
statically (``ii->i`` on an ``[N, N]`` input: the Reshape + Slice need ``n``), an operand of unknown rank whose
subscripts have ``...``, zero-sized static dims, element types that MatMul does not take, a default opset below 12,
and Einsum nodes inside model-local functions. Invalid equations raise ``ValueError``.

Limitations: dims that are unknown at export time and share a label are assumed equal at run time (numpy would also
broadcast a run-time 1 against n there), and a Reshape with -1 cannot infer a dim of a zero-sized run-time tensor.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lambda_export.graph import UniqueNames, all_names, iter_graphs, text_attribute
from lambda_export.passes.base import GraphPass, PassContext, PassResult
from lambda_export.passes.einsum_spec import ELLIPSIS, LETTERS, EinsumSpec, parse_einsum_equation

__all__ = ["EinsumSpec", "parse_einsum_equation", "rewrite_einsum", "rewrite_einsum_nodes"]

_MIN_OPSET = 12  # Einsum exists from opset 12; axes of ReduceSum/Squeeze/Unsqueeze become inputs at 13.
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Element types that Einsum takes and MatMul / Mul / ReduceSum take as well.
_REWRITABLE_TYPES = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.DOUBLE,
        TensorProto.FLOAT16,
        TensorProto.BFLOAT16,
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.UINT32,
        TensorProto.UINT64,
    }
)
_UNKNOWN_SIZE_ESTIMATE = 1 << 10  # stands in for an unknown dim when the greedy order compares result sizes

Dim = int | str | None  # static size, symbolic name (dim_param), or unknown


# ----------------------------------------------------------------------------------------------------------------------
# Graph building


@dataclasses.dataclass(frozen=True)
class _Value:
    """A tensor during the rewrite: each axis is the product of the labels in its tuple (``()`` is a size-1 axis)."""

    name: str
    axes: tuple[tuple[int, ...], ...]

    @property
    def labels(self) -> tuple[int, ...]:
        if any(len(axis) != 1 for axis in self.axes):
            raise AssertionError(f"tensor {self.name} has merged axes {self.axes}")
        return tuple(axis[0] for axis in self.axes)


def _singles(labels: Sequence[int]) -> list[tuple[int, ...]]:
    return [(label,) for label in labels]


class _Builder:
    """Emits the nodes and initializers that replace one Einsum node."""

    def __init__(
        self,
        base: str,
        opset: int,
        spec: EinsumSpec,
        sizes: dict[int, int | None],
        sources: dict[int, tuple[str, int]],
        names: UniqueNames,
    ) -> None:
        self.base = base
        self.opset = opset
        self.spec = spec
        self.sizes = sizes
        self.sources = sources  # label -> (operand tensor, axis) where its run-time size can be read
        self.names = names
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.notes: list[str] = []
        self.shape_cache: dict[str, str] = {}
        self.dim_cache: dict[int, str] = {}

    def fork(self) -> _Builder:
        child = _Builder(self.base, self.opset, self.spec, self.sizes, self.sources, self.names.fork())
        child.shape_cache = dict(self.shape_cache)
        child.dim_cache = dict(self.dim_cache)
        return child

    def adopt(self, child: _Builder) -> None:
        self.nodes += child.nodes
        self.initializers += child.initializers
        self.notes += child.notes
        self.names = child.names
        self.shape_cache = child.shape_cache
        self.dim_cache = child.dim_cache

    # -- primitives -----------------------------------------------------------------------------------------------

    def emit(self, op: str, inputs: Sequence[str], **attrs: object) -> str:
        node_name = self.names.new(f"{self.base}/{op}")
        output = self.names.new(f"{node_name}_out")
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=node_name, **attrs))
        return output

    def const(self, values: Sequence[int], what: str) -> str:
        name = self.names.new(f"{self.base}/{what}")
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def axis_size(self, axis: tuple[int, ...]) -> int | None:
        total = 1
        for label in axis:
            size = self.sizes[label]
            if size is None:
                return None
            total *= size
        return total

    # -- tensor operations ------------------------------------------------------------------------------------------

    def transpose(self, value: _Value, order: Sequence[int]) -> _Value:
        labels = value.labels
        perm = [labels.index(label) for label in order]
        if perm == list(range(len(labels))):
            return value
        return _Value(self.emit("Transpose", [value.name], perm=perm), tuple(_singles(order)))

    def reduce_sum(self, value: _Value, summed: set[int]) -> _Value:
        labels = value.labels
        axes = [i for i, label in enumerate(labels) if label in summed]
        if not axes:
            return value
        kept = tuple((label,) for label in labels if label not in summed)
        if self.opset >= 13:
            out = self.emit("ReduceSum", [value.name, self.const(axes, "axes")], keepdims=0)
        else:
            out = self.emit("ReduceSum", [value.name], axes=axes, keepdims=0)
        return _Value(out, kept)

    def diagonal(self, value: _Value, at_last: frozenset[int] = frozenset()) -> _Value:
        """Take the diagonal over every label that repeats in ``value``: pure data movement, so exact.

        The ``k`` copies of a repeated label of size ``n`` are moved next to each other where the label first occurs,
        or last occurs for the labels in ``at_last`` (Transpose, only when they are not adjacent already), flattened
        into one axis of ``n**k`` elements (Reshape), and every ``(n**k - 1) / (n - 1)``-th element is kept (one Slice
        for all repeated labels, start 0, step ``1 + n + ... + n**(k-1)``): flat index ``a * step`` is the element
        ``[a, a, ..., a]``. Off-diagonal elements are never read, so an ``inf`` there cannot reach the result. Needs
        each repeated label's size static.
        """
        labels = value.labels  # may repeat here
        if len(set(labels)) == len(labels):
            return value
        anchor = {label: i for i, label in reversed(list(enumerate(labels)))}  # each label's first copy ...
        anchor.update({label: i for i, label in enumerate(labels) if label in at_last})  # ... or its last
        order = sorted(anchor, key=anchor.__getitem__)
        perm = [i for label in order for i, other in enumerate(labels) if other == label]
        grouped = value
        if perm != list(range(len(labels))):
            grouped = _Value(self.emit("Transpose", [value.name], perm=perm), tuple((labels[i],) for i in perm))
        flat = self.reshape(grouped, [(label,) * labels.count(label) for label in order])
        axes: list[int] = []
        ends: list[int] = []
        steps: list[int] = []
        for position, label in enumerate(order):
            copies, size = labels.count(label), self.sizes[label]
            if copies == 1:
                continue
            if size is None:
                raise AssertionError(f"the size of repeated label {self.spec.label_names[label]!r} is unknown")
            if size > 1:  # a size-1 label needs no Slice: the flattened axis has one element
                axes.append(position)
                ends.append(size**copies)
                steps.append(sum(size**j for j in range(copies)))
        name = flat.name
        if axes:
            starts = self.const([0] * len(axes), "starts")
            inputs = [name, starts, self.const(ends, "ends"), self.const(axes, "axes"), self.const(steps, "steps")]
            name = self.emit("Slice", inputs)
        return _Value(name, tuple(_singles(order)))

    def _squeeze_like(self, op: str, name: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.emit(op, [name, self.const(axes, "axes")])
        return self.emit(op, [name], axes=axes)

    def reshape(self, value: _Value, target: Sequence[tuple[int, ...]]) -> _Value:
        target = tuple(tuple(axis) for axis in target)
        if target == value.axes:
            return value
        sizes = [self.axis_size(axis) for axis in target]
        if all(size is not None for size in sizes):
            return _Value(self.emit("Reshape", [value.name, self.const(sizes, "shape")]), target)
        if [a for a in value.axes if a] == [a for a in target if a]:  # only size-1 axes removed / inserted
            name = value.name
            removed = [i for i, axis in enumerate(value.axes) if not axis]
            if removed:
                name = self._squeeze_like("Squeeze", name, removed)
            inserted = [i for i, axis in enumerate(target) if not axis]
            if inserted:
                name = self._squeeze_like("Unsqueeze", name, inserted)
            return _Value(name, target)
        shape: list[int | None] = []  # None: read at run time
        for i, (axis, size) in enumerate(zip(target, sizes, strict=True)):
            if size is not None:
                shape.append(size)
            elif i < len(value.axes) and value.axes[i] == axis:
                shape.append(0)  # Reshape copies the input's dim at the same index
            else:
                shape.append(-1 if -1 not in shape else None)
        if None not in shape:
            return _Value(self.emit("Reshape", [value.name, self.const(shape, "shape")]), target)
        return _Value(self.emit("Reshape", [value.name, self._runtime_shape(target, shape)]), target)

    def _label_dim(self, label: int) -> str:
        if label not in self.dim_cache:
            source, axis = self.sources[label]
            if source not in self.shape_cache:
                self.shape_cache[source] = self.emit("Shape", [source])
            starts, ends = self.const([axis], "starts"), self.const([axis + 1], "ends")
            self.dim_cache[label] = self.emit("Slice", [self.shape_cache[source], starts, ends])
        return self.dim_cache[label]

    def _runtime_shape(self, target: tuple[tuple[int, ...], ...], shape: list[int | None]) -> str:
        """A Reshape target whose ``None`` entries are products of label sizes read at run time."""
        parts: list[str] = []
        constants: list[int] = []
        read: list[str] = []
        for axis, entry in zip(target, shape, strict=True):
            if entry is not None:
                constants.append(entry)
                continue
            if constants:
                parts.append(self.const(constants, "shape"))
                constants = []
            piece: str | None = None
            static = 1
            for label in axis:
                size = self.sizes[label]
                if size is not None:
                    static *= size
                    continue
                read.append(self.spec.label_names[label])
                dim = self._label_dim(label)
                piece = dim if piece is None else self.emit("Mul", [piece, dim])
            assert piece is not None
            if static != 1:
                piece = self.emit("Mul", [piece, self.const([static], "shape")])
            parts.append(piece)
        if constants:
            parts.append(self.const(constants, "shape"))
        self.notes.append(
            f"the size(s) of {', '.join(sorted(set(read)))} unknown and cannot all be expressed with Reshape's 0/-1, "
            "so a Reshape target is computed at run time (Shape/Slice/Concat)"
        )
        return self.emit("Concat", parts, axis=0)

    def binary(self, op: str, left: _Value, right: _Value, axes: Sequence[tuple[int, ...]]) -> _Value:
        return _Value(self.emit(op, [left.name, right.name]), tuple(axes))


def _contract_layout(
    b: _Builder,
    left: _Value,
    right: _Value,
    keep: set[int],
    batch_from_left: bool,
    contracted_from_left: bool,
    right_keeps_axes: bool,
) -> _Value:
    """Contract two operands with one choice of layout; returns a tensor with one label per axis.

    Without batch labels, one side of the MatMul keeps its free axes un-merged: the left (``N-D @ 2-D``, the default)
    or, with ``right_keeps_axes``, the right (``2-D @ N-D``: the right operand's leading free axes act as MatMul batch).
    """
    left = b.reduce_sum(left, {lbl for lbl in left.labels if lbl not in right.labels and lbl not in keep})
    right = b.reduce_sum(right, {lbl for lbl in right.labels if lbl not in left.labels and lbl not in keep})
    ll, rl = left.labels, right.labels
    batch = [lbl for lbl in (ll if batch_from_left else rl) if lbl in ll and lbl in rl and lbl in keep]
    contracted = [lbl for lbl in (ll if contracted_from_left else rl) if lbl in ll and lbl in rl and lbl not in keep]
    left_only = [lbl for lbl in ll if lbl not in rl]
    right_only = [lbl for lbl in rl if lbl not in ll]

    if not contracted:  # outer product, elementwise over the batch labels: Mul with numpy broadcasting
        rt = b.transpose(right, [lbl for lbl in ll if lbl in rl] + right_only)
        lt = b.reshape(left, [*left.axes, *[()] * len(right_only)]) if right_only and left.axes else left
        aligned = [(lbl,) if lbl in rl else () for lbl in ll] + _singles(right_only)
        while aligned and not aligned[0]:  # leading size-1 axes are implied by broadcasting
            aligned.pop(0)
        rt = b.reshape(rt, aligned)
        return b.binary("Mul", lt, rt, _singles(list(ll) + right_only))
    if not left_only and not right_only:  # dot product: Mul in the left operand's layout, then ReduceSum
        product = b.binary("Mul", left, b.transpose(right, ll), _singles(ll))
        return b.reduce_sum(product, set(contracted))

    right_group = [tuple(right_only)] if right_only else []
    if not batch and right_keeps_axes and right_only:  # 2-D (or 1-D) @ N-D MatMul
        lead, last = right_only[:-1], right_only[-1]
        left_group = [tuple(left_only)] if left_only else []
        lt = b.reshape(b.transpose(left, left_only + contracted), [*left_group, tuple(contracted)])
        rt = b.transpose(right, [*lead, *contracted, last])
        rt = b.reshape(rt, [*_singles(lead), tuple(contracted), (last,)])
        product = b.binary("MatMul", lt, rt, [*_singles(lead), *left_group, (last,)])
        return b.reshape(product, _singles([*lead, *left_only, last]))
    if not batch:  # N-D @ 2-D (or 1-D) MatMul: the left operand keeps its free axes
        lt = b.reshape(b.transpose(left, left_only + contracted), [*_singles(left_only), tuple(contracted)])
        rt = b.reshape(b.transpose(right, contracted + right_only), [tuple(contracted), *right_group])
        product = b.binary("MatMul", lt, rt, [*_singles(left_only), *right_group])
    else:
        lt = b.transpose(left, batch + left_only + contracted)
        lt = b.reshape(lt, [*_singles(batch), tuple(left_only), tuple(contracted)])
        rt = b.transpose(right, batch + contracted + right_only)
        rt = b.reshape(rt, [*_singles(batch), tuple(contracted), tuple(right_only)])
        product = b.binary("MatMul", lt, rt, [*_singles(batch), tuple(left_only), tuple(right_only)])
    return b.reshape(product, _singles(batch + left_only + right_only))


def _contract(b: _Builder, left: _Value, right: _Value, keep: set[int], final: tuple[int, ...] | None) -> _Value:
    """Contract a pair, trying several layouts and keeping the one with the fewest nodes."""
    best: tuple[int, _Builder, _Value] | None = None
    for first, second in ((left, right), (right, left)):
        for batch_from_left in (True, False):
            for contracted_from_left, right_keeps_axes in itertools.product((True, False), repeat=2):
                child = b.fork()
                result = _contract_layout(
                    child, first, second, keep, batch_from_left, contracted_from_left, right_keeps_axes
                )
                cost = len(child.nodes) + int(final is not None and result.labels != final)
                if best is None or cost < best[0]:
                    best = (cost, child, result)
    assert best is not None
    b.adopt(best[1])
    return best[2]


def _pick_pair(values: list[_Value], output: tuple[int, ...], sizes: dict[int, int | None]) -> tuple[int, int]:
    def key(pair: tuple[int, int]) -> tuple[bool, int, int, int]:
        i, j = pair
        li, lj = set(values[i].labels), set(values[j].labels)
        needed = set(output).union(*(values[k].labels for k in range(len(values)) if k not in pair))
        result = (li | lj) & needed
        estimate = math.prod(_UNKNOWN_SIZE_ESTIMATE if sizes[lbl] is None else sizes[lbl] for lbl in result)
        return (not (li & lj), estimate, i, j)

    pairs = [(i, j) for i in range(len(values)) for j in range(i + 1, len(values))]
    return min(pairs, key=key)


class _LeftAsEinsumError(Exception):
    """The node cannot be rewritten faithfully; the message says why."""


def _plan_sizes(
    spec: EinsumSpec, names: Sequence[str], dims: Sequence[Sequence[Dim]], where: str
) -> tuple[dict[int, int | None], dict[int, tuple[str, int]], list[list[bool]]]:
    """Label sizes, where to read each at run time, and which operand axes are size-1 broadcasts to drop.

    The copies of a subscript repeated within one operand (a diagonal) must have one size, as numpy requires; a copy
    of unknown size takes the static size of another copy, so that the copies are all dropped (size-1 broadcast) or
    all kept.
    """
    dims = [list(operand_dims) for operand_dims in dims]
    for k, (labels, operand_dims) in enumerate(zip(spec.operands, dims, strict=True)):
        for label in {lbl for lbl in labels if labels.count(lbl) > 1}:
            copies = [axis for axis, lbl in enumerate(labels) if lbl == label]
            static = {operand_dims[axis] for axis in copies if isinstance(operand_dims[axis], int)}
            if len(static) > 1:
                raise ValueError(
                    f"{where}: subscript {spec.label_names[label]!r} repeats within operand {k} with sizes "
                    f"{sorted(static)}; the copies of a repeated subscript must have one size"
                )
            if static:
                for axis in copies:
                    operand_dims[axis] = next(iter(static))
    occurrences: dict[int, list[tuple[int, int, Dim]]] = {}
    for k, (labels, operand_dims) in enumerate(zip(spec.operands, dims, strict=True)):
        for axis, (label, dim) in enumerate(zip(labels, operand_dims, strict=True)):
            occurrences.setdefault(label, []).append((k, axis, dim))
    drop = [[False] * len(labels) for labels in spec.operands]
    sizes: dict[int, int | None] = {}
    sources: dict[int, tuple[str, int]] = {}
    for label, occ in occurrences.items():
        broadcast = any(dim != 1 for _, _, dim in occ)
        kept = []
        for k, axis, dim in occ:
            if broadcast and dim == 1:
                drop[k][axis] = True
            else:
                kept.append((k, axis, dim))
        static = {dim for _, _, dim in kept if isinstance(dim, int)}
        if len(static) > 1:
            raise ValueError(
                f"{where}: subscript {spec.label_names[label]!r} has sizes {sorted(static)} in different operands; "
                "they must be equal or 1"
            )
        sizes[label] = static.pop() if static else None
        k, axis, _ = next((o for o in kept if not isinstance(o[2], int)), kept[0])
        sources[label] = (names[k], axis)
    return sizes, sources, drop


def _rewrite_node(
    node: onnx.NodeProto,
    spec: EinsumSpec,
    dims: Sequence[Sequence[Dim]],
    opset: int,
    names: UniqueNames,
    where: str,
) -> _Builder:
    """Build the replacement of one Einsum node (its last node writes the Einsum's output).

    Where each diagonal (a subscript repeated within an operand) is placed, at the first or the last copy of its
    subscript, changes the Transposes and Reshapes around it: each placement is built (all combinations for up to 4
    repeated subscripts, else all-first and all-last) and the one with the fewest nodes is kept, the first on a tie.
    """
    sizes, sources, drop = _plan_sizes(spec, list(node.input), dims, where)
    repeated: list[tuple[int, int]] = []  # (operand, label) of each subscript that repeats within an operand
    for k, (labels, dropped) in enumerate(zip(spec.operands, drop, strict=True)):
        kept = [lbl for lbl, d in zip(labels, dropped, strict=True) if not d]
        repeated += [(k, lbl) for lbl in sorted(set(kept)) if kept.count(lbl) > 1]
        unknown = sorted({spec.label_names[lbl] for lbl in kept if kept.count(lbl) > 1 and sizes[lbl] is None})
        if unknown:
            raise _LeftAsEinsumError(
                f"subscript(s) {', '.join(map(repr, unknown))} repeat within operand {k} (a diagonal/trace) and "
                "their size is not known statically from any operand, which the Reshape + Slice that takes the "
                "diagonal needs"
            )
    n = len(repeated)
    choices = list(itertools.product((False, True), repeat=n)) if n <= 4 else [(False,) * n, (True,) * n]
    best: _Builder | None = None
    for choice in choices:
        at_last = [
            frozenset(lbl for (owner, lbl), last in zip(repeated, choice, strict=True) if last and owner == k)
            for k in range(len(spec.operands))
        ]
        b = _build(node, spec, sizes, sources, drop, opset, names, at_last)
        if best is None or len(b.nodes) < len(best.nodes):
            best = b
    assert best is not None
    return best


def _build(
    node: onnx.NodeProto,
    spec: EinsumSpec,
    sizes: dict[int, int | None],
    sources: dict[int, tuple[str, int]],
    drop: list[list[bool]],
    opset: int,
    names: UniqueNames,
    at_last: Sequence[frozenset[int]],
) -> _Builder:
    """One replacement of an Einsum node; ``at_last[k]``: the labels of operand ``k`` whose diagonal sits last."""
    inputs = list(node.input)
    base = node.name or f"Einsum_{node.output[0]}"
    b = _Builder(base, opset, spec, sizes, sources, names.fork())

    values: list[_Value] = []
    for name, labels, dropped, last in zip(inputs, spec.operands, drop, at_last, strict=True):
        value = _Value(name, tuple(() if d else (lbl,) for lbl, d in zip(labels, dropped, strict=True)))
        value = b.reshape(value, [axis for axis in value.axes if axis])
        values.append(b.diagonal(value, last))  # a subscript repeated within the operand now appears once

    output = spec.output
    counts: dict[int, int] = {}
    for value in values:
        for label in value.labels:
            counts[label] = counts.get(label, 0) + 1
    values = [b.reduce_sum(v, {lbl for lbl in v.labels if counts[lbl] == 1 and lbl not in output}) for v in values]

    while len(values) > 1:
        i, j = _pick_pair(values, output, sizes)
        others = [values[k] for k in range(len(values)) if k not in (i, j)]
        keep = set(output).union(*(v.labels for v in others))
        final = output if not others else None
        result = _contract(b, values[i], values[j], keep, final)
        values = [*values[:i], result, *values[i + 1 : j], *values[j + 1 :]]

    result = b.reduce_sum(values[0], {lbl for lbl in values[0].labels if lbl not in output})
    result = b.transpose(result, output)
    producer = next((n for n in b.nodes if result.name in n.output), None)
    if producer is None:  # the equation is an identity ('ij->ij')
        result = _Value(b.emit("Identity", [result.name]), result.axes)
        producer = b.nodes[-1]
    producer.output[list(producer.output).index(result.name)] = node.output[0]
    return b


# ----------------------------------------------------------------------------------------------------------------------
# Model plumbing


def _type_info(model: onnx.ModelProto) -> dict[str, tuple[int, list[Dim] | None]]:
    """Element type and dims (None: unknown rank) of every tensor whose type the model declares or implies."""
    info: dict[str, tuple[int, list[Dim] | None]] = {}
    for graph in iter_graphs(model.graph):
        for init in graph.initializer:
            info[init.name] = (init.data_type, [int(d) for d in init.dims])
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            if not vi.type.HasField("tensor_type") or vi.name in info:
                continue
            tensor_type = vi.type.tensor_type
            dims: list[Dim] | None = None
            if tensor_type.HasField("shape"):
                dims = []
                for d in tensor_type.shape.dim:
                    if d.HasField("dim_value"):
                        dims.append(int(d.dim_value))
                    else:
                        dims.append(d.dim_param or None)
            info[vi.name] = (tensor_type.elem_type, dims)
    return info


def _default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    return None


def _operand_ranks(equation: str, dims: Sequence[list[Dim] | None], where: str) -> list[int]:
    """Ranks for the parser; an operand of unknown rank has as many dims as letters when its term has no '...'."""
    terms = equation.partition("->")[0].split(",")
    ranks = []
    for k, operand_dims in enumerate(dims):
        if operand_dims is not None:
            ranks.append(len(operand_dims))
        elif k < len(terms) and ELLIPSIS in terms[k]:
            raise _LeftAsEinsumError(f"operand {k} has an unknown rank and its subscripts use '...'")
        elif k < len(terms):
            ranks.append(sum(c in LETTERS for c in terms[k]))
        else:
            ranks.append(0)  # the parser reports the operand-count mismatch
    return ranks


def _describe(node: onnx.NodeProto) -> str:
    name = f"'{node.name}'" if node.name else f"(unnamed, output '{node.output[0]}')"
    return f"Einsum node {name} with equation {text_attribute(node, 'equation')!r}"


def _rewrite_graph(
    graph: onnx.GraphProto,
    opset: int,
    info: dict[str, tuple[int, list[Dim] | None]],
    names: UniqueNames,
    warnings: list[str],
) -> None:
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rewrite_graph(attr.g, opset, info, names, warnings)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _rewrite_graph(sub, opset, info, names, warnings)
        if node.op_type != "Einsum" or node.domain not in _DEFAULT_DOMAINS:
            new_nodes.append(node)
            continue
        where = _describe(node)
        try:
            builder = _rewrite_einsum_node(node, opset, info, names, where)
        except _LeftAsEinsumError as reason:
            warnings.append(f"{where} left as Einsum: {reason}")
            new_nodes.append(node)
            continue
        names.taken |= builder.names.taken
        new_nodes += builder.nodes
        new_inits += builder.initializers
        warnings += [f"{where}: {note}" for note in builder.notes]
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)


def _rewrite_einsum_node(
    node: onnx.NodeProto,
    opset: int,
    info: dict[str, tuple[int, list[Dim] | None]],
    names: UniqueNames,
    where: str,
) -> _Builder:
    if opset < _MIN_OPSET:
        raise _LeftAsEinsumError(f"the model's default opset is {opset}; Einsum needs opset >= {_MIN_OPSET}")
    if len(node.output) != 1 or any(not name for name in node.input):
        raise _LeftAsEinsumError("it does not have one output and named inputs")
    if not any(a.name == "equation" for a in node.attribute):
        raise ValueError(f"{where}: the node has no 'equation' attribute")
    equation_text = text_attribute(node, "equation")

    operand_info = [info.get(name, (TensorProto.UNDEFINED, None)) for name in node.input]
    for name, (elem_type, _) in zip(node.input, operand_info, strict=True):
        if elem_type != TensorProto.UNDEFINED and elem_type not in _REWRITABLE_TYPES:
            type_name = TensorProto.DataType.Name(elem_type)
            raise _LeftAsEinsumError(f"operand '{name}' has element type {type_name}, which MatMul does not take")
    dims = [d for _, d in operand_info]
    try:
        spec = parse_einsum_equation(equation_text, _operand_ranks(equation_text, dims, where))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    full_dims: list[list[Dim]] = [
        list(d) if d is not None else [None] * len(labels) for d, labels in zip(dims, spec.operands, strict=True)
    ]
    if any(dim == 0 for operand_dims in full_dims for dim in operand_dims):
        raise _LeftAsEinsumError("an operand has a zero-sized dim")
    return _rewrite_node(node, spec, full_dims, opset, names, where)


def rewrite_einsum(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Replace every default-domain ``Einsum`` node by standard ops that compute exactly what ``numpy.einsum`` does.

    The main graph and subgraphs (If/Loop/Scan bodies) are rewritten; the input model is not modified. New nodes are
    named ``<einsum node name>/<Op>[_k]`` and new initializers ``<einsum node name>/shape``, ``/axes``... (made
    unique). See the module docstring for the method and for what is left as Einsum.

    Args:
        model: an ONNX model (default-domain opset 12 or newer where it has Einsum nodes).

    Returns:
        ``(new_model, warnings)``: warnings name each Einsum node left unchanged and why, each node whose rewrite reads
        sizes at run time, and a failed shape inference.

    Raises:
        ValueError: an Einsum node's equation is invalid, or operand sizes contradict it; the message names the node.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    warnings: list[str] = []
    einsum_count = sum(1 for g in iter_graphs(result.graph) for n in g.node if n.op_type == "Einsum")
    for function in result.functions:
        if any(n.op_type == "Einsum" and n.domain in _DEFAULT_DOMAINS for n in function.node):
            warnings.append(f"Einsum nodes in model-local function '{function.name}' are left as Einsum")
    if einsum_count == 0:
        return result, warnings

    try:
        inferred = onnx.shape_inference.infer_shapes(result, check_type=False, strict_mode=False, data_prop=True)
    except Exception as error:  # a model shape inference cannot handle: rewrite with the declared shapes only
        warnings.append(f"shape inference failed ({error}); only declared shapes are used")
        inferred = result
    info = _type_info(inferred)
    opset = _default_opset(result)
    names = UniqueNames(all_names(result))
    _rewrite_graph(result.graph, opset if opset is not None else 0, info, names, warnings)
    return result, warnings


def _rewrite_einsum_nodes(ctx: PassContext) -> PassResult:
    """The pipeline's form of :func:`rewrite_einsum`: replaces ``ctx.model``; changed when an Einsum node went away.

    The notes are :func:`rewrite_einsum`'s warnings (each Einsum left, and why), also when none could be rewritten;
    the counts (rewritten, refused by reason) are what the node rules of the other passes report. It stays a
    whole-model pass rather than a :class:`~lambda_export.passes.base.RewritePass`: it rewrites subgraph bodies too,
    with one type inference (``data_prop``) and one name space over all of them.
    """
    before = sum(1 for g in iter_graphs(ctx.model.graph) for n in g.node if n.op_type == "Einsum")
    if not before:
        return PassResult(False)
    model, warnings = rewrite_einsum(ctx.model)
    after = sum(1 for g in iter_graphs(model.graph) for n in g.node if n.op_type == "Einsum")
    if after < before:
        ctx.replace_model(model)
    marker = " left as Einsum: "
    refused = Counter(w.split(marker, 1)[1] for w in warnings if marker in w)
    return PassResult(after < before, tuple(warnings), before - after, tuple(refused.most_common()))


rewrite_einsum_nodes = GraphPass(_rewrite_einsum_nodes, name="rewrite_einsum")
