"""The samples of an int8 quantization: the calibration set (activation ranges) and the held-out set (the verdict).

* :func:`load_calibration`: a ``.npz`` (keys = input names) or ``.npy`` (one input) file, read without pickle and
  checked against the model's inputs; every problem is one line naming the file (``InputError``, exit code 2).
* :func:`calibration_data` → :class:`CalibrationData`: the user's samples split into a calibration part and a
  held-out part (the last :data:`HELD_OUT_FRACTION`, or a separate held-out file), or generated inputs when there are
  none (with a warning: ranges calibrated on noise say nothing about real data). Any number of samples works: one
  sample is calibrated on and judged on, with nothing held out (:data:`NO_HELD_OUT_WARNING`).
* :func:`batches`: an array set cut into model-sized batches (a fixed batch dimension is respected);
  :func:`equal_batch`: the batch size that cuts a set into equal batches (ONNX Runtime's histogram calibrators need
  them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lambda_export.errors import InputError
from lambda_export.graph import TensorInfo
from lambda_export.parity.inputs import check_arrays, load_inputs, make_inputs

__all__ = [
    "GENERATED_CALIBRATION",
    "GENERATED_HELD_OUT",
    "GENERATED_WARNING",
    "HELD_OUT_FRACTION",
    "NO_HELD_OUT_WARNING",
    "CalibrationData",
    "any_batch",
    "batches",
    "calibration_data",
    "equal_batch",
    "fixed_batch",
    "load_calibration",
    "sample_arrays",
]

HELD_OUT_FRACTION = 0.2
"""Share of the user's calibration samples kept out of calibration to judge the int8 model on (the last ones)."""
GENERATED_CALIBRATION = 32
"""Generated calibration samples when the user gives none."""
GENERATED_HELD_OUT = 16
"""Generated held-out samples when the user gives none."""
GENERATED_WARNING = (
    "no calibration samples given: activation ranges were calibrated, and the verdict taken, on generated N(0, 1) "
    "inputs, which say nothing about the model's real inputs; pass real samples (calibration=FILE.npz) for a "
    "trustworthy int8 model"
)
NO_HELD_OUT_WARNING = (
    "too few calibration samples to hold any out: the int8 verdict was taken on the samples the ranges were "
    "calibrated on, which flatters it; give more samples (the last 20% are held out) or a held-out set"
)


@dataclass
class CalibrationData:
    """The calibration and held-out sets of one quantization (arrays keyed by input name, batch first).

    Attributes:
        calibration: arrays of shape (n_calibration, ...) per input: the activation ranges come from these.
        held_out: arrays of shape (n_held_out, ...) per input, never used for calibration: the verdict's second set.
        source: where the calibration samples came from (a path, ``"arrays"`` or ``"generated"``).
        held_out_source: where the held-out samples came from.
        generated: the samples were generated, not given (the warning :data:`GENERATED_WARNING` applies).
        notes: what was done to the samples that the user must know (samples dropped to fit a fixed batch, nothing
            held out): :func:`lambda_export.quantization.quantize` repeats them as warnings.
    """

    calibration: dict[str, np.ndarray]
    held_out: dict[str, np.ndarray]
    source: str
    held_out_source: str
    generated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_calibration(self) -> int:
        return _count(self.calibration)

    @property
    def n_held_out(self) -> int:
        return _count(self.held_out)

    def sets(self) -> dict[str, dict[str, np.ndarray]]:
        """``{"calibration": ..., "held_out": ...}``: the sets the verdict judges, in that order (no ``held_out``
        when there was none to keep: see :data:`NO_HELD_OUT_WARNING`)."""
        sets = {"calibration": self.calibration, "held_out": self.held_out}
        return {name: arrays for name, arrays in sets.items() if arrays}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.n_calibration,
            "held_out_source": self.held_out_source,
            "held_out_samples": self.n_held_out,
            "generated": self.generated,
            "notes": list(self.notes),
        }


def _count(arrays: dict[str, np.ndarray]) -> int:
    return int(next(iter(arrays.values())).shape[0]) if arrays else 0


def load_calibration(path: str | os.PathLike[str], inputs: list[TensorInfo], *, argument: str = "calibration") -> dict:
    """Read calibration samples: ``.npz`` with one array per input name, or ``.npy`` for a one-input model.

    Args:
        path: the file.
        inputs: the model's inputs (names, shapes with None for dynamic dims, dtypes).
        argument: the API argument the messages name (``calibration`` or ``held_out``; the CLI shows its flag).

    Returns:
        input name → array of shape (n, ...) cast to the input's dtype.

    Raises:
        InputError: missing, empty or unreadable file, wrong suffix, names, shapes, dtypes, NaN/Inf (one line).
    """
    where = Path(path)
    if not str(path).strip():
        raise InputError(f"{argument}: empty path", argument=argument)
    if not where.exists():
        raise InputError(f"{argument} {where}: no such file", argument=argument)
    if not where.is_file():
        raise InputError(f"{argument} {where}: not a regular file", argument=argument)
    if where.stat().st_size == 0:
        raise InputError(f"{argument} {where}: the file is empty", argument=argument)
    try:
        return load_inputs(where, any_batch(inputs))
    except InputError as exc:
        raise InputError(f"{argument} {exc}", argument=argument) from exc


def any_batch(inputs: list[TensorInfo]) -> list[TensorInfo]:
    """``inputs`` with a dynamic batch dimension: samples may come in any number (a fixed batch is run in pieces)."""
    return [TensorInfo(info.name, (None, *info.shape[1:]) if info.shape else info.shape, info.dtype) for info in inputs]


def fixed_batch(inputs: list[TensorInfo]) -> int | None:
    """The batch size the model fixes (its first input's first dim), or None when the batch is dynamic."""
    if not inputs or not inputs[0].shape:
        return None
    return inputs[0].shape[0]


def equal_batch(count: int, limit: int) -> int:
    """The largest batch size up to ``limit`` that divides ``count``: ``count`` samples in equal batches.

    ONNX Runtime's histogram calibrators (entropy, percentile, distribution) stack the activations of every batch
    into one array, so a last, shorter batch fails ("inhomogeneous shape"). Equal batches give exactly the histogram
    of every sample, none dropped or repeated (padding would weigh some samples twice, dropping would lose them); a
    prime count gets batches of 1, which costs more runs, not different ranges.
    """
    if count < 1 or limit < 1:
        raise ValueError(f"equal_batch({count}, {limit}): both must be positive")
    return next(size for size in range(min(count, limit), 0, -1) if count % size == 0)


def batches(arrays: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """``arrays`` in consecutive batches of ``size`` samples (the last one shorter when ``size`` does not divide)."""
    total = _count(arrays)
    for start in range(0, total, size):
        yield {name: np.ascontiguousarray(array[start : start + size]) for name, array in arrays.items()}


def _take(arrays: dict[str, np.ndarray], part: slice) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(array[part]) for name, array in arrays.items()}


def _fit_batch(arrays: dict[str, np.ndarray], batch: int | None, what: str, notes: list[str]) -> dict:
    """``arrays`` cut to a multiple of a fixed ``batch`` (the samples beyond it are dropped, with a note)."""
    if batch is None:
        return arrays
    total = _count(arrays)
    kept = total - total % batch
    if kept == 0:
        raise InputError(
            f"{what}: {total} sample(s), but the model's batch is fixed to {batch}: give at least {batch}",
            argument="calibration",
        )
    if kept < total:
        notes.append(f"{total - kept} {what} sample(s) dropped to fit the model's fixed batch of {batch}")
    return _take(arrays, slice(0, kept))


def sample_arrays(value: Any, inputs: list[TensorInfo], argument: str) -> tuple[dict[str, np.ndarray], str]:
    """A path or a dict of arrays (or one array for a one-input model) → checked arrays and their description.

    Raises:
        InputError: naming ``argument``: an unreadable file, arrays that do not fit ``inputs``.
    """
    inputs = any_batch(inputs)
    if isinstance(value, (str, os.PathLike)):
        return load_calibration(value, inputs, argument=argument), str(value)
    if isinstance(value, np.ndarray):
        if len(inputs) != 1:
            raise InputError(
                f"{argument}: one array given but the model has {len(inputs)} inputs; pass a dict by input name",
                argument=argument,
            )
        value = {inputs[0].name: value}
    if not isinstance(value, dict):
        raise InputError(
            f"{argument}: expected a .npz/.npy path or a dict of arrays by input name, not {type(value).__name__}",
            argument=argument,
        )
    try:
        return check_arrays(value, inputs, argument), "arrays"
    except InputError as exc:
        raise InputError(str(exc), argument=argument) from exc


def calibration_data(
    inputs: list[TensorInfo],
    calibration: Any = None,
    held_out: Any = None,
    *,
    generated_samples: int = GENERATED_CALIBRATION,
    generated_held_out: int = GENERATED_HELD_OUT,
    seed: int = 0,
) -> CalibrationData:
    """The calibration and held-out sets for a model with ``inputs``.

    Args:
        inputs: the ONNX model's inputs (a fixed batch dimension is respected: sets are cut to a multiple of it).
        calibration: a ``.npz``/``.npy`` path, a dict of arrays by input name (or one array for a one-input model),
            or None for generated N(0, 1) inputs (``generated_samples`` of them, seeded with ``seed``).
        held_out: the same kinds of value for the held-out set; None keeps the last :data:`HELD_OUT_FRACTION` of the
            calibration samples out of calibration (at least one; with a single sample, or a single fixed batch,
            none: the held-out set is then empty and :data:`NO_HELD_OUT_WARNING` applies), or generates
            ``generated_held_out`` inputs (``seed + 1``) when the calibration samples are generated too.

    Raises:
        InputError: an unreadable file, arrays that do not fit the inputs, fewer samples than a fixed batch.
    """
    notes: list[str] = []
    batch = fixed_batch(inputs)
    if calibration is None:
        count = max(generated_samples, batch or 1)
        count -= count % (batch or 1)
        arrays = _stack(inputs, count, seed) if batch else make_inputs(inputs, count, "normal", seed)
        data = CalibrationData(arrays, {}, "generated", "", generated=True, notes=notes)
    else:
        arrays, source = sample_arrays(calibration, inputs, "calibration")
        data = CalibrationData(arrays, {}, source, "", notes=notes)
    if held_out is not None:
        data.held_out, data.held_out_source = sample_arrays(held_out, inputs, "held_out")
    elif data.generated:
        count = max(generated_held_out, batch or 1)
        count -= count % (batch or 1)
        data.held_out = _stack(inputs, count, seed + 1) if batch else make_inputs(inputs, count, "normal", seed + 1)
        data.held_out_source = "generated"
    else:
        total = data.n_calibration
        unit = batch or 1
        held = max(1, math.floor(total * HELD_OUT_FRACTION))
        if batch:  # whole batches on both sides
            held = max(batch, -(-held // batch) * batch)
        keep = total - held
        keep -= keep % unit
        if keep >= unit:
            if keep + held < total:
                notes.append(f"{total - keep - held} calibration sample(s) dropped to fit the fixed batch of {batch}")
            data.held_out = _take(data.calibration, slice(total - held, total))
            data.calibration = _take(data.calibration, slice(0, keep))
            data.held_out_source = f"the last {held} of the {total} samples of {data.source} (not calibrated on)"
        else:  # too few to hold any out: calibrate on all of them and judge on them too, said loudly
            data.held_out_source = f"none: {total} sample(s) of {data.source} are too few to hold any out"
            notes.append(NO_HELD_OUT_WARNING)
    data.calibration = _fit_batch(data.calibration, batch, "calibration", notes)
    if data.held_out:
        data.held_out = _fit_batch(data.held_out, batch, "held-out", notes)
    return data


def _stack(inputs: list[TensorInfo], count: int, seed: int) -> dict[str, np.ndarray]:
    """``count`` generated samples for a model with a fixed batch: draws of one batch each, concatenated."""
    batch = fixed_batch(inputs) or 1
    draws = [make_inputs(inputs, batch, "normal", seed + 7919 * i) for i in range(count // batch)]
    return {info.name: np.concatenate([draw[info.name] for draw in draws]) for info in inputs}
