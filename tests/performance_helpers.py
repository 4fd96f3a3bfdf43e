"""Test helpers shared by tests/passes and tests/conversion (importable from any test: tests/ is on sys.path, as the
folder of the root conftest.py)."""

from __future__ import annotations

FORCED = {"min_elements": 0, "max_density_loss": 1e9}


def force_performance_passes(model, forced: dict | None = None) -> list[str]:
    """Every performance pass on ``model`` in place, in the pipeline's order, each with its size thresholds off (small
    test graphs then take the rewrites that real sizes take); returns the names of the passes whose record says they
    changed the graph. ``forced``: the options to set (default :data:`FORCED`)."""
    from lambda_export.passes.base import PassContext, PassManager
    from lambda_export.passes.pipelines import PERFORMANCE

    forced = FORCED if forced is None else forced
    applied = []
    for one in PERFORMANCE:
        ctx = PassContext(model, options={key: value for key, value in forced.items() if key in one.options})
        manager = PassManager([one])
        manager.run(ctx)
        if manager.log[-1].changed and manager.log[-1].rewritten > 0:
            applied.append(one.name)
    return applied
