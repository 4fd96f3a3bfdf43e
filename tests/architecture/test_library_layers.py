"""Layers of the library: the benchmark package sits on top of it, never under it.

``lambda_export.bench`` (``lambda-export bench``) uses the library: conversion, ONNX Runtime sessions, timing
(:mod:`lambda_export.timing`, a library service that ``--quantize int8`` uses too). Nothing else in the library imports
it, lazily or not, except the command-line verb that runs it. Read from the source with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "lambda_export"
BENCH = "lambda_export.bench"
# module -> why it may import the benchmark package
ALLOWED = {"lambda_export/cli/bench.py": "the `lambda-export bench` verb: the command line of the benchmark itself"}


def _imported(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in ``path``, ``from x import y`` counted as both ``x`` and ``x.y``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def test_nothing_outside_the_benchmark_package_imports_it() -> None:
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("lambda_export/bench/") or relative in ALLOWED:
            continue
        for module, line in _imported(path):
            if module == BENCH or module.startswith(BENCH + "."):
                offenders.append(f"{relative}:{line}: imports {module}")
    assert not offenders, "the library imports the benchmark package:\n" + "\n".join(sorted(set(offenders)))


def test_the_walk_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from lambda_export import bench\n    import lambda_export.bench.timing\n")
    assert {module for module, _ in _imported(probe)} >= {"lambda_export.bench", "lambda_export.bench.timing"}
