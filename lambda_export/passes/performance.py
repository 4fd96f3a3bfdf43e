"""Exact ONNX rewrites that make exported lambda layers run faster on ONNX Runtime's CPU provider.

Every pass moves data or regroups the same products; nothing is approximated. All passes but
``conv_as_dense_matmul`` compute exactly what the graph before them computes (ORT may run a rewritten consumer with
another GEMM kernel, so the last bits can differ); that one sums the same products (plus
products with exact zeros) in another order, ~1e-7 relative (tests/passes/test_performance.py). The passes keep the ``portable`` target's
rules (static shapes apart from the batch, constant MatMul operands 2D and second, equal-rank non-broadcast MatMuls);
:func:`optimize_for_ort` undoes any pass that would add a node the target refuses.

Found with ONNX Runtime's profiler on the lambda layers (``benchmarks/RESULTS.md`` has the figures):

* ``conv_as_dense_matmul`` – the local lambda convolution has u (1–4) input channels and an r×r kernel; ORT's Conv
  runs such convolutions at a fraction of GEMM speed (LambdaResNet-26 at 128², batch 1: the 23×23 convolution on the
  16×16 map took 35 % of the network's time). When the map is small next to the kernel (n ≤ 2·r², every output
  sees most of the map) the convolution is written as one GEMM with its dense (n·u, n·k) matrix; with the layer's
  (b, v, k, n) → (b, n, k, v) transpose folded into the matrix layout only a single-axis transpose is left.
* ``conv_along_width`` – a 1D layer's convolution on the (T, 1) grid: ORT's NCHWc kernel is vectorised along the
  width, so each of the T rows was a call for one output pixel; the same Conv over the (1, T) grid is one long row.
* ``conv_output_channels_last`` – where the local lambda convolution stays a Conv, its (b, v, k, n) → (b, n, k, v)
  transpose (two axes move: two passes over the layer's largest tensor) starts with the NCHW → NHWC move of the Conv
  output, which ORT folds into its NCHWc convolution for free; one single-axis move is left.
* ``unmerge_split_matmul`` – the clean-up pass ``merge_sibling_matmuls`` turns the query/key/value projections into
  one GEMM + ``Split``; ORT's Split is a single-threaded strided copy that costs more than the GEMM it saves once the
  product is large (56×56, u=4, batch 8: Split 16 ms for a 9.7 ms GEMM). Large products get their three GEMMs back.
* ``flatten_transposed_matmul`` – ``Transpose(swap last two axes) → MatMul(·, W const 2D)``: ORT fuses the Transpose
  into ``FusedMatMul(transA=1)``, which then runs one GEMM *per batch item* and streams the whole constant ``W``
  through the caches once per item. For the global position lambda (``V^T E^T`` with E of n·m·k·u floats, 157 MB at
  28×28, u=4) that was 92 % of the layer's time. A Reshape to 2D between the Transpose and the MatMul (and one back
  after it) blocks the fusion, and the MatMul becomes one GEMM with the batch folded into its rows: W is read once.
* ``split_slow_transposes`` – ORT's CPU ``Transpose`` has fast kernels (MLAS matrix transposes, block copies) only
  for permutations that move a single axis; any other permutation, such as the (b, v, k, n) → (b, n, k, v) after the
  local lambda convolution, goes through a generic element-by-element loop (37 % of the local layer's time at
  56×56, u=4, batch 8). The pass writes such a Transpose as the cheapest chain of single-axis moves, each a 3D/4D
  Transpose between Reshapes (so that ORT's transpose optimizer does not merge them back into one slow Transpose).
* ``transpose_as_identity_matmul`` – moving a short axis (the 16 value channels) to the end, such as the global
  λp's (b, v, n·k) → (b, n·k, v), is ORT's slowest single-axis Transpose (3–4.5× slower than the same data through
  a GEMM with a 16 × 16 identity, into which ORT fuses the Transpose as a transposed operand). Exact for finite
  values.
* ``reshape_before_output_add`` – the layer's last ``Reshape`` copies the whole output (ORT cannot alias a graph
  output); reshaping the two Add operands instead is free.

Entry point: :func:`optimize_for_ort` (runs every pass, returns the names of those that changed the graph). Run it
last, after the clean-up passes (``merge_sibling_matmuls`` / ``merge_transposes`` would undo some of this work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lambda_export.graph import GraphIndex, attribute, insert_before, transpose_perm
from lambda_export.passes.base import NoMatch, RewritePass, Rule, SweepIndex

__all__ = [
    "NCHWC_BLOCK",
    "conv_along_width",
    "conv_as_dense_matmul",
    "conv_output_channels_last",
    "dense_conv_matrix",
    "flatten_transposed_matmul",
    "reshape_before_output_add",
    "split_slow_transposes",
    "transpose_as_identity_matmul",
    "unmerge_split_matmul",
]


# -- passes --------------------------------------------------------------------------------------------------------


@dataclass
class _FlattenMatMul:
    node: onnx.NodeProto
    width: int  # the last dim of the transposed input (the GEMM's K)
    inner: list[int]  # the input's dims after the batch
    out_width: int  # the weight's N


def _match_flatten(g: SweepIndex, node: onnx.NodeProto) -> _FlattenMatMul | NoMatch | None:
    if node.op_type != "MatMul" or g.const(node.input[0]) is not None:
        return None
    source = g.producer.get(node.input[0])
    if source is None or source.op_type != "Transpose":
        return None
    weight = g.const(node.input[1])
    if weight is None:
        return None  # a product of two computed tensors
    if weight.ndim != 2:
        return NoMatch("weight not 2D")
    perm = transpose_perm(source)
    shape = g.shapes.get(node.input[0])
    if perm is None or shape is None or len(shape) < 3 or len(perm) != len(shape):
        return NoMatch("input rank below 3 or unknown")
    if perm[-2:] != [len(perm) - 1, len(perm) - 2]:
        return NoMatch("Transpose does not swap the last two axes")  # ORT fuses only that one
    inner = shape[1:]
    if any(dim is None for dim in inner) or shape[-1] != weight.shape[0]:
        return NoMatch("dims after the batch not static")
    return _FlattenMatMul(node, int(shape[-1]), [int(d) for d in inner], int(weight.shape[1]))


def _flatten(g: SweepIndex, found: _FlattenMatMul) -> None:
    node = found.node
    base = node.name or node.output[0]
    flat_in = g.fresh(base + "/rows")
    flat_out = g.fresh(base + "/rows_out")
    first = helper.make_node(
        "Reshape",
        [node.input[0], g.shape_constant(base + "/rows_shape", [-1, found.width])],
        [flat_in],
        name=g.fresh(base + "/to_rows"),
    )
    back_shape = g.shape_constant(base + "/back_shape", [-1, *found.inner[:-1], found.out_width])
    output = node.output[0]
    node.input[0] = flat_in
    node.output[0] = flat_out
    last = helper.make_node("Reshape", [flat_out, back_shape], [output], name=g.fresh(base + "/from_rows"))
    insert_before(g.graph, node, [first])
    position = list(g.graph.node).index(node)
    g.graph.node.insert(position + 1, last)


flatten_transposed_matmul = RewritePass(
    "flatten_transposed_matmul",
    [Rule(_match_flatten, _flatten)],
    """``MatMul(Transpose(X, swap last two), W)``, W constant 2D → ``Reshape(MatMul(Reshape(Transpose(X), 2D), W))``.

    The Reshapes only regroup the batch dims into GEMM rows; the products and their K-order are unchanged.
    """,
    shapes=True,
)


def _merge_axes(shape: list[int | None], perm: list[int]) -> tuple[list[int | None], list[int]]:
    """Merge input axes that stay adjacent and in order under ``perm``; returns the reduced (shape, perm)."""
    groups: list[list[int]] = []
    for axis in perm:
        if groups and groups[-1][-1] + 1 == axis:
            groups[-1].append(axis)
        else:
            groups.append([axis])
    order = sorted(range(len(groups)), key=lambda i: groups[i][0])
    new_shape: list[int | None] = []
    for i in order:
        dims = [shape[a] for a in groups[i]]
        new_shape.append(None if any(d is None for d in dims) else int(np.prod(dims)))
    position = {group_index: new_axis for new_axis, group_index in enumerate(order)}
    return new_shape, [position[i] for i in range(len(groups))]


# Cost model of ORT's CPU Transpose, in units of "one element moved by a fast kernel" (measured on AVX-512 EPYC,
# ORT 1.32): a single-axis move of a (pre, A, B) view runs one MLAS matrix transpose per leading index (≈ 450 element
# units of call overhead each); a (pre, A, B, post) move copies blocks of ``post`` elements (≈ 6 units per block); any
# other permutation takes the generic element-by-element loop (≈ 4.7 units per element); each node ≈ 2000 units.
_CALL_COST = 450.0
_BLOCK_COST = 6.0
_GENERIC_COST = 4.7
_NODE_COST = 2000.0


def _move_view(shape: Sequence[int], step: list[int]) -> tuple[int, int, int, int]:
    """(pre, A, B, post) of a single-axis move ``step`` on ``shape``: blocks A and B swap places."""
    moved = [i for i in range(len(step)) if step[i] != i]
    lo, hi = moved[0], moved[-1]
    if step[lo] == hi:  # axis hi moves outwards to lo: blocks [lo, hi) and [hi]
        block_a, block_b = list(range(lo, hi)), [hi]
    else:  # axis lo moves inwards to hi: blocks [lo] and (lo, hi]
        block_a, block_b = [lo], list(range(lo + 1, hi + 1))
    pre = int(np.prod(shape[:lo])) if lo else 1
    post = int(np.prod(shape[hi + 1 :])) if hi + 1 < len(shape) else 1
    size_a = int(np.prod([shape[i] for i in block_a]))
    size_b = int(np.prod([shape[i] for i in block_b]))
    return pre, size_a, size_b, post


def _move_cost(shape: Sequence[int], step: list[int]) -> float:
    pre, size_a, size_b, post = _move_view(shape, step)
    elements = pre * size_a * size_b * post
    overhead = _CALL_COST * pre if post == 1 else _BLOCK_COST * pre * size_a * size_b
    return elements + overhead + _NODE_COST


def _single_moves_from(rank: int) -> list[list[int]]:
    moves = []
    for source in range(rank):
        for target in range(rank):
            if source == target or target == source + 1:  # moving one place right == moving the neighbour left
                continue
            step = list(range(rank))
            step.pop(source)
            step.insert(target, source)
            moves.append(step)
    return moves


def _cheapest_moves(shape: Sequence[int], perm: Sequence[int]) -> tuple[float, list[list[int]]]:
    """Cheapest chain of single-axis moves realising ``perm`` on ``shape`` (Dijkstra over arrangements)."""
    import heapq

    rank = len(perm)
    goal = tuple(perm)
    start = tuple(range(rank))
    moves = _single_moves_from(rank)
    best: dict[tuple[int, ...], float] = {start: 0.0}
    queue: list[tuple[float, tuple[int, ...], list[list[int]]]] = [(0.0, start, [])]
    while queue:
        cost, state, path = heapq.heappop(queue)
        if state == goal:
            return cost, path
        if cost > best.get(state, float("inf")) or len(path) >= rank:
            continue
        current_shape = [shape[a] for a in state]
        for step in moves:
            new_state = tuple(state[i] for i in step)
            new_cost = cost + _move_cost(current_shape, step)
            if new_cost < best.get(new_state, float("inf")):
                best[new_state] = new_cost
                heapq.heappush(queue, (new_cost, new_state, [*path, step]))
    return float("inf"), []


def _transpose_cost(shape: Sequence[int], perm: Sequence[int]) -> float:
    """Estimated cost of ``Transpose(perm)`` on ``shape`` as ORT would run it (0 for an identity)."""
    merged_shape, merged_perm = _merge_axes(list(shape), list(perm))
    if merged_perm == list(range(len(merged_perm))):
        return 0.0
    if _is_single_move(merged_perm):
        return _move_cost(merged_shape, merged_perm)
    return _GENERIC_COST * float(np.prod(merged_shape)) + _NODE_COST


def _is_single_move(perm: Sequence[int]) -> bool:
    """Identity, or one axis taken out and put back elsewhere (what ORT's fast Transpose kernels handle)."""
    rank = len(perm)
    if list(perm) == list(range(rank)):
        return True
    return list(perm) in _single_moves_from(rank)


@dataclass
class _LargeTranspose:
    perm: list[int]
    shape: list[int | None]
    merged_shape: list[int | None]
    merged_perm: list[int]


def _large_transpose(g: GraphIndex, node: onnx.NodeProto, min_elements: int) -> _LargeTranspose | NoMatch:
    """The view of a rank ≥ 3 Transpose whose dims after the batch are static and hold at least ``min_elements``
    elements per batch item (and its axes merged where they stay together); why not, for any other Transpose."""
    perm = transpose_perm(node)
    shape = g.shapes.get(node.input[0])
    if perm is None or shape is None or len(shape) != len(perm) or len(perm) < 3:
        return NoMatch("rank below 3 or shape unknown")
    if any(d is None for d in shape[1:]):
        return NoMatch("dims after the batch not static")
    if int(np.prod(shape[1:])) < min_elements:
        return NoMatch("smaller than min_elements")
    merged_shape, merged_perm = _merge_axes(list(shape), perm)
    return _LargeTranspose(perm, list(shape), merged_shape, merged_perm)


@dataclass
class _SlowTranspose:
    node: onnx.NodeProto
    merged_shape: list[int | None]
    moves: list[list[int]]
    final: list[int]  # the output shape, -1 for the batch


def _match_slow_transpose(
    g: SweepIndex, node: onnx.NodeProto, min_elements: int = 1 << 15
) -> _SlowTranspose | NoMatch | None:
    if node.op_type != "Transpose":
        return None
    view = _large_transpose(g, node, min_elements)
    if isinstance(view, NoMatch):
        return view
    merged_shape, merged_perm = view.merged_shape, view.merged_perm
    if _is_single_move(merged_perm):
        return NoMatch("already a single-axis move")
    if merged_perm[0] != 0:
        return NoMatch("moves the batch axis")
    sized = [1 if d is None else int(d) for d in merged_shape]  # cost per batch item
    chain_cost, moves = _cheapest_moves(sized, merged_perm)
    if not moves or chain_cost >= _transpose_cost(sized, merged_perm):
        return NoMatch("no chain of moves cheaper than the generic kernel")
    if merged_shape[0] is None and any(step[0] != 0 for step in moves):
        return NoMatch("the chain would move the dynamic batch axis")
    final = [-1 if d is None else int(d) for d in (view.shape[a] for a in view.perm)]
    if sum(1 for d in final if d == -1) > 1:
        return NoMatch("more than one dynamic dim")
    return _SlowTranspose(node, merged_shape, moves, final)


def _split_transpose(g: SweepIndex, found: _SlowTranspose) -> None:
    node = found.node
    base = node.name or node.output[0]
    new_nodes: list[onnx.NodeProto] = []
    current_name = node.input[0]
    current_shape = list(found.merged_shape)
    for index, step in enumerate(found.moves):
        pre, size_a, size_b, post = _move_view([1 if d is None else d for d in current_shape], step)
        lo = next(i for i in range(len(step)) if step[i] != i)
        pre_size = -1 if any(d is None for d in current_shape[:lo]) else pre
        view = [pre_size, size_a, size_b] + ([post] if post != 1 else [])
        swap = [0, 2, 1, 3] if post != 1 else [0, 2, 1]
        reshaped = g.fresh(f"{base}/move{index}_in")
        new_nodes.append(
            helper.make_node(
                "Reshape",
                [current_name, g.shape_constant(f"{base}/move{index}_shape", view)],
                [reshaped],
                name=g.fresh(f"{base}/move{index}_reshape"),
            )
        )
        moved_name = g.fresh(f"{base}/move{index}")
        new_nodes.append(
            helper.make_node("Transpose", [reshaped], [moved_name], name=g.fresh(f"{base}/move{index}"), perm=swap)
        )
        current_shape = [current_shape[i] for i in step]
        current_name = moved_name
    new_nodes.append(
        helper.make_node(
            "Reshape",
            [current_name, g.shape_constant(f"{base}/out_shape", found.final)],
            [node.output[0]],
            name=g.fresh(f"{base}/out"),
        )
    )
    insert_before(g.graph, node, new_nodes)
    g.graph.node.remove(node)


split_slow_transposes = RewritePass(
    "split_slow_transposes",
    [Rule(_match_slow_transpose, _split_transpose)],
    """A Transpose that is not a single-axis move → Reshape / single-axis Transpose chain (same data movement).

    The chain is the cheapest by the cost model above, used only when cheaper than the generic kernel; each move is
    a 3D (pre, A, B) → (pre, B, A) or 4D (pre, A, B, post) → (pre, B, A, post) Transpose between Reshapes, so that
    ORT's transpose optimizer cannot merge the chain back into one slow Transpose. Only tensors with static dims after
    the batch (which must stay the leading axis) and at least ``min_elements`` elements per batch item.
    """,
    shapes=True,
)


@dataclass
class _MergedSplit:
    split: onnx.NodeProto
    producer: onnx.NodeProto
    parts: list[np.ndarray]  # the weight's column blocks, one per output


def _match_merged_split(
    g: SweepIndex, node: onnx.NodeProto, min_elements: int = 1 << 16
) -> _MergedSplit | NoMatch | None:
    if node.op_type != "Split" or g.const(node.input[0]) is not None:
        return None
    producer = g.producer.get(node.input[0])
    if producer is None or producer.op_type != "MatMul":
        return None
    if len(g.consumers.get(node.input[0], [])) != 1 or node.input[0] in g.graph_outputs:
        return NoMatch("the product has other readers")
    weight = g.const(producer.input[1])
    shape = g.shapes.get(node.input[0])
    if weight is None or weight.ndim != 2:
        return NoMatch("weight not a 2D constant")
    if not shape or any(d is None for d in shape[1:]):
        return NoMatch("dims after the batch not static")
    axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 0)
    if axis not in (-1, len(shape) - 1):
        return NoMatch("not split along the last axis")
    if int(np.prod(shape[1:])) < min_elements:
        return NoMatch("smaller than min_elements")
    sizes = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    outputs = list(node.output)
    if sizes is None:
        if weight.shape[1] % len(outputs):
            return NoMatch("uneven split without sizes")
        sizes = np.full(len(outputs), weight.shape[1] // len(outputs))
    sizes = [int(x) for x in np.asarray(sizes).ravel()]
    if sum(sizes) != weight.shape[1] or len(sizes) != len(outputs):
        return NoMatch("sizes do not cover the weight")
    offsets = np.cumsum([0, *sizes])
    parts = [np.ascontiguousarray(weight[:, offsets[i] : offsets[i + 1]]) for i in range(len(sizes))]
    return _MergedSplit(node, producer, parts)


def _unmerge(g: SweepIndex, found: _MergedSplit) -> None:
    producer = found.producer
    base = producer.name or producer.output[0]
    new_nodes = []
    for index, (part, out) in enumerate(zip(found.parts, found.split.output, strict=True)):
        name = g.fresh(f"{base}/part{index}_weight")
        g.graph.initializer.append(numpy_helper.from_array(part, name))
        new_nodes.append(
            helper.make_node("MatMul", [producer.input[0], name], [out], name=g.fresh(f"{base}/part{index}"))
        )
    insert_before(g.graph, producer, new_nodes)
    g.graph.node.remove(producer)
    g.graph.node.remove(found.split)


unmerge_split_matmul = RewritePass(
    "unmerge_split_matmul",
    [Rule(_match_merged_split, _unmerge)],
    """``Split(MatMul(A, [W_1 … W_n]), axis=-1)`` with constant W → n ``MatMul(A, W_i)`` (undoes the sibling merge).

    The clean-up pass ``merge_sibling_matmuls`` merges the query/key/value projections into one GEMM and a Split.
    On ORT's CPU provider the Split is a strided copy of the whole product (single-threaded), which costs more than
    the GEMM it saves once the product is large: 16 ms of Split for a 9.7 ms merged GEMM at 56×56, u=4, batch 8.
    Applied when the product has at least ``min_elements`` elements per batch item; the products are the same
    column blocks of the same GEMM, so the numbers do not change.
    """,
    shapes=True,
)


@dataclass
class _OutputAdd:
    reshape: onnx.NodeProto
    add: onnx.NodeProto


def _match_output_add(g: SweepIndex, node: onnx.NodeProto) -> _OutputAdd | NoMatch | None:
    if node.op_type != "Reshape" or node.output[0] not in g.graph_outputs:
        return None
    add = g.producer.get(node.input[0])
    if add is None or add.op_type != "Add":
        return None
    if g.const(node.input[1]) is None:
        return NoMatch("shape not constant")
    if len(g.consumers.get(add.output[0], [])) != 1 or add.output[0] in g.graph_outputs:
        return NoMatch("the sum has other readers")
    shapes = [g.shapes.get(name) for name in add.input]
    out_shape = g.shapes.get(add.output[0])
    if not out_shape or any(shape != out_shape for shape in shapes):
        return NoMatch("the Add broadcasts (or its shapes are unknown)")
    if any(g.const(n) is not None for n in add.input):
        return NoMatch("adds a constant")
    if sum(1 for d in out_shape if d is None) > 1:
        return NoMatch("more than one dynamic dim")
    return _OutputAdd(node, add)


def _reshape_operands(g: SweepIndex, found: _OutputAdd) -> None:
    node, add = found.reshape, found.add
    base = add.name or add.output[0]
    new_inputs = []
    new_nodes = []
    for index, name in enumerate(add.input):
        reshaped = g.fresh(f"{base}/in{index}_reshaped")
        new_nodes.append(
            helper.make_node("Reshape", [name, node.input[1]], [reshaped], name=g.fresh(f"{base}/in{index}_reshape"))
        )
        new_inputs.append(reshaped)
    new_add = helper.make_node("Add", new_inputs, [node.output[0]], name=g.fresh(base + "/output"))
    insert_before(g.graph, add, [*new_nodes, new_add])
    g.graph.node.remove(add)
    g.graph.node.remove(node)


reshape_before_output_add = RewritePass(
    "reshape_before_output_add",
    [Rule(_match_output_add, _reshape_operands)],
    """``Reshape(Add(A, B))`` that is a graph output → ``Add(Reshape(A), Reshape(B))`` (same shapes, no broadcast).

    ORT cannot make a graph output alias its Reshape's input, so the final Reshape of a lambda layer copies the whole
    output; Reshapes of inner tensors are free. The Add then writes the output directly. Exact (same additions).
    """,
    shapes=True,
    fixed_point=False,
)


# -- small-map convolutions as one GEMM --------------------------------------------------------------------------------


def dense_conv_matrix(weight: np.ndarray, spatial: Sequence[int], pads: Sequence[int], order: str = "ks") -> np.ndarray:
    """The stride-1 convolution ``weight`` (K, C, *kernel) on an input of size ``spatial`` with ``pads`` (ONNX order:
    all begins, then all ends) as a dense (C·S, S·K) (``order="sk"``) or (C·S, K·S) (``order="ks"``) matrix, S =
    prod(spatial): ``conv(x)`` flattened = ``x.reshape(C·S) @ matrix``. Entries are the kernel taps where the window
    of an output position covers an input position, and 0 where it does not (zero padding contributes nothing)."""
    out_channels, in_channels = weight.shape[:2]
    kernel = weight.shape[2:]
    rank = len(spatial)
    begins = list(pads[:rank])
    positions = int(np.prod(spatial))
    matrix = np.zeros((in_channels, positions, positions, out_channels), dtype=weight.dtype)  # c, s_in, s_out, k
    grid = np.stack(np.meshgrid(*[np.arange(d) for d in spatial], indexing="ij"), -1).reshape(positions, rank)
    for out_index, out_pos in enumerate(grid):
        # input position p = out + tap - begin, for every tap inside the kernel and every p inside the input
        taps = np.stack(np.meshgrid(*[np.arange(k) for k in kernel], indexing="ij"), -1).reshape(-1, rank)
        inputs = out_pos[None, :] + taps - np.asarray(begins)[None, :]
        inside = np.all((inputs >= 0) & (inputs < np.asarray(spatial)[None, :]), axis=1)
        taps, inputs = taps[inside], inputs[inside]
        in_index = np.ravel_multi_index(tuple(inputs.T), tuple(spatial))
        values = weight[(slice(None), slice(None), *taps.T)]  # K, C, taps
        matrix[:, in_index, out_index, :] = np.transpose(values, (1, 2, 0))
    if order == "ks":
        matrix = np.transpose(matrix, (0, 1, 3, 2))  # c, s_in, k, s_out
    elif order != "sk":
        raise ValueError(f"order must be 'ks' or 'sk', got {order!r}")
    return np.ascontiguousarray(matrix.reshape(in_channels * positions, positions * out_channels))


@dataclass
class _DenseConv:
    node: onnx.NodeProto
    weight: np.ndarray
    spatial: list[int]
    pads: list[int]
    channels: int
    source: str  # the GEMM rows' input: the Conv's input, or the input of the Reshape before it
    chain: tuple[onnx.NodeProto, onnx.NodeProto, int] | None  # the λp Reshape, Transpose and values (v) after it


def _dense_geometry(
    g: SweepIndex, node: onnx.NodeProto, max_in_channels: int, max_matrix_elements: int, max_density_loss: float
) -> tuple[np.ndarray, list[int], list[int]] | NoMatch:
    """(weight, spatial dims, pads) of a Conv that is cheaper as one GEMM with its dense matrix; why not otherwise."""
    if len(node.input) > 2 and node.input[2]:
        return NoMatch("has a bias")
    weight = g.const(node.input[1])
    shape = g.shapes.get(node.input[0])
    if weight is None:
        return NoMatch("weight not constant")
    if shape is None or len(shape) < 3 or any(d is None for d in shape[1:]):
        return NoMatch("input dims after the batch not static")
    rank = len(shape) - 2
    spatial = [int(d) for d in shape[2:]]
    if attribute(node, "group", 1) != 1:
        return NoMatch("group > 1")
    if attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return NoMatch("auto_pad")
    if any(s != 1 for s in attribute(node, "strides", [1] * rank)):
        return NoMatch("strided")
    if any(s != 1 for s in attribute(node, "dilations", [1] * rank)):
        return NoMatch("dilated")
    pads = list(attribute(node, "pads", [0] * (2 * rank)))
    kernel = list(weight.shape[2:])
    if [spatial[i] + pads[i] + pads[rank + i] - kernel[i] + 1 for i in range(rank)] != spatial:
        return NoMatch("not a 'same' convolution")  # the output must be laid out like the input
    channels, out_channels, positions = int(shape[1]), int(weight.shape[0]), int(np.prod(spatial))
    # multiply-adds per output position: the taps that can touch the input vs every input position
    taps = int(np.prod([min(kernel[i], 2 * spatial[i] - 1) for i in range(rank)]))
    if channels > max_in_channels:
        return NoMatch("more than max_in_channels input channels")
    if positions > max_density_loss * taps:
        return NoMatch("map large next to the kernel (dense matrix mostly zeros)")
    if channels * positions * positions * out_channels > max_matrix_elements:
        return NoMatch("dense matrix over max_matrix_elements")
    return weight, spatial, pads


def _lambda_chain(
    g: SweepIndex, node: onnx.NodeProto, positions: int, out_channels: int
) -> tuple[onnx.NodeProto, onnx.NodeProto, int] | None:
    """The local λp's ``Reshape(N→(B, V), K, S) → Transpose(0, 3, 2, 1)`` after the Conv: (Reshape, Transpose, V)."""
    consumers = g.consumers.get(node.output[0], [])
    if len(consumers) != 1 or consumers[0].op_type != "Reshape" or node.output[0] in g.graph_outputs:
        return None
    reshape = consumers[0]
    target = g.const(reshape.input[1])
    next_nodes = g.consumers.get(reshape.output[0], [])
    if (
        target is not None
        and len(target) == 4
        and int(target[1]) > 0
        and int(target[3]) == positions
        and int(target[2]) == out_channels
        and len(next_nodes) == 1
        and next_nodes[0].op_type == "Transpose"
        and transpose_perm(next_nodes[0]) == [0, 3, 2, 1]
        and reshape.output[0] not in g.graph_outputs
    ):
        return reshape, next_nodes[0], int(target[1])
    return None


def _match_dense_conv(
    g: SweepIndex,
    node: onnx.NodeProto,
    max_in_channels: int = 16,
    max_matrix_elements: int = 1 << 22,
    max_density_loss: float = 2.0,
) -> _DenseConv | NoMatch | None:
    if node.op_type != "Conv":
        return None
    geometry = _dense_geometry(g, node, max_in_channels, max_matrix_elements, max_density_loss)
    if isinstance(geometry, NoMatch):
        return geometry
    weight, spatial, pads = geometry
    chain = _lambda_chain(g, node, int(np.prod(spatial)), int(weight.shape[0]))
    source = node.input[0]
    producer = g.producer.get(source)
    if (
        producer is not None
        and producer.op_type == "Reshape"
        and len(g.consumers.get(source, [])) == 1
        and source not in g.graph_outputs
    ):
        source = producer.input[0]  # Reshape of a Reshape: read the original tensor
    channels = int(g.shapes[node.input[0]][1])
    return _DenseConv(node, weight, spatial, pads, channels, source, chain)


def _dense_conv(g: SweepIndex, found: _DenseConv) -> None:
    node, weight, chain = found.node, found.weight, found.chain
    base = node.name or node.output[0]
    positions, out_channels = int(np.prod(found.spatial)), int(weight.shape[0])
    new_nodes: list[onnx.NodeProto] = []
    if chain is not None:
        matrix = dense_conv_matrix(weight, found.spatial, found.pads, order="sk")
        rows = [-1, chain[2], found.channels * positions]
        out_name = chain[1].output[0]
    else:
        matrix = dense_conv_matrix(weight, found.spatial, found.pads, order="ks")
        rows = [-1, found.channels * positions]
        out_name = node.output[0]
    matrix_name = g.fresh(base + "/dense")
    g.graph.initializer.append(numpy_helper.from_array(matrix.astype(weight.dtype), matrix_name))
    source_shape = g.shapes.get(found.source)
    if source_shape is not None and list(source_shape[1:]) == rows[1:]:
        flat = found.source  # already laid out as the GEMM rows
    else:
        flat = g.fresh(base + "/rows")
        new_nodes.append(
            helper.make_node(
                "Reshape",
                [found.source, g.shape_constant(base + "/rows_shape", rows)],
                [flat],
                name=g.fresh(base + "/to_rows"),
            )
        )
    product = g.fresh(base + "/dense_out")
    new_nodes.append(helper.make_node("MatMul", [flat, matrix_name], [product], name=g.fresh(base + "/dense")))
    if chain is not None:
        swapped = g.fresh(base + "/dense_t")
        new_nodes.append(
            helper.make_node("Transpose", [product], [swapped], name=g.fresh(base + "/dense_t"), perm=[0, 2, 1])
        )  # b, (s k), v
        final = [-1, positions, out_channels, chain[2]]  # b, n, k, v
        removed = [node, chain[0], chain[1]]
    else:
        swapped, final, removed = product, [-1, out_channels, *found.spatial], [node]  # N, K, *spatial
    new_nodes.append(
        helper.make_node(
            "Reshape", [swapped, g.shape_constant(base + "/out_shape", final)], [out_name], name=g.fresh(base + "/out")
        )
    )
    insert_before(g.graph, node, new_nodes)
    for old in removed:
        g.graph.node.remove(old)
    if found.source != node.input[0]:
        g.graph.node.remove(g.producer[node.input[0]])


conv_as_dense_matmul = RewritePass(
    "conv_as_dense_matmul",
    [Rule(_match_dense_conv, _dense_conv)],
    """A stride-1 ``Conv`` with few input channels and a kernel as large as its (small) input → one ``MatMul``.

    The local lambda convolution (u input channels, k outputs, r×r kernel, value axis folded into the batch) on the
    8×8 and 16×16 maps of a LambdaResNet (r = 23) is mostly padding: every output sees the whole map. ORT's Conv
    with 1–4 input channels runs far below GEMM speed; the same sums as ``x (N, C·S) @ D (C·S, S·K)``, with D the
    convolution's dense matrix (:func:`dense_conv_matrix`), are one well-shaped GEMM with at most
    ``max_density_loss`` times the Conv's multiply-adds. Exact up to the order of the additions (the extra terms are
    products with 0). Only when the input's channel and spatial dims are static, there is no bias and the group is 1.

    Where the Conv feeds ``Reshape(N→(B, V), K, S) → Transpose(0, 3, 2, 1)`` (the layer's λp, (b, n, k, v)), the
    matrix is laid out (S, K) and the whole chain becomes ``Reshape → MatMul → Transpose(0, 2, 1) → Reshape``: a
    single-axis transpose (fast in ORT) instead of a generic one.
    """,
    shapes=True,
)


@dataclass
class _TallConv:
    node: onnx.NodeProto
    weight: np.ndarray
    channels: int
    height: int
    out_shape: list[int]  # the Conv's output dims after the batch
    strides: list[int]
    dilations: list[int]
    pads: list[int]


def _match_tall_conv(g: SweepIndex, node: onnx.NodeProto) -> _TallConv | NoMatch | None:
    if node.op_type != "Conv":
        return None
    if attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return NoMatch("auto_pad")
    weight = g.const(node.input[1])
    shape = g.shapes.get(node.input[0])
    out_shape = g.shapes.get(node.output[0])
    if weight is None or weight.ndim != 4 or shape is None or len(shape) != 4 or out_shape is None:
        return NoMatch("not a 2D Conv with a constant weight and known shapes")
    if shape[3] != 1 or weight.shape[3] != 1:
        return NoMatch("not an (H, 1) map with an (r, 1) kernel")
    if any(d is None for d in shape[1:3]) or int(shape[2]) < 2:
        return NoMatch("channels or height not static (or height 1)")
    if any(d is None for d in out_shape[1:]) or node.output[0] in g.graph_outputs:
        return NoMatch("output dims not static, or a graph output")
    strides = list(attribute(node, "strides", [1, 1]))
    dilations = list(attribute(node, "dilations", [1, 1]))
    pads = list(attribute(node, "pads", [0, 0, 0, 0]))
    if strides[1] != 1 or dilations[1] != 1 or pads[1] != 0 or pads[3] != 0:
        return NoMatch("strided, dilated or padded along the width")
    dims = [int(d) for d in out_shape[1:]]
    return _TallConv(node, weight, int(shape[1]), int(shape[2]), dims, strides, dilations, pads)


def _conv_along_width(g: SweepIndex, found: _TallConv) -> None:
    node, weight = found.node, found.weight
    base = node.name or node.output[0]
    group = int(attribute(node, "group", 1))
    wide_in = g.fresh(base + "/wide_in")
    new_nodes = [
        helper.make_node(
            "Reshape",
            [node.input[0], g.shape_constant(base + "/wide_in_shape", [-1, found.channels, 1, found.height])],
            [wide_in],
            name=g.fresh(base + "/to_wide"),
        )  # N, C, 1, H
    ]
    kernel = g.fresh(base + "/wide_kernel")
    g.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(0, 1, 3, 2)), kernel))
    output = node.output[0]
    wide_out = g.fresh(base + "/wide_out")
    node.input[0], node.input[1], node.output[0] = wide_in, kernel, wide_out
    del node.attribute[:]
    strides, dilations, pads = found.strides, found.dilations, found.pads
    node.attribute.extend(
        [
            helper.make_attribute("kernel_shape", [1, int(weight.shape[2])]),
            helper.make_attribute("strides", [1, strides[0]]),
            helper.make_attribute("dilations", [1, dilations[0]]),
            helper.make_attribute("pads", [0, pads[0], 0, pads[2]]),
            helper.make_attribute("group", group),
        ]
    )
    insert_before(g.graph, node, new_nodes)
    consumers = g.consumers.get(output, [])
    if consumers and all(c.op_type == "Reshape" and c.input[0] == output for c in consumers):
        for consumer in consumers:  # a Reshape reads (N, K, 1, H') as it read (N, K, H', 1): the same layout
            consumer.input[0] = wide_out
    else:
        last = helper.make_node(
            "Reshape",
            [wide_out, g.shape_constant(base + "/tall_shape", [-1, *found.out_shape])],  # the old shape: no copy
            [output],
            name=g.fresh(base + "/to_tall"),
        )
        g.graph.node.insert(list(g.graph.node).index(node) + 1, last)


conv_along_width = RewritePass(
    "conv_along_width",
    [Rule(_match_tall_conv, _conv_along_width)],
    """A 2D ``Conv`` over an (H, 1) map with an (r, 1) kernel (a 1D convolution along the height) → the same Conv
    over the (1, H) map with the (1, r) kernel: ``Reshape`` (N, C, H, 1) → (N, C, 1, H), kernel transposed.

    The local lambda convolution of a 1D layer runs on the (T, 1) grid. ORT's NCHWc kernels walk the output one row
    at a time, vectorised along the width: with a width of 1 each of the T rows is a call with one output pixel.
    Along the width the same products are one long row (1D local T=1024, u=4, batch 8: the Conv went
    from 51 % to 16 % of the layer's time, the layer 38 % faster; OpenVINO 3× faster on the same file). The
    memory layout of (N, C, H, 1) and (N, C, 1, H) is the same, so the Reshapes copy nothing, and each output is the
    same sum of the same products. Only where C and H are static; grouped, strided and dilated along H are kept as
    they are (stride/dilation move with the axis).
    """,
    shapes=True,
)


# ORT's NCHWc convolutions (ORT_ENABLE_ALL, x86) work in blocks of 16 output channels with AVX-512 (8 with AVX2):
# with a multiple of 16 the block layout is channels-last already, and ORT fuses a following NCHW → NHWC Transpose
# into the ReorderOutput that leaves the block layout (``channels_last=1``): the Transpose costs nothing
NCHWC_BLOCK = 16


def _is_fused_nhwc_transpose(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """True for ``Conv → Transpose(0, 2, …, 1)`` (NCHW → NHWC) where ORT folds the Transpose into the Conv's output
    reorder: other passes must leave such a Transpose alone."""
    perm = transpose_perm(node)
    producer = g.producer.get(node.input[0])
    if perm is None or producer is None or producer.op_type != "Conv":
        return False
    weight = g.const(producer.input[1])
    return (
        perm == [0, *range(2, len(perm)), 1]
        and weight is not None
        and weight.shape[0] % NCHWC_BLOCK == 0
        and attribute(producer, "group", 1) == 1
    )


@dataclass
class _LambdaTranspose:
    conv: onnx.NodeProto
    reshape: onnx.NodeProto
    transpose: onnx.NodeProto
    rank: int
    values: int
    positions: int
    out_channels: int


def _match_lambda_transpose(g: SweepIndex, node: onnx.NodeProto) -> _LambdaTranspose | NoMatch | None:
    if node.op_type != "Conv":
        return None
    consumers = g.consumers.get(node.output[0], [])
    if len(consumers) != 1 or consumers[0].op_type != "Reshape":
        return None  # not the λp chain
    if attribute(node, "group", 1) != 1:
        return NoMatch("group > 1")
    weight = g.const(node.input[1])
    shape = g.shapes.get(node.output[0])
    if weight is None or weight.shape[0] % NCHWC_BLOCK:
        return NoMatch("output channels not a multiple of the NCHWc block")
    if shape is None or len(shape) < 3 or any(d is None for d in shape[1:]) or node.output[0] in g.graph_outputs:
        return NoMatch("output dims not static, or a graph output")
    reshape = consumers[0]
    target = g.const(reshape.input[1])
    out_channels, positions = int(shape[1]), int(np.prod(shape[2:]))
    if target is None or len(target) != 4 or int(target[0]) != -1 or int(target[1]) <= 0:
        return NoMatch("Reshape is not (b, v, k, n)")
    if int(target[2]) != out_channels or int(target[3]) != positions or reshape.output[0] in g.graph_outputs:
        return NoMatch("Reshape is not (b, v, k, n)")
    after = g.consumers.get(reshape.output[0], [])
    if len(after) != 1 or after[0].op_type != "Transpose" or transpose_perm(after[0]) != [0, 3, 2, 1]:
        return NoMatch("not followed by Transpose(0, 3, 2, 1)")
    return _LambdaTranspose(node, reshape, after[0], len(shape), int(target[1]), positions, out_channels)


def _channels_last(g: SweepIndex, found: _LambdaTranspose) -> None:
    node, rank = found.conv, found.rank
    base = node.name or node.output[0]
    names = [g.fresh(base + suffix) for suffix in ("/nhwc", "/rows", "/moved")]
    new_nodes = [
        helper.make_node(
            "Transpose", [node.output[0]], [names[0]], name=g.fresh(base + "/nhwc"), perm=[0, *range(2, rank), 1]
        ),  # (b v), *spatial, k
        helper.make_node(
            "Reshape",
            [
                names[0],
                g.shape_constant(base + "/rows_shape", [-1, found.values, found.positions * found.out_channels]),
            ],
            [names[1]],
            name=g.fresh(base + "/rows"),
        ),  # b, v, (n k)
        helper.make_node("Transpose", [names[1]], [names[2]], name=g.fresh(base + "/move"), perm=[0, 2, 1]),
        helper.make_node(
            "Reshape",
            [names[2], g.shape_constant(base + "/out_shape", [-1, found.positions, found.out_channels, found.values])],
            [found.transpose.output[0]],
            name=g.fresh(base + "/out"),
        ),  # b, n, k, v
    ]
    insert_before(g.graph, found.transpose, new_nodes)
    g.graph.node.remove(found.reshape)
    g.graph.node.remove(found.transpose)


conv_output_channels_last = RewritePass(
    "conv_output_channels_last",
    [Rule(_match_lambda_transpose, _channels_last)],
    """The local λp's ``Conv → Reshape(N→(B, V), K, S) → Transpose(0, 3, 2, 1)`` (to (b, n, k, v)) →
    ``Conv → Transpose(NCHW → NHWC) → Reshape (b, V, S·K) → Transpose(0, 2, 1) → Reshape (b, S, K, V)``.

    The generic (0, 3, 2, 1) permutation moves two axes: ``split_slow_transposes`` writes it as two single-axis
    moves, two passes over λp (the largest tensor of a local layer: b·n·k·v floats, 25 MB at 56×56, batch 8). Here the
    first move is the NCHW → NHWC Transpose of the Conv output, which ORT fuses into the reorder out of its NCHWc
    block layout (free when the K output channels are a multiple of the block, :data:`NCHWC_BLOCK`), so one move
    is left (56×56, u=1, batch 8: 9 % faster; 1D T=1024, u=4: 17 %). Pure data movement; the values are the same
    (ONNX Runtime may pick another GEMM kernel for the consumer, so the last bits can differ).
    Only for a group-1 Conv with K a multiple of the block whose dims after the batch are static.
    """,
    shapes=True,
)


@dataclass
class _ShortTranspose:
    node: onnx.NodeProto
    view: list[int]  # (b, A, B), -1 for a dynamic batch
    out_shape: list[int]
    dtype: np.dtype


def _match_short_transpose(
    g: SweepIndex, node: onnx.NodeProto, max_axis: int = 32, min_elements: int = 1 << 15
) -> _ShortTranspose | NoMatch | None:
    if node.op_type != "Transpose":
        return None
    if node.output[0] in g.graph_outputs:
        return NoMatch("a graph output")
    if _is_fused_nhwc_transpose(g, node):
        return NoMatch("ORT fuses it into the Conv before it")
    view = _large_transpose(g, node, min_elements)
    if isinstance(view, NoMatch):
        return view
    merged_shape = view.merged_shape
    if view.merged_perm != [0, 2, 1]:
        return NoMatch("not a (b, A, B) → (b, B, A) move")
    if merged_shape[1] is None or merged_shape[1] > max_axis:
        return NoMatch("moved axis longer than max_axis")
    if any(c.op_type == "MatMul" and c.input[0] == node.output[0] for c in g.consumers.get(node.output[0], [])):
        return NoMatch("feeds a MatMul that ORT fuses it into")
    short, long_ = int(merged_shape[1]), int(merged_shape[2])
    shaped = [-1 if merged_shape[0] is None else int(merged_shape[0]), short, long_]
    out_shape = [-1 if view.shape[a] is None else int(view.shape[a]) for a in view.perm]
    if out_shape.count(-1) > 1 or shaped.count(-1) > 1:
        return NoMatch("more than one dynamic dim")
    return _ShortTranspose(node, shaped, out_shape, g.elem_type(node.input[0]))


def _identity_matmul(g: SweepIndex, found: _ShortTranspose) -> None:
    node = found.node
    base = node.name or node.output[0]
    eye = g.fresh(base + "/identity")
    g.graph.initializer.append(numpy_helper.from_array(np.eye(found.view[1], dtype=found.dtype), eye))
    names = [g.fresh(base + suffix) for suffix in ("/view", "/swapped", "/product")]
    new_nodes = [
        helper.make_node(
            "Reshape",
            [node.input[0], g.shape_constant(base + "/view_shape", found.view)],
            [names[0]],
            name=g.fresh(base + "/view"),
        ),  # b, A, B
        helper.make_node("Transpose", [names[0]], [names[1]], name=g.fresh(base + "/swap"), perm=[0, 2, 1]),
        helper.make_node("MatMul", [names[1], eye], [names[2]], name=g.fresh(base + "/by_identity")),  # b, B, A
        helper.make_node(
            "Reshape",
            [names[2], g.shape_constant(base + "/out_shape", found.out_shape)],
            [node.output[0]],
            name=g.fresh(base + "/out"),
        ),
    ]
    insert_before(g.graph, node, new_nodes)
    g.graph.node.remove(node)


transpose_as_identity_matmul = RewritePass(
    "transpose_as_identity_matmul",
    [Rule(_match_short_transpose, _identity_matmul)],
    """A Transpose that moves a short axis (≤ ``max_axis``) to the end, ``(b, A, B) → (b, B, A)`` in its merged
    view, → ``MatMul(Transpose(x), I_A)``, which ORT fuses into one GEMM with a transposed operand.

    ORT's CPU Transpose moves a short axis inwards element by element (8 × 16 × 4096 floats: 0.45 ms, against 0.14 ms
    for the GEMM with the 16 × 16 identity; measured with ORT 1.32 on 2 cores); the GEMM's packing routine reads
    the transposed operand at memory speed. Exact for finite values: each output is ``x · 1`` plus products with 0
    (an ``inf`` or ``NaN`` in the tensor would spread to its row, as ``0 · inf = NaN``). Only where the per-item
    size is at least ``min_elements`` (small transposes are cheaper as they are).
    """,
    shapes=True,
)
