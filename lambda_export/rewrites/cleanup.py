"""Exact ONNX graph clean-up passes run after tf2onnx (step "rewrite" of load → convert → rewrite → check).

Every pass preserves the numbers the graph computes (up to float rounding of folded constants) and returns whether it
changed anything. Passes:

* ``squeeze_matmul_constants`` – a constant (1, ..., 1, K, N) MatMul operand becomes (K, N) (same broadcasting result
  when the other operand has at least that rank; old runtimes such as OpenCV 4.6 only take 2D constant weights).
* ``fold_affine_into_matmul`` / ``fold_affine_into_conv`` – a per-channel constant ``Mul`` (and ``Add``, and
  ``BatchNormalization`` after ``Conv``) that follows a MatMul/Conv with constant weights is folded into those weights
  (batch-norm folding).
* ``merge_reshapes`` / ``merge_transposes`` – chains collapse to one node; identity transposes disappear.
* ``remove_identities`` and ``eliminate_dead_nodes`` – tidy up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["CLEANUP_PASSES", "GraphIndex", "run_cleanup"]


class GraphIndex:
    """Producer/consumer maps and constant lookup for one ``GraphProto`` (rebuilt after every change)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {out.name for out in graph.output}
        self._names = {node.name for node in graph.node} | set(self.initializers)
        for node in graph.node:
            self._names.update(node.output)

    def const(self, name: str) -> np.ndarray | None:
        """The value of a tensor if it is an initializer or the output of a ``Constant`` node."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The single node reading ``name``, if exactly one reads it and it is not a graph output."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None

    def fresh(self, base: str) -> str:
        """A tensor/node name not used yet in the graph."""
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name


_Index = TypeVar("_Index", bound=GraphIndex)


def rewrite_until_stable(make_index: Callable[[], _Index], rewrite: Callable[[_Index, onnx.NodeProto], bool]) -> bool:
    """Run ``rewrite(index, node)`` over the nodes in graph order until one call changes the graph (returns True), then
    rebuild the index and start again; stop when a whole sweep changes nothing. True if anything changed.

    The shared driver of the one-node-at-a-time passes here and in :mod:`lambda_export.rewrites.performance`:
    ``rewrite`` may edit the graph freely before returning True, because the index is rebuilt after every change.
    """
    changed = False
    while True:
        index = make_index()
        if not any(rewrite(index, node) for node in index.graph.node):
            return changed
        changed = True


def _replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for out in graph.output:
        if out.name == old:
            # keep the graph output's name: rename the producer's output instead (handled by caller)
            raise ValueError("cannot rewire a graph output")


def _bypass(graph: onnx.GraphProto, index: GraphIndex, node: onnx.NodeProto, source: str) -> bool:
    """Remove single-output ``node`` and make its readers read ``source`` instead."""
    out = node.output[0]
    if out in index.graph_outputs:
        producer = index.producer.get(source)
        if producer is None or source in index.graph_outputs or len(index.consumers.get(source, [])) != 1:
            return False
        # rename the producer's output to the graph output name
        for i, name in enumerate(producer.output):
            if name == source:
                producer.output[i] = out
        graph.node.remove(node)
        return True
    _replace_uses(graph, out, source)
    graph.node.remove(node)
    return True


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without initializer data (initializers become typed graph inputs): cheap to infer."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    known = {value.name for value in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in known:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    # small integer initializers (shapes, axes) keep their values: shape inference needs them
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and np.prod(init.dims) <= 64:
            graph.initializer.append(init)
    return skeleton


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Shapes of every tensor that shape inference can determine (None for an unknown dim)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model))
    except Exception:
        return {init.name: tuple(init.dims) for init in model.graph.initializer}
    shapes: dict[str, tuple[int | None, ...]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def squeeze_matmul_constants(model: onnx.ModelProto) -> bool:
    """MatMul(A, W) with constant W of shape (1, ..., 1, K, N) and rank(A) >= rank(W) → MatMul(A, W.reshape(K, N))."""
    graph, index, shapes = model.graph, GraphIndex(model.graph), _static_shapes(model)
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


def squeeze_elementwise_constants(model: onnx.ModelProto) -> bool:
    """Add/Sub/Mul/Div with a constant of shape (1, ..., 1, *rest) → constant of shape rest.

    Same broadcasting result when the other operand has at least the constant's rank; OpenCV 4.6 reads a (C, 1, 1)
    constant as a per-channel scale/bias but fails on (1, C, 1, 1).
    """
    graph, changed = model.graph, False
    index, shapes = GraphIndex(graph), _static_shapes(model)
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


def fold_affine_into_matmul(model: onnx.ModelProto) -> bool:
    """MatMul(A, W const 2D) → Mul(c) ⇒ MatMul(A, W·c) when c scales each output channel (batch-norm folding)."""
    graph = model.graph
    shapes = _static_shapes(model)

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
        return _bypass(graph, index, user, node.output[0])

    return rewrite_until_stable(lambda: GraphIndex(graph), rewrite)


def fold_affine_into_conv(model: onnx.ModelProto) -> bool:
    """Conv(X, W, B) followed by BatchNormalization (inference), or by a per-channel Mul / Add, folds into W and B."""
    graph = model.graph

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
        scale = shift = None
        if user.op_type == "BatchNormalization" and len(user.output) == 1:
            params = [index.const(name) for name in user.input[1:5]]
            if any(p is None for p in params):
                return False
            gamma, beta, mean, var = params
            eps = next((a.f for a in user.attribute if a.name == "epsilon"), 1e-5)
            scale = gamma / np.sqrt(var + eps)
            shift = beta - mean * scale
        elif user.op_type in ("Mul", "Add"):
            other = user.input[1] if user.input[0] == node.output[0] else user.input[0]
            value = index.const(other)
            if value is None or value.ndim > spatial + 2:
                return False
            vector = _channel_vector(value, out_channels, spatial + 1)
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
        bias_name = index.add_initializer(base + "_bias_folded", new_bias)
        if len(node.input) > 2:
            node.input[2] = bias_name
        else:
            node.input.append(bias_name)
        return _bypass(graph, index, user, node.output[0])

    return rewrite_until_stable(lambda: GraphIndex(graph), rewrite)


def merge_sibling_matmuls(model: onnx.ModelProto, even_splits_only: bool = False) -> bool:
    """Several MatMul(A, W_i) with constant 2D W_i on the same A → one MatMul(A, [W_1 ... W_n]) and a Split.

    With ``even_splits_only`` only siblings of equal width are merged (OpenCV 4.6 ignores Split's sizes input and
    cuts into equal parts). A constant bias ``Add`` that follows a MatMul is merged too (zeros for the siblings without one). One larger GEMM
    is faster than several small ones and the graph is smaller (lambda layers: the query, key and value projections).
    """
    graph = model.graph
    index = GraphIndex(graph)
    shapes = _static_shapes(model)
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
        _toposort(graph)
    return changed


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder nodes topologically (stable: keeps the original order where possible)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise ValueError("graph has a cycle or reads an undefined tensor")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def squeeze_to_reshape(model: onnx.ModelProto) -> bool:
    """Squeeze/Unsqueeze/Flatten with a statically known output shape (batch aside) → Reshape to a constant shape.

    OpenCV 4.6 cannot read opset-13 Squeeze/Unsqueeze (axes as an input); a Reshape is understood everywhere.
    """
    graph, changed = model.graph, False
    shapes = _static_shapes(model)
    index = GraphIndex(graph)
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


def merge_reshapes(model: onnx.ModelProto) -> bool:
    """Reshape(Reshape(x, s1), s2) → Reshape(x, s2) when s2 is constant and has no 0 ("copy") entries."""
    graph, changed = model.graph, False
    index = GraphIndex(graph)
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


def merge_transposes(model: onnx.ModelProto) -> bool:
    """Transpose(Transpose(x, p1), p2) → Transpose(x, p1[p2]); identity Transposes are removed."""
    graph, changed = model.graph, False
    index = GraphIndex(graph)
    for node in graph.node:
        if node.op_type != "Transpose":
            continue
        inner = index.producer.get(node.input[0])
        if inner is None or inner.op_type != "Transpose":
            continue
        p1 = _perm(inner)
        p2 = _perm(node)
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
        perm = _perm(node) if node.op_type == "Transpose" else None
        if perm is not None and perm == sorted(perm) and _bypass(graph, index, node, node.input[0]):
            index = GraphIndex(graph)
            changed = True
    return changed


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def remove_identities(model: onnx.ModelProto) -> bool:
    """Drop ``Identity`` nodes (readers read the identity's input)."""
    graph, changed = model.graph, False
    index = GraphIndex(graph)
    for node in list(graph.node):
        if node.op_type == "Identity" and _bypass(graph, index, node, node.input[0]):
            index = GraphIndex(graph)
            changed = True
    return changed


def eliminate_dead_nodes(model: onnx.ModelProto) -> bool:
    """Remove nodes whose outputs nobody reads and initializers no node reads."""
    graph = model.graph
    needed = {out.name for out in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names implicitly
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(_subgraph_reads(attr.g))
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(keep))
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    return bool(removed or unused)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
    return names


CLEANUP_PASSES: list[tuple[str, Callable[[onnx.ModelProto], bool]]] = [
    ("remove_identities", remove_identities),
    ("squeeze_matmul_constants", squeeze_matmul_constants),
    ("fold_affine_into_matmul", fold_affine_into_matmul),
    ("fold_affine_into_conv", fold_affine_into_conv),
    ("squeeze_to_reshape", squeeze_to_reshape),
    ("squeeze_elementwise_constants", squeeze_elementwise_constants),
    ("merge_sibling_matmuls", merge_sibling_matmuls),
    ("merge_reshapes", merge_reshapes),
    ("merge_transposes", merge_transposes),
    ("eliminate_dead_nodes", eliminate_dead_nodes),
]


def run_cleanup(model: onnx.ModelProto, max_rounds: int = 5, even_splits_only: bool = False) -> list[str]:
    """Run the clean-up passes in place until nothing changes; return the names of the passes that changed the graph.

    ``even_splits_only`` restricts ``merge_sibling_matmuls`` to equal widths (for OpenCV 4.6 targets).
    """
    applied: list[str] = []
    for _ in range(max_rounds):
        round_changed = False
        for name, fn in CLEANUP_PASSES:
            changed = fn(model, even_splits_only) if fn is merge_sibling_matmuls else fn(model)
            if changed:
                round_changed = True
                if name not in applied:
                    applied.append(name)
        if not round_changed:
            break
    return applied
