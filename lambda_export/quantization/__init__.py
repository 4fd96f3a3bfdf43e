"""INT8 quantization with an accuracy verdict: smaller and faster CPU deployment that still gives TensorFlow's answers.

``lambda-export MODEL --quantize int8 [--calibration samples.npz]`` and :func:`quantize` turn a Keras model's ONNX
export into a static int8 QDQ model with ONNX Runtime's quantizer, keep in float what the measurement says int8 breaks,
and judge the result against TensorFlow float32 on the calibration and held-out samples::

    from lambda_export import quantize

    result = quantize("model.h5", "model.int8.onnx", calibration="samples.npz")
    result.passed                  # the verdict: top-1 agreement (classifiers) / cosine against TensorFlow
    result.selection.float_groups  # the kinds of node kept in float, and why: result.summary()["sensitivity"]

Layout (imports flow downwards only):

* :mod:`~lambda_export.quantization.calibration` – the calibration and held-out samples (a file, arrays, or generated
  with a warning);
* :mod:`~lambda_export.quantization.verdict` – the metrics, the pass rule, the runtimes, the worst layers;
* :mod:`~lambda_export.quantization.engine` – ONNX Runtime's quantizer, configured and calibrated once; node groups;
* :mod:`~lambda_export.quantization.sensitivity` – one group at a time against the float32 export; what stays float;
* :mod:`~lambda_export.quantization.api` – :func:`quantize`, :func:`int8_verdict`, :class:`QuantizeResult`.
"""

from __future__ import annotations

from lambda_export.quantization.api import (
    PRECISIONS,
    QuantizeResult,
    check_quantize_arguments,
    int8_verdict,
    quantize,
)
from lambda_export.quantization.calibration import (
    HELD_OUT_FRACTION,
    CalibrationData,
    calibration_data,
    load_calibration,
)
from lambda_export.quantization.engine import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    FLOAT_FOR_SPEED,
    SETTINGS,
    node_groups,
)
from lambda_export.quantization.sensitivity import GroupSensitivity, Selection
from lambda_export.quantization.verdict import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_COSINE,
    RUNTIMES,
    Int8Verdict,
    OutputVerdict,
    compare_output,
)

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_METHOD",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_MIN_COSINE",
    "FLOAT_FOR_SPEED",
    "HELD_OUT_FRACTION",
    "PRECISIONS",
    "RUNTIMES",
    "SETTINGS",
    "CalibrationData",
    "GroupSensitivity",
    "Int8Verdict",
    "OutputVerdict",
    "QuantizeResult",
    "Selection",
    "calibration_data",
    "check_quantize_arguments",
    "compare_output",
    "int8_verdict",
    "load_calibration",
    "node_groups",
    "quantize",
]
