"""Numerical parity of an ONNX export with its Keras model (the "verify" step).

The reference is the Keras model in inference mode (``training=False``) on TensorFlow's CPU. Each candidate is an ONNX
Runtime session (all graph optimisations on) on one execution provider. An element passes when

    |onnx − tf| ≤ atol + rtol·|tf|        (evaluated in float64 as  |onnx − tf| − rtol·|tf| ≤ atol)

and a NaN or Inf on either side is always a failure with its own message. :func:`verify` runs this over batch sizes ×
input distributions × seeded samples (or over the user's own inputs), optionally locates the first diverging Keras
layer, optionally checks a float16 export, and returns a :class:`ParityReport`.

Report schema ``lambda-export/parity-report/v1`` (:meth:`ParityReport.to_dict`; JSON, floats that are not finite are
written as ``null``)::

    schema                 "lambda-export/parity-report/v1"
    passed                 bool: every provider × output × batch × distribution × sample passed (and float16, if asked)
    atol, rtol             float32 tolerances used
    tf32                   bool: TF32 was allowed on GPUs (False: turned off on both sides when a CUDA provider ran)
    providers_run          [ORT provider names]
    providers_skipped      {provider: why it did not run}
    settings               {batch_sizes, distributions, samples, seed, inputs ("random" or a file), locate, int_high}
    model                  {source, onnx, inputs: [{name, shape, dtype}], outputs: [...]}
    results                [row], row = {provider, output, batch_size, distribution, sample, seed, precision, metrics}
                           metrics = {max_abs, max_rel, mean_abs, frac_within, min_passing_atol, passed, problem, size}
    worst                  [row]: the worst row of each provider × output (see :meth:`ParityReport.worst`)
    fp16, fp16_atol, fp16_rtol, fp16_results, fp16_worst
                           float16 check: asked?, its tolerances, its rows (precision "fp16": the float16 model as
                           exported; "fp16-emulated": CPU run of the same model with float16 rounding after every op)
    divergence             [{layer, onnx_tensor, max_abs, passed, class_name, fused, matched_by, layout, max_rel,
                             min_passing_atol, problem}] in Keras topological order
    first_divergent_layer  str or null
    unmatched_layers       {layer: why it has no ONNX counterpart}
    histograms             [{provider, output, precision, edges, counts, nonfinite}]: |onnx − tf| counted in
                           [edges[i], edges[i+1]), the last bin open ([edges[-1], ∞)); edges[0] = 0
    notes                  [str]
    environment            {python, platform, tensorflow, keras, onnx, onnxruntime, onnxruntime_package, tf2onnx,
                            numpy, lambda_export, ort_providers, cpu, cores, gpu}
    timings                {step: seconds}
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import math
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lambda_export.errors import InputError, ProviderUnavailableError
from lambda_export.loading import LoadedModel, TensorInfo, load_model

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "DISTRIBUTIONS",
    "FP16_ATOL",
    "FP16_RTOL",
    "SCHEMA",
    "ErrorHistogram",
    "LayerDivergence",
    "Metrics",
    "ParityReport",
    "ResultRow",
    "available_providers",
    "compare",
    "environment",
    "load_inputs",
    "locate_divergence",
    "make_inputs",
    "resolve_providers",
    "session_providers",
    "verify",
]

SCHEMA = "lambda-export/parity-report/v1"

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2

DISTRIBUTIONS = ("normal", "uniform", "zeros", "large")
"""Random input distributions: ``normal`` N(0, 1); ``uniform`` U[0, 1) (image-like); ``zeros``; ``large`` N(0, 1)·1e3."""
LARGE_SCALE = 1e3
INT_HIGH = 100
"""Integer inputs are drawn uniformly from [0, INT_HIGH) (pass ``int_high`` for e.g. an embedding's vocabulary size)."""

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
KNOWN_PROVIDERS = (CPU, CUDA, TENSORRT)
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})

HISTOGRAM_EDGES: tuple[float, ...] = (0.0, *(10.0 ** (k / 2) for k in range(-20, 7)))
"""Histogram bin edges of |onnx − tf|: 0, then 1e-10 … 1e3 every half decade; the last bin is [1e3, ∞)."""

LOCATE_MODES = ("on_failure", "always", "never")
LOCATE_MAX_BATCH = 4

_DATA_MOVEMENT = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"})


# -- metrics -------------------------------------------------------------------------------------------------------


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _none_to(value: Any, default: float) -> float:
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
            "max_abs": _finite_or_none(float(self.max_abs)),
            "max_rel": _finite_or_none(float(self.max_rel)),
            "mean_abs": _finite_or_none(float(self.mean_abs)),
            "frac_within": float(self.frac_within),
            "min_passing_atol": _finite_or_none(float(self.min_passing_atol)),
            "passed": bool(self.passed),
            "problem": self.problem,
            "size": int(self.size),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        inf = float("inf")
        return cls(
            max_abs=_none_to(data.get("max_abs"), inf),
            max_rel=_none_to(data.get("max_rel"), inf),
            mean_abs=_none_to(data.get("mean_abs"), inf),
            frac_within=float(data.get("frac_within", 0.0)),
            min_passing_atol=_none_to(data.get("min_passing_atol"), inf),
            passed=bool(data.get("passed")),
            problem=data.get("problem"),
            size=int(data.get("size", 0)),
        )


def _check_tolerance(atol: float, rtol: float) -> None:
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) or value < 0:
            raise InputError(f"--{name} {value!r}: must be a finite number >= 0")


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
    _check_tolerance(atol, rtol)
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
    problems = []
    for array, name in ((c, candidate_name), (r, reference_name)):
        nan = int(np.isnan(array).sum())
        inf = int(np.isinf(array).sum())
        if nan:
            problems.append(f"NaN in {name} ({nan} of {size} values)")
        if inf:
            problems.append(f"Inf in {name} ({inf} of {size} values)")
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


# -- report data ---------------------------------------------------------------------------------------------------


@dataclass
class ResultRow:
    """One comparison: one output of one provider on one input set."""

    provider: str
    output: str
    batch_size: int
    distribution: str
    sample: int
    metrics: Metrics
    seed: int | None = None
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "output": self.output,
            "batch_size": int(self.batch_size),
            "distribution": self.distribution,
            "sample": int(self.sample),
            "seed": self.seed,
            "precision": self.precision,
            "metrics": self.metrics.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        return cls(
            provider=data["provider"],
            output=data["output"],
            batch_size=int(data["batch_size"]),
            distribution=data["distribution"],
            sample=int(data["sample"]),
            metrics=Metrics.from_dict(data["metrics"]),
            seed=data.get("seed"),
            precision=data.get("precision", "fp32"),
        )


@dataclass
class LayerDivergence:
    """A Keras layer's output compared with its ONNX counterpart tensor.

    ``fused`` lists earlier Keras layers with no ONNX tensor of their own that the same ONNX node computes (a
    convolution and the batch normalisation folded into it); ``matched_by`` is "name" (the ONNX node is named after
    the layer or reads its weights) or "shape" (an unnamed node between the neighbours' matches, same shape);
    ``layout`` says how the Keras tensor was transposed to match ("same", "channels_first", "channels_last").
    """

    layer: str
    onnx_tensor: str
    max_abs: float
    passed: bool
    class_name: str = ""
    fused: list[str] = field(default_factory=list)
    matched_by: str = "name"
    layout: str = "same"
    max_rel: float = 0.0
    min_passing_atol: float = 0.0
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "onnx_tensor": self.onnx_tensor,
            "max_abs": _finite_or_none(float(self.max_abs)),
            "passed": bool(self.passed),
            "class_name": self.class_name,
            "fused": list(self.fused),
            "matched_by": self.matched_by,
            "layout": self.layout,
            "max_rel": _finite_or_none(float(self.max_rel)),
            "min_passing_atol": _finite_or_none(float(self.min_passing_atol)),
            "problem": self.problem,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerDivergence:
        inf = float("inf")
        return cls(
            layer=data["layer"],
            onnx_tensor=data["onnx_tensor"],
            max_abs=_none_to(data.get("max_abs"), inf),
            passed=bool(data.get("passed")),
            class_name=data.get("class_name", ""),
            fused=list(data.get("fused", [])),
            matched_by=data.get("matched_by", "name"),
            layout=data.get("layout", "same"),
            max_rel=_none_to(data.get("max_rel"), inf),
            min_passing_atol=_none_to(data.get("min_passing_atol"), inf),
            problem=data.get("problem"),
        )


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


def _severity(row: ResultRow) -> tuple[int, int, float, float]:
    m = row.metrics
    return (0 if m.passed else 1, 1 if m.problem else 0, float(m.min_passing_atol), float(m.max_abs))


@dataclass
class ParityReport:
    """Everything :func:`verify` found; :meth:`to_dict` is the JSON schema documented in this module."""

    passed: bool
    atol: float
    rtol: float
    providers_run: list[str]
    providers_skipped: dict[str, str]
    results: list[ResultRow]
    fp16: bool = False
    fp16_atol: float = FP16_ATOL
    fp16_rtol: float = FP16_RTOL
    fp16_results: list[ResultRow] = field(default_factory=list)
    divergence: list[LayerDivergence] = field(default_factory=list)
    first_divergent_layer: str | None = None
    unmatched_layers: dict[str, str] = field(default_factory=dict)
    tf32: bool = False
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    histograms: list[ErrorHistogram] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    fp16_model: Any = field(default=None, repr=False, compare=False)  # the float16 onnx.ModelProto (not serialised)

    def worst(self, fp16: bool = False) -> list[ResultRow]:
        """The worst row of each provider × output (× precision), in first-seen order.

        Worst = failed before passed, a NaN/Inf/shape problem before a tolerance miss, then the largest
        ``min_passing_atol``, then the largest ``max_abs``.
        """
        rows = self.fp16_results if fp16 else self.results
        best: dict[tuple[str, str, str], ResultRow] = {}
        for row in rows:
            key = (row.provider, row.output, row.precision)
            if key not in best or _severity(row) > _severity(best[key]):
                best[key] = row
        return list(best.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "passed": bool(self.passed),
            "atol": float(self.atol),
            "rtol": float(self.rtol),
            "tf32": bool(self.tf32),
            "providers_run": list(self.providers_run),
            "providers_skipped": dict(self.providers_skipped),
            "settings": _jsonable(self.settings),
            "model": _jsonable(self.model),
            "results": [row.to_dict() for row in self.results],
            "worst": [row.to_dict() for row in self.worst()],
            "fp16": bool(self.fp16),
            "fp16_atol": float(self.fp16_atol),
            "fp16_rtol": float(self.fp16_rtol),
            "fp16_results": [row.to_dict() for row in self.fp16_results],
            "fp16_worst": [row.to_dict() for row in self.worst(fp16=True)],
            "divergence": [item.to_dict() for item in self.divergence],
            "first_divergent_layer": self.first_divergent_layer,
            "unmatched_layers": dict(self.unmatched_layers),
            "histograms": [h.to_dict() for h in self.histograms],
            "notes": list(self.notes),
            "environment": _jsonable(self.environment),
            "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. a saved ``.json`` report), to render it again."""
        if data.get("schema") != SCHEMA:
            raise InputError(f"not a parity report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        return cls(
            passed=bool(data["passed"]),
            atol=float(data["atol"]),
            rtol=float(data["rtol"]),
            providers_run=list(data.get("providers_run", [])),
            providers_skipped=dict(data.get("providers_skipped", {})),
            results=[ResultRow.from_dict(r) for r in data.get("results", [])],
            fp16=bool(data.get("fp16", False)),
            fp16_atol=float(data.get("fp16_atol", FP16_ATOL)),
            fp16_rtol=float(data.get("fp16_rtol", FP16_RTOL)),
            fp16_results=[ResultRow.from_dict(r) for r in data.get("fp16_results", [])],
            divergence=[LayerDivergence.from_dict(d) for d in data.get("divergence", [])],
            first_divergent_layer=data.get("first_divergent_layer"),
            unmatched_layers=dict(data.get("unmatched_layers", {})),
            tf32=bool(data.get("tf32", False)),
            notes=list(data.get("notes", [])),
            environment=dict(data.get("environment", {})),
            timings={k: float(v) for k, v in data.get("timings", {}).items()},
            histograms=[ErrorHistogram.from_dict(h) for h in data.get("histograms", [])],
            settings=dict(data.get("settings", {})),
            model=dict(data.get("model", {})),
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, TensorInfo):
        return {"name": value.name, "shape": list(value.shape), "dtype": value.dtype}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite_or_none(float(value))
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


# -- providers -----------------------------------------------------------------------------------------------------


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _nvidia_device_present() -> bool:
    if os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0"):
        return True
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def session_providers(provider: str, *, tf32: bool = False) -> list[Any]:
    """The ``providers`` argument of ``ort.InferenceSession`` that runs on ``provider``, with its options.

    CUDA gets ``use_tf32`` ("0" unless ``tf32``): on Ampere and newer GPUs ONNX Runtime otherwise rounds float32
    matmul/convolution inputs to TF32's 10-bit mantissa, which breaks float32 parity. TensorRT is followed by CUDA
    and CPU (for the nodes TensorRT does not take), CUDA by CPU.
    """
    cuda = (CUDA, {"use_tf32": "1" if tf32 else "0"})
    if provider == CUDA:
        return [cuda, CPU]
    if provider == TENSORRT:
        return [(TENSORRT, {}), cuda, CPU]
    return [provider] if provider == CPU else [provider, CPU]


@functools.cache
def _probe(provider: str) -> str | None:
    """None when ``provider`` can run a session here, else why not."""
    import onnxruntime as ort

    gpu_package = _installed("onnxruntime-gpu")
    if provider not in ort.get_available_providers():
        if provider in GPU_PROVIDERS and not gpu_package:
            return "onnxruntime-gpu not installed (this environment has the CPU-only onnxruntime package)"
        return f"not built into this onnxruntime {ort.__version__}"
    if provider == CPU:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(_tiny_model(), options, providers=session_providers(provider))
    except Exception as exc:
        return f"cannot create a session: {_first_line(exc)}"
    if provider not in session.get_providers():
        if provider in GPU_PROVIDERS and not _nvidia_device_present():
            return "no CUDA device"
        if provider == TENSORRT:
            return "TensorRT libraries not found (ONNX Runtime fell back to another provider)"
        return "CUDA 12 / cuDNN 9 libraries not found or unusable (ONNX Runtime fell back to the CPU)"
    return None


def available_providers() -> list[str]:
    """ONNX Runtime providers that can run here, among CPU, CUDA and TensorRT (each probed with a tiny session)."""
    return [provider for provider in KNOWN_PROVIDERS if _probe(provider) is None]


def _how_to_get(provider: str) -> str:
    if provider in GPU_PROVIDERS:
        extra = " and TensorRT 10" if provider == TENSORRT else ""
        return (
            'install the `gpu` extra: pip uninstall -y onnxruntime && pip install "lambda-export[gpu]" '
            "(onnxruntime and onnxruntime-gpu install the same module and must never be installed together); "
            f"it needs an NVIDIA GPU with its driver, CUDA 12 and cuDNN 9{extra}"
        )
    return "use an onnxruntime build that includes it"


def _canonical_provider(name: str) -> str:
    text = str(name).strip()
    lower = text.lower()
    if lower in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[lower]
    for provider in KNOWN_PROVIDERS:
        if lower == provider.lower():
            return provider
    if lower.endswith("executionprovider") and text:
        return text
    choices = ", ".join(sorted({"cpu", "cuda", "tensorrt"}))
    raise InputError(f"--providers {text!r}: unknown provider; choose among {choices} (or a full ONNX Runtime name)")


def resolve_providers(requested: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Providers to run and the ones skipped (name → reason).

    Args:
        requested: short names (cpu, cuda, tensorrt) or full ORT names; None means every available provider, the
            others (CUDA, TensorRT) reported as skipped with the reason.

    Raises:
        InputError: an unknown name or an empty list.
        ProviderUnavailableError: a requested provider cannot run here (the message says how to get it).
    """
    if requested is None:
        run, skipped = [], {}
        for provider in KNOWN_PROVIDERS:
            reason = _probe(provider)
            if reason is None:
                run.append(provider)
            else:
                skipped[provider] = reason
        return run, skipped
    if isinstance(requested, str):
        requested = [item for item in requested.split(",") if item.strip()]
    if not requested:
        raise InputError("--providers: give at least one provider (cpu, cuda, tensorrt)")
    run = []
    for name in requested:
        provider = _canonical_provider(name)
        reason = _probe(provider)
        if reason is not None:
            raise ProviderUnavailableError(
                f"provider {provider} is not available: {reason}; to get it, {_how_to_get(provider)}"
            )
        if provider not in run:
            run.append(provider)
    return run, {}


# -- inputs --------------------------------------------------------------------------------------------------------


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def make_inputs(
    inputs: list[TensorInfo],
    batch_size: int | None,
    distribution: str,
    seed: int,
    *,
    int_high: int = INT_HIGH,
) -> dict[str, np.ndarray]:
    """Seeded random inputs, one array per input, keyed by input name.

    Args:
        inputs: the model's inputs; a dynamic first dim becomes ``batch_size``, every other dim must be known.
        batch_size: the batch; None uses the input's fixed batch dim.
        distribution: one of :data:`DISTRIBUTIONS` for float inputs: "normal" N(0, 1), "uniform" U[0, 1), "zeros",
            "large" N(0, 1)·1e3. Integer inputs get uniform integers in [0, ``int_high``) whatever the distribution
            ("zeros" gives zeros): a safe range for index-like inputs (an embedding input needs ``int_high`` ≤ its
            vocabulary size). Boolean inputs get random booleans.
        seed: NumPy ``default_rng`` seed; inputs are drawn in order from one generator.

    Raises:
        InputError: unknown distribution, unknown non-batch dims, bad batch size.
    """
    if distribution not in DISTRIBUTIONS:
        raise InputError(f"unknown input distribution {distribution!r}; choose among {', '.join(DISTRIBUTIONS)}")
    if int(int_high) < 1:
        raise InputError(f"int_high {int_high}: must be >= 1")
    rng = np.random.default_rng(seed)
    out = {}
    for info in inputs:
        shape = list(info.shape)
        if shape and shape[0] is None:
            if batch_size is None:
                raise InputError(f"input {info.name!r} has a dynamic batch: give a batch size")
            shape[0] = batch_size
        elif shape and batch_size is not None and shape[0] != batch_size:
            raise InputError(f"input {info.name!r} has a fixed batch of {shape[0]}, not {batch_size}")
        if any(d is None for d in shape):
            raise InputError(
                f"input {info.name!r} has unknown dims {_shape_text(info.shape)}: pass your own inputs (.npz) instead"
            )
        if batch_size is not None and batch_size <= 0:
            raise InputError(f"batch size {batch_size}: must be a positive integer")
        dtype = np.dtype(info.dtype)
        if dtype.kind == "f":
            if distribution == "normal":
                array = rng.standard_normal(shape)
            elif distribution == "uniform":
                array = rng.random(shape)
            elif distribution == "large":
                array = rng.standard_normal(shape) * LARGE_SCALE
            else:
                array = np.zeros(shape)
        elif dtype.kind in "iu":
            array = np.zeros(shape) if distribution == "zeros" else rng.integers(0, int(int_high), shape)
        elif dtype.kind == "b":
            array = np.zeros(shape, bool) if distribution == "zeros" else rng.integers(0, 2, shape).astype(bool)
        else:
            raise InputError(f"input {info.name!r}: cannot generate random {dtype} values; pass your own inputs")
        out[info.name] = np.ascontiguousarray(array.astype(dtype))
    return out


def _check_arrays(arrays: dict[str, Any], inputs: list[TensorInfo], where: str) -> dict[str, np.ndarray]:
    """Validate user arrays against the model's inputs; return them cast to the input dtypes."""
    names = [info.name for info in inputs]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise InputError(f"{where}: missing input(s) {', '.join(missing)}; the model's inputs are {', '.join(names)}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise InputError(
            f"{where}: unknown input name(s) {', '.join(extra)}; the model's inputs are {', '.join(names)}"
        )
    out: dict[str, np.ndarray] = {}
    batch = None
    for info in inputs:
        array = np.asarray(arrays[info.name])
        want = np.dtype(info.dtype)
        if array.dtype.kind not in "biuf":
            raise InputError(f"{where}: input {info.name!r} has dtype {array.dtype}; the model expects {want}")
        if not np.can_cast(array.dtype, want, casting="same_kind"):
            raise InputError(f"{where}: input {info.name!r} has dtype {array.dtype}, which cannot be used as {want}")
        if array.ndim != len(info.shape) or any(
            d is not None and d != a for d, a in zip(info.shape, array.shape, strict=False)
        ):
            raise InputError(
                f"{where}: input {info.name!r} has shape {_shape_text(array.shape)}; the model expects "
                f"{_shape_text(info.shape)}"
            )
        if array.ndim == 0 or array.shape[0] == 0:
            raise InputError(f"{where}: input {info.name!r} is empty (batch of 0)")
        if array.dtype.kind == "f":
            bad = ~np.isfinite(array)
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                kind = "NaN" if np.isnan(array).any() else "Inf"
                raise InputError(
                    f"{where}: input {info.name!r} contains {int(bad.sum())} {kind} value(s) (first at index {first})"
                )
        if batch is not None and array.shape[0] != batch[1]:
            raise InputError(
                f"{where}: inputs {batch[0]!r} and {info.name!r} have different batch sizes "
                f"({batch[1]} and {array.shape[0]})"
            )
        batch = (info.name, array.shape[0])
        out[info.name] = np.ascontiguousarray(array.astype(want))
    return out


def load_inputs(path: str | os.PathLike[str], inputs: list[TensorInfo]) -> dict[str, np.ndarray]:
    """Read user inputs: ``.npz`` (keys = input names) or ``.npy`` (single-input models), without pickle.

    Arrays are checked against ``inputs`` (names, rank and known dims, a dtype of the same kind, no NaN/Inf, one
    batch size for all) and cast to the model's dtypes.

    Raises:
        InputError: unreadable file, wrong suffix, wrong names/shapes/dtypes, NaN or Inf (one line naming the input).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such inputs file")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise InputError(
            f"{path}: inputs must be a .npz (keys = input names) or .npy file, not {suffix or 'no suffix'!r}"
        )
    try:
        if suffix == ".npy":
            if len(inputs) != 1:
                raise InputError(
                    f"{path}: a .npy file holds one array but the model has {len(inputs)} inputs "
                    f"({', '.join(i.name for i in inputs)}): use a .npz with one key per input"
                )
            arrays = {inputs[0].name: np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
    except InputError:
        raise
    except Exception as exc:  # ValueError (pickled objects), BadZipFile, OSError, EOFError...
        raise InputError(f"{path}: cannot read the inputs: {_first_line(exc)}") from exc
    return _check_arrays(arrays, inputs, str(path))


# -- running -------------------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _keras_feed(loaded: LoadedModel, feed: dict[str, np.ndarray]) -> Any:
    """The argument the Keras model is called with, as the converter's traced function calls it."""
    try:
        dict_inputs = isinstance(loaded.model.input, dict)
    except (AttributeError, ValueError):
        dict_inputs = False
    if dict_inputs:
        return {info.name: feed[info.name] for info in loaded.inputs}
    arrays = [feed[info.name] for info in loaded.inputs]
    return arrays[0] if len(arrays) == 1 else arrays


def _run_keras(model: Any, argument: Any) -> list[np.ndarray]:
    import keras
    import tensorflow as tf

    with tf.device("/CPU:0"):
        result = model(argument, training=False)
    return [np.asarray(t) for t in keras.tree.flatten(result)]


def _session(model_bytes: bytes, provider: str, tf32: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=session_providers(provider, tf32=tf32))
    if provider not in session.get_providers():
        raise RuntimeError(f"ONNX Runtime fell back from {provider} to {session.get_providers()}")
    return session


def _onnx_io(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[str]]:
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


def _merge_inputs(keras_inputs: list[TensorInfo], onnx_inputs: list[TensorInfo]) -> list[TensorInfo]:
    """Keras input descriptions with the dims the ONNX graph fixes (batch size, spatial sizes given at conversion)."""
    by_name = {info.name: info for info in onnx_inputs}
    merged = []
    for info in keras_inputs:
        other = by_name.get(info.name)
        if other is None or len(other.shape) != len(info.shape):
            merged.append(info)
            continue
        shape = tuple(o if o is not None else k for k, o in zip(info.shape, other.shape, strict=True))
        merged.append(TensorInfo(info.name, shape, info.dtype))
    return merged


def _load_onnx(onnx_model: Any) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model, None
    path = Path(os.fspath(onnx_model))
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable ONNX model: {_first_line(exc)}") from exc


def _model_bytes(model: onnx.ModelProto) -> bytes:
    if model.ByteSize() > 2 * 1024**3 - 1024**2:
        raise InputError("the ONNX model is larger than 2 GiB: verify the saved file (with its external data) instead")
    return model.SerializeToString()


@dataclass
class _InputSet:
    batch_size: int
    distribution: str
    sample: int
    seed: int | None
    feed: dict[str, np.ndarray]
    reference: list[np.ndarray] = field(default_factory=list)


def _derived_seed(seed: int, batch: int, dist_index: int, sample: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, batch, dist_index, sample]).generate_state(1)[0])


# -- environment ---------------------------------------------------------------------------------------------------


def _version(*distributions: str) -> str | None:
    for name in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def environment() -> dict[str, Any]:
    """Versions, ONNX Runtime providers and hardware of this machine, for reports."""
    import onnxruntime as ort

    from lambda_export import __version__

    gpus = _gpu_names()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": _version("tensorflow", "tensorflow-cpu"),
        "keras": _version("keras"),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_package": "onnxruntime-gpu" if _installed("onnxruntime-gpu") else "onnxruntime",
        "tf2onnx": _version("tf2onnx"),
        "numpy": np.__version__,
        "lambda_export": __version__,
        "ort_providers": list(ort.get_available_providers()),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "gpu": ", ".join(gpus) if gpus else None,
    }


# -- locating the first diverging layer ----------------------------------------------------------------------------


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


def _keras_layer_outputs(
    model: Any, layers: list[Any], unmatched: dict[str, str]
) -> tuple[list[tuple[Any, Any]], dict[str, set[str]]]:
    """(layer, its output tensor in ``model``'s graph) for each top-level layer with one call and one output, and
    layer name → names of the layers that read its outputs."""
    import keras

    graph = model if hasattr(model, "_nodes_by_depth") else getattr(model, "_functional", None)
    nodes_by_depth = getattr(graph, "_nodes_by_depth", None)
    successors: dict[str, set[str]] = {}
    probes = []
    if not isinstance(nodes_by_depth, dict):  # not a functional graph: trust layer.output, chain the layers
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


@dataclass
class _Candidate:
    tensor: str
    node_index: int
    matched_by: str


def locate_divergence(
    loaded: LoadedModel,
    onnx_model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    provider: str = CPU,
    tf32: bool = False,
) -> tuple[list[LayerDivergence], str | None, dict[str, str], list[str]]:
    """Compare every Keras layer's output with its ONNX counterpart and name the first layer that diverges.

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

    A layer whose match exceeds the tolerance diverges, unless every matched layer reading its output (directly or
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
        keras_values = _run_keras(probe, _keras_feed(loaded, feed))
    except Exception as exc:
        return [], None, unmatched, [f"cannot build the per-layer Keras model: {_first_line(exc)}"]

    from lambda_export.fp16 import tensor_elem_types

    graph = onnx_model.graph
    types = tensor_elem_types(onnx_model)
    initializers = {init.name for init in graph.initializer}
    constants = {node.output[0] for node in graph.node if node.op_type == "Constant" and node.output}
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
    try:
        session = _session(_model_bytes(extended), provider, tf32)
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(names, feed), strict=True))
    except Exception as exc:
        return [], None, unmatched, [f"cannot run the ONNX graph with intermediate outputs: {_first_line(exc)}"]

    owners = _Owners(order, getattr(model, "name", ""), [node.name for node in graph.node])
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

    by_owner: dict[str, list[_Candidate]] = {}
    for index, node in enumerate(graph.node):
        if node_owner[index]:
            for name in node.output:
                if name in values:
                    by_owner.setdefault(node_owner[index], []).append(_Candidate(name, index, "name"))

    def best_match(reference: np.ndarray, candidates: list[_Candidate]) -> tuple[_Candidate, str, Metrics] | None:
        best = None
        for candidate in candidates:
            value = values[candidate.tensor]
            for layout, perm in _layouts(reference.shape):
                expected = reference if perm is None else np.transpose(reference, perm)
                if tuple(expected.shape) != tuple(value.shape):
                    continue
                metrics = compare(expected, value, atol, rtol)
                key = (metrics.problem is not None, metrics.min_passing_atol, metrics.max_abs, -candidate.node_index)
                if best is None or key < best[0]:
                    best = (key, candidate, layout, metrics)
        return None if best is None else best[1:]

    results: list[LayerDivergence] = []
    last_index = -1
    for (layer, _), reference in zip(probes, keras_values, strict=True):
        match = best_match(reference, by_owner.get(layer.name, []))
        if match is None and layer.name not in fused_into:
            later = [
                i
                for i, owner in enumerate(node_owner)
                if i > last_index and owner is not None and order[owner] > order[layer.name]
            ]
            upper = min(later) if later else len(graph.node)
            window = [
                _Candidate(name, i, "shape")
                for i in range(last_index + 1, upper)
                if node_owner[i] is None
                for name in graph.node[i].output
                if name in values
            ]
            match = best_match(reference, window)
        if match is None:
            if layer.name in fused_into:
                unmatched[layer.name] = f"computed inside the ONNX node of {fused_into[layer.name]} (fused)"
            else:
                unmatched[layer.name] = "no ONNX tensor named after it with a matching shape"
            continue
        candidate, layout, metrics = match
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
            )
        )

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
    results = kept
    first = None
    for item in results:
        if item.passed:
            continue
        group = [*item.fused, item.layer]
        first = min(group, key=order.__getitem__)
        if item.fused:
            notes.append(
                f"{' and '.join(group)} are one ONNX node ({item.onnx_tensor}): the divergence is in one of them"
            )
        break
    return results, first, unmatched, notes


# -- verify --------------------------------------------------------------------------------------------------------


def verify(
    source: Any,
    onnx_model: Any,
    *,
    providers: list[str] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    inputs: dict[str, np.ndarray] | str | os.PathLike[str] | None = None,
    batch_sizes: Sequence[int | None] = (1, 4),
    distributions: Sequence[str] = ("normal", "uniform"),
    samples: int = 1,
    seed: int = 0,
    tf32: bool = False,
    locate: str = "on_failure",
    fp16: bool = False,
    fp16_atol: float = FP16_ATOL,
    fp16_rtol: float = FP16_RTOL,
    trust_code: bool = False,
    imports: list[str] | tuple[str, ...] = (),
    loaded: LoadedModel | None = None,
    progress: Callable[[str], None] | None = None,
    int_high: int = INT_HIGH,
    fp16_output: str | os.PathLike[str] | None = None,
) -> ParityReport:
    """Check that the ONNX model computes what the Keras model computes, on every requested ORT provider.

    Args:
        source: the Keras model: a path (``.h5``, ``.keras``, SavedModel folder), a ``keras.Model``, or ignored when
            ``loaded`` is given.
        onnx_model: path to an ``.onnx`` file or an ``onnx.ModelProto``; its inputs/outputs carry the Keras names.
        providers: ORT providers (short names cpu/cuda/tensorrt or full names); None = all available, the others
            listed in ``providers_skipped``.
        atol, rtol: float32 tolerances of ``|onnx − tf| ≤ atol + rtol·|tf|``. The defaults (1e-4, 1e-3) come from
            float32 itself: one op rounds at 2⁻²⁴ ≈ 6e-8 relative, but TensorFlow and ONNX Runtime sum convolutions
            and matmuls in different orders, fold batch norms into weights and use different exp/rsqrt kernels, so
            errors grow with depth and with the size of the reductions. Measured on the CPU: a single lambda layer
            ≈ 3e-6 max abs; the tiny demo LambdaResNet 2.4e-7 on its softmax output and up to 1.7e-5 inside the
            lambda layer (activations of order 10). atol = 1e-4 leaves ≥ 6× headroom there and ~30× on typical
            layers, for deeper models and other CPUs, while a wrong weight, layout or epsilon shows up at 1e-3 and
            more (a convolution weight scaled by 1.5 moves the demo's probabilities by 4.5e-3). Near-zero outputs
            have per-op relative errors up to 5e-3, so rtol alone cannot work; rtol = 1e-3 (≈ 2¹³ float32 ulps)
            keeps large activations and logits from failing on their absolute error.
        inputs: the user's inputs instead of random ones: a dict name → array or a ``.npz``/``.npy`` path (the batch
            is taken from the data; reported with distribution "user").
        batch_sizes: batch sizes for random inputs; None (or a fixed batch in the ONNX graph) uses the graph's batch.
        distributions: random input distributions, see :func:`make_inputs`.
        samples: seeded random draws per batch size × distribution.
        seed: base seed; each draw's seed is derived from (seed, batch, distribution, sample) and reported.
        tf32: leave TF32 on when a CUDA provider runs (default off on both sides, noted in the report).
        locate: "on_failure", "always" or "never": run :func:`locate_divergence`.
        fp16: also convert the ONNX model to float16 (:func:`lambda_export.fp16.to_float16`) and check it against the
            float32 TensorFlow reference with ``fp16_atol``/``fp16_rtol`` (reported separately, part of ``passed``).
        fp16_atol, fp16_rtol: float16 tolerances (default 1e-2, 1e-2). float16 keeps a 10-bit mantissa: every
            rounding is up to 2⁻¹¹ ≈ 4.9e-4 relative, 8192× float32's, and each op's output is rounded again, so a
            network of depth L accumulates ≈ √L to L such errors, amplified by batch norms and attention logits: a few
            1e-3 for the 20–40 ops of small models. Measured on the tiny demo LambdaResNet (softmax output, batch 1
            and 16, N(0, 1) and U[0, 1) inputs, 3 samples each): max abs 2.7e-4 on ONNX Runtime's CPU (float16
            weights, float32 compute) and 6.1e-4 (max rel 3.1e-3) with every op output rounded to float16, the GPU
            case; 1e-2 leaves ~15× headroom for deeper models. So this check tells whether float16 is accurate enough;
            it is not a bug detector (a convolution near the demo's output scaled by 1.5 moves its probabilities by
            only 4.5e-3): the float32 check is. Inputs of ~1e3 ("large") overflow float16 (max 65504) inside the
            network and fail with Inf/NaN.
        trust_code, imports: as for :func:`lambda_export.loading.load_model`.
        loaded: an already loaded model (skips loading ``source``).
        progress: called with a short message before each long step.
        int_high: integer inputs are drawn from [0, int_high).
        fp16_output: also save the float16 model there (atomically; an existing file is replaced).

    Raises:
        InputError: unreadable model/inputs, mismatched input/output names, bad arguments.
        ProviderUnavailableError: a requested provider cannot run here.
    """
    say = progress or (lambda message: None)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    _check_tolerance(atol, rtol)
    if fp16:
        _check_tolerance(fp16_atol, fp16_rtol)
    if locate not in LOCATE_MODES:
        raise InputError(f"locate={locate!r}: choose among {', '.join(LOCATE_MODES)}")
    if int(samples) < 1:
        raise InputError(f"--samples {samples}: must be >= 1")
    for distribution in distributions:
        if distribution not in DISTRIBUTIONS:
            raise InputError(f"unknown input distribution {distribution!r}; choose among {', '.join(DISTRIBUTIONS)}")
    if inputs is None and (not batch_sizes or not distributions):
        raise InputError("give at least one batch size and one distribution (or your own inputs)")
    for size in batch_sizes:
        if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0):
            raise InputError(f"batch size {size!r}: must be a positive integer")

    run, skipped = resolve_providers(providers)
    if not run:
        raise ProviderUnavailableError("no ONNX Runtime provider can run here")

    step = time.perf_counter()
    if loaded is None:
        if isinstance(source, LoadedModel):
            loaded = source
        else:
            say(f"loading {source if isinstance(source, (str, os.PathLike)) else 'the Keras model'}")
            loaded = load_model(source, trust_code=trust_code, imports=imports)
    proto, onnx_path = _load_onnx(onnx_model)
    timings["load"] = time.perf_counter() - step

    onnx_inputs, onnx_outputs = _onnx_io(proto)
    keras_in = [info.name for info in loaded.inputs]
    keras_out = [info.name for info in loaded.outputs]
    if sorted(i.name for i in onnx_inputs) != sorted(keras_in):
        raise InputError(
            f"the ONNX model's inputs {[i.name for i in onnx_inputs]} do not match the Keras model's inputs {keras_in}"
        )
    if sorted(onnx_outputs) != sorted(keras_out):
        raise InputError(f"the ONNX model's outputs {onnx_outputs} do not match the Keras model's outputs {keras_out}")
    infos = _merge_inputs(loaded.inputs, onnx_inputs)

    # input sets
    sets: list[_InputSet] = []
    inputs_label = "random"
    if inputs is not None:
        if isinstance(inputs, dict):
            feed = _check_arrays(inputs, infos, "inputs")
            inputs_label = "user (in memory)"
        else:
            feed = load_inputs(inputs, infos)
            inputs_label = str(inputs)
        first = next(iter(feed.values()))
        sets.append(_InputSet(int(first.shape[0]) if first.ndim else 1, "user", 0, None, feed))
    else:
        fixed = sorted({info.shape[0] for info in infos if info.shape and info.shape[0] is not None})
        if fixed:
            sizes = [fixed[0]]
            if any(size is not None and size != fixed[0] for size in batch_sizes):
                notes.append(
                    f"the ONNX graph fixes the batch size to {fixed[0]}: batch sizes {list(batch_sizes)} not used"
                )
        else:
            sizes = list(dict.fromkeys(1 if size is None else int(size) for size in batch_sizes))
        for size in sizes:
            for distribution in distributions:
                for sample in range(int(samples)):
                    derived = _derived_seed(seed, size, DISTRIBUTIONS.index(distribution), sample)
                    feed = make_inputs(infos, size, distribution, derived, int_high=int_high)
                    sets.append(_InputSet(size, distribution, sample, derived, feed))

    # TF32
    uses_gpu = any(p in GPU_PROVIDERS for p in run)
    restore_tf32 = None
    import tensorflow as tf

    if uses_gpu and not tf32:
        restore_tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        notes.append(
            "TF32 turned off for float32 parity: ONNX Runtime CUDA use_tf32=0 and "
            "tf.config.experimental.enable_tensor_float_32_execution(False)"
        )
        if TENSORRT in run:
            notes.append(
                "TensorRT has no ONNX Runtime option for TF32; start the process with NVIDIA_TF32_OVERRIDE=0 to rule it out"
            )
    elif uses_gpu:
        notes.append("TF32 left on (tf32=True): GPU matmuls/convolutions round their inputs to a 10-bit mantissa")

    report = ParityReport(
        passed=False,
        atol=float(atol),
        rtol=float(rtol),
        providers_run=list(run),
        providers_skipped=dict(skipped),
        results=[],
        fp16=bool(fp16),
        fp16_atol=float(fp16_atol),
        fp16_rtol=float(fp16_rtol),
        tf32=bool(tf32),
        notes=notes,
        timings=timings,
        settings={
            "batch_sizes": sorted({s.batch_size for s in sets}),
            "distributions": list(dict.fromkeys(s.distribution for s in sets)),
            "samples": int(samples),
            "seed": int(seed),
            "inputs": inputs_label,
            "locate": locate,
            "int_high": int(int_high),
        },
        model={
            "source": loaded.source or "in-memory",
            "onnx": onnx_path or "in-memory",
            "inputs": infos,
            "outputs": loaded.outputs,
        },
    )
    try:
        say(f"TensorFlow reference on the CPU ({len(sets)} input set(s))")
        step = time.perf_counter()
        for item in sets:
            item.reference = _run_keras(loaded.model, _keras_feed(loaded, item.feed))
            if len(item.reference) != len(keras_out):
                raise InputError(
                    f"the Keras model returned {len(item.reference)} outputs, its description lists {len(keras_out)}"
                )
        timings["reference"] = time.perf_counter() - step

        model_bytes = _model_bytes(proto)
        report.results, fp32_hist = _run_candidates(
            model_bytes, run, sets, keras_out, atol, rtol, tf32, "fp32", timings, say
        )
        report.histograms.extend(fp32_hist)

        fp32_passed = bool(report.results) and all(row.metrics.passed for row in report.results)
        if locate == "always" or (locate == "on_failure" and not fp32_passed):
            say("locating the first diverging layer")
            step = time.perf_counter()
            failing = next((row for row in report.results if not row.metrics.passed), None)
            chosen = report.results[0] if failing is None else failing
            item = next(
                s
                for s in sets
                if (s.batch_size, s.distribution, s.sample) == (chosen.batch_size, chosen.distribution, chosen.sample)
            )
            feed = {name: array[:LOCATE_MAX_BATCH] for name, array in item.feed.items()}
            divergence, first, unmatched, locate_notes = locate_divergence(
                loaded, proto, feed, atol=atol, rtol=rtol, provider=chosen.provider, tf32=tf32
            )
            report.divergence, report.first_divergent_layer, report.unmatched_layers = divergence, first, unmatched
            notes.extend(locate_notes)
            if first is not None:
                notes.append(f"first diverging layer: {first} (on {chosen.provider}, {item.distribution} inputs)")
            timings["locate"] = time.perf_counter() - step

        fp16_passed = True
        if fp16:
            from lambda_export.fp16 import emulate_fp16_rounding, to_float16

            say("converting to float16")
            step = time.perf_counter()
            half = to_float16(proto)
            report.fp16_model = half
            if fp16_output is not None:
                from lambda_export.conversion import save_model_atomic

                save_model_atomic(half, fp16_output, overwrite=True)
                notes.append(f"float16 model written to {fp16_output}")
            timings["fp16_convert"] = time.perf_counter() - step
            rows, hist = _run_candidates(
                _model_bytes(half), run, sets, keras_out, fp16_atol, fp16_rtol, tf32, "fp16", timings, say
            )
            report.fp16_results.extend(rows)
            report.histograms.extend(hist)
            if CPU in run:
                rows, hist = _run_candidates(
                    _model_bytes(emulate_fp16_rounding(half)),
                    [CPU],
                    sets,
                    keras_out,
                    fp16_atol,
                    fp16_rtol,
                    tf32,
                    "fp16-emulated",
                    timings,
                    say,
                )
                report.fp16_results.extend(rows)
                report.histograms.extend(hist)
                notes.append(
                    "float16 on the CPU provider: ONNX Runtime has no float16 CPU kernels for most ops and computes them "
                    "in float32 (rows 'fp16'); rows 'fp16-emulated' round every op output to float16, as GPUs store it"
                )
            fp16_passed = all(row.metrics.passed for row in report.fp16_results)
        report.passed = fp32_passed and fp16_passed
    finally:
        if restore_tf32 is not None:
            tf.config.experimental.enable_tensor_float_32_execution(restore_tf32)
        report.environment = environment()
        timings["total"] = time.perf_counter() - started
    return report


def _run_candidates(
    model_bytes: bytes,
    providers: list[str],
    sets: list[_InputSet],
    output_names: list[str],
    atol: float,
    rtol: float,
    tf32: bool,
    precision: str,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> tuple[list[ResultRow], list[ErrorHistogram]]:
    rows: list[ResultRow] = []
    histograms: list[ErrorHistogram] = []
    suffix = "" if precision == "fp32" else f" {precision}"
    candidate_name = "ONNX output" if precision == "fp32" else f"ONNX {precision} output"
    for provider in providers:
        say(f"ONNX Runtime {provider}{suffix}: {len(sets)} input set(s)")
        hist = {name: ErrorHistogram(provider, name, precision) for name in output_names}
        histograms.extend(hist.values())
        step = time.perf_counter()
        try:
            session = _session(model_bytes, provider, tf32)
            error = None
        except Exception as exc:
            session, error = None, f"ONNX Runtime could not create a {provider} session: {_first_line(exc)}"
        timings[f"session[{provider}]{suffix}"] = time.perf_counter() - step
        step = time.perf_counter()
        for item in sets:
            outputs = None
            run_error = error
            if session is not None:
                try:
                    outputs = dict(zip(output_names, session.run(output_names, item.feed), strict=True))
                except Exception as exc:
                    run_error = f"ONNX Runtime failed on {provider}: {_first_line(exc)}"
            for index, name in enumerate(output_names):
                if outputs is None:
                    metrics = Metrics.failure(run_error or "no output")
                else:
                    metrics = compare(item.reference[index], outputs[name], atol, rtol, candidate_name=candidate_name)
                    hist[name].add(item.reference[index], outputs[name])
                rows.append(
                    ResultRow(
                        provider, name, item.batch_size, item.distribution, item.sample, metrics, item.seed, precision
                    )
                )
        timings[f"run[{provider}]{suffix}"] = time.perf_counter() - step
    return rows, histograms
