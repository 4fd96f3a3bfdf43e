"""Load timm's pretrained LambdaResNets into the Keras models of :mod:`lambda_layers.byobnet`, exactly, without PyTorch.

:func:`from_timm` builds ``lambda_resnet26t``, ``lambda_resnet26rpt_256`` or ``lambda_resnet50ts`` by timm's name and
copies a timm checkpoint into it: a ``.safetensors`` file (read with ``safetensors``, a base dependency) or a
``.pth``/``.bin`` PyTorch file (needs ``torch``; read with ``weights_only=True``, which never runs pickled code).

Getting the weights (needs internet access, once)::

    import timm, safetensors.torch
    model = timm.create_model("lambda_resnet26t.c1_in1k", pretrained=True)
    safetensors.torch.save_file(model.state_dict(), "lambda_resnet26t.safetensors")
    # or, without PyTorch: huggingface_hub.hf_hub_download("timm/lambda_resnet26t.c1_in1k", "model.safetensors")

    import lambda_layers
    model = lambda_layers.from_timm("lambda_resnet26t", checkpoint="lambda_resnet26t.safetensors")

Preprocessing (timm's ``pretrained_cfg``, :data:`TIMM_PRETRAINED`): RGB scaled to [0, 1], normalised with the ImageNet
mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225); for evaluation the image is resized with bicubic
interpolation so that its shorter side is 256 / crop_pct, then centre-cropped to 256x256 (crop_pct 0.94 for the two
ResNet-26 models, 0.95 for the ResNet-50). The Keras model takes (b, 256, 256, 3) NHWC float32 images, already
normalised, and returns the 1000 ImageNet-1k logits.

Mapping (timm key -> Keras weight; every key of timm's state dict except ``num_batches_tracked`` is used, once):

===============================  ===================  ======================================  ========================
timm key                         timm shape           Keras weight                            conversion
===============================  ===================  ======================================  ========================
``<p>.conv.weight``              (O, I, kh, kw)       Conv2D ``<p>.conv`` kernel (kh,kw,I,O)   ``w.transpose(2,3,1,0)``
``<bn>.weight``/``bias``         (C,)                 BatchNormalization ``<bn>`` gamma/beta   copy
``<bn>.running_mean``/``_var``   (C,)                 moving_mean / moving_variance           copy
``<a>.qkv.weight``               (h*k+k+v, c, 1, 1)   ``<a>`` query / key / value kernels      rows split h*k | k | v,
                                                      (1, 1, c, h*k) / (1,1,c,k) / (1,1,c,v)   each ``[:, :, 0, 0].T``
``<a>.norm_q.*``, ``<a>.norm_v.*``  (h*k,), (v,)      ``<a>`` query_norm / value_norm          as batch norms
``<a>.conv_lambda.weight``       (k, 1, r, r, 1)      ``<a>`` position_conv kernel (r,r,1,k)   ``w[:,0,:,:,0]`` -> r,r,k
``<a>.conv_lambda.bias``         (k,)                 ``<a>`` position_conv bias               copy
``<a>.pos_emb``                  (2H-1, 2W-1, k)      ``<a>`` position_embedding (.., k, 1)    ``w[..., None]``
``head.fc.weight`` / ``bias``    (N, C) / (N,)        Dense ``logits`` kernel (C, N) / bias    ``w.T`` / copy
===============================  ===================  ======================================  ========================

(``<a>`` is a ``stages.i.j.self_attn`` lambda layer, h = 4 heads, k = 16, v = mid / 4.) A checkpoint that does not
fit (a missing or extra tensor, another shape) is refused with :class:`TimmCheckpointError`, naming the first tensor
that differs; nothing is assigned then.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lambda_layers.byobnet import TIMM_CONFIGS, byob_lambda_resnet
from lambda_layers.layers import LambdaNetwork2DConv

__all__ = [
    "TIMM_PRETRAINED",
    "TimmCheckpointError",
    "TimmPretrained",
    "from_timm",
    "load_timm_checkpoint",
    "timm_model_name",
    "timm_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TimmPretrained:
    """What timm's ``pretrained_cfg`` says about one pretrained LambdaResNet (``timm/models/byoanet.py``).

    Attributes:
        hub_id: the Hugging Face Hub repository with ``model.safetensors`` (also timm's ``create_model`` name).
        input_size: (H, W) of the evaluation crop.
        crop_pct: the evaluation crop is ``input_size`` out of an image resized to ``input_size / crop_pct``.
        interpolation: resize interpolation.
        mean, std: per-channel RGB normalisation of [0, 1] images.
        num_classes: classifier outputs (ImageNet-1k).
        fixed_input_size: whether the network only accepts ``input_size``.
    """

    hub_id: str
    input_size: tuple[int, int] = (256, 256)
    crop_pct: float = 0.95
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    fixed_input_size: bool = False


TIMM_PRETRAINED: dict[str, TimmPretrained] = {
    "lambda_resnet26t": TimmPretrained("timm/lambda_resnet26t.c1_in1k", crop_pct=0.94),
    "lambda_resnet26rpt_256": TimmPretrained(
        "timm/lambda_resnet26rpt_256.c1_in1k", crop_pct=0.94, fixed_input_size=True
    ),
    "lambda_resnet50ts": TimmPretrained("timm/lambda_resnet50ts.a1h_in1k", crop_pct=0.95),
}
"""timm's pretrained LambdaResNets by model name: hub id and evaluation preprocessing."""


class TimmCheckpointError(ValueError):
    """A checkpoint that does not fit the Keras model: ``tensor`` is the first timm key that differs.

    Attributes:
        tensor: the timm state-dict key.
        reason: ``"missing"``, ``"unexpected"`` or ``"shape"``.
    """

    def __init__(self, message: str, tensor: str, reason: str) -> None:
        super().__init__(message)
        self.tensor = tensor
        self.reason = reason


def timm_model_name(name: str) -> str:
    """timm's model name from a model name or hub tag: ``"timm/lambda_resnet26t.c1_in1k"`` -> ``"lambda_resnet26t"``.

    Raises ValueError, listing the supported names, for another network.
    """
    if not isinstance(name, str):
        raise TypeError(f"the model name must be a string, got {type(name).__name__}.")
    base = name.strip()
    for prefix in ("hf-hub:", "hf_hub:"):
        base = base.removeprefix(prefix)
    base = base.removeprefix("timm/").split(".", 1)[0]
    if base not in TIMM_CONFIGS:
        raise ValueError(
            f"unknown timm LambdaResNet {name!r}: from_timm builds {', '.join(sorted(TIMM_CONFIGS))} (the lambda "
            "networks timm has pretrained weights for); a hub tag such as 'timm/lambda_resnet26t.c1_in1k' works too."
        )
    return base


# -- the mapping ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    """One timm tensor: its key, shape, and how to write it into (``assign``) or read it from (``read``) the model."""

    key: str
    shape: tuple[int, ...]
    assign: Callable[[np.ndarray], None]
    read: Callable[[], np.ndarray]


def _value(variable: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def _copy(
    key: str,
    variable: Any,
    to_keras: Callable[[np.ndarray], np.ndarray] | None = None,
    to_timm: Callable[[np.ndarray], np.ndarray] | None = None,
    shape: tuple[int, ...] | None = None,
) -> _Tensor:
    """A timm tensor stored in one Keras variable, converted by ``to_keras`` / ``to_timm`` (identity by default);
    ``shape`` is timm's shape when the layouts differ."""
    to_keras = to_keras or (lambda w: w)
    to_timm = to_timm or (lambda w: w)
    timm_shape = tuple(shape) if shape is not None else tuple(variable.shape)
    return _Tensor(
        key,
        timm_shape,
        lambda w: variable.assign(np.asarray(to_keras(w), dtype=variable.dtype)),
        lambda: to_timm(_value(variable)),
    )


def _conv(key: str, layer: keras.layers.Conv2D) -> Iterator[_Tensor]:
    kh, kw, cin, cout = layer.kernel.shape
    yield _copy(
        f"{key}.weight",
        layer.kernel,
        lambda w: w.transpose(2, 3, 1, 0),
        lambda w: w.transpose(3, 2, 0, 1),
        shape=(cout, cin, kh, kw),
    )  # O, I, kh, kw <-> kh, kw, I, O
    if layer.use_bias:
        yield _copy(f"{key}.bias", layer.bias)


def _norm(key: str, layer: keras.layers.BatchNormalization) -> Iterator[_Tensor]:
    for part, variable in (
        ("weight", layer.gamma),
        ("bias", layer.beta),
        ("running_mean", layer.moving_mean),
        ("running_var", layer.moving_variance),
    ):
        yield _copy(f"{key}.{part}", variable)


def _lambda(key: str, layer: LambdaNetwork2DConv) -> Iterator[_Tensor]:
    if layer.intra_depth != 1 or layer.norm_keys or layer.data_format != "channels_last":
        raise ValueError(f"layer {layer.name!r} is not a timm LambdaLayer (intra_depth 1, no key norm, channels last).")
    kernels = [p.kernel for p in (layer.query, layer.key, layer.value)]  # each 1, 1, c, units
    splits = np.cumsum([kernel.shape[-1] for kernel in kernels])[:-1]
    channels = kernels[0].shape[-2]

    def assign_qkv(w: np.ndarray) -> None:
        for kernel, part in zip(kernels, np.split(w[:, :, 0, 0], splits, axis=0), strict=True):  # units, c
            kernel.assign(np.asarray(part.T[None, None], dtype=kernel.dtype))  # 1, 1, c, units

    def read_qkv() -> np.ndarray:
        return np.concatenate([_value(kernel)[0, 0].T for kernel in kernels], axis=0)[
            :, :, None, None
        ]  # hk+k+v, c, 1, 1

    yield _Tensor(f"{key}.qkv.weight", (int(sum(k.shape[-1] for k in kernels)), channels, 1, 1), assign_qkv, read_qkv)
    yield from _norm(f"{key}.norm_q", layer.query_norm)
    yield from _norm(f"{key}.norm_v", layer.value_norm)
    if layer.mode == "local":
        conv = layer.position_conv  # kernel r, r, 1, k; bias k
        r, _, _, k = conv.kernel.shape
        yield _copy(
            f"{key}.conv_lambda.weight",
            conv.kernel,
            lambda w: w[:, 0, :, :, 0].transpose(1, 2, 0)[:, :, None, :],  # k, 1, r, r, 1 -> r, r, 1, k
            lambda w: w[:, :, 0, :].transpose(2, 0, 1)[:, None, :, :, None],  # r, r, 1, k -> k, 1, r, r, 1
            shape=(k, 1, r, r, 1),
        )
        if conv.use_bias:
            yield _copy(f"{key}.conv_lambda.bias", conv.bias)
    elif layer.mode == "relative":
        table = tuple(layer.position_embedding.shape)  # 2H-1, 2W-1, k, 1
        yield _copy(
            f"{key}.pos_emb", layer.position_embedding, lambda w: w[..., None], lambda w: w[..., 0], shape=table[:-1]
        )
    else:
        raise ValueError(f"layer {layer.name!r} has a {layer.mode!r} position lambda, which timm's LambdaLayer lacks.")


def _tensors(model: keras.Model) -> list[_Tensor]:
    """Every timm tensor of ``model`` (a :mod:`lambda_layers.byobnet` model), in the model's layer order."""
    out: list[_Tensor] = []
    for layer in model.layers:
        if isinstance(layer, LambdaNetwork2DConv):
            out += _lambda(layer.name, layer)
        elif isinstance(layer, keras.layers.Conv2D):
            out += _conv(layer.name, layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            out += _norm(layer.name, layer)
        elif isinstance(layer, keras.layers.Dense):
            out.append(
                _copy("head.fc.weight", layer.kernel, lambda w: w.T, lambda w: w.T, shape=layer.kernel.shape[::-1])
            )
            if layer.use_bias:
                out.append(_copy("head.fc.bias", layer.bias))
        elif layer.weights:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has weights no timm tensor maps to.")
    return out


def timm_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights as a timm state dict of float32 NumPy arrays (timm's keys and layouts, no
    ``num_batches_tracked``): ``safetensors.numpy.save_file(timm_state_dict(model), path)`` writes a checkpoint that
    :func:`from_timm` (and ``timm.create_model(..., pretrained_cfg_overlay=dict(file=path))``) loads."""
    return {tensor.key: np.ascontiguousarray(tensor.read(), dtype=np.float32) for tensor in _tensors(model)}


# -- reading checkpoints -------------------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    except TypeError as err:  # NumPy has no bfloat16: safetensors' numpy reader refuses such files
        raise ValueError(
            f"cannot read {path} with NumPy ({err}); a bfloat16 checkpoint needs torch: convert it with "
            "safetensors.torch (load_file, .float(), save_file) to float32 first."
        ) from err


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"reading the PyTorch checkpoint {path} needs torch (pip install 'lambda-export[torch]'); without torch, "
            "convert it to safetensors where torch is installed (safetensors.torch.save_file(torch.load(path, "
            "weights_only=True), 'model.safetensors')) or download timm's model.safetensors from the Hugging Face Hub."
        ) from err
    state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickles code
    out = {}
    for key, value in _unwrap(state).items():
        if not hasattr(value, "detach"):
            raise ValueError(f"{path}: `{key}` is a {type(value).__name__}, not a tensor; not a timm state dict.")
        value = value.detach().cpu()
        out[key] = (value.float() if value.is_floating_point() else value).numpy()
    return out


def _unwrap(state: Any) -> Mapping[str, Any]:
    """A state dict from a checkpoint object: timm's training checkpoints nest it under ``state_dict`` or ``model``."""
    if not isinstance(state, Mapping):
        raise ValueError(f"the checkpoint holds a {type(state).__name__}, not a state dict.")
    for wrapper in ("state_dict_ema", "state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _read(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """(state dict of NumPy arrays, description) from a path or an in-memory state dict."""
    if isinstance(checkpoint, Mapping):
        state = {}
        for key, value in _unwrap(checkpoint).items():
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu()
                value = value.float() if value.is_floating_point() else value
                value = value.numpy()
            state[key] = np.asarray(value)
        return state, "the state dict"
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        return dict(_read_safetensors(path)), str(path)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _read_torch(path), str(path)
    raise ValueError(f"unknown checkpoint format {path.suffix!r} ({path}): give a .safetensors, .pth or .bin file.")


def load_timm_checkpoint(model: keras.Model, checkpoint: str | os.PathLike | Mapping[str, Any]) -> None:
    """Copy a timm checkpoint into a :mod:`lambda_layers.byobnet` model, exactly (see the module's mapping table).

    ``checkpoint`` is a ``.safetensors`` file, a ``.pth``/``.bin`` file (needs torch) or an in-memory state dict of
    NumPy arrays or torch tensors. Every tensor is checked before any is assigned: a missing tensor, an unexpected one
    or a shape that differs raises :class:`TimmCheckpointError` naming the first (in the model's order; unexpected ones
    in the checkpoint's). ``num_batches_tracked`` counters are ignored; so is the classifier (``head.fc.*``) when the
    model has none (``num_classes=0``).
    """
    _load(model, *_read(checkpoint))


def _load(model: keras.Model, state: dict[str, np.ndarray], source: str) -> None:
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    tensors = _tensors(model)
    if not any(isinstance(layer, keras.layers.Dense) for layer in model.layers):
        state = {key: value for key, value in state.items() if not key.startswith("head.fc.")}
    for tensor in tensors:
        if tensor.key not in state:
            raise TimmCheckpointError(
                f"{source} does not fit model {model.name!r}: tensor `{tensor.key}` {tensor.shape} is missing from the "
                "checkpoint.",
                tensor.key,
                "missing",
            )
        got = tuple(np.shape(state[tensor.key]))
        if got != tensor.shape:
            raise TimmCheckpointError(
                f"{source} does not fit model {model.name!r}: tensor `{tensor.key}` has shape {got} in the checkpoint, "
                f"the model needs {tensor.shape}.",
                tensor.key,
                "shape",
            )
    known = {tensor.key for tensor in tensors}
    for key, value in state.items():
        if key not in known:
            raise TimmCheckpointError(
                f"{source} does not fit model {model.name!r}: the checkpoint has tensor `{key}` {tuple(np.shape(value))}, "
                "which the model does not (another network or configuration?).",
                key,
                "unexpected",
            )
    for tensor in tensors:
        tensor.assign(np.asarray(state[tensor.key]))


def from_timm(
    name: str,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    num_classes: int = 1000,
    input_shape: tuple[int, int, int] = (256, 256, 3),
    dtype: str | keras.DTypePolicy | None = None,
) -> keras.Model:
    """One of timm's pretrained LambdaResNets as a Keras model, with the checkpoint's weights when one is given.

    Args:
        name: ``"lambda_resnet26t"``, ``"lambda_resnet26rpt_256"`` or ``"lambda_resnet50ts"``, or a hub tag such as
            ``"lambda_resnet26t.c1_in1k"`` / ``"timm/lambda_resnet26t.c1_in1k"``.
        checkpoint: a timm ``.safetensors`` file, a ``.pth``/``.bin`` file (needs torch) or a state dict; None builds
            the network with timm's initialisation.
        num_classes: classifier outputs (1000, ImageNet-1k, for the pretrained weights; 0: no classifier, the model
            returns the pooled features and the checkpoint's classifier is ignored).
        input_shape: (H, W, 3), channels last. ``lambda_resnet26rpt_256`` only takes (256, 256, 3) (its relative
            position tables fix the size); the others take multiples of 32 (pretrained at 256).
        dtype: dtype policy of the model's layers (e.g. ``"float64"``, ``"mixed_float16"``); None: Keras' global one.

    Returns:
        a ``keras.Model`` from input ``image`` (b, H, W, 3), normalised as :data:`TIMM_PRETRAINED` says, to output
        ``logits`` (b, num_classes) (or ``features`` (b, 2048)).

    Raises:
        ValueError: an unknown name or a bad ``input_shape``; :class:`TimmCheckpointError` (a ValueError) for a
            checkpoint that does not fit, naming the tensor.
    """
    model_name = timm_model_name(name)
    state = None if checkpoint is None else _read(checkpoint)  # a missing or unreadable file fails before the build
    model = byob_lambda_resnet(TIMM_CONFIGS[model_name], tuple(input_shape), num_classes, model_name, dtype)
    if state is not None:
        _load(model, *state)
    return model
