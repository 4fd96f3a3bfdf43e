"""Repairs of what tf2onnx gets wrong, where the graph itself says what was meant (run first, see
:mod:`lambda_export.passes.pipelines`).

* ``fix_reshape_zero_copies`` – a ``Reshape`` whose constant shape holds a ``0`` ("copy this dim of the input",
  ``allowzero=0``) that copies the wrong size. tf2onnx 1.17 writes one for keras-hub's SegFormer encoder
  (``MiTBackbone``, a stage with one attention head): Keras' ``Dense`` on ``(B, L, C)`` is a ``Reshape(-1, C)`` →
  ``MatMul`` → reshape back, and the layer then reshapes the keys to ``(B, -1, heads, C // heads)`` and transposes
  them; tf2onnx merges the reshapes and the (size-1-axis) transpose into one ``Reshape(MatMul, [0, 1, -1, C])`` on
  the 2-D ``(B·L, C)`` MatMul output, whose ``0`` now copies ``B·L`` where ``B`` was meant. The graph loads; ONNX
  Runtime fails at run time where the wrong batch meets the queries (``MatMul ... cannot broadcast``).

A ``0`` is checked against the input's static shape (the sweep's shape inference) and the intended output:

1. the output's declared shape (``value_info`` or the graph output, when the graph carries one of the Reshape's rank):
   a ``0`` that copies a static size other than the declared one, or an element count that cannot fit, is wrong; the
   shape becomes the declared one (static sizes, ``-1`` for its one unknown dim);
2. otherwise, a 2-D input that is the row-wise flattening of a tensor ``T`` of rank ≥ 3 (``Reshape(T, [-1, C])``,
   then row-wise ops: ``MatMul`` by a constant 2-D weight, ``Add`` / ``Mul`` by a constant of rank ≤ 1, ``Identity``,
   ``Cast``, unary activations: tf2onnx's form of a ``Dense`` on ``T``) with a ``0`` at dim 0 only: that ``0`` copies
   ``T[0]·…·T[-2]`` where ``T[0]`` was meant (the layer's ``B``). It is left alone when ``T[1:-1]`` is statically 1
   (then both are the same); else it becomes ``T[0]`` when static, ``-1`` when ``T[1:]`` is static (the shape's own
   ``-1`` then resolved from it) or the shape has no other ``-1``, or ``T[0]`` read at run time (``Shape(T, end=1)`` → ``Concat`` with the other entries; opset 15).

A ``0`` neither truth shows wrong is left alone and not counted (the common case: a batch passthrough). Where the
element count proves a ``0`` wrong but nothing says what was meant, the rule refuses with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from lambda_export.graph import attribute, insert_before
from lambda_export.passes.base import NoMatch, RewritePass, Rule, SweepIndex

__all__ = ["fix_reshape_zero_copies"]

# ops that keep the rows of a 2-D (N, C) tensor as rows (dim 0 untouched) when their other operand is constant
_ROW_WISE_UNARY = {"Identity", "Cast", "Relu", "Sigmoid", "Tanh", "Erf", "Neg", "Abs", "Softplus", "LeakyRelu", "Elu"}


@dataclass
class _Fix:
    node: onnx.NodeProto
    shape: list[int]  # the new constant shape (no 0), or the entries after dim 0 when ``leading`` is set
    leading: str | None = None  # read dim 0 of this tensor at run time (Shape → Concat)


def _declared(g: SweepIndex, name: str) -> tuple[int | None, ...] | None:
    """The shape the graph declares for ``name`` (value_info or a graph output), None when it declares none."""
    for value in [*g.graph.value_info, *g.graph.output]:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    return None


def _size(dim: int | None) -> str:
    return "unknown" if dim is None else str(dim)


def _product(dims: tuple[int | None, ...] | list[int | None]) -> int | None:
    return None if any(d is None for d in dims) else int(np.prod(dims, dtype=np.int64))


def _flattened_source(g: SweepIndex, name: str) -> str | None:
    """``T`` when ``name`` (2-D) is ``T`` (rank ≥ 3) flattened to ``(-1, C)`` and then changed row by row."""
    for _ in range(16):
        node = g.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Reshape":
            target = g.const(node.input[1])
            source = g.shapes.get(node.input[0])
            if target is None or source is None or len(source) < 3 or target.tolist()[:1] != [-1] or len(target) != 2:
                return None
            if source[-1] is not None and int(target[1]) not in (0, source[-1]):
                return None  # not a flattening of the rows: the last dim changes
            return node.input[0]
        if node.op_type == "MatMul":
            weight = g.const(node.input[1])
            if weight is None or weight.ndim != 2:
                return None
        elif node.op_type in ("Add", "Mul", "Sub", "Div"):
            other = node.input[1]
            value = g.const(other)
            if value is None or value.ndim > 1:
                return None
        elif node.op_type not in _ROW_WISE_UNARY:
            return None
        name = node.input[0]
    return None


_RIGHT = NoMatch("")  # what _from_declared says of 0s the declared shape shows right (never counted)


def _from_declared(
    node: onnx.NodeProto, shape: list[int], source: tuple[int | None, ...], declared: tuple[int | None, ...]
) -> _Fix | NoMatch | None:
    """A fix, a refusal, ``_RIGHT``, or None when the declared shape cannot tell (its dims at stake are unknown)."""
    zeros = [i for i, v in enumerate(shape) if v == 0]
    wrong = next((i for i in zeros if None not in (source[i], declared[i]) and source[i] != declared[i]), None)
    rest_in = _product([d for i, d in enumerate(source) if i not in zeros])
    rest_out = _product([d for i, d in enumerate(declared) if i not in zeros])
    if wrong is None:
        if all(None not in (source[i], declared[i]) for i in zeros) or None not in (rest_in, rest_out):
            if rest_in is None or rest_out is None or rest_in == rest_out:
                return _RIGHT  # every 0 copies what the output needs
        else:
            return None
    where = wrong if wrong is not None else zeros[0]
    why = f"0 copies input dim {where} ({_size(source[where])}) but the output needs {_size(declared[where])}"
    if sum(d is None for d in declared) > 1:
        return NoMatch(f"{why}, and the output has more than one unknown dim")
    if any(v > 0 and d is not None and v != d for v, d in zip(shape, declared, strict=True)):
        return NoMatch(f"{why}, and the shape's other entries disagree with the declared output")
    return _Fix(node, [-1 if d is None else d for d in declared])


def _match(g: SweepIndex, node: onnx.NodeProto) -> _Fix | NoMatch | None:
    if node.op_type != "Reshape" or len(node.input) < 2 or attribute(node, "allowzero", 0):
        return None
    value = g.const(node.input[1])
    if value is None or value.ndim != 1 or not (value == 0).any():
        return None
    shape = [int(v) for v in value]
    zeros = [i for i, v in enumerate(shape) if v == 0]
    source = g.shapes.get(node.input[0])
    if source is None:
        return NoMatch("input rank unknown")
    if zeros[-1] >= len(source):
        return NoMatch("0 at a dim the input does not have")
    declared = _declared(g, node.output[0])
    if declared is not None and len(declared) == len(shape):
        verdict = _from_declared(node, shape, source, declared)
        if verdict is _RIGHT:
            return None
        if verdict is not None:
            return verdict
    flattened = _flattened_source(g, node.input[0]) if len(source) == 2 else None
    if flattened is not None:
        if zeros != [0]:
            return NoMatch("0 copies a dim other than dim 0 of a flattened (B·L, C) input")
        t = g.shapes[flattened]
        if all(d == 1 for d in t[1:-1]):
            return None  # B·1 = B: the 0 copies what was meant
        if t[0] is not None:
            return _Fix(node, [t[0], *shape[1:]])
        per_row, known = _product(list(t[1:])), int(np.prod([v for v in shape[1:] if v != -1], dtype=np.int64))
        if per_row is not None and shape[1:].count(-1) == 1 and known and per_row % known == 0:
            return _Fix(node, [-1, *(per_row // known if v == -1 else v for v in shape[1:])])  # T[1:] static
        if -1 not in shape:
            return _Fix(node, [-1, *shape[1:]])
        if g.opset() < 15:
            return NoMatch("0 copies input dim 0 (B·L) but the output needs B, known at run time only (opset < 15)")
        return _Fix(node, shape[1:], leading=flattened)
    count_in = _product(list(source))
    if count_in is not None and -1 not in shape:
        copied = [source[i] if v == 0 else v for i, v in enumerate(shape)]
        if int(np.prod(copied, dtype=np.int64)) != count_in:
            return NoMatch("0 copies an input dim but the element count does not fit; the intended output is unknown")
    return None


def _rewrite(g: SweepIndex, found: _Fix) -> None:
    node = found.node
    if found.leading is None:
        node.input[1] = g.shape_constant(node.name + "/shape", found.shape)
        return
    leading = g.fresh(node.name + "/leading_dim")
    rest = g.shape_constant(node.name + "/trailing_shape", found.shape)
    target = g.fresh(node.name + "/shape")
    insert_before(
        g.graph,
        node,
        [
            onnx.helper.make_node("Shape", [found.leading], [leading], name=leading, start=0, end=1),
            onnx.helper.make_node("Concat", [leading, rest], [target], name=target, axis=0),
        ],
    )
    node.input[1] = target


fix_reshape_zero_copies = RewritePass(
    "fix_reshape_zero_copies",
    [Rule(_match, _rewrite)],
    """A Reshape whose constant shape has a 0 that copies the wrong input dim (tf2onnx's merged reshapes on a
    flattened Dense output, keras-hub's MiT) gets the size that was meant: from the output's declared shape, or from
    the tensor the 2-D input was flattened from; a 0 that copies what the output needs is left alone.""",
    shapes=True,
    fixed_point=False,
)
