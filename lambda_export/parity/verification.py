"""The verify step: :class:`ParityConfig` (the options of a check) and :func:`verify`, which runs it.

:func:`verify` loads both models, checks their inputs and outputs match, draws the input sets, runs the Keras
reference on TensorFlow's CPU, and for the relative rule its float64 clone (:func:`_float64_truth`), warns about
outputs that barely depend on the inputs (:func:`_insensitive_outputs`), runs each ONNX Runtime provider on every set
(:func:`_run_candidates`), then optionally locates the first diverging layer (:func:`_locate`) and checks a float16
export (:func:`_check_fp16`). TF32 is turned off in TensorFlow while a GPU provider runs (:func:`_tf32_setting`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lambda_export import ort
from lambda_export.errors import InputError, ProviderUnavailableError, first_line
from lambda_export.graph import TensorInfo, graph_io
from lambda_export.io import save_model_atomic
from lambda_export.loading import LoadedModel, load_model
from lambda_export.ort import CPU, GPU_PROVIDERS, TENSORRT
from lambda_export.parity.inputs import (
    DISTRIBUTIONS,
    INT_HIGH,
    check_arrays,
    check_distribution,
    derived_seed,
    load_inputs,
    make_inputs,
    merge_inputs,
    string_vocabularies,
    vocabulary_notes,
)
from lambda_export.parity.locate import LOCATE_MAX_BATCH, LOCATE_MODES, locate_divergence
from lambda_export.parity.metrics import (
    DEFAULT_ATOL,
    DEFAULT_FACTOR,
    DEFAULT_FLOOR,
    DEFAULT_RTOL,
    FLOAT32_EPS,
    FP16_ATOL,
    FP16_RTOL,
    ErrorHistogram,
    Metrics,
    check_rule,
    check_tolerance,
    compare,
    compare_to_truth,
    error_against,
)
from lambda_export.parity.reference import float64_model, run_float64
from lambda_export.parity.results import ParityReport, ResultRow, environment
from lambda_export.parity.running import (
    keras_feed,
    load_onnx_model,
    model_bytes,
    ort_failure,
    run_keras,
    session_source,
)

__all__ = ["ParityConfig", "verify"]


@dataclass
class ParityConfig:
    """The options of a parity check (:func:`verify`); :meth:`validate` refuses bad ones before any slow work.

    Attributes:
        providers: ORT providers (short names cpu/cuda/tensorrt or full names, a list or a comma-separated string);
            None = all available, the others listed in ``providers_skipped``.
        rule: "relative" (default) or "absolute", see :mod:`lambda_export.parity.metrics`. Relative: the Keras model
            also runs in float64 (:func:`lambda_export.parity.reference.float64_model`) and each ONNX output passes
            when its max and RMS error against that truth are within ``factor`` times TensorFlow float32's own,
            plus ``floor`` float32 epsilons of the output's scale; where no float64 model can be built the absolute
            rule decides and the report says why. Absolute: ``|onnx − tf| ≤ atol + rtol·|tf|``. Passing ``atol`` or
            ``rtol`` to :func:`verify` as keywords without ``rule`` selects the absolute rule.
        factor: relative rule, how many times TensorFlow float32's own error the export may have (default 6).
            TensorFlow's error is estimated per input set as the median of three draws, on its inputs and on two
            copies jittered by 1e-3 (relative; :func:`_baselines`), then the largest over the sets of the same
            distribution. One draw is not enough where few elements carry the error: the newcomer guide's trained
            classifier (docs/guide.md) saturates its softmax on all N(0, 1) items but one, TensorFlow's error there
            ranges 5.5e-7 to 1.7e-5 over the jittered copies, and a lucky-small draw failed its right export (1.23×
            allowed on one machine, 0.89× here). Over 40 seeds of the default inputs (here): worst right export 0.89×
            with one draw, 0.58× with the median of three; a weight ×1.001 (median over the seeds) stem 72× → 64×,
            lambda 13× → 12×, softmax layer 6.2× → 5.5×. Rejected: the max of three draws (worst 0.47× but margins
            halved: stem 47×, lambda 8.7×); pooling both distributions (no change: U[0, 1) saturates every item);
            more samples (2 or 3: worst 1.20× / 1.57×, more of the export's own draws). Measured on the CPU (batch 1 and 4, N(0, 1) and U[0, 1) inputs, 2 samples), on correct exports,
            export error / TensorFlow error on the outputs: up to 2.8 (max) and 2.4 (RMS) over the demo,
            LambdaResNet-26 and -50 (local and relative) at 64×64 and keras MobileNetV3 Large/Small, ResNet50,
            EfficientNetB0 and DenseNet121 at 32×32 with batch norms calibrated on one batch; per layer up to 4.0
            (MobileNetV3Small). The 50 conformance zoo models run (benchmarks/zoo_models.py: the CI subset, 8
            applications, every layer and lambda model) all pass using at most 62% of the allowance (ratios past 4
            there, up to 4.7 max / 6.1 RMS, only where TensorFlow's own error is a few float32 eps and the floor
            decides). Sabotaged exports (a weight off by 1e-3, a batch norm without its epsilon of 1e-3, a position
            embedding shifted by one position, a transposed head order) give 9 to 2·10⁵ on the outputs with the
            default inputs (batch 1 and 4, N(0, 1) and U[0, 1); 105 to 1.8·10⁵ at batch 2 on N(0, 1)), and
            of the same order at their layer. 6 sits between the two: an export may be a few times less accurate
            than TensorFlow (other summation orders, batch norms folded into weights), not an order of magnitude.
        floor: relative rule, errors up to ``floor · 2⁻²³ · max|f64|`` (RMS: ``· rms(f64)``) always pass (default
            8): where TensorFlow float32 happens to be exact or nearly (a saturated softmax, a copy, a small recurrent
            layer), the export may still round a few times of its own.
        atol, rtol: float32 tolerances of the absolute rule ``|onnx − tf| ≤ atol + rtol·|tf|``; also the yardstick of
            the warning about outputs that barely vary across the inputs. The defaults (1e-4, 1e-3) come from
            float32 itself: one op rounds at 2⁻²⁴ ≈ 6e-8 relative, but TensorFlow and ONNX Runtime sum convolutions
            and matmuls in different orders, fold batch norms into weights and use different exp/rsqrt kernels, so
            errors grow with depth and with the size of the reductions. Measured on the CPU: a single lambda layer
            ≈ 3e-6 max abs; the tiny demo LambdaResNet 2.4e-7 on its softmax output and up to 1.7e-5 inside the
            lambda layer (activations of order 10). atol = 1e-4 leaves ≥ 6× headroom there and ~30× on typical
            layers, for deeper models and other CPUs, while a wrong weight, layout or epsilon shows up at 1e-3 and
            more (a convolution weight scaled by 1.5 moves the demo's probabilities by 4.5e-3). Near-zero outputs
            have per-op relative errors up to 5e-3, so rtol alone cannot work; rtol = 1e-3 (≈ 2¹³ float32 ulps)
            keeps large activations and logits from failing on their absolute error.
        inputs: the user's inputs instead of random ones: a dict name → array or a ``.npz``/``.npy`` path (the batch
            is taken from the data; reported with distribution "user").
        batch_sizes: batch sizes for random inputs; None (or a fixed batch in the ONNX graph) uses the graph's batch.
        distributions: random input distributions, see :func:`lambda_export.parity.make_inputs`.
        samples: seeded random draws per batch size × distribution.
        seed: base seed; each draw's seed is derived from (seed, batch, distribution, sample) and reported.
        tf32: leave TF32 on when a CUDA provider runs (default off on both sides, noted in the report).
        locate: "on_failure", "always" or "never": run :func:`lambda_export.parity.locate_divergence`.
        fp16: also convert the ONNX model to float16 (:func:`lambda_export.fp16.to_float16`) and check it against the
            float32 TensorFlow reference with ``fp16_atol``/``fp16_rtol`` (reported separately, part of ``passed``).
        fp16_atol, fp16_rtol: float16 tolerances (default 1e-2, 1e-2). float16 keeps a 10-bit mantissa: every
            rounding is up to 2⁻¹¹ ≈ 4.9e-4 relative, 8192× float32's, and each op's output is rounded again, so a
            network of depth L accumulates ≈ √L to L such errors, amplified by batch norms and attention logits: a few
            1e-3 for the 20–40 ops of small models. Measured on the tiny demo LambdaResNet (softmax output, batch 1
            and 16, N(0, 1) and U[0, 1) inputs, 3 samples each): max abs 2.7e-4 on ONNX Runtime's CPU (float16
            weights, float32 compute) and 6.1e-4 (max rel 3.1e-3) with every op output rounded to float16, the GPU
            case; 1e-2 leaves ~15× headroom for deeper models. So this check tells whether float16 is accurate enough;
            it is not a bug detector (a convolution near the demo's output scaled by 1.5 moves its probabilities by
            only 4.5e-3): the float32 check is. Inputs of ~1e3 ("large") overflow float16 (max 65504) inside the
            network and fail with Inf/NaN.
        trust_code, imports: as for :func:`lambda_export.loading.load_model`.
        int_high: integer inputs are drawn from [0, int_high).
        fp16_output: also save the float16 model there (atomically; an existing file is replaced).
    """

    providers: list[str] | str | None = None
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    rule: str = "relative"
    factor: float = DEFAULT_FACTOR
    floor: float = DEFAULT_FLOOR
    inputs: dict[str, np.ndarray] | str | os.PathLike[str] | None = None
    batch_sizes: Sequence[int | None] = (1, 4)
    distributions: Sequence[str] = ("normal", "uniform")
    samples: int = 1
    seed: int = 0
    tf32: bool = False
    locate: str = "on_failure"
    fp16: bool = False
    fp16_atol: float = FP16_ATOL
    fp16_rtol: float = FP16_RTOL
    trust_code: bool = False
    imports: list[str] | tuple[str, ...] = ()
    int_high: int = INT_HIGH
    fp16_output: str | os.PathLike[str] | None = None

    def validate(self) -> None:
        """Refuse bad options: what :func:`verify` checks before loading anything.

        Messages about one option start with its API name (``samples 0: must be >= 1``), which the error's
        ``argument`` holds.

        Raises:
            InputError: a negative or non-finite tolerance, an unknown rule, a factor under 1, a negative floor, an
                unknown ``locate`` mode or distribution, ``samples`` under 1, no batch size or distribution for random
                inputs, a batch size that is not a positive integer, an unknown provider name.
            ProviderUnavailableError: a requested provider cannot run here, or none can.
        """
        check_tolerance(self.atol, self.rtol)
        check_rule(self.rule, self.factor, self.floor)
        if self.fp16:
            check_tolerance(self.fp16_atol, self.fp16_rtol, names=("fp16_atol", "fp16_rtol"))
        if self.locate not in LOCATE_MODES:
            raise InputError(f"locate={self.locate!r}: choose among {', '.join(LOCATE_MODES)}", argument="locate")
        if int(self.samples) < 1:
            raise InputError(f"samples {self.samples}: must be >= 1", argument="samples")
        for distribution in self.distributions:
            check_distribution(distribution)
        if self.inputs is None and (not self.batch_sizes or not self.distributions):
            raise InputError("give at least one batch size and one distribution (or your own inputs)")
        for size in self.batch_sizes:
            if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0):
                raise InputError(f"batch size {size!r}: must be a positive integer")
        run, _ = ort.resolve_providers(self.providers)
        if not run:
            raise ProviderUnavailableError("no ONNX Runtime provider can run here")


def verify(
    source: Any,
    onnx_model: Any,
    config: ParityConfig | None = None,
    *,
    loaded: LoadedModel | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> ParityReport:
    """Check that the ONNX model computes what the Keras model computes, on every requested ORT provider.

    Args:
        source: the Keras model: a path (``.h5``, ``.keras``, SavedModel folder), a ``keras.Model``, or ignored when
            ``loaded`` is given.
        onnx_model: path to an ``.onnx`` file or an ``onnx.ModelProto``; its inputs/outputs carry the Keras names.
        config: the options (:class:`ParityConfig`); None = the defaults.
        loaded: an already loaded model (skips loading ``source``).
        progress: called with a short message before each long step.
        options: :class:`ParityConfig` fields by name (``providers=["cpu"]``, ``atol=1e-5``, ...), replacing those
            of ``config``; ``atol`` or ``rtol`` without ``rule`` selects the absolute rule.

    Raises:
        InputError: unreadable model/inputs, mismatched input/output names, bad arguments.
        ProviderUnavailableError: a requested provider cannot run here.
        ConversionError: ONNX Runtime cannot load or run the ONNX graph (the node named; exit code 3).
    """
    config = _with_options(config, options)
    say = progress or (lambda message: None)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    config.validate()
    run, skipped = ort.resolve_providers(config.providers)

    step = time.perf_counter()
    loaded = _load_keras(source, loaded, config, say)
    proto, onnx_path = load_onnx_model(onnx_model)
    timings["load"] = time.perf_counter() - step

    infos, keras_out = _matching_io(loaded, proto)
    vocabularies = string_vocabularies(loaded.model, infos)
    sets, inputs_label = _input_sets(config, infos, notes, loaded.input_ranges, vocabularies)
    report = ParityReport(
        passed=False,
        atol=float(config.atol),
        rtol=float(config.rtol),
        rule=config.rule,
        factor=float(config.factor),
        floor=float(config.floor),
        providers_run=list(run),
        providers_skipped=dict(skipped),
        results=[],
        fp16=bool(config.fp16),
        fp16_atol=float(config.fp16_atol),
        fp16_rtol=float(config.fp16_rtol),
        tf32=bool(config.tf32),
        notes=notes,
        timings=timings,
        settings=_settings(config, sets, inputs_label),
        model={
            "source": loaded.source or "in-memory",
            "onnx": onnx_path or "in-memory",
            "inputs": infos,
            "outputs": loaded.outputs,
        },
    )
    try:
        with _tf32_setting(run, config.tf32, notes):
            _run_checks(report, loaded, proto, sets, keras_out, config, say)
    finally:
        report.environment = environment()
        timings["total"] = time.perf_counter() - started
    return report


def _with_options(config: ParityConfig | None, options: dict[str, Any]) -> ParityConfig:
    """``config`` with ``options`` (field name → value) replacing its fields; the defaults when it is None.

    Explicit tolerances (``atol``/``rtol``) without a ``rule`` ask for the absolute rule.

    Raises:
        TypeError: an option that is not a :class:`ParityConfig` field.
    """
    if ("atol" in options or "rtol" in options) and "rule" not in options:
        options = {**options, "rule": "absolute"}
    if config is None:
        return ParityConfig(**options)
    return dataclasses.replace(config, **options) if options else config


def _load_keras(
    source: Any, loaded: LoadedModel | None, config: ParityConfig, say: Callable[[str], None]
) -> LoadedModel:
    """``loaded``, ``source`` when it is already loaded, or ``source`` loaded with the config's code settings."""
    if loaded is not None:
        return loaded
    if isinstance(source, LoadedModel):
        return source
    say(f"loading {source if isinstance(source, (str, os.PathLike)) else 'the Keras model'}")
    return load_model(source, trust_code=config.trust_code, imports=config.imports)


def _matching_io(loaded: LoadedModel, proto: onnx.ModelProto) -> tuple[list[TensorInfo], list[str]]:
    """The input descriptions to draw from (Keras's, with the dims the ONNX graph fixes) and the output names.

    Raises:
        InputError: the two models' input or output names differ.
    """
    onnx_inputs, onnx_outputs = graph_io(proto)
    keras_in = [info.name for info in loaded.inputs]
    keras_out = [info.name for info in loaded.outputs]
    if sorted(i.name for i in onnx_inputs) != sorted(keras_in):
        raise InputError(
            f"the ONNX model's inputs {[i.name for i in onnx_inputs]} do not match the Keras model's inputs {keras_in}"
        )
    if sorted(onnx_outputs) != sorted(keras_out):
        raise InputError(f"the ONNX model's outputs {onnx_outputs} do not match the Keras model's outputs {keras_out}")
    return merge_inputs(loaded.inputs, onnx_inputs), keras_out


# -- input sets ----------------------------------------------------------------------------------------------------


@dataclass
class _InputSet:
    batch_size: int
    distribution: str
    sample: int
    seed: int | None
    feed: dict[str, np.ndarray]
    reference: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] | None = None  # the float64 model's outputs (relative rule)
    baseline: list[tuple[float, float]] | None = None  # per output: TensorFlow's (max, rms) error, see _baselines
    jitters: list[tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=list)  # see _jitter_draws


def _input_sets(
    config: ParityConfig,
    infos: list[TensorInfo],
    notes: list[str],
    ranges: dict[str, tuple[int, int]] | None = None,
    vocabularies: dict[str, Any] | None = None,
) -> tuple[list[_InputSet], str]:
    """The input sets to compare on, and how the report names them ("random", "user (in memory)" or the file).

    ``ranges``: each input's value range read from the Keras model (``LoadedModel.input_ranges``) for random draws;
    ``vocabularies``: each string input's tokens (:func:`lambda_export.parity.inputs.string_vocabularies`).
    """
    if config.inputs is None:
        notes.extend(vocabulary_notes(vocabularies or {}))
        return _random_sets(config, infos, notes, ranges, vocabularies), "random"
    if isinstance(config.inputs, dict):
        feed = check_arrays(config.inputs, infos, "inputs")
        inputs_label = "user (in memory)"
    else:
        feed = load_inputs(config.inputs, infos)
        inputs_label = str(config.inputs)
    first = next(iter(feed.values()))
    return [_InputSet(int(first.shape[0]) if first.ndim else 1, "user", 0, None, feed)], inputs_label


def _random_sets(
    config: ParityConfig,
    infos: list[TensorInfo],
    notes: list[str],
    ranges: dict[str, tuple[int, int]] | None = None,
    vocabularies: dict[str, Any] | None = None,
) -> list[_InputSet]:
    """One seeded draw per batch size × distribution × sample (the graph's batch, when it fixes one)."""
    fixed = sorted({info.shape[0] for info in infos if info.shape and info.shape[0] is not None})
    if fixed:
        sizes = [fixed[0]]
        if any(size is not None and size != fixed[0] for size in config.batch_sizes):
            notes.append(
                f"the ONNX graph fixes the batch size to {fixed[0]}: batch sizes {list(config.batch_sizes)} not used"
            )
    else:
        sizes = list(dict.fromkeys(1 if size is None else int(size) for size in config.batch_sizes))
    sets = []
    for size in sizes:
        for distribution in config.distributions:
            for sample in range(int(config.samples)):
                derived = derived_seed(config.seed, size, DISTRIBUTIONS.index(distribution), sample)
                feed = make_inputs(
                    infos,
                    size,
                    distribution,
                    derived,
                    int_high=config.int_high,
                    ranges=ranges,
                    vocabularies=vocabularies,
                )
                sets.append(_InputSet(size, distribution, sample, derived, feed))
    return sets


def _settings(config: ParityConfig, sets: list[_InputSet], inputs_label: str) -> dict[str, Any]:
    """The report's ``settings``: what was compared on."""
    return {
        "batch_sizes": sorted({s.batch_size for s in sets}),
        "distributions": list(dict.fromkeys(s.distribution for s in sets)),
        "samples": int(config.samples),
        "seed": int(config.seed),
        "inputs": inputs_label,
        "locate": config.locate,
        "int_high": int(config.int_high),
    }


# -- running -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tf32_setting(run: list[str], tf32: bool, notes: list[str]) -> Iterator[None]:
    """TF32 off in TensorFlow while a GPU provider runs (unless ``tf32``), restored afterwards; ``notes`` say so."""
    uses_gpu = any(p in GPU_PROVIDERS for p in run)
    restore_tf32 = None
    import tensorflow as tf

    if uses_gpu and not tf32:
        restore_tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        notes.append(
            "TF32 turned off for float32 parity: ONNX Runtime CUDA use_tf32=0 and "
            "tf.config.experimental.enable_tensor_float_32_execution(False)"
        )
        if TENSORRT in run:
            notes.append(
                "TensorRT has no ONNX Runtime option for TF32; start the process with NVIDIA_TF32_OVERRIDE=0 to rule it out"
            )
    elif uses_gpu:
        notes.append("TF32 left on (tf32=True): GPU matmuls/convolutions round their inputs to a 10-bit mantissa")
    try:
        yield
    finally:
        if restore_tf32 is not None:
            tf.config.experimental.enable_tensor_float_32_execution(restore_tf32)


def _run_checks(
    report: ParityReport,
    loaded: LoadedModel,
    proto: onnx.ModelProto,
    sets: list[_InputSet],
    keras_out: list[str],
    config: ParityConfig,
    say: Callable[[str], None],
) -> None:
    """The reference, the float32 comparisons, the divergence search and the float16 check; sets ``report.passed``."""
    run, timings = report.providers_run, report.timings
    say(f"TensorFlow reference on the CPU ({len(sets)} input set(s))")
    step = time.perf_counter()
    for item in sets:
        item.reference = run_keras(loaded.model, keras_feed(loaded, item.feed), graph=True)
        if len(item.reference) != len(keras_out):
            raise InputError(
                f"the Keras model returned {len(item.reference)} outputs, its description lists {len(keras_out)}"
            )
    timings["reference"] = time.perf_counter() - step
    truth_model = _float64_truth(report, loaded, sets, config, say) if config.rule == "relative" else None
    _insensitive_outputs(report, sets, keras_out, config)

    rule = _Rule(config.atol, config.rtol, config.factor, config.floor, config.tf32)
    with session_source(proto) as source:  # a temporary file: no serialized copy here (external data over 2 GiB)
        report.results, fp32_hist = _run_candidates(
            source, run, sets, keras_out, rule, "fp32", timings, say, report.notes
        )
    report.histograms.extend(fp32_hist)

    fp32_passed = bool(report.results) and all(row.metrics.passed for row in report.results)
    if config.locate == "always" or (config.locate == "on_failure" and not fp32_passed):
        _locate(report, loaded, proto, sets, config, say, truth_model)
    fp16_passed = _check_fp16(report, proto, sets, keras_out, config, say) if config.fp16 else True
    report.passed = fp32_passed and fp16_passed


def _float64_truth(
    report: ParityReport, loaded: LoadedModel, sets: list[_InputSet], config: ParityConfig, say: Callable[[str], None]
) -> Any:
    """Run the float64 clone on every set (``item.truth``) and return it; None, with a note, when there is none."""
    say("float64 reference (the Keras model in float64, same weights)")
    step = time.perf_counter()
    # probed at the shapes it will run on: unknown dims (a sequence length) from the first input set
    clone, reason = float64_model(loaded.model, {name: np.shape(array) for name, array in sets[0].feed.items()})
    if clone is not None:
        try:
            for item in sets:
                item.truth = run_float64(clone, loaded, item.feed)
                if len(item.truth) != len(item.reference):
                    raise ValueError(f"it returned {len(item.truth)} outputs, the float32 model {len(item.reference)}")
                item.jitters = _jitter_draws(clone, loaded, item)
        except Exception as exc:
            clone, reason = None, f"the float64 model failed: {first_line(exc)}"
            for item in sets:
                item.truth, item.jitters = None, []
    if clone is not None:
        _baselines(sets)
    report.timings["reference_float64"] = time.perf_counter() - step
    report.float64_reason = reason
    if reason is not None:
        report.notes.append(
            f"no float64 reference ({reason}): the absolute rule |onnx − tf| ≤ atol + rtol·|tf| decides instead"
        )
    return clone


JITTER_DRAWS = 2
"""Extra draws of TensorFlow float32's own error per input set (:func:`_jitter_draws`): the set's estimate is the
median of its own draw and these (see :func:`_baselines`)."""
JITTER = 1e-3
"""Relative size of the jitter of those draws' float inputs: each value times ``1 + JITTER·N(0, 1)``."""


def _jitter_draws(clone: Any, loaded: LoadedModel, item: _InputSet) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """``JITTER_DRAWS`` (float64, float32) output pairs of ``item``'s inputs jittered by ``JITTER`` (relative; integer
    and boolean inputs unchanged): fresh draws of TensorFlow float32's rounding at the same operating point (the same
    softmax items saturated, the same ReLUs on), only for the baseline. None when the set has no float input."""
    if not any(np.asarray(a).dtype.kind == "f" for a in item.feed.values()):
        return []
    rng = np.random.default_rng([0 if item.seed is None else int(item.seed), 0x6A17])
    draws = []
    for _ in range(JITTER_DRAWS):
        feed = {
            name: (a * (1 + JITTER * rng.standard_normal(a.shape))).astype(a.dtype) if a.dtype.kind == "f" else a
            for name, a in ((name, np.asarray(a)) for name, a in item.feed.items())
        }
        truth = run_float64(clone, loaded, feed)
        reference = run_keras(loaded.model, keras_feed(loaded, feed), graph=True)
        draws.append((truth, reference))
    return draws


def _baselines(sets: list[_InputSet]) -> None:
    """Set each set's ``baseline``: per output, TensorFlow float32's (max, rms) error against float64, estimated per
    set as the median of its own draw and its ``JITTER_DRAWS`` jittered ones (:func:`_jitter_draws`), then the largest
    of these estimates over the sets of the same input distribution (all batch sizes and samples).

    TensorFlow's error on one set is one random draw of its rounding, heavy-tailed where few elements carry the error
    (a trained classifier's softmax saturated on all items but one: draws of 5.5e-7 to 1.7e-5 on the same inputs
    jittered by 1e-3), while the export's follows its own draw: a lucky-small draw of TensorFlow's failed right
    exports. The median of three draws at the same operating point drops such a draw without inflating the estimate
    as a max over draws would (which halves the sabotage margins); the largest over the sets of its kind still
    compares a row on normal inputs with errors on normal inputs. Numbers: :class:`ParityConfig`'s ``factor``.
    """
    errors = {}
    for item in sets:
        draws = [(item.truth or [], item.reference)] + [(t, r) for t, r in item.jitters]
        per_draw = [[error_against(t, r) for t, r in zip(truth, ref, strict=False)] for truth, ref in draws]
        errors[id(item)] = [
            (
                float(np.median([d[index][0] for d in per_draw if index < len(d)])),
                float(np.median([d[index][1] for d in per_draw if index < len(d)])),
            )
            for index in range(len(per_draw[0]))
        ]
    for item in sets:
        peers = [errors[id(other)] for other in sets if other.distribution == item.distribution]
        item.baseline = [
            (max(p[index][0] for p in peers), max(p[index][1] for p in peers)) for index in range(len(errors[id(item)]))
        ]


def _insensitive_outputs(
    report: ParityReport, sets: list[_InputSet], keras_out: list[str], config: ParityConfig
) -> None:
    """Warn about each output that is constant, or varies less than the absolute tolerance, across all the inputs.

    Such an output barely depends on its inputs (random weights, a saturated softmax), so a wrong graph gives the
    same numbers as a right one and no rule can tell them apart. Needs at least two samples (over every set). It is
    called constant when its values differ by float32 rounding only (TensorFlow's kernels for batch 1 and batch 4 do
    not round alike).
    """
    for index, name in enumerate(keras_out):
        arrays = [np.asarray(item.reference[index]) for item in sets]
        if not arrays or arrays[0].ndim == 0 or any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
            continue
        if arrays[0].dtype.kind not in "biuf":
            continue
        stacked = np.concatenate(arrays).astype(np.float64)
        samples = int(stacked.shape[0])
        if samples < 2 or not np.isfinite(stacked).all():
            continue
        spread = stacked.max(axis=0) - stacked.min(axis=0)
        magnitude = np.abs(stacked).max(axis=0)
        if not (spread <= config.atol + config.rtol * magnitude).all():
            continue
        widest = float(spread.max()) if spread.size else 0.0
        constant = bool((spread <= _CONSTANT_ULPS * FLOAT32_EPS * magnitude).all())  # rounding apart
        report.insensitive_outputs[name] = {"samples": samples, "spread": widest, "constant": constant}
        what = (
            "is constant across"
            if constant
            else f"varies by at most {widest:.2g} (less than atol + rtol·|tf| = {config.atol:g} + {config.rtol:g}·|tf|) "
            "across"
        )
        report.warnings.append(
            f"output {name!r} {what} the {samples} input samples: it barely depends on its inputs, so this check cannot "
            "tell a right graph from a wrong one; check with real samples (inputs=FILE.npz)"
        )


_CONSTANT_ULPS = 16
"""An output whose values across the inputs differ by at most this many float32 eps (relative) is called constant."""


@dataclass(frozen=True)
class _Rule:
    """The settings of the float32 verdict: the absolute tolerances and the relative rule's factor and floor."""

    atol: float
    rtol: float
    factor: float
    floor: float
    tf32: bool


def _run_candidates(
    serialized: bytes | str,
    providers: list[str],
    sets: list[_InputSet],
    output_names: list[str],
    rule: _Rule,
    precision: str,
    timings: dict[str, float],
    say: Callable[[str], None],
    notes: list[str],
) -> tuple[list[ResultRow], list[ErrorHistogram]]:
    """Run the model on each provider over every input set: one row per output and set, one histogram per output.

    Rows are judged by the relative rule where the set has a float64 truth (:func:`_judge`), else by the absolute
    one.

    Raises:
        ConversionError: ONNX Runtime cannot load or run the graph (:func:`lambda_export.parity.running.ort_failure`:
            the node and op named): a graph that does not run is a conversion failure (exit 3), not a parity one.
    """
    rows: list[ResultRow] = []
    histograms: list[ErrorHistogram] = []
    suffix = "" if precision == "fp32" else f" {precision}"
    candidate_name = "ONNX output" if precision == "fp32" else f"ONNX {precision} output"
    for provider in providers:
        say(f"ONNX Runtime {provider}{suffix}: {len(sets)} input set(s)")
        hist = {name: ErrorHistogram.of_ratios(provider, name, precision) for name in output_names}
        histograms.extend(hist.values())
        step = time.perf_counter()
        try:
            session = ort.session(serialized, provider, tf32=rule.tf32)
        except Exception as exc:
            raise ort_failure(exc, provider, precision, "load") from exc
        timings[f"session[{provider}]{suffix}"] = time.perf_counter() - step
        step = time.perf_counter()
        for item in sets:
            try:
                outputs = dict(zip(output_names, session.run(output_names, item.feed), strict=True))
            except Exception as exc:
                raise ort_failure(exc, provider, precision, "run", item.batch_size) from exc
            for index, name in enumerate(output_names):
                truth = _truth_for(item, index, provider, rule, notes)
                baseline = item.baseline[index] if item.baseline else None
                metrics = _judge(
                    truth, baseline, item.reference[index], outputs[name], name, rule, candidate_name, notes
                )
                hist[name].add_judged(item.reference[index], outputs[name], metrics, truth, rule.atol, rule.rtol)
                rows.append(
                    ResultRow(
                        provider, name, item.batch_size, item.distribution, item.sample, metrics, item.seed, precision
                    )
                )
        timings[f"run[{provider}]{suffix}"] = time.perf_counter() - step
    return rows, histograms


def _truth_for(item: _InputSet, index: int, provider: str, rule: _Rule, notes: list[str]) -> np.ndarray | None:
    """The float64 truth of output ``index`` of ``item``, or None (no truth; TF32 allowed on a GPU provider)."""
    if item.truth is None:
        return None
    if rule.tf32 and provider in GPU_PROVIDERS:
        note = (
            f"{provider}: TF32 allowed, so its rows use the absolute rule (TF32 rounds matmul inputs to 10 bits, far "
            "beyond TensorFlow float32's own error)"
        )
        if note not in notes:
            notes.append(note)
        return None
    return item.truth[index]


def _judge(
    truth: np.ndarray | None,
    baseline: tuple[float, float] | None,
    reference: np.ndarray,
    candidate: np.ndarray,
    name: str,
    rule: _Rule,
    candidate_name: str,
    notes: list[str],
) -> Metrics:
    """The relative rule against ``truth`` when there is one, the absolute rule otherwise (or when it is unusable)."""
    if truth is not None:
        try:
            return compare_to_truth(
                truth,
                reference,
                candidate,
                rule.atol,
                rule.rtol,
                factor=rule.factor,
                floor=rule.floor,
                baseline=baseline,
                candidate_name=candidate_name,
            )
        except ValueError:
            note = f"output {name!r}: the float64 model gives NaN/Inf or another shape; the absolute rule decides it"
            if note not in notes:
                notes.append(note)
    return compare(reference, candidate, rule.atol, rule.rtol, candidate_name=candidate_name)


def _locate(
    report: ParityReport,
    loaded: LoadedModel,
    proto: onnx.ModelProto,
    sets: list[_InputSet],
    config: ParityConfig,
    say: Callable[[str], None],
    truth_model: Any = None,
) -> None:
    """Locate the first diverging layer on the first failing row's inputs (the first row's when all pass).

    With ``truth_model`` (the float64 clone) each layer is judged by the relative rule, as the outputs were.
    """
    say("locating the first diverging layer")
    step = time.perf_counter()
    failing = next((row for row in report.results if not row.metrics.passed), None)
    chosen = report.results[0] if failing is None else failing
    item = next(
        s
        for s in sets
        if (s.batch_size, s.distribution, s.sample) == (chosen.batch_size, chosen.distribution, chosen.sample)
    )
    feed = {name: array[:LOCATE_MAX_BATCH] for name, array in item.feed.items()}
    use_truth = truth_model is not None and chosen.metrics.rule == "relative"
    divergence, first, unmatched, locate_notes = locate_divergence(
        loaded,
        proto,
        feed,
        atol=config.atol,
        rtol=config.rtol,
        provider=chosen.provider,
        tf32=config.tf32,
        truth_model=truth_model if use_truth else None,
        factor=config.factor,
        floor=config.floor,
    )
    report.divergence, report.first_divergent_layer, report.unmatched_layers = divergence, first, unmatched
    report.notes.extend(locate_notes)
    if first is not None:
        report.notes.append(f"first diverging layer: {first} (on {chosen.provider}, {item.distribution} inputs)")
    report.timings["locate"] = time.perf_counter() - step


def _check_fp16(
    report: ParityReport,
    proto: onnx.ModelProto,
    sets: list[_InputSet],
    keras_out: list[str],
    config: ParityConfig,
    say: Callable[[str], None],
) -> bool:
    """Convert to float16 and compare it on every provider (and emulated on the CPU); True when every row passed."""
    from lambda_export.fp16 import emulate_fp16_rounding, to_float16

    run, timings, notes = report.providers_run, report.timings, report.notes
    say("converting to float16")
    step = time.perf_counter()
    half = to_float16(proto)
    report.fp16_model = half
    if config.fp16_output is not None:
        save_model_atomic(half, config.fp16_output, overwrite=True)
        notes.append(f"float16 model written to {config.fp16_output}")
    timings["fp16_convert"] = time.perf_counter() - step
    # float16 is judged by its own absolute tolerances: its error is ~8000x float32's by design
    truths = [item.truth for item in sets]
    for item in sets:
        item.truth = None
    rule = _Rule(config.fp16_atol, config.fp16_rtol, config.factor, config.floor, config.tf32)
    rows, hist = _run_candidates(model_bytes(half), run, sets, keras_out, rule, "fp16", timings, say, notes)
    report.fp16_results.extend(rows)
    report.histograms.extend(hist)
    if CPU in run:
        emulated = model_bytes(emulate_fp16_rounding(half))
        rows, hist = _run_candidates(emulated, [CPU], sets, keras_out, rule, "fp16-emulated", timings, say, notes)
        report.fp16_results.extend(rows)
        report.histograms.extend(hist)
        notes.append(
            "float16 on the CPU provider: ONNX Runtime has no float16 CPU kernels for most ops and computes them "
            "in float32 (rows 'fp16'); rows 'fp16-emulated' round every op output to float16, as GPUs store it"
        )
    for item, truth in zip(sets, truths, strict=True):
        item.truth = truth
    return all(row.metrics.passed for row in report.fp16_results)
