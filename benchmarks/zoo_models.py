"""The conformance zoo: public Keras architectures and models built from common layers, with random weights.

Every entry of :data:`ZOO` is a :class:`ZooModel`: a name, a builder (called after ``keras.utils.set_random_seed`` with
the entry's fixed seed, so that a model is the same on every run), the family it belongs to, whether it is in the CI
subset (``tests/conformance/test_zoo.py``) or only in the full run (``make zoo``, ``benchmarks/zoo.py``), and what its
inputs need (integer ids below the vocabulary, padded sequences for masking, images in [0, 255]).

* ``applications``: every ``keras.applications`` family with ``weights=None``, ``classes=10``, logits
  (``classifier_activation=None``: softmax probabilities would hide errors) and the smallest input it accepts (32x32;
  75x75 for the Inception models, 71x71 for Xception); images in [0, 255] for the families that preprocess inside
  the model (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3, RegNet), N(0, 1) values for the others. Keras 3 has no RegNet: :func:`regnet` follows tf.keras 2.x's
  ``keras/applications/regnet.py`` (RegNetX002 / RegNetY002: same stages, widths, group width, blocks).
* ``layers``: small models built from common layers (attention, normalisation, recurrent, convolution variants,
  preprocessing inside the model, activations, embeddings, several inputs).
* ``lambda``: this project's LambdaResNets and lambda layers combined with those blocks.

:func:`build_model` builds an entry and randomises the normalisation layers (batch-norm statistics and the scales and
offsets of batch/layer/group normalisation) so that the graph rewrites that fold them meet non-trivial values;
:func:`make_inputs` draws the entry's inputs. Entries that ``lambda-export`` can only load with extra code name it in
``imports`` (passed as ``--import``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TOLERANCE",
    "VOCABULARY",
    "ZOO",
    "ZooModel",
    "build_model",
    "by_name",
    "call_model",
    "ci_subset",
    "cli_arguments",
    "float64_outputs",
    "make_inputs",
    "randomize_normalization",
    "scale_head",
]

HERE = Path(__file__).resolve().parent
ZOO_LAYERS = str(HERE / "zoo_layers.py")
TOLERANCE = 1e-4
"""Max |onnx − keras| every model must meet, in ONNX Runtime CPU and OpenVINO (f32 pinned)."""
VOCABULARY = 128
"""Embedding vocabulary of the zoo's token models: ≥ the CLI's default integer range [0, 100), so that the CLI's own
random ids are valid too."""


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo.

    Attributes:
        name: unique, also the file stem.
        family: ``"applications"``, ``"layers"`` or ``"lambda"``.
        build: returns a fresh ``keras.Model``; call :func:`build_model` (it seeds first).
        ci: in the CI subset (``tests/conformance/test_zoo.py``); every entry is in the full run.
        inputs: ``"normal"`` (N(0, 1) floats), ``"image"`` (uniform floats in [0, 255], for models that rescale
            inside); integer inputs always get ids in [0, VOCABULARY) (0 only as padding when ``padded``).
        padded: sequences are padded: row i of a batch keeps its first T·(1 − i/(2·batch)) steps (at least one) and
            the rest is zeros (id 0 for integer inputs), which the model masks (``Masking``, ``mask_zero=True``).
            The CLI then gets the same inputs through ``--inputs`` (its own random inputs would not be padded).
        imports: files ``lambda-export`` must ``--import`` to load the model.
        cli_inputs: give the CLI the zoo's inputs (``--inputs``) instead of its own random draws (N(0, 1) and
            U(0, 1) at batch 1 and 4), for a model that only behaves on the distribution it was calibrated on.
        randomize: randomise the normalisation layers (see :func:`randomize_normalization`).
        note: what the entry covers or what is known about it.
    """

    name: str
    family: str
    build: Callable[[], Any]
    ci: bool = False
    inputs: str = "normal"
    padded: bool = False
    imports: tuple[str, ...] = ()
    cli_inputs: bool = False
    randomize: bool = True
    note: str = ""

    @property
    def seed(self) -> int:
        """The entry's fixed seed (CRC-32 of its name): weights and inputs do not depend on the registry's order."""
        return zlib.crc32(self.name.encode()) % (2**31)

    @property
    def needs_inputs(self) -> bool:
        """True when the CLI must be given the inputs (``--inputs``): its own random draws would not fit."""
        return self.padded or self.cli_inputs


def cli_arguments(entry: ZooModel, inputs_npz: str | Path | None = None) -> list[str]:
    """The extra ``lambda-export`` arguments an entry needs (``--import``, and ``--inputs`` when it needs them)."""
    args: list[str] = []
    for module in entry.imports:
        args += ["--import", module]
    if entry.needs_inputs:
        if inputs_npz is None:
            raise ValueError(f"{entry.name}: the CLI needs --inputs")
        args += ["--inputs", str(inputs_npz)]
    return args


def randomize_normalization(model: Any, seed: int, calibration: list[np.ndarray] | None = None) -> None:
    """Give the normalisation layers non-trivial values, with activations of order 1 all the way through.

    Keras' initial values (moving mean 0, variance 1, gamma 1, beta 0) make batch normalisation an identity up to
    epsilon, which would hide a wrong fold; zero-initialised residual scales (``zero_init_residual``) would switch
    whole blocks off; and a deep network whose moving variances stay 1 while its activations grow overflows (a random
    LambdaResNet-50 gives NaN). So: the scales (gamma) of batch, layer and group normalisation become U(0.5, 1.5) and
    their offsets (beta) N(0, 0.1²); then, with ``calibration`` inputs, one forward pass in training mode with
    momentum 0 sets every batch norm's moving statistics to the batch statistics it sees (each layer after the
    previous ones are normalised). The checks run on other inputs, so the statistics are plausible but not exact.
    (Perturbing them further is not neutral: a mean offset of 5 % of a standard deviation in a lambda layer's values
    is summed over the r x r positions of its lambda convolution, and a LambdaResNet-26 then overflows.) Embedding
    tables become N(0, 1) (Keras draws them from U(−0.05, 0.05), which leaves outputs of order 1e-2)."""
    import keras

    rng = np.random.default_rng(seed)
    for variable in model.weights:
        leaf = variable.path.rsplit("/", 1)[-1]
        shape = tuple(variable.shape)
        if leaf == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "beta":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "embeddings":
            value = rng.normal(0.0, 1.0, shape)
        else:
            continue
        variable.assign(value.astype(variable.dtype))
    norms = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if calibration is not None and norms:
        momenta = [layer.momentum for layer in norms]
        for layer in norms:
            layer.momentum = 0.0
        try:
            call_model(model, calibration, training=True)
        finally:
            for layer, momentum in zip(norms, momenta, strict=True):
                layer.momentum = momentum


def scale_head(model: Any, calibration: list[np.ndarray]) -> float:
    """Divide the kernel and bias of a single-output model's last linear layer (found walking back from the output
    through layers without weights: Flatten, Reshape, Dropout, linear Activation) by the standard deviation of the
    outputs on ``calibration`` when it is over 1 or under 0.05; returns the factor (1.0 when nothing is scaled).

    A random deep network's logits can reach 1e2 (EfficientNetV2B0), where float32 rounding alone — the same in plain
    tf2onnx — exceeds the zoo's absolute tolerance of 1e-4, or stay near 1e-4 (VGG16: no batch norms to calibrate),
    where any error passes it; with logits of order 1 the absolute tolerance measures the conversion.
    """
    import keras

    if len(model.outputs) != 1:
        return 1.0
    layer = model.outputs[0]._keras_history.operation
    for _ in range(8):
        if getattr(layer, "kernel", None) is not None:
            break
        if isinstance(layer, keras.layers.Activation) and layer.activation is not keras.activations.linear:
            return 1.0
        if layer.weights or len(layer._inbound_nodes) != 1 or len(layer._inbound_nodes[0].input_tensors) != 1:
            return 1.0
        layer = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
    else:
        return 1.0
    if getattr(layer, "activation", keras.activations.linear) is not keras.activations.linear:
        return 1.0
    outputs = np.asarray(call_model(model, calibration)[0])
    factor = float(outputs.std())
    if not np.isfinite(factor) or factor == 0.0 or 0.05 <= factor <= 1.0:
        return 1.0
    layer.kernel.assign(np.asarray(layer.kernel) / factor)
    if getattr(layer, "bias", None) is not None:
        layer.bias.assign(np.asarray(layer.bias) / factor)
    return factor


def call_model(model: Any, arrays: list[np.ndarray] | dict[str, np.ndarray], training: bool = False) -> list[Any]:
    """``model``'s outputs (a flat list) on ``arrays`` (in ``model.inputs`` order, or a dict in that order), passed in
    the structure the model was built with (a bare tensor, a list), which keeps Keras from warning."""
    import keras

    arrays = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
    structure = getattr(model, "_inputs_struct", None)
    inputs = keras.tree.pack_sequence_as(structure, arrays) if structure is not None else arrays
    return keras.tree.flatten(model(inputs, training=training))


def float64_outputs(entry: ZooModel, model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The float64 truth: ``entry`` rebuilt under the ``float64`` dtype policy with ``model``'s weights (exactly
    widened), run on ``feeds``. TensorFlow's float32 outputs differ from it by float32's own rounding, which for a deep
    network with random weights can exceed 1e-4 (ResNet50: 1.4e-4)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        keras.utils.set_random_seed(entry.seed)
        clone = entry.build()
        weights = model.get_weights()
        if len(weights) != len(clone.weights):
            raise ValueError(f"the float64 clone has {len(clone.weights)} weights, the model {len(weights)}")
        for variable, value in zip(clone.weights, weights, strict=True):
            variable.assign(value.astype(np.dtype(str(variable.dtype))))
        wide = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}
        return [np.asarray(y, dtype=np.float64) for y in call_model(clone, wide)]
    finally:
        keras.config.set_dtype_policy(previous)


def _all_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, nested models and the sub-layers of custom layers included."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def build_model(entry: ZooModel) -> Any:
    """Build ``entry`` from its seed (``keras.utils.set_random_seed``) and randomise its normalisation layers (and
    embeddings) with :func:`randomize_normalization`, calibrated on 32 inputs from :func:`make_inputs`, and scales the
    last linear layer so that the outputs have a standard deviation between 0.05 and 1 (:func:`scale_head`)."""
    import keras

    import lambda_layers  # noqa: F401  (registers the lambda layers)

    keras.utils.set_random_seed(entry.seed)
    model = entry.build()
    if entry.randomize:
        calibration = list(make_inputs(entry, model, batch=32, seed=entry.seed + 1).values())
        randomize_normalization(model, entry.seed + 1, calibration)
        scale_head(model, calibration)
    return model


def make_inputs(entry: ZooModel, model: Any, batch: int = 2, seed: int | None = None) -> dict[str, np.ndarray]:
    """Inputs for ``model`` (keys: its Keras input names, which are the ONNX input names), deterministic in ``seed``
    (default: the entry's seed)."""
    rng = np.random.default_rng(entry.seed + 7 if seed is None else seed)
    feeds: dict[str, np.ndarray] = {}
    for tensor in model.inputs:
        shape = tuple(batch if d is None else int(d) for d in tensor.shape)
        dtype = np.dtype(str(tensor.dtype))
        if np.issubdtype(dtype, np.integer):
            array = rng.integers(1 if entry.padded else 0, VOCABULARY, shape).astype(dtype)
        elif entry.inputs == "image":
            array = rng.uniform(0.0, 255.0, shape).astype(dtype)
        else:
            array = rng.standard_normal(shape).astype(dtype)
        if entry.padded and len(shape) >= 2:
            steps = shape[1]
            for row in range(shape[0]):
                keep = max(1, int(steps * (1.0 - row / (2.0 * shape[0]))))
                array[row, keep:] = 0
        feeds[tensor.name] = np.ascontiguousarray(array)
    return feeds


# -- keras.applications ------------------------------------------------------------------------------------------------


def _application(function: str, size: int, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import keras

        make = getattr(keras.applications, function)
        images = keras.Input((size, size, 3), name="images")  # a stable input name (unnamed: "keras_tensor_N")
        return make(
            weights=None,
            input_tensor=images,
            input_shape=(size, size, 3),
            classes=10,
            classifier_activation=None,
            **kwargs,
        )

    build.__name__ = function
    return build


def regnet(name: str, depths: tuple[int, ...], widths: tuple[int, ...], group_width: int, block: str) -> Any:
    """RegNetX / RegNetY as tf.keras 2.x builds them (``keras/applications/regnet.py``; Keras 3 has no RegNet):
    preprocessing (Rescaling 1/255, ImageNet Normalization), stem (3x3/2 conv, 32 channels, BN, ReLU), stages of X
    blocks (1x1 conv, grouped 3x3 conv with ``width // group_width`` groups, 1x1 conv, each with BN; ReLU after the
    residual sum) or Y blocks (X blocks with squeeze-and-excitation of ratio 0.25 after the 3x3), global average
    pooling and a dense head. 32x32 inputs, 10 logits."""
    import keras
    from keras import layers

    bn = {"momentum": 0.9, "epsilon": 1e-5}
    images = keras.Input((32, 32, 3), name="images")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(images)
    x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.229**2, 0.224**2, 0.225**2], name="normalize")(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(**bn, name="stem_bn")(x))
    filters_in = 32
    for stage, (depth, width) in enumerate(zip(depths, widths, strict=True)):
        for index in range(depth):
            prefix = f"s{stage}_b{index}"
            stride = 2 if index == 0 else 1
            groups = width // group_width
            if stride != 1 or filters_in != width:
                skip = layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{prefix}_skip_conv")(x)
                skip = layers.BatchNormalization(**bn, name=f"{prefix}_skip_bn")(skip)
            else:
                skip = x
            y = layers.Conv2D(width, 1, use_bias=False, name=f"{prefix}_conv1")(x)
            y = layers.ReLU(name=f"{prefix}_relu1")(layers.BatchNormalization(**bn, name=f"{prefix}_bn1")(y))
            y = layers.Conv2D(
                width, 3, strides=stride, padding="same", groups=groups, use_bias=False, name=f"{prefix}_conv2"
            )(y)
            y = layers.ReLU(name=f"{prefix}_relu2")(layers.BatchNormalization(**bn, name=f"{prefix}_bn2")(y))
            if block == "Y":
                squeeze = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_pool")(y)
                squeeze = layers.Conv2D(int(filters_in * 0.25), 1, activation="relu", name=f"{prefix}_se_reduce")(
                    squeeze
                )
                squeeze = layers.Conv2D(width, 1, activation="sigmoid", name=f"{prefix}_se_expand")(squeeze)
                y = layers.Multiply(name=f"{prefix}_se")([y, squeeze])
            y = layers.Conv2D(width, 1, use_bias=False, name=f"{prefix}_conv3")(y)
            y = layers.BatchNormalization(**bn, name=f"{prefix}_bn3")(y)
            x = layers.ReLU(name=f"{prefix}_out")(layers.Add(name=f"{prefix}_add")([y, skip]))
            filters_in = width
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(images, layers.Dense(10, name="logits")(x), name=name)


def _regnet(name: str, block: str) -> Callable[[], Any]:
    def build() -> Any:
        return regnet(name, (1, 1, 4, 7), (24, 56, 152, 368), 8, block)

    build.__name__ = name
    return build


# -- models from common layers -------------------------------------------------------------------------------------


def _head(x: Any, units: int = 10) -> Any:
    from keras import layers

    return layers.Dense(units, name="logits")(x)


def _transformer_block(x: Any, activation: Any, prefix: str, causal: bool = False) -> Any:
    from keras import layers

    width = x.shape[-1]
    attention = layers.MultiHeadAttention(4, width // 4, name=f"{prefix}_mha")(x, x, use_causal_mask=causal)
    x = layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}_ln1")(layers.Add(name=f"{prefix}_add1")([x, attention]))
    hidden = layers.Dense(2 * width, activation=activation, name=f"{prefix}_ff1")(x)
    hidden = layers.Dense(width, name=f"{prefix}_ff2")(hidden)
    return layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}_ln2")(layers.Add(name=f"{prefix}_add2")([x, hidden]))


def transformer_gelu_exact() -> Any:
    """Transformer encoder block (MultiHeadAttention, LayerNormalization, exact-gelu MLP) over (16, 32) tokens."""
    import keras
    from keras import layers

    tokens = keras.Input((16, 32), name="tokens")
    x = _transformer_block(tokens, "gelu", "enc")
    return keras.Model(tokens, _head(layers.GlobalAveragePooling1D(name="pool")(x)), name="transformer_gelu_exact")


def transformer_gelu_tanh() -> Any:
    """The same block with the tanh approximation of gelu (``zoo>gelu_tanh``, needs ``--import``)."""
    import keras
    from keras import layers

    from benchmarks.zoo_layers import gelu_tanh

    tokens = keras.Input((16, 32), name="tokens")
    x = _transformer_block(tokens, gelu_tanh, "enc")
    return keras.Model(tokens, _head(layers.GlobalAveragePooling1D(name="pool")(x)), name="transformer_gelu_tanh")


def mha_causal_block() -> Any:
    """Two causal self-attention blocks (``use_causal_mask=True``, relu MLP), sequence output (16, 32)."""
    import keras

    tokens = keras.Input((16, 32), name="tokens")
    x = _transformer_block(tokens, "relu", "dec0", causal=True)
    x = _transformer_block(x, "relu", "dec1", causal=True)
    return keras.Model(tokens, x, name="mha_causal_block")


def mha_cross_attention() -> Any:
    """Cross attention: queries (8, 32) attend to a memory (12, 24) (two inputs, key_dim != value_dim)."""
    import keras
    from keras import layers

    query = keras.Input((8, 32), name="query")
    memory = keras.Input((12, 24), name="memory")
    attended = layers.MultiHeadAttention(2, 16, value_dim=8, name="cross")(query, memory)
    x = layers.LayerNormalization(name="ln")(layers.Add(name="add")([query, attended]))
    return keras.Model([query, memory], x, name="mha_cross_attention")


def transformer_embedding_masked() -> Any:
    """Token ids with padding (0) → Embedding(mask_zero=True) → attention that takes the padding mask from the
    embedding → masked average pooling."""
    import keras
    from keras import layers

    ids = keras.Input((16,), dtype="int32", name="ids")
    x = layers.Embedding(VOCABULARY, 32, mask_zero=True, name="embed")(ids)
    x = _transformer_block(x, "gelu", "enc")
    return keras.Model(ids, _head(layers.GlobalAveragePooling1D(name="pool")(x)), name="transformer_embedding_masked")


def keras_attention() -> Any:
    """``keras.layers.Attention`` (scaled dot product) and ``AdditiveAttention`` between two inputs."""
    import keras
    from keras import layers

    query = keras.Input((8, 16), name="query")
    value = keras.Input((12, 16), name="value")
    dot = layers.Attention(use_scale=True, name="dot")([query, value])
    additive = layers.AdditiveAttention(name="additive")([query, value])
    x = layers.Concatenate(name="join")([dot, additive])
    return keras.Model([query, value], _head(layers.Flatten(name="flat")(x)), name="keras_attention")


def norm_layers() -> Any:
    """LayerNormalization (last axis and over H, W, C) and GroupNormalization (4 groups) between convolutions."""
    import keras
    from keras import layers

    images = keras.Input((16, 16, 8), name="images")
    x = layers.Conv2D(16, 3, padding="same", name="conv1")(images)
    x = layers.LayerNormalization(name="ln_channels")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GroupNormalization(groups=4, name="gn")(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", name="conv3")(x)
    x = layers.LayerNormalization(axis=[1, 2, 3], name="ln_hwc")(x)
    return keras.Model(images, _head(layers.GlobalAveragePooling2D(name="pool")(x)), name="norm_layers")


def conv1d_gru() -> Any:
    """Conv1D front end, then a GRU over a fixed length (32, 8)."""
    import keras
    from keras import layers

    series = keras.Input((32, 8), name="series")
    x = layers.Conv1D(16, 3, padding="same", activation="relu", name="conv")(series)
    x = layers.GRU(16, name="gru")(x)
    return keras.Model(series, _head(x, 4), name="conv1d_gru")


def stacked_rnns() -> Any:
    """SimpleRNN → GRU (reset_after=False) → LSTM, sequences returned between them, fixed length (20, 8)."""
    import keras
    from keras import layers

    series = keras.Input((20, 8), name="series")
    x = layers.SimpleRNN(16, return_sequences=True, name="rnn")(series)
    x = layers.GRU(16, return_sequences=True, reset_after=False, name="gru_v1")(x)
    x = layers.LSTM(16, name="lstm")(x)
    return keras.Model(series, _head(x, 4), name="stacked_rnns")


def bidirectional_lstm() -> Any:
    """Bidirectional LSTM (sequences, concat) → Bidirectional GRU (sum), fixed length (20, 8)."""
    import keras
    from keras import layers

    series = keras.Input((20, 8), name="series")
    x = layers.Bidirectional(layers.LSTM(16, return_sequences=True), name="bilstm")(series)
    x = layers.Bidirectional(layers.GRU(8), merge_mode="sum", name="bigru")(x)
    return keras.Model(series, _head(x, 4), name="bidirectional_lstm")


def masked_lstm() -> Any:
    """Masking(0) → LSTM (sequences) → Bidirectional GRU over zero-padded float sequences (20, 8)."""
    import keras
    from keras import layers

    series = keras.Input((20, 8), name="series")
    x = layers.Masking(0.0, name="mask")(series)
    x = layers.LSTM(16, return_sequences=True, name="lstm")(x)
    x = layers.Bidirectional(layers.GRU(8), name="bigru")(x)
    return keras.Model(series, _head(x, 4), name="masked_lstm")


def embedding_masked_gru() -> Any:
    """Token ids padded with 0 → Embedding(mask_zero=True) → GRU → Dense."""
    import keras
    from keras import layers

    ids = keras.Input((20,), dtype="int32", name="ids")
    x = layers.Embedding(VOCABULARY, 16, mask_zero=True, name="embed")(ids)
    x = layers.GRU(16, name="gru")(x)
    return keras.Model(ids, _head(x, 4), name="embedding_masked_gru")


def embedding_pool() -> Any:
    """Integer token ids (12,) → Embedding → GlobalAveragePooling1D → Dense."""
    import keras
    from keras import layers

    ids = keras.Input((12,), dtype="int32", name="ids")
    x = layers.Embedding(VOCABULARY, 16, name="embed")(ids)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(ids, _head(x, 4), name="embedding_pool")


def upsampling_decoder() -> Any:
    """Conv2DTranspose (stride 2 same, stride 1 valid), UpSampling2D nearest and bilinear, Conv1DTranspose."""
    import keras
    from keras import layers

    code = keras.Input((4, 4, 8), name="code")
    x = layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu", name="deconv_same")(code)
    x = layers.UpSampling2D(2, interpolation="nearest", name="up_nearest")(x)
    x = layers.Conv2DTranspose(8, 3, padding="valid", name="deconv_valid")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(x)
    image = layers.Conv2D(3, 3, padding="same", name="to_rgb")(x)
    return keras.Model(code, image, name="upsampling_decoder")


def separable_depthwise() -> Any:
    """SeparableConv2D, DepthwiseConv2D (depth multiplier 2, stride 2), SeparableConv1D, DepthwiseConv1D."""
    import keras
    from keras import layers

    images = keras.Input((16, 16, 8), name="images")
    x = layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep2d")(images)
    x = layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", name="dw2d")(x)
    x = layers.Reshape((64, 32), name="to_seq")(x)
    x = layers.SeparableConv1D(16, 3, padding="same", name="sep1d")(x)
    x = layers.DepthwiseConv1D(3, padding="valid", name="dw1d")(x)
    return keras.Model(images, _head(layers.Flatten(name="flat")(x)), name="separable_depthwise")


def rescale_normalize() -> Any:
    """Images in [0, 255] → Rescaling(1/255) → Normalization (ImageNet mean/variance) → conv net."""
    import keras
    from keras import layers

    images = keras.Input((16, 16, 3), name="images")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(images)
    x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.050, 0.051], name="normalize")(x)
    x = layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    return keras.Model(images, _head(layers.GlobalAveragePooling2D(name="pool")(x)), name="rescale_normalize")


def resizing_in_model() -> Any:
    """Resizing bilinear (40x48 → 32x32), then nearest (→ 20x20), Rescaling with offset, Normalization adapted in
    the layer (per-channel mean/variance) inside the model."""
    import keras
    from keras import layers

    images = keras.Input((40, 48, 3), name="images")
    x = layers.Resizing(32, 32, interpolation="bilinear", name="resize_bilinear")(images)
    x = layers.Resizing(20, 20, interpolation="nearest", name="resize_nearest")(x)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    x = layers.Normalization(mean=[0.1, -0.2, 0.05], variance=[0.5, 0.8, 1.2], name="normalize")(x)
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(x)
    return keras.Model(images, _head(layers.GlobalAveragePooling2D(name="pool")(x)), name="resizing_in_model")


def _activation_model(name: str, activation: Any) -> Callable[[], Any]:
    def build() -> Any:
        import keras
        from keras import layers

        def act(index: int) -> Any:
            if activation == "prelu":
                return layers.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.05, 0.5), name=f"act{index}")
            if activation == "elu":
                return layers.ELU(alpha=0.7, name=f"act{index}")
            if activation == "leaky_relu":
                return layers.LeakyReLU(negative_slope=0.2, name=f"act{index}")
            if activation == "gelu_tanh":
                from benchmarks.zoo_layers import gelu_tanh

                return layers.Activation(gelu_tanh, name=f"act{index}")
            return layers.Activation(activation, name=f"act{index}")

        features = keras.Input((24,), name="features")
        x = act(0)(layers.Dense(32, name="dense0")(features))
        x = act(1)(layers.Dense(32, name="dense1")(x))
        return keras.Model(features, _head(x, 8), name=name)

    build.__name__ = name
    return build


def multi_input() -> Any:
    """Three inputs (image, float vector, integer category) and two outputs (logits, a score)."""
    import keras
    from keras import layers

    image = keras.Input((16, 16, 3), name="image")
    meta = keras.Input((5,), name="meta")
    category = keras.Input((1,), dtype="int32", name="category")
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(image)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    m = layers.Dense(8, activation="tanh", name="meta_dense")(meta)
    c = layers.Flatten(name="category_flat")(layers.Embedding(VOCABULARY, 4, name="category_embed")(category))
    joined = layers.Concatenate(name="join")([x, m, c])
    logits = layers.Dense(3, name="logits")(joined)
    score = layers.Dense(1, activation="sigmoid", name="score")(joined)
    return keras.Model([image, meta, category], [logits, score], name="multi_input")


# -- the project's lambda layers -------------------------------------------------------------------------------------


def lambda_resnet_tiny() -> Any:
    """``tiny_lambda_resnet`` (32x32, local lambda convolution r=7 in the second stage), logits."""
    from lambda_layers import models

    return models.tiny_lambda_resnet(classifier_activation=None)


def lambda_demo() -> Any:
    """The demo model (``build_demo_model``) trained 8 steps, softmax probabilities (what ``make demo`` exports)."""
    from lambda_layers import models

    model = models.build_demo_model(seed=0)
    models.train_demo_model(model, steps=8, seed=0, eval_size=32)
    return model


# 64x64: the smallest input that leaves more than one position in c5 (32x32 gives 1x1 maps there, where the key
# softmax runs over a single position and the lambda layer degenerates)
def lambda_resnet26_small() -> Any:
    """LambdaResNet-26 (r=23 local lambda convolutions in c4, c5) on 64x64 inputs (4x4 maps in c4, 2x2 in c5)."""
    from lambda_layers import models

    return models.lambda_resnet26((64, 64, 3), 10, classifier_activation=None)


def lambda_resnet26_relative() -> Any:
    """LambdaResNet-26 with global relative position embeddings (``receptive_kernel=None``), 64x64."""
    from lambda_layers import models

    return models.lambda_resnet26((64, 64, 3), 10, receptive_kernel=None, classifier_activation=None)


def lambda_resnet50_small() -> Any:
    """LambdaResNet-50 (lambda layers in c4, c5), 64x64."""
    from lambda_layers import models

    return models.lambda_resnet50((64, 64, 3), 10, classifier_activation=None)


def lambda_transformer() -> Any:
    """A transformer block whose attention is a LambdaNetwork1Dense (global relative), exact-gelu MLP, LayerNorm,
    followed by a MultiHeadAttention block."""
    import keras
    from keras import layers

    from lambda_layers import LambdaNetwork1Dense

    tokens = keras.Input((16, 32), name="tokens")
    lam = LambdaNetwork1Dense(32, key_depth=8, heads=4, relative=True, name="lam")(tokens)
    x = layers.LayerNormalization(name="ln1")(layers.Add(name="add1")([tokens, lam]))
    hidden = layers.Dense(64, activation="gelu", name="ff1")(x)
    x = layers.LayerNormalization(name="ln2")(layers.Add(name="add2")([x, layers.Dense(32, name="ff2")(hidden)]))
    x = _transformer_block(x, "gelu", "mha")
    return keras.Model(tokens, _head(layers.GlobalAveragePooling1D(name="pool")(x)), name="lambda_transformer")


def lambda_mbconv() -> Any:
    """EfficientNet-style MBConv blocks (expand 1x1, swish, depthwise 3x3, squeeze-excitation, project) with a
    LambdaNetwork2DConv (r=5) in place of the second block's depthwise convolution; hard_swish and GroupNorm."""
    import keras
    from keras import layers

    from lambda_layers import LambdaNetwork2DConv

    images = keras.Input((16, 16, 3), name="images")
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(images)
    x = layers.Activation("swish", name="stem_act")(layers.BatchNormalization(name="stem_bn")(x))
    for index, use_lambda in enumerate((False, True)):
        prefix = f"mb{index}"
        y = layers.Conv2D(64, 1, use_bias=False, name=f"{prefix}_expand")(x)
        y = layers.Activation("swish", name=f"{prefix}_expand_act")(layers.BatchNormalization(name=f"{prefix}_bn1")(y))
        if use_lambda:
            y = LambdaNetwork2DConv(64, key_depth=8, heads=4, receptive_kernel=5, name=f"{prefix}_lambda")(y)
            y = layers.GroupNormalization(groups=8, name=f"{prefix}_gn")(y)
        else:
            y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{prefix}_dw")(y)
            y = layers.BatchNormalization(name=f"{prefix}_bn2")(y)
        y = layers.Activation("hard_swish", name=f"{prefix}_act")(y)
        squeeze = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_pool")(y)
        squeeze = layers.Conv2D(8, 1, activation="swish", name=f"{prefix}_se_reduce")(squeeze)
        squeeze = layers.Conv2D(64, 1, activation="sigmoid", name=f"{prefix}_se_expand")(squeeze)
        y = layers.Multiply(name=f"{prefix}_se")([y, squeeze])
        y = layers.Conv2D(16, 1, use_bias=False, name=f"{prefix}_project")(y)
        y = layers.BatchNormalization(name=f"{prefix}_bn3")(y)
        x = layers.Add(name=f"{prefix}_add")([x, y])
    return keras.Model(images, _head(layers.GlobalAveragePooling2D(name="pool")(x)), name="lambda_mbconv")


def lambda_sequence_rnn() -> Any:
    """Token ids → Embedding → LambdaNetwork1DConv (local r=5) → Bidirectional LSTM → LambdaNetwork1Dense (content
    only) → GRU → Dense."""
    import keras
    from keras import layers

    from lambda_layers import LambdaNetwork1DConv, LambdaNetwork1Dense

    ids = keras.Input((16,), dtype="int32", name="ids")
    x = layers.Embedding(VOCABULARY, 16, name="embed")(ids)
    x = LambdaNetwork1DConv(16, key_depth=4, heads=4, receptive_kernel=5, name="lam_local")(x)
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True), name="bilstm")(x)
    x = LambdaNetwork1Dense(16, key_depth=4, heads=2, content_only=True, name="lam_content")(x)
    x = layers.GRU(16, name="gru")(x)
    return keras.Model(ids, _head(x, 4), name="lambda_sequence_rnn")


def lambda_unet() -> Any:
    """Global absolute-position LambdaNetwork2DConv (size 64 on 8x8) with u=4, LayerNorm, Conv2DTranspose,
    UpSampling2D, SeparableConv2D and a skip connection: a small U-Net that outputs an image."""
    import keras
    from keras import layers

    from lambda_layers import LambdaNetwork2DConv

    images = keras.Input((16, 16, 3), name="images")
    skip = layers.Conv2D(16, 3, padding="same", activation="relu", name="enc")(images)
    x = layers.MaxPooling2D(2, name="down")(skip)
    x = LambdaNetwork2DConv(16, key_depth=4, intra_depth=4, heads=4, size=64, name="lam_global")(x)
    x = layers.LayerNormalization(name="ln")(x)
    x = layers.Conv2DTranspose(16, 3, strides=2, padding="same", name="deconv")(x)
    x = layers.Concatenate(name="skip")([x, skip])
    x = layers.SeparableConv2D(8, 3, padding="same", activation="elu", name="sep")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="up")(x)
    return keras.Model(images, layers.Conv2D(3, 1, name="to_rgb")(x), name="lambda_unet")


# -- the registry ----------------------------------------------------------------------------------------------------


def _applications() -> list[ZooModel]:
    # ConvNeXtBase at 64x64: the zoo's largest model (88M parameters), the conversion-time case of issue 25
    sizes = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71, "ConvNeXtBase": 64}
    # Families with their preprocessing inside the model take images in [0, 255]; the others expect what their
    # `preprocess_input` gives (roughly zero-mean values of order 1): raw [0, 255] pixels there would make the first
    # batch norm subtract a mean ~100x the spread, and the cancellation alone costs ~1e-4 in float32 (in TensorFlow
    # against itself as much as against any converter).
    preprocessing_inside = ("EfficientNet", "ConvNeXt", "MobileNetV3")
    ci = {"EfficientNetB0", "MobileNetV3Small", "ConvNeXtTiny"}
    notes = {
        "MobileNetV3Small": "with Keras' initial batch-norm statistics its logits are ~1e-11 (the default softmax "
        "head gives the constant 1/classes); calibrated batch norms give logits of order 1",
        "ConvNeXtTiny": "depthwise Conv2D(groups=C): Keras 3 runs grouped convolutions on the CPU through XLA",
    }
    names = [
        "ResNet50",
        "ResNet101",
        "ResNet152",
        "ResNet50V2",
        "ResNet101V2",
        "ResNet152V2",
        "MobileNet",
        "MobileNetV2",
        "MobileNetV3Small",
        "MobileNetV3Large",
        "EfficientNetB0",
        "EfficientNetB1",
        "EfficientNetB2",
        "EfficientNetB3",
        "EfficientNetV2B0",
        "EfficientNetV2B1",
        "EfficientNetV2B2",
        "EfficientNetV2B3",
        "EfficientNetV2S",
        "ConvNeXtTiny",
        "ConvNeXtSmall",
        "ConvNeXtBase",
        "DenseNet121",
        "DenseNet169",
        "DenseNet201",
        "InceptionV3",
        "InceptionResNetV2",
        "Xception",
        "NASNetMobile",
        "VGG16",
        "VGG19",
    ]
    entries = [
        ZooModel(
            name,
            "applications",
            _application(name, sizes.get(name, 32)),
            ci=name in ci,
            inputs="image" if name.startswith(preprocessing_inside) else "normal",
            note=notes.get(name, ""),
        )
        for name in names
    ]
    grouped = "grouped Conv2D (groups > 1): Keras 3 runs it on the CPU through XLA; tf.keras 2.x architecture"
    entries.append(ZooModel("RegNetX002", "applications", _regnet("RegNetX002", "X"), inputs="image", note=grouped))
    entries.append(ZooModel("RegNetY002", "applications", _regnet("RegNetY002", "Y"), inputs="image", note=grouped))
    return entries


def _layer_models() -> list[ZooModel]:
    tanh = (ZOO_LAYERS,)
    entries = [
        ZooModel("transformer_gelu_exact", "layers", transformer_gelu_exact, ci=True),
        ZooModel("transformer_gelu_tanh", "layers", transformer_gelu_tanh, imports=tanh),
        ZooModel("mha_causal_block", "layers", mha_causal_block, ci=True),
        ZooModel("mha_cross_attention", "layers", mha_cross_attention),
        ZooModel("transformer_embedding_masked", "layers", transformer_embedding_masked, padded=True),
        ZooModel("keras_attention", "layers", keras_attention),
        ZooModel("norm_layers", "layers", norm_layers),
        ZooModel("conv1d_gru", "layers", conv1d_gru, ci=True),
        ZooModel("stacked_rnns", "layers", stacked_rnns),
        ZooModel("bidirectional_lstm", "layers", bidirectional_lstm),
        ZooModel("masked_lstm", "layers", masked_lstm, padded=True),
        ZooModel("embedding_masked_gru", "layers", embedding_masked_gru, padded=True),
        ZooModel("embedding_pool", "layers", embedding_pool, ci=True),
        ZooModel("upsampling_decoder", "layers", upsampling_decoder),
        ZooModel("separable_depthwise", "layers", separable_depthwise),
        ZooModel("rescale_normalize", "layers", rescale_normalize, ci=True, inputs="image"),
        ZooModel("resizing_in_model", "layers", resizing_in_model, inputs="image"),
        ZooModel("multi_input", "layers", multi_input, ci=True),
    ]
    activations = [
        "prelu",
        "elu",
        "selu",
        "swish",
        "hard_swish",
        "softplus",
        "mish",
        "gelu",
        "gelu_tanh",
        "leaky_relu",
        "relu6",
        "hard_sigmoid",
    ]
    for activation in activations:
        name = f"act_{activation}"
        imports = tanh if activation == "gelu_tanh" else ()
        entries.append(ZooModel(name, "layers", _activation_model(name, activation), imports=imports))
    return entries


def _lambda_models() -> list[ZooModel]:
    deep = (
        "random weights, batch norms calibrated on N(0, 1) inputs: on other inputs (the CLI's U(0, 1) draws) the "
        "stack of lambda layers amplifies the offsets until TensorFlow itself gives NaN, so the CLI gets the zoo's "
        "inputs (--inputs)"
    )
    return [
        ZooModel("lambda_resnet_tiny", "lambda", lambda_resnet_tiny, ci=True),
        ZooModel("lambda_demo", "lambda", lambda_demo, randomize=False, note="trained 8 steps; softmax output"),
        ZooModel("lambda_resnet26_small", "lambda", lambda_resnet26_small, cli_inputs=True, note=deep),
        ZooModel("lambda_resnet26_relative", "lambda", lambda_resnet26_relative, cli_inputs=True, note=deep),
        ZooModel("lambda_resnet50_small", "lambda", lambda_resnet50_small, cli_inputs=True, note=deep),
        ZooModel("lambda_transformer", "lambda", lambda_transformer),
        ZooModel("lambda_mbconv", "lambda", lambda_mbconv),
        ZooModel("lambda_sequence_rnn", "lambda", lambda_sequence_rnn),
        ZooModel("lambda_unet", "lambda", lambda_unet),
    ]


ZOO: list[ZooModel] = [*_applications(), *_layer_models(), *_lambda_models()]
"""Every model, in the order of ZOO.md."""

if len({entry.name for entry in ZOO}) != len(ZOO):  # pragma: no cover
    raise RuntimeError("zoo entry names must be unique")


def by_name(name: str) -> ZooModel:
    """The entry called ``name``."""
    for entry in ZOO:
        if entry.name == name:
            return entry
    raise KeyError(f"no zoo model {name!r}")


def ci_subset() -> list[ZooModel]:
    """The entries of the CI subset (``tests/conformance/test_zoo.py``)."""
    return [entry for entry in ZOO if entry.ci]
