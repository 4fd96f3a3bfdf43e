"""Which parts of the graph int8 may touch: measured one kind of node at a time against the float32 export.

:func:`choose_float_groups` quantizes each group of :func:`lambda_export.quantization.engine.node_groups` alone (the
rest of the graph in float32), runs it on the calibration set and compares its outputs with the float32 export's:
top-1 agreement (classifiers), mean cosine (on the logits of a softmax output), max abs error. A group is kept in
float when it rounds a softmax output's probabilities to exactly 0 (the logits are lost), and until the cosine the
others cost alone adds up to what the goal leaves (independent rounding errors add up in square:
:func:`_within_budget`), those that cost the most cosine per share of the model's multiply-adds first (an Add that
costs as much as all the convolutions goes first: keeping it in float gives up no speed). The rest is quantized
together and checked; while the combination misses the goal, the remaining group with the highest cost per
multiply-add is kept in float too. The nodes of :func:`~lambda_export.quantization.engine.float_for_speed` (op types
of :data:`~lambda_export.quantization.engine.FLOAT_FOR_SPEED`, one-input-channel convolutions) stay in float whatever
their accuracy (measured: slower in int8), and so do the nodes that compute graph outputs
(:data:`~lambda_export.quantization.engine.OUTPUT_REASON`).

The cosine goal is the verdict's threshold with half its slack (0.999 → 0.9995 against the float32 export): the
verdict is taken against TensorFlow on samples not calibrated on, so the calibration set must leave room. It applies to
classifiers too (on their logits), whose verdict is the top-1 agreement: a cosine that close keeps their answers. The
combination must also reach the verdict's top-1 agreement on the calibration set (a margin there would be one sample
near a tie: top-1 agreement is too coarse to attribute to a group).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lambda_export.parity.metrics import finite_or_none
from lambda_export.quantization.engine import (
    FLOAT_FOR_SPEED,
    OUTPUT_REASON,
    Quantizer,
    float_for_speed,
    node_groups,
    node_macs,
)
from lambda_export.quantization.verdict import DEFAULT_MIN_COSINE, compare_output, run_model, softmax_outputs

__all__ = ["Effect", "GroupSensitivity", "Selection", "choose_float_groups", "goals", "measure_effect"]


def goals(min_agreement: float, min_cosine: float | None) -> tuple[float, float]:
    """(agreement, cosine) the int8 model must reach against the float32 export on the calibration set: the verdict's
    top-1 agreement, and its cosine (``min_cosine`` None → :data:`~lambda_export.quantization.verdict.DEFAULT_MIN_COSINE`,
    which the selection aims at for classifiers too) with half its slack."""
    cosine = DEFAULT_MIN_COSINE if min_cosine is None else min_cosine
    return min_agreement, 1.0 - (1.0 - cosine) / 2


@dataclass
class Effect:
    """What quantizing some nodes does to the outputs, worst over the outputs (against the float32 export)."""

    agreement: float | None  # lowest top-1 agreement of the classifier outputs (None: no classifier)
    cosine: float  # lowest mean cosine (on the logits of softmax outputs)
    max_abs: float
    logits_lost: bool = False  # a softmax output got probabilities of exactly 0 where float32 had none

    def misses(self, agreement_goal: float, cosine_goal: float) -> list[str]:
        """Why this effect misses the goals (empty: it meets them)."""
        reasons = []
        if self.logits_lost:
            reasons.append("it rounds softmax probabilities to exactly 0 (the logits are lost)")
        if self.agreement is not None and self.agreement < agreement_goal:
            reasons.append(f"top-1 agreement {self.agreement:.4f} < {agreement_goal:g}")
        if not self.cosine >= cosine_goal:
            reasons.append(f"cosine {self.cosine:.6f} < {cosine_goal:g}")
        return reasons

    @property
    def deficit(self) -> float:
        """1 − cosine (the error a group costs; deficits of independent groups roughly add up)."""
        return 1.0 - self.cosine if np.isfinite(self.cosine) else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1_agreement": self.agreement,
            "cosine": finite_or_none(self.cosine),
            "max_abs": finite_or_none(self.max_abs),
            "logits_lost": self.logits_lost,
        }


def measure_effect(
    model: onnx.ModelProto,
    arrays: dict[str, np.ndarray],
    references: list[np.ndarray],
    batch: int,
    softmax: set[str],
) -> Effect:
    """Run ``model`` (ONNX Runtime CPU) on ``arrays`` and compare its outputs with ``references`` (the float32
    export's, graph output order)."""
    outputs = run_model(model, arrays, "onnxruntime", batch)
    names = [value.name for value in model.graph.output]
    agreements, cosines, errors, lost = [], [], [], False
    for name, reference, candidate in zip(names, references, outputs, strict=True):
        metrics = compare_output(reference, candidate, softmax=name in softmax)
        if metrics["problem"]:
            return Effect(0.0 if metrics["classifier"] else None, float("-inf"), float("inf"))
        if metrics["agreement"] is not None:
            agreements.append(metrics["agreement"])
        if name in softmax and metrics["logits_cosine"] is None and np.all(reference > 0):
            lost = True
        cosines.append(metrics["logits_cosine"] if metrics["logits_cosine"] is not None else metrics["cosine"])
        errors.append(metrics["max_abs"])
    return Effect(min(agreements) if agreements else None, float(min(cosines)), float(max(errors)), lost)


@dataclass
class GroupSensitivity:
    """One group of nodes: its effect quantized alone, and whether it stays in float (and why)."""

    group: str
    nodes: list[str]
    alone: Effect | None  # None: not measured (kept in float for speed)
    kept_float: bool = False
    reason: str | None = None
    share: float = 0.0  # of the model's multiply-adds (Conv, MatMul, Gemm): what int8 would speed up

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "nodes": len(self.nodes),
            "macs_share": round(self.share, 4),
            "alone": None if self.alone is None else self.alone.to_dict(),
            "kept_float": self.kept_float,
            "reason": self.reason,
        }


@dataclass
class Selection:
    """The outcome of :func:`choose_float_groups`: the int8 model, every group's measurement and the combination's."""

    model: onnx.ModelProto
    groups: list[GroupSensitivity]
    combined: Effect
    goal_agreement: float
    goal_cosine: float
    steps: list[str] = field(default_factory=list)
    speed_nodes: list[str] = field(default_factory=list)  # kept in float for speed (engine.float_for_speed)

    @property
    def float_groups(self) -> list[str]:
        return [group.group for group in self.groups if group.kept_float]

    @property
    def float_nodes(self) -> list[str]:
        kept = {name for group in self.groups if group.kept_float for name in group.nodes}
        return sorted(kept | set(self.speed_nodes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "goal": {"top1_agreement": self.goal_agreement, "cosine": self.goal_cosine, "against": "float32 export"},
            "groups": [group.to_dict() for group in self.groups],
            "float_groups": self.float_groups,
            "float_nodes": self.float_nodes,
            "combined": self.combined.to_dict(),
            "steps": list(self.steps),
        }


def choose_float_groups(
    quantizer: Quantizer,
    *,
    min_agreement: float,
    min_cosine: float | None,
    measure: bool = True,
    layers: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Selection:
    """Measure every group alone, keep in float what breaks accuracy, and return the int8 model of the rest.

    Args:
        quantizer: calibrated (or calibrating on first use) on the float32 model and the calibration set.
        min_agreement, min_cosine: the verdict's thresholds (see :func:`goals`).
        measure: False quantizes every group but :data:`FLOAT_FOR_SPEED` without measuring (no sensitivity).
        layers: Keras layer name → class name: groups per layer class (see
            :func:`~lambda_export.quantization.engine.node_groups`).
    """
    say = progress or (lambda message: None)
    model = quantizer.model
    arrays, batch = quantizer.calibration, quantizer.batch
    agreement_goal, cosine_goal = goals(min_agreement, min_cosine)
    softmax = softmax_outputs(model)
    macs = node_macs(model)
    total_macs = sum(macs.values()) or 1
    groups = [
        GroupSensitivity(name, nodes, None, share=sum(macs.get(node, 0) for node in nodes) / total_macs)
        for name, nodes in node_groups(model, layers).items()
    ]
    speed = float_for_speed(model)
    steps: list[str] = []
    for group in groups:
        reasons = {speed[name] for name in group.nodes if name in speed}
        if reasons and all(name in speed for name in group.nodes):
            group.kept_float = True
            group.reason = "speed: " + "; ".join(sorted(reasons))
        elif group.group.endswith("(output)"):
            group.kept_float = True
            group.reason = OUTPUT_REASON
        elif reasons:  # some of its nodes only: they stay in float, the rest is measured
            slow = [name for name in group.nodes if name in speed]
            steps.append(f"{len(slow)} node(s) of {group.group} kept in float for speed: {'; '.join(sorted(reasons))}")
    say(f"calibrating ({quantizer.method}, {next(iter(arrays.values())).shape[0]} samples)")
    quantizer.calibrate()
    references: list[np.ndarray] = []
    if measure:
        references = run_model(model, arrays, "onnxruntime", batch)
        for group in groups:
            if group.kept_float:
                continue
            say(f"sensitivity: {group.group} ({len(group.nodes)} node(s)) quantized alone")
            alone = [name for name in group.nodes if name not in speed]
            group.alone = measure_effect(quantizer.quantize(only=alone), arrays, references, batch, softmax)
            if group.alone.logits_lost or not np.isfinite(group.alone.cosine):
                group.kept_float = True
                group.reason = "alone, " + " and ".join(group.alone.misses(agreement_goal, cosine_goal))
        _within_budget(groups, 1.0 - cosine_goal, steps)
    float_ops = set(FLOAT_FOR_SPEED)
    while True:
        excluded = sorted({name for group in groups if group.kept_float for name in group.nodes} | set(speed))
        candidate = quantizer.quantize(exclude=excluded, float_ops=float_ops)
        if not measure:
            combined = Effect(None, float("nan"), float("nan"))
            break
        say("checking the combination")
        combined = measure_effect(candidate, arrays, references, batch, softmax)
        reasons = combined.misses(agreement_goal, cosine_goal)
        remaining = [group for group in groups if not group.kept_float and group.alone is not None]
        if not reasons or not remaining:
            if reasons:
                steps.append("every measured group is in float and the goal is still missed: " + " and ".join(reasons))
            break
        worst = max(remaining, key=_cost_per_benefit)
        worst.kept_float = True
        worst.reason = (
            f"together, the quantized groups missed the goal ({' and '.join(reasons)}); of those left this one costs "
            f"the most cosine for what int8 speeds up (alone: cosine {worst.alone.cosine:.6f}, "
            f"{worst.share:.1%} of the multiply-adds)"
        )
        steps.append(f"{worst.group} kept in float: {worst.reason}")
        say(steps[-1])
    return Selection(candidate, groups, combined, agreement_goal, cosine_goal, steps, sorted(speed))


_SHARE_FLOOR = 0.01
"""A group's benefit is at least this share of the multiply-adds: elementwise ops (Add, Softmax, pooling) do none,
but quantizing them spares the Q/DQ pairs between int8 neighbours."""


def _cost_per_benefit(group: GroupSensitivity) -> float:
    """Cosine lost per share of the model's multiply-adds (what int8 kernels speed up) when ``group`` is int8."""
    cost = group.alone.deficit if group.alone else 0.0
    return cost / max(group.share, _SHARE_FLOOR)


def _within_budget(groups: list[GroupSensitivity], budget: float, steps: list[str]) -> None:
    """Keep groups in float until the cosine the quantized ones cost alone adds up to ``budget`` at most: first those
    that cost the most cosine per share of the multiply-adds they hold (an Add that costs as much as the convolutions
    goes before them: keeping it in float gives up no speed).

    The cost of a group is its cosine deficit alone (1 − cosine against the float32 export): independent rounding
    errors add up in square, so their deficits add up (a cosine 1 − ε² / 2 per relative error ε).
    """
    quantized = [group for group in groups if not group.kept_float and group.alone is not None]
    total = sum(group.alone.deficit for group in quantized if group.alone)
    for group in sorted(quantized, key=_cost_per_benefit, reverse=True):
        if total <= budget:
            break
        cost = group.alone.deficit if group.alone else 0.0
        group.kept_float = True
        group.reason = (
            f"alone it lowers the cosine to {1.0 - cost:.6f} for {group.share:.1%} of the multiply-adds; the quantized "
            f"groups together would lose {total:.2e} of cosine, more than the {budget:.2e} the goal leaves (kept in "
            "float: the most cosine per multiply-add first)"
        )
        steps.append(f"{group.group} kept in float: {group.reason}")
        total -= cost


def _ops(model: onnx.ModelProto) -> dict[str, str]:
    return {node.name: node.op_type for node in model.graph.node}
