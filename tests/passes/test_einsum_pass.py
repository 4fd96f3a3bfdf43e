"""Tests of the Einsum rewrite pass (`lambda_export.passes.einsum`).

Each case builds a model with one Einsum node, rewrites it, checks that no Einsum is left and that the model passes
``onnx.checker.check_model(full_check=True)``, runs it in ONNX Runtime (CPU) and compares with ``numpy.einsum`` computed
in float64 from the same float32 inputs.

Tolerance: max abs error <= 1e-5. Inputs are uniform in [-1, 1] and the largest contraction here sums 24 products, so
float32 rounding (unit roundoff 6e-8) gives errors of order 1e-7 (measured: <= 3e-7); a wrong axis order, a wrong
broadcast or a dropped sum gives errors of order 0.1-1. 1e-5 sits far above the first and far below the second.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export.passes import parse_einsum_equation, rewrite_einsum
from lambda_export.passes.einsum_spec import EinsumSpec

ATOL = 1e-5
Shape = tuple[int | str, ...]


def _concrete(shape: Shape, dynamic_size: int) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dynamic_size for d in shape)


def build_model(
    equation: str,
    shapes: list[Shape],
    opset: int = 17,
    initializers: dict[int, np.ndarray] | None = None,
    elem_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A model with one Einsum node named 'E' whose operand k is graph input 'x{k}' (or initializer 'w{k}')."""
    initializers = initializers or {}
    names = [f"w{k}" if k in initializers else f"x{k}" for k in range(len(shapes))]
    inputs = [
        helper.make_tensor_value_info(name, elem_type, list(shape))
        for k, (name, shape) in enumerate(zip(names, shapes, strict=True))
        if k not in initializers
    ]
    inits = [numpy_helper.from_array(array, names[k]) for k, array in initializers.items()]
    rank = np.einsum(equation, *[np.zeros(_concrete(s, 2)) for s in shapes]).ndim
    node = helper.make_node("Einsum", names, ["y"], name="E", equation=equation)
    output = helper.make_tensor_value_info("y", elem_type, [None] * rank)
    graph = helper.make_graph([node], "einsum", inputs, [output], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def check_rewrite(
    equation: str,
    shapes: list[Shape],
    opset: int = 17,
    initializer_operands: tuple[int, ...] = (),
    dynamic_sizes: tuple[int, ...] = (3,),
    seed: int = 0,
) -> onnx.ModelProto:
    """Rewrite, validate, and compare with numpy.einsum; returns the rewritten model."""
    rng = np.random.default_rng(seed)
    inits = {
        k: rng.uniform(-1, 1, _concrete(shapes[k], 1)).astype(np.float32) for k in initializer_operands
    }  # initializers are static
    model = build_model(equation, shapes, opset, inits)
    before = model.SerializeToString()
    rewritten, warnings = rewrite_einsum(model)
    assert model.SerializeToString() == before, "the input model was modified"
    assert warnings == []
    assert "Einsum" not in op_types(rewritten)
    onnx.checker.check_model(rewritten, full_check=True)
    if all(isinstance(d, int) for s in shapes for d in s):
        assert not {"Shape", "Gather"} & set(op_types(rewritten))
    for size in dynamic_sizes:
        arrays = [
            inits[k] if k in inits else rng.uniform(-1, 1, _concrete(s, size)).astype(np.float32)
            for k, s in enumerate(shapes)
        ]
        feeds = {f"x{k}": a for k, a in enumerate(arrays) if k not in inits}
        got = run(rewritten, feeds)
        want = np.einsum(equation, *[a.astype(np.float64) for a in arrays])
        assert got.shape == want.shape
        assert np.abs(got - want).max(initial=0.0) <= ATOL
    return rewritten


CASES = [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),  # batch matmul
    ("i,j->ij", [(3,), (4,)]),  # outer product
    ("bij,bjk->bki", [(2, 3, 4), (2, 4, 5)]),  # transposed output
    ("bIi,iK->bIK", [(2, 3, 4), (4, 5)]),  # mixed case: I and i are different
    ("aB,Ba->", [(2, 3), (3, 2)]),  # mixed case, full contraction
    ("...ij,...jk->...ik", [(2, 3, 3, 4), (3, 4, 2)]),  # ellipsis, different ranks
    ("...ij,...jk", [(1, 3, 4), (5, 4, 2)]),  # ellipsis, size-1 broadcast, implicit output
    ("i...j,j...k->...ik", [(2, 3, 4), (4, 3, 5)]),  # ellipsis in the middle
    ("...,...->...", [(2, 1, 3), (4, 1)]),  # elementwise with broadcasting
    ("ij,jk", [(2, 3), (3, 4)]),  # implicit output
    ("ba,ab", [(2, 3), (3, 2)]),  # implicit output: scalar
    ("bA", [(2, 3)]),  # implicit output sorts by character code: 'A' before 'b'
    ("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)]),  # three operands
    ("i,j,k->kji", [(2,), (3,), (4,)]),  # three-operand outer product
    ("aA,Ab,bB->Ba", [(2, 3), (3, 4), (4, 2)]),  # three operands, mixed case
    ("ij->", [(2, 3)]),
    ("ij->j", [(2, 3)]),
    ("ij->ji", [(2, 3)]),
    ("ij->ij", [(2, 3)]),  # identity
    ("ijk,jil->kl", [(2, 3, 4), (3, 2, 5)]),  # contracted labels in different orders
    ("bij,bkj->bik", [(2, 3, 4), (2, 5, 4)]),
    ("ij,ij->ij", [(2, 3), (2, 3)]),  # Hadamard product
    ("bi,bi->b", [(4, 3), (4, 3)]),  # batched dot product
    ("ij,jk->", [(2, 3), (3, 4)]),
    ("ij,k->jk", [(2, 3), (4,)]),  # summed-out letter in one operand only
    (",ij->ji", [(), (2, 3)]),  # scalar operand
    ("bij,xjk->bxik", [(2, 3, 4), (5, 4, 6)]),  # two independent batch-like dims
    ("bij,bjk->bik", [(1, 3, 4), (5, 4, 2)]),  # batch broadcast: size 1 vs 5
    ("i,i->i", [(1,), (4,)]),  # letter broadcast
    ("i,i", [(1,), (4,)]),  # summed letter broadcast: x * sum(y)
    ("abc,cd->abd", [(2, 3, 4), (4, 5)]),  # dense layer
    # the lambda-layer equations
    ("bmuk,bmuv->bkv", [(2, 3, 1, 4), (2, 3, 1, 5)]),
    ("nmku,bmuv->bnkv", [(4, 3, 5, 1), (2, 3, 1, 6)]),
    ("bnhk,bnkv->bnhv", [(2, 4, 3, 5), (2, 4, 5, 6)]),
    ("bhkn,bkv->bhvn", [(2, 4, 5, 3), (2, 5, 6)]),
]


@pytest.mark.parametrize(("equation", "shapes"), CASES, ids=[c[0] or "empty" for c in CASES])
def test_rewrite_matches_numpy(equation: str, shapes: list[Shape]) -> None:
    check_rewrite(equation, shapes)


OPSET_CASES = [
    ("bij,bjk->bki", [(2, 3, 4), (2, 4, 5)]),
    ("ij->j", [(2, 3)]),
    ("bij,bjk->bik", [(1, 3, 4), (5, 4, 2)]),
    ("bmuk,bmuv->bkv", [("N", 3, 1, 4), ("N", 3, 1, 5)]),
    ("i,j->ij", [(3,), ("N",)]),
    ("abc,cd->bad", [("N", 3, 4), (4, 5)]),
]


@pytest.mark.parametrize("opset", [12, 13, 18])
@pytest.mark.parametrize(("equation", "shapes"), OPSET_CASES, ids=[c[0] for c in OPSET_CASES])
def test_other_opsets(equation: str, shapes: list[Shape], opset: int) -> None:
    """Opset 12 takes ReduceSum/Squeeze/Unsqueeze axes as an attribute, 13+ as an input."""
    model = check_rewrite(equation, shapes, opset=opset)
    axes_as_attribute = {
        n.op_type for n in model.graph.node if any(a.name == "axes" for a in n.attribute)
    }  # only possible below 13
    assert not axes_as_attribute if opset >= 13 else axes_as_attribute <= {"ReduceSum", "Squeeze", "Unsqueeze"}


def test_mixed_case_is_not_lower_cased() -> None:
    """tf2onnx's bug: 'bIi,iK->bIK' lower-cased is 'bii,ik->bik' (a diagonal), which gives other numbers."""
    shapes = [(2, 3, 3), (3, 4)]
    model, _ = rewrite_einsum(build_model("bIi,iK->bIK", shapes))
    rng = np.random.default_rng(1)
    a, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in shapes)
    got = run(model, {"x0": a, "x1": b})
    assert np.abs(got - np.einsum("bIi,iK->bIK", a, b)).max() <= ATOL
    assert np.abs(got - np.einsum("bii,ik->bik", a, b)).max() > 0.1


LAMBDA_DYNAMIC = [
    ("bmuk,bmuv->bkv", [("N", 3, 1, 4), ("N", 3, 1, 5)]),
    ("nmku,bmuv->bnkv", [(4, 3, 5, 1), ("N", 3, 1, 6)]),
    ("bnhk,bnkv->bnhv", [("N", 2, 3, 4), ("N", 2, 4, 5)]),
    ("bhkn,bkv->bhvn", [("N", 2, 4, 5), ("N", 4, 6)]),
    ("...ij,...jk->...ik", [("N", 3, 4), (4, 2)]),
    ("abc,cd->abd", [("N", "T", 4), (4, 5)]),  # two dynamic dims, still no Shape
]


@pytest.mark.parametrize(("equation", "shapes"), LAMBDA_DYNAMIC, ids=[c[0] for c in LAMBDA_DYNAMIC])
def test_dynamic_batch(equation: str, shapes: list[Shape]) -> None:
    """A dynamic batch dim is handled with Reshape 0 / -1 (or Squeeze/Unsqueeze): no Shape/Gather nodes."""
    model = check_rewrite(equation, shapes, dynamic_sizes=(1, 3))
    assert not {"Shape", "Gather"} & set(op_types(model))


def test_unknown_dims_fall_back_to_runtime_shape_with_a_warning() -> None:
    """Splitting a MatMul result into two unknown dims needs their sizes at run time: noted in a warning."""
    equation, shapes = "xyk,kzw->xyzw", [("X", "Y", 3), (3, "Z", "W")]
    model, warnings = rewrite_einsum(build_model(equation, shapes))
    assert "Einsum" not in op_types(model)
    assert "Shape" in op_types(model)
    assert len(warnings) == 1
    assert "'E'" in warnings[0]
    assert "run time" in warnings[0]
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1, 1, (2, 5, 3)).astype(np.float32), rng.uniform(-1, 1, (3, 4, 1)).astype(np.float32)
    assert np.abs(run(model, {"x0": a, "x1": b}) - np.einsum(equation, a, b)).max() <= ATOL


def test_operands_as_initializers() -> None:
    check_rewrite("bij,jk->bik", [(2, 3, 4), (4, 5)], initializer_operands=(1,))
    check_rewrite("bij,jk->bki", [("N", 3, 4), (4, 5)], initializer_operands=(1,), dynamic_sizes=(1, 2))
    check_rewrite("ij,jk->ki", [(2, 3), (3, 4)], initializer_operands=(0, 1))  # no graph input at all


def test_operands_are_intermediate_tensors() -> None:
    """Operands produced by other nodes: their shapes come from shape inference."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])
    weight = numpy_helper.from_array(np.linspace(-1, 1, 4 * 2 * 5, dtype=np.float32).reshape(4, 2, 5), "w")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Einsum", ["r", "w"], ["h"], name="first", equation="bij,jkl->blki"),
        helper.make_node("Einsum", ["h", "h"], ["y"], name="second", equation="blki,blki->bk"),
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph(nodes, "g", [x], [output], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten, warnings = rewrite_einsum(model)
    assert warnings == []
    onnx.checker.check_model(rewritten, full_check=True)
    kinds = op_types(rewritten)
    assert "Einsum" not in kinds
    assert not {"Shape", "Gather"} & set(kinds)
    names = [n.name for n in rewritten.graph.node]
    assert len(set(names)) == len(names)
    assert all(n == "relu" or n.startswith(("first/", "second/")) for n in names)
    inits = [t.name for t in rewritten.graph.initializer]
    assert len(set(inits)) == len(inits)
    xv = np.random.default_rng(3).uniform(-1, 1, (3, 3, 4)).astype(np.float32)
    w = numpy_helper.to_array(weight)
    h = np.einsum("bij,jkl->blki", np.maximum(xv, 0), w)
    assert np.abs(run(rewritten, {"x": xv}) - np.einsum("blki,blki->bk", h, h)).max() <= ATOL


def test_names_stay_unique_when_they_collide() -> None:
    """New names avoid existing ones, e.g. a tensor already called 'E/MatMul_out'."""
    x0 = helper.make_tensor_value_info("x0", TensorProto.FLOAT, [2, 3, 4])
    x1 = helper.make_tensor_value_info("x1", TensorProto.FLOAT, [2, 4, 5])
    nodes = [
        helper.make_node("Einsum", ["x0", "x1"], ["E/MatMul_out"], name="E", equation="bij,bjk->bki"),
        helper.make_node("Relu", ["E/MatMul_out"], ["y"], name="E/MatMul"),
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x0, x1], [output]), opset_imports=[helper.make_opsetid("", 17)]
    )
    rewritten, _ = rewrite_einsum(model)
    onnx.checker.check_model(rewritten, full_check=True)
    names = [n.name for n in rewritten.graph.node]
    assert len(set(names)) == len(names)
    rng = np.random.default_rng(4)
    a, b = rng.uniform(-1, 1, (2, 3, 4)).astype(np.float32), rng.uniform(-1, 1, (2, 4, 5)).astype(np.float32)
    assert np.abs(run(rewritten, {"x0": a, "x1": b}) - np.maximum(np.einsum("bij,bjk->bki", a, b), 0)).max() <= ATOL


def test_einsum_in_subgraph() -> None:
    """An Einsum in an If branch is rewritten too (initializers go into the branch graph)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out_then = helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])
    out_else = helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])
    then_graph = helper.make_graph(
        [helper.make_node("Einsum", ["x", "x"], ["t"], name="then_einsum", equation="ij,ij->j")], "then", [], [out_then]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Einsum", ["x"], ["e"], name="else_einsum", equation="ij->j")], "else", [], [out_else]
    )
    node = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_graph, else_branch=else_graph)
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    model = helper.make_model(
        helper.make_graph([node], "g", [cond, x], [output]), opset_imports=[helper.make_opsetid("", 17)]
    )
    rewritten, warnings = rewrite_einsum(model)
    assert warnings == []
    onnx.checker.check_model(rewritten, full_check=True)
    branches = [a.g for a in rewritten.graph.node[0].attribute]
    assert all("Einsum" not in [n.op_type for n in g.node] for g in branches)
    xv = np.random.default_rng(5).uniform(-1, 1, (2, 3)).astype(np.float32)
    assert np.abs(run(rewritten, {"cond": np.array(True), "x": xv}) - (xv * xv).sum(0)).max() <= ATOL
    assert np.abs(run(rewritten, {"cond": np.array(False), "x": xv}) - xv.sum(0)).max() <= ATOL


@pytest.mark.parametrize(
    ("elem_type", "dtype"),
    [(TensorProto.DOUBLE, np.float64), (TensorProto.INT64, np.int64), (TensorProto.INT32, np.int32)],
)
def test_other_element_types(elem_type: int, dtype: type) -> None:
    model, warnings = rewrite_einsum(build_model("bij,bjk->bki", [(2, 3, 4), (2, 4, 5)], elem_type=elem_type))
    assert warnings == []
    assert "Einsum" not in op_types(model)
    a = np.arange(24).reshape(2, 3, 4).astype(dtype) - 10
    b = np.arange(40).reshape(2, 4, 5).astype(dtype) % 7
    np.testing.assert_array_equal(run(model, {"x0": a, "x1": b}), np.einsum("bij,bjk->bki", a, b))


def test_unsupported_element_type_is_left_as_einsum() -> None:
    model, warnings = rewrite_einsum(build_model("ij,jk->ik", [(2, 3), (3, 4)], elem_type=TensorProto.INT8))
    assert op_types(model) == ["Einsum"]
    assert len(warnings) == 1
    assert "INT8" in warnings[0]


DIAGONALS = [
    ("ii->i", [(3, 3)]),
    ("ii->", [(3, 3)]),  # trace
    ("ii", [(4, 4)]),  # implicit trace
    ("...ii->...i", [(2, 3, 3)]),
    ("...ii->...i", [(3, 3)]),  # '...' covering no dim
    ("bii->b", [(2, 3, 3)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),
    ("iji->ij", [(3, 4, 3)]),  # copies not adjacent: Transpose first
    ("iji->ji", [(3, 4, 3)]),
    ("iii->i", [(3, 3, 3)]),  # three copies: step 1 + 3 + 9
    ("bii,bij->bj", [(2, 3, 3), (2, 3, 4)]),
    ("iijj->ji", [(2, 2, 3, 3)]),  # two repeated labels: one Slice
    ("ijij->", [(2, 3, 2, 3)]),
    ("ii,ij->ij", [(3, 3), (3, 4)]),
    ("ii,jj", [(3, 3), (2, 2)]),  # two traces multiplied
    ("ii,i->i", [(1, 1), (3,)]),  # size-1 diagonal broadcast against 3
    ("ii->i", [(1, 1)]),  # size-1 diagonal: no Slice
    ("iI,II->iI", [(2, 3), (3, 3)]),  # case matters: only I repeats
]


@pytest.mark.parametrize(("equation", "shapes"), DIAGONALS, ids=[c[0] for c in DIAGONALS])
def test_diagonal_matches_numpy(equation: str, shapes: list[Shape]) -> None:
    check_rewrite(equation, shapes)


DYNAMIC_DIAGONALS = [
    ("bii,bij->bj", [("N", 3, 3), ("N", 3, 4)], (1, 2)),
    ("...ii->...i", [("N", "T", 3, 3)], (1, 2)),
    ("ii,i->i", [("N", "N"), (2,)], (2,)),  # the diagonal's size comes from another operand ...
    ("ii->i", [(2, "N")], (2,)),  # ... or from the other copy
    ("iMiN->NMi", [(3, "M", 3, "N")], (1, 2)),  # diagonal placed last: Reshape [0, 9, -1], no run-time shape
]


@pytest.mark.parametrize(
    ("equation", "shapes", "dynamic_sizes"), DYNAMIC_DIAGONALS, ids=[c[0] for c in DYNAMIC_DIAGONALS]
)
def test_diagonal_with_dynamic_dims(equation: str, shapes: list[Shape], dynamic_sizes: tuple[int, ...]) -> None:
    """Only the diagonal's size must be static (``dynamic_sizes``: the run-time size of every unknown dim)."""
    model = check_rewrite(equation, shapes, dynamic_sizes=dynamic_sizes)
    assert not {"Shape", "Gather"} & set(op_types(model))


@pytest.mark.parametrize("opset", [12, 13])
def test_diagonal_at_old_opsets(opset: int) -> None:
    check_rewrite("iij,jk->ik", [(3, 3, 4), (4, 2)], opset=opset)
    check_rewrite("ii->", [(3, 3)], opset=opset)


# (equation, shapes, op types, Reshape target before the Slice, Slice (starts, ends, axes, steps))
NODE_PATTERNS = [
    ("ii->i", [(3, 3)], ["Reshape", "Slice"], [9], ([0], [9], [0], [4])),
    ("...ii->...i", [(2, 3, 3)], ["Reshape", "Slice"], [2, 9], ([0], [9], [1], [4])),
    ("iii->i", [(3, 3, 3)], ["Reshape", "Slice"], [27], ([0], [27], [0], [13])),
    ("ii->", [(3, 3)], ["Reshape", "Slice", "ReduceSum"], [9], ([0], [9], [0], [4])),
    ("iji->ij", [(3, 4, 3)], ["Transpose", "Reshape", "Slice"], [9, 4], ([0], [9], [0], [4])),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)], ["Reshape", "Slice", "MatMul"], [9, 4], ([0], [9], [0], [4])),
    ("iijj->ij", [(2, 2, 3, 3)], ["Reshape", "Slice"], [4, 9], ([0, 0], [4, 9], [0, 1], [3, 4])),
]


@pytest.mark.parametrize(
    ("equation", "shapes", "pattern", "target", "slice_args"), NODE_PATTERNS, ids=[c[0] for c in NODE_PATTERNS]
)
def test_diagonal_node_pattern(
    equation: str,
    shapes: list[Shape],
    pattern: list[str],
    target: list[int],
    slice_args: tuple[list[int], ...],
) -> None:
    """Transpose (copies not adjacent) + Reshape (flatten the copies) + Slice (step (n**k - 1) / (n - 1))."""
    model = check_rewrite(equation, shapes)
    assert op_types(model) == pattern
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in model.graph.initializer}
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    assert inits[reshape.input[1]] == target
    (slice_node,) = (n for n in model.graph.node if n.op_type == "Slice")
    assert tuple(inits[name] for name in slice_node.input[1:]) == slice_args


def _off_diagonal(term: str, shape: tuple[int, ...]) -> np.ndarray:
    """Where an operand with subscripts ``term`` (letters only, right-aligned) is off the diagonal of its repeats."""
    index = np.indices(shape)[len(shape) - len(term) :]
    on = np.ones(shape, dtype=bool)
    for letter in set(term):
        axes = [i for i, c in enumerate(term) if c == letter]
        for axis in axes[1:]:
            on &= index[axis] == index[axes[0]]
    return ~on


def _with_off_diagonal_specials(equation: str, shapes: list[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """Random operands whose off-diagonal elements are inf, -inf and NaN."""
    rng = np.random.default_rng(seed)
    terms = equation.partition("->")[0].split(",")
    arrays = []
    for term, shape in zip(terms, shapes, strict=True):
        array = rng.uniform(-1, 1, shape).astype(np.float32)
        off = _off_diagonal(term.replace("...", ""), shape)
        array[off] = np.resize(np.array([np.inf, -np.inf, np.nan], dtype=np.float32), int(off.sum()))
        arrays.append(array)
    return arrays


DATA_MOVEMENT = [
    ("ii->i", [(3, 3)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("iji->ij", [(3, 4, 3)]),
    ("iji->ji", [(3, 4, 3)]),
    ("iii->i", [(3, 3, 3)]),
    ("iijj->ji", [(2, 2, 3, 3)]),
    ("bii->bi", [(2, 4, 4)]),
]


@pytest.mark.parametrize(("equation", "shapes"), DATA_MOVEMENT, ids=[c[0] for c in DATA_MOVEMENT])
def test_diagonal_is_exact_and_never_reads_off_diagonal(equation: str, shapes: list[tuple[int, ...]]) -> None:
    """A diagonal alone is pure data movement: bit-for-bit numpy's, with inf/-inf/NaN off the diagonal left out."""
    rewritten, warnings = rewrite_einsum(build_model(equation, list(shapes)))
    assert warnings == []
    assert not {"Einsum", "Mul", "Where"} & set(op_types(rewritten))
    arrays = _with_off_diagonal_specials(equation, shapes, seed=8)
    got = run(rewritten, {f"x{k}": a for k, a in enumerate(arrays)})
    want = np.einsum(equation, *arrays)
    assert np.isfinite(got).all()
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


ARITHMETIC = [
    ("ii->", [(3, 3)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),
    ("bii,bij->bj", [(2, 3, 3), (2, 3, 4)]),
    ("ii,ij->ij", [(3, 3), (3, 4)]),
]


@pytest.mark.parametrize(("equation", "shapes"), ARITHMETIC, ids=[c[0] for c in ARITHMETIC])
def test_diagonal_then_arithmetic_ignores_off_diagonal_inf(equation: str, shapes: list[tuple[int, ...]]) -> None:
    """inf/-inf/NaN off the diagonal never reach the sums or products (a mask multiply would give NaN)."""
    rewritten, warnings = rewrite_einsum(build_model(equation, list(shapes)))
    assert warnings == []
    arrays = _with_off_diagonal_specials(equation, shapes, seed=9)
    got = run(rewritten, {f"x{k}": a for k, a in enumerate(arrays)})
    want = np.einsum(equation, *[a.astype(np.float64) for a in arrays])
    assert np.isfinite(want).all()
    assert np.isfinite(got).all()
    assert np.abs(got - want).max(initial=0.0) <= ATOL


UNKNOWN_DIAGONALS = [
    ("ii->i", [("N", "N")]),
    ("bii->b", [(2, "N", "N")]),
    ("ii", [("N", "M")]),  # implicit trace
    ("iij,jk->ik", [("N", "N", 4), (4, 2)]),
]


@pytest.mark.parametrize(("equation", "shapes"), UNKNOWN_DIAGONALS, ids=[c[0] for c in UNKNOWN_DIAGONALS])
def test_diagonal_of_unknown_size_is_left_as_einsum_with_a_warning(equation: str, shapes: list[Shape]) -> None:
    model = build_model(equation, shapes)
    rewritten, warnings = rewrite_einsum(model)
    assert op_types(rewritten) == ["Einsum"]
    assert rewritten.SerializeToString() == model.SerializeToString()
    assert len(warnings) == 1
    assert "'E'" in warnings[0]
    assert repr(equation) in warnings[0]
    assert "diagonal" in warnings[0]
    assert "'i'" in warnings[0]
    assert "not known statically" in warnings[0]
    rng = np.random.default_rng(6)
    arrays = [rng.uniform(-1, 1, _concrete(s, 3)).astype(np.float32) for s in shapes]
    got = run(rewritten, {f"x{k}": a for k, a in enumerate(arrays)})
    assert np.abs(got - np.einsum(equation, *arrays)).max() <= ATOL


def test_only_the_diagonal_node_of_unknown_size_is_left() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "N"])
    nodes = [
        helper.make_node("Einsum", ["x"], ["d"], name="diag", equation="ii->i"),
        helper.make_node("Einsum", ["x", "d"], ["y"], name="mv", equation="ij,j->i"),
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [output]), opset_imports=[helper.make_opsetid("", 17)])
    rewritten, warnings = rewrite_einsum(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Einsum", "MatMul"]
    assert len(warnings) == 1
    assert "'diag'" in warnings[0]
    xv = np.random.default_rng(7).uniform(-1, 1, (3, 3)).astype(np.float32)
    assert np.abs(run(rewritten, {"x": xv}) - xv @ np.diag(xv)).max() <= ATOL


def test_diagonal_copies_of_different_sizes_raise() -> None:
    """numpy: "dimensions in operand 0 for collapsing index 'i' don't match"."""
    model = build_model("ii->i", [(3, 3)])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(ValueError, match=r"Einsum node 'E'.*'i' repeats within operand 0 with sizes \[1, 3\]"):
        rewrite_einsum(model)
    with pytest.raises(ValueError):
        np.einsum("ii->i", np.zeros((1, 3)))


INVALID = [
    ("ij,jk->ik", [2], "2 input term\\(s\\) but 1 operand"),
    ("ij->i", [2, 2], "1 input term\\(s\\) but 2 operand"),
    ("ij->i", [], "at least one operand"),
    ("ijk->i", [2], "rank 2 .* name 3 dim"),
    ("ij->i", [3], "rank 3 .* name 2 dim"),
    ("ij...k->i", [2], "besides '...'"),
    ("ij->k", [2], "'k' does not appear in any input"),
    ("ij->iI", [2], "'I' does not appear in any input"),  # case matters
    ("ij->ii", [2], "'i' appears more than once"),
    ("i1->i", [2], "invalid character '1'"),
    ("i_j", [2], "invalid character '_'"),
    ("ij->i-", [2], "invalid character '-'"),
    ("ij->i->j", [2], "more than one '->'"),
    ("...i...->i", [3], "more than one ellipsis"),
    ("i..j->i", [2], "'.' that is not part of an ellipsis"),
    ("ij->i.", [2], "'.' that is not part of an ellipsis"),
    ("....i->i", [2], "'.' that is not part of an ellipsis"),
    ("...ij->ij", [3], "no '...'"),  # broadcast dims dropped from the output
]


@pytest.mark.parametrize(("equation", "ranks", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_equations_raise(equation: str, ranks: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_einsum_equation(equation, ranks)
    assert repr(equation) in str(info.value)
    if ranks:  # numpy rejects them as well
        with pytest.raises(ValueError):
            np.einsum(equation, *[np.zeros((1,) * r) for r in ranks])


def test_invalid_equation_in_a_model_names_the_node() -> None:
    model = build_model("ij,jk->ik", [(2, 3), (3, 4)])
    model.graph.node[0].attribute[0].s = b"ij,jk->iq"
    with pytest.raises(ValueError, match=r"Einsum node 'E'.*'q' does not appear"):
        rewrite_einsum(model)


def test_size_mismatch_raises() -> None:
    model = build_model("ij,jk->ik", [(2, 3), (3, 4)])
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 5
    with pytest.raises(ValueError, match="'j' has sizes \\[3, 5\\]"):
        rewrite_einsum(model)


def test_parse_spec() -> None:
    spec = parse_einsum_equation("bIi,iK->bIK", [3, 2])
    assert isinstance(spec, EinsumSpec)
    assert spec.label_names == ("b", "I", "i", "K")
    assert spec.operands == ((0, 1, 2), (2, 3))
    assert spec.output == (0, 1, 3)
    assert spec.lowercase_equation() == "abc,cd->abd"
    assert not spec.has_repeated_subscripts
    assert parse_einsum_equation("ii->i", [2]).has_repeated_subscripts
    # implicit output: '...' dims first, then letters seen once, by character code
    spec = parse_einsum_equation("b...A,b", [3, 1])
    assert [spec.label_names[i] for i in spec.output] == ["...0", "A"]
    # '...' dims are right-aligned across operands
    spec = parse_einsum_equation("...ij,...jk->...ik", [4, 3])
    assert spec.operands == ((0, 1, 2, 3), (1, 3, 4))
    assert re.fullmatch(r"[a-z,]+->[a-z]+", spec.lowercase_equation())


def test_model_without_einsum_is_returned_unchanged() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    rewritten, warnings = rewrite_einsum(model)
    assert warnings == []
    assert rewritten.SerializeToString() == model.SerializeToString()
    assert rewritten is not model
