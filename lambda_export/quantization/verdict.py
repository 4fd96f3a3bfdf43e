"""The int8 verdict: does the quantized model still give TensorFlow's answers? (not a tolerance: an accuracy rule)

Each output of the int8 model is compared with the Keras model's float32 output (TensorFlow, inference mode, CPU) on
the calibration set and on the held-out set, in each runtime that can run it (ONNX Runtime CPU; OpenVINO with
``INFERENCE_PRECISION_HINT=f32`` when it is installed):

* **top-1 agreement** for a classifier output (rank 2, ``(batch, classes)`` with more than one class: logits or
  probabilities): the share of samples whose highest-scoring class is the same;
* **cosine similarity** per sample (the output flattened per sample), mean and worst; for a softmax output also on
  its logits, recovered exactly up to the constant that softmax ignores (``log p − mean(log p)``), since the cosine
  of probabilities is close to 1 whenever the top class is confident;
* **max abs error**, for information.

The pass rule (:func:`output_passes`): a classifier passes when its top-1 agreement is at least ``min_agreement``
(default :data:`DEFAULT_MIN_AGREEMENT`); every other output when its mean cosine is at least ``min_cosine`` (default
:data:`DEFAULT_MIN_COSINE`); a ``min_cosine`` given explicitly applies to classifiers too (on the logits when they are
recoverable). The model passes when every output passes on both sets in every runtime that ran. When it fails, the
layers that add the most int8 error are named (:func:`worst_layers`, matched by the parity check's divergence locator).

The verdict weighs the benefit too (:func:`verdict_line`, :func:`benefit`): an accurate int8 file that is larger and
slower than its float32 graph is no gain, and the line says so with the measured figures (the share of the
multiply-adds in int8, the size and the speed against float32 on this CPU) and why (from the measurement:
:func:`lambda_export.quantization.speed.slow_reasons`, :func:`~lambda_export.quantization.speed.size_reason`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lambda_export.errors import InputError, first_line
from lambda_export.io import model_bytes
from lambda_export.loading import LoadedModel
from lambda_export.parity.metrics import finite_or_none
from lambda_export.parity.running import keras_feed, run_keras
from lambda_export.quantization.calibration import batches
from lambda_export.quantization.speed import benefit_record

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_MIN_COSINE",
    "RUNTIMES",
    "Int8Verdict",
    "OutputVerdict",
    "benefit",
    "check_thresholds",
    "compare_output",
    "output_passes",
    "run_model",
    "softmax_outputs",
    "tensorflow_outputs",
    "verdict_line",
    "worst_layers",
]

DEFAULT_MIN_AGREEMENT = 0.99
"""Top-1 agreement a classifier output needs on each set (``--min-agreement``)."""
DEFAULT_MIN_COSINE = 0.999
"""Mean cosine similarity every other output needs on each set (``--min-cosine``)."""
RUNTIMES = ("onnxruntime", "openvino")
"""Where the verdict runs the int8 file: ONNX Runtime's CPU provider, and OpenVINO's CPU plugin (f32 pinned)."""
_EVAL_BATCH = 16


def check_thresholds(min_agreement: float, min_cosine: float | None) -> None:
    """Refuse thresholds outside [0, 1] (or NaN) before any slow work.

    Raises:
        InputError: naming ``min_agreement`` or ``min_cosine``.
    """
    for name, value in (("min_agreement", min_agreement), ("min_cosine", min_cosine)):
        if value is None:
            continue
        if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
            raise InputError(f"{name} {value}: must be between 0 and 1", argument=name)


# -- running -----------------------------------------------------------------------------------------------------------


def _concat(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate([part[i] for part in parts]) for i in range(len(parts[0]))] if parts else []


def run_model(model: onnx.ModelProto, arrays: dict[str, np.ndarray], runtime: str, batch: int) -> list[np.ndarray]:
    """The outputs (graph order) of ``model`` on ``arrays``, run in batches of ``batch`` in ``runtime``.

    ``runtime``: ``onnxruntime`` (CPU provider, every graph optimisation: the int8 kernels) or ``openvino`` (CPU plugin,
    ``INFERENCE_PRECISION_HINT=f32``: its default on CPUs with bf16 is bf16, which would blur the verdict).

    Raises:
        ImportError: the runtime is not installed. Exception: the runtime refuses the model (the caller reports it).
    """
    data = model_bytes(model)
    parts: list[list[np.ndarray]] = []
    if runtime == "onnxruntime":
        from lambda_export import ort

        session = ort.session(data, ort.CPU)
        names = [value.name for value in session.get_outputs()]
        for feed in batches(arrays, batch):
            parts.append([np.asarray(out) for out in session.run(names, feed)])
    elif runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(data, ov.Tensor(np.empty(0, np.uint8))), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        inputs = {port.get_any_name(): port for port in compiled.inputs}
        for feed in batches(arrays, batch):
            result = compiled({inputs[name]: value for name, value in feed.items()})
            parts.append([np.asarray(result[port]) for port in compiled.outputs])
    else:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return _concat(parts)


def tensorflow_outputs(loaded: LoadedModel, arrays: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    """The Keras model's float32 outputs on ``arrays`` (inference mode, TensorFlow's CPU), in batches of ``batch``."""
    parts = [run_keras(loaded.model, keras_feed(loaded, feed)) for feed in batches(arrays, batch)]
    return _concat(parts)


def softmax_outputs(model: onnx.ModelProto) -> set[str]:
    """Names of the graph outputs that a Softmax over the last axis produces (their logits can be recovered)."""
    outputs = {value.name for value in model.graph.output}
    found = set()
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.output and node.output[0] in outputs:
            axis = next((attr.i for attr in node.attribute if attr.name == "axis"), -1)
            if axis == -1 or axis == _rank(model, node.output[0]) - 1:
                found.add(node.output[0])
    return found


def _rank(model: onnx.ModelProto, name: str) -> int:
    for value in model.graph.output:
        if value.name == name:
            return len(value.type.tensor_type.shape.dim)
    return -1


# -- comparing ---------------------------------------------------------------------------------------------------------


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity per row of two (n, m) float64 arrays; 1 where both rows are zero, 0 where only one is."""
    dot = np.sum(reference * candidate, axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    both_zero = (np.linalg.norm(reference, axis=1) == 0) & (np.linalg.norm(candidate, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0)


def _centered_logits(probabilities: np.ndarray) -> np.ndarray | None:
    """``log p − mean(log p)`` per row (softmax's logits up to their shift), or None when a probability is 0."""
    if not np.all(probabilities > 0):
        return None
    logs = np.log(probabilities)
    return logs - logs.mean(axis=1, keepdims=True)


def compare_output(reference: np.ndarray, candidate: np.ndarray, *, softmax: bool = False) -> dict[str, Any]:
    """Agreement of an int8 output with its float reference (both batch first).

    Returns:
        ``classifier`` (rank 2 with more than one class), ``agreement`` (top-1, classifiers only, else None),
        ``cosine``/``cosine_min`` (per sample, mean and worst), ``logits_cosine``/``logits_cosine_min`` (softmax
        outputs whose probabilities are all positive on both sides, else None), ``max_abs``, ``samples``, ``problem``
        (None, or why the values cannot be compared: a shape mismatch, NaN/Inf).
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    result: dict[str, Any] = {
        "samples": int(reference.shape[0]) if reference.ndim else 1,
        "classifier": reference.ndim == 2 and reference.shape[1] > 1,
        "agreement": None,
        "cosine": float("nan"),
        "cosine_min": float("nan"),
        "logits_cosine": None,
        "logits_cosine_min": None,
        "max_abs": float("inf"),
        "problem": None,
    }
    if reference.shape != candidate.shape:
        result["problem"] = f"shape mismatch: int8 {candidate.shape} vs TensorFlow {reference.shape}"
        return result
    if not np.isfinite(candidate).all():
        result["problem"] = "NaN or Inf in the int8 output"
        return result
    if not np.isfinite(reference).all():
        result["problem"] = "NaN or Inf in the TensorFlow output"
        return result
    rows = reference.reshape(reference.shape[0], -1) if reference.ndim else reference.reshape(1, 1)
    other = candidate.reshape(rows.shape)
    cos = _cosines(rows, other)
    result["cosine"], result["cosine_min"] = float(cos.mean()), float(cos.min())
    result["max_abs"] = float(np.abs(rows - other).max()) if rows.size else 0.0
    if result["classifier"]:
        result["agreement"] = float(np.mean(np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)))
    if softmax and reference.ndim == 2:
        ref_logits, cand_logits = _centered_logits(reference), _centered_logits(candidate)
        if ref_logits is not None and cand_logits is not None:
            logit_cos = _cosines(ref_logits, cand_logits)
            result["logits_cosine"], result["logits_cosine_min"] = float(logit_cos.mean()), float(logit_cos.min())
    return result


def output_passes(
    metrics: dict[str, Any], min_agreement: float, min_cosine: float | None
) -> tuple[bool, list[str], float | None, str]:
    """The pass rule on one output's :func:`compare_output` metrics.

    Returns:
        (passed, the reasons it failed, the cosine the rule used or reports, what that cosine is of: "logits" or
        "output").
    """
    cosine, on = (
        (metrics["logits_cosine"], "logits")
        if metrics.get("logits_cosine") is not None
        else (metrics["cosine"], "output")
    )
    if metrics.get("problem"):
        return False, [metrics["problem"]], cosine, on
    failures = []
    if metrics["classifier"]:
        if metrics["agreement"] < min_agreement:
            failures.append(f"top-1 agreement {metrics['agreement']:.4f} < {min_agreement:g}")
        if min_cosine is not None and not cosine >= min_cosine:
            failures.append(f"cosine ({on}) {cosine:.6f} < {min_cosine:g}")
    else:
        needed = DEFAULT_MIN_COSINE if min_cosine is None else min_cosine
        if not cosine >= needed:
            failures.append(f"cosine ({on}) {cosine:.6f} < {needed:g}")
    return not failures, failures, cosine, on


# -- the verdict -------------------------------------------------------------------------------------------------------


@dataclass
class OutputVerdict:
    """One output of the int8 model against TensorFlow, on one set, in one runtime."""

    runtime: str
    set: str  # "calibration" | "held_out"
    output: str
    metrics: dict[str, Any]
    passed: bool
    failures: list[str] = field(default_factory=list)
    cosine: float | None = None  # the cosine the rule uses (logits when recoverable)
    cosine_on: str = "output"

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "set": self.set,
            "output": self.output,
            "passed": bool(self.passed),
            "failures": list(self.failures),
            "samples": self.metrics.get("samples"),
            "classifier": bool(self.metrics.get("classifier")),
            "top1_agreement": self.metrics.get("agreement"),
            "cosine": finite_or_none(self.cosine),
            "cosine_on": self.cosine_on,
            "output_cosine": finite_or_none(self.metrics.get("cosine")),
            "output_cosine_min": finite_or_none(self.metrics.get("cosine_min")),
            "logits_cosine": finite_or_none(self.metrics.get("logits_cosine")),
            "logits_cosine_min": finite_or_none(self.metrics.get("logits_cosine_min")),
            "max_abs": finite_or_none(self.metrics.get("max_abs")),
            "problem": self.metrics.get("problem"),
        }


@dataclass
class Int8Verdict:
    """The accuracy verdict of an int8 model: every output, set and runtime, the rule, and the worst layers."""

    passed: bool
    min_agreement: float
    min_cosine: float | None
    rows: list[OutputVerdict]
    runtimes_run: list[str]
    runtimes_skipped: dict[str, str] = field(default_factory=dict)
    worst_layers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rule(self) -> str:
        """The pass rule in words."""
        text = f"classifiers: top-1 agreement ≥ {self.min_agreement:g}"
        if self.min_cosine is not None:
            return text + f" and mean cosine ≥ {self.min_cosine:g}; other outputs: mean cosine ≥ {self.min_cosine:g}"
        return text + f"; other outputs: mean cosine ≥ {DEFAULT_MIN_COSINE:g}"

    def failures(self) -> list[str]:
        """One line per failing row: runtime, set, output and why."""
        return [
            f"{row.runtime} {row.set} {row.output}: {'; '.join(row.failures)}" for row in self.rows if not row.passed
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": bool(self.passed),
            "rule": self.rule,
            "min_agreement": self.min_agreement,
            "min_cosine": self.min_cosine,
            "default_min_cosine": DEFAULT_MIN_COSINE,
            "runtimes_run": list(self.runtimes_run),
            "runtimes_skipped": dict(self.runtimes_skipped),
            "results": [row.to_dict() for row in self.rows],
            "failures": self.failures(),
            "worst_layers": list(self.worst_layers),
            "notes": list(self.notes),
        }


def judge(
    loaded: LoadedModel,
    int8_model: onnx.ModelProto,
    sets: dict[str, dict[str, np.ndarray]],
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_cosine: float | None = None,
    runtimes: Sequence[str] = RUNTIMES,
    batch: int | None = None,
    float_model: onnx.ModelProto | None = None,
    locate: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Int8Verdict:
    """Judge ``int8_model`` against the Keras model on each set of ``sets`` (name → arrays by input name).

    Args:
        runtimes: where to run it (:data:`RUNTIMES`); OpenVINO is skipped, with the reason, when not installed.
        batch: samples per run (the model's fixed batch when it has one; default 16).
        float_model: the float32 export the int8 model was made from: with ``locate``, a failing verdict names the
            layers that add the most error (:func:`worst_layers`).

    Raises:
        InputError: a threshold outside [0, 1], an unknown runtime.
    """
    check_thresholds(min_agreement, min_cosine)
    unknown = [name for name in runtimes if name not in RUNTIMES]
    if unknown:
        raise InputError(f"runtimes {unknown}: choose among {', '.join(RUNTIMES)}", argument="runtimes")
    batch = batch or _EVAL_BATCH
    say = progress or (lambda message: None)
    names = [value.name for value in int8_model.graph.output]
    softmax = softmax_outputs(int8_model)
    references = {}
    for set_name, arrays in sets.items():
        say(f"TensorFlow reference on the {set_name.replace('_', '-')} set")
        references[set_name] = tensorflow_outputs(loaded, arrays, batch)
    rows: list[OutputVerdict] = []
    run: list[str] = []
    skipped: dict[str, str] = {}
    notes: list[str] = []
    for runtime in runtimes:
        try:
            outputs = {}
            for set_name, arrays in sets.items():
                say(f"int8 model in {runtime} on the {set_name.replace('_', '-')} set")
                outputs[set_name] = run_model(int8_model, arrays, runtime, batch)
        except ImportError as exc:
            skipped[runtime] = f"not installed ({first_line(exc)}); pip install 'lambda-export[{runtime}]'"
            continue
        except Exception as exc:
            rows.append(
                OutputVerdict(runtime, "-", "-", {"problem": first_line(exc)}, False, [f"{runtime}: {first_line(exc)}"])
            )
            run.append(runtime)
            continue
        run.append(runtime)
        for set_name in sets:
            for name, reference, candidate in zip(names, references[set_name], outputs[set_name], strict=True):
                metrics = compare_output(reference, candidate, softmax=name in softmax)
                passed, failures, cosine, on = output_passes(metrics, min_agreement, min_cosine)
                rows.append(OutputVerdict(runtime, set_name, name, metrics, passed, failures, cosine, on))
    passed = bool(rows) and all(row.passed for row in rows)
    verdict = Int8Verdict(passed, min_agreement, min_cosine, rows, run, skipped, notes=notes)
    if not passed and locate and float_model is not None:
        failing = next((row.set for row in rows if not row.passed and row.set in sets), next(iter(sets)))
        say("locating the layers that add the most int8 error")
        verdict.worst_layers, more = worst_layers(loaded, float_model, int8_model, sets[failing])
        notes.extend(more)
    return verdict


# -- the benefit ---------------------------------------------------------------------------------------------------------


def benefit(quantization: dict[str, Any]) -> dict[str, Any]:
    """What the int8 file brings, from a quantization record (``QuantizeResult.summary()``): the timing's
    ``speed.benefit`` (:func:`lambda_export.quantization.speed.benefit_record`: share of the multiply-adds in int8,
    size and speed against float32, ``benefit``, ``reason``) when it was timed, else the size and the sensitivity
    groups' multiply-add shares alone (speed None)."""
    speed = quantization.get("speed") or {}
    if speed.get("benefit"):
        return dict(speed["benefit"])
    groups = (quantization.get("sensitivity") or {}).get("groups") or []
    share = sum(group.get("macs_share") or 0.0 for group in groups if not group.get("kept_float")) if groups else None
    size = quantization.get("size") or {}
    return benefit_record(mac_share=share, size_ratio=size.get("ratio"), speedup=None)


def verdict_line(quantization: dict[str, Any]) -> str:
    """The int8 verdict in one line: accuracy, runtimes, and what int8 brings here.

    ``int8 verdict: PASS (accuracy) on onnxruntime — no benefit here: 18% of the multiply-adds in int8, 130% of the
    float32 size, 0.72× its speed; why: ...`` (larger and slower); ``... — smaller but slower here: ...``; ``... —
    benefit here: 96% of the multiply-adds in int8, 26% of the float32 size, 1.83× its speed``.
    """
    verdict = quantization.get("verdict")
    if verdict is None:
        head = "int8 verdict: not taken (--skip-verify)"
    else:
        runtimes = ", ".join(verdict.get("runtimes_run") or []) or "no runtime"
        head = f"int8 verdict: {'PASS' if verdict.get('passed') else 'FAIL'} (accuracy) on {runtimes}"
    record = benefit(quantization)
    share, size, speed = record.get("int8_mac_share"), record.get("size_ratio"), record.get("speed_ratio")
    facts = [
        "multiply-adds not counted" if share is None else f"{share:.0%} of the multiply-adds in int8",
        "size unknown" if size is None else f"{size:.0%} of the float32 size",
        "speed not timed" if speed is None else f"{speed:.2f}× its speed",
    ]
    smaller, faster = record.get("smaller"), record.get("faster")
    if not record.get("benefit"):
        verdict_of_benefit = "no benefit here"
    elif smaller is False:
        verdict_of_benefit = "faster but larger here"
    elif faster is False:
        verdict_of_benefit = "smaller but slower here"
    else:
        verdict_of_benefit = "benefit here"
    why = f"; why: {record['reason']}" if record.get("reason") else ""
    return f"{head} — {verdict_of_benefit}: {', '.join(facts)}{why}"


# -- the worst layers --------------------------------------------------------------------------------------------------

_QDQ_SUFFIXES = ("_DequantizeLinear_Output", "_QuantizeLinear_Output")


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names`` (float tensors of its graph)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    for name in names:
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def worst_layers(
    loaded: LoadedModel,
    float_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    arrays: dict[str, np.ndarray],
    *,
    top: int = 3,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The Keras layers that add the most int8 error, worst first, and notes on what could not be compared.

    The divergence locator (:func:`lambda_export.parity.locate_divergence`) matches each Keras layer to a tensor of
    the int8 graph (the quantizer keeps the float graph's tensor names); that tensor is then compared between the int8
    and the float32 graph on the same samples (at most :data:`lambda_export.parity.locate.LOCATE_MAX_BATCH`):
    ``relative_error`` = ‖int8 − float‖ / ‖float‖, and ``added`` = its growth over the previous matched layer's (the
    error the layer itself adds; layers in topological order).
    """
    from lambda_export.parity.locate import LOCATE_MAX_BATCH, locate_divergence

    count = next(iter(arrays.values())).shape[0]
    size = min(count, LOCATE_MAX_BATCH)
    fixed = [d.dim_value for d in int8_model.graph.input[0].type.tensor_type.shape.dim[:1] if d.HasField("dim_value")]
    if fixed:
        size = fixed[0]
    feed = {name: np.ascontiguousarray(array[:size]) for name, array in arrays.items()}
    try:
        results, _, _, notes = locate_divergence(loaded, int8_model, feed)
    except Exception as exc:
        return [], [f"could not locate the worst layers: {first_line(exc)}"]
    float_names = {name for node in float_model.graph.node for name in node.output}
    pairs = []
    for item in results:
        base = item.onnx_tensor
        for suffix in _QDQ_SUFFIXES:
            base = base.removesuffix(suffix)
        if base in float_names:
            pairs.append((item, item.onnx_tensor, base))
    if not pairs:
        return [], [*notes, "no Keras layer could be matched to a tensor of both graphs"]
    try:
        from lambda_export import ort

        int8_values = ort.session(model_bytes(_with_outputs(int8_model, [p[1] for p in pairs]))).run(None, feed)
        float_values = ort.session(model_bytes(_with_outputs(float_model, [p[2] for p in pairs]))).run(None, feed)
    except Exception as exc:
        return [], [*notes, f"could not compare the layers' tensors: {first_line(exc)}"]
    layers = []
    previous = 0.0
    for (item, tensor, _), low, high in zip(pairs, int8_values, float_values, strict=True):
        reference = np.asarray(high, dtype=np.float64)
        norm = float(np.linalg.norm(reference))
        error = float(np.linalg.norm(np.asarray(low, dtype=np.float64) - reference))
        relative = error / norm if norm > 0 else (0.0 if error == 0 else float("inf"))
        layers.append(
            {
                "layer": item.layer,
                "class_name": item.class_name,
                "onnx_tensor": tensor,
                "relative_error": finite_or_none(relative),
                "added": finite_or_none(relative - previous),
            }
        )
        previous = relative
    layers.sort(key=lambda entry: -(entry["added"] if entry["added"] is not None else math.inf))
    return layers[:top], notes
