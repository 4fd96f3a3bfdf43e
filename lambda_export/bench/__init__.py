"""ONNX Runtime vs TensorFlow: latency, throughput, memory and export cost, measured side by side.

Used by ``lambda-export bench MODEL`` (:mod:`lambda_export.cli.bench`, one user model) and by ``benchmarks/run.py``
(the repository's own grid, ``benchmarks/suite.py``). The method (interleaved rounds, paired ratios, FLOP counts,
memory in fresh subprocesses) and the recommended ONNX Runtime settings are described in
:mod:`lambda_export.bench.harness`.

Layout, one job per module:

* :mod:`~lambda_export.bench.configs`: what can be benchmarked (:class:`LayerConfig`, the built-in models, the
  JSON spec a subprocess rebuilds a model from).
* :mod:`~lambda_export.bench.settings`: :class:`BenchSettings`, every knob of a run. The timing itself (interleaved
  rounds, latency statistics, paired ratios) is the library's :mod:`lambda_export.timing`.
* :mod:`~lambda_export.bench.runners`: TensorFlow functions, the ONNX exports that are timed, inputs, files.
* :mod:`~lambda_export.bench.flops`: analytic and graph FLOP counts.
* :mod:`~lambda_export.bench.profile`: ONNX Runtime's profiler, the slowest nodes.
* :mod:`~lambda_export.bench.memory`: peak memory and export cost, each in a fresh subprocess
  (``python -m lambda_export.bench _worker``, :mod:`~lambda_export.bench.__main__`).
* :mod:`~lambda_export.bench.harness`: one entry end to end, the suite run, the GPU table, the JSON record.
* :mod:`~lambda_export.bench.render`: summary, Markdown tables, chart, JSON writing.

Nothing here imports TensorFlow, ONNX or ONNX Runtime at import time: the memory workers import this package and
measure what their own runtime adds.
"""

from __future__ import annotations

from lambda_export.bench.configs import LayerConfig
from lambda_export.bench.flops import layer_flops, onnx_flops
from lambda_export.bench.harness import RATIO_TARGET_MODEL, Entry, run_suite
from lambda_export.bench.render import environment_text, format_cell, markdown_table, report, summarize
from lambda_export.bench.runners import configure_tensorflow
from lambda_export.bench.settings import BenchSettings
from lambda_export.timing import measure_interleaved, paired_ratio

__all__ = [
    "RATIO_TARGET_MODEL",
    "BenchSettings",
    "Entry",
    "LayerConfig",
    "configure_tensorflow",
    "environment_text",
    "format_cell",
    "layer_flops",
    "markdown_table",
    "measure_interleaved",
    "onnx_flops",
    "paired_ratio",
    "report",
    "run_suite",
    "summarize",
]
