"""Tests of the lambda layers against the paper's equations and of their Keras behaviour.

The numerical oracle is :mod:`tests.reference`, a NumPy/einsum implementation written independently of the layer code.
Shapes are kept tiny (6x5 images, T=7, c=6) so that the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import reference_forward  # tests/layers/reference.py (pytest puts each test folder on sys.path)

import lambda_layers
from lambda_layers import LambdaNetwork1DConv, LambdaNetwork1Dense, LambdaNetwork2DConv

CLASSES = [LambdaNetwork2DConv, LambdaNetwork1DConv, LambdaNetwork1Dense]
CLASS_IDS = ["2dconv", "1dconv", "1ddense"]
MODES = ["absolute", "relative", "local", "content"]
DATA_FORMATS = ["channels_last", "channels_first"]
CHANNELS = 6
SPATIAL = {2: (6, 5), 1: (7,)}
KERNEL_OUT = 8
KEY_DEPTH = 4

# float32 layer vs float64 reference. Each output accumulates, in float32, sums over the m context positions (times u)
# for every one of the n queries (the position lambdas are n*m*u products per output channel), plus the softmax and
# the k-contraction; with outputs up to ~65 here the measured worst error is ~1.4e-5 (float32 eps 6e-8 times the
# output scale times the accumulation depth). 1e-4 absolute leaves margin for BLAS summation order while any wrong
# index, layout or normalisation gives errors of order 1.
ATOL = 1e-4


@pytest.fixture(autouse=True)
def _seed() -> None:
    keras.utils.set_random_seed(1234)


def rank_of(cls: type) -> int:
    return 2 if cls is LambdaNetwork2DConv else 1


def mode_kwargs(cls: type, mode: str, spatial: tuple[int, ...] | None = None) -> dict[str, Any]:
    spatial = spatial or SPATIAL[rank_of(cls)]
    return {
        "absolute": {"size": math.prod(spatial)},
        "relative": {"relative": True},
        "local": {"receptive_kernel": 3},
        "content": {"content_only": True},
    }[mode]


def input_shape(cls: type, data_format: str, batch: int = 2, spatial: tuple[int, ...] | None = None) -> tuple:
    spatial = spatial or SPATIAL[rank_of(cls)]
    if data_format == "channels_last":
        return (batch, *spatial, CHANNELS)
    return (batch, CHANNELS, *spatial)


def randomize(layer: Any, rng: np.random.Generator) -> None:
    """Nonzero batch-norm statistics and affine parameters (and a nonzero position bias) so that they are tested."""
    for norm in (layer.query_norm, layer.key_norm, layer.value_norm):
        if norm is None:
            continue
        size = norm.gamma.shape[0]
        norm.gamma.assign(rng.uniform(0.5, 1.5, size).astype("float32"))
        norm.beta.assign(rng.normal(0.0, 0.5, size).astype("float32"))
        norm.moving_mean.assign(rng.normal(0.0, 0.5, size).astype("float32"))
        norm.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype("float32"))
    if layer.position_conv is not None and layer.position_bias:
        layer.position_conv.bias.assign(rng.normal(0.0, 0.5, layer.key_depth).astype("float32"))
    if layer.position_embedding is not None:
        # std 0.25 instead of the initializer's 1.0 keeps outputs O(10) (the sum over m*u ~ 100 context terms would
        # otherwise reach ~300) while the position lambda still outweighs the content lambda
        shape = tuple(layer.position_embedding.shape)
        layer.position_embedding.assign(rng.normal(0.0, 0.25, shape).astype("float32"))


def make_layer(
    cls: type,
    mode: str,
    data_format: str = "channels_last",
    intra_depth: int = 1,
    heads: int = 2,
    spatial: tuple[int, ...] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[Any, np.ndarray]:
    """A built layer with random weights and statistics, and a random input for it."""
    rng = np.random.default_rng(seed)
    layer = cls(
        kernel_out=KERNEL_OUT,
        key_depth=KEY_DEPTH,
        intra_depth=intra_depth,
        heads=heads,
        data_format=data_format,
        **mode_kwargs(cls, mode, spatial),
        **kwargs,
    )
    shape = input_shape(cls, data_format, spatial=spatial)
    layer.build(shape)
    randomize(layer, rng)
    x = rng.normal(0.0, 1.0, shape).astype("float32")
    return layer, x


def run(layer: Any, x: np.ndarray, training: bool = False) -> np.ndarray:
    return keras.ops.convert_to_numpy(layer(x, training=training))


# -- (a) every variant against the reference ---------------------------------------------------------------------


# Every class x mode x data format x u in {1, 4}; heads in {1, 2, 4} with channels last and {1, 2} with channels first
# (the data format only transposes the input and output, independently of the head split).
VARIANTS = [
    pytest.param(cls, mode, data_format, u, heads, id=f"{cls_id}-{mode}-{data_format}-u{u}-h{heads}")
    for cls, cls_id in zip(CLASSES, CLASS_IDS, strict=True)
    for mode in MODES
    for data_format in DATA_FORMATS
    for u in (1, 4)
    for heads in ((1, 2, 4) if data_format == "channels_last" else (1, 2))
]


@pytest.mark.parametrize(("cls", "mode", "data_format", "intra_depth", "heads"), VARIANTS)
def test_matches_reference(cls: type, mode: str, data_format: str, intra_depth: int, heads: int) -> None:
    layer, x = make_layer(cls, mode, data_format, intra_depth, heads, position_bias=mode == "local")
    got = run(layer, x)
    want = reference_forward(layer, x)
    assert (
        got.shape
        == want.shape
        == input_shape(cls, data_format)[:1]
        + tuple(
            (*SPATIAL[rank_of(cls)], KERNEL_OUT)
            if data_format == "channels_last"
            else (KERNEL_OUT, *SPATIAL[rank_of(cls)])
        )
    )
    assert np.abs(want).max() > 0.5  # the comparison is not vacuous
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_matches_reference_norm_keys_and_bias(cls: type, mode: str) -> None:
    """Key normalisation (and, for local, the position bias) with nonzero statistics."""
    layer, x = make_layer(cls, mode, "channels_last", 4, 2, norm_keys=True, position_bias=mode == "local")
    np.testing.assert_allclose(run(layer, x), reference_forward(layer, x), rtol=0, atol=ATOL)


def test_reference_detects_wrong_layouts() -> None:
    """Sanity check of the oracle: swapping the head/value output layout or the key softmax axis is caught."""
    layer, x = make_layer(LambdaNetwork2DConv, "relative", heads=2, intra_depth=4)
    want = reference_forward(layer, x)
    got = run(layer, x)
    swapped = got.reshape(*got.shape[:-1], 2, 4).swapaxes(-1, -2).reshape(got.shape)  # (v, h) instead of (h, v)
    assert np.abs(swapped - want).max() > 1e-2
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_projection_kernels_initialised_independently() -> None:
    """query/key/value kernels of equal shape must not share an initial draw (Keras 3 unseeded initializer reuse)."""
    layer = LambdaNetwork2DConv(kernel_out=16, key_depth=4, intra_depth=4, heads=4, receptive_kernel=3)
    layer.build((None, 6, 5, CHANNELS))
    q, k, v = (keras.ops.convert_to_numpy(p.kernel) for p in (layer.query, layer.key, layer.value))
    assert q.shape == k.shape == v.shape
    assert not np.array_equal(q, k)
    assert not np.array_equal(k, v)


# -- (b) the usage examples of the reference implementation ------------------------------------------------------


def test_usage_example_2d() -> None:
    layer = LambdaNetwork2DConv(kernel_out=32, key_depth=16, heads=4, intra_depth=1, size=28 * 28, receptive_kernel=7)
    assert layer.mode == "local"
    x = np.random.default_rng(0).normal(size=(1, 28, 28, 3)).astype("float32")
    out = run(layer, x)
    assert out.shape == (1, 28, 28, 32)
    np.testing.assert_allclose(out, reference_forward(layer, x), rtol=0, atol=ATOL)


@pytest.mark.parametrize("cls", [LambdaNetwork1DConv, LambdaNetwork1Dense], ids=CLASS_IDS[1:])
def test_usage_example_1d(cls: type) -> None:
    layer = cls(kernel_out=32, key_depth=16, heads=4, intra_depth=1, size=28, receptive_kernel=7)
    assert layer.mode == "local"
    x = np.random.default_rng(0).normal(size=(2, 28, 3)).astype("float32")
    out = run(layer, x)
    assert out.shape == (2, 28, 32)
    np.testing.assert_allclose(out, reference_forward(layer, x), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("cls", "kwargs", "shape"),
    [
        (LambdaNetwork2DConv, {"size": 28 * 28, "receptive_kernel": 7}, (1, 27, 28, 3)),
        (LambdaNetwork2DConv, {"size": 30}, (1, 6, 6, 3)),
        (LambdaNetwork1DConv, {"size": 28, "receptive_kernel": 7}, (1, 27, 3)),
        (LambdaNetwork1Dense, {"size": 7}, (1, 8, 3)),
    ],
)
def test_size_mismatch_raises(cls: type, kwargs: dict, shape: tuple) -> None:
    layer = cls(kernel_out=8, key_depth=4, heads=2, **kwargs)
    with pytest.raises(ValueError, match="`size`"):
        layer(np.zeros(shape, "float32"))


# -- (c) translation equivariance --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_local_translation_equivariance(cls: type) -> None:
    """Rolling the input rolls the output at interior positions (away from the zero padding and the wrap-around)."""
    rank = rank_of(cls)
    spatial = (9, 8) if rank == 2 else (12,)
    shift = (2, 1) if rank == 2 else (3,)
    layer, x = make_layer(cls, "local", spatial=spatial, intra_depth=4, norm_keys=True, position_bias=True)
    axes = tuple(range(1, rank + 1))
    out = run(layer, x)
    out_rolled = run(layer, np.roll(x, shift, axis=axes))
    half = 3 // 2
    # original positions p such that neither p's nor (p + shift)'s r x r neighbourhood leaves the grid
    index = tuple(slice(half, size - half - s) for size, s in zip(spatial, shift, strict=True))
    shifted = tuple(slice(sl.start + s, sl.stop + s) for sl, s in zip(index, shift, strict=True))
    a, b = out[(slice(None), *index)], out_rolled[(slice(None), *shifted)]
    assert a.size > 0
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_relative_translation_equivariance(cls: type) -> None:
    """Shifting a patch inside a zero background shifts the output exactly.

    With BN(0) = 0 for the values (zero moving mean and beta) background positions contribute nothing to the
    lambdas, and the softmax denominator keeps the same multiset of keys, so every position p with p + shift in the
    grid matches, not only the interior. The absolute embedding must fail this test (a check of its power).
    """
    rank = rank_of(cls)
    spatial = (6, 6) if rank == 2 else (10,)
    shift = (2, 1) if rank == 2 else (3,)
    patch = (slice(0, 3), slice(1, 4)) if rank == 2 else (slice(1, 6),)
    results = {}
    for mode in ("relative", "absolute"):
        layer, _ = make_layer(cls, mode, spatial=spatial, intra_depth=4, norm_keys=True)
        layer.value_norm.beta.assign(np.zeros(layer.value_norm.beta.shape, "float32"))
        layer.value_norm.moving_mean.assign(np.zeros(layer.value_norm.moving_mean.shape, "float32"))
        rng = np.random.default_rng(5)
        x = np.zeros((2, *spatial, CHANNELS), "float32")
        x[(slice(None), *patch)] = rng.normal(size=x[(slice(None), *patch)].shape)
        x_shifted = np.zeros_like(x)
        moved = tuple(slice(sl.start + s, sl.stop + s) for sl, s in zip(patch, shift, strict=True))
        x_shifted[(slice(None), *moved)] = x[(slice(None), *patch)]
        out, out_shifted = run(layer, x), run(layer, x_shifted)
        src = tuple(slice(0, size - s) for size, s in zip(spatial, shift, strict=True))
        dst = tuple(slice(s, size) for size, s in zip(spatial, shift, strict=True))
        results[mode] = np.abs(out_shifted[(slice(None), *dst)] - out[(slice(None), *src)]).max()
    assert results["relative"] < 1e-5
    assert results["absolute"] > 1e-2


# -- (d) batch independence --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_batch_independence(cls: type, mode: str) -> None:
    layer, _ = make_layer(cls, mode, intra_depth=4, norm_keys=True, position_bias=mode == "local")
    x = np.random.default_rng(3).normal(size=input_shape(cls, "channels_last", batch=4)).astype("float32")
    batched = run(layer, x)
    # Not bit-identical: TensorFlow blocks the (broadcast) matmuls differently for batch 1 and batch 4, so outputs
    # differ by float32 rounding of the largest terms (~1e-7 of the output scale). Mixing samples would change them
    # by O(1).
    atol = 1e-6 * float(np.abs(batched).max())
    for i in range(4):
        np.testing.assert_allclose(run(layer, x[i : i + 1])[0], batched[i], rtol=0, atol=atol)


# -- (e) gradients -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_gradients_reach_every_weight(cls: type, mode: str) -> None:
    layer, x = make_layer(cls, mode, intra_depth=4, norm_keys=True, position_bias=True)
    weights = np.random.default_rng(1).normal(size=run(layer, x).shape).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) * weights)
    grads = tape.gradient(loss, layer.trainable_variables)
    names = [v.path.split("/", 1)[1] for v in layer.trainable_variables]
    expected = {"query/kernel", "key/kernel", "value/kernel", "query_norm/gamma", "query_norm/beta"}
    expected |= {"key_norm/gamma", "key_norm/beta", "value_norm/gamma", "value_norm/beta"}
    expected |= {"absolute": {"position_embedding"}, "relative": {"position_embedding"}}.get(mode, set())
    expected |= {"position_conv/kernel", "position_conv/bias"} if mode == "local" else set()
    assert set(names) == expected
    for name, grad in zip(names, grads, strict=True):
        assert grad is not None, name
        grad = keras.ops.convert_to_numpy(grad)
        assert np.all(np.isfinite(grad)), name
        if name == "key_norm/beta":
            # beta adds the same constant to a key channel at every position; the softmax over positions removes
            # it, so its gradient is zero in exact arithmetic (it only shows float32 rounding).
            assert np.abs(grad).max() < 1e-4 * max(1.0, float(np.abs(keras.ops.convert_to_numpy(loss))))
        else:
            assert np.abs(grad).max() > 0, name


def test_training_lowers_the_loss() -> None:
    layer, x = make_layer(LambdaNetwork2DConv, "local", intra_depth=4, position_bias=True)
    target = np.random.default_rng(2).normal(size=run(layer, x).shape).astype("float32")
    optimizer = keras.optimizers.Adam(learning_rate=1e-2)
    losses = []
    for _ in range(15):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((layer(x, training=True) - target) ** 2)
        optimizer.apply(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


# -- (f) serialization -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", ["keras", "h5"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_save_load_round_trip(cls: type, mode: str, extension: str, tmp_path: Any) -> None:
    data_format = "channels_first" if mode in ("relative", "local") else "channels_last"
    layer, x = make_layer(
        cls, mode, data_format, intra_depth=4, norm_keys=mode != "content", position_bias=mode == "local"
    )
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    path = tmp_path / f"model.{extension}"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: importing lambda_layers registered the classes
    assert type(loaded.layers[0]) is cls
    assert loaded.layers[0].get_config() == layer.get_config()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x, training=False)), keras.ops.convert_to_numpy(model(x, training=False))
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_config_round_trip(cls: type, mode: str) -> None:
    layer, x = make_layer(
        cls,
        mode,
        "channels_first",
        intra_depth=4,
        norm_keys=True,
        position_bias=mode == "local",
        norm_epsilon=1e-3,
        norm_momentum=0.95,
        kernel_initializer=keras.initializers.HeNormal(),
        kernel_regularizer=keras.regularizers.L2(1e-3),
        kernel_constraint=keras.constraints.MaxNorm(3.0),
        name="lambda",
    )
    config = layer.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(run(clone, x), run(layer, x))
    assert isinstance(clone.query.kernel_regularizer, keras.regularizers.L2)
    assert isinstance(clone.value.kernel_constraint, keras.constraints.MaxNorm)
    assert clone.query_norm.epsilon == 1e-3 and clone.query_norm.momentum == 0.95


# -- (g) argument validation and forwarded kwargs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"kernel_out": 10, "heads": 4, "relative": True}, "kernel_out"),
        ({"receptive_kernel": 4}, "receptive_kernel"),
        ({"receptive_kernel": 0}, "receptive_kernel"),
        ({"relative": True, "data_format": "NHWC"}, "data_format"),
        ({"kernel_out": 0, "relative": True}, "kernel_out"),
        ({"key_depth": 0, "relative": True}, "key_depth"),
        ({"key_depth": -4, "relative": True}, "key_depth"),
        ({"intra_depth": 0, "relative": True}, "intra_depth"),
        ({"heads": 0, "relative": True}, "heads"),
        ({"size": 0}, "size"),
        ({"key_depth": 2.5, "relative": True}, "key_depth"),
        ({}, "content_only"),
        ({"relative": True, "receptive_kernel": 3}, "relative"),
        ({"content_only": True, "size": 30}, "content_only"),
        ({"relative": True, "norm_epsilon": 0.0}, "norm_epsilon"),
    ],
)
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_bad_arguments_raise(cls: type, kwargs: dict, name: str) -> None:
    args = {"kernel_out": 8, "key_depth": 4, "heads": 2, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}[`=]"):
        cls(**args)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_content_only_works(cls: type) -> None:
    layer, x = make_layer(cls, "content")
    assert layer.mode == "content"
    assert layer.position_embedding is None and layer.position_conv is None
    np.testing.assert_allclose(run(layer, x), reference_forward(layer, x), rtol=0, atol=ATOL)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_wrong_input_rank_raises(cls: type) -> None:
    layer = cls(kernel_out=8, key_depth=4, heads=2, relative=True)
    with pytest.raises(ValueError, match="rank"):
        layer(np.zeros((1, 4, 4, 4, CHANNELS) if rank_of(cls) == 2 else (1, 4, 4, 4), "float32"))


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_projection_kwargs_forwarded(cls: type) -> None:
    layer, x = make_layer(
        cls,
        "local",
        kernel_initializer=keras.initializers.Constant(0.25),
        kernel_regularizer=keras.regularizers.L2(0.01),
        kernel_constraint=keras.constraints.NonNeg(),
    )
    projections = (layer.query, layer.key, layer.value)
    for projection in projections:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(projection.kernel), 0.25)
        assert isinstance(projection.kernel_regularizer, keras.regularizers.L2)
        assert isinstance(projection.kernel_constraint, keras.constraints.NonNeg)
    expected = sum(0.01 * 0.25**2 * math.prod(p.kernel.shape) for p in projections)
    assert len(layer.losses) == 3
    np.testing.assert_allclose(float(sum(layer.losses)), expected, rtol=1e-5)
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    model(x)
    assert len(model.losses) == 3
    # the constraint is applied by the optimizer: a big step pushing the kernels negative is clipped at zero
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer.query.kernel) + tf.reduce_sum(layer.key.kernel) + tf.reduce_sum(layer.value.kernel)
    variables = [p.kernel for p in projections]
    keras.optimizers.SGD(learning_rate=1.0).apply(tape.gradient(loss, variables), variables)
    for projection in projections:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(projection.kernel), 0.0)


def test_package_exports() -> None:
    assert {"LambdaNetwork2DConv", "LambdaNetwork1DConv", "LambdaNetwork1Dense"} <= set(lambda_layers.__all__)


@pytest.mark.parametrize(
    ("cls", "mode"),
    [
        pytest.param(cls, mode, id=f"{mode}-{cls_id}")
        for cls, cls_id in zip(CLASSES, CLASS_IDS, strict=True)
        for mode in ("local", "relative", "absolute")
        if not (cls is LambdaNetwork1Dense and mode == "local")  # LambdaNetwork1Dense has no local mode
    ],
)
def test_mixed_precision_policy_reaches_every_sub_layer(cls: type, mode: str) -> None:
    """dtype="mixed_float16" behaves as in keras.layers.MultiHeadAttention: float16 output and compute in every
    sub-layer, float32 variables; the float16 result stays close to the float32 layer with the same weights (the
    tolerance, 2e-2 on O(1) outputs, is a few float16 ulps accumulated over the k, u, m sums)."""
    reference, x = make_layer(cls, mode)
    mixed = cls.from_config({**reference.get_config(), "dtype": "mixed_float16"})
    mixed.build(x.shape)
    mixed.set_weights(reference.get_weights())
    mha = keras.layers.MultiHeadAttention(2, 4, dtype="mixed_float16")
    probe = np.zeros((1, 3, 4), np.float32)
    assert keras.backend.standardize_dtype(mha(probe, probe).dtype) == "float16"  # what Keras' own layer does
    y = mixed(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    subs = [mixed.query, mixed.key, mixed.value, mixed.query_norm, mixed.value_norm, mixed.position_conv]
    for sub in (s for s in subs if s is not None):
        assert sub.dtype_policy.name == "mixed_float16", sub.name
        assert sub.compute_dtype == "float16", sub.name
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y).astype(np.float32), run(reference, x), atol=2e-2)
