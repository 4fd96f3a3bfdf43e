"""Numerical parity of an ONNX export with its Keras model (the "verify" step).

The reference is the Keras model in inference mode (``training=False``) on TensorFlow's CPU. Each candidate is an ONNX
Runtime session (all graph optimisations on) on one execution provider. An element passes when

    |onnx − tf| ≤ atol + rtol·|tf|        (evaluated in float64 as  |onnx − tf| − rtol·|tf| ≤ atol)

and a NaN or Inf on either side is always a failure with its own message. :func:`verify` runs this over batch sizes ×
input distributions × seeded samples (or over the user's own inputs), optionally locates the first diverging Keras
layer, optionally checks a float16 export, and returns a :class:`ParityReport` (its JSON schema
``lambda-export/parity-report/v1`` is documented in :mod:`lambda_export.parity.results`).

Layout (imports flow downwards only):

* :mod:`~lambda_export.parity.running` – the Keras reference call, the ONNX model as bytes, one-line error texts;
* :mod:`~lambda_export.parity.inputs` – random and user inputs (:func:`make_inputs`, :func:`load_inputs`,
  :data:`DISTRIBUTIONS`, :data:`INT_HIGH`);
* :mod:`~lambda_export.parity.metrics` – the pass rule (:func:`compare`, :class:`Metrics`, :class:`ErrorHistogram`,
  the default tolerances);
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
    DEFAULT_RTOL,
    FP16_ATOL,
    FP16_RTOL,
    HISTOGRAM_EDGES,
    ErrorHistogram,
    Metrics,
    compare,
)
from lambda_export.parity.results import SCHEMA, LayerDivergence, ParityReport, ResultRow, environment
from lambda_export.parity.verification import ParityConfig, verify

__all__ = [
    "CPU",
    "CUDA",
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "DISTRIBUTIONS",
    "FP16_ATOL",
    "FP16_RTOL",
    "HISTOGRAM_EDGES",
    "INT_HIGH",
    "LOCATE_MODES",
    "SCHEMA",
    "TENSORRT",
    "ErrorHistogram",
    "LayerDivergence",
    "Metrics",
    "ParityConfig",
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
