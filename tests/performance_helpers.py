"""Test helpers shared by tests/bench and tests/conversion (importable from any test: tests/ is on sys.path, as the
folder of the root conftest.py)."""

from __future__ import annotations


def force_performance_passes(model) -> list[str]:
    """Every performance pass on ``model`` in place with its size thresholds off (small test graphs then take the
    rewrites that real sizes take); returns the names of the passes that changed the graph."""
    import inspect

    from lambda_export.passes.pipelines import PERFORMANCE

    forced = {"min_elements": 0, "max_density_loss": 1e9}
    applied = []
    for name, fn in ((p.name, p) for p in PERFORMANCE):
        parameters = inspect.signature(fn).parameters
        if fn(model, **{key: value for key, value in forced.items() if key in parameters}):
            applied.append(name)
    return applied
