"""The ``lambda-export`` command line: convert + verify + report, and one verb per piece of the job.

    lambda-export MODEL [-o OUT.onnx] [options]     convert, verify parity, report (same as `lambda-export export`)
    lambda-export verify MODEL ONNX [options]       parity of an existing ONNX file against the Keras model
    lambda-export inspect ONNX [--json]             inputs/outputs, op histogram, opset, target checks, metadata
    lambda-export demo [--out DIR]                  build, train and export the sample model (what `make demo` runs)
    lambda-export bench MODEL                       ONNX Runtime vs TensorFlow latency, side by side
    lambda-export triton ONNX --repo DIR            write a Triton Inference Server model repository

Exit codes: 0 parity holds everywhere it ran; 1 parity failed; 2 bad usage or unreadable input; 3 conversion failed;
130 interrupted (SIGINT); 143 terminated (SIGTERM). Errors are one line on stderr (``-v`` adds the traceback).

Layout: :mod:`.app` (the group, lazy verb loading, signals, errors → exit codes), :mod:`.options` (option groups
parsed into typed objects, option parsers, :func:`~.options.cli_message`), and one module per verb defining
``command``: :mod:`.export`, :mod:`.verify`, :mod:`.inspect`, :mod:`.demo`, :mod:`.bench`, :mod:`.triton`.
"""

from __future__ import annotations

from lambda_export.cli.app import EXIT_TERMINATED, STATE, cli, main
from lambda_export.cli.options import OPTIMIZE_CHOICES, RESULT_SCHEMA, TARGET_CHOICES

__all__ = ["EXIT_TERMINATED", "OPTIMIZE_CHOICES", "RESULT_SCHEMA", "STATE", "TARGET_CHOICES", "cli", "main"]
