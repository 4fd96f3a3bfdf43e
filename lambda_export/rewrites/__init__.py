"""ONNX graph passes that rewrite a model into a more portable form (each takes a ModelProto, returns a new one)."""

from lambda_export.rewrites.einsum import parse_einsum_equation, rewrite_einsum

__all__ = ["parse_einsum_equation", "rewrite_einsum"]
