"""How close one array is to another: the pass rules, their settings, and the histogram of the errors.

Two rules decide whether an ONNX output matches its Keras model (:data:`RULES`):

* ``"relative"`` (the default): both are judged against a float64 truth, the Keras model run in float64 on the same
  inputs. The export passes when its error against the truth is within :data:`DEFAULT_FACTOR` times TensorFlow
  float32's own error, plus a floor of :data:`DEFAULT_FLOOR` float32 units of the output's scale, both for the max
  and for the root mean square of the elementwise errors (:func:`compare_to_truth`). An export is wrong when it moves
  the outputs more than float32 itself does, however deep the network and whatever the size of its outputs.
* ``"absolute"``: an element passes when ``|candidate − reference| ≤ atol + rtol·|reference|`` (evaluated in float64
  as ``|c − r| − rtol·|r| ≤ atol``) against TensorFlow's float32 output (:func:`compare`). Used when asked for, when
  no float64 reference can be built, and for the float16 check.

A NaN or Inf on either side is always a failure with its own message.

* :data:`DEFAULT_ATOL`, :data:`DEFAULT_RTOL` (float32) and :data:`FP16_ATOL`, :data:`FP16_RTOL` (float16 export);
  :func:`check_tolerance` refuses a negative or non-finite one; :func:`check_rule` a bad rule, factor or floor.
* :func:`compare` → :class:`Metrics` (max/mean errors, the fraction within tolerance, the smallest passing atol);
  :func:`compare_to_truth` → the same :class:`Metrics` with :class:`TruthErrors` (errors against float64) and the
  relative rule's verdict.
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
    "DEFAULT_FACTOR",
    "DEFAULT_FLOOR",
    "DEFAULT_RTOL",
    "FLOAT32_EPS",
    "FP16_ATOL",
    "FP16_RTOL",
    "HISTOGRAM_EDGES",
    "RATIO_EDGES",
    "RULES",
    "ErrorHistogram",
    "Metrics",
    "TruthErrors",
    "check_rule",
    "check_tolerance",
    "compare",
    "compare_to_truth",
    "error_against",
    "finite_or_none",
    "none_to",
]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2

RULES = ("relative", "absolute")
"""The pass rules: against a float64 truth relative to TensorFlow float32's own error, or ``atol + rtol·|tf|``."""
FLOAT32_EPS = float(np.finfo(np.float32).eps)
"""2⁻²³ ≈ 1.19e-7: the spacing of float32 numbers at 1 (an element's rounding is at most half of it, relative)."""
DEFAULT_FACTOR = 6.0
"""Relative rule: the export may be this many times further from the float64 truth than TensorFlow float32 is."""
DEFAULT_FLOOR = 8.0
"""Relative rule: errors up to this many :data:`FLOAT32_EPS` of the output's scale always pass (when TensorFlow
float32 happens to be exact, e.g. a saturated softmax)."""

HISTOGRAM_EDGES: tuple[float, ...] = (0.0, *(10.0 ** (k / 2) for k in range(-20, 7)))
"""Histogram bin edges of |onnx − tf|: 0, then 1e-10 … 1e3 every half decade; the last bin is [1e3, ∞)."""
RATIO_EDGES: tuple[float, ...] = (0.0, *(10.0 ** (k / 2) for k in range(-12, 13)))
"""Histogram bin edges of error / allowed error (``measure="ratio"``): 0, then 1e-6 … 1e6 every half decade; the
value 1 is an edge, so every bin is wholly within the rule's limit or wholly beyond it."""


def finite_or_none(value: Any) -> Any:
    """``value``, or None when it is a float that is not finite (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def none_to(value: Any, default: float) -> float:
    """``value`` as a float, or ``default`` when it is None (the reverse of :func:`finite_or_none`)."""
    return default if value is None else float(value)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN for 0/0 (no error on either side), inf for x/0."""
    if denominator > 0:
        return numerator / denominator
    return float("nan") if numerator == 0 else float("inf")


@dataclass
class TruthErrors:
    """Errors against the float64 truth: TensorFlow float32's own, the candidate's, and what the relative rule allows.

    Attributes:
        reference_max, reference_rms: max and root mean square of |tf − f64| over the elements (TensorFlow float32's
            own rounding error on these inputs).
        candidate_max, candidate_rms: the same for |candidate − f64| (the ONNX output's error).
        allowed_max, allowed_rms: ``factor · baseline + floor · FLOAT32_EPS · scale``, with the truth's max |f64| as
            the scale of the max and its root mean square as the scale of the RMS.
        scale: max |f64|.
        baseline_max, baseline_rms: TensorFlow float32's error the rule compares with: the largest over the input
            sets of the same output and input distribution (one sample's own error fluctuates by ~3× from one draw
            to the next), ``reference_max``/``reference_rms`` for a single set.
        factor: the rule's factor that ``allowed_max``/``allowed_rms`` were computed with.
        frac_within: the share of the elements whose |candidate − f64| is at most ``allowed_max`` (the rule also
            needs the RMS within ``allowed_rms``: a row can fail with every element within the allowed max).
    """

    reference_max: float
    reference_rms: float
    candidate_max: float
    candidate_rms: float
    allowed_max: float
    allowed_rms: float
    scale: float = 0.0
    baseline_max: float | None = None
    baseline_rms: float | None = None
    factor: float = DEFAULT_FACTOR
    frac_within: float = 1.0

    def __post_init__(self) -> None:
        if self.baseline_max is None:
            self.baseline_max = self.reference_max
        if self.baseline_rms is None:
            self.baseline_rms = self.reference_rms

    @property
    def ratio_max(self) -> float:
        """candidate_max / baseline_max (NaN when both are 0, inf when only TensorFlow is exact)."""
        return _ratio(self.candidate_max, float(self.baseline_max))

    @property
    def ratio_rms(self) -> float:
        """candidate_rms / baseline_rms."""
        return _ratio(self.candidate_rms, float(self.baseline_rms))

    @property
    def excess(self) -> float:
        """The larger of candidate / allowed for the max and the RMS: the rule passes when it is ≤ 1."""
        return max(
            0.0 if self.candidate_max == 0 else _ratio(self.candidate_max, self.allowed_max),
            0.0 if self.candidate_rms == 0 else _ratio(self.candidate_rms, self.allowed_rms),
        )

    @property
    def passed(self) -> bool:
        return self.candidate_max <= self.allowed_max and self.candidate_rms <= self.allowed_rms

    @property
    def factor_to_pass(self) -> float:
        """The smallest factor with which this comparison passes, the floor unchanged (0 when the floor alone covers
        it, inf when TensorFlow float32 is exact and the floor does not): it passes when this is ≤ ``factor``."""
        needed = 0.0
        for candidate, allowed, baseline in (
            (self.candidate_max, self.allowed_max, float(self.baseline_max)),
            (self.candidate_rms, self.allowed_rms, float(self.baseline_rms)),
        ):
            floor_term = allowed - self.factor * baseline
            if candidate > floor_term:
                needed = max(needed, _ratio(candidate - floor_term, baseline))
        return needed

    def to_dict(self) -> dict[str, Any]:
        return {
            "tf_max": finite_or_none(float(self.reference_max)),
            "tf_rms": finite_or_none(float(self.reference_rms)),
            "baseline_max": finite_or_none(float(self.baseline_max)),
            "baseline_rms": finite_or_none(float(self.baseline_rms)),
            "onnx_max": finite_or_none(float(self.candidate_max)),
            "onnx_rms": finite_or_none(float(self.candidate_rms)),
            "ratio_max": finite_or_none(float(self.ratio_max)),
            "ratio_rms": finite_or_none(float(self.ratio_rms)),
            "allowed_max": finite_or_none(float(self.allowed_max)),
            "allowed_rms": finite_or_none(float(self.allowed_rms)),
            "scale": finite_or_none(float(self.scale)),
            "factor": float(self.factor),
            "excess": finite_or_none(float(self.excess)),
            "factor_to_pass": finite_or_none(float(self.factor_to_pass)),
            "frac_within": float(self.frac_within),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TruthErrors:
        inf = float("inf")
        return cls(
            reference_max=none_to(data.get("tf_max"), inf),
            reference_rms=none_to(data.get("tf_rms"), inf),
            candidate_max=none_to(data.get("onnx_max"), inf),
            candidate_rms=none_to(data.get("onnx_rms"), inf),
            allowed_max=none_to(data.get("allowed_max"), 0.0),
            allowed_rms=none_to(data.get("allowed_rms"), 0.0),
            scale=none_to(data.get("scale"), 0.0),
            baseline_max=data.get("baseline_max"),
            baseline_rms=data.get("baseline_rms"),
            factor=float(data.get("factor", DEFAULT_FACTOR)),
            frac_within=float(data.get("frac_within", 1.0)),
        )


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
        rule: the rule that decided ``passed``: "absolute" (``atol + rtol·|tf|``) or "relative" (against float64).
        truth: the errors against the float64 truth (None when there is none, e.g. under the absolute rule).

    ``max_abs``, ``max_rel``, ``mean_abs``, ``frac_within`` and ``min_passing_atol`` always compare the candidate with
    TensorFlow's float32 output under the absolute rule's tolerances, whichever rule decided. :meth:`to_dict` writes
    only the deciding rule's judgements: under the relative rule ``frac_within`` is ``truth.frac_within`` (the share
    within the allowed max error against float64) and ``min_passing_atol`` is null (the factor that would pass is
    ``vs_float64.factor_to_pass``).
    """

    max_abs: float
    max_rel: float
    mean_abs: float
    frac_within: float
    min_passing_atol: float
    passed: bool
    problem: str | None = None
    size: int = 0
    rule: str = "absolute"
    truth: TruthErrors | None = None

    @classmethod
    def failure(cls, problem: str) -> Metrics:
        inf = float("inf")
        return cls(inf, inf, inf, 0.0, inf, False, problem, 0)

    def to_dict(self) -> dict[str, Any]:
        relative = self.truth is not None
        return {
            "max_abs": finite_or_none(float(self.max_abs)),
            "max_rel": finite_or_none(float(self.max_rel)),
            "mean_abs": finite_or_none(float(self.mean_abs)),
            "frac_within": float(self.truth.frac_within if relative else self.frac_within),
            "min_passing_atol": None if relative else finite_or_none(float(self.min_passing_atol)),
            "passed": bool(self.passed),
            "problem": self.problem,
            "size": int(self.size),
            "rule": self.rule,
            "vs_float64": None if self.truth is None else self.truth.to_dict(),
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
            rule=data.get("rule", "absolute"),
            truth=None if data.get("vs_float64") is None else TruthErrors.from_dict(data["vs_float64"]),
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


def check_rule(rule: str, factor: float, floor: float) -> None:
    """Refuse a rule outside :data:`RULES`, a factor that is not a finite number >= 1, a floor that is not >= 0.

    Raises:
        InputError: the message starts with the offending argument (``rule``, ``factor``, ``floor``).
    """
    if rule not in RULES:
        raise InputError(f"rule {rule!r}: choose among {', '.join(RULES)}", argument="rule")
    for name, value, low in (("factor", factor, 1.0), ("floor", floor, 0.0)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.floating, np.integer))
            or not math.isfinite(value)
            or value < low
        ):
            raise InputError(f"{name} {value!r}: must be a finite number >= {low:g}", argument=name)


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


def compare_to_truth(
    truth: np.ndarray,
    reference: np.ndarray,
    candidate: np.ndarray,
    atol: float,
    rtol: float,
    *,
    factor: float = DEFAULT_FACTOR,
    floor: float = DEFAULT_FLOOR,
    baseline: tuple[float, float] | None = None,
    reference_name: str = "TF reference",
    candidate_name: str = "ONNX output",
) -> Metrics:
    """The relative rule: ``candidate`` passes when it is within ``factor`` times ``reference``'s error of ``truth``.

    With e_tf = |reference − truth| and e_c = |candidate − truth| elementwise (in float64), the candidate passes when

        max e_c ≤ factor · max e_tf + floor · FLOAT32_EPS · max |truth|     and
        rms e_c ≤ factor · rms e_tf + floor · FLOAT32_EPS · rms truth

    where ``baseline`` = (max, rms), when given, replaces (max e_tf, rms e_tf): TensorFlow's error over several input
    sets of the same kind (:func:`lambda_export.parity.verify` passes the largest over the sets of one distribution).

    The max catches a few elements gone wrong (one channel of a batch norm), the root mean square a small error spread
    over every element (a weight off by 1e-3), which hides below the max's noise. The other fields of the returned
    :class:`Metrics` compare ``candidate`` with ``reference`` as :func:`compare` does (with ``atol``/``rtol``); NaN,
    Inf or a shape mismatch fail there with a ``problem``, whatever the truth says.

    Raises:
        InputError: a bad tolerance, factor or floor.
        ValueError: ``truth`` has another shape than ``reference``, or NaN/Inf where ``reference`` is finite (the
            caller falls back to the absolute rule).
    """
    check_rule("relative", factor, floor)
    metrics = compare(reference, candidate, atol, rtol, reference_name=reference_name, candidate_name=candidate_name)
    metrics.rule = "relative"
    if metrics.problem is not None or metrics.size == 0:
        return metrics
    t = np.asarray(truth, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    if t.shape != r.shape or not np.isfinite(t).all():
        raise ValueError("the float64 truth has another shape or non-finite values")
    ref_err = np.abs(r - t)
    cand_err = np.abs(c - t)
    scale = float(np.abs(t).max())
    scale_rms = float(np.sqrt(np.mean(t * t)))
    ref_max, ref_rms = float(ref_err.max()), float(np.sqrt(np.mean(ref_err * ref_err)))
    base_max, base_rms = (
        (ref_max, ref_rms) if baseline is None else (max(baseline[0], ref_max), max(baseline[1], ref_rms))
    )
    allowed_max = factor * base_max + floor * FLOAT32_EPS * scale
    errors = TruthErrors(
        reference_max=ref_max,
        reference_rms=ref_rms,
        candidate_max=float(cand_err.max()),
        candidate_rms=float(np.sqrt(np.mean(cand_err * cand_err))),
        allowed_max=allowed_max,
        allowed_rms=factor * base_rms + floor * FLOAT32_EPS * scale_rms,
        scale=scale,
        baseline_max=base_max,
        baseline_rms=base_rms,
        factor=float(factor),
        frac_within=float(np.count_nonzero(cand_err <= allowed_max)) / cand_err.size,
    )
    metrics.truth = errors
    metrics.passed = errors.passed
    return metrics


def error_against(truth: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max, root mean square) of |reference − truth| in float64; (0, 0) for other shapes, empty or non-finite arrays."""
    t = np.asarray(truth, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if t.shape != r.shape or t.size == 0 or not (np.isfinite(t).all() and np.isfinite(r).all()):
        return 0.0, 0.0
    error = np.abs(r - t)
    return float(error.max()), float(np.sqrt(np.mean(error * error)))


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
    """Counts of the elementwise errors of one provider × output over every comparison, in ``edges`` bins.

    ``measure`` says what is counted: ``"ratio"`` (:meth:`add_judged`, what :func:`lambda_export.parity.verify`
    records): each element's error over the allowed error of the rule that judged its comparison, |onnx − f64| /
    ``allowed_max`` under the relative rule, |onnx − tf| / (atol + rtol·|tf|) under the absolute one, in
    :data:`RATIO_EDGES` bins, so a value above 1 is beyond the rule's limit (under the relative rule the RMS is
    checked too, see ``rules`` and :class:`TruthErrors`); ``"abs"`` (:meth:`add`): |onnx − tf| in
    :data:`HISTOGRAM_EDGES` bins. ``rules`` lists the rules that judged the counted comparisons.
    """

    provider: str
    output: str
    precision: str = "fp32"
    edges: list[float] = field(default_factory=lambda: list(HISTOGRAM_EDGES))
    counts: list[int] = field(default_factory=lambda: [0] * len(HISTOGRAM_EDGES))
    nonfinite: int = 0
    measure: str = "abs"
    rules: list[str] = field(default_factory=list)

    @classmethod
    def of_ratios(cls, provider: str, output: str, precision: str = "fp32") -> ErrorHistogram:
        """An empty histogram of error / allowed error (:meth:`add_judged`)."""
        return cls(provider, output, precision, list(RATIO_EDGES), [0] * len(RATIO_EDGES), measure="ratio")

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Count |candidate − reference| (``measure="abs"``)."""
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape:
            return
        finite = np.isfinite(ref) & np.isfinite(cand)
        self.nonfinite += int((~finite).sum())
        self._count(np.abs(cand[finite] - ref[finite]))

    def add_judged(
        self,
        reference: np.ndarray,
        candidate: np.ndarray,
        metrics: Metrics,
        truth: np.ndarray | None,
        atol: float,
        rtol: float,
    ) -> None:
        """Count each element's error over the allowed error of the rule that gave ``metrics`` (``measure="ratio"``).

        ``truth`` is the float64 output ``metrics`` was judged against (relative rule, ``metrics.truth`` set);
        otherwise the absolute rule's ``atol + rtol·|reference|`` is the allowed error of each element.
        """
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        relative = metrics.truth is not None and truth is not None
        base = np.asarray(truth, dtype=np.float64) if relative else ref
        if base.shape != cand.shape:
            return
        rule = "relative" if relative else "absolute"
        if rule not in self.rules:
            self.rules.append(rule)
        finite = np.isfinite(base) & np.isfinite(cand)
        self.nonfinite += int((~finite).sum())
        error = np.abs(cand[finite] - base[finite])
        allowed = metrics.truth.allowed_max if relative else atol + rtol * np.abs(base[finite])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(error == 0, 0.0, error / allowed)
        self._count(ratio)

    def _count(self, values: np.ndarray) -> None:
        bins = np.searchsorted(np.asarray(self.edges), values, side="right") - 1
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
            "measure": self.measure,
            "rules": list(self.rules),
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
            measure=data.get("measure", "abs"),
            rules=list(data.get("rules", [])),
        )
