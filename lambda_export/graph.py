"""The one ONNX graph helper every pass, check and loader shares.

* Walking: :func:`iter_graphs` (a graph and its If/Loop/Scan bodies), :func:`all_nodes`, :func:`all_names`,
  :func:`subgraph_reads` (what a body reads from the graphs around it: tf2onnx's Loop bodies read outer tensors by
  name, so renaming and dead-node passes must follow names into them).
* Names: :class:`UniqueNames` hands out ``stem``, ``stem_1``, ``stem_2`` … never colliding with a reserved set: the one
  way to make a new name (:meth:`GraphIndex.fresh` and the float16 converter use it over :func:`graph_names`).
* Lookup and editing: :class:`GraphIndex` (producers, consumers, constants, fresh names, new initializers, and the
  static shapes when asked for), :func:`bypass`, :func:`toposort`, :func:`insert_before`, :func:`attribute`.
* Shapes: :func:`static_shapes` runs ONNX shape inference on :func:`skeleton` (the graph without weight data, so it
  stays cheap for models with large weights).

Every helper edits the ``GraphProto`` in place; an index describes the graph as it was when built, so rebuild it
after a change (the pass driver in :mod:`lambda_export.passes.base` does).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from lambda_export.lean import tensor_digest

__all__ = [
    "GraphIndex",
    "Shapes",
    "TensorInfo",
    "UniqueNames",
    "all_names",
    "all_nodes",
    "attribute",
    "bypass",
    "canonical_order",
    "graph_io",
    "graph_names",
    "insert_before",
    "iter_graphs",
    "outer_reads",
    "rename_reads",
    "skeleton",
    "static_shapes",
    "subgraph_reads",
    "text_attribute",
    "toposort",
    "transpose_perm",
]

Shapes = dict[str, tuple[int | None, ...]]


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None for a dynamic dim) and NumPy dtype name of a model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[str]]:
    """The graph's real inputs (initializers listed as inputs left out) as :class:`TensorInfo`, and its output names.

    A symbolic dim is None; an input without an element type reads as float32.
    """
    initializers = {init.name for init in model.graph.initializer}
    infos = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name if tensor.elem_type else "float32"
        infos.append(TensorInfo(value.name, dims, dtype))
    return infos, [value.name for value in model.graph.output]


# -- walking ---------------------------------------------------------------------------------------------------------


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph inside it (If/Loop/Scan bodies, nested), outer graphs first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` and of all its subgraphs."""
    return [node for sub in iter_graphs(graph) for node in sub.node]


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor, value and node name used anywhere in ``model`` (subgraphs included; "" left out)."""
    return graph_names(model.graph)


def graph_names(top: onnx.GraphProto) -> set[str]:
    """Every name used in ``top`` and its subgraphs: graph inputs, outputs, value infos, initializers, nodes and the
    tensors they read and write ("" left out). What :class:`UniqueNames` must never hand out for that graph."""
    names: set[str] = set()
    for graph in iter_graphs(top):
        names.update(v.name for v in [*graph.input, *graph.output, *graph.value_info])
        names.update(t.name for t in graph.initializer)
        names.update(t.values.name for t in graph.sparse_initializer)
        for node in graph.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
    names.discard("")
    return names


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """The names ``node``'s subgraphs read from the graphs around them (a Loop body reading an outer tensor by name).

    What a body defines itself (its inputs, initializers, node outputs, nested bodies' too) is left out.
    """
    reads = subgraph_reads(node)
    for attr in node.attribute:
        bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for body in bodies:
            for sub in iter_graphs(body):
                reads -= {value.name for value in sub.input} | {init.name for init in sub.initializer}
                reads -= {name for inner in sub.node for name in inner.output}
    reads.discard("")
    return reads


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """The names the subgraphs of ``node`` (If branches, Loop/Scan bodies, nested) read: possibly outer tensors."""
    names: set[str] = set()
    for attr in node.attribute:
        bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for body in bodies:
            for sub in iter_graphs(body):
                for inner in sub.node:
                    names.update(inner.input)
    return names


# -- names -----------------------------------------------------------------------------------------------------------


class UniqueNames:
    """Unique names: ``stem`` if free, else ``stem_1``, ``stem_2`` …; never one in ``reserved`` or handed out before.

    ``reserved`` is shared (not copied) with :meth:`fork`, so several builders can plan against the same model.
    """

    def __init__(self, reserved: Iterable[str] = (), taken: Iterable[str] = ()) -> None:
        self.reserved = reserved if isinstance(reserved, set) else set(reserved)
        self.taken = set(taken)

    def fork(self) -> UniqueNames:
        """A copy that shares ``reserved`` and starts from the names handed out so far."""
        return UniqueNames(self.reserved, self.taken)

    def new(self, stem: str) -> str:
        name, k = stem, 0
        while name in self.reserved or name in self.taken:
            k += 1
            name = f"{stem}_{k}"
        self.taken.add(name)
        return name


# -- lookup and editing ----------------------------------------------------------------------------------------------


class GraphIndex:
    """Producer/consumer maps and constant lookup for one ``GraphProto`` (rebuild it after every change).

    ``shapes`` (from :func:`static_shapes`) is attached by the passes that need it; ``{}`` otherwise.
    """

    def __init__(self, graph: onnx.GraphProto, shapes: Shapes | None = None) -> None:
        self.graph = graph
        self.shapes: Shapes = shapes if shapes is not None else {}
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {out.name for out in graph.output}
        self.names = UniqueNames(graph_names(graph))  # graph inputs too: a fresh name never shadows one

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
        """A tensor/node name not used yet in the graph (:attr:`names`, a :class:`UniqueNames` over
        :func:`graph_names`)."""
        return self.names.new(base)

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        """Add ``value`` as a new initializer named after ``base``; return its (fresh) name."""
        name = self.fresh(base)
        self.graph.initializer.add().CopyFrom(numpy_helper.from_array(value, name))  # append() refuses 2 GB
        return name

    def shape_constant(self, base: str, dims: Sequence[int]) -> str:
        """An int64 initializer holding ``dims`` (a Reshape target); return its name."""
        return self.add_initializer(base, np.asarray(list(dims), dtype=np.int64))


def attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of attribute ``name`` of ``node`` (``default`` when absent)."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def text_attribute(node: onnx.NodeProto, name: str, default: str = "") -> str:
    """A string attribute of ``node`` as text (ONNX stores them as bytes; ``default`` when absent)."""
    value = attribute(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def transpose_perm(node: onnx.NodeProto) -> list[int] | None:
    """The ``perm`` of a Transpose node (None when the attribute is absent: reverse all axes)."""
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def rename_reads(graph: onnx.GraphProto, mapping: dict[str, str], *, subgraphs_only: bool = False) -> None:
    """Rename the tensors nodes read (``mapping`` old → new), in ``graph`` and in every subgraph inside it.

    Subgraph bodies read outer tensors by name (tf2onnx's Loop bodies do), so a renamed outer tensor must be renamed
    there too. With ``subgraphs_only`` the nodes of ``graph`` itself are left to the caller.
    """
    for sub in iter_graphs(graph):
        if subgraphs_only and sub is graph:
            continue
        for node in sub.node:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]


def _replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    rename_reads(graph, {old: new})
    for out in graph.output:
        if out.name == old:
            # keep the graph output's name: rename the producer's output instead (handled by bypass)
            raise ValueError("cannot rewire a graph output")


def bypass(graph: onnx.GraphProto, index: GraphIndex, node: onnx.NodeProto, source: str) -> bool:
    """Remove single-output ``node`` and make its readers read ``source`` instead (False when it cannot)."""
    out = node.output[0]
    if out in index.graph_outputs:
        producer = index.producer.get(source)
        if producer is None or source in index.graph_outputs or len(index.consumers.get(source, [])) != 1:
            return False
        # rename the producer's output to the graph output name
        for i, name in enumerate(producer.output):
            if name == source:
                producer.output[i] = out
        rename_reads(graph, {source: out}, subgraphs_only=True)
        graph.node.remove(node)
        return True
    _replace_uses(graph, out, source)
    graph.node.remove(node)
    return True


def insert_before(graph: onnx.GraphProto, anchor: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
    """Insert ``new_nodes`` (in order) just before ``anchor``."""
    position = list(graph.node).index(anchor)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(position + offset, new)


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder nodes topologically (stable: a graph already in order keeps its order).

    A node with subgraphs comes after the producers of the outer tensors its bodies read (tf2onnx's Loop bodies read
    them by name; ONNX requires them defined first). Names no node of ``graph`` produces are taken as available
    (graph inputs, initializers, or an enclosing graph's tensors).

    Raises:
        ValueError: the graph has a cycle.
    """
    produced = {name for node in graph.node for name in node.output}
    available: set[str] = set()
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            needs = [*node.input, *outer_reads(node)] if node.attribute else node.input
            if all(name in available or name not in produced for name in needs):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise ValueError("graph has a cycle")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def canonical_order(graph: onnx.GraphProto, base_name: Callable[[str], str] = lambda name: name) -> None:
    """Reorder nodes into a topological order that depends only on what the graph computes, not on its node order.

    tf2onnx emits the same graph in a different node order from one process to the next (its optimizers iterate over
    hash-ordered sets); names assigned in node order would differ too. Each node gets a structural key, a hash of its
    op, attributes and the keys of what it reads (producers' keys, initializers' values, graph input names), and
    among the nodes ready to run the smallest key comes first; ``base_name(node.name)`` (e.g. the name without
    process-global counters) breaks ties between nodes that compute the same thing.
    """
    producer = {name: node for node in graph.node for name in node.output}
    initializers = {init.name: init for init in graph.initializer}
    keys: dict[int, str] = {}

    def input_key(name: str) -> str:
        node = producer.get(name)
        if node is not None:
            return f"{key(node)}:{list(node.output).index(name)}"
        if name in initializers:
            init = initializers[name]
            return "init:" + tensor_digest(init)
        return "input:" + name

    def attribute_text(attr: onnx.AttributeProto) -> str:
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            return attr.name + "=" + "|".join(",".join(n.op_type for n in sub.node) for sub in bodies)
        return str(onnx.helper.get_attribute_value(attr))

    def key(node: onnx.NodeProto) -> str:
        found = keys.get(id(node))
        if found is None:
            parts = [node.domain, node.op_type, *sorted(map(attribute_text, node.attribute))]
            parts += [input_key(name) if name else "" for name in node.input]
            parts += sorted(input_key(name) for name in outer_reads(node) if name in producer)
            found = hashlib.sha1("\x00".join(parts).encode()).hexdigest()
            keys[id(node)] = found
        return found

    for node in graph.node:  # producers first (the graph is topologically sorted), so the recursion stays shallow
        key(node)
    needs = {
        id(node): {id(producer[name]) for name in [*node.input, *outer_reads(node)] if name in producer}
        for node in graph.node
    }
    users: dict[int, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for need in needs[id(node)]:
            users.setdefault(need, []).append(node)
    ready = [(keys[id(n)], base_name(n.name), i, n) for i, n in enumerate(graph.node) if not needs[id(n)]]
    heapq.heapify(ready)
    ordered: list[onnx.NodeProto] = []
    waiting = {id(node): len(needs[id(node)]) for node in graph.node}
    while ready:
        *_, node = heapq.heappop(ready)
        ordered.append(node)
        for user in users.get(id(node), []):
            waiting[id(user)] -= 1
            if not waiting[id(user)]:
                heapq.heappush(ready, (keys[id(user)], base_name(user.name), len(ordered), user))
    if len(ordered) != len(graph.node):
        raise ValueError("graph has a cycle")
    del graph.node[:]
    graph.node.extend(ordered)


# -- shapes ----------------------------------------------------------------------------------------------------------


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without initializer data (initializers become typed graph inputs): cheap to infer/check.

    Small integer initializers (shapes, axes: at most 64 int32/int64 values) keep their values, since shape inference
    needs them.
    """
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    graph = copy.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    known = {value.name for value in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in known:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and np.prod(init.dims) <= 64:
            graph.initializer.append(init)
    return copy


def static_shapes(model: onnx.ModelProto) -> Shapes:
    """Shapes of every tensor that shape inference can determine (None for an unknown dim).

    When inference fails, only the initializers' shapes are known.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception:
        return {init.name: tuple(init.dims) for init in model.graph.initializer}
    shapes: Shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes
