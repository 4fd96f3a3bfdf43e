"""The contract every graph pass follows, and the manager that runs an ordered list of them.

Modelled on tf2onnx's ``optimizer/`` (one base contract, an ordered registry) and onnxscript's ``rewriter/`` (a
rewrite that checks, then edits):

* A pass is a :class:`GraphPass`: a name and a function ``impl(ctx, **options) -> bool | PassResult`` that edits
  ``ctx.model`` in place and says whether it changed anything (``notes`` carry what the user should know, e.g. an
  Einsum left as it was, and why). A pass that returns "unchanged" must not have touched the graph. Its options are
  its keyword parameters with their defaults (``min_elements: int = 1 << 15``); a pipeline sets them by name in the
  context, and each pass receives the ones it declares.
* A :class:`PassContext` carries the model, the target whose rules the result must keep, the pass options
  (``even_splits_only`` …) and a cache of the static shapes, which is invalidated whenever a pass reports a change
  (shape inference is the expensive part of most passes).
* :meth:`PassContext.rewrite_nodes` is the fixed-point driver of the one-node-at-a-time passes.
* A :class:`PassManager` runs passes in order, to a fixed point if asked, keeps a per-pass log, and with ``guard``
  undoes the passes whose result the target would refuse (the check says which nodes and why).
* Never worse than no pass: a pass that raises is undone (the graph from before it is restored) and skipped with a
  note saying why; with ``PassContext.check`` set, so is a pass whose result fails that check (the pipeline sets it
  when the rewritten graph fails the conversion's checks, and runs again to find the culprit).

Passes are also callable on a bare model, ``fold_affine_into_conv(model)`` or ``split_slow_transposes(model,
min_elements=0)``, which builds a context for that one call and returns whether the graph changed (``run(ctx)``
gives the full :class:`PassResult`).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import onnx

from lambda_export.errors import described, first_line
from lambda_export.graph import GraphIndex, Shapes, static_shapes
from lambda_export.lean import Snapshot
from lambda_export.targets import check_target

__all__ = ["GraphPass", "Pass", "PassContext", "PassManager", "PassRecord", "PassResult", "graph_pass"]


@dataclass(frozen=True)
class PassResult:
    """What one pass did: ``changed`` (truthy when the graph changed) and ``notes`` for the user."""

    changed: bool
    notes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.changed


class PassContext:
    """The model a pipeline rewrites, the target whose rules it keeps, pass options, and a cache of static shapes.

    Args:
        model: edited in place by the passes (a pass may also replace it with :meth:`replace_model`).
        target: a key of :data:`lambda_export.targets.TARGETS`, or None (no target rules to keep).
        options: pass options by name; each pass documents the ones it reads and their defaults.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        target: str | None = None,
        options: Mapping[str, Any] | None = None,
        check: Callable[[onnx.ModelProto], None] | None = None,
    ) -> None:
        self.model = model
        self.target = target
        self.options = dict(options or {})
        self.check = check  # raises when a graph is not acceptable; run after every pass that changed the graph
        self._shapes: Shapes | None = None

    def shapes(self) -> Shapes:
        """Static shapes of every tensor shape inference can determine (cached until the graph changes)."""
        if self._shapes is None:
            self._shapes = static_shapes(self.model)
        return self._shapes

    def invalidate(self) -> None:
        """Forget what was cached about the graph (call after every change)."""
        self._shapes = None

    def replace_model(self, model: onnx.ModelProto) -> None:
        """Continue with ``model`` instead of the current one (for passes that build a new ``ModelProto``)."""
        self.model = model
        self.invalidate()

    def index(self, *, shapes: bool = False) -> GraphIndex:
        """A fresh :class:`GraphIndex` of the main graph, carrying the static shapes when ``shapes`` is set."""
        return GraphIndex(self.model.graph, self.shapes() if shapes else None)

    def rewrite_nodes(self, rewrite: Callable[[GraphIndex, onnx.NodeProto], bool], *, shapes: bool = False) -> bool:
        """Run ``rewrite(index, node)`` over the nodes in graph order until one call changes the graph (returns True),
        then rebuild the index and start again; stop when a whole sweep changes nothing. True if anything changed.

        ``rewrite`` may edit the graph freely before returning True, because the index (and the shapes) are rebuilt
        after every change; it must not edit anything when it returns False.
        """
        changed = False
        while True:
            index = self.index(shapes=shapes)
            if not any(rewrite(index, node) for node in index.graph.node):
                return changed
            self.invalidate()
            changed = True


class Pass(Protocol):
    """The pass contract: a ``name`` and ``run(ctx)`` that edits ``ctx.model`` and reports what it did."""

    name: str

    def run(self, ctx: PassContext) -> PassResult: ...


class GraphPass:
    """A :class:`Pass` made from a function ``impl(ctx, **options) -> bool | PassResult`` (see :func:`graph_pass`).

    ``options`` are ``impl``'s keyword parameters and their defaults; :meth:`run` passes the ones the context sets.
    The object's signature is ``impl``'s with ``model`` first, so ``inspect.signature(pass_)`` lists the options.
    """

    def __init__(self, impl: Callable[..., bool | PassResult], name: str | None = None) -> None:
        self.impl = impl
        self.name = name or impl.__name__
        functools.update_wrapper(self, impl)
        signature = inspect.signature(impl)
        parameters = list(signature.parameters.values())
        self.options = {p.name: p.default for p in parameters[1:]}
        self.__signature__ = signature.replace(
            parameters=[
                parameters[0].replace(name="model", annotation="onnx.ModelProto | PassContext"),
                *parameters[1:],
            ]
        )

    def run(self, ctx: PassContext) -> PassResult:
        options = {name: ctx.options[name] for name in self.options if name in ctx.options}
        result = self.impl(ctx, **options)
        return result if isinstance(result, PassResult) else PassResult(bool(result))

    def __call__(self, model: onnx.ModelProto | PassContext, **options: Any) -> bool:
        """Run on a bare model (in place) with ``options``, or on a context (its options, then ``options``); True
        when the graph changed."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"pass {self.name} has no option {', '.join(unknown)}; its options: {list(self.options)}")
        if isinstance(model, PassContext):
            ctx = PassContext(model.model, model.target, {**model.options, **options}) if options else model
        else:
            ctx = PassContext(model, options=options)
        return self.run(ctx).changed

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


def graph_pass(impl: Callable[..., bool | PassResult]) -> GraphPass:
    """Decorator: turn ``impl(ctx, **options) -> bool | PassResult`` into a :class:`GraphPass` named after it."""
    return GraphPass(impl)


@dataclass
class PassRecord:
    """One entry of a :class:`PassManager`'s log: which pass ran in which round, what it did, how long it took."""

    name: str
    round: int
    changed: bool
    seconds: float
    notes: tuple[str, ...] = ()
    undone: str | None = None  # why the change was taken back (the target guard, a failure or a failed check)


@dataclass
class PassManager:
    """Runs ``passes`` in order on a :class:`PassContext`.

    Args:
        passes: the ordered list (see :mod:`lambda_export.passes.pipelines` for why each order).
        max_rounds: run the whole list again while a round changes the graph, at most this many times.
        guard: keep the target's rules: when the result has more nodes the target refuses than the graph had before,
            start again from that graph and apply the passes one at a time, keeping only those whose result the
            target accepts as well as before (each undone pass is logged with the offending nodes).
        tidy: run after the passes when any changed, not logged (e.g. dead-node elimination).
    """

    passes: Sequence[Pass]
    max_rounds: int = 1
    guard: bool = False
    tidy: Pass | None = None
    log: list[PassRecord] = field(default_factory=list)

    def run(self, ctx: PassContext) -> list[str]:
        """Apply the passes; return the names of those that changed the graph, in the order they first did."""
        applied = self._run_guarded(ctx) if self.guard and ctx.target else self._rounds(ctx, self.passes)
        if applied and self.tidy is not None:
            self._step(ctx, self.tidy, 0, record=False)
        return applied

    def notes(self) -> list[str]:
        """Every note the passes left, in order."""
        return [note for record in self.log for note in record.notes]

    def _step(self, ctx: PassContext, one: Pass, round_index: int, *, record: bool = True) -> PassResult:
        started = time.perf_counter()
        before = Snapshot(ctx.model)  # not a copy of the weights: a pass step would otherwise hold two models
        undone = None
        try:
            result = one.run(ctx)
            if result.changed and ctx.check is not None:
                try:
                    ctx.check(ctx.model)
                except Exception as exc:
                    undone = f"its result failed the checks ({first_line(exc, 200)})"
        except Exception as exc:
            undone = f"it failed ({described(exc, 200)})"
        if undone is not None:
            before.restore(ctx.model)
            result = PassResult(False, (f"pass {one.name} was skipped: {undone}; the graph from before it is kept",))
        if result.changed or undone is not None:
            ctx.invalidate()
        if record or undone is not None:
            record_ = PassRecord(one.name, round_index, result.changed, time.perf_counter() - started, result.notes)
            record_.undone = undone
            self.log.append(record_)
        return result

    def _rounds(self, ctx: PassContext, passes: Iterable[Pass]) -> list[str]:
        applied: list[str] = []
        for round_index in range(self.max_rounds):
            round_changed = False
            for one in passes:
                if self._step(ctx, one, round_index).changed:
                    round_changed = True
                    if one.name not in applied:
                        applied.append(one.name)
            if not round_changed:
                break
        return applied

    def _run_guarded(self, ctx: PassContext) -> list[str]:
        target = ctx.target
        before = len(check_target(ctx.model, target))
        original = Snapshot(ctx.model)
        applied = self._rounds(ctx, self.passes)
        if not applied or len(check_target(ctx.model, target)) <= before:
            return applied
        # find the pass(es) responsible: replay one at a time from the original, keeping only the harmless ones (the
        # model object stays the same: callers of a bare-model pass keep their reference)
        original.restore(ctx.model)
        ctx.invalidate()
        applied = []
        for one in self.passes:
            trial_model = onnx.ModelProto()
            trial_model.CopyFrom(ctx.model)
            trial = PassContext(trial_model, target, ctx.options, ctx.check)
            if not self._step(trial, one, 1).changed:
                continue
            offenses = check_target(trial_model, target)
            if len(offenses) <= before:
                ctx.model.CopyFrom(trial_model)
                ctx.invalidate()
                applied.append(one.name)
            else:
                self.log[-1].undone = f"target {target!r} would refuse: " + "; ".join(map(str, offenses[:3]))
        return applied
