"""The inputs of a parity check: seeded random ones, or the user's own, checked against the model's inputs.

* :func:`make_inputs`: one seeded draw from a distribution of :data:`DISTRIBUTIONS` (integers in [0, :data:`INT_HIGH`)),
  each input kept within its own value range where the model says what it is (an Embedding's vocabulary, a mask).
* :func:`load_inputs` (``.npz``/``.npy`` files, no pickle) and :func:`check_arrays` (arrays in memory): names, shapes,
  dtypes, NaN/Inf and one batch size for all, each problem as one line naming the input.
* :func:`merge_inputs`: the Keras input descriptions with the dims the ONNX graph fixes.
* :func:`derived_seed`: the reported seed of each draw, from the base seed and where the draw sits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lambda_export.errors import InputError, first_line
from lambda_export.graph import TensorInfo

__all__ = [
    "DISTRIBUTIONS",
    "INT_HIGH",
    "LARGE_SCALE",
    "check_arrays",
    "check_distribution",
    "derived_seed",
    "load_inputs",
    "make_inputs",
    "merge_inputs",
]

DISTRIBUTIONS = ("normal", "uniform", "zeros", "large")
"""Random input distributions: ``normal`` N(0, 1); ``uniform`` U[0, 1) (image-like); ``zeros``; ``large`` N(0, 1)·1e3."""
LARGE_SCALE = 1e3
INT_HIGH = 100
"""Integer inputs are drawn uniformly from [0, INT_HIGH) (pass ``int_high`` for e.g. an embedding's vocabulary size)."""


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def check_distribution(distribution: str) -> None:
    """Raises InputError unless ``distribution`` is one of :data:`DISTRIBUTIONS`."""
    if distribution not in DISTRIBUTIONS:
        raise InputError(f"unknown input distribution {distribution!r}; choose among {', '.join(DISTRIBUTIONS)}")


def derived_seed(seed: int, batch: int, dist_index: int, sample: int) -> int:
    """The seed of one random draw: derived from (base ``seed``, batch size, distribution index, sample number)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, batch, dist_index, sample]).generate_state(1)[0])


def make_inputs(
    inputs: list[TensorInfo],
    batch_size: int | None,
    distribution: str,
    seed: int,
    *,
    int_high: int = INT_HIGH,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random inputs, one array per input, keyed by input name.

    Args:
        inputs: the model's inputs; a dynamic first dim becomes ``batch_size``, every other dim must be known.
        batch_size: the batch; None uses the input's fixed batch dim.
        distribution: one of :data:`DISTRIBUTIONS` for float inputs: "normal" N(0, 1), "uniform" U[0, 1), "zeros",
            "large" N(0, 1)·1e3. Integer inputs get uniform integers in [0, ``int_high``) whatever the distribution
            ("zeros" gives zeros): a safe range for index-like inputs (an embedding input needs ``int_high`` ≤ its
            vocabulary size). Boolean inputs get random booleans.
        seed: NumPy ``default_rng`` seed; inputs are drawn in order from one generator.
        ranges: input name → [low, high): the values that input may take (its Embeddings' vocabulary, {0, 1} for a
            mask; :attr:`lambda_export.loading.LoadedModel.input_ranges`). Such an input gets uniform integers in
            that range, in its own dtype, whatever the distribution ("zeros" gives ``low``), instead of ``int_high``'s.

    Raises:
        InputError: unknown distribution, unknown non-batch dims, bad batch size.
    """
    check_distribution(distribution)
    if int(int_high) < 1:
        raise InputError(f"int_high {int_high}: must be >= 1", argument="int_high")
    for name, (low, high) in (ranges or {}).items():
        if int(high) <= int(low):
            raise InputError(f"input {name!r}: empty value range [{low}, {high})", argument="ranges")
    rng = np.random.default_rng(seed)
    out = {}
    for info in inputs:
        shape = _batch_shape(info, batch_size)
        bounds = (ranges or {}).get(info.name)
        if bounds is not None and np.dtype(info.dtype).kind in "iubf":
            out[info.name] = np.ascontiguousarray(_draw_in_range(rng, info, shape, distribution, bounds))
        else:
            out[info.name] = np.ascontiguousarray(_draw(rng, info, shape, distribution, int_high))
    return out


def _draw_in_range(
    rng: np.random.Generator, info: TensorInfo, shape: list[int], distribution: str, bounds: tuple[int, int]
) -> np.ndarray:
    """Uniform integers in [low, high) as ``info.dtype`` (booleans for a {0, 1} range); "zeros" gives ``low``."""
    low, high = int(bounds[0]), int(bounds[1])
    dtype = np.dtype(info.dtype)
    if distribution == "zeros":
        return np.full(shape, low).astype(dtype)
    if dtype.kind in "iu":  # the dtype's own range bounds the draw too
        limits = np.iinfo(dtype)
        low, high = max(low, int(limits.min)), min(high, int(limits.max) + 1)
    return rng.integers(low, max(high, low + 1), shape).astype(dtype)


def _batch_shape(info: TensorInfo, batch_size: int | None) -> list[int]:
    """``info``'s shape with the batch filled in; every dim must then be known."""
    shape = list(info.shape)
    if shape and shape[0] is None:
        if batch_size is None:
            raise InputError(f"input {info.name!r} has a dynamic batch: give a batch size")
        shape[0] = batch_size
    elif shape and batch_size is not None and shape[0] != batch_size:
        raise InputError(f"input {info.name!r} has a fixed batch of {shape[0]}, not {batch_size}")
    if any(d is None for d in shape):
        raise InputError(
            f"input {info.name!r} has unknown dims {_shape_text(info.shape)}: pass your own inputs (.npz) instead"
        )
    if batch_size is not None and batch_size <= 0:
        raise InputError(f"batch size {batch_size}: must be a positive integer")
    return shape


def _draw(rng: np.random.Generator, info: TensorInfo, shape: list[int], distribution: str, int_high: int) -> Any:
    """One input's values of ``info.dtype`` (see :func:`make_inputs` for what each distribution gives)."""
    dtype = np.dtype(info.dtype)
    if dtype.kind == "f":
        if distribution == "normal":
            array = rng.standard_normal(shape)
        elif distribution == "uniform":
            array = rng.random(shape)
        elif distribution == "large":
            array = rng.standard_normal(shape) * LARGE_SCALE
        else:
            array = np.zeros(shape)
    elif dtype.kind in "iu":
        array = np.zeros(shape) if distribution == "zeros" else rng.integers(0, int(int_high), shape)
    elif dtype.kind == "b":
        array = np.zeros(shape, bool) if distribution == "zeros" else rng.integers(0, 2, shape).astype(bool)
    else:
        raise InputError(f"input {info.name!r}: cannot generate random {dtype} values; pass your own inputs")
    return array.astype(dtype)


def check_arrays(arrays: dict[str, Any], inputs: list[TensorInfo], where: str) -> dict[str, np.ndarray]:
    """Validate user arrays against the model's inputs; return them cast to the input dtypes.

    ``where`` starts every message (the file, or "inputs" for arrays in memory).

    Raises:
        InputError: missing or unknown names, a wrong dtype or shape, an empty batch, NaN or Inf, batch sizes that
            differ between inputs.
    """
    names = [info.name for info in inputs]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise InputError(f"{where}: missing input(s) {', '.join(missing)}; the model's inputs are {', '.join(names)}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise InputError(
            f"{where}: unknown input name(s) {', '.join(extra)}; the model's inputs are {', '.join(names)}"
        )
    out: dict[str, np.ndarray] = {}
    batch = None
    for info in inputs:
        array = np.asarray(arrays[info.name])
        want = np.dtype(info.dtype)
        _check_array(array, info, want, where)
        if batch is not None and array.shape[0] != batch[1]:
            raise InputError(
                f"{where}: inputs {batch[0]!r} and {info.name!r} have different batch sizes "
                f"({batch[1]} and {array.shape[0]})"
            )
        batch = (info.name, array.shape[0])
        out[info.name] = np.ascontiguousarray(array.astype(want))
    return out


def _check_array(array: np.ndarray, info: TensorInfo, want: np.dtype, where: str) -> None:
    """One user array against its input: a dtype of the same kind, the rank and known dims, not empty, finite."""
    if array.dtype.kind not in "biuf":
        raise InputError(f"{where}: input {info.name!r} has dtype {array.dtype}; the model expects {want}")
    if not np.can_cast(array.dtype, want, casting="same_kind"):
        raise InputError(f"{where}: input {info.name!r} has dtype {array.dtype}, which cannot be used as {want}")
    if array.ndim != len(info.shape) or any(
        d is not None and d != a for d, a in zip(info.shape, array.shape, strict=False)
    ):
        raise InputError(
            f"{where}: input {info.name!r} has shape {_shape_text(array.shape)}; the model expects "
            f"{_shape_text(info.shape)}"
        )
    if array.ndim == 0 or array.shape[0] == 0:
        raise InputError(f"{where}: input {info.name!r} is empty (batch of 0)")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            kind = "NaN" if np.isnan(array).any() else "Inf"
            raise InputError(
                f"{where}: input {info.name!r} contains {int(bad.sum())} {kind} value(s) (first at index {first})"
            )


def load_inputs(path: str | os.PathLike[str], inputs: list[TensorInfo]) -> dict[str, np.ndarray]:
    """Read user inputs: ``.npz`` (keys = input names) or ``.npy`` (single-input models), without pickle.

    Arrays are checked against ``inputs`` (names, rank and known dims, a dtype of the same kind, no NaN/Inf, one
    batch size for all) and cast to the model's dtypes.

    Raises:
        InputError: unreadable file, wrong suffix, wrong names/shapes/dtypes, NaN or Inf (one line naming the input).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such inputs file")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise InputError(
            f"{path}: inputs must be a .npz (keys = input names) or .npy file, not {suffix or 'no suffix'!r}"
        )
    try:
        if suffix == ".npy":
            if len(inputs) != 1:
                raise InputError(
                    f"{path}: a .npy file holds one array but the model has {len(inputs)} inputs "
                    f"({', '.join(i.name for i in inputs)}): use a .npz with one key per input"
                )
            arrays = {inputs[0].name: np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
    except InputError:
        raise
    except Exception as exc:  # ValueError (pickled objects), BadZipFile, OSError, EOFError...
        raise InputError(f"{path}: cannot read the inputs: {first_line(exc)}") from exc
    return check_arrays(arrays, inputs, str(path))


def merge_inputs(keras_inputs: list[TensorInfo], onnx_inputs: list[TensorInfo]) -> list[TensorInfo]:
    """Keras input descriptions with the dims the ONNX graph fixes (batch size, spatial sizes given at conversion)."""
    by_name = {info.name: info for info in onnx_inputs}
    merged = []
    for info in keras_inputs:
        other = by_name.get(info.name)
        if other is None or len(other.shape) != len(info.shape):
            merged.append(info)
            continue
        shape = tuple(o if o is not None else k for k, o in zip(info.shape, other.shape, strict=True))
        merged.append(TensorInfo(info.name, shape, info.dtype))
    return merged
