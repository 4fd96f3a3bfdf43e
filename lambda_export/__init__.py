"""Export Keras models with lambda layers to portable ONNX and prove numerical parity with TensorFlow."""

from lambda_export.errors import (
    ConversionError,
    InputError,
    LambdaExportError,
    ProviderUnavailableError,
    UnsafeModelError,
)

__version__ = "0.1.0"

__all__ = [
    "ConversionError",
    "InputError",
    "LambdaExportError",
    "ProviderUnavailableError",
    "UnsafeModelError",
    "__version__",
]
