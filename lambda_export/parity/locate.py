"""Which Keras layer diverges first: every layer's output compared with its counterpart tensor in the ONNX graph.

:func:`locate_divergence` runs a per-layer Keras model and a copy of the ONNX graph that outputs every float
intermediate tensor, matches each layer to ONNX tensors (by name, then by shape between its neighbours' matches, in
either layout), and names the first layer beyond tolerance: by the relative rule when given the float64 clone of the
model (each layer's export error against its float64 output within a factor of TensorFlow float32's own error there),
else by the absolute one. Helpers, in the order they run:

* :func:`_keras_layer_outputs`: each top-level layer's single output tensor, and which layers read it;
* :func:`_float64_layer_outputs`: the same layers' outputs in the float64 clone;
* :func:`_with_intermediate_outputs`, :func:`_run_onnx`: the ONNX side's values;
* :class:`_Owners`, :func:`_node_owners`: the layer each ONNX node belongs to (and layers fused into another's node);
* :class:`_Matching`: the closest candidate tensor of a layer (:func:`_layouts`: NHWC↔NCHW);
* :func:`_match_layers`, :func:`_drop_folded`, :func:`_first_divergent`: the per-layer verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lambda_export import ort, upstream
from lambda_export.errors import first_line
from lambda_export.loading import LoadedModel
from lambda_export.ort import CPU
from lambda_export.parity.metrics import (
    DEFAULT_ATOL,
    DEFAULT_FACTOR,
    DEFAULT_FLOOR,
    DEFAULT_RTOL,
    Metrics,
    compare,
    compare_to_truth,
)
from lambda_export.parity.reference import run_float64
from lambda_export.parity.results import LayerDivergence
from lambda_export.parity.running import keras_feed, model_bytes, run_keras

__all__ = ["LOCATE_MAX_BATCH", "LOCATE_MODES", "locate_divergence"]

LOCATE_MODES = ("on_failure", "always", "never")
"""When :func:`lambda_export.parity.verify` locates the first diverging layer."""
LOCATE_MAX_BATCH = 4
"""At most this many samples of the chosen input set are used to locate (every intermediate tensor is kept)."""

_DATA_MOVEMENT = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"})


class _Owners:
    """Maps ONNX names ("model_1/stage1_block0_lambda_1/Reshape_9") to the top-level Keras layer they belong to."""

    def __init__(self, layer_names: Iterable[str], model_name: str, node_names: Iterable[str]) -> None:
        self.names = set(layer_names)
        first = {name.split("/", 1)[0] for name in node_names if "/" in name}
        # TF uniquifies re-entered name scopes ("stem_bn" → "stem_bn_1"): prefer that reading when the model's own
        # scope shows it
        self.suffixed = any(re.fullmatch(re.escape(model_name) + r"_\d+", segment) for segment in first)
        self._cache: dict[str, str | None] = {}

    def segment(self, segment: str) -> str | None:
        exact = segment if segment in self.names else None
        match = re.fullmatch(r"(.+)_\d+", segment)
        stripped = match.group(1) if match and match.group(1) in self.names else None
        if exact and stripped:
            return stripped if self.suffixed else exact
        return exact or stripped

    def owner(self, name: str) -> str | None:
        if name not in self._cache:
            found = None
            for segment in name.split("/"):
                found = self.segment(segment)
                if found:
                    break
            self._cache[name] = found
        return self._cache[name]


def _layouts(shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...] | None]]:
    options: list[tuple[str, tuple[int, ...] | None]] = [("same", None)]
    n = len(shape)
    if n >= 3:
        options.append(("channels_first", (0, n - 1, *range(1, n - 1))))  # NHWC Keras tensor vs NCHW ONNX tensor
        options.append(("channels_last", (0, *range(2, n), 1)))  # NCHW Keras tensor vs NHWC ONNX tensor
    return options


# -- the Keras side ------------------------------------------------------------------------------------------------


def _keras_layer_outputs(
    model: Any, layers: list[Any], unmatched: dict[str, str]
) -> tuple[list[tuple[Any, Any]], dict[str, set[str]]]:
    """(layer, its output tensor in ``model``'s graph) for each top-level layer with one call and one output, and
    layer name → names of the layers that read its outputs."""
    nodes_by_depth = upstream.nodes_by_depth(model)  # Keras internals live in the bridge
    if nodes_by_depth is None:  # not a functional graph: trust layer.output, chain the layers
        return _chained_layer_outputs(layers, unmatched)
    return _functional_layer_outputs(nodes_by_depth, layers, unmatched)


def _chained_layer_outputs(
    layers: list[Any], unmatched: dict[str, str]
) -> tuple[list[tuple[Any, Any]], dict[str, set[str]]]:
    """:func:`_keras_layer_outputs` without a functional graph: ``layer.output``, each layer read by the next."""
    import keras

    successors: dict[str, set[str]] = {}
    probes = []
    for previous, layer in zip([None, *layers], layers, strict=False):
        if previous is not None:
            successors.setdefault(previous.name, set()).add(layer.name)
        try:
            output = layer.output
        except Exception:
            unmatched[layer.name] = "used more than once (shared layer): no single output to compare"
            continue
        if isinstance(output, keras.KerasTensor):
            probes.append((layer, output))
        else:
            unmatched[layer.name] = "has several outputs"
    return probes, successors


def _functional_layer_outputs(
    nodes_by_depth: dict[Any, Any], layers: list[Any], unmatched: dict[str, str]
) -> tuple[list[tuple[Any, Any]], dict[str, set[str]]]:
    """:func:`_keras_layer_outputs` of a functional model, from its graph's nodes (one call per layer)."""
    successors: dict[str, set[str]] = {}
    probes = []
    nodes = [node for depth in nodes_by_depth.values() for node in depth if node.operation is not None]
    calls: dict[int, list[Any]] = {}
    producer: dict[int, str] = {}
    for node in nodes:
        if node.is_input:
            continue
        calls.setdefault(id(node.operation), []).append(node)
        for tensor in node.outputs:
            producer[id(tensor)] = node.operation.name
    for node in nodes:
        for tensor in node.input_tensors:
            if id(tensor) in producer:
                successors.setdefault(producer[id(tensor)], set()).add(node.operation.name)
    for layer in layers:
        found = calls.get(id(layer), [])
        if len(found) != 1:
            unmatched[layer.name] = (
                "used more than once (shared layer): no single output to compare" if found else "not in the graph"
            )
        elif len(found[0].outputs) != 1:
            unmatched[layer.name] = "has several outputs"
        else:
            probes.append((layer, found[0].outputs[0]))
    return probes, successors


def _float64_layer_outputs(
    loaded: LoadedModel, truth_model: Any, probes: list[tuple[Any, Any]], feed: dict[str, np.ndarray]
) -> list[np.ndarray | None]:
    """The float64 clone's output of each probed layer (same names) on ``feed``; None where a layer has none.

    Raises:
        Exception: the clone's per-layer model cannot be built or run (the caller notes it and judges absolutely).
    """
    import keras

    layers = [layer for layer in truth_model.layers if not isinstance(layer, keras.layers.InputLayer)]
    found, _ = _keras_layer_outputs(truth_model, layers, {})
    by_name = {layer.name: output for layer, output in found}
    wanted = [by_name.get(layer.name) for layer, _ in probes]
    tensors = [tensor for tensor in wanted if tensor is not None]
    if not tensors:
        return [None] * len(probes)
    probe = keras.Model(inputs=truth_model.input, outputs=tensors)
    values = iter(run_float64(probe, loaded, feed))
    return [None if tensor is None else next(values) for tensor in wanted]


# -- the ONNX side -------------------------------------------------------------------------------------------------


def _with_intermediate_outputs(onnx_model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``onnx_model`` that also outputs every float intermediate tensor (float16/32/64)."""
    from lambda_export.fp16 import tensor_elem_types

    graph = onnx_model.graph
    types = tensor_elem_types(onnx_model)
    existing = {value.name for value in graph.output}
    wanted = []
    for node in graph.node:
        for name in node.output:
            if (
                name
                and name not in existing
                and types.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
            ):
                wanted.append(name)
    extended = onnx.ModelProto()
    extended.CopyFrom(onnx_model)
    for name in wanted:
        extended.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return extended


def _run_onnx(model: onnx.ModelProto, feed: dict[str, np.ndarray], provider: str, tf32: bool) -> dict[str, Any]:
    """Every output of ``model`` on ``feed``, by name."""
    session = ort.session(model_bytes(model), provider, tf32=tf32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _node_owners(
    graph: onnx.GraphProto, owners: _Owners, order: dict[str, int]
) -> tuple[list[str | None], dict[str, str]]:
    """The layer each node belongs to (None: unnamed), and layer → the later layer whose node computes it too.

    A node belongs to the layers named in its name, its outputs and the weights/constants it reads; a data-movement
    node also to the layer that produced its input. Of several, the last in topological order owns it and the others
    are fused into that one.
    """
    initializers = {init.name for init in graph.initializer}
    constants = {node.output[0] for node in graph.node if node.op_type == "Constant" and node.output}
    producer: dict[str, int] = {}
    node_owner: list[str | None] = []
    fused_into: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        found = set()
        for name in [node.name, *node.output, *(i for i in node.input if i in initializers or i in constants)]:
            owner = owners.owner(name) if name else None
            if owner:
                found.add(owner)
        if node.op_type in _DATA_MOVEMENT and node.input and node.input[0] in producer:
            inherited = node_owner[producer[node.input[0]]]
            if inherited:
                found.add(inherited)
        owner = max(found, key=order.__getitem__) if found else None
        node_owner.append(owner)
        for other in found - {owner}:
            if owner is not None:
                fused_into.setdefault(other, owner)
        for name in node.output:
            producer[name] = index
    return node_owner, fused_into


# -- matching ------------------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    tensor: str
    node_index: int
    matched_by: str


@dataclass
class _Matching:
    """The ONNX side of the matching: the graph, its intermediate values and the layer each node belongs to."""

    graph: onnx.GraphProto
    values: dict[str, Any]  # ONNX tensor name → its value
    order: dict[str, int]  # layer name → topological index
    node_owner: list[str | None]  # per node: the layer it belongs to (None: unnamed)
    fused_into: dict[str, str]  # layer → the later layer whose node computes it too
    atol: float
    rtol: float
    factor: float = DEFAULT_FACTOR
    floor: float = DEFAULT_FLOOR

    def by_owner(self) -> dict[str, list[_Candidate]]:
        """Layer → the output tensors of its nodes (matched by name), in graph order."""
        by_owner: dict[str, list[_Candidate]] = {}
        for index, node in enumerate(self.graph.node):
            if self.node_owner[index]:
                for name in node.output:
                    if name in self.values:
                        by_owner.setdefault(self.node_owner[index], []).append(_Candidate(name, index, "name"))
        return by_owner

    def window(self, layer: str, last_index: int) -> list[_Candidate]:
        """Output tensors of unnamed nodes after the previous match and before the next layer's first node."""
        later = [
            i
            for i, owner in enumerate(self.node_owner)
            if i > last_index and owner is not None and self.order[owner] > self.order[layer]
        ]
        upper = min(later) if later else len(self.graph.node)
        return [
            _Candidate(name, i, "shape")
            for i in range(last_index + 1, upper)
            if self.node_owner[i] is None
            for name in self.graph.node[i].output
            if name in self.values
        ]

    def best(self, reference: np.ndarray, candidates: list[_Candidate]) -> tuple[_Candidate, str, Metrics] | None:
        """The candidate and layout closest to ``reference`` (ties: the last in graph order), or None."""
        best = None
        for candidate in candidates:
            value = self.values[candidate.tensor]
            for layout, perm in _layouts(reference.shape):
                expected = reference if perm is None else np.transpose(reference, perm)
                if tuple(expected.shape) != tuple(value.shape):
                    continue
                metrics = compare(expected, value, self.atol, self.rtol)
                key = (metrics.problem is not None, metrics.min_passing_atol, metrics.max_abs, -candidate.node_index)
                if best is None or key < best[0]:
                    best = (key, candidate, layout, metrics)
        return None if best is None else best[1:]

    def judge(
        self, reference: np.ndarray, truth: np.ndarray | None, candidate: _Candidate, layout: str, closest: Metrics
    ) -> Metrics:
        """The verdict on a layer's match: the relative rule against the float64 output, else ``closest`` (absolute)."""
        if truth is None:
            return closest
        perm = dict(_layouts(reference.shape))[layout]
        value = self.values[candidate.tensor]
        expected = reference if perm is None else np.transpose(reference, perm)
        exact = truth if perm is None else np.transpose(truth, perm)
        try:
            return compare_to_truth(exact, expected, value, self.atol, self.rtol, factor=self.factor, floor=self.floor)
        except ValueError:
            return closest


def _match_layers(
    probes: list[tuple[Any, Any]],
    keras_values: list[np.ndarray],
    truth_values: list[np.ndarray | None],
    matching: _Matching,
    unmatched: dict[str, str],
) -> list[LayerDivergence]:
    """Each probed layer against its best ONNX tensor, in topological order; layers without one go to ``unmatched``.

    The closest tensor is chosen against the float32 Keras output; the verdict is the relative rule's where the
    layer has a float64 output (``truth_values``), the absolute rule's otherwise.
    """
    by_owner = matching.by_owner()
    order, fused_into = matching.order, matching.fused_into
    results: list[LayerDivergence] = []
    last_index = -1
    for (layer, _), reference, truth in zip(probes, keras_values, truth_values, strict=True):
        match = matching.best(reference, by_owner.get(layer.name, []))
        if match is None and layer.name not in fused_into:
            match = matching.best(reference, matching.window(layer.name, last_index))
        if match is None:
            if layer.name in fused_into:
                unmatched[layer.name] = f"computed inside the ONNX node of {fused_into[layer.name]} (fused)"
            else:
                unmatched[layer.name] = "no ONNX tensor named after it with a matching shape"
            continue
        candidate, layout, metrics = match
        metrics = matching.judge(reference, truth, candidate, layout, metrics)
        last_index = max(last_index, candidate.node_index)
        fused = [
            name
            for name, into in fused_into.items()
            if into == layer.name and name in unmatched and order[name] < order[layer.name]
        ]
        fused.sort(key=order.__getitem__)
        results.append(
            LayerDivergence(
                layer=layer.name,
                onnx_tensor=candidate.tensor,
                max_abs=metrics.max_abs,
                passed=metrics.passed,
                class_name=type(layer).__name__,
                fused=fused,
                matched_by=candidate.matched_by,
                layout=layout,
                max_rel=metrics.max_rel,
                min_passing_atol=metrics.min_passing_atol,
                problem=metrics.problem,
                rule=metrics.rule,
                truth=metrics.truth,
            )
        )
    return results


def _drop_folded(
    results: list[LayerDivergence], successors: dict[str, set[str]], unmatched: dict[str, str]
) -> list[LayerDivergence]:
    """``results`` without the failing layers whose readers all agree again (moved to ``unmatched``)."""
    # A failing layer whose readers all agree again is not a divergence: its "match" is most likely a tensor the
    # rewrites changed (a MatMul whose weights carry the next batch norm's scale), not the layer's output.
    by_layer = {item.layer: item for item in results}

    def readers_agree(name: str) -> bool:
        seen: set[str] = set()
        stack = list(successors.get(name, ()))
        verdicts = []
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in by_layer:
                verdicts.append(by_layer[current].passed)
            else:
                stack.extend(successors.get(current, ()))
        return bool(verdicts) and all(verdicts)

    kept = []
    for item in results:
        if not item.passed and readers_agree(item.layer):
            unmatched[item.layer] = (
                f"its closest ONNX tensor {item.onnx_tensor} differs (max abs {item.max_abs:.3g}) but every layer "
                "reading it agrees: the graph computes it in a folded form"
            )
            continue
        kept.append(item)
    return kept


def _first_divergent(results: list[LayerDivergence], order: dict[str, int], notes: list[str]) -> str | None:
    """The first failing layer (the earliest of its fused group); a note when it shares its ONNX node."""
    for item in results:
        if item.passed:
            continue
        group = [*item.fused, item.layer]
        if item.fused:
            notes.append(
                f"{' and '.join(group)} are one ONNX node ({item.onnx_tensor}): the divergence is in one of them"
            )
        return min(group, key=order.__getitem__)
    return None


def locate_divergence(
    loaded: LoadedModel,
    onnx_model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    provider: str = CPU,
    tf32: bool = False,
    truth_model: Any = None,
    factor: float = DEFAULT_FACTOR,
    floor: float = DEFAULT_FLOOR,
) -> tuple[list[LayerDivergence], str | None, dict[str, str], list[str]]:
    """Compare every Keras layer's output with its ONNX counterpart and name the first layer that diverges.

    A layer diverges by the rule of the check: with ``truth_model`` (the float64 clone of the model, see
    :func:`lambda_export.parity.reference.float64_model`) when its ONNX tensor is further from the float64 layer
    output than ``factor`` times TensorFlow float32's own error there, plus ``floor`` float32 epsilons of its scale
    (:func:`lambda_export.parity.metrics.compare_to_truth`), so rounding that grows through a deep network is not
    blamed on a layer; without it when ``|onnx − tf| > atol + rtol·|tf|`` somewhere.

    Keras side: a functional model that outputs each top-level layer's output (layers with one tensor output, used
    once; a nested model counts as one layer). ONNX side: a copy of the graph with every float intermediate tensor as
    a graph output, run on ``provider``. Matching:

    * an ONNX node belongs to the layer named by the first segment of its name, of its weights' names or of its
      output names that is a layer name, allowing TF's ``_1`` scope suffix (``model_1/stage1_block0_lambda_1/Reshape``
      → ``stage1_block0_lambda``); a Transpose/Reshape/... also belongs to the layer that produced its input; a node
      that belongs to several layers (a convolution with a batch normalisation folded into it) counts for the last
      one in topological order, and the earlier ones are reported as ``fused`` into it;
    * a layer's candidates are its nodes' output tensors whose shape is the Keras output shape, or its NHWC↔NCHW
      transpose (tf2onnx computes convolutions channels first); a layer without any falls back to unnamed nodes
      between the previous match and the next layer's nodes with a matching shape;
    * among candidates (and layouts, e.g. a square 16×16×16 tensor) the closest to the Keras output is taken, ties
      going to the last one in graph order.

    A layer whose match fails the rule diverges, unless every matched layer reading its output (directly or
    through unmatched layers) agrees again: then the match is taken for a tensor the rewrites changed (a MatMul whose
    weights carry the next batch norm's scale) and the layer is listed as unmatched. The first diverging layer in
    topological order is returned (the earliest of its fused layers, when it has some).

    Returns:
        (per-layer divergences in topological order, first divergent layer or None, unmatched layer → reason, notes)
    """
    import keras

    notes: list[str] = []
    unmatched: dict[str, str] = {}
    model = loaded.model
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    order = {layer.name: i for i, layer in enumerate(layers)}
    probes, successors = _keras_layer_outputs(model, layers, unmatched)
    if not probes:
        return [], None, unmatched, ["no Keras layer with a single output to compare"]
    try:
        probe = keras.Model(inputs=model.input, outputs=[output for _, output in probes])
        keras_values = run_keras(probe, keras_feed(loaded, feed))
    except Exception as exc:
        return [], None, unmatched, [f"cannot build the per-layer Keras model: {first_line(exc)}"]

    truth_values: list[np.ndarray | None] = [None] * len(probes)
    if truth_model is not None:
        try:
            truth_values = _float64_layer_outputs(loaded, truth_model, probes, feed)
        except Exception as exc:
            notes.append(f"no per-layer float64 reference ({first_line(exc)}): layers judged by the absolute rule")

    extended = _with_intermediate_outputs(onnx_model)
    try:
        values = _run_onnx(extended, feed, provider, tf32)
    except Exception as exc:
        return [], None, unmatched, [f"cannot run the ONNX graph with intermediate outputs: {first_line(exc)}"]

    graph = onnx_model.graph
    owners = _Owners(order, getattr(model, "name", ""), [node.name for node in graph.node])
    node_owner, fused_into = _node_owners(graph, owners, order)
    matching = _Matching(graph, values, order, node_owner, fused_into, atol, rtol, factor, floor)
    results = _match_layers(probes, keras_values, truth_values, matching, unmatched)
    results = _drop_folded(results, successors, unmatched)
    first = _first_divergent(results, order, notes)
    return results, first, unmatched, notes
