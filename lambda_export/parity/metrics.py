"""How close one array is to another: the pass rule, its tolerances, and the histogram of the errors.

An element passes when ``|candidate − reference| ≤ atol + rtol·|reference|`` (evaluated in float64 as
``|c − r| − rtol·|r| ≤ atol``); a NaN or Inf on either side is always a failure with its own message.

* :data:`DEFAULT_ATOL`, :data:`DEFAULT_RTOL` (float32) and :data:`FP16_ATOL`, :data:`FP16_RTOL` (float16 export);
  :func:`check_tolerance` refuses a negative or non-finite one.
* :func:`compare` → :class:`Metrics` (max/mean errors, the fraction within tolerance, the smallest passing atol).
* :class:`ErrorHistogram`: |onnx − tf| counted in the half-decade bins :data:`HISTOGRAM_EDGES`.
* :func:`finite_or_none`, :func:`none_to`: JSON's ``null`` for a value that is not finite, and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lambda_export.errors import InputError

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "FP16_ATOL",
    "FP16_RTOL",
    "HISTOGRAM_EDGES",
    "ErrorHistogram",
    "Metrics",
    "check_tolerance",
    "compare",
    "finite_or_none",
    "none_to",
]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2

HISTOGRAM_EDGES: tuple[float, ...] = (0.0, *(10.0 ** (k / 2) for k in range(-20, 7)))
"""Histogram bin edges of |onnx − tf|: 0, then 1e-10 … 1e3 every half decade; the last bin is [1e3, ∞)."""


def finite_or_none(value: Any) -> Any:
    """``value``, or None when it is a float that is not finite (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def none_to(value: Any, default: float) -> float:
    """``value`` as a float, or ``default`` when it is None (the reverse of :func:`finite_or_none`)."""
    return default if value is None else float(value)


@dataclass
class Metrics:
    """Agreement of a candidate array with a reference array.

    Attributes:
        max_abs: max |candidate − reference| over elements finite on both sides (0.0 if none).
        max_rel: max |candidate − reference| / |reference| over finite elements with a non-zero reference (0.0 if none).
        mean_abs: mean |candidate − reference| over elements finite on both sides.
        frac_within: fraction of all elements that pass (non-finite elements never pass).
        min_passing_atol: smallest atol with which every element passes at this rtol (``inf`` when a NaN/Inf or a
            shape mismatch makes passing impossible).
        passed: every element passes and nothing is NaN/Inf.
        problem: None, or why it failed beyond tolerance: "NaN in ONNX output (…)", "Inf in TF reference (…)",
            "shape mismatch: …".
        size: number of elements compared.
    """

    max_abs: float
    max_rel: float
    mean_abs: float
    frac_within: float
    min_passing_atol: float
    passed: bool
    problem: str | None = None
    size: int = 0

    @classmethod
    def failure(cls, problem: str) -> Metrics:
        inf = float("inf")
        return cls(inf, inf, inf, 0.0, inf, False, problem, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs": finite_or_none(float(self.max_abs)),
            "max_rel": finite_or_none(float(self.max_rel)),
            "mean_abs": finite_or_none(float(self.mean_abs)),
            "frac_within": float(self.frac_within),
            "min_passing_atol": finite_or_none(float(self.min_passing_atol)),
            "passed": bool(self.passed),
            "problem": self.problem,
            "size": int(self.size),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        inf = float("inf")
        return cls(
            max_abs=none_to(data.get("max_abs"), inf),
            max_rel=none_to(data.get("max_rel"), inf),
            mean_abs=none_to(data.get("mean_abs"), inf),
            frac_within=float(data.get("frac_within", 0.0)),
            min_passing_atol=none_to(data.get("min_passing_atol"), inf),
            passed=bool(data.get("passed")),
            problem=data.get("problem"),
            size=int(data.get("size", 0)),
        )


def check_tolerance(atol: float, rtol: float, *, names: tuple[str, str] = ("atol", "rtol")) -> None:
    """Refuse a tolerance that is not a finite number >= 0.

    Args:
        names: the API arguments the two values came from (``("fp16_atol", "fp16_rtol")`` for the float16 check);
            the message starts with the offending one, which is also the error's ``argument``.

    Raises:
        InputError: a negative, non-finite or non-numeric tolerance.
    """
    for name, value in zip(names, (atol, rtol), strict=True):
        if not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) or value < 0:
            raise InputError(f"{name} {value!r}: must be a finite number >= 0", argument=name)


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    atol: float,
    rtol: float,
    *,
    reference_name: str = "TF reference",
    candidate_name: str = "ONNX output",
) -> Metrics:
    """Compare ``candidate`` with ``reference`` elementwise: pass when |c − r| ≤ atol + rtol·|r|.

    The test is evaluated in float64 as ``|c − r| − rtol·|r| ≤ atol``, so ``min_passing_atol`` (the largest
    ``|c − r| − rtol·|r|``, at least 0) is exact: the arrays pass with ``atol=min_passing_atol`` and fail with any
    smaller atol (when it is > 0). NaN or Inf on either side, or different shapes, fail with a ``problem`` message.

    Raises:
        InputError: a negative or non-finite tolerance.
    """
    check_tolerance(atol, rtol)
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.shape != cand.shape:
        return Metrics.failure(
            f"shape mismatch: {candidate_name} {tuple(cand.shape)} vs {reference_name} {tuple(ref.shape)}"
        )
    for array, name in ((ref, reference_name), (cand, candidate_name)):
        if array.dtype.kind not in "biuf":
            return Metrics.failure(f"{name} has non-numeric dtype {array.dtype}")
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    size = int(r.size)
    if size == 0:
        return Metrics(0.0, 0.0, 0.0, 1.0, 0.0, True, None, 0)
    problems = _nonfinite_problems(((c, candidate_name), (r, reference_name)), size)
    finite = np.isfinite(r) & np.isfinite(c)
    diff = np.where(finite, np.abs(c - r), 0.0)
    magnitude = np.where(finite, np.abs(r), 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        excess = diff - rtol * magnitude
    within = finite & (excess <= atol)
    count = int(finite.sum())
    max_abs = float(diff.max()) if count else 0.0
    mean_abs = float(diff.sum() / count) if count else 0.0
    nonzero = finite & (magnitude > 0)
    max_rel = float((diff[nonzero] / magnitude[nonzero]).max()) if nonzero.any() else 0.0
    if problems:
        return Metrics(
            max_abs, max_rel, mean_abs, float(within.sum()) / size, float("inf"), False, "; ".join(problems), size
        )
    min_passing = max(0.0, float(excess.max()))
    return Metrics(max_abs, max_rel, mean_abs, float(within.sum()) / size, min_passing, bool(within.all()), None, size)


def _nonfinite_problems(arrays: tuple[tuple[np.ndarray, str], ...], size: int) -> list[str]:
    """The messages ``NaN in <name> (k of n values)`` / ``Inf in <name> (...)`` of each array that has some."""
    problems = []
    for array, name in arrays:
        nan = int(np.isnan(array).sum())
        inf = int(np.isinf(array).sum())
        if nan:
            problems.append(f"NaN in {name} ({nan} of {size} values)")
        if inf:
            problems.append(f"Inf in {name} ({inf} of {size} values)")
    return problems


@dataclass
class ErrorHistogram:
    """Counts of |onnx − tf| in :data:`HISTOGRAM_EDGES` bins, over every comparison of one provider × output."""

    provider: str
    output: str
    precision: str = "fp32"
    edges: list[float] = field(default_factory=lambda: list(HISTOGRAM_EDGES))
    counts: list[int] = field(default_factory=lambda: [0] * len(HISTOGRAM_EDGES))
    nonfinite: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape:
            return
        finite = np.isfinite(ref) & np.isfinite(cand)
        self.nonfinite += int((~finite).sum())
        diff = np.abs(cand[finite] - ref[finite])
        bins = np.searchsorted(np.asarray(self.edges), diff, side="right") - 1
        counts = np.bincount(np.clip(bins, 0, len(self.edges) - 1), minlength=len(self.edges))
        self.counts = [int(a + b) for a, b in zip(self.counts, counts, strict=True)]

    @property
    def total(self) -> int:
        return int(sum(self.counts)) + self.nonfinite

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "output": self.output,
            "precision": self.precision,
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "nonfinite": int(self.nonfinite),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorHistogram:
        return cls(
            provider=data["provider"],
            output=data["output"],
            precision=data.get("precision", "fp32"),
            edges=[float(e) for e in data["edges"]],
            counts=[int(c) for c in data["counts"]],
            nonfinite=int(data.get("nonfinite", 0)),
        )
