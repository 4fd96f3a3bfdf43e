"""The contract every graph pass follows, and the manager that runs an ordered list of them.

Modelled on tf2onnx's ``optimizer/`` (one base contract, an ordered registry) and onnxscript's ``rewriter/`` (a rule
is a match that says why it refuses, and a rewrite kept apart from it):

* A pass is a :class:`GraphPass`: a ``name``, the ``options`` it declares (keyword parameters with their defaults,
  ``min_elements: int = 1 << 15``) and ``run(ctx) -> PassResult`` (``changed``, ``notes`` for the user, how many
  places it ``rewritten`` and the counted reasons it ``refused`` the others). A pass that reports "unchanged" must not
  have touched the graph.
* Passes that rewrite the graph node by node are :class:`RewritePass` es made of :class:`Rule` s. A rule is two
  functions: ``match(g, node, **options)`` looks at one node and returns what the rewrite needs (any object), or
  :class:`NoMatch` ``("why")`` when the node is of the kind the rule rewrites but cannot be rewritten (counted by
  reason in the pass's record), or None when the node is not the rule's business at all (not counted); it never edits
  the graph. ``rewrite(g, found)`` applies a match and always succeeds: every check belongs in ``match``.
* The driver (:meth:`RewritePass.run`) sweeps the nodes in graph order. Shape inference, the expensive part, runs
  once per sweep: every match of a sweep reads that sweep's shapes (``g.shapes``), and each match is checked on the
  graph as the rewrites before it in the sweep left it (the :class:`GraphIndex` is rebuilt after each rewrite, which
  is cheap). Tensors a rewrite creates have no shape until the next sweep, so a rule that needs one refuses them until
  then. A fixed-point pass matches a node again right after rewriting it (a Conv → BatchNorm → Mul chain folds both in
  one sweep) and sweeps again, with fresh shapes, until a sweep rewrites nothing; the others sweep once.
* A :class:`PassContext` carries the model, the target whose rules the result must keep, the pass options
  (``even_splits_only`` …) and a cache of the static shapes, invalidated whenever a pass reports a change.
* A :class:`PassManager` runs passes in order, to a fixed point if asked, and keeps a per-pass log
  (:class:`PassRecord`; :func:`format_log` writes it as the per-pass lines of ``-v``). It is the one place that removes
  dead nodes: after every pass that changed the graph (no pass removes what it bypassed itself). It refuses a context
  option that none of its passes declares (``ValueError`` naming it and the declared ones). With ``guard`` it undoes
  the passes whose result the target would refuse (the check says which nodes and why).
* Never worse than no pass: a pass that raises is undone (the graph from before it is restored) and skipped with a
  note saying why; with ``PassContext.check`` set, so is a pass whose result fails that check (the pipeline sets it
  when the rewritten graph fails the conversion's checks, and runs again to find the culprit).

Names a pass must keep (what :func:`lambda_export.parity.locate.locate_divergence` reads to map every Keras layer to
an ONNX tensor; ``tests/passes/test_every_pass.py`` runs every registered pass where it fires and checks that the
locator still maps the same layers):

1. The output tensor names of what it replaces: the last node of a replacement writes the tensor the replaced nodes
   wrote (a Keras layer's output is read from it, by name). A removed node's readers read a tensor computing the same
   values (a bypassed Identity / folded Mul: its input); a bypassed graph output keeps its name.
2. The layer a new node belongs to: new nodes are named ``<name of the node they replace>/<what>`` (the locator gives
   a node to the layer named by the first path segment of its name, outputs or weights that is a layer name).
3. A constant folded from a later layer into an earlier layer's node is named after the later layer's constant
   (``fold_affine_into_conv``'s bias after the batch norm's): the node then reads as the earlier layer fused into the
   later one, whose output it now computes.

Passes are also callable on a bare model, ``fold_affine_into_conv(model)`` or ``split_slow_transposes(model,
min_elements=0)``: a manager of that one pass (dead nodes removed, options checked, errors raised rather than undone)
that returns whether the graph changed (``run(ctx)`` gives the full :class:`PassResult`).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx

from lambda_export.errors import described, first_line
from lambda_export.graph import GraphIndex, Shapes, skeleton, static_shapes, subgraph_reads
from lambda_export.lean import Snapshot
from lambda_export.targets import check_target

__all__ = [
    "GraphPass",
    "NoMatch",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "PassResult",
    "RewritePass",
    "Rule",
    "SweepIndex",
    "check_options",
    "format_log",
    "graph_pass",
    "remove_dead_nodes",
]

Refusals = tuple[tuple[str, int], ...]  # (reason, how many nodes), most frequent first


@dataclass(frozen=True)
class NoMatch:
    """What a rule's ``match`` returns when it looked at a node of its kind and refused it: ``reason`` says why
    (short and countable: "kernel larger than the map", not the node's name). Falsy."""

    reason: str

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True)
class PassResult:
    """What one pass did: ``changed`` (truthy when the graph changed), ``notes`` for the user, and for rule-based
    passes how many places it ``rewritten`` and why it ``refused`` the nodes it looked at and left."""

    changed: bool
    notes: tuple[str, ...] = ()
    rewritten: int = 0
    refused: Refusals = ()

    def __bool__(self) -> bool:
        return self.changed


def _counted(counter: Counter[str]) -> Refusals:
    return tuple(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


class PassContext:
    """The model a pipeline rewrites, the target whose rules it keeps, pass options, and a cache of static shapes.

    Args:
        model: edited in place by the passes (a pass may also replace it with :meth:`replace_model`).
        target: a key of :data:`lambda_export.targets.TARGETS`, or None (no target rules to keep).
        options: pass options by name; each pass declares the ones it reads and their defaults.
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
        self.shape_inferences = 0  # how many times shape inference ran (for tests and the log)

    def shapes(self) -> Shapes:
        """Static shapes of every tensor shape inference can determine (cached until the graph changes)."""
        if self._shapes is None:
            self._shapes = static_shapes(self.model)
            self.shape_inferences += 1
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


class Pass(Protocol):
    """The pass contract: a ``name``, the ``options`` it declares, and ``run(ctx)`` that edits ``ctx.model`` and
    reports what it did."""

    name: str
    options: Mapping[str, Any]

    def run(self, ctx: PassContext) -> PassResult: ...


def check_options(passes: Iterable[Pass], options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for an option in ``options`` that none of ``passes`` declares (it would be dropped)."""
    passes = list(passes)
    declared = {name for one in passes for name in one.options}
    unknown = sorted(set(options) - declared)
    if unknown:
        by_pass = "; ".join(f"{one.name}: {', '.join(one.options)}" for one in passes if one.options) or "none"
        raise ValueError(
            f"option {', '.join(map(repr, unknown))} is declared by no pass in this pipeline (declared options: {by_pass})"
        )


class GraphPass:
    """A :class:`Pass` made from a function ``impl(ctx, **options) -> bool | PassResult`` (see :func:`graph_pass`).

    ``options`` are ``impl``'s keyword parameters and their defaults; :meth:`run` passes the ones the context sets.
    The object's signature is ``(model, **options)``, so ``inspect.signature(pass_)`` lists the options.
    """

    def __init__(self, impl: Callable[..., bool | PassResult], name: str | None = None) -> None:
        self.impl = impl
        self.name = name or impl.__name__
        functools.update_wrapper(self, impl)
        parameters = list(inspect.signature(impl).parameters.values())[1:]
        self._declare({p.name: p.default for p in parameters}, parameters)

    def _declare(self, options: dict[str, Any], parameters: list[inspect.Parameter]) -> None:
        self.options = options
        model = inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="onnx.ModelProto")
        self.__signature__ = inspect.Signature([model, *parameters], return_annotation="bool")

    def _options(self, ctx: PassContext) -> dict[str, Any]:
        return {name: ctx.options[name] for name in self.options if name in ctx.options}

    def run(self, ctx: PassContext) -> PassResult:
        result = self.impl(ctx, **self._options(ctx))
        return result if isinstance(result, PassResult) else PassResult(bool(result))

    def __call__(self, model: onnx.ModelProto | PassContext, **options: Any) -> bool:
        """Run on a bare model (in place) with ``options``, or on a context (its options, then ``options``), as a
        manager of this one pass (dead nodes removed; errors raised); True when the graph changed."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"pass {self.name} has no option {', '.join(unknown)}; its options: {list(self.options)}")
        if isinstance(model, PassContext):
            ctx = PassContext(model.model, model.target, {**model.options, **options}) if options else model
        else:
            ctx = PassContext(model, options=options)
        ctx.options = self._options(ctx)  # a context's other options belong to other passes
        return bool(PassManager([self], undo_failures=False).run(ctx))

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


def graph_pass(impl: Callable[..., bool | PassResult]) -> GraphPass:
    """Decorator: turn ``impl(ctx, **options) -> bool | PassResult`` into a :class:`GraphPass` named after it."""
    return GraphPass(impl)


class SweepIndex(GraphIndex):
    """The :class:`GraphIndex` a rule sees: the graph as it is now, the sweep's shapes, and the model (its opsets)
    with the element types of the sweep (one inference, on the first :meth:`elem_type` call of the sweep)."""

    def __init__(self, model: onnx.ModelProto, shapes: Shapes | None, types: dict[str, int]) -> None:
        super().__init__(model.graph, shapes)
        self.model = model
        self._types = types  # shared by the sweep's indexes

    def opset(self) -> int:
        """The model's default-domain opset (13 when it names none)."""
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def elem_type(self, name: str) -> np.dtype:
        """The element type of tensor ``name`` (float32 when inference cannot tell)."""
        if not self._types:
            inferred = onnx.shape_inference.infer_shapes(skeleton(self.model))
            for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
                self._types[value.name] = value.type.tensor_type.elem_type
            self._types[""] = 0  # asked once per sweep, even for a graph without typed values
        elem_type = self._types.get(name)
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else np.dtype(np.float32)


@dataclass(frozen=True)
class Rule:
    """One node rewrite: ``match(g, node, **options) -> found | NoMatch | None`` (never edits the graph) and
    ``rewrite(g, found)`` (always succeeds). ``g`` is a :class:`SweepIndex` of the graph as it is now, with the
    sweep's shapes."""

    match: Callable[..., Any]
    rewrite: Callable[[SweepIndex, Any], None]


class RewritePass(GraphPass):
    """A pass made of :class:`Rule` s, run by the sweep driver of the module docstring.

    Args:
        name: the pass's name (in logs, ``rewrite_passes`` metadata and errors).
        rules: applied in order, one sweep each per round of sweeps.
        doc: the pass's docstring (what it rewrites, why, and when it is exact).
        shapes: the rules read ``g.shapes`` (one shape inference per sweep); without it ``g.shapes`` is empty.
        fixed_point: sweep until nothing changes (and match a node again after rewriting it); else one sweep.

    Options are the keyword parameters of the rules' ``match`` functions after ``(g, node)``, with their defaults.
    """

    def __init__(
        self, name: str, rules: Sequence[Rule], doc: str, *, shapes: bool = False, fixed_point: bool = True
    ) -> None:
        self.name = self.__name__ = self.__qualname__ = name
        self.__doc__ = doc
        self.__module__ = rules[0].match.__module__
        self.rules = tuple(rules)
        self.shapes = shapes
        self.fixed_point = fixed_point
        parameters: dict[str, inspect.Parameter] = {}
        for rule in self.rules:
            for parameter in list(inspect.signature(rule.match).parameters.values())[2:]:
                parameters.setdefault(parameter.name, parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        self._declare({p.name: p.default for p in parameters.values()}, list(parameters.values()))

    def run(self, ctx: PassContext) -> PassResult:
        options = self._options(ctx)
        rewritten = 0
        while True:
            shapes = ctx.shapes() if self.shapes else None  # one inference per sweep
            refused: Counter[str] = Counter()  # the last sweep's: why the nodes left as they are were refused
            types: dict[str, int] = {}
            done = sum(self._sweep(ctx.model, rule, shapes, types, options, refused) for rule in self.rules)
            rewritten += done
            if done:
                ctx.invalidate()
            if not done or not self.fixed_point:
                return PassResult(rewritten > 0, rewritten=rewritten, refused=_counted(refused))

    def _sweep(
        self,
        model: onnx.ModelProto,
        rule: Rule,
        shapes: Shapes | None,
        types: dict[str, int],
        options: Mapping[str, Any],
        refused: Counter[str],
    ) -> int:
        """One sweep of ``rule`` over the nodes the graph had when it started; the number of rewrites."""
        graph = model.graph
        index = SweepIndex(model, shapes, types)
        alive = {id(node) for node in graph.node}
        done = 0
        for node in list(graph.node):
            again = False
            while id(node) in alive:
                found = rule.match(index, node, **options)
                if isinstance(found, NoMatch) and not again:
                    refused[found.reason] += 1
                if found is None or isinstance(found, NoMatch):
                    break
                rule.rewrite(index, found)
                done += 1
                index = SweepIndex(model, shapes, types)
                alive = {id(n) for n in graph.node}
                if not self.fixed_point:
                    break
                again = True
        return done


def remove_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove the nodes whose outputs nobody reads and the initializers no node reads (subgraph bodies' reads count);
    return how many nodes and initializers went."""
    needed = {out.name for out in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
            needed.update(subgraph_reads(node))  # subgraphs (If/Loop) read outer names implicitly
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(keep))
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    return removed + len(unused)


@dataclass
class PassRecord:
    """One entry of a :class:`PassManager`'s log: which pass ran in which round, what it did, how long it took."""

    name: str
    round: int
    changed: bool
    seconds: float
    notes: tuple[str, ...] = ()
    undone: str | None = None  # why the change was taken back (the target guard, a failure or a failed check)
    rewritten: int = 0
    refused: Refusals = ()
    dead: int = 0  # dead nodes and initializers the manager removed after the pass


def format_log(log: Iterable[PassRecord]) -> list[str]:
    """One line per pass (in the order they first ran; rounds summed, refusals as of the pass's last run):
    ``conv_as_dense_matmul: 2 rewritten; refused 3 (kernel larger than the map: 2, group > 1: 1)``."""
    by_name: dict[str, list[PassRecord]] = {}
    for record in log:
        by_name.setdefault(record.name, []).append(record)
    lines = []
    for name, records in by_name.items():
        rewritten = sum(r.rewritten for r in records)
        changed = any(r.changed for r in records)
        parts = [f"{rewritten} rewritten" if rewritten or not changed else "changed"]
        refused = records[-1].refused
        if refused:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in refused)
            parts.append(f"refused {sum(count for _, count in refused)} ({reasons})")
        dead = sum(r.dead for r in records)
        if dead:
            parts.append(f"{dead} dead node(s)/initializer(s) removed after it")
        parts += [f"undone: {r.undone}" for r in records if r.undone]
        seconds = sum(r.seconds for r in records)
        lines.append(f"{name}: {'; '.join(parts)} [{len(records)} run(s), {seconds * 1000:.0f} ms]")
    return lines


@dataclass
class PassManager:
    """Runs ``passes`` in order on a :class:`PassContext`.

    Args:
        passes: the ordered list (see :mod:`lambda_export.passes.pipelines` for why each order).
        max_rounds: run the whole list again while a round changes the graph, at most this many times.
        guard: keep the target's rules: when the result has more nodes the target refuses than the graph had before,
            start again from that graph and apply the passes one at a time, keeping only those whose result the
            target accepts as well as before (each undone pass is logged with the offending nodes).
        undo_failures: a pass that raises is undone and skipped with a note (else the error propagates).
    """

    passes: Sequence[Pass]
    max_rounds: int = 1
    guard: bool = False
    undo_failures: bool = True
    log: list[PassRecord] = field(default_factory=list)

    def run(self, ctx: PassContext) -> list[str]:
        """Apply the passes; return the names of those that changed the graph, in the order they first did.

        Raises:
            ValueError: ``ctx.options`` has an option that none of the passes declares.
        """
        check_options(self.passes, ctx.options)
        return self._run_guarded(ctx) if self.guard and ctx.target else self._rounds(ctx, self.passes)

    def notes(self) -> list[str]:
        """Every note the passes left, in order."""
        return [note for record in self.log for note in record.notes]

    def _step(self, ctx: PassContext, one: Pass, round_index: int) -> PassResult:
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
            if not self.undo_failures:
                raise
            undone = f"it failed ({described(exc, 200)})"
        if undone is not None:
            before.restore(ctx.model)
            result = PassResult(False, (f"pass {one.name} was skipped: {undone}; the graph from before it is kept",))
        dead = 0
        if result.changed or undone is not None:
            ctx.invalidate()
        if result.changed:
            dead = remove_dead_nodes(ctx.model.graph)  # the one place dead nodes go: no pass leaves them to the next
        record = PassRecord(one.name, round_index, result.changed, time.perf_counter() - started, result.notes)
        record.undone, record.rewritten, record.refused, record.dead = undone, result.rewritten, result.refused, dead
        self.log.append(record)
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
