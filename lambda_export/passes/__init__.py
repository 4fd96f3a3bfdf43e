"""ONNX graph passes run after tf2onnx (step "rewrite" of load → convert → rewrite → check).

* :mod:`~lambda_export.passes.base` – the contract (a pass edits ``ctx.model`` and returns a ``PassResult``), the
  ``PassContext`` (target, options, cached shapes) and the ``PassManager`` (fixed point, target guard, per-pass log).
* :mod:`~lambda_export.passes.repair` – repairs of what tf2onnx gets wrong where the graph says what was meant (a
  Reshape's 0 that copies the wrong dim); first in ``CLEANUP``.
* :mod:`~lambda_export.passes.cleanup` – exact clean-up and portability passes (every target).
* :mod:`~lambda_export.passes.einsum` (+ :mod:`~lambda_export.passes.einsum_spec`, the equation parser) – Einsum
  into standard ops.
* :mod:`~lambda_export.passes.performance` – exact rewrites for ONNX Runtime's CPU kernels (``optimize="speed"``).
* :mod:`~lambda_export.passes.pipelines` – the ordered lists, with the reasons for the order, and the pipeline.
"""

from lambda_export.passes.base import GraphPass, Pass, PassContext, PassManager, PassRecord, PassResult, graph_pass
from lambda_export.passes.einsum import rewrite_einsum
from lambda_export.passes.einsum_spec import EinsumSpec, parse_einsum_equation
from lambda_export.passes.pipelines import (
    CLEANUP,
    DEFAULT_OPTIMIZE,
    OPTIMIZE_CHOICES,
    PERFORMANCE,
    RewriteResult,
    optimize_for_ort,
    rewrite_for_target,
    run_cleanup,
)

__all__ = [
    "CLEANUP",
    "DEFAULT_OPTIMIZE",
    "OPTIMIZE_CHOICES",
    "PERFORMANCE",
    "EinsumSpec",
    "GraphPass",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "PassResult",
    "RewriteResult",
    "graph_pass",
    "optimize_for_ort",
    "parse_einsum_equation",
    "rewrite_einsum",
    "rewrite_for_target",
    "run_cleanup",
]
