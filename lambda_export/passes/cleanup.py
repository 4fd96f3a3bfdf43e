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
* ``remove_identities`` and ``eliminate_dead_nodes`` – tidy up.
"""

from __future__ import annotations

import numpy as np
import onnx

from lambda_export.graph import GraphIndex, bypass, subgraph_reads, toposort, transpose_perm
from lambda_export.passes.base import PassContext, graph_pass

__all__ = [
    "eliminate_dead_nodes",
    "fold_affine_into_conv",
    "fold_affine_into_matmul",
    "merge_reshapes",
    "merge_sibling_matmuls",
    "merge_transposes",
    "remove_identities",
    "squeeze_elementwise_constants",
    "squeeze_matmul_constants",
    "squeeze_to_reshape",
]


@graph_pass
def squeeze_matmul_constants(ctx: PassContext) -> bool:
    """MatMul(A, W) with constant W of shape (1, ..., 1, K, N) and rank(A) >= rank(W) → MatMul(A, W.reshape(K, N))."""
    graph, index, shapes = ctx.model.graph, ctx.index(), ctx.shapes()
    changed = False
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        value = index.const(node.input[1])
        rank_a = len(shapes.get(node.input[0], ()))
        if value is None or value.ndim <= 2 or any(d != 1 for d in value.shape[:-2]) or rank_a < value.ndim:
            continue
        node.input[1] = index.add_initializer(node.input[1].split(":")[0] + "_2d", value.reshape(value.shape[-2:]))
        changed = True
    return changed


@graph_pass
def squeeze_elementwise_constants(ctx: PassContext) -> bool:
    """Add/Sub/Mul/Div with a constant of shape (1, ..., 1, *rest) → constant of shape rest.

    Same broadcasting result when the other operand has at least the constant's rank; OpenCV 4.6 reads a (C, 1, 1)
    constant as a per-channel scale/bias but fails on (1, C, 1, 1).
    """
    graph, changed = ctx.model.graph, False
    index, shapes = ctx.index(), ctx.shapes()
    for node in graph.node:
        if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.input) != 2:
            continue
        for position in (0, 1):
            value = index.const(node.input[position])
            other = shapes.get(node.input[1 - position])
            if value is None or other is None or index.const(node.input[1 - position]) is not None:
                continue
            lead = 0
            while lead < value.ndim - 1 and value.shape[lead] == 1:
                lead += 1
            if lead == 0 or len(other) < value.ndim:
                continue
            base = node.input[position].split(":")[0]
            node.input[position] = index.add_initializer(base + "_squeezed", value.reshape(value.shape[lead:]))
            changed = True
    return changed


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


@graph_pass
def fold_affine_into_matmul(ctx: PassContext) -> bool:
    """MatMul(A, W const 2D) → Mul(c) ⇒ MatMul(A, W·c) when c scales each output channel (batch-norm folding)."""
    graph = ctx.model.graph
    shapes = ctx.shapes()  # of the graph before the pass: the folds keep every shape they read

    def rewrite(index: GraphIndex, node: onnx.NodeProto) -> bool:
        if node.op_type != "MatMul":
            return False
        weight = index.const(node.input[1])
        if weight is None or weight.ndim != 2:
            return False
        user = index.only_consumer(node.output[0])
        if user is None or user.op_type != "Mul":
            return False
        other = user.input[1] if user.input[0] == node.output[0] else user.input[0]
        scale = index.const(other)
        if scale is None:
            return False
        vector = _channel_vector(scale, weight.shape[1], 1)
        if vector is None or scale.ndim > len(shapes.get(node.output[0], (None,) * 8)):
            return False
        new_weight = (weight * vector[None, :]).astype(weight.dtype)
        node.input[1] = index.add_initializer(node.input[1].split(":")[0] + "_scaled", new_weight)
        return bypass(graph, index, user, node.output[0])

    return ctx.rewrite_nodes(rewrite)


@graph_pass
def fold_affine_into_conv(ctx: PassContext) -> bool:
    """Conv(X, W, B) followed by BatchNormalization (inference), or by a per-channel Mul / Add, folds into W and B.

    The Mul / Add may also follow a Transpose of the Conv's output (``Conv → Transpose(NCHW→NHWC) → Mul``: what
    tf2onnx leaves of a Keras batch norm when the kernel was a graph input while it converted, see
    :func:`lambda_export.conversion.weight_inputs`); its constant must then vary only along the axis the Transpose
    moved the channels to. The Transpose stays, the Mul / Add goes.
    """
    graph = ctx.model.graph

    def rewrite(index: GraphIndex, node: onnx.NodeProto) -> bool:
        if node.op_type != "Conv":
            return False
        weight = index.const(node.input[1])
        if weight is None:
            return False
        out_channels = weight.shape[0]
        bias = index.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            return False
        bias = np.zeros(out_channels, weight.dtype) if bias is None else bias
        user = index.only_consumer(node.output[0])
        if user is None:
            return False
        spatial = weight.ndim - 2
        channel_from_end = spatial + 1  # the channel axis of the Conv's output (N, C, ...), counted from the end
        if user.op_type == "Transpose":
            perm = next((list(a.ints) for a in user.attribute if a.name == "perm"), None)
            after = index.only_consumer(user.output[0])
            if perm is None or sorted(perm) != list(range(spatial + 2)) or after is None:
                return False
            if after.op_type not in ("Mul", "Add"):  # a batch-norm node normalises axis 1, which moved
                return False
            channel_from_end = spatial + 2 - perm.index(1)
            source, user = user.output[0], after
        else:
            source = node.output[0]
        scale = shift = None
        if user.op_type == "BatchNormalization" and len(user.output) == 1 and source == node.output[0]:
            params = [index.const(name) for name in user.input[1:5]]
            if any(p is None for p in params):
                return False
            gamma, beta, mean, var = params
            affine = user.input[2]
            eps = next((a.f for a in user.attribute if a.name == "epsilon"), 1e-5)
            scale = gamma / np.sqrt(var + eps)
            shift = beta - mean * scale
        elif user.op_type in ("Mul", "Add"):
            other = affine = user.input[1] if user.input[0] == source else user.input[0]
            value = index.const(other)
            if value is None or value.ndim > spatial + 2:
                return False
            vector = _channel_vector(value, out_channels, channel_from_end)
            if vector is None:
                return False
            if user.op_type == "Mul":
                scale, shift = vector, np.zeros(out_channels, weight.dtype)
            else:
                scale, shift = np.ones(out_channels, weight.dtype), vector
        else:
            return False
        scale = scale.astype(np.float64)
        new_weight = (weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(weight.dtype)
        new_bias = (bias * scale + shift).astype(weight.dtype)
        base = node.input[1].split(":")[0]
        node.input[1] = index.add_initializer(base + "_folded", new_weight)
        # the bias is named after the affine op's constant: the Conv then reads a weight of that later layer (the
        # batch norm), which the divergence locator reads as "the convolution is fused into the batch norm", and a
        # search for the batch norm's bias finds it
        bias_name = index.add_initializer(affine.split(":")[0] + "_bias_folded", new_bias)
        if len(node.input) > 2:
            node.input[2] = bias_name
        else:
            node.input.append(bias_name)
        return bypass(graph, index, user, source)

    return ctx.rewrite_nodes(rewrite)


@graph_pass
def merge_sibling_matmuls(ctx: PassContext, even_splits_only: bool = False) -> bool:
    """Several MatMul(A, W_i) with constant 2D W_i on the same A → one MatMul(A, [W_1 ... W_n]) and a Split.

    With ``even_splits_only`` (the pipelines set it for targets with the ``no_broadcast`` rules) only siblings of equal width are merged (OpenCV 4.6 ignores Split's sizes input and cuts into equal parts). A constant bias ``Add`` that follows a MatMul is merged too (zeros for the siblings without one). One larger GEMM
    is faster than several small ones and the graph is smaller (lambda layers: the query, key and value projections).
    """
    model = ctx.model
    graph = model.graph
    index = ctx.index()
    shapes = ctx.shapes()  # of the graph before the pass: merging keeps every shape it reads
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and index.const(node.input[0]) is None:
            weight = index.const(node.input[1])
            if weight is not None and weight.ndim == 2 and weight.dtype == np.float32:
                groups.setdefault(node.input[0], []).append(node)
    changed = False
    for source, nodes in groups.items():
        if len(nodes) < 2 or opset < 13 or len(shapes.get(source, ())) < 2:
            continue
        weights = [index.const(node.input[1]) for node in nodes]
        if len({w.shape[0] for w in weights}) != 1:
            continue
        if even_splits_only and len({w.shape[1] for w in weights}) != 1:
            continue
        biases, bias_nodes = [], []
        for node, weight in zip(nodes, weights, strict=True):
            user = index.only_consumer(node.output[0])
            bias = None
            if user is not None and user.op_type == "Add":
                other = user.input[1] if user.input[0] == node.output[0] else user.input[0]
                value = index.const(other)
                if value is not None:
                    bias = _channel_vector(value, weight.shape[1], 1)
                    if bias is not None and value.ndim > len(shapes.get(node.output[0], (None,) * 8)):
                        bias = None
            biases.append(bias)
            bias_nodes.append(user if bias is not None else None)
        first = nodes[0]
        merged_weight = np.concatenate(weights, axis=1)
        weight_name = index.add_initializer(first.name + "_merged_weight", merged_weight)
        merged_out = index.fresh(first.name + "_merged")
        new_nodes = [onnx.helper.make_node("MatMul", [source, weight_name], [merged_out], name=first.name + "_merged")]
        split_input = merged_out
        if any(bias is not None for bias in biases):
            vector = np.concatenate(
                [b if b is not None else np.zeros(w.shape[1], np.float32) for b, w in zip(biases, weights, strict=True)]
            ).astype(np.float32)
            bias_name = index.add_initializer(first.name + "_merged_bias", vector)
            split_input = index.fresh(first.name + "_merged_biased")
            new_nodes.append(
                onnx.helper.make_node("Add", [merged_out, bias_name], [split_input], name=first.name + "_merged_bias")
            )
        sizes = index.add_initializer(first.name + "_split_sizes", np.array([w.shape[1] for w in weights], np.int64))
        outputs = [
            (bias_node.output[0] if bias_node is not None else node.output[0])
            for node, bias_node in zip(nodes, bias_nodes, strict=True)
        ]
        new_nodes.append(
            onnx.helper.make_node("Split", [split_input, sizes], outputs, name=first.name + "_split", axis=-1)
        )
        position = min(list(graph.node).index(node) for node in nodes)
        for node in nodes + [b for b in bias_nodes if b is not None]:
            graph.node.remove(node)
        for offset, new in enumerate(new_nodes):
            graph.node.insert(position + offset, new)
        changed = True
        index = GraphIndex(graph)
    if changed:
        toposort(graph)
    return changed


@graph_pass
def squeeze_to_reshape(ctx: PassContext) -> bool:
    """Squeeze/Unsqueeze/Flatten with a statically known output shape (batch aside) → Reshape to a constant shape.

    OpenCV 4.6 cannot read opset-13 Squeeze/Unsqueeze (axes as an input); a Reshape is understood everywhere.
    """
    graph, changed = ctx.model.graph, False
    shapes = ctx.shapes()
    index = ctx.index()
    for node in graph.node:
        if node.op_type not in ("Squeeze", "Unsqueeze", "Flatten"):
            continue
        out_shape = shapes.get(node.output[0])
        if out_shape is None or sum(d is None for d in out_shape) > 1 or any(d == 0 for d in out_shape):
            continue
        if node.op_type != "Flatten" and len(node.input) > 1 and index.const(node.input[1]) is None:
            continue
        target = np.array([-1 if d is None else d for d in out_shape], dtype=np.int64)
        shape_name = index.add_initializer(node.name + "_shape", target)
        new = onnx.helper.make_node("Reshape", [node.input[0], shape_name], list(node.output), name=node.name)
        node.CopyFrom(new)
        changed = True
    return changed


@graph_pass
def merge_reshapes(ctx: PassContext) -> bool:
    """Reshape(Reshape(x, s1), s2) → Reshape(x, s2) when s2 is constant and has no 0 ("copy") entries."""
    graph, changed = ctx.model.graph, False
    index = ctx.index()
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        inner = index.producer.get(node.input[0])
        target = index.const(node.input[1])
        if inner is None or inner.op_type != "Reshape" or target is None or (target == 0).any():
            continue
        node.input[0] = inner.input[0]
        changed = True
    return changed


@graph_pass
def merge_transposes(ctx: PassContext) -> bool:
    """Transpose(Transpose(x, p1), p2) → Transpose(x, p1[p2]); identity Transposes are removed."""
    graph, changed = ctx.model.graph, False
    index = ctx.index()
    for node in graph.node:
        if node.op_type != "Transpose":
            continue
        inner = index.producer.get(node.input[0])
        if inner is None or inner.op_type != "Transpose":
            continue
        p1 = transpose_perm(inner)
        p2 = transpose_perm(node)
        if p1 is None or p2 is None:
            continue
        composed = [p1[i] for i in p2]
        node.input[0] = inner.input[0]
        for attr in node.attribute:
            if attr.name == "perm":
                del attr.ints[:]
                attr.ints.extend(composed)
        changed = True
    index = GraphIndex(graph)
    for node in list(graph.node):
        order = transpose_perm(node) if node.op_type == "Transpose" else None
        if order is not None and order == sorted(order) and bypass(graph, index, node, node.input[0]):
            index = GraphIndex(graph)
            changed = True
    return changed


@graph_pass
def remove_identities(ctx: PassContext) -> bool:
    """Drop ``Identity`` nodes (readers read the identity's input)."""
    graph, changed = ctx.model.graph, False
    index = ctx.index()
    for node in list(graph.node):
        if node.op_type == "Identity" and bypass(graph, index, node, node.input[0]):
            index = GraphIndex(graph)
            changed = True
    return changed


@graph_pass
def eliminate_dead_nodes(ctx: PassContext) -> bool:
    """Remove nodes whose outputs nobody reads and initializers no node reads (subgraph bodies' reads count)."""
    graph = ctx.model.graph
    needed = {out.name for out in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
            needed.update(subgraph_reads(node))  # subgraphs (If/Loop) read outer names implicitly
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(keep))
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    return bool(removed or unused)
