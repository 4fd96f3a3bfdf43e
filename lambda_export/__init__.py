"""Export Keras models with lambda layers to portable ONNX and prove numerical parity with TensorFlow.

The public API (data flows one way: load → convert → rewrite → check → verify → report)::

    from lambda_export import convert, verify

    result = convert("model.keras", "model.onnx")          # ConvertResult: the model, passes, warnings, ...
    report = verify(result.loaded.model, result.model)      # ParityReport: per provider, batch and input kind
    report.passed
    q = quantize("model.keras", "model.int8.onnx", calibration="samples.npz")  # QuantizeResult: int8 + verdict

Layout of the package (one job per module):

* ``errors`` exceptions with exit codes · ``env`` versions and machine facts · ``io`` safe load and atomic writes ·
  ``ort`` ONNX Runtime providers and sessions · ``graph`` the shared ONNX graph helper
* ``loading`` Keras files in (safe by default) · ``conversion`` tf2onnx and the checks · ``passes/`` the graph
  rewrites and their pipeline · ``targets`` what each runtime accepts · ``fp16`` float16 exports
* ``parity/`` inputs, metrics, results, divergence locator, ``verify`` · ``report`` text/HTML/JSON reports
* ``quantization/`` int8 (QDQ) with a measured float exclusion list and an accuracy verdict against TensorFlow
* ``bench/`` the ``lambda-export bench`` machinery · ``triton`` Triton model repositories · ``cli/`` the command line

The heavy names are imported on first use, so ``import lambda_export`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lambda_export.errors import (
    ConversionError,
    InputError,
    LambdaExportError,
    ProviderUnavailableError,
    UnsafeModelError,
)
from lambda_export.version import __version__

# public name → module that defines it (imported on first access)
_LAZY = {
    "convert": "lambda_export.conversion",
    "ConvertResult": "lambda_export.conversion",
    "ExportOptions": "lambda_export.conversion",
    "verify": "lambda_export.parity",
    "ParityConfig": "lambda_export.parity",
    "ParityReport": "lambda_export.parity",
    "load_model": "lambda_export.loading",
    "load_onnx": "lambda_export.io",
    "quantize": "lambda_export.quantization",
    "QuantizeResult": "lambda_export.quantization",
    "int8_verdict": "lambda_export.quantization",
    "Int8Verdict": "lambda_export.quantization",
}

if TYPE_CHECKING:
    from lambda_export.conversion import ConvertResult, ExportOptions, convert
    from lambda_export.io import load_onnx
    from lambda_export.loading import load_model
    from lambda_export.parity import ParityConfig, ParityReport, verify
    from lambda_export.quantization import Int8Verdict, QuantizeResult, int8_verdict, quantize

__all__ = [
    "ConversionError",
    "ConvertResult",
    "ExportOptions",
    "InputError",
    "Int8Verdict",
    "LambdaExportError",
    "ParityConfig",
    "ParityReport",
    "ProviderUnavailableError",
    "QuantizeResult",
    "UnsafeModelError",
    "__version__",
    "convert",
    "int8_verdict",
    "load_model",
    "load_onnx",
    "quantize",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lambda_export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
