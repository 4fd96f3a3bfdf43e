"""The float64 truth of the relative rule: the Keras model rebuilt to compute in float64, with the same weights.

* :func:`float64_model`: a clone of the model under the ``float64`` dtype policy (every layer rebuilt from its config
  with ``dtype="float64"``, nested models too), the float32 weights copied exactly; or why there can be none (a custom
  layer that refuses float64, a SavedModel that only has a float32 graph).
* :func:`run_float64`: call it on the same inputs (float inputs widened to float64 exactly, integers unchanged); it
  refuses a result with a float output that is not float64.

The float32 weights and inputs are exactly representable in float64, so the clone computes the float32 model's
function with 2⁻⁵³ roundings instead of 2⁻²⁴: its error is ~10⁹ times smaller than float32's, a truth for both
TensorFlow's float32 run and the ONNX export. A layer that casts to float32 inside its ``call`` makes the truth only
as accurate as float32 there; that makes the relative rule stricter for that layer, never more lenient.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lambda_export.errors import first_line
from lambda_export.loading import LoadedModel
from lambda_export.parity.running import keras_feed, run_keras

__all__ = ["float64_model", "run_float64"]


class _RefusedError(Exception):
    """A layer cannot be rebuilt in float64 (the message names it)."""


def _as_float64(layer: Any) -> Any:
    """``layer`` rebuilt from its config with ``dtype="float64"`` (a clone_model clone function)."""
    try:
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float64"
        return type(layer).from_config(config)
    except Exception as exc:
        raise _RefusedError(
            f"layer {layer.name!r} ({type(layer).__name__}) cannot be rebuilt with dtype float64: {_root_cause(exc)}"
        ) from exc


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost exception ``exc`` was raised from (Keras wraps a constructor's error)."""
    seen = {id(exc)}
    inner = exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen:
        exc = inner
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
    return first_line(exc)


def _copy_weights(source: Any, clone: Any) -> None:
    """Assign ``source``'s weights to ``clone``'s, matched by path (or by order when paths differ), widened exactly."""
    theirs, ours = list(source.weights), list(clone.weights)
    if len(theirs) != len(ours):
        raise _RefusedError(f"the float64 clone has {len(ours)} weights, the model {len(theirs)}")
    by_path = {getattr(v, "path", None): v for v in ours}
    if None not in by_path and len(by_path) == len(ours) and all(getattr(v, "path", None) in by_path for v in theirs):
        pairs = [(v, by_path[v.path]) for v in theirs]
    else:
        pairs = list(zip(theirs, ours, strict=True))
    for src, dst in pairs:
        if tuple(src.shape) != tuple(dst.shape):
            raise _RefusedError(
                f"weight {getattr(src, 'path', src.name)} has shape {tuple(src.shape)} in the model and "
                f"{tuple(dst.shape)} in its float64 clone"
            )
        dst.assign(np.asarray(src.numpy()).astype(np.dtype(dst.dtype)))


def _float32_layers(model: Any) -> list[str]:
    """Layers of the clone (nested ones too) whose compute dtype is a float type other than float64."""
    import keras

    found = []
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        dtype = str(getattr(layer, "compute_dtype", "float64"))
        if (
            dtype.startswith(("float", "bfloat"))
            and dtype != "float64"
            and not isinstance(layer, keras.layers.InputLayer)
        ):
            found.append(f"{layer.name} ({type(layer).__name__}, {dtype})")
        stack.extend(getattr(layer, "layers", []) if isinstance(layer, keras.Model) else [])
    return found


def float64_model(model: Any) -> tuple[Any | None, str | None]:
    """``(clone, None)``: ``model`` computing in float64 with its exact weights; ``(None, why)`` when it cannot.

    Every layer is rebuilt from its config with ``dtype="float64"`` (the global dtype policy is float64 meanwhile, so
    the sub-layers a custom layer creates follow), nested functional and sequential models recursively
    (``keras.models.clone_model``); then the weights are copied. A model that is not a functional or sequential
    Keras model, a layer whose config or constructor refuses float64, a layer that still computes in another float
    dtype, or weights that do not line up give a reason instead.
    """
    import keras

    if not isinstance(model, keras.Model):
        return None, f"{type(model).__name__} is not a Keras model"
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("float64")
        try:
            clone = keras.models.clone_model(model, clone_function=_as_float64, recursive=True)
        finally:
            keras.config.set_dtype_policy(previous)
        other = _float32_layers(clone)
        if other:
            return None, f"layer {other[0]} does not compute in float64 under a float64 dtype policy"
        _copy_weights(model, clone)
    except _RefusedError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"the model cannot be rebuilt with dtype float64: {first_line(exc)}"
    return clone, None


def run_float64(clone: Any, loaded: LoadedModel, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The float64 clone's outputs on ``feed`` (float inputs widened to float64; integer and boolean ones as given).

    Raises:
        ValueError: a float output that is not float64 (a layer computes in float32 regardless of its policy).
    """
    wide = {name: a.astype(np.float64) if a.dtype.kind == "f" else a for name, a in feed.items()}
    outputs = run_keras(clone, keras_feed(loaded, wide))
    for index, array in enumerate(outputs):
        if array.dtype.kind == "f" and array.dtype != np.float64:
            raise ValueError(f"output {index} of the float64 model is {array.dtype}")
    return outputs
