"""The ordered pass lists and the pipeline that runs them after tf2onnx (step "rewrite").

Order matters; each list says why its order is what it is. :func:`rewrite_for_target` is what
:func:`lambda_export.conversion.convert` runs:

1. ``CLEANUP`` to a fixed point (at most 5 rounds): the smallest exact graph that every target can read.
2. ``rewrite_einsum`` when Einsum nodes are left (tf2onnx's own Einsum decomposition is switched off during the
   conversion: it emits Shape/Gather chains), then ``CLEANUP`` again: the rewrite leaves Reshape/Transpose chains
   that the clean-up folds.
3. With ``optimize="speed"`` (the default), ``PERFORMANCE`` once, under the target guard: a pass whose result the
   target would refuse is undone. Last, because ``merge_sibling_matmuls`` and ``merge_transposes`` would undo some of
   its work. ``optimize="size"`` stops after step 2: the fewest-nodes graph.

The managers remove dead nodes after every pass that changed the graph (no pass does it itself), and refuse an option
that no pass of the pipeline declares (``ValueError``). ``RewriteResult.log`` is the per-pass record, one line per
pass with :func:`lambda_export.passes.base.format_log`: what each pass rewrote and, where it looked and refused, why.

Never worse than tf2onnx alone: a pass that raises is skipped (the graph from before it is kept), and when the
rewritten graph fails the caller's ``check``, the pipeline runs again from tf2onnx's graph with the check after every
pass, skipping each pass whose result fails it. Either way the warnings say which pass was skipped and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from lambda_export.lean import Snapshot
from lambda_export.passes.base import Pass, PassContext, PassManager, PassRecord, check_options, format_log
from lambda_export.passes.cleanup import (
    fold_affine_into_conv,
    fold_affine_into_matmul,
    merge_reshapes,
    merge_sibling_matmuls,
    merge_transposes,
    pad_into_max_pool,
    remove_identities,
    squeeze_elementwise_constants,
    squeeze_matmul_constants,
    squeeze_to_reshape,
)
from lambda_export.passes.einsum import rewrite_einsum_nodes
from lambda_export.passes.performance import (
    conv_along_width,
    conv_as_dense_matmul,
    conv_output_channels_last,
    flatten_transposed_matmul,
    reshape_before_output_add,
    split_slow_transposes,
    transpose_as_identity_matmul,
    unmerge_split_matmul,
)
from lambda_export.passes.repair import fix_reshape_zero_copies
from lambda_export.targets import TARGETS

__all__ = [
    "CLEANUP",
    "CLEANUP_ROUNDS",
    "DEFAULT_OPTIMIZE",
    "OPTIMIZE_CHOICES",
    "PERFORMANCE",
    "RewriteResult",
    "optimize_for_ort",
    "pipeline_passes",
    "rewrite_for_target",
    "run_cleanup",
]

# "speed" (the default): CLEANUP + PERFORMANCE, the graph ONNX Runtime runs fastest; "size": CLEANUP only, the fewest
# nodes. Both are exact (the same numbers up to the order of floating-point additions) and obey the target's rules.
OPTIMIZE_CHOICES = ("speed", "size")
DEFAULT_OPTIMIZE = "speed"
CLEANUP_ROUNDS = 5

CLEANUP: tuple[Pass, ...] = (
    # before everything: a Reshape whose 0 copies the wrong dim (tf2onnx, keras-hub's MiT) makes every shape inferred
    # downstream of it wrong, and the passes below read those shapes (squeeze_to_reshape would write a wrong one into
    # a constant); merge_reshapes refuses a shape with a 0, so it also merges the repaired Reshape where it can
    fix_reshape_zero_copies,
    # first: tf2onnx's Identity nodes sit between producers and consumers and hide every pattern below
    remove_identities,
    # before the folds: they take 2D constant weights only
    squeeze_matmul_constants,
    # batch-norm and other per-channel affine ops into the weights, before the weights are merged
    fold_affine_into_matmul,
    fold_affine_into_conv,
    # forms OpenCV 4.6 reads; before merge_reshapes, which then collapses the new Reshape with its neighbours
    squeeze_to_reshape,
    squeeze_elementwise_constants,
    # after the folds, so that the folded weights are the ones merged (q/k/v projections → one GEMM + Split)
    merge_sibling_matmuls,
    # collapse the chains the passes above and tf2onnx leave (the manager removes what any pass left dead)
    merge_reshapes,
    merge_transposes,
    # last: the Pad → MaxPool pairs as the transpose merges leave them (tf2onnx moves the NHWC Transpose of a padded
    # pool away from between the two)
    pad_into_max_pool,
)

PERFORMANCE: tuple[Pass, ...] = (
    # first: it matches the Conv → Reshape → Transpose chain of the local lambda layer before the transpose passes
    # below rewrite that Transpose
    conv_as_dense_matmul,
    # a 1D layer's (T, 1) convolution that stays a Conv runs along the width; before conv_output_channels_last, which
    # then finds the same Conv → Reshape chain on the (1, T) map
    conv_along_width,
    # the same chain where the Conv stays (larger maps); before split_slow_transposes, which would split its
    # (0, 3, 2, 1) Transpose into two moves, and transpose_as_identity_matmul, which leaves the NHWC move alone
    conv_output_channels_last,
    # undoes merge_sibling_matmuls where ORT's single-threaded Split costs more than the merged GEMM saves
    unmerge_split_matmul,
    # before the transpose passes: the Transpose it keeps must stay recognisable as "swap the last two axes"
    flatten_transposed_matmul,
    # generic permutations → chains of single-axis moves; then the short-axis moves that are left → GEMM with I
    split_slow_transposes,
    transpose_as_identity_matmul,
    # last: it only looks at the graph's output Reshape
    reshape_before_output_add,
)


@dataclass
class RewriteResult:
    """What :func:`rewrite_for_target` did: the rewritten model, the passes that changed it (first-change order),
    warnings for the user (Einsum nodes left and why), and every pass run with its timing."""

    model: onnx.ModelProto
    passes: list[str]
    warnings: list[str] = field(default_factory=list)
    log: list[PassRecord] = field(default_factory=list)

    @property
    def ran(self) -> list[str]:
        """Every pass the pipeline ran, in first-run order, whether or not it changed the graph: what the ONNX file's
        ``rewrite_passes`` metadata records. Unlike :attr:`passes` it does not depend on the node order or the
        redundant nodes tf2onnx left (which vary between runs in one process; the rewritten graph does not)."""
        return list(dict.fromkeys(record.name for record in self.log))

    def log_lines(self) -> list[str]:
        """The per-pass log, one line per pass (:func:`lambda_export.passes.base.format_log`)."""
        return format_log(self.log)


def pipeline_passes(optimize: str = DEFAULT_OPTIMIZE) -> tuple[Pass, ...]:
    """Every pass the pipeline of ``optimize`` may run (the registry the tests run one by one)."""
    return (*CLEANUP, rewrite_einsum_nodes, *(PERFORMANCE if optimize == "speed" else ()))


def _target_options(target: str | None) -> dict[str, bool]:
    """Pass options a target's rules imply: OpenCV 4.6 cuts a Split into equal parts only."""
    return {"even_splits_only": bool(target and TARGETS[target].no_broadcast)}


def rewrite_for_target(
    model: onnx.ModelProto,
    target: str = "portable",
    optimize: str = DEFAULT_OPTIMIZE,
    check: Callable[[onnx.ModelProto], None] | None = None,
) -> RewriteResult:
    """Run the pipeline of the module docstring on ``model`` (in place, unless the Einsum rewrite builds a new model:
    use ``RewriteResult.model``).

    Args:
        model: a converted model (tf2onnx's output with the Keras input/output names).
        target: a key of :data:`lambda_export.targets.TARGETS`; its rules decide pass options and the guard.
        optimize: ``"speed"`` or ``"size"`` (see :data:`OPTIMIZE_CHOICES`).
        check: raises when a graph is not acceptable (the conversion's structural checks). When the result fails it,
            the pipeline runs again from ``model`` as it was, checking after every pass and skipping the passes
            whose result fails.
    """
    # the model as it was, for the retry: without a copy of the weights (passes never change an initializer in place)
    snapshot = Snapshot(model) if check is not None else None
    result = _run_pipeline(PassContext(model, target, _target_options(target)), optimize)
    if snapshot is None or check is None:
        return result
    try:
        check(result.model)
    except Exception:
        original = onnx.ModelProto()
        snapshot.restore(original)
        retry = _run_pipeline(PassContext(original, target, _target_options(target), check), optimize)
        retry.log = result.log + retry.log
        return retry
    return result


def _run_pipeline(ctx: PassContext, optimize: str) -> RewriteResult:
    log: list[PassRecord] = []

    options = ctx.options
    check_options(pipeline_passes(optimize), options)  # an option no pass declares would be dropped silently

    def run(manager: PassManager) -> list[str]:
        ctx.options = {name: value for name, value in options.items() if any(name in p.options for p in manager.passes)}
        applied = manager.run(ctx)
        log.extend(manager.log)
        return applied

    passes = run(PassManager(CLEANUP, max_rounds=CLEANUP_ROUNDS))
    if run(PassManager([rewrite_einsum_nodes])):
        passes.append(rewrite_einsum_nodes.name)
        passes.extend(p for p in run(PassManager(CLEANUP, max_rounds=CLEANUP_ROUNDS)) if p not in passes)
    if optimize == "speed":
        passes.extend(run(PassManager(PERFORMANCE, guard=True)))
    ctx.options = options
    warnings = list(dict.fromkeys(note for record in log for note in record.notes))  # each once, in order
    return RewriteResult(ctx.model, passes, warnings, log)


def run_cleanup(model: onnx.ModelProto, max_rounds: int = CLEANUP_ROUNDS, even_splits_only: bool = False) -> list[str]:
    """Run ``CLEANUP`` in place until nothing changes; return the names of the passes that changed the graph.

    ``even_splits_only`` restricts ``merge_sibling_matmuls`` to equal widths (for OpenCV 4.6 targets).
    """
    ctx = PassContext(model, options={"even_splits_only": even_splits_only})
    return PassManager(CLEANUP, max_rounds=max_rounds).run(ctx)


def optimize_for_ort(model: onnx.ModelProto, target: str | None = "portable") -> list[str]:
    """Run every ``PERFORMANCE`` pass on ``model`` in place; return the names of the passes that changed it.

    With ``target`` (a key of ``lambda_export.targets.TARGETS``), a pass whose result the target would refuse (more
    offending nodes than before) is undone, so the graph stays as portable as it was.
    """
    ctx = PassContext(model, target)
    return PassManager(PERFORMANCE, guard=True).run(ctx)
