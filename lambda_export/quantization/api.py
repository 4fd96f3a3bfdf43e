"""``quantize``: a Keras model (or its float32 export) → an int8 QDQ ONNX model, with a measured exclusion list and an
accuracy verdict against TensorFlow. The command line's ``--quantize int8`` runs the same steps.

Steps, one function each, over typed records (the conversion's options:
:class:`~lambda_export.conversion.ExportOptions`, shared with :func:`lambda_export.convert`; the quantization's:
``_Settings``; the samples as given: ``_Samples``; the sets and the batch: ``_Calibrated``): check the arguments (and
that the target can load QDQ), the conversion's options when converting, and the output (``_checked``) → load the Keras
model (``_load``) → its float32 export (``_float_model``: given, or :func:`lambda_export.convert` after the samples are
checked) → the calibration and held-out sets (``_calibrated``, :mod:`~lambda_export.quantization.calibration`) →
calibrate once, measure each kind of node alone, keep in float what breaks accuracy (``_quantized``,
:mod:`~lambda_export.quantization.sensitivity`) → the verdict on both sets in ONNX Runtime and OpenVINO (``_verdict``,
:mod:`~lambda_export.quantization.verdict`) → int8 against float32 timing (``_timed``,
:mod:`~lambda_export.quantization.speed`) → metadata (``_with_metadata``) → an atomic write (``_written``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from lambda_export.errors import InputError
from lambda_export.graph import graph_io
from lambda_export.loading import LoadedModel
from lambda_export.quantization.calibration import (
    GENERATED_WARNING,
    CalibrationData,
    calibration_data,
    fixed_batch,
    sample_arrays,
)
from lambda_export.quantization.engine import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    SETTINGS,
    Quantizer,
    quantizer_version,
)
from lambda_export.quantization.sensitivity import Selection, choose_float_groups
from lambda_export.quantization.speed import (
    DEFAULT_TIMING_BUDGET_S,
    SpeedCheck,
    cpu_warning,
    int8_speed,
    speed_warning,
)
from lambda_export.quantization.verdict import (
    DEFAULT_MIN_AGREEMENT,
    RUNTIMES,
    Int8Verdict,
    benefit,
    check_thresholds,
    judge,
)
from lambda_export.targets import TARGETS, quantization_problem

if TYPE_CHECKING:
    from lambda_export.conversion import ExportOptions

__all__ = [
    "PRECISIONS",
    "QuantizeResult",
    "check_quantize_arguments",
    "check_samples",
    "int8_verdict",
    "quantize",
]

PRECISIONS = ("int8",)
"""What ``--quantize`` accepts."""
_EVAL_BATCH = 16


@dataclass
class QuantizeResult:
    """What :func:`quantize` produced.

    Attributes:
        model: the int8 QDQ ``onnx.ModelProto`` (its ``metadata_props`` record the settings, the calibration, the
            groups kept in float and why, and the verdict).
        float_model: the float32 export it was made from.
        calibration: the calibration and held-out sets.
        method: the calibration method.
        selection: the sensitivity of each group of nodes and the groups kept in float.
        verdict: the accuracy verdict (None when ``verify=False``).
        speed: int8 against float32 in ONNX Runtime CPU on this machine (None when ``timing=False``).
        warnings: what the user must know (generated calibration inputs, a target that cannot load QDQ).
        path: where the model was written, if an output was given.
        loaded: the Keras model (the verdict's reference).
    """

    model: onnx.ModelProto
    float_model: onnx.ModelProto
    calibration: CalibrationData
    method: str
    selection: Selection
    verdict: Int8Verdict | None = None
    speed: SpeedCheck | None = None
    warnings: list[str] = field(default_factory=list)
    path: str | None = None
    loaded: LoadedModel | None = None
    target: str | None = None

    @property
    def passed(self) -> bool | None:
        """The verdict (None when it was not taken)."""
        return None if self.verdict is None else self.verdict.passed

    @property
    def float_bytes(self) -> int:
        return self.float_model.ByteSize()

    @property
    def int8_bytes(self) -> int:
        return self.model.ByteSize()

    def summary(self) -> dict[str, Any]:
        """The JSON-able record of the quantization (the ``quantization`` part of the command line's JSON verdict and
        of the report); ``benefit`` says what int8 brings here (:func:`~lambda_export.quantization.verdict.benefit`:
        multiply-add share in int8, size and speed against float32, and why when it brings nothing)."""
        record = {
            "precision": "int8",
            "settings": {**SETTINGS, "calibration_method": self.method, "tool": quantizer_version()},
            "calibration": self.calibration.to_dict(),
            "sensitivity": self.selection.to_dict(),
            "float_groups": self.selection.float_groups,
            "size": {
                "float32_bytes": self.float_bytes,
                "int8_bytes": self.int8_bytes,
                "ratio": round(self.int8_bytes / self.float_bytes, 4) if self.float_bytes else None,
            },
            "nodes": len(self.model.graph.node),
            "speed": None if self.speed is None else self.speed.to_dict(),
            "target": self.target,
            "warnings": list(self.warnings),
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "passed": self.passed,
            "path": self.path,
        }
        record["benefit"] = benefit(record)
        return record


def check_quantize_arguments(
    *,
    precision: str = "int8",
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_cosine: float | None = None,
    target: str = "portable",
) -> list[str]:
    """Refuse bad quantization arguments before any slow work; return the warnings they call for.

    Raises:
        InputError: an unknown precision, calibration method or target, a threshold outside [0, 1], or a target that
            cannot load an int8 QDQ model (``opencv4``; ``portable``, which includes OpenCV 4.6, only warns).
    """
    if precision not in PRECISIONS:
        raise InputError(f"quantize {precision!r}: choose one of {', '.join(PRECISIONS)}", argument="quantize")
    if calibration_method not in CALIBRATION_METHODS:
        raise InputError(
            f"calibration_method {calibration_method!r}: choose one of {', '.join(CALIBRATION_METHODS)}",
            argument="calibration_method",
        )
    check_thresholds(min_agreement, min_cosine)
    if target not in TARGETS:
        raise InputError(f"target {target!r}: choose one of {', '.join(TARGETS)}", argument="target")
    problem = quantization_problem(target)
    if problem and target != "portable":
        raise InputError(
            f"target {target!r} cannot run an int8 model: {problem}; choose target ort, openvino or opencv5",
            argument="target",
        )
    return [f"target {target!r}: {problem}"] if problem else []


def check_samples(loaded: LoadedModel, *, calibration: Any = None, held_out: Any = None) -> None:
    """Check the calibration and held-out samples against the Keras model's inputs (any number of samples), before
    any conversion: names (one unnamed array is a one-input model's input), shapes but the batch, dtypes, NaN/Inf,
    at least one sample, one sample count for all inputs.

    Raises:
        InputError: one line saying what the file (or the arrays) holds against what the model's inputs are.
    """
    for argument, value in (("calibration", calibration), ("held_out", held_out)):
        if value is not None:
            sample_arrays(value, loaded.inputs, argument)


def _load(source: Any, loaded: LoadedModel | None, trust_code: bool, imports: Sequence[str]) -> LoadedModel:
    if loaded is not None:
        return loaded
    if isinstance(source, LoadedModel):
        return source
    from lambda_export.loading import load_model

    return load_model(source, trust_code=trust_code, imports=tuple(imports))


def _layer_classes(loaded: LoadedModel) -> dict[str, str]:
    """Keras layer name → class name, nested models' layers included (the sensitivity groups name the classes)."""
    from lambda_export.loading import walk_layers

    return {layer.name: type(layer).__name__ for layer in walk_layers(loaded.model)}


def _batch(model: onnx.ModelProto) -> tuple[list[Any], int]:
    inputs = graph_io(model)[0]
    return inputs, fixed_batch(inputs) or _EVAL_BATCH


def _timing_feed(arrays: dict[str, Any], batch: int) -> dict[str, Any]:
    """The first ``batch`` calibration samples per input (repeated when there are fewer): one run's feed."""
    import numpy as np

    return {name: np.ascontiguousarray(np.take(a, np.arange(batch) % len(a), axis=0)) for name, a in arrays.items()}


def _metadata(result: QuantizeResult) -> dict[str, str]:
    """The ``metadata_props`` entries of an int8 model (strings; JSON where structured)."""
    data = result.calibration
    where = "generated N(0, 1) inputs (not representative)" if data.generated else data.source
    groups = result.selection.groups
    verdict = result.verdict
    if verdict is None:
        verdict_text = "not checked"
    else:
        verdict_text = (
            ("pass" if verdict.passed else "fail")
            + f" ({verdict.rule}; runtimes: "
            + (", ".join(verdict.runtimes_run) + ")")
        )
    return {
        "quantization": "int8",
        "quantization_format": SETTINGS["format"],
        "quantization_weights": SETTINGS["weights"] + (", 7-bit range" if SETTINGS["reduce_range"] else ""),
        "quantization_activations": SETTINGS["activations"],
        "quantization_tool": quantizer_version(),
        "quantization_calibration": f"{result.method} on {data.n_calibration} samples of {where}",
        "quantization_held_out": f"{data.n_held_out} samples: {data.held_out_source}",
        "quantization_float_groups": ",".join(result.selection.float_groups),
        "quantization_float_nodes": ",".join(result.selection.float_nodes),
        "quantization_sensitivity": json.dumps(
            [group.to_dict() for group in groups], separators=(",", ":"), sort_keys=True
        ),
        "quantization_verdict": verdict_text,
    }


def _with_metadata(result: QuantizeResult) -> None:
    """The float32 export's metadata (source hash, versions, target, passes) followed by the int8 entries."""
    entries = {prop.key: prop.value for prop in result.float_model.metadata_props}
    entries.update(_metadata(result))
    del result.model.metadata_props[:]
    onnx.helper.set_model_props(result.model, entries)
    result.model.producer_name = result.float_model.producer_name or "lambda-export"
    result.model.producer_version = result.float_model.producer_version


@dataclass(frozen=True)
class _Settings:
    """How :func:`quantize` calibrates, measures, judges and times: its arguments besides the model, the samples,
    the float32 export and the output (see :func:`quantize` for each)."""

    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    min_cosine: float | None = None
    sensitivity: bool = True
    verify: bool = True
    runtimes: tuple[str, ...] = RUNTIMES
    timing: bool = True
    timing_budget_s: float = DEFAULT_TIMING_BUDGET_S
    seed: int = 0


@dataclass(frozen=True)
class _Samples:
    """The calibration and held-out samples as given (a path, arrays by input name, or None)."""

    calibration: Any = None
    held_out: Any = None


@dataclass(frozen=True)
class _Calibrated:
    """The calibration and held-out sets, and the batch the float32 export runs them in."""

    data: CalibrationData
    batch: int


_EXPORT_KEYWORDS: dict[str, Any] = {
    "target": "portable",
    "opset": 17,
    "optimize": None,
    "batch_size": None,
    "input_shapes": None,
    "trust_code": False,
    "imports": (),
}
""":func:`quantize`'s keywords that :class:`~lambda_export.conversion.ExportOptions` holds, with their defaults."""


def quantize(
    source: Any,
    output: str | os.PathLike[str] | None = None,
    *,
    onnx_model: onnx.ModelProto | str | os.PathLike[str] | None = None,
    calibration: Any = None,
    held_out: Any = None,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_cosine: float | None = None,
    verify: bool = True,
    timing: bool = True,
    timing_budget_s: float = DEFAULT_TIMING_BUDGET_S,
    runtimes: Sequence[str] = RUNTIMES,
    sensitivity: bool = True,
    target: str = "portable",
    opset: int = 17,
    optimize: str | None = None,
    batch_size: int | None = None,
    input_shapes: dict[str, tuple[int | None, ...]] | None = None,
    trust_code: bool = False,
    imports: Sequence[str] = (),
    overwrite: bool = False,
    loaded: LoadedModel | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    export: ExportOptions | None = None,
) -> QuantizeResult:
    """Quantize a Keras model's ONNX export to int8 (static, QDQ) and judge it against TensorFlow.

    Args:
        source: the Keras model: a ``.h5``/``.keras``/SavedModel path, a ``keras.Model`` or a ``LoadedModel``.
        output: where to write the int8 ``.onnx`` (atomically); None keeps it in memory.
        onnx_model: its float32 export (a ``ModelProto`` or a path); None converts ``source`` first with ``target``,
            ``opset``, ``optimize``, ``batch_size`` and ``input_shapes`` (see :func:`lambda_export.convert`).
        calibration: samples whose activation ranges the int8 model uses: a ``.npz`` (keys = input names) or ``.npy``
            path, or arrays by input name, batch first. None calibrates on generated N(0, 1) inputs, with a warning:
            a trustworthy int8 model needs real samples.
        held_out: samples the verdict judges on besides the calibration samples (same kinds); None keeps the last
            20 % of the calibration samples out of calibration for it.
        calibration_method: ``percentile`` (default: 0.001st–99.999th percentiles), ``minmax`` or ``entropy`` (see
            :data:`~lambda_export.quantization.engine.CALIBRATION_METHODS`).
        min_agreement: top-1 agreement with TensorFlow each classifier output needs on each set (default 0.99).
        min_cosine: mean cosine similarity with TensorFlow each other output needs (None: 0.999); given, it applies to
            classifiers too (on the logits of a softmax output).
        verify: take the verdict (TensorFlow reference, ONNX Runtime and OpenVINO runs).
        timing: time the int8 model against the float32 export in ONNX Runtime CPU on a batch of the calibration
            samples for ``timing_budget_s`` seconds (:mod:`~lambda_export.quantization.speed`), and warn when int8 is
            slower. False: no timing, and a warning from the CPU's flags alone where it lacks VNNI/AMX.
        timing_budget_s: the seconds the timing takes.
        runtimes: where the verdict runs the int8 model (``onnxruntime``, ``openvino``: skipped with a reason when not
            installed).
        sensitivity: measure each kind of node alone and keep in float what breaks accuracy (False: quantize every
            kind but those kept in float for speed, unmeasured).
        target: the float32 export's target; ``opencv4`` is refused (OpenCV 4.6 cannot load QDQ), ``portable`` warns.
        opset, optimize, batch_size, input_shapes: the conversion's (None ``optimize``: :func:`~lambda_export.convert`'s
            default); unused when ``onnx_model`` is given.
        trust_code, imports: how ``source`` is loaded (see :func:`lambda_export.load_model`); unused when ``loaded``
            is given or ``source`` is a ``LoadedModel``.
        overwrite: replace an existing output file.
        loaded: the already loaded Keras model (skips loading ``source``).
        seed: seed of generated inputs.
        progress: called with a line per step.
        export: the float32 export's options as one record (:class:`~lambda_export.conversion.ExportOptions`),
            instead of the keywords ``target`` to ``imports`` (which must then keep their defaults).

    Steps: those of the module (:mod:`lambda_export.quantization.api`), one function each.

    Raises:
        InputError: bad arguments, an unreadable calibration file or arrays that do not fit the model's inputs, an
            existing output without ``overwrite`` (nothing is written then).
        ConversionError: the conversion or ONNX Runtime's quantizer failed.
    """
    say = progress or (lambda message: None)
    keywords = {"target": target, "opset": opset, "optimize": optimize, "batch_size": batch_size}
    keywords.update(input_shapes=input_shapes, trust_code=trust_code, imports=tuple(imports))
    export = _export_options(export, keywords)
    settings = _Settings(
        calibration_method=calibration_method,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        sensitivity=sensitivity,
        verify=verify,
        runtimes=tuple(runtimes),
        timing=timing,
        timing_budget_s=timing_budget_s,
        seed=seed,
    )
    samples = _Samples(calibration=calibration, held_out=held_out)
    warnings = _checked(settings, export, output, overwrite=overwrite, converting=onnx_model is None)
    loaded = _load(source, loaded, export.trust_code, export.imports)
    float_model = _float_model(loaded, onnx_model, export, samples, say)
    calibrated = _calibrated(float_model, samples, settings.seed, warnings)
    result = _quantized(float_model, calibrated, loaded, settings, export.target, warnings, say)
    result.verdict = _verdict(result, settings, say)
    _timed(result, settings, calibrated.batch, say)
    _with_metadata(result)
    if output is not None:
        result.path = _written(result.model, output, overwrite)
    return result


def _export_options(export: ExportOptions | None, keywords: dict[str, Any]) -> ExportOptions:
    """``export``, or the record of :func:`quantize`'s export keywords (None ``optimize``: convert's default).

    Raises:
        InputError: both ``export`` and an export keyword other than its default.
    """
    from lambda_export.conversion import DEFAULT_OPTIMIZE, ExportOptions

    if export is not None:
        given = sorted(name for name, value in keywords.items() if value != _EXPORT_KEYWORDS[name])
        if given:
            raise InputError(
                f"export and {', '.join(given)}: give the export options once, in export or as keywords",
                argument="export",
            )
        return export
    optimize = DEFAULT_OPTIMIZE if keywords["optimize"] is None else keywords["optimize"]
    return ExportOptions(**{**keywords, "optimize": optimize})


def _checked(
    settings: _Settings, export: ExportOptions, output: Any, *, overwrite: bool, converting: bool
) -> list[str]:
    """Refuse bad arguments (and, when converting, bad conversion options) and an existing output before any slow
    work; the warnings they call for."""
    warnings = check_quantize_arguments(
        calibration_method=settings.calibration_method,
        min_agreement=settings.min_agreement,
        min_cosine=settings.min_cosine,
        target=export.target,
    )
    if converting:
        export.check()
    if output is not None and Path(output).exists() and not overwrite:
        raise InputError(f"{output} exists; pass overwrite=True to replace it", argument="overwrite=True")
    return warnings


def _float_model(
    loaded: LoadedModel,
    onnx_model: onnx.ModelProto | str | os.PathLike[str] | None,
    export: ExportOptions,
    samples: _Samples,
    say: Callable[[str], None],
) -> onnx.ModelProto:
    """The float32 export: ``onnx_model`` (read if a path), or :func:`lambda_export.convert` of the Keras model with
    ``export``'s options after the samples are checked (a bad file fails before the conversion)."""
    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model
    if onnx_model is not None:
        from lambda_export.io import load_onnx

        return load_onnx(onnx_model)
    from lambda_export import conversion

    check_samples(loaded, calibration=samples.calibration, held_out=samples.held_out)
    say(f"converting (target {export.target})")
    return conversion.convert(loaded.model, loaded=loaded, **export.convert_arguments()).model


def _calibrated(float_model: onnx.ModelProto, samples: _Samples, seed: int, warnings: list[str]) -> _Calibrated:
    """The calibration and held-out sets (their notes and the generated-inputs warning added to ``warnings``)."""
    inputs, batch = _batch(float_model)
    data = calibration_data(inputs, samples.calibration, samples.held_out, seed=seed)
    if data.generated:
        warnings.insert(0, GENERATED_WARNING)
    warnings.extend(data.notes)  # samples dropped to fit a fixed batch, nothing held out: never silent
    return _Calibrated(data, batch)


def _quantized(
    float_model: onnx.ModelProto,
    calibrated: _Calibrated,
    loaded: LoadedModel,
    settings: _Settings,
    target: str,
    warnings: list[str],
    say: Callable[[str], None],
) -> QuantizeResult:
    """Calibrate once, measure each kind of node alone (unless ``sensitivity`` is off), keep in float what breaks
    accuracy: the int8 model and why, not judged yet."""
    with Quantizer(float_model, calibrated.data.calibration, settings.calibration_method, calibrated.batch) as engine:
        selection = choose_float_groups(
            engine,
            min_agreement=settings.min_agreement,
            min_cosine=settings.min_cosine,
            measure=settings.sensitivity,
            layers=_layer_classes(loaded),
            progress=say,
        )
    return QuantizeResult(
        model=selection.model,
        float_model=float_model,
        calibration=calibrated.data,
        method=settings.calibration_method,
        selection=selection,
        warnings=warnings,
        loaded=loaded,
        target=target,
    )


def _verdict(result: QuantizeResult, settings: _Settings, say: Callable[[str], None]) -> Int8Verdict | None:
    """The int8 model against TensorFlow on both sets (:func:`int8_verdict`); None without ``verify``."""
    if not settings.verify:
        return None
    assert result.loaded is not None
    return int8_verdict(
        result.loaded,
        result.model,
        result.calibration,
        min_agreement=settings.min_agreement,
        min_cosine=settings.min_cosine,
        runtimes=settings.runtimes,
        float_model=result.float_model,
        progress=say,
    )


def _written(model: onnx.ModelProto, output: str | os.PathLike[str], overwrite: bool) -> str:
    """The int8 model written atomically to ``output``: its path."""
    from lambda_export.io import save_model_atomic

    return save_model_atomic(model, output, overwrite=overwrite)


def _timed(result: QuantizeResult, settings: _Settings, batch: int, say: Callable[[str], None]) -> None:
    """Time int8 against float32 (a warning when int8 is slower); without timing, the CPU flags' warning."""
    if settings.timing:
        say(f"timing int8 against float32 in ONNX Runtime CPU ({settings.timing_budget_s:g} s)")
        feed = _timing_feed(result.calibration.calibration, batch)
        result.speed = int8_speed(result.float_model, result.model, feed, budget_s=settings.timing_budget_s)
        slower = speed_warning(result.speed)
        result.warnings.extend([slower] if slower else [])
    else:
        unmeasured = cpu_warning()
        result.warnings.extend([unmeasured] if unmeasured else [])


def int8_verdict(
    source: Any,
    int8_model: onnx.ModelProto | str | os.PathLike[str],
    samples: CalibrationData | dict[str, Any],
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_cosine: float | None = None,
    runtimes: Sequence[str] = RUNTIMES,
    float_model: onnx.ModelProto | None = None,
    locate: bool = True,
    trust_code: bool = False,
    imports: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> Int8Verdict:
    """The accuracy verdict of an int8 model against the Keras model (TensorFlow float32).

    Args:
        source: the Keras model (path, ``keras.Model`` or ``LoadedModel``).
        int8_model: the int8 model (``ModelProto`` or path).
        samples: a :class:`CalibrationData` (both of its sets are judged), or set name → arrays by input name (or a
            ``.npz``/``.npy`` path), e.g. ``{"held_out": "samples.npz"}``.
        float_model: the float32 export: on failure, the layers that add the most error are named.

    See :mod:`lambda_export.quantization.verdict` for the metrics and the rule.

    Raises:
        InputError: a threshold outside [0, 1], unreadable samples.
    """
    check_thresholds(min_agreement, min_cosine)
    loaded = _load(source, None, trust_code, imports)
    if not isinstance(int8_model, onnx.ModelProto):
        from lambda_export.io import load_onnx

        int8_model = load_onnx(int8_model)
    inputs, batch = _batch(int8_model)
    if isinstance(samples, CalibrationData):
        sets = samples.sets()
    else:
        sets = {name: sample_arrays(value, inputs, name)[0] for name, value in samples.items() if value is not None}
    if not sets:
        raise InputError("samples: no samples to judge the int8 model on", argument="samples")
    return judge(
        loaded,
        int8_model,
        sets,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        runtimes=runtimes,
        batch=batch,
        float_model=float_model,
        locate=locate,
        progress=progress,
    )
