"""What a parity check found, and its JSON form: :class:`ParityReport` with its rows and per-layer matches.

Report schema ``lambda-export/parity-report/v1`` (:meth:`ParityReport.to_dict`; JSON, floats that are not finite are
written as ``null``)::

    schema                 "lambda-export/parity-report/v1"
    passed                 bool: every provider × output × batch × distribution × sample passed (and float16, if asked)
    rule                   "relative" or "absolute": the rule asked for (each row's metrics.rule says which decided it)
    factor, floor          the relative rule's settings (see lambda_export.parity.metrics)
    float64                {available: bool, reason: str or null}: whether the float64 reference ran, why not
    atol, rtol             float32 tolerances of the absolute rule
    tf32                   bool: TF32 was allowed on GPUs (False: turned off on both sides when a CUDA provider ran)
    providers_run          [ORT provider names]
    providers_skipped      {provider: why it did not run}
    settings               {batch_sizes, distributions, samples, seed, inputs ("random" or a file), locate, int_high}
    model                  {source, onnx, inputs: [{name, shape, dtype}], outputs: [...]}
    results                [row], row = {provider, output, batch_size, distribution, sample, seed, precision, metrics}
                           metrics = {max_abs, max_rel, mean_abs, frac_within, min_passing_atol, passed, problem, size,
                                      rule, vs_float64}; max_abs, max_rel, mean_abs: |onnx − tf| against TensorFlow
                                      float32; frac_within: the share of values within the rule that decided
                                      (absolute: atol + rtol·|tf|; relative: the allowed max error against float64);
                                      min_passing_atol: the smallest atol that would pass (absolute rule; null under
                                      the relative rule, see vs_float64.factor_to_pass)
                           vs_float64 = {tf_max, tf_rms, baseline_max, baseline_rms, onnx_max, onnx_rms, ratio_max,
                                         ratio_rms, allowed_max, allowed_rms, scale, factor, excess, factor_to_pass,
                                         frac_within} (errors against the float64 truth; the row passes when
                                         onnx_max ≤ allowed_max and onnx_rms ≤ allowed_rms, i.e. excess ≤ 1, i.e.
                                         factor_to_pass ≤ factor) or null
    worst                  [row]: the worst row of each provider × output (see :meth:`ParityReport.worst`)
    fp16, fp16_atol, fp16_rtol, fp16_results, fp16_worst
                           float16 check: asked?, its tolerances, its rows (precision "fp16": the float16 model as
                           exported; "fp16-emulated": CPU run of the same model with float16 rounding after every op)
    divergence             [{layer, onnx_tensor, max_abs, passed, class_name, fused, matched_by, layout, max_rel,
                             min_passing_atol, problem, rule, vs_float64}] in Keras topological order
                           (min_passing_atol null under the relative rule, as in results)
    first_divergent_layer  str or null
    unmatched_layers       {layer: why it has no ONNX counterpart}
    histograms             [{provider, output, precision, edges, counts, nonfinite, measure, rules}]: values
                           counted in [edges[i], edges[i+1]), the last bin open ([edges[-1], ∞)); edges[0] = 0;
                           measure "ratio": each value's error over the allowed error of the rule that judged its
                           comparison (|onnx − f64| / allowed_max, or |onnx − tf| / (atol + rtol·|tf|)), beyond the
                           rule's limit above 1; "abs" (older reports): |onnx − tf|; rules: the rules that judged
    warnings               [str]: e.g. an output constant across the inputs, where no check can tell right from wrong
    insensitive_outputs    {output: {samples, spread, constant}}: the outputs those warnings are about
    notes                  [str]
    environment            {python, platform, tensorflow, keras, onnx, onnxruntime, onnxruntime_package, tf2onnx,
                            numpy, lambda_export, ort_providers, cpu, cores, gpu}
    timings                {step: seconds}

:func:`environment` fills ``environment`` from :mod:`lambda_export.env`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lambda_export import env
from lambda_export.errors import InputError
from lambda_export.graph import TensorInfo
from lambda_export.parity.metrics import (
    DEFAULT_FACTOR,
    DEFAULT_FLOOR,
    FP16_ATOL,
    FP16_RTOL,
    ErrorHistogram,
    Metrics,
    TruthErrors,
    finite_or_none,
    none_to,
)

__all__ = ["SCHEMA", "LayerDivergence", "ParityReport", "ResultRow", "environment"]

SCHEMA = "lambda-export/parity-report/v1"


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
    ``layout`` says how the Keras tensor was transposed to match ("same", "channels_first", "channels_last"). ``rule``
    says which rule judged ``passed`` ("relative": ``truth`` holds the errors against the float64 model's layer output).
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
    rule: str = "absolute"
    truth: TruthErrors | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "onnx_tensor": self.onnx_tensor,
            "max_abs": finite_or_none(float(self.max_abs)),
            "passed": bool(self.passed),
            "class_name": self.class_name,
            "fused": list(self.fused),
            "matched_by": self.matched_by,
            "layout": self.layout,
            "max_rel": finite_or_none(float(self.max_rel)),
            "min_passing_atol": None if self.truth is not None else finite_or_none(float(self.min_passing_atol)),
            "problem": self.problem,
            "rule": self.rule,
            "vs_float64": None if self.truth is None else self.truth.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerDivergence:
        inf = float("inf")
        return cls(
            layer=data["layer"],
            onnx_tensor=data["onnx_tensor"],
            max_abs=none_to(data.get("max_abs"), inf),
            passed=bool(data.get("passed")),
            class_name=data.get("class_name", ""),
            fused=list(data.get("fused", [])),
            matched_by=data.get("matched_by", "name"),
            layout=data.get("layout", "same"),
            max_rel=none_to(data.get("max_rel"), inf),
            min_passing_atol=none_to(data.get("min_passing_atol"), inf),
            problem=data.get("problem"),
            rule=data.get("rule", "absolute"),
            truth=None if data.get("vs_float64") is None else TruthErrors.from_dict(data["vs_float64"]),
        )


def _severity(row: ResultRow) -> tuple[int, int, float, float]:
    m = row.metrics
    gap = float(m.truth.excess) if m.truth is not None else float(m.min_passing_atol)
    return (0 if m.passed else 1, 1 if m.problem else 0, gap, float(m.max_abs))


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
    rule: str = "absolute"
    factor: float = DEFAULT_FACTOR
    floor: float = DEFAULT_FLOOR
    float64_reason: str | None = None  # why the relative rule had no float64 reference (None: it had one)
    warnings: list[str] = field(default_factory=list)
    insensitive_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    fp16_model: Any = field(default=None, repr=False, compare=False)  # the float16 onnx.ModelProto (not serialised)

    def worst(self, fp16: bool = False) -> list[ResultRow]:
        """The worst row of each provider × output (× precision), in first-seen order.

        Worst = failed before passed, a NaN/Inf/shape problem before a tolerance miss, then the largest excess over the
        relative rule's allowance (``min_passing_atol`` for rows of the absolute rule), then the largest ``max_abs``.
        """
        rows = self.fp16_results if fp16 else self.results
        best: dict[tuple[str, str, str], ResultRow] = {}
        for row in rows:
            key = (row.provider, row.output, row.precision)
            if key not in best or _severity(row) > _severity(best[key]):
                best[key] = row
        return list(best.values())

    @property
    def float64_available(self) -> bool:
        """The relative rule was asked for and its float64 reference ran."""
        return self.rule == "relative" and self.float64_reason is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "passed": bool(self.passed),
            "rule": self.rule,
            "factor": float(self.factor),
            "floor": float(self.floor),
            "float64": {"available": self.float64_available, "reason": self.float64_reason},
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
            "warnings": list(self.warnings),
            "insensitive_outputs": _jsonable(self.insensitive_outputs),
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
            rule=data.get("rule", "absolute"),
            factor=float(data.get("factor", DEFAULT_FACTOR)),
            floor=float(data.get("floor", DEFAULT_FLOOR)),
            float64_reason=(data.get("float64") or {}).get("reason"),
            warnings=list(data.get("warnings", [])),
            insensitive_outputs=dict(data.get("insensitive_outputs", {})),
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
        return finite_or_none(float(value))
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def environment() -> dict[str, Any]:
    """Versions, ONNX Runtime providers and hardware of this machine, for reports."""
    import onnxruntime

    from lambda_export.version import __version__

    gpus = env.gpu_names()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": env.distribution_version("tensorflow", "tensorflow-cpu"),
        "keras": env.distribution_version("keras"),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_package": "onnxruntime-gpu" if env.installed("onnxruntime-gpu") else "onnxruntime",
        "tf2onnx": env.distribution_version("tf2onnx"),
        "numpy": np.__version__,
        "lambda_export": __version__,
        "ort_providers": list(onnxruntime.get_available_providers()),
        "cpu": env.cpu_model(),
        "cores": os.cpu_count(),
        "gpu": ", ".join(gpus) if gpus else None,
    }
