"""Properties of :func:`lambda_export.parity.compare` (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lambda_export.parity import compare

FINITE = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)
TOLERANCE = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False)
SMALL_RTOL = st.sampled_from([0.0, 1e-6, 1e-3, 0.1])

settings.register_profile("parity", max_examples=150, deadline=None)
settings.load_profile("parity")


@st.composite
def pairs(draw, elements=FINITE):
    """Two float32 arrays of one shape; the second is often a small perturbation of the first."""
    shape = draw(SHAPES)
    a = draw(hnp.arrays(np.float32, shape, elements=elements))
    if draw(st.booleans()):
        noise = draw(hnp.arrays(np.float32, shape, elements=st.floats(-0.0078125, 0.0078125, width=32)))
        b = (a + noise).astype(np.float32)
    else:
        b = draw(hnp.arrays(np.float32, shape, elements=elements))
    return a, b


@given(pairs(), TOLERANCE)
def test_symmetric_when_only_atol(pair, atol):
    a, b = pair
    ab, ba = compare(a, b, atol, 0.0), compare(b, a, atol, 0.0)
    assert ab.passed == ba.passed
    assert ab.max_abs == ba.max_abs and ab.mean_abs == ba.mean_abs
    assert ab.frac_within == ba.frac_within and ab.min_passing_atol == ba.min_passing_atol


@given(pairs(), SMALL_RTOL)
def test_min_passing_atol_is_the_exact_threshold(pair, rtol):
    a, b = pair
    threshold = compare(a, b, 0.0, rtol).min_passing_atol
    assert threshold >= 0.0 and math.isfinite(threshold)
    assert compare(a, b, threshold, rtol).passed
    if threshold > 0:
        below = float(np.nextafter(threshold, 0.0))
        assert not compare(a, b, below, rtol).passed


@given(pairs(), TOLERANCE, SMALL_RTOL)
def test_passed_iff_min_passing_atol_within_atol(pair, atol, rtol):
    a, b = pair
    m = compare(a, b, atol, rtol)
    assert m.passed == (m.min_passing_atol <= atol)
    assert 0.0 <= m.frac_within <= 1.0
    assert m.passed == (m.frac_within == 1.0)
    assert m.mean_abs <= m.max_abs
    assert m.problem is None


@given(pairs(), st.integers(0, 10_000), st.booleans(), st.sampled_from([np.nan, np.inf, -np.inf]), TOLERANCE)
def test_nan_or_inf_anywhere_fails(pair, position, in_reference, bad, atol):
    a, b = (x.copy() for x in pair)
    target = a if in_reference else b
    target.flat[position % target.size] = bad
    m = compare(a, b, atol, 1.0)
    assert not m.passed and m.min_passing_atol == math.inf
    word = "NaN" if np.isnan(bad) else "Inf"
    side = "TF reference" if in_reference else "ONNX output"
    assert f"{word} in {side}" in m.problem


@given(hnp.arrays(np.float32, SHAPES, elements=FINITE), TOLERANCE, SMALL_RTOL)
def test_identical_arrays_always_pass(a, atol, rtol):
    m = compare(a, a.copy(), atol, rtol)
    assert m.passed and m.max_abs == 0.0 and m.max_rel == 0.0 and m.min_passing_atol == 0.0
    assert m.frac_within == 1.0
    assert compare(a, a, 0.0, 0.0).passed  # even with zero tolerance


@given(st.floats(1e-8, 1.0, allow_nan=False), st.integers(1, 20))
def test_atol_edge_is_inclusive(atol, n):
    zeros = np.zeros(n)
    at_edge = np.full(n, atol)
    assert compare(zeros, at_edge, atol, 0.0).passed  # |d| == atol passes
    assert compare(zeros, -at_edge, atol, 0.0).passed
    just_over = np.full(n, np.nextafter(atol, math.inf))
    m = compare(zeros, just_over, atol, 0.0)
    assert not m.passed and m.frac_within == 0.0


@given(st.sampled_from([0.5, 1.0, 2.0, 4.0, 1024.0]), st.sampled_from([2.0**-10, 2.0**-5, 0.25]))
def test_rtol_edge_is_inclusive(reference, rtol):
    # powers of two: |d| = rtol·|ref| is exact in float64, so the edge is tested without rounding
    ref = np.array([reference, -reference])
    cand = ref + np.sign(ref) * rtol * reference
    assert compare(ref, cand, 0.0, rtol).passed
    over = np.nextafter(cand, np.sign(ref) * math.inf)  # one ulp further from the reference
    assert not compare(ref, over, 0.0, rtol).passed


@given(pairs(), pairs())
def test_shape_mismatch_always_fails(first, second):
    a, b = first[0], second[1]
    assume(a.shape != b.shape)
    m = compare(a, b, 1.0, 1.0)
    assert not m.passed and m.problem.startswith("shape mismatch")
