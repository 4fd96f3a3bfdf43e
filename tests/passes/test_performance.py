"""The performance passes (``optimize="speed"``, lambda_export/passes/performance.py) are exact: ONNX Runtime gives the
outputs of the graph before them (bit-identical for data movement, float32 rounding where sums are regrouped), each
pass is asserted by name, and each refuses what it must (with its reason in the record)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest


def _run(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(
    ("config_args", "expected"),
    [
        (("local", (6, 6), 8, {"u": 4, "r": 3}), ["unmerge_split_matmul", "reshape_before_output_add"]),
        (("local", (6, 6), 8, {"u": 1, "r": 3}), ["reshape_before_output_add"]),
        (
            ("relative", (5, 4), 8, {"u": 4}),
            [
                "unmerge_split_matmul",
                "flatten_transposed_matmul",
                "transpose_as_identity_matmul",
                "reshape_before_output_add",
            ],
        ),
        (
            ("absolute", (9,), 8, {"u": 2}),
            ["flatten_transposed_matmul", "transpose_as_identity_matmul", "reshape_before_output_add"],
        ),
        (
            ("local", (16,), 8, {"u": 4, "r": 5}),
            ["conv_along_width", "unmerge_split_matmul", "reshape_before_output_add"],
        ),
        (
            ("local", (20,), 8, {"u": 1, "r": 7}),
            ["conv_along_width", "transpose_as_identity_matmul", "reshape_before_output_add"],
        ),
    ],
)
def test_performance_passes_are_exact_and_portable(config_args: tuple, expected: list[str]) -> None:
    """Every performance pass, ``min_elements`` at 0 so that the small test graphs take every rewrite the real sizes take:
    exactly the ``expected`` passes change the graph (by name, from their records), the result keeps the portable
    target's rules and ONNX Runtime gives bit-identical outputs (data movement and regrouped GEMMs)."""
    from performance_helpers import force_performance_passes

    from lambda_export.bench import LayerConfig
    from lambda_export.conversion import convert
    from lambda_export.targets import check_target

    mode, spatial, channels, extra = config_args
    config = LayerConfig(mode, spatial, channels, d=16, k=4, h=4, **extra)
    original = convert(config.build(), optimize="size").model
    optimized = copy.deepcopy(original)
    assert force_performance_passes(optimized, {"min_elements": 0}) == expected
    onnx.checker.check_model(optimized, full_check=True)
    assert not check_target(optimized, "portable"), check_target(optimized, "portable")
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *spatial, channels)).astype(np.float32)
        expected_out, got = _run(original, x), _run(optimized, x)
        np.testing.assert_array_equal(got, expected_out)  # data movement and regrouped GEMMs: bit-identical


def test_split_slow_transposes_is_exact() -> None:
    import copy

    from lambda_export.bench import LayerConfig
    from lambda_export.conversion import convert
    from lambda_export.passes import performance

    config = LayerConfig("local", (24, 24), 8, d=16, k=4, h=4, u=4, r=3)
    original = convert(config.build(), optimize="size").model
    optimized = copy.deepcopy(original)
    slow = sum(node.op_type == "Transpose" for node in optimized.graph.node)
    assert performance.split_slow_transposes(optimized, min_elements=0)
    assert sum(node.op_type == "Transpose" for node in optimized.graph.node) > slow  # chains of fast moves
    x = np.random.default_rng(0).standard_normal((2, 24, 24, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(optimized, x), _run(original, x))  # pure data movement: bit-identical


def test_transpose_decomposition_realises_the_permutation() -> None:
    from itertools import permutations

    from lambda_export.passes.performance import _cheapest_moves

    shape = [2, 3, 4, 5, 6]
    x = np.arange(np.prod(shape)).reshape(shape)
    for perm in permutations(range(1, 5)):
        perm = [0, *perm]
        _, moves = _cheapest_moves(shape, perm)
        y = x
        for step in moves:
            y = np.transpose(y, step)
        np.testing.assert_array_equal(y, np.transpose(x, perm))


def _direct_conv(x: np.ndarray, w: np.ndarray, pads: list[int]) -> np.ndarray:
    """Reference: ONNX Conv (cross-correlation, stride 1, zero padding) by explicit loops; x (C, *S), w (K, C, *R)."""
    rank = x.ndim - 1
    padded = np.pad(x, [(0, 0)] + [(pads[i], pads[rank + i]) for i in range(rank)])
    out_spatial = [padded.shape[1 + i] - w.shape[2 + i] + 1 for i in range(rank)]
    out = np.zeros((w.shape[0], *out_spatial))
    for index in np.ndindex(*out_spatial):
        window = padded[(slice(None), *(slice(i, i + k) for i, k in zip(index, w.shape[2:], strict=True)))]
        out[(slice(None), *index)] = np.tensordot(w, window, axes=rank + 1)
    return out


@pytest.mark.parametrize(
    ("spatial", "kernel", "pads", "channels", "outputs"),
    [
        ((5, 6), (3, 5), [1, 2, 1, 2], 2, 3),
        ((4, 4), (7, 7), [3, 3, 3, 3], 1, 4),  # kernel larger than the map: most taps see padding
        ((3, 5), (3, 3), [0, 2, 2, 0], 2, 2),  # asymmetric pads, still "same" size
        ((9,), (5,), [2, 2], 3, 2),
    ],
)
def test_dense_conv_matrix_is_the_convolution(spatial, kernel, pads, channels, outputs) -> None:
    from lambda_export.passes.performance import dense_conv_matrix

    rng = np.random.default_rng(len(spatial) * 10 + channels)
    w = rng.standard_normal((outputs, channels, *kernel))
    x = rng.standard_normal((channels, *spatial))
    expected = _direct_conv(x, w, pads).reshape(outputs, -1)  # k, s
    n = int(np.prod(spatial))
    by_ks = x.reshape(-1) @ dense_conv_matrix(w, spatial, pads, order="ks")
    by_sk = x.reshape(-1) @ dense_conv_matrix(w, spatial, pads, order="sk")
    np.testing.assert_allclose(by_ks.reshape(outputs, n), expected, rtol=0, atol=1e-12)  # fp64: rounding only
    np.testing.assert_allclose(by_sk.reshape(n, outputs).T, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("spatial", "extra", "data_format"),
    [
        ((8, 8), {"u": 1, "r": 23}, "channels_last"),
        ((6, 6), {"u": 4, "r": 9}, "channels_last"),
        ((8, 8), {"u": 1, "r": 23}, "channels_first"),
        ((12,), {"u": 2, "r": 23}, "channels_last"),
    ],
)
def test_conv_as_dense_matmul_on_local_lambda_layers(spatial, extra, data_format) -> None:
    """The small-map local lambda layer as one GEMM: same outputs as TensorFlow and as the Conv graph.

    Tolerance 1e-5 max abs on outputs of size O(1–10): the GEMM adds the same float32 products (and exact zeros) in
    another order; the Conv graph itself is ~3e-6 from TensorFlow.
    """
    import keras

    from lambda_export.conversion import convert
    from lambda_export.passes import performance
    from lambda_export.targets import check_target
    from lambda_layers.layers import LambdaNetwork1DConv, LambdaNetwork2DConv

    keras.utils.set_random_seed(3)
    channels = 8
    shape = (*spatial, channels) if data_format == "channels_last" else (channels, *spatial)
    cls = LambdaNetwork2DConv if len(spatial) == 2 else LambdaNetwork1DConv
    inputs = keras.Input(shape)
    layer = cls(16, key_depth=4, heads=4, intra_depth=extra["u"], receptive_kernel=extra["r"], data_format=data_format)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    reference = np.asarray(model(x))
    original = convert(model, optimize="size").model
    speed = convert(model, optimize="speed")
    optimized = speed.model
    assert "Conv" in {node.op_type for node in original.graph.node}
    assert "Conv" not in {node.op_type for node in optimized.graph.node}  # rewritten with the default thresholds
    props = {p.key: p.value for p in optimized.metadata_props}
    assert "conv_as_dense_matmul" in speed.passes and props["optimize"] == "speed"
    assert check_target(optimized, "portable") == []
    got, before = _run(optimized, x), _run(original, x)
    assert np.abs(before - reference).max() <= 1e-5
    assert np.abs(got - reference).max() <= 1e-5
    assert np.abs(got - before).max() <= 1e-5
    assert got.shape == reference.shape
    if len(spatial) == 2 and data_format == "channels_last" and extra["u"] == 1:
        # the (b, v, k, n) -> (b, n, k, v) transpose went into the matrix layout: no generic transpose is left
        perms = [list(a.ints) for n in optimized.graph.node if n.op_type == "Transpose" for a in n.attribute]
        assert all(performance._is_single_move(perm) for perm in perms), perms


@pytest.mark.parametrize(
    ("spatial", "u", "k", "applies"), [((12, 12), 1, 16, True), ((40,), 4, 32, True), ((12, 12), 2, 8, False)]
)
def test_conv_output_channels_last_is_exact(spatial, u, k, applies) -> None:
    """The local λp chain with its first transpose moved onto the Conv output: the same values out of ONNX Runtime (the
    pass only moves data; ORT may then pick another GEMM kernel for the consumer, so agreement is to float32 rounding,
    1e-5 absolute + 1e-5 relative on outputs up to ~20: a few float32 ulps), one generic Transpose fewer; the NCHW → NHWC Transpose is left for ORT to fuse (no other pass rewrites it). Refused
    when the K output channels are not a multiple of ORT's NCHWc block (ORT could not fuse the Transpose)."""
    import copy

    import keras

    from lambda_export.conversion import convert
    from lambda_export.passes import performance
    from lambda_export.passes.base import PassContext
    from lambda_export.targets import check_target
    from lambda_layers.layers import LambdaNetwork1DConv, LambdaNetwork2DConv

    keras.utils.set_random_seed(6)
    cls = LambdaNetwork2DConv if len(spatial) == 2 else LambdaNetwork1DConv
    inputs = keras.Input((*spatial, 8))
    model = keras.Model(inputs, cls(32, key_depth=k, heads=2, intra_depth=u, receptive_kernel=5)(inputs))
    x = np.random.default_rng(2).standard_normal((3, *spatial, 8)).astype(np.float32)
    original = convert(model, optimize="size").model
    rewritten = copy.deepcopy(original)
    assert performance.conv_output_channels_last(rewritten) is applies
    if not applies:
        return
    np.testing.assert_allclose(_run(rewritten, x), _run(original, x), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_run(rewritten, x), np.asarray(model(x)), rtol=1e-5, atol=1e-5)

    def perms(graph) -> list[list[int]]:
        return [list(a.ints) for n in graph.graph.node if n.op_type == "Transpose" for a in n.attribute]

    # the λp transpose (one of the layer's (0, 3, 2, 1) permutations; u > 1 has another) became the NHWC move + one
    assert perms(rewritten).count([0, 3, 2, 1]) == perms(original).count([0, 3, 2, 1]) - 1, perms(rewritten)
    assert [0, 2, 3, 1] in perms(rewritten)
    # the rest of the pipeline leaves the NHWC transpose on the Conv output alone
    for other in (performance.transpose_as_identity_matmul, performance.split_slow_transposes):
        other(PassContext(rewritten), min_elements=0)
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
    after = [n for n in rewritten.graph.node if conv.output[0] in n.input]
    assert [n.op_type for n in after] == ["Transpose"] and list(after[0].attribute[0].ints) == [0, 2, 3, 1]
    np.testing.assert_allclose(_run(rewritten, x), _run(original, x), rtol=0, atol=1e-5)
    assert check_target(rewritten, "portable") == []
    assert "conv_output_channels_last" in convert(model).passes  # the default export takes it


def test_conv_along_width_is_exact() -> None:
    """A convolution over an (H, 1) map runs over the (1, H) map: the 1D local lambda layer (through the whole default
    pipeline) and plain Keras convolutions on a tall map (strided, grouped, with bias): ORT gives the same values as
    before the rewrite and as TensorFlow (same products, same sums: 1e-5 absolute + relative on O(1–10) outputs)."""
    import copy

    import keras

    from lambda_export.conversion import convert
    from lambda_export.passes import performance
    from lambda_export.targets import check_target
    from lambda_layers.layers import LambdaNetwork1DConv

    keras.utils.set_random_seed(7)
    inputs = keras.Input((64, 8))
    model = keras.Model(
        inputs, LambdaNetwork1DConv(32, key_depth=16, heads=2, intra_depth=2, receptive_kernel=7)(inputs)
    )
    x = np.random.default_rng(3).standard_normal((3, 64, 8)).astype(np.float32)
    exported = convert(model)
    default = exported.model
    assert "conv_along_width" in exported.passes and "conv_output_channels_last" in exported.passes
    conv = next(n for n in default.graph.node if n.op_type == "Conv")
    assert [a.ints for a in conv.attribute if a.name == "kernel_shape"] == [[1, 7]]
    assert check_target(default, "portable") == []
    np.testing.assert_allclose(_run(default, x), np.asarray(model(x)), rtol=1e-5, atol=1e-5)

    image = keras.Input((20, 1, 4))
    hidden = keras.layers.Conv2D(8, (5, 1), strides=(2, 1), padding="same")(image)  # strided, with bias
    hidden = keras.layers.Conv2D(8, (3, 1), padding="valid", groups=2, use_bias=False)(hidden)  # grouped
    plain = keras.Model(image, keras.layers.ReLU()(hidden))
    y = np.random.default_rng(4).standard_normal((2, 20, 1, 4)).astype(np.float32)
    original = convert(plain, optimize="size").model
    rewritten = copy.deepcopy(original)
    assert performance.conv_along_width(rewritten)
    kernels = [
        list(a.ints)
        for n in rewritten.graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "kernel_shape"
    ]
    assert kernels == [[1, 5], [1, 3]], kernels
    np.testing.assert_allclose(_run(rewritten, y), _run(original, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(rewritten, y), np.asarray(plain(y)), rtol=1e-5, atol=1e-5)


def test_conv_as_dense_matmul_generic_conv_and_refusals() -> None:
    """A plain Keras Conv2D without the lambda pattern takes the generic (N, K, H, W) form; bias, stride and large
    maps are left alone."""
    import keras

    from lambda_export.conversion import convert
    from lambda_export.passes.performance import conv_as_dense_matmul

    keras.utils.set_random_seed(4)
    inputs = keras.Input((5, 5, 2))
    hidden = keras.layers.Conv2D(3, 7, padding="same", use_bias=False)(inputs)
    outputs = keras.layers.ReLU()(hidden)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).standard_normal((2, 5, 5, 2)).astype(np.float32)
    original = convert(model, optimize="size").model
    import copy

    optimized = copy.deepcopy(original)
    assert conv_as_dense_matmul(optimized)
    assert "Conv" not in {node.op_type for node in optimized.graph.node}
    np.testing.assert_allclose(_run(optimized, x), np.asarray(model(x)), rtol=0, atol=1e-5)

    for layer in (
        keras.layers.Conv2D(3, 7, padding="same", use_bias=True, bias_initializer="ones"),  # bias input
        keras.layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False),  # stride 2
        keras.layers.Conv2D(3, 3, padding="same", use_bias=False),  # 25 positions > 2 x 9 taps: Conv is cheaper
    ):
        keras.utils.set_random_seed(5)
        inputs = keras.Input((5, 5, 2))
        graph = convert(keras.Model(inputs, layer(inputs)), optimize="size").model
        assert not conv_as_dense_matmul(graph), layer.get_config()


@pytest.mark.parametrize(
    ("shape", "perm", "rewritten"),
    [
        ((5, 16, 40, 8), (0, 2, 3, 1), True),  # v (16) moves to the end: (b, 16, 320) -> (b, 320, 16)
        ((5, 16, 320), (0, 2, 1), True),
        ((5, 64, 320), (0, 2, 1), False),  # axis longer than max_axis: the GEMM would cost more than it saves
        ((5, 320, 16), (0, 2, 1), False),  # the long axis moves inwards: ORT's own kernel is fast there
    ],
)
def test_transpose_as_identity_matmul_is_exact(shape, perm, rewritten) -> None:
    import onnx
    from onnx import TensorProto, helper

    from lambda_export.passes.performance import transpose_as_identity_matmul

    out_shape = [shape[a] for a in perm]
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=list(perm)), helper.make_node("Relu", ["t"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape[1:]])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert transpose_as_identity_matmul(model, min_elements=0) is rewritten
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x), np.maximum(np.transpose(x, perm), 0))  # x * 1 + 0s: bit-exact
