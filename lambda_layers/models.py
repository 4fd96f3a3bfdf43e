"""LambdaResNets (Bello, ICLR 2021): bottleneck ResNets whose 3x3 convolutions are lambda layers in chosen stages.

The builders return plain functional ``keras.Model`` objects made only of built-in Keras layers (``Conv2D``,
``BatchNormalization``, ``ReLU``, ``Add``, ``MaxPooling2D``, ``AveragePooling2D``, ``GlobalAveragePooling2D``,
``Dense``) and :class:`~lambda_layers.layers.LambdaNetwork2DConv`. There are no ``Lambda`` layers and no other custom
code, so once ``lambda_layers`` is imported a model saves to ``.keras`` and ``.h5`` and reloads without
``custom_objects``, and converts to ONNX with tf2onnx.

Architecture (paper, section 5 and appendix): a ResNet stem (``stem_kernel`` x ``stem_kernel`` convolution with stride
``stem_stride``, BN, ReLU, optional 3x3/2 max pooling), then ``len(depths)`` stages of bottleneck blocks::

    x -> conv1x1(w) -> BN -> ReLU -> conv3x3(w, stride s) -> BN -> ReLU -> conv1x1(4w) -> BN -> (+ shortcut) -> ReLU

In the stages listed in ``lambda_stages`` the 3x3 convolution is replaced by a ``LambdaNetwork2DConv`` with ``w``
output channels (a local lambda convolution with receptive field ``receptive_kernel``, or a global relative position
embedding when ``receptive_kernel`` is None); a lambda block that downsamples applies a 3x3 average pooling with
stride 2 after the lambda layer, as the paper does. The shortcut is the identity, or a strided 1x1 convolution + BN
when the shape changes. A global average pooling and a dense classifier end the network.

Stages are numbered from 0: with four stages, stage ``i`` is the paper's ``c{i+2}``, so the default
``lambda_stages=(2, 3)`` puts lambda layers in c4 and c5 (the paper's hybrid LambdaResNets).

``data_format="channels_first"`` builds the whole network channels first: it takes (b, C, H, W) images. TensorFlow's CPU
``Conv2D`` only has an NCHW kernel through oneDNN (on by default on x86; ``TF_ENABLE_ONEDNN_OPTS=0`` turns it off):
without oneDNN, run channels-first models on a GPU or compiled with XLA (``jit_compile=True``). Pooling and batch
normalisation work channels first everywhere (Keras transposes around TensorFlow's NHWC pooling).

The module also holds a small, self-contained demo: :func:`tiny_lambda_resnet`, :func:`build_demo_model`,
:func:`make_demo_data` and :func:`train_demo_model` train a tiny LambdaResNet on generated images in seconds on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import layers

from lambda_layers.layers import LambdaNetwork2DConv

__all__ = [
    "DEMO_CLASS_NAMES",
    "DEMO_TRAIN_STEPS",
    "build_demo_model",
    "lambda_resnet",
    "lambda_resnet26",
    "lambda_resnet50",
    "make_demo_data",
    "tiny_lambda_resnet",
    "train_demo_model",
]

_DATA_FORMATS = ("channels_last", "channels_first")
_BN = {"momentum": 0.9, "epsilon": 1e-5}  # the TPU ResNet settings the paper's training code uses
_CONV_INIT = "he_normal"

# Demo task: 10 classes = 5 colours x 2 orientations of a bar placed anywhere in the image.
_DEMO_COLOURS = {
    "red": (1.0, 0.15, 0.15),
    "green": (0.15, 1.0, 0.15),
    "blue": (0.15, 0.15, 1.0),
    "yellow": (1.0, 1.0, 0.15),
    "magenta": (1.0, 0.15, 1.0),
}
DEMO_CLASS_NAMES: tuple[str, ...] = tuple(
    f"{colour} {orientation}" for colour in _DEMO_COLOURS for orientation in ("horizontal", "vertical")
)
"""Names of the 10 demo classes; label ``2 * colour_index + orientation`` (0 horizontal, 1 vertical)."""

DEMO_TRAIN_STEPS = 40
"""Training steps of the demo (``lambda-export demo``, the test suite's demo model): with :func:`build_demo_model`'s
learning rate 1e-2, batch 32 and seeds 0–2, held-out accuracy 0.93–1.0 and every class or all but one predicted
(30 steps: 0.79–0.84; 20 steps: ~0.55; 8 steps, what the tests once used: 0.15–0.18, one class nearly everywhere).
Each step takes ~0.2 s of CPU after ~10 s of tracing."""


# -- argument checks -----------------------------------------------------------------------------------------------


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"`{name}` must be a non-empty sequence of positive integers, got {value!r}.")
    if not all(_is_positive_int(item) for item in value):
        raise ValueError(f"`{name}` must contain positive integers only, got {value!r}.")
    return tuple(int(item) for item in value)


def _check_positive(name: str, value: Any) -> int:
    if not _is_positive_int(value):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _check_input_shape(input_shape: Any, data_format: str) -> tuple[int | None, int | None, int | None]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or len(input_shape) != 3:
        layout = "(H, W, C)" if data_format == "channels_last" else "(C, H, W)"
        raise ValueError(f"`input_shape` must be {layout} for data_format={data_format!r}, got {input_shape!r}.")
    channels = input_shape[-1] if data_format == "channels_last" else input_shape[0]
    spatial = input_shape[:2] if data_format == "channels_last" else input_shape[1:]
    if not _is_positive_int(channels):
        raise ValueError(f"`input_shape` needs a known, positive number of channels, got {input_shape!r}.")
    if not all(dim is None or _is_positive_int(dim) for dim in spatial):
        raise ValueError(f"`input_shape` spatial dimensions must be positive integers or None, got {input_shape!r}.")
    first, second, third = (None if dim is None else int(dim) for dim in input_shape)
    return first, second, third


# -- building blocks -----------------------------------------------------------------------------------------------


def _bn(x: Any, axis: int, name: str, zero_gamma: bool = False) -> Any:
    gamma = "zeros" if zero_gamma else "ones"
    return layers.BatchNormalization(axis=axis, gamma_initializer=gamma, name=name, **_BN)(x)


def _conv(x: Any, filters: int, kernel: int, stride: int, data_format: str, name: str) -> Any:
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        data_format=data_format,
        name=name,
    )(x)


def _bottleneck(
    x: Any,
    width: int,
    stride: int,
    *,
    use_lambda: bool,
    expansion: int,
    key_depth: int,
    intra_depth: int,
    heads: int,
    receptive_kernel: int | None,
    zero_init_residual: bool,
    data_format: str,
    name: str,
) -> Any:
    """One bottleneck block; ``x`` (b, H, W, c) -> (b, H/stride, W/stride, expansion*width) (or channels first)."""
    axis = -1 if data_format == "channels_last" else 1
    out_channels = expansion * width
    shortcut = x
    if stride != 1 or x.shape[axis] != out_channels:
        shortcut = _conv(x, out_channels, 1, stride, data_format, f"{name}_shortcut_conv")
        shortcut = _bn(shortcut, axis, f"{name}_shortcut_bn")

    y = _conv(x, width, 1, 1, data_format, f"{name}_conv1")
    y = _bn(y, axis, f"{name}_bn1")
    y = layers.ReLU(name=f"{name}_relu1")(y)
    if use_lambda:
        y = LambdaNetwork2DConv(
            width,
            key_depth=key_depth,
            intra_depth=intra_depth,
            heads=heads,
            receptive_kernel=receptive_kernel,
            relative=receptive_kernel is None,
            data_format=data_format,
            norm_epsilon=_BN["epsilon"],
            norm_momentum=_BN["momentum"],
            name=f"{name}_lambda",
        )(y)
        if stride != 1:
            y = layers.AveragePooling2D(
                3, strides=stride, padding="same", data_format=data_format, name=f"{name}_pool"
            )(y)
    else:
        y = _conv(y, width, 3, stride, data_format, f"{name}_conv2")
    y = _bn(y, axis, f"{name}_bn2")
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(y, out_channels, 1, 1, data_format, f"{name}_conv3")
    y = _bn(y, axis, f"{name}_bn3", zero_gamma=zero_init_residual)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


# -- public builders -----------------------------------------------------------------------------------------------


def lambda_resnet(
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    depths: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    stem_width: int = 64,
    lambda_stages: Sequence[int] = (2, 3),
    key_depth: int = 16,
    intra_depth: int = 1,
    heads: int = 4,
    receptive_kernel: int | None = 23,
    expansion: int = 4,
    strides: Sequence[int] | None = None,
    stem_kernel: int = 7,
    stem_stride: int = 2,
    stem_pool: bool = True,
    zero_init_residual: bool = True,
    classifier_activation: str | None = "softmax",
    data_format: str = "channels_last",
    name: str = "lambda_resnet",
) -> keras.Model:
    """Build a LambdaResNet classifier: (b, H, W, C) images -> (b, num_classes) class probabilities.

    With ``data_format="channels_first"`` the model takes (b, C, H, W) inputs (and ``input_shape`` is (C, H, W));
    every layer then works channels first. The output is (b, num_classes) in both cases.

    Args:
        input_shape: (H, W, C) for channels last, (C, H, W) for channels first. H and W may be None only when every
            lambda stage uses the local lambda convolution (the global relative embedding needs static sizes).
        num_classes: number of output classes.
        depths: number of bottleneck blocks per stage, e.g. (2, 2, 2, 2) for a ResNet-26, (3, 4, 6, 3) for a ResNet-50.
        widths: bottleneck width (3x3 conv / lambda layer channels) per stage; a stage outputs ``expansion * width``.
        stem_width: channels of the stem convolution.
        lambda_stages: indices (from 0) of the stages whose 3x3 convolutions become lambda layers; may be empty.
        key_depth: k, query/key depth of the lambda layers (16 in the paper).
        intra_depth: u, intra-depth of the lambda layers (1 in the paper's main models).
        heads: h, query heads of the lambda layers; every width of a lambda stage must be divisible by it.
        receptive_kernel: r, odd size of the local lambda convolution (23 in the paper), or None for a global
            relative position embedding sized to each stage's feature map.
        expansion: bottleneck expansion (4 in ResNets).
        strides: stride of the first block of each stage; default (1, 2, 2, ...) as in ResNets.
        stem_kernel, stem_stride, stem_pool: the stem convolution's kernel and stride and whether a 3x3/2 max pooling
            follows it (7, 2, True: the ImageNet ResNet stem, a 4x reduction).
        zero_init_residual: initialise the last BN scale of each block to zero, so blocks start as identities.
        classifier_activation: activation of the final dense layer ("softmax", or None for logits).
        data_format: "channels_last" or "channels_first".
        name: the model's name.

    Returns:
        An uncompiled functional ``keras.Model``. Layer names: ``stem_*``, ``stage{i}_block{j}_*`` (the lambda layer of
        a block is ``stage{i}_block{j}_lambda``), ``avg_pool``, ``predictions``.

    Raises:
        ValueError: on inconsistent or out-of-range arguments (e.g. ``len(depths) != len(widths)``, a lambda stage
            that does not exist, a lambda width not divisible by ``heads``, an even ``receptive_kernel``).
    """
    if data_format not in _DATA_FORMATS:
        raise ValueError(f"`data_format` must be one of {_DATA_FORMATS}, got {data_format!r}.")
    input_shape = _check_input_shape(input_shape, data_format)
    num_classes = _check_positive("num_classes", num_classes)
    depths = _int_tuple("depths", depths)
    widths = _int_tuple("widths", widths)
    if len(depths) != len(widths):
        raise ValueError(
            f"`depths` and `widths` must have one entry per stage, got {len(depths)} depths and {len(widths)} widths."
        )
    num_stages = len(depths)
    if strides is None:
        strides = (1,) + (2,) * (num_stages - 1)
    strides = _int_tuple("strides", strides)
    if len(strides) != num_stages:
        raise ValueError(f"`strides` must have one entry per stage ({num_stages}), got {strides!r}.")
    if isinstance(lambda_stages, (str, bytes)) or not isinstance(lambda_stages, Sequence):
        raise ValueError(f"`lambda_stages` must be a sequence of stage indices, got {lambda_stages!r}.")
    for stage in lambda_stages:
        if not isinstance(stage, (int, np.integer)) or isinstance(stage, bool) or not 0 <= stage < num_stages:
            raise ValueError(
                f"`lambda_stages` names stage {stage!r}, but the network has stages 0..{num_stages - 1} "
                f"(len(depths) = {num_stages})."
            )
    if len(set(lambda_stages)) != len(lambda_stages):
        raise ValueError(f"`lambda_stages` lists a stage twice: {lambda_stages!r}.")
    lambda_set = {int(stage) for stage in lambda_stages}
    stem_width = _check_positive("stem_width", stem_width)
    key_depth = _check_positive("key_depth", key_depth)
    intra_depth = _check_positive("intra_depth", intra_depth)
    heads = _check_positive("heads", heads)
    expansion = _check_positive("expansion", expansion)
    stem_kernel = _check_positive("stem_kernel", stem_kernel)
    stem_stride = _check_positive("stem_stride", stem_stride)
    if receptive_kernel is not None:
        receptive_kernel = _check_positive("receptive_kernel", receptive_kernel)
        if receptive_kernel % 2 == 0:
            raise ValueError(f"`receptive_kernel` must be odd (a centred window), got {receptive_kernel}.")
    for stage in sorted(lambda_set):
        if widths[stage] % heads:
            raise ValueError(
                f"Stage {stage} is a lambda stage of width {widths[stage]}, which is not divisible by `heads`={heads} "
                "(each head gets width / heads value channels)."
            )
    if receptive_kernel is None and lambda_set:
        spatial = input_shape[:2] if data_format == "channels_last" else input_shape[1:]
        if any(dim is None for dim in spatial):
            raise ValueError(
                "`receptive_kernel=None` (global relative position embedding) needs static spatial dimensions, "
                f"got input_shape={input_shape!r}."
            )

    axis = -1 if data_format == "channels_last" else 1
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv(inputs, stem_width, stem_kernel, stem_stride, data_format, "stem_conv")
    x = _bn(x, axis, "stem_bn")
    x = layers.ReLU(name="stem_relu")(x)
    if stem_pool:
        x = layers.MaxPooling2D(3, strides=2, padding="same", data_format=data_format, name="stem_pool")(x)
    for stage, (depth, width, stride) in enumerate(zip(depths, widths, strides, strict=True)):
        for block in range(depth):
            x = _bottleneck(
                x,
                width,
                stride if block == 0 else 1,
                use_lambda=stage in lambda_set,
                expansion=expansion,
                key_depth=key_depth,
                intra_depth=intra_depth,
                heads=heads,
                receptive_kernel=receptive_kernel,
                zero_init_residual=zero_init_residual,
                data_format=data_format,
                name=f"stage{stage}_block{block}",
            )
    x = layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def lambda_resnet26(
    input_shape: Sequence[int | None] = (128, 128, 3), num_classes: int = 1000, **kwargs: Any
) -> keras.Model:
    """LambdaResNet-26: blocks (2, 2, 2, 2), lambda layers in c4 and c5 (stages 2, 3), r=23, k=16, u=1, h=4.

    (b, 128, 128, 3) -> (b, 1000) by default, 10.45M parameters (the convolutional ResNet-26 has 16.0M); any
    :func:`lambda_resnet` keyword can be overridden.
    """
    kwargs.setdefault("depths", (2, 2, 2, 2))
    kwargs.setdefault("name", "lambda_resnet26")
    return lambda_resnet(input_shape, num_classes, **kwargs)


def lambda_resnet50(
    input_shape: Sequence[int | None] = (224, 224, 3), num_classes: int = 1000, **kwargs: Any
) -> keras.Model:
    """LambdaResNet-50: blocks (3, 4, 6, 3), lambda layers in c4 and c5 (stages 2, 3), r=23, k=16, u=1, h=4.

    (b, 224, 224, 3) -> (b, 1000) by default, 15.6M parameters; any :func:`lambda_resnet` keyword can be overridden
    (e.g. ``lambda_stages=(0, 1, 2, 3)`` for lambda layers in every stage: 15.05M parameters, the paper's 15.0M,
    against 25.6M for the convolutional ResNet-50 that ``lambda_stages=()`` gives).
    """
    kwargs.setdefault("depths", (3, 4, 6, 3))
    kwargs.setdefault("name", "lambda_resnet50")
    return lambda_resnet(input_shape, num_classes, **kwargs)


def tiny_lambda_resnet(
    input_shape: Sequence[int | None] = (32, 32, 3), num_classes: int = 10, **kwargs: Any
) -> keras.Model:
    """A tiny LambdaResNet for tests and demos: (b, 32, 32, 3) -> (b, 10), 24,738 parameters.

    Stem 3x3/2 convolution with 16 channels (no max pooling), then two stages of one bottleneck block each: a
    convolutional stage of width 16 at 16x16 and a lambda stage of width 32 (local lambda convolution r=7, k=8, u=1,
    h=4) that computes at 16x16 and average-pools to 8x8. Trains in a few seconds on a CPU. Any :func:`lambda_resnet`
    keyword can be overridden.
    """
    defaults: dict[str, Any] = {
        "depths": (1, 1),
        "widths": (16, 32),
        "stem_width": 16,
        "lambda_stages": (1,),
        "key_depth": 8,
        "intra_depth": 1,
        "heads": 4,
        "receptive_kernel": 7,
        "stem_kernel": 3,
        "stem_stride": 2,
        "stem_pool": False,
        "name": "tiny_lambda_resnet",
    }
    defaults.update(kwargs)
    return lambda_resnet(input_shape, num_classes, **defaults)


# -- demo ----------------------------------------------------------------------------------------------------------


def build_demo_model(seed: int = 0, *, learning_rate: float = 1e-2, **kwargs: Any) -> keras.Model:
    """The tiny LambdaResNet (:func:`tiny_lambda_resnet`, ``**kwargs`` passed on), compiled for the demo task.

    Weights are initialised from ``seed`` (``keras.utils.set_random_seed``, which also seeds Python and NumPy's global
    generators). Compiled with Adam, sparse categorical cross-entropy on the softmax output and an accuracy metric.
    Input (b, 32, 32, 3) (or (b, 3, 32, 32) with ``data_format="channels_first"``), output (b, 10) probabilities.
    """
    keras.utils.set_random_seed(seed)
    model = tiny_lambda_resnet(**kwargs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model


def make_demo_data(
    n: int, seed: int, *, image_size: int = 32, data_format: str = "channels_last"
) -> tuple[np.ndarray, np.ndarray]:
    """Generated images for the demo classification task, deterministic in ``seed``.

    Each image is dim uniform noise in [0, 0.25) with one bar (3 pixels thick, image_size/4 to image_size/2 long)
    anywhere in it; the class is the bar's colour (5 colours) and orientation (horizontal or vertical):
    ``label = 2 * colour + orientation``, see :data:`DEMO_CLASS_NAMES`. The task is translation invariant, which suits
    a convolutional network ending in global average pooling.

    Returns:
        ``x`` float32 of shape (n, S, S, 3) (channels first: (n, 3, S, S)), values in [0, 1]; ``y`` int32 of shape (n,)
        with labels in [0, 10).
    """
    n = _check_positive("n", n)
    size = _check_positive("image_size", image_size)
    if size < 8:
        raise ValueError(f"`image_size` must be at least 8, got {image_size}.")
    if data_format not in _DATA_FORMATS:
        raise ValueError(f"`data_format` must be one of {_DATA_FORMATS}, got {data_format!r}.")
    rng = np.random.default_rng(seed)
    palette = np.asarray(list(_DEMO_COLOURS.values()), dtype=np.float32)  # 5, 3
    colour = rng.integers(0, len(palette), n)
    vertical = rng.integers(0, 2, n)
    thickness = 3
    length = rng.integers(size // 4, size // 2 + 1, n)
    height = np.where(vertical == 1, length, thickness)
    width = np.where(vertical == 1, thickness, length)
    top = rng.integers(0, size - height + 1)
    left = rng.integers(0, size - width + 1)
    grid = np.arange(size)
    rows = (grid[None, :] >= top[:, None]) & (grid[None, :] < (top + height)[:, None])  # n, S
    cols = (grid[None, :] >= left[:, None]) & (grid[None, :] < (left + width)[:, None])  # n, S
    mask = (rows[:, :, None] & cols[:, None, :]).astype(np.float32)  # n, S, S
    brightness = rng.uniform(0.7, 1.0, n).astype(np.float32)
    bar = palette[colour] * brightness[:, None]  # n, 3
    noise = rng.uniform(0.0, 0.25, (n, size, size, 3)).astype(np.float32)
    x = noise * (1.0 - mask[..., None]) + mask[..., None] * bar[:, None, None, :]
    if data_format == "channels_first":
        x = np.transpose(x, (0, 3, 1, 2))
    y = (2 * colour + vertical).astype(np.int32)
    return np.ascontiguousarray(x, dtype=np.float32), y


def _model_data_format(model: keras.Model) -> str:
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            return layer.data_format
    return "channels_last"


def train_demo_model(
    model: keras.Model, steps: int = DEMO_TRAIN_STEPS, seed: int = 0, *, batch_size: int = 32, eval_size: int = 256
) -> dict[str, Any]:
    """Train a compiled demo model for ``steps`` steps on fresh demo data and evaluate it on held-out data.

    The image size and data format are read from the model. Training uses ``steps * batch_size`` images generated
    from ``seed`` (each seen once), one step of the model's optimizer on its loss per batch; evaluation uses
    ``eval_size`` images generated from a different seed.

    On TensorFlow the step is a plain ``tf.function`` (gradient tape + ``optimizer.apply``, no autograph) instead of
    ``train_on_batch``: Keras' own train function takes ~10 s of CPU to trace before the first step, this one ~5 s,
    which is most of the difference on ``lambda-export demo``'s budget. The held-out images run in one eager call (no
    second function to trace). Other backends use ``train_on_batch`` and ``evaluate``.

    Returns:
        A history dict: per-step ``"loss"`` and ``"accuracy"`` (lists of floats, one per step, for that batch alone),
        ``"val_loss"`` and ``"val_accuracy"`` (floats, on the held-out images in inference mode) and ``"seconds"``
        (wall time of training and evaluation, including graph tracing).
    """
    steps = _check_positive("steps", steps)
    batch_size = _check_positive("batch_size", batch_size)
    eval_size = _check_positive("eval_size", eval_size)
    data_format = _model_data_format(model)
    shape = model.input_shape
    size = shape[1] if data_format == "channels_last" else shape[2]
    if size is None:
        size = 32
    x, y = make_demo_data(steps * batch_size, seed, image_size=size, data_format=data_format)
    x_val, y_val = make_demo_data(eval_size, seed + 1_000_003, image_size=size, data_format=data_format)
    history: dict[str, Any] = {}
    start = time.perf_counter()
    if keras.backend.backend() != "tensorflow":
        for step in range(steps):
            batch = slice(step * batch_size, (step + 1) * batch_size)
            logs = model.train_on_batch(x[batch], y[batch], return_dict=True)
            for key, value in logs.items():
                history.setdefault(key, []).append(float(value))
        evaluation = model.evaluate(x_val, y_val, batch_size=batch_size, verbose=0, return_dict=True)
        for key, value in evaluation.items():
            history[f"val_{key}"] = float(value)
        history["seconds"] = time.perf_counter() - start
        return history
    train_step = _tensorflow_train_step(model)
    for step in range(steps):
        batch = slice(step * batch_size, (step + 1) * batch_size)
        loss, accuracy = train_step(x[batch], y[batch])
        history.setdefault("loss", []).append(float(loss))
        history.setdefault("accuracy", []).append(float(accuracy))
    probabilities = model(x_val, training=False)
    history["val_loss"] = float(keras.losses.get(model.loss)(y_val, probabilities))
    history["val_accuracy"] = float(np.mean(np.argmax(np.asarray(probabilities), axis=-1) == y_val))
    history["seconds"] = time.perf_counter() - start
    return history


def _tensorflow_train_step(model: keras.Model) -> Any:
    """One training step of a compiled model on a batch, as a ``tf.function``: returns (loss, batch accuracy)."""
    import tensorflow as tf

    if model.optimizer is None or model.loss is None:
        raise ValueError("train_demo_model needs a compiled model (build_demo_model compiles it).")
    optimizer, loss_fn = model.optimizer, keras.losses.get(model.loss)
    optimizer.build(model.trainable_variables)

    @tf.function(autograph=False, reduce_retracing=True)
    def train_step(images: Any, labels: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            loss = loss_fn(labels, probabilities)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
        return loss, tf.reduce_mean(tf.cast(tf.equal(predicted, labels), tf.float32))

    return train_step
