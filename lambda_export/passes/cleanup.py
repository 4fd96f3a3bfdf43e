"""Exact ONNX graph clean-up passes run after tf2onnx (step "rewrite" of load → convert → rewrite → check).

Every pass follows :mod:`lambda_export.passes.base`'s contract (``impl(ctx) -> bool``, edits ``ctx.model`` in place),
preserves the numbers the graph computes (up to float rounding of folded constants) and reports whether it changed
anything. Their order is in :mod:`lambda_export.passes.pipelines`. Passes:

* ``squeeze_matmul_constants`` – a constant (1, ..., 1, K, N) MatMul operand becomes (K, N) (same broadcasting result
  when the other operand has at least that rank; old runtimes such as OpenCV 4.6 only take 2D constant weights).
* ``fold_affine_into_matmul`` / ``fold_affine_into_conv`` – a per-channel constant ``Mul`` (and ``Add``, and
  ``BatchNormalization`` after ``Conv``) that follows a MatMul/Conv with constant weights is folded into those weights
  (batch-norm folding).
* ``squeeze_to_reshape`` / ``squeeze_elementwise_constants`` – forms OpenCV 4.6 reads (a Reshape to a constant shape,
  per-channel constants without leading 1s).
* ``merge_sibling_matmuls`` – the query/key/value projections of a lambda layer become one GEMM and a Split.
* ``merge_reshapes`` / ``merge_transposes`` – chains collapse to one node; identity transposes disappear.
* ``pad_into_max_pool`` – a ``reflect`` or ``edge`` ``Pad`` of the spatial axes before a ``MaxPool`` becomes the
  pool's own padding when every padded value is a copy of a value already inside each window that sees it (reflect:
  2p ≤ k − 1; edge: p ≤ k − 1), so the maximum is the same (exact). timm's stems pool like PyTorch (``padding=1``),
  which Keras writes as a reflect pad and a ``"valid"`` pool; the Pad cost ONNX Runtime two layout conversions and a
  copy of the network's largest tensor. ONNX Runtime's own PadFusion takes only ``constant`` pads.
* ``remove_identities`` – tidy up (dead nodes are the :class:`~lambda_export.passes.base.PassManager`'s job;
  ``eliminate_dead_nodes`` is the same removal as a pass, for graphs edited by hand).

Why these rules stay ours rather than onnxscript's rewriter (``ReshapeReshape``, ``TransposeTranspose``, batch-norm
fusion and its other default rules), measured 2026-12 with onnxscript 0.7.2 (and onnx_ir 1.1.0) in a throwaway
environment, on tf2onnx's graphs before any pass (nodes; ``rewrite()`` = its default rule set, ``optimize()`` adds
constant folding and dead-code removal; the outputs were unchanged in ONNX Runtime):

==========================================  ========  ===========  ====================  ==================
model                                       tf2onnx   ours (size)  onnxscript rewrite()  optimize()+rewrite()
==========================================  ========  ===========  ====================  ==================
demo (tiny LambdaResNet, 32×32)             47        45           47                    47
LambdaResNet-26, 64×64                      185       154          185                   185
MobileNetV3Small, 32×32                     327       297          327                   327
EfficientNetB0, 64×64                       334       280          334                   330
==========================================  ========  ===========  ====================  ==================

Its batch-norm fusion matches ``BatchNormalization`` nodes, which tf2onnx does not leave here: a Keras batch norm
arrives as ``Mul``/``Add`` by per-channel constants, after a MatMul or a Conv, or after the Conv's NCHW→NHWC Transpose
(``fold_affine_into_matmul`` / ``fold_affine_into_conv``); the portable forms OpenCV 4.6 needs (``squeeze_*``) and the
sibling merge are not among its rules. Adopting it would add onnxscript (754 KB wheel, 7.7 MB installed) and onnx_ir
(1.9 MB) for no fewer nodes on any of our exports, and its IR-based rules would not say why they refused a node
in our pass records. We keep ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from lambda_export.graph import GraphIndex, attribute, bypass, text_attribute, toposort, transpose_perm
from lambda_export.passes.base import (
    GraphPass,
    NoMatch,
    PassContext,
    RewritePass,
    Rule,
    SweepIndex,
    remove_dead_nodes,
)

__all__ = [
    "bypass_refusal",
    "eliminate_dead_nodes",
    "fold_affine_into_conv",
    "fold_affine_into_matmul",
    "merge_reshapes",
    "merge_sibling_matmuls",
    "merge_transposes",
    "pad_into_max_pool",
    "remove_identities",
    "squeeze_elementwise_constants",
    "squeeze_matmul_constants",
    "squeeze_to_reshape",
]


def bypass_refusal(g: GraphIndex, node: onnx.NodeProto, source: str) -> NoMatch | None:
    """Why :func:`lambda_export.graph.bypass` would refuse to remove ``node`` in favour of ``source`` (None: it can).

    A node that writes a graph output can go only when ``source``'s producer can take the output's name (it is the
    only reader of ``source``, which is no graph output itself)."""
    if node.output[0] not in g.graph_outputs:
        return None
    producer = g.producer.get(source)
    if producer is None or source in g.graph_outputs or len(g.consumers.get(source, [])) != 1:
        return NoMatch("writes a graph output whose input cannot take its name")
    return None


def _bypass(g: GraphIndex, node: onnx.NodeProto, source: str) -> None:
    if not bypass(g.graph, g, node, source):  # match checked bypass_refusal: a failure here is a bug
        raise AssertionError(f"cannot bypass {node.name or node.output[0]}")


# -- squeeze_matmul_constants ------------------------------------------------------------------------------------------


def _match_squeeze_matmul(g: GraphIndex, node: onnx.NodeProto) -> tuple[onnx.NodeProto, np.ndarray] | NoMatch | None:
    if node.op_type != "MatMul":
        return None
    value = g.const(node.input[1])
    if value is None or value.ndim <= 2:  # a product of two computed tensors, or a 2D weight already
        return None
    if any(d != 1 for d in value.shape[:-2]):
        return NoMatch("weight has leading dims other than 1")
    if len(g.shapes.get(node.input[0], ())) < value.ndim:
        return NoMatch("input rank below the weight's (or unknown)")
    return node, value


def _squeeze_matmul(g: GraphIndex, found: tuple[onnx.NodeProto, np.ndarray]) -> None:
    node, value = found
    node.input[1] = g.add_initializer(node.input[1].split(":")[0] + "_2d", value.reshape(value.shape[-2:]))


squeeze_matmul_constants = RewritePass(
    "squeeze_matmul_constants",
    [Rule(_match_squeeze_matmul, _squeeze_matmul)],
    """MatMul(A, W) with constant W of shape (1, ..., 1, K, N) and rank(A) >= rank(W) → MatMul(A, W.reshape(K, N)).""",
    shapes=True,
    fixed_point=False,
)


# -- squeeze_elementwise_constants -------------------------------------------------------------------------------------


def _match_squeeze_elementwise(
    g: GraphIndex, node: onnx.NodeProto
) -> tuple[onnx.NodeProto, list[tuple[int, np.ndarray]]] | NoMatch | None:
    if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.input) != 2:
        return None
    found: list[tuple[int, np.ndarray]] = []
    refusal = None
    for position in (0, 1):
        value = g.const(node.input[position])
        other = g.shapes.get(node.input[1 - position])
        if value is None or g.const(node.input[1 - position]) is not None:
            continue
        lead = 0
        while lead < value.ndim - 1 and value.shape[lead] == 1:
            lead += 1
        if lead == 0:
            continue
        if other is None or len(other) < value.ndim:
            refusal = NoMatch("other operand's rank below the constant's (or unknown)")
            continue
        found.append((position, value.reshape(value.shape[lead:])))
    return (node, found) if found else refusal


def _squeeze_elementwise(g: GraphIndex, found: tuple[onnx.NodeProto, list[tuple[int, np.ndarray]]]) -> None:
    node, constants = found
    for position, value in constants:
        node.input[position] = g.add_initializer(node.input[position].split(":")[0] + "_squeezed", value)


squeeze_elementwise_constants = RewritePass(
    "squeeze_elementwise_constants",
    [Rule(_match_squeeze_elementwise, _squeeze_elementwise)],
    """Add/Sub/Mul/Div with a constant of shape (1, ..., 1, *rest) → constant of shape rest.

    Same broadcasting result when the other operand has at least the constant's rank; OpenCV 4.6 reads a (C, 1, 1)
    constant as a per-channel scale/bias but fails on (1, C, 1, 1).
    """,
    shapes=True,
    fixed_point=False,
)


# -- affine folds ------------------------------------------------------------------------------------------------------


def _channel_vector(value: np.ndarray, channels: int, axis_from_end: int) -> np.ndarray | None:
    """``value`` as a per-channel vector of length ``channels`` if it broadcasts only along that channel axis."""
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=value.dtype)
    if value.size != channels:
        return None
    shape = list(value.shape)
    if len(shape) < axis_from_end or shape[-axis_from_end] != channels:
        return None
    return value.reshape(channels)


@dataclass
class _MatMulFold:
    node: onnx.NodeProto
    mul: onnx.NodeProto
    weight: np.ndarray


def _match_fold_matmul(g: GraphIndex, node: onnx.NodeProto) -> _MatMulFold | NoMatch | None:
    if node.op_type != "MatMul":
        return None
    weight = g.const(node.input[1])
    user = g.only_consumer(node.output[0])
    if weight is None or user is None or user.op_type != "Mul":
        return None  # a product of two computed tensors, or no Mul to fold
    scale = g.const(user.input[1] if user.input[0] == node.output[0] else user.input[0])
    if scale is None:
        return None  # a Mul by a computed tensor is no affine op
    if weight.ndim != 2:
        return NoMatch("weight not 2D")
    vector = _channel_vector(scale, weight.shape[1], 1)
    if vector is None or scale.ndim > len(g.shapes.get(node.output[0], (None,) * 8)):
        return NoMatch("Mul constant not per output channel")
    refusal = bypass_refusal(g, user, node.output[0])
    if refusal is not None:
        return refusal
    return _MatMulFold(node, user, (weight * vector[None, :]).astype(weight.dtype))


def _fold_matmul(g: GraphIndex, found: _MatMulFold) -> None:
    found.node.input[1] = g.add_initializer(found.node.input[1].split(":")[0] + "_scaled", found.weight)
    _bypass(g, found.mul, found.node.output[0])


fold_affine_into_matmul = RewritePass(
    "fold_affine_into_matmul",
    [Rule(_match_fold_matmul, _fold_matmul)],
    """MatMul(A, W const 2D) → Mul(c) ⇒ MatMul(A, W·c) when c scales each output channel (batch-norm folding).""",
    shapes=True,  # the folds keep every shape they read
)


@dataclass
class _ConvFold:
    node: onnx.NodeProto
    user: onnx.NodeProto  # the BatchNormalization / Mul / Add that goes
    source: str  # what the user's readers read instead: the Conv's output, or the Transpose's after it
    affine: str  # the constant the folded bias is named after
    weight: np.ndarray
    bias: np.ndarray


def _conv_user(g: GraphIndex, node: onnx.NodeProto, spatial: int) -> tuple[onnx.NodeProto, str, int] | NoMatch | None:
    """(the op to fold, the tensor it reads, the channel axis counted from the end) after a Conv."""
    user = g.only_consumer(node.output[0])
    if user is None:
        return None
    if user.op_type != "Transpose":
        return user, node.output[0], spatial + 1
    perm = transpose_perm(user)
    after = g.only_consumer(user.output[0])
    if perm is None or sorted(perm) != list(range(spatial + 2)) or after is None:
        return None
    if after.op_type not in ("Mul", "Add"):  # a batch-norm node normalises axis 1, which moved
        return None
    return after, user.output[0], spatial + 2 - perm.index(1)


def _affine_of(
    g: GraphIndex, user: onnx.NodeProto, source: str, is_conv_output: bool, weight: np.ndarray, where: int
) -> tuple[np.ndarray, np.ndarray, str] | NoMatch | None:
    """(scale, shift, the constant's name) of a BatchNormalization / per-channel Mul or Add reading ``source``."""
    if user.op_type == "BatchNormalization" and len(user.output) == 1 and is_conv_output:
        params = [g.const(name) for name in user.input[1:5]]
        if any(p is None for p in params):
            return NoMatch("batch-norm parameters not constant")
        gamma, beta, mean, var = params
        eps = next((a.f for a in user.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        return scale, beta - mean * scale, user.input[2]
    if user.op_type not in ("Mul", "Add"):
        return None
    other = user.input[1] if user.input[0] == source else user.input[0]
    value = g.const(other)
    if value is None:
        return None  # a Mul / Add of a computed tensor is no affine op (a residual connection)
    channels = weight.shape[0]
    vector = _channel_vector(value, channels, where) if value.ndim <= weight.ndim else None
    if vector is None:
        return NoMatch(f"{user.op_type} constant not per output channel")
    if user.op_type == "Mul":
        return vector, np.zeros(channels, weight.dtype), other
    return np.ones(channels, weight.dtype), vector, other


def _match_fold_conv(g: GraphIndex, node: onnx.NodeProto) -> _ConvFold | NoMatch | None:
    if node.op_type != "Conv":
        return None
    weight = g.const(node.input[1])
    if weight is None:
        return NoMatch("weight not constant")
    has_bias = len(node.input) > 2 and bool(node.input[2])
    bias = g.const(node.input[2]) if has_bias else np.zeros(weight.shape[0], weight.dtype)
    if bias is None:
        return NoMatch("bias not constant")
    spatial = weight.ndim - 2
    found = _conv_user(g, node, spatial)
    if found is None or isinstance(found, NoMatch):
        return found
    user, source, where = found
    affine = _affine_of(g, user, source, source == node.output[0], weight, where)
    if affine is None or isinstance(affine, NoMatch):
        return affine
    refusal = bypass_refusal(g, user, source)
    if refusal is not None:
        return refusal
    scale, shift, name = affine
    scale = scale.astype(np.float64)
    new_weight = (weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(weight.dtype)
    return _ConvFold(node, user, source, name, new_weight, (bias * scale + shift).astype(weight.dtype))


def _fold_conv(g: GraphIndex, found: _ConvFold) -> None:
    node = found.node
    node.input[1] = g.add_initializer(node.input[1].split(":")[0] + "_folded", found.weight)
    # the bias is named after the affine op's constant: the Conv then reads a weight of that later layer (the
    # batch norm), which the divergence locator reads as "the convolution is fused into the batch norm", and a
    # search for the batch norm's bias finds it (rule 3 of lambda_export.passes.base)
    bias_name = g.add_initializer(found.affine.split(":")[0] + "_bias_folded", found.bias)
    if len(node.input) > 2:
        node.input[2] = bias_name
    else:
        node.input.append(bias_name)
    _bypass(g, found.user, found.source)


fold_affine_into_conv = RewritePass(
    "fold_affine_into_conv",
    [Rule(_match_fold_conv, _fold_conv)],
    """Conv(X, W, B) followed by BatchNormalization (inference), or by a per-channel Mul / Add, folds into W and B.

    The Mul / Add may also follow a Transpose of the Conv's output (``Conv → Transpose(NCHW→NHWC) → Mul``: what
    tf2onnx leaves of a Keras batch norm when the kernel was a graph input while it converted, see
    :func:`lambda_export.conversion.weight_inputs`); its constant must then vary only along the axis the Transpose
    moved the channels to. The Transpose stays, the Mul / Add goes.
    """,
)


# -- merge_sibling_matmuls ---------------------------------------------------------------------------------------------


def _mergeable(g: GraphIndex, node: onnx.NodeProto) -> bool:
    if node.op_type != "MatMul" or g.const(node.input[0]) is not None:
        return False
    weight = g.const(node.input[1])
    return weight is not None and weight.ndim == 2 and weight.dtype == np.float32


@dataclass
class _Siblings:
    source: str
    nodes: list[onnx.NodeProto]
    weights: list[np.ndarray]
    biases: list[np.ndarray | None]
    bias_nodes: list[onnx.NodeProto | None]


def _sibling_bias(g: GraphIndex, node: onnx.NodeProto, width: int) -> tuple[np.ndarray | None, onnx.NodeProto | None]:
    user = g.only_consumer(node.output[0])
    if user is None or user.op_type != "Add":
        return None, None
    value = g.const(user.input[1] if user.input[0] == node.output[0] else user.input[0])
    if value is None:
        return None, None
    bias = _channel_vector(value, width, 1)
    if bias is None or value.ndim > len(g.shapes.get(node.output[0], (None,) * 8)):
        return None, None
    return bias, user


def _match_siblings(g: SweepIndex, node: onnx.NodeProto, even_splits_only: bool = False) -> _Siblings | NoMatch | None:
    if not _mergeable(g, node):
        return None
    nodes = [other for other in g.consumers.get(node.input[0], []) if _mergeable(g, other)]
    if nodes[0] is not node:
        return None  # the group is matched at its first MatMul
    if len(nodes) < 2:
        return None  # no sibling
    if g.opset() < 13:
        return NoMatch("opset below 13 (Split sizes as an input)")
    if len(g.shapes.get(node.input[0], ())) < 2:
        return NoMatch("input rank unknown or below 2")
    weights = [g.const(other.input[1]) for other in nodes]
    if len({w.shape[0] for w in weights}) != 1:
        return NoMatch("weights of different depths")
    if even_splits_only and len({w.shape[1] for w in weights}) != 1:
        return NoMatch("uneven widths (even_splits_only)")
    pairs = [_sibling_bias(g, other, w.shape[1]) for other, w in zip(nodes, weights, strict=True)]
    return _Siblings(node.input[0], nodes, weights, [b for b, _ in pairs], [n for _, n in pairs])


def _merge_siblings(g: GraphIndex, found: _Siblings) -> None:
    graph, first, weights = g.graph, found.nodes[0], found.weights
    weight_name = g.add_initializer(first.name + "_merged_weight", np.concatenate(weights, axis=1))
    merged_out = g.fresh(first.name + "_merged")
    new_nodes = [
        onnx.helper.make_node("MatMul", [found.source, weight_name], [merged_out], name=first.name + "_merged")
    ]
    split_input = merged_out
    if any(bias is not None for bias in found.biases):
        vector = np.concatenate(
            [
                b if b is not None else np.zeros(w.shape[1], np.float32)
                for b, w in zip(found.biases, weights, strict=True)
            ]
        ).astype(np.float32)
        bias_name = g.add_initializer(first.name + "_merged_bias", vector)
        split_input = g.fresh(first.name + "_merged_biased")
        new_nodes.append(
            onnx.helper.make_node("Add", [merged_out, bias_name], [split_input], name=first.name + "_merged_bias")
        )
    sizes = g.add_initializer(first.name + "_split_sizes", np.array([w.shape[1] for w in weights], np.int64))
    outputs = [
        (b.output[0] if b is not None else n.output[0]) for n, b in zip(found.nodes, found.bias_nodes, strict=True)
    ]
    new_nodes.append(onnx.helper.make_node("Split", [split_input, sizes], outputs, name=first.name + "_split", axis=-1))
    position = min(list(graph.node).index(node) for node in found.nodes)
    for node in found.nodes + [b for b in found.bias_nodes if b is not None]:
        graph.node.remove(node)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(position + offset, new)
    toposort(graph)


merge_sibling_matmuls = RewritePass(
    "merge_sibling_matmuls",
    [Rule(_match_siblings, _merge_siblings)],
    """Several MatMul(A, W_i) with constant 2D W_i on the same A → one MatMul(A, [W_1 ... W_n]) and a Split.

    With ``even_splits_only`` (the pipelines set it for targets with the ``no_broadcast`` rules) only siblings of
    equal width are merged (OpenCV 4.6 ignores Split's sizes input and cuts into equal parts). A constant bias ``Add``
    that follows a MatMul is merged too (zeros for the siblings without one). One larger GEMM is faster than several
    small ones and the graph is smaller (lambda layers: the query, key and value projections).
    """,
    shapes=True,  # merging keeps every shape it reads
    fixed_point=False,
)


# -- squeeze_to_reshape, merge_reshapes, merge_transposes, remove_identities -------------------------------------------


def _match_squeeze_to_reshape(g: GraphIndex, node: onnx.NodeProto) -> tuple[onnx.NodeProto, list[int]] | NoMatch | None:
    if node.op_type not in ("Squeeze", "Unsqueeze", "Flatten"):
        return None
    out_shape = g.shapes.get(node.output[0])
    if out_shape is None:
        return NoMatch("output shape unknown")
    if sum(d is None for d in out_shape) > 1 or any(d == 0 for d in out_shape):
        return NoMatch("more than one dynamic dim, or a zero dim")
    if node.op_type != "Flatten" and len(node.input) > 1 and g.const(node.input[1]) is None:
        return NoMatch("axes not constant")
    return node, [-1 if d is None else d for d in out_shape]


def _squeeze_to_reshape(g: GraphIndex, found: tuple[onnx.NodeProto, list[int]]) -> None:
    node, target = found
    shape_name = g.add_initializer(node.name + "_shape", np.array(target, dtype=np.int64))
    node.CopyFrom(onnx.helper.make_node("Reshape", [node.input[0], shape_name], list(node.output), name=node.name))


squeeze_to_reshape = RewritePass(
    "squeeze_to_reshape",
    [Rule(_match_squeeze_to_reshape, _squeeze_to_reshape)],
    """Squeeze/Unsqueeze/Flatten with a statically known output shape (batch aside) → Reshape to a constant shape.

    OpenCV 4.6 cannot read opset-13 Squeeze/Unsqueeze (axes as an input); a Reshape is understood everywhere.
    """,
    shapes=True,
    fixed_point=False,
)


def _match_merge_reshapes(g: GraphIndex, node: onnx.NodeProto) -> tuple[onnx.NodeProto, str] | NoMatch | None:
    if node.op_type != "Reshape":
        return None
    inner = g.producer.get(node.input[0])
    if inner is None or inner.op_type != "Reshape":
        return None
    target = g.const(node.input[1])
    if target is None:
        return NoMatch("shape not constant")
    if (target == 0).any():
        return NoMatch("shape copies a dim (0)")
    return node, inner.input[0]


def _merge_reshapes(g: GraphIndex, found: tuple[onnx.NodeProto, str]) -> None:
    node, source = found
    node.input[0] = source


merge_reshapes = RewritePass(
    "merge_reshapes",
    [Rule(_match_merge_reshapes, _merge_reshapes)],
    """Reshape(Reshape(x, s1), s2) → Reshape(x, s2) when s2 is constant and has no 0 ("copy") entries.""",
    fixed_point=False,
)


def _match_compose(g: GraphIndex, node: onnx.NodeProto) -> tuple[onnx.NodeProto, str, list[int]] | NoMatch | None:
    if node.op_type != "Transpose":
        return None
    inner = g.producer.get(node.input[0])
    if inner is None or inner.op_type != "Transpose":
        return None
    p1, p2 = transpose_perm(inner), transpose_perm(node)
    if p1 is None or p2 is None:
        return NoMatch("perm attribute missing")
    return node, inner.input[0], [p1[i] for i in p2]


def _compose(g: GraphIndex, found: tuple[onnx.NodeProto, str, list[int]]) -> None:
    node, source, composed = found
    node.input[0] = source
    for attr in node.attribute:
        if attr.name == "perm":
            del attr.ints[:]
            attr.ints.extend(composed)


def _match_identity_transpose(g: GraphIndex, node: onnx.NodeProto) -> onnx.NodeProto | NoMatch | None:
    order = transpose_perm(node) if node.op_type == "Transpose" else None
    if order is None or order != sorted(order):
        return None
    return bypass_refusal(g, node, node.input[0]) or node


merge_transposes = RewritePass(
    "merge_transposes",
    [Rule(_match_compose, _compose), Rule(_match_identity_transpose, lambda g, node: _bypass(g, node, node.input[0]))],
    """Transpose(Transpose(x, p1), p2) → Transpose(x, p1[p2]); identity Transposes are removed.""",
    fixed_point=False,
)


def _match_identity(g: GraphIndex, node: onnx.NodeProto) -> onnx.NodeProto | NoMatch | None:
    if node.op_type != "Identity":
        return None
    return bypass_refusal(g, node, node.input[0]) or node


remove_identities = RewritePass(
    "remove_identities",
    [Rule(_match_identity, lambda g, node: _bypass(g, node, node.input[0]))],
    """Drop ``Identity`` nodes (readers read the identity's input).""",
    fixed_point=False,
)


# -- pad_into_max_pool -----------------------------------------------------------------------------------------------

# how far each mode may pad an axis of a k-wide window and still copy only values the window already holds
_POOL_PAD_LIMITS = {"reflect": lambda k: (k - 1) // 2, "edge": lambda k: k - 1}


@dataclass
class _PadPool:
    pool: onnx.NodeProto
    pad: onnx.NodeProto
    pads: list[int]  # the pool's new pads (spatial begins, then ends)


def _match_pad_pool(g: GraphIndex, node: onnx.NodeProto) -> _PadPool | NoMatch | None:
    if node.op_type != "MaxPool" or not node.input:
        return None
    pad = g.producer.get(node.input[0])
    if pad is None or pad.op_type != "Pad":
        return None
    mode = text_attribute(pad, "mode", "constant")
    if mode not in _POOL_PAD_LIMITS:
        return NoMatch(f"{mode} Pad")  # constant: ONNX Runtime's PadFusion; wrap copies values from afar
    if len(pad.input) > 3 and pad.input[3]:
        return NoMatch("Pad with axes")
    pads = attribute(pad, "pads") if len(pad.input) < 2 or not pad.input[1] else g.const(pad.input[1])
    if pads is None:
        return NoMatch("pads not constant")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = len(pads) // 2
    kernel = [int(k) for k in attribute(node, "kernel_shape", [])]
    if rank != len(kernel) + 2:
        return NoMatch("Pad rank is not the pool's")
    if any(pads[i] or pads[rank + i] for i in (0, 1)):
        return NoMatch("pads the batch or channel axis")
    if any(p < 0 for p in pads):
        return NoMatch("negative pads (a crop)")
    if text_attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return NoMatch("MaxPool with auto_pad SAME")
    if any(int(d) != 1 for d in attribute(node, "dilations", [])) or attribute(node, "ceil_mode", 0):
        return NoMatch("dilated or ceil_mode MaxPool")
    if len(node.output) > 1 and node.output[1]:
        return NoMatch("MaxPool with Indices output")
    own = [int(p) for p in attribute(node, "pads", [0] * 2 * len(kernel))]
    spatial = [pads[2:rank], pads[rank + 2 :]]
    limit = _POOL_PAD_LIMITS[mode]
    if any(p > limit(k) for side in spatial for p, k in zip(side, kernel, strict=True)):
        return NoMatch(f"{mode} pad wider than the window holds")
    if any(own):
        return NoMatch("MaxPool pads already")
    return _PadPool(node, pad, spatial[0] + spatial[1])


def _pad_into_pool(g: GraphIndex, found: _PadPool) -> None:
    pool = found.pool
    pool.input[0] = found.pad.input[0]
    keep = [a for a in pool.attribute if a.name not in ("pads", "auto_pad")]
    del pool.attribute[:]
    pool.attribute.extend(keep)
    pool.attribute.append(onnx.helper.make_attribute("pads", found.pads))


pad_into_max_pool = RewritePass(
    "pad_into_max_pool",
    [Rule(_match_pad_pool, _pad_into_pool)],
    """``Pad(x, mode=reflect|edge)`` of the spatial axes → ``MaxPool`` ⇒ ``MaxPool(x, pads)`` when each padded value
    is a copy of one the window already holds (reflect: 2p ≤ k − 1, edge: p ≤ k − 1 on every axis, dilation 1, no
    ``ceil_mode``), so the maximum is the same; ONNX pads a MaxPool with −∞, which no window's maximum takes (every
    window holds an input value). Exact.""",
    fixed_point=False,
)


def _eliminate_dead_nodes(ctx: PassContext) -> bool:
    """Remove nodes whose outputs nobody reads and initializers no node reads (subgraph bodies' reads count).

    The :class:`~lambda_export.passes.base.PassManager` does this after every pass that changed the graph; as a pass
    it is for a graph edited by hand."""
    return remove_dead_nodes(ctx.model.graph) > 0


eliminate_dead_nodes = GraphPass(_eliminate_dead_nodes, name="eliminate_dead_nodes")
