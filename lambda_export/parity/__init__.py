"""Numerical parity of an ONNX export with its Keras model (the "verify" step).

The reference is the Keras model in inference mode (``training=False``) on TensorFlow's CPU, and the same model
rebuilt in float64 with the same weights (the truth). Each candidate is an ONNX Runtime session (all graph
optimisations on) on one execution provider. The default rule is relative to TensorFlow: an output passes when

    max |onnx − f64| ≤ factor · max |tf − f64| + floor · 2⁻²³ · max |f64|     (and the same for the RMS)

so float32 rounding that grows through a deep network passes while a wrong graph fails. Asked for (``rule="absolute"``,
or explicit ``atol``/``rtol``), or where no float64 model can be built, an element passes when

    |onnx − tf| ≤ atol + rtol·|tf|        (evaluated in float64 as  |onnx − tf| − rtol·|tf| ≤ atol)

A NaN or Inf on either side is always a failure with its own message. An output that barely varies across the inputs
is reported with a warning: no rule can tell a right graph from a wrong one there. :func:`verify` runs this over batch sizes ×
input distributions × seeded samples (or over the user's own inputs), optionally locates the first diverging Keras
layer, optionally checks a float16 export, and returns a :class:`ParityReport` (its JSON schema
``lambda-export/parity-report/v1`` is documented in :mod:`lambda_export.parity.results`).

Layout (imports flow downwards only):

* :mod:`~lambda_export.parity.running` – the Keras reference call, the ONNX model as bytes, one-line error texts;
* :mod:`~lambda_export.parity.inputs` – random and user inputs (:func:`make_inputs`, :func:`load_inputs`,
  :data:`DISTRIBUTIONS`, :data:`INT_HIGH`);
* :mod:`~lambda_export.parity.reference` – the float64 clone of the Keras model (:func:`float64_model`);
* :mod:`~lambda_export.parity.metrics` – the pass rules (:func:`compare`, :func:`compare_to_truth`, :class:`Metrics`,
  :class:`TruthErrors`, :class:`ErrorHistogram`, the default tolerances, factor and floor);
* :mod:`~lambda_export.parity.results` – :class:`ResultRow`, :class:`LayerDivergence`, :class:`ParityReport` and their
  JSON form, :func:`environment`;
* :mod:`~lambda_export.parity.locate` – :func:`locate_divergence`, the first diverging Keras layer;
* :mod:`~lambda_export.parity.verification` – :class:`ParityConfig` and :func:`verify`.

Execution providers and sessions come from :mod:`lambda_export.ort` (:func:`resolve_providers`,
:func:`available_providers`, :func:`session_providers` and the provider names are re-exported here).
"""

from __future__ import annotations

from lambda_export.ort import (
    CPU,
    CUDA,
    TENSORRT,
    available_providers,
    resolve_providers,
    session_providers,
)
from lambda_export.parity.inputs import DISTRIBUTIONS, INT_HIGH, load_inputs, make_inputs
from lambda_export.parity.locate import LOCATE_MODES, locate_divergence
from lambda_export.parity.metrics import (
    DEFAULT_ATOL,
    DEFAULT_FACTOR,
    DEFAULT_FLOOR,
    DEFAULT_RTOL,
    FP16_ATOL,
    FP16_RTOL,
    HISTOGRAM_EDGES,
    RULES,
    ErrorHistogram,
    Metrics,
    TruthErrors,
    compare,
    compare_to_truth,
)
from lambda_export.parity.reference import float64_model
from lambda_export.parity.results import SCHEMA, LayerDivergence, ParityReport, ResultRow, environment
from lambda_export.parity.verification import ParityConfig, verify

__all__ = [
    "CPU",
    "CUDA",
    "DEFAULT_ATOL",
    "DEFAULT_FACTOR",
    "DEFAULT_FLOOR",
    "DEFAULT_RTOL",
    "DISTRIBUTIONS",
    "FP16_ATOL",
    "FP16_RTOL",
    "HISTOGRAM_EDGES",
    "INT_HIGH",
    "LOCATE_MODES",
    "RULES",
    "SCHEMA",
    "TENSORRT",
    "ErrorHistogram",
    "LayerDivergence",
    "Metrics",
    "ParityConfig",
    "ParityReport",
    "ResultRow",
    "TruthErrors",
    "available_providers",
    "compare",
    "compare_to_truth",
    "environment",
    "float64_model",
    "load_inputs",
    "locate_divergence",
    "make_inputs",
    "resolve_providers",
    "session_providers",
    "verify",
]
