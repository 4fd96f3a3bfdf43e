"""timm's LambdaResNets (``lambda_resnet26t``, ``lambda_resnet26rpt_256``, ``lambda_resnet50ts``) as Keras models.

The only pretrained lambda networks are Ross Wightman's in timm (PyTorch Image Models, https://github.com/huggingface/
pytorch-image-models, ``timm/models/byoanet.py`` configs on ``timm/models/byobnet.py``'s ByobNet, ``timm/layers/
lambda_layer.py``). These builders rebuild those networks layer for layer, channels last (NHWC), so that
:func:`lambda_layers.from_timm` can copy a timm checkpoint into them exactly. Each Keras layer is named after the timm
module it mirrors (``stem.conv1.conv``, ``stages.2.1.self_attn``, ...; the classifier is ``logits``), so a timm
state-dict key is the Keras layer name plus ``.weight``/``.bias``/...

Architecture (timm's ByobNet with the three configs; c output channels of a block, mid = c / 4)::

    stem ('tiered'):  conv3x3/2 (24) -> BN -> act -> conv3x3 (32) -> BN -> act -> conv3x3 (64) -> BN -> act
                      -> maxpool 3x3/2                                                          (H/4 x W/4 x 64)
    'bottle' block:   x -> conv1x1(mid)-BN-act -> conv3x3(mid, stride s)-BN-act -> conv1x1(c)-BN -> + shortcut -> act
    'self_attn' block: x -> conv1x1(mid)-BN-act -> lambda(mid) [-> avgpool 2x2/2 if s = 2] -> BN-act -> conv1x1(c)-BN
                      -> + shortcut -> act
    shortcut:         identity, or conv1x1(c, stride s)-BN (no act) when the channels or the stride change
    head:             global average pooling -> dense (num_classes)                             (logits)

Stages (c = 256, 512, 1024, 2048; stride 1, 2, 2, 2 on the first block of each stage):

* ``lambda_resnet26t``: (bottle x2), (bottle x2), (bottle, lambda), (lambda x2); ReLU; local lambda convolution r = 9.
* ``lambda_resnet26rpt_256``: the same with a global relative position embedding instead of the lambda convolution
  (tables (2H-1, 2W-1, k) sized for the 16x16 and 8x8 feature maps of a 256x256 input, so the input size is fixed).
* ``lambda_resnet50ts``: (bottle x3), (bottle x3, lambda), (bottle, lambda) x3, (bottle, lambda, bottle); SiLU; r = 9.

The lambda layer is :class:`~lambda_layers.layers.LambdaNetwork2DConv`: timm's ``LambdaLayer`` computes the same
function (Bello, *LambdaNetworks*, ICLR 2021, https://arxiv.org/abs/2102.08602) with h = 4 heads, key depth k = 16,
intra-depth u = 1, value depth v = mid / 4, batch-normalised queries and values, keys softmaxed over the positions, and
either the local lambda convolution ``Conv3d(1, k, (r, r, 1))`` *with a bias* (our ``receptive_kernel=r,
position_bias=True``: an r x r Conv2D from 1 to k channels applied to each value channel) or the relative table
``pos_emb`` (2H-1, 2W-1, k) (our ``relative=True``, a (2H-1, 2W-1, k, 1) table read at pos(m) - pos(n), as timm's
``rel_pos_indices``). Only the parameterisation differs: timm projects q, k, v with one fused 1x1 convolution ``qkv``
(rows q (h*k), then k (k), then v (v)), which the checkpoint loader splits into our ``query``, ``key`` and ``value``
kernels; and timm's ``AvgPool2d(2, 2)`` after a strided lambda layer is a separate ``AveragePooling2D`` layer here.

Padding follows PyTorch, not Keras' ``"same"``: a strided 3x3 convolution pads 1 pixel on every side (Keras would pad
0 before and 1 after on an even input), so it is a ``ZeroPadding2D`` then a ``"valid"`` convolution; the stem's max
pooling is :class:`PaddedMaxPooling2D` (padding that never wins the max, as PyTorch's). Batch norms use epsilon 1e-5
(PyTorch's) and momentum 0.9 (PyTorch's 0.1). Initialisation follows timm's for training from scratch: convolutions
He-normal on fan-out, the last batch norm of each residual branch zero gamma, the classifier normal(0, 0.01).

The models contain built-in Keras layers, ``LambdaNetwork2DConv`` and :class:`PaddedMaxPooling2D`, all registered, so
once ``lambda_layers`` is imported they save to ``.keras``/``.h5`` and reload without ``custom_objects``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from lambda_layers.layers import LambdaNetwork2DConv

__all__ = [
    "TIMM_CONFIGS",
    "ByobLambdaConfig",
    "PaddedMaxPooling2D",
    "byob_lambda_resnet",
    "lambda_resnet26rpt_256",
    "lambda_resnet26t",
    "lambda_resnet50ts",
]

_BN = {"epsilon": 1e-5, "momentum": 0.9}  # torch.nn.BatchNorm2d defaults (eps 1e-5, momentum 0.1)
# timm's _init_weights: normal(0, sqrt(2 / fan_out)) for convolutions, normal(0, 0.01) for the classifier
_CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}
_FC_INIT = {"class_name": "RandomNormal", "config": {"stddev": 0.01}}
# timm's LambdaLayer.reset_parameters: the qkv projection normal with std fan_in ** -0.5
_QKV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0, "mode": "fan_in", "distribution": "untruncated_normal"},
}
_ACTIVATIONS = ("relu", "silu")
_BLOCK_TYPES = ("bottle", "self_attn")


@dataclass(frozen=True)
class ByobLambdaConfig:
    """One of timm's ByobNet lambda configurations (``timm/models/byoanet.py``), reduced to what these networks use.

    Attributes:
        stages: per stage, the block types in order (``"bottle"`` or ``"self_attn"``), timm's expanded
            ``interleave_blocks``.
        channels: output channels c of every block of each stage.
        strides: stride of each stage's first block.
        stem_channels: the 'tiered' stem's last width; its three 3x3 convolutions have 3/8, 1/2 and 1 of it.
        activation: ``"relu"`` or ``"silu"`` (timm's ``act_layer``), everywhere.
        receptive_kernel: r of the local lambda convolution, or None for the global relative position embedding.
        heads, key_depth: h and k of the lambda layers (timm's ``num_heads`` 4, ``dim_head`` 16).
        bottle_ratio: mid channels = c * bottle_ratio (timm's ``br``).
        fixed_input_size: the (H, W) the relative tables are sized for, or None when any multiple of 32 works.
    """

    stages: tuple[tuple[str, ...], ...]
    channels: tuple[int, ...] = (256, 512, 1024, 2048)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem_channels: int = 64
    activation: str = "relu"
    receptive_kernel: int | None = 9
    heads: int = 4
    key_depth: int = 16
    bottle_ratio: float = 0.25
    fixed_input_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not (len(self.stages) == len(self.channels) == len(self.strides)):
            raise ValueError("`stages`, `channels` and `strides` must have one entry per stage.")
        for stage in self.stages:
            if not stage or any(kind not in _BLOCK_TYPES for kind in stage):
                raise ValueError(f"every stage needs blocks of the types {_BLOCK_TYPES}, got {stage!r}.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {_ACTIVATIONS}, got {self.activation!r}.")


TIMM_CONFIGS: dict[str, ByobLambdaConfig] = {
    "lambda_resnet26t": ByobLambdaConfig(
        stages=(("bottle",) * 2, ("bottle",) * 2, ("bottle", "self_attn"), ("self_attn",) * 2),
    ),
    "lambda_resnet26rpt_256": ByobLambdaConfig(
        stages=(("bottle",) * 2, ("bottle",) * 2, ("bottle", "self_attn"), ("self_attn",) * 2),
        receptive_kernel=None,
        fixed_input_size=(256, 256),
    ),
    "lambda_resnet50ts": ByobLambdaConfig(
        stages=(
            ("bottle",) * 3,
            ("bottle",) * 3 + ("self_attn",),
            ("bottle", "self_attn") * 3,
            ("bottle", "self_attn", "bottle"),
        ),
        activation="silu",
    ),
}
"""The three timm LambdaResNets with pretrained weights, by timm's model name."""


def _make_divisible(value: float, divisor: int = 8) -> int:
    """timm.layers.make_divisible: round to the nearest multiple of ``divisor``, never below 90% of ``value``."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


# -- layers --------------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="lambda_layers")
class PaddedMaxPooling2D(layers.Layer):
    """Max pooling with PyTorch's symmetric padding: ``torch.nn.MaxPool2d(pool_size, strides, padding)``, NHWC.

    PyTorch pads ``padding`` pixels on every side and padded pixels never win the max. Keras' ``padding="same"``
    differs on even inputs (it pads 0 before and 1 after, shifting every window by one pixel). Here the input is
    reflect-padded, then pooled ``"valid"``: a reflected pixel at offset -j copies the pixel at +j, which lies in the
    same window as long as ``2 * padding < pool_size``, so it never changes the max. Reflection (ONNX ``Pad``
    mode=reflect) rather than -inf padding keeps every tensor finite, as quantisation calibrators need.

    (b, H, W, c) -> (b, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1, c).

    Args:
        pool_size: k, the window size (an int, square windows).
        strides: s.
        padding: p, pixels on each side; ``2 * padding < pool_size`` and ``padding`` below the input size.
    """

    def __init__(self, pool_size: int = 3, strides: int = 2, padding: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for arg, value, low in (("pool_size", pool_size, 1), ("strides", strides, 1), ("padding", padding, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"`{arg}` must be an integer >= {low}, got {value!r}.")
        if 2 * padding >= pool_size:
            raise ValueError(
                f"`padding` ({padding}) must be less than half of `pool_size` ({pool_size}) (PyTorch allows up to half; "
                "reflection padding is exact only below it)."
            )
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.padding = int(padding)
        self.pool = layers.MaxPooling2D(
            self.pool_size, strides=self.strides, padding="valid", name="pool", dtype=self.dtype_policy
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """No weights; checks the rank and that reflection has enough pixels."""
        if len(input_shape) != 4:
            raise ValueError(f"PaddedMaxPooling2D expects (b, H, W, c) inputs, got shape {tuple(input_shape)}.")
        for dim in input_shape[1:3]:
            if dim is not None and dim <= self.padding:
                raise ValueError(f"PaddedMaxPooling2D: padding {self.padding} needs inputs larger than {input_shape}.")
        self.pool.build(self._padded_shape(input_shape))
        super().build(input_shape)

    def _padded_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        b, hh, ww, c = input_shape
        pad = 2 * self.padding
        return (b, None if hh is None else hh + pad, None if ww is None else ww + pad, c)

    def call(self, inputs: Any) -> Any:
        """Reflect-pad H and W by ``padding``, then max-pool ``"valid"``."""
        p = self.padding
        x = inputs
        if p:
            x = ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")  # b, H+2p, W+2p, c
        return self.pool(x)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """(b, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1, c)."""
        b, hh, ww, c = self._padded_shape(tuple(input_shape))
        k, s = self.pool_size, self.strides
        return (b, None if hh is None else (hh - k) // s + 1, None if ww is None else (ww - k) // s + 1, c)

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument."""
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding})
        return config


# -- building blocks -----------------------------------------------------------------------------------------------


def _conv_norm_act(
    x: Any,
    filters: int,
    kernel: int,
    stride: int,
    name: str,
    activation: str | None,
    dtype: Any,
    zero_gamma: bool = False,
) -> Any:
    """timm's ConvNormAct: conv (no bias, PyTorch padding (kernel - 1) // 2) -> BN -> act; layers ``{name}.conv`` etc."""
    padding = "same"
    if kernel > 1 and stride > 1:
        # PyTorch pads (k - 1) // 2 on every side; Keras' "same" would pad 0 before, 1 after on even inputs
        x = layers.ZeroPadding2D((kernel - 1) // 2, name=f"{name}.pad", dtype=dtype)(x)
        padding = "valid"
    x = layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=f"{name}.conv",
        dtype=dtype,
    )(x)
    return _norm_act(x, f"{name}.bn", activation, dtype, zero_gamma=zero_gamma)


def _norm_act(x: Any, name: str, activation: str | None, dtype: Any, zero_gamma: bool = False) -> Any:
    """timm's BatchNormAct2d: BN ``{name}`` then the activation ``{name}.act`` (none when ``activation`` is None)."""
    gamma = "zeros" if zero_gamma else "ones"
    x = layers.BatchNormalization(gamma_initializer=gamma, name=name, dtype=dtype, **_BN)(x)
    return x if activation is None else layers.Activation(activation, name=f"{name}.act", dtype=dtype)(x)


def _block(x: Any, kind: str, out_channels: int, stride: int, config: ByobLambdaConfig, name: str, dtype: Any) -> Any:
    """timm's BottleneckBlock (``"bottle"``) or SelfAttnBlock (``"self_attn"``); (b, H, W, c_in) -> (b, H/s, W/s, c)."""
    act = config.activation
    mid = _make_divisible(out_channels * config.bottle_ratio)
    shortcut = x
    if x.shape[-1] != out_channels or stride != 1:
        shortcut = _conv_norm_act(x, out_channels, 1, stride, f"{name}.shortcut", None, dtype)
    y = _conv_norm_act(x, mid, 1, 1, f"{name}.conv1_1x1", act, dtype)
    if kind == "bottle":
        y = _conv_norm_act(y, mid, 3, stride, f"{name}.conv2_kxk", act, dtype)
    else:
        position = (
            {"relative": True}
            if config.receptive_kernel is None
            else {"receptive_kernel": config.receptive_kernel, "position_bias": True}
        )
        y = LambdaNetwork2DConv(
            mid,
            key_depth=config.key_depth,
            intra_depth=1,
            heads=config.heads,
            norm_epsilon=_BN["epsilon"],
            norm_momentum=_BN["momentum"],
            kernel_initializer=_QKV_INIT,
            name=f"{name}.self_attn",
            dtype=dtype,
            **position,
        )(y)  # b, H, W, mid
        if stride != 1:
            y = layers.AveragePooling2D(stride, strides=stride, name=f"{name}.self_attn.pool", dtype=dtype)(
                y
            )  # b, H/s, W/s, mid
        y = _norm_act(y, f"{name}.post_attn", act, dtype)
    y = _conv_norm_act(y, out_channels, 1, 1, f"{name}.conv3_1x1", None, dtype, zero_gamma=True)
    y = layers.Add(name=f"{name}.add", dtype=dtype)([y, shortcut])
    return layers.Activation(act, name=f"{name}.act", dtype=dtype)(y)


def _check_input_shape(input_shape: Any, config: ByobLambdaConfig) -> tuple[int, int, int]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C) (channels last), got {input_shape!r}.")
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape):
        raise ValueError(f"`input_shape` must hold three positive integers (static shapes), got {input_shape!r}.")
    hh, ww, cc = (int(d) for d in input_shape)
    if config.fixed_input_size is not None and (hh, ww) != tuple(config.fixed_input_size):
        fixed = config.fixed_input_size
        raise ValueError(
            f"this network's relative position tables are sized for {fixed[0]}x{fixed[1]} inputs (its lambda layers "
            f"see {fixed[0] // 16}x{fixed[1] // 16} and {fixed[0] // 32}x{fixed[1] // 32} feature maps), got "
            f"input_shape {input_shape!r}; resize the images to {fixed[0]}x{fixed[1]}."
        )
    if hh % 32 or ww % 32:
        raise ValueError(
            f"`input_shape` H and W must be multiples of 32 (the network's total stride: a strided lambda block halves "
            f"its map with a 2x2 pooling, its shortcut with a strided 1x1 convolution, which agree only on even sizes), "
            f"got {input_shape!r}."
        )
    return hh, ww, cc


# -- public builders -----------------------------------------------------------------------------------------------


def byob_lambda_resnet(
    config: ByobLambdaConfig,
    input_shape: Sequence[int] = (256, 256, 3),
    num_classes: int = 1000,
    name: str = "byob_lambda_resnet",
    dtype: str | keras.DTypePolicy | None = None,
) -> keras.Model:
    """Build the ByobNet of ``config`` as a functional Keras model, (b, H, W, C) images -> (b, num_classes) logits.

    Args:
        config: the architecture (see :data:`TIMM_CONFIGS`).
        input_shape: (H, W, C), static, channels last; H and W multiples of 32 (the relative variant: its fixed size).
        num_classes: classifier outputs (input ``image``, output ``logits``); 0 leaves the classifier out and the model
            returns the globally pooled features (b, c_last) as output ``features`` (timm's ``num_classes=0``).
        name: the model's name.
        dtype: dtype policy of every layer (``"float64"``, ``"mixed_float16"``, ...); None: Keras' global policy. The
            input ``image`` has the policy's variable dtype (float32 for mixed policies).

    The images are fed as timm feeds them, normalised: ``(rgb / 255 - mean) / std`` (see
    :data:`lambda_layers.timm_weights.TIMM_PRETRAINED`).
    """
    if not isinstance(config, ByobLambdaConfig):
        raise TypeError(f"`config` must be a ByobLambdaConfig, got {type(config).__name__}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
        raise ValueError(f"`num_classes` must be a non-negative integer (0: no classifier), got {num_classes!r}.")
    hh, ww, cc = _check_input_shape(input_shape, config)
    policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
    act = config.activation
    inputs = keras.Input((hh, ww, cc), name="image", dtype=policy.variable_dtype)  # b, H, W, C

    stem = config.stem_channels
    x = _conv_norm_act(inputs, 3 * stem // 8, 3, 2, "stem.conv1", act, policy)  # b, H/2, W/2, 3/8 stem
    x = _conv_norm_act(x, stem // 2, 3, 1, "stem.conv2", act, policy)  # b, H/2, W/2, stem/2
    x = _conv_norm_act(x, stem, 3, 1, "stem.conv3", act, policy)  # b, H/2, W/2, stem
    x = PaddedMaxPooling2D(3, 2, 1, name="stem.pool", dtype=policy)(x)  # b, H/4, W/4, stem

    for s, (kinds, channels, stride) in enumerate(zip(config.stages, config.channels, config.strides, strict=True)):
        for i, kind in enumerate(kinds):
            x = _block(x, kind, channels, stride if i == 0 else 1, config, f"stages.{s}.{i}", policy)

    x = layers.GlobalAveragePooling2D(name="head.global_pool", dtype=policy)(x)  # b, c_last
    if num_classes:
        x = layers.Dense(num_classes, kernel_initializer=_FC_INIT, name="logits", dtype=policy)(x)  # b, num_classes
    else:
        x = layers.Identity(name="features", dtype=policy)(x)
    return keras.Model(inputs, x, name=name)


def _builder(model_name: str, summary: str) -> Any:
    def build(
        input_shape: Sequence[int] = (256, 256, 3),
        num_classes: int = 1000,
        name: str = model_name,
        dtype: str | keras.DTypePolicy | None = None,
    ) -> keras.Model:
        return byob_lambda_resnet(TIMM_CONFIGS[model_name], input_shape, num_classes, name, dtype)

    build.__name__ = build.__qualname__ = model_name
    build.__doc__ = (
        f"timm's ``{model_name}``: {summary}\n\n"
        "Arguments as :func:`byob_lambda_resnet` (default input (256, 256, 3), 1000 classes); load timm's weights with "
        ":func:`lambda_layers.from_timm`."
    )
    return build


lambda_resnet26t = _builder(
    "lambda_resnet26t",
    "ResNet-26-T with local lambda convolutions (r = 9) in the last two stages, ReLU; 10.96 M parameters. Pretrained: "
    "``timm/lambda_resnet26t.c1_in1k`` (256x256, crop 0.94).",
)
lambda_resnet26rpt_256 = _builder(
    "lambda_resnet26rpt_256",
    "ResNet-26-T with global relative-position lambdas in the last two stages, ReLU; input fixed at 256x256; 10.99 M "
    "parameters. Pretrained: ``timm/lambda_resnet26rpt_256.c1_in1k`` (crop 0.94).",
)
lambda_resnet50ts = _builder(
    "lambda_resnet50ts",
    "ResNet-50-T with local lambda convolutions (r = 9) interleaved in the last three stages, SiLU; 21.54 M "
    "parameters. Pretrained: ``timm/lambda_resnet50ts.a1h_in1k`` (256x256, crop 0.95).",
)
