"""Property tests of the Einsum rewrite pass: random valid equations match numpy.einsum, random invalid ones raise.

Valid equations: 1-3 operands over random letters of both cases, each letter a size of 1-4, letters repeated within a
term (diagonals and traces, up to 3 copies), any letter of an operand (all its copies) or '...' dim randomly made a
size-1 broadcast, optional '...' (anywhere in a term, different ranks per operand, size-1 broadcasts), explicit output
(random subset, random order) or implicit. With dims declared unknown, a diagonal whose size no operand declares must
be left as Einsum with a warning; everything else must be rewritten. Inputs are small integers stored as float32, so
every product and sum is exact in float32 and float64: a correct rewrite matches numpy.einsum to 0 (asserted <= 1e-5,
the pass's float tolerance), and any wrong axis, broadcast or sum shows up.
"""

from __future__ import annotations

import string

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from lambda_export.passes import parse_einsum_equation, rewrite_einsum

ATOL = 1e-5
SETTINGS = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def einsum_cases(draw: st.DrawFn) -> tuple[str, list[list[int]], list[list[bool]]]:
    """(equation, operand shapes, which operand dims may be declared dynamic)."""
    letters = draw(st.lists(st.sampled_from(string.ascii_letters), min_size=1, max_size=5, unique=True))
    sizes = {c: draw(st.integers(1, 4)) for c in letters}
    n_broadcast = draw(st.integers(0, 2)) if draw(st.booleans()) else None  # None: no '...'
    broadcast_sizes = [draw(st.integers(1, 3)) for _ in range(n_broadcast or 0)]
    n_operands = draw(st.integers(1, 3))

    terms: list[str] = []
    shapes: list[list[int]] = []
    dynamic_ok: list[list[bool]] = []
    for _ in range(n_operands):
        chosen = draw(st.permutations(letters))[: draw(st.integers(0, len(letters)))]
        if chosen and draw(st.integers(0, 2)) == 0:  # a diagonal: 1-2 more copies of letters already in the term
            for _ in range(draw(st.integers(1, 2))):
                at = draw(st.integers(0, len(chosen)))
                chosen = [*chosen[:at], draw(st.sampled_from(chosen)), *chosen[at:]]
        # a size-1 broadcast of any letter (valid numpy: 1 broadcasts against n); all copies of a letter repeated
        # within the term get it, since numpy requires them to have one size
        ones = {c for c in dict.fromkeys(chosen) if draw(st.integers(0, 4)) == 0}
        full = [sizes[c] for c in chosen]
        dims = [1 if c in ones else sizes[c] for c in chosen]
        term = "".join(chosen)
        if n_broadcast is not None and draw(st.booleans()):
            own = draw(st.integers(0, n_broadcast))
            ell_dims = broadcast_sizes[n_broadcast - own :]
            at = draw(st.integers(0, len(chosen)))
            term = term[:at] + "..." + term[at:]
            full[at:at] = ell_dims
            dims[at:at] = [1 if draw(st.integers(0, 4)) == 0 else d for d in ell_dims]  # size-1 broadcasts too
        terms.append(term)
        shapes.append(dims)
        dynamic_ok.append([d == f for d, f in zip(dims, full, strict=True)])

    used = sorted({c for t in terms for c in t if c != "."})
    if draw(st.booleans()):
        equation = ",".join(terms)  # implicit output
    else:
        out = draw(st.permutations(used))[: draw(st.integers(0, len(used)))]
        out_term = "".join(out)
        any_ellipsis = any("..." in t for t in terms)
        needs_ellipsis = any(
            len(s) > len(t.replace("...", "")) for t, s in zip(terms, shapes, strict=True)
        )  # the '...' covers dims
        if needs_ellipsis or (any_ellipsis and draw(st.booleans())):
            at = draw(st.integers(0, len(out_term)))
            out_term = out_term[:at] + "..." + out_term[at:]
        equation = ",".join(terms) + "->" + out_term
    return equation, shapes, dynamic_ok


def build_model(equation: str, declared: list[list[int | str]], output_rank: int, opset: int) -> onnx.ModelProto:
    names = [f"x{k}" for k in range(len(declared))]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(names, declared, strict=True)]
    node = helper.make_node("Einsum", names, ["y"], name="E", equation=equation)
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * output_rank)
    graph = helper.make_graph([node], "einsum", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def assert_matches_numpy(
    equation: str, declared: list[list[int | str]], shapes: list[list[int]], seed: int, opset: int = 17
) -> None:
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-3, 4, s).astype(np.float32) for s in shapes]
    want = np.einsum(equation, *[a.astype(np.float64) for a in arrays])
    model = build_model(equation, declared, want.ndim, opset)
    rewritten, warnings = rewrite_einsum(model)
    kinds = [n.op_type for n in rewritten.graph.node]
    if "Einsum" in kinds:  # only a diagonal whose size no operand declares statically is left, unchanged
        assert any(
            len(set(t.replace("...", ""))) < len(t.replace("...", "")) for t in equation.split("->")[0].split(",")
        )
        assert not all(isinstance(d, int) for s in declared for d in s)
        assert len(warnings) == 1
        assert "diagonal" in warnings[0]
        assert "not known statically" in warnings[0]
        assert rewritten.SerializeToString() == model.SerializeToString()
        return
    onnx.checker.check_model(rewritten, full_check=True)
    if all(isinstance(d, int) for s in declared for d in s):
        assert warnings == []
        assert not {"Shape", "Gather"} & set(kinds)
    session = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {f"x{k}": a for k, a in enumerate(arrays)})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max(initial=0.0) <= ATOL


@SETTINGS
@given(case=einsum_cases(), seed=st.integers(0, 2**16), opset=st.sampled_from([13, 17, 18]))
def test_static_shapes_match_numpy(case: tuple[str, list[list[int]], list[list[bool]]], seed: int, opset: int) -> None:
    """Fully static shapes: exact match, no warning, and no Shape/Gather nodes."""
    equation, shapes, _ = case
    assert_matches_numpy(equation, shapes, shapes, seed, opset)


@SETTINGS
@given(case=einsum_cases(), data=st.data(), seed=st.integers(0, 2**16))
def test_dynamic_dims_match_numpy(
    case: tuple[str, list[list[int]], list[list[bool]]], data: st.DataObject, seed: int
) -> None:
    """Some dims declared unknown (never a size-1 broadcast one: unknown dims of one label are assumed equal)."""
    equation, shapes, dynamic_ok = case
    declared: list[list[int | str]] = [
        [
            f"d{k}_{i}" if ok and data.draw(st.booleans(), label=f"dynamic {k}.{i}") else d
            for i, (d, ok) in enumerate(zip(s, oks, strict=True))
        ]
        for k, (s, oks) in enumerate(zip(shapes, dynamic_ok, strict=True))
    ]
    assert_matches_numpy(equation, declared, shapes, seed)


MUTATIONS = [
    "extra operand",
    "missing operand",
    "output letter not in inputs",
    "repeated output letter",
    "bad character",
    "two arrows",
    "stray dot",
    "two ellipses",
    "rank mismatch",
    "output drops broadcast dims",
]


@st.composite
def invalid_cases(draw: st.DrawFn) -> tuple[str, list[int], str]:
    """(equation, ranks, mutation): a valid random case broken in one way that numpy also rejects."""
    equation, shapes, _ = draw(einsum_cases())
    ranks = [len(s) for s in shapes]
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    used = sorted({c for c in lhs if c.isalpha()})
    unused = draw(st.sampled_from([c for c in string.ascii_letters if c not in used]))
    n_letters = [len(t.replace("...", "")) for t in terms]
    covers_dims = any(r > n for r, n in zip(ranks, n_letters, strict=True))
    possible = [m for m in MUTATIONS if m != "output drops broadcast dims" or covers_dims]
    if not used:
        possible.remove("repeated output letter")
    mutation = draw(st.sampled_from(possible))
    k = draw(st.integers(0, len(terms) - 1))
    if mutation == "extra operand":
        return equation, [*ranks, draw(st.integers(0, 3))], mutation
    if mutation == "missing operand":
        return equation, ranks[:-1], mutation
    if mutation == "output letter not in inputs":
        return f"{lhs}->{rhs}{unused}", ranks, mutation
    if mutation == "repeated output letter":
        c = draw(st.sampled_from(used))
        return f"{lhs}->{rhs.replace(c, '')}{c}{c}", ranks, mutation
    if mutation == "two arrows":
        return f"{lhs}->{rhs}->", ranks, mutation
    if mutation == "output drops broadcast dims":
        return f"{lhs}->{rhs.replace('...', '')}", ranks, mutation
    if mutation == "rank mismatch":
        if "..." in terms[k]:
            ranks[k] = n_letters[k] - 1  # fewer dims than letters (-1 when there are none: an invalid rank)
        else:
            ranks[k] += 1 if ranks[k] == 0 or draw(st.booleans()) else -1
        return ",".join(terms) + arrow + rhs, ranks, mutation
    at = draw(st.integers(0, len(terms[k])))
    insert = {
        "bad character": draw(st.sampled_from("0123456789_#!?+*/()[]{}:;|")),
        "stray dot": ".",
        "two ellipses": "......",
    }[mutation]
    terms[k] = terms[k][:at] + insert + terms[k][at:]
    return ",".join(terms) + arrow + rhs, ranks, mutation


@SETTINGS
@given(case=invalid_cases())
def test_invalid_equations_raise_value_error(case: tuple[str, list[int], str]) -> None:
    """Each mutation is rejected with a ValueError that quotes the equation, and numpy rejects it too."""
    equation, ranks, _ = case
    with pytest.raises(ValueError, match="einsum equation"):
        parse_einsum_equation(equation, ranks)
    if all(r >= 0 for r in ranks):  # numpy agrees that it is invalid
        with pytest.raises(ValueError):
            np.einsum(equation, *[np.zeros((1,) * r) for r in ranks])
