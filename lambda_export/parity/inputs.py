"""The inputs of a parity check: seeded random ones, or the user's own, checked against the model's inputs.

* :func:`make_inputs`: one seeded draw from a distribution of :data:`DISTRIBUTIONS` (integers in [0, :data:`INT_HIGH`)),
  each input kept within its own value range where the model says what it is (an Embedding's vocabulary, a mask).
* :func:`load_inputs` (``.npz``/``.npy`` files, no pickle) and :func:`check_arrays` (arrays in memory): names, shapes,
  dtypes (and values the model's dtype cannot hold), NaN/Inf, at least one sample and one sample count for all, each
  problem as one line that says what the file holds against what the model needs (:func:`describe_arrays`,
  :func:`describe_inputs`). One unnamed array (``np.savez(path, x)`` stores it as ``arr_0``) is a one-input model's
  input.
* :func:`merge_inputs`: the Keras input descriptions with the dims the ONNX graph fixes.
* :func:`string_vocabularies`: the tokens a string input's ``StringLookup`` layers know, for random draws (a string
  input gets tokens of its vocabulary and unknown ones; random short strings where no vocabulary can be found).
  String inputs are NumPy object arrays of ``str`` (what ONNX Runtime takes for an ONNX string tensor and TensorFlow
  for a ``tf.string`` one); user string arrays (``<U``, ``S``, object of str/bytes) are accepted for them.
* :func:`derived_seed`: the reported seed of each draw, from the base seed and where the draw sits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lambda_export.errors import InputError, first_line
from lambda_export.graph import TensorInfo

__all__ = [
    "DISTRIBUTIONS",
    "INT_HIGH",
    "LARGE_SCALE",
    "Vocabulary",
    "check_arrays",
    "check_distribution",
    "derived_seed",
    "describe_arrays",
    "describe_inputs",
    "load_inputs",
    "make_inputs",
    "merge_inputs",
    "numpy_dtype",
    "string_vocabularies",
    "vocabulary_notes",
]

DISTRIBUTIONS = ("normal", "uniform", "zeros", "large")
"""Random input distributions: ``normal`` N(0, 1); ``uniform`` U[0, 1) (image-like); ``zeros``; ``large`` N(0, 1)·1e3."""
LARGE_SCALE = 1e3
INT_HIGH = 100
"""Integer inputs are drawn uniformly from [0, INT_HIGH) (pass ``int_high`` for e.g. an embedding's vocabulary size)."""


UNKNOWN_SHARE = 0.25
"""Share of a string input's random tokens drawn outside its vocabulary (when its lookups accept unknown tokens)."""


def numpy_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of a Keras/ONNX input dtype: ``object`` for ``"string"`` (arrays of ``str``), else its own."""
    if str(dtype) in ("string", "str", "object") or (isinstance(dtype, np.dtype) and dtype.kind in "OSU"):
        return np.dtype(object)
    return np.dtype(dtype)


def _is_string(dtype: Any) -> bool:
    return numpy_dtype(dtype).kind == "O"


def _dtype_text(dtype: Any) -> str:
    return "string" if _is_string(dtype) else str(np.dtype(dtype))


@dataclass(frozen=True)
class Vocabulary:
    """What a string input's random draws take their tokens from.

    ``tokens``: the vocabulary of the ``StringLookup`` layers the input feeds (special tokens included: the mask and
    OOV tokens), empty when none was found (random short strings are drawn then); ``unknown``: whether tokens
    outside it may be drawn too (not when a lookup has ``num_oov_indices=0``: it refuses them); ``layers``: the
    layers it was read from.
    """

    tokens: tuple[str, ...] = ()
    unknown: bool = True
    layers: tuple[str, ...] = ()


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


_UNNAMED = re.compile(r"arr_\d+")
"""The keys ``np.savez(path, a, b)`` gives arrays passed without a name."""


def _dims(shape: Sequence[int | None]) -> str:
    """``128×32×32×3`` (None for a dynamic dim; ``scalar`` for a 0-d array)."""
    return "×".join("None" if d is None else str(d) for d in shape) if len(shape) else "scalar"


def describe_arrays(arrays: Mapping[str, Any]) -> str:
    """What a file (or a dict) holds, in one phrase: ``'foo' (128×32×32×3 float32), 'bar' (128 int64)``."""
    if not arrays:
        return "no arrays"
    parts = []
    for name, value in arrays.items():
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        parts.append(f"{name!r} ({type(value).__name__})" if shape is None else f"{name!r} ({_dims(shape)} {dtype})")
    return ", ".join(parts)


def describe_inputs(inputs: Sequence[TensorInfo]) -> str:
    """What the model needs, in one phrase: ``'input_layer' (None×32×32×3 float32)`` (None: any size)."""
    return ", ".join(f"{info.name!r} ({_dims(info.shape)} {_dtype_text(info.dtype)})" for info in inputs) or "none"


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
    vocabularies: Mapping[str, Vocabulary] | None = None,
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
        vocabularies: string input name → its :class:`Vocabulary` (:func:`string_vocabularies`). A string input
            gets tokens of it, about :data:`UNKNOWN_SHARE` of them unknown ones (random short strings) where its
            lookups accept them, whatever the distribution ("zeros" gives its first token); without a vocabulary,
            random short strings. Strings are an object array of ``str``.

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
        if _is_string(info.dtype):
            vocabulary = (vocabularies or {}).get(info.name) or Vocabulary()
            out[info.name] = _draw_strings(rng, shape, distribution, vocabulary)
        elif bounds is not None and np.dtype(info.dtype).kind in "iubf":
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


def _random_words(rng: np.random.Generator, count: int, avoid: set[str]) -> list[str]:
    """``count`` random lowercase words of 1 to 8 letters, none of them in ``avoid``."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = []
    while len(words) < count:
        word = "".join(rng.choice(letters, int(rng.integers(1, 9))))
        if word not in avoid:
            words.append(word)
    return words


def _draw_strings(rng: np.random.Generator, shape: list[int], distribution: str, vocabulary: Vocabulary) -> np.ndarray:
    """An object array of ``str``: tokens of ``vocabulary`` and (where allowed) unknown ones, or random words."""
    size = int(np.prod(shape, dtype=np.int64))
    tokens = list(vocabulary.tokens)
    if distribution == "zeros":
        words = [tokens[0] if tokens else "a"] * size
    elif not tokens:
        words = _random_words(rng, size, set())
    else:
        words = [tokens[i] for i in rng.integers(0, len(tokens), size)]
        if vocabulary.unknown:
            unknown = np.flatnonzero(rng.random(size) < UNKNOWN_SHARE)
            for index, word in zip(unknown, _random_words(rng, len(unknown), set(tokens)), strict=True):
                words[index] = word
    array = np.empty(size, dtype=object)
    array[:] = words
    return array.reshape(shape)


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


def check_arrays(arrays: Mapping[str, Any], inputs: list[TensorInfo], where: str) -> dict[str, np.ndarray]:
    """Validate user arrays against the model's inputs; return them cast to the input dtypes.

    ``where`` starts every message (the file, or "inputs" for arrays in memory); a message about names says what
    ``arrays`` hold and what the model's inputs are (:func:`describe_arrays`, :func:`describe_inputs`).

    Raises:
        InputError: missing or unknown names, a wrong dtype (or values the model's dtype cannot hold) or shape, no
            samples, NaN or Inf, sample counts that differ between inputs.
    """
    names = [info.name for info in inputs]
    needs = f"the model's inputs are {describe_inputs(inputs)}"
    if not arrays:
        raise InputError(f"{where}: it holds no arrays; {needs}")
    missing = [name for name in names if name not in arrays]
    if missing:
        raise InputError(f"{where}: missing input(s) {', '.join(missing)}; it holds {describe_arrays(arrays)}, {needs}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise InputError(
            f"{where}: unknown input name(s) {', '.join(extra)}; it holds {describe_arrays(arrays)}, {needs}"
        )
    out: dict[str, np.ndarray] = {}
    batch = None
    for info in inputs:
        array = np.asarray(arrays[info.name])
        want = numpy_dtype(info.dtype)
        if want.kind == "O":
            array = _strings(array, info, where)
        _check_array(array, info, want, where)
        if batch is not None and array.shape[0] != batch[1]:
            raise InputError(
                f"{where}: inputs {batch[0]!r} and {info.name!r} have different batch sizes "
                f"({batch[1]} and {array.shape[0]} samples); every input needs one row per sample"
            )
        batch = (info.name, array.shape[0])
        out[info.name] = np.ascontiguousarray(_cast(array, info, want, where))
    return out


def _check_array(array: np.ndarray, info: TensorInfo, want: np.dtype, where: str) -> None:
    """One user array against its input: a dtype of the same kind, the rank and known dims, not empty, finite."""
    if want.kind == "O":  # a string input: _strings made it an object array of str
        pass
    elif array.dtype.kind not in "biuf":
        raise InputError(f"{where}: input {info.name!r} has dtype {array.dtype}; the model expects {want}")
    if want.kind != "O" and not np.can_cast(array.dtype, want, casting="same_kind"):
        raise InputError(f"{where}: input {info.name!r} has dtype {array.dtype}, which cannot be used as {want}")
    if array.ndim != len(info.shape) or any(
        d is not None and d != a for d, a in zip(info.shape, array.shape, strict=False)
    ):
        raise InputError(f"{where}: input {info.name!r} has shape {_shape_text(array.shape)}; {_expects(array, info)}")
    if array.ndim == 0 or array.shape[0] == 0:
        raise InputError(
            f"{where}: input {info.name!r} holds 0 samples (shape {_shape_text(array.shape)}): give at least one"
        )
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            kind = "NaN" if np.isnan(array).any() else "Inf"
            raise InputError(
                f"{where}: input {info.name!r} contains {int(bad.sum())} {kind} value(s) (first at index {first})"
            )


def _strings(array: np.ndarray, info: TensorInfo, where: str) -> np.ndarray:
    """A user array for a string input as an object array of ``str`` (``<U`` and object arrays of str as they are,
    ``S`` and ``bytes`` items decoded from UTF-8); anything else is refused."""
    if array.dtype.kind == "U":
        return array.astype(object)
    if array.dtype.kind not in "SO":
        raise InputError(f"{where}: input {info.name!r} has dtype {array.dtype}; the model expects strings")
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for index, item in enumerate(flat.tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{where}: input {info.name!r}: item {index} is not UTF-8 text ({first_line(exc)})"
                ) from exc
        if not isinstance(item, str):
            raise InputError(
                f"{where}: input {info.name!r} holds a {type(item).__name__} at item {index}; the model expects strings"
            )
        out[index] = item
    return out.reshape(array.shape)


def _expects(array: np.ndarray, info: TensorInfo) -> str:
    """What the model expects of a mis-shaped array, with the likely mistake named."""
    expected = f"the model expects {_shape_text(info.shape)}"
    sample = info.shape[1:]

    def fits(dims: Sequence[int | None], shape: Sequence[int]) -> bool:
        return len(dims) == len(shape) and all(d is None or d == a for d, a in zip(dims, shape, strict=True))

    if fits(sample, array.shape):
        return f"{expected}: one sample without the batch dim? add it first (array[None])"
    fixed = info.shape[0] if info.shape else None
    if fixed is not None and array.ndim and fits(sample, array.shape[1:]):
        return f"{expected}: the model's batch is fixed to {fixed}, so give exactly {fixed} samples"
    return f"{expected} (the first dim counts the samples)"


def _cast(array: np.ndarray, info: TensorInfo, want: np.dtype, where: str) -> np.ndarray:
    """``array`` as ``want``, refused when a value does not fit it (an int64 id beyond int32, a float beyond
    float16's range): a same-kind cast would wrap or overflow silently."""
    if array.dtype == want:
        return array.copy()
    if want.kind in "iu" and array.dtype.kind in "iu" and array.size:
        limits = np.iinfo(want)
        low, high = int(array.min()), int(array.max())
        if low < limits.min or high > limits.max:
            raise InputError(
                f"{where}: input {info.name!r} has {array.dtype} values in [{low}, {high}], beyond {want}'s range "
                f"[{limits.min}, {limits.max}]"
            )
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(want)
    if want.kind == "f" and array.dtype.kind == "f" and not np.isfinite(cast).all():
        raise InputError(
            f"{where}: input {info.name!r} has {array.dtype} values beyond {want}'s range (±{np.finfo(want).max:g})"
        )
    return cast


def _named(arrays: dict[str, np.ndarray], inputs: list[TensorInfo], where: str) -> dict[str, np.ndarray]:
    """A file's arrays by input name: one unnamed array (``np.savez(path, x)`` names it ``arr_0``) is a one-input
    model's input; unnamed arrays for a model with several inputs are refused, as their order says nothing."""
    names = {info.name for info in inputs}
    unnamed = [key for key in arrays if _UNNAMED.fullmatch(key) and key not in names]
    if not unnamed or all(name in arrays for name in names):
        return arrays  # the names decide (an unknown arr_N is reported as an unknown name)
    if len(inputs) == 1 and len(arrays) == 1:
        return {inputs[0].name: arrays[unnamed[0]]}
    example = ", ".join(f"{info.name}=..." for info in inputs)
    raise InputError(
        f"{where}: it holds unnamed array(s) {describe_arrays(arrays)} (np.savez without names), but the model's "
        f"inputs are {describe_inputs(inputs)}: save one array per input by name, e.g. np.savez(path, {example})"
    )


def load_inputs(path: str | os.PathLike[str], inputs: list[TensorInfo]) -> dict[str, np.ndarray]:
    """Read user inputs: ``.npz`` (keys = input names) or ``.npy`` (single-input models), without pickle.

    A ``.npz`` with one unnamed array (``np.savez(path, x)``: key ``arr_0``) is accepted for a one-input model. Arrays
    are checked against ``inputs`` (names, rank and known dims, a dtype of the same kind whose values fit, at least
    one sample, no NaN/Inf, one sample count for all) and cast to the model's dtypes; any sample count is accepted
    where the batch is dynamic.

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
    return check_arrays(_named(arrays, inputs, str(path)), inputs, str(path))


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


def string_vocabularies(model: Any, inputs: Sequence[TensorInfo]) -> dict[str, Vocabulary]:
    """A :class:`Vocabulary` for each string input of ``inputs`` (the Keras model's, in ``model.inputs``' order).

    A string input's vocabulary is that of the (not inverted) ``StringLookup`` layers it reaches in the model's
    functional graph, through any layer whose outputs are strings, into nested functional models, and into a custom
    layer that holds one. A model with one string input whose walk finds none takes every ``StringLookup`` the model
    holds (a subclassed model has no graph to walk). Where several lookups are found, their tokens are joined; where
    one has ``num_oov_indices=0`` only the tokens they all know are kept and no unknown token is drawn. An input with
    no lookup found gets an empty vocabulary (random short strings: :func:`vocabulary_notes` says so).
    """
    positions = [index for index, info in enumerate(inputs) if _is_string(info.dtype)]
    if not positions:
        return {}
    try:
        found = _lookups_by_input(model)
    except Exception:  # a model whose graph cannot be walked: no vocabulary found
        found = {}
    if len(positions) == 1 and not found.get(positions[0]):
        found[positions[0]] = [layer for layer in _sublayers(model) if _is_string_lookup(layer)]
    return {inputs[index].name: _vocabulary(found.get(index, [])) for index in positions}


def vocabulary_notes(vocabularies: Mapping[str, Vocabulary]) -> list[str]:
    """The report's notes on random string inputs: each input whose vocabulary was not found."""
    return [
        f"input {name!r}: no StringLookup vocabulary found for this string input: its random inputs are random short "
        "strings (most of them unknown to the model's tables); pass real samples with --inputs"
        for name, vocabulary in vocabularies.items()
        if not vocabulary.tokens
    ]


def _is_string_lookup(layer: Any) -> bool:
    return type(layer).__name__ == "StringLookup" and not getattr(layer, "invert", False)


def _sublayers(layer: Any) -> list[Any]:
    from lambda_export import upstream

    return upstream.sublayers(layer)


def _vocabulary(layers: list[Any]) -> Vocabulary:
    """The tokens of ``layers`` (StringLookups), see :func:`string_vocabularies`."""
    layers = list({id(layer): layer for layer in layers}.values())
    vocabularies = []
    for layer in layers:
        try:
            vocabularies.append([str(t.decode() if isinstance(t, bytes) else t) for t in layer.get_vocabulary()])
        except Exception:  # an unadapted lookup has no vocabulary yet
            continue
    if not vocabularies:
        return Vocabulary()
    strict = any(int(getattr(layer, "num_oov_indices", 1)) == 0 for layer in layers)
    if strict:
        tokens = [t for t in vocabularies[0] if all(t in v for v in vocabularies[1:])] or vocabularies[0]
    else:
        tokens = list(dict.fromkeys(t for v in vocabularies for t in v))
    return Vocabulary(tuple(tokens), not strict, tuple(str(getattr(layer, "name", "")) for layer in layers))


def _lookups_by_input(model: Any) -> dict[int, list[Any]]:
    """Position in ``model.inputs`` → the StringLookup layers that input reaches (see :func:`string_vocabularies`)."""
    import keras

    from lambda_export import upstream

    def tensors(structure: Any) -> list[Any]:
        return [v for v in keras.tree.flatten(structure) if isinstance(v, keras.KerasTensor)]

    consumers: dict[int, list[tuple[Any, list[Any], list[Any]]]] = {}
    for operation, args, kwargs, outputs in upstream.all_calls(model):
        flat = tensors((args, kwargs))
        for value in flat:
            consumers.setdefault(id(value), []).append((operation, flat, outputs))

    def reach(tensor: Any, visited: set[int]) -> list[Any]:
        if id(tensor) in visited:
            return []
        visited.add(id(tensor))
        layers = []
        for operation, flat, outputs in consumers.get(id(tensor), []):
            if _is_string_lookup(operation):
                layers.append(operation)
            elif upstream.is_functional(operation) and getattr(operation, "inputs", None):
                inner = list(operation.inputs)
                for index, value in enumerate(flat):
                    if value is tensor and index < len(inner):
                        layers += reach(inner[index], visited)
            else:
                held = [layer for layer in upstream.sublayers(operation) if _is_string_lookup(layer)]
                if held:
                    layers += held
                else:
                    for output in tensors(outputs):
                        if "string" in str(getattr(output, "dtype", "")):
                            layers += reach(output, visited)
        return layers

    return {index: reach(tensor, set()) for index, tensor in enumerate(getattr(model, "inputs", None) or [])}
