"""Every registered pass fires, by name, on a model where it applies; what it did is in its record; the numbers are the
un-rewritten graph's in ONNX Runtime; and the divergence locator still maps every Keras layer afterwards (the naming
rule of :mod:`lambda_export.passes.base`).

Each model is converted once; its tf2onnx graph (before any pass) is run through the pipeline's lists one pass at a
time (``CLEANUP`` to a fixed point, ``rewrite_einsum``, ``CLEANUP`` again, then ``PERFORMANCE``), with the size
thresholds off where a small test graph needs it, and the first step where each pass changes the graph is the one
tested. Passes that tf2onnx's graphs of small models never need (Identity, Reshape and Transpose chains, Einsum) get
the pattern planted on a Keras layer's output tensor, which must then still be found.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from lambda_export import conversion
from lambda_export.loading import LoadedModel, load_model
from lambda_export.parity.locate import locate_divergence
from lambda_export.passes.base import PassContext, PassManager, PassRecord
from lambda_export.passes.einsum import rewrite_einsum_nodes
from lambda_export.passes.pipelines import CLEANUP, CLEANUP_ROUNDS, PERFORMANCE, pipeline_passes

FORCED = {"min_elements": 0, "max_density_loss": 1e9, "even_splits_only": False}

# passes that repair what tf2onnx got wrong: the graph before them gives wrong numbers (or none), so theirs are Keras'
REPAIRS = {"fix_reshape_zero_copies"}


def _mit_attention():
    """keras-hub's SegFormer (MiT) attention as it reshapes (mit_layers.SegFormerMultiheadAttention, one head, sequence
    reduction 2): tf2onnx writes its keys' Reshape with a 0 that copies B·L where B was meant."""
    import math

    import keras
    from keras import ops

    class Attention(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.q, self.k, self.v = (keras.layers.Dense(16, name=n) for n in "qkv")
            self.sr = keras.layers.Conv2D(16, 2, strides=2, name="sr")
            self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm")

        def call(self, x):
            shape = ops.shape(x)
            batch, tokens, channels, side = shape[0], shape[1], shape[2], int(math.sqrt(shape[1]))
            q = ops.transpose(ops.reshape(self.q(x), (batch, tokens, 1, channels)), [0, 2, 1, 3])
            x = self.norm(ops.reshape(self.sr(ops.reshape(x, (batch, side, side, channels))), [batch, -1, channels]))
            k = ops.transpose(ops.reshape(self.k(x), [batch, -1, 1, channels]), [0, 2, 1, 3])
            v = ops.transpose(ops.reshape(self.v(x), [batch, -1, 1, channels]), [0, 2, 1, 3])
            attn = ops.softmax((q @ ops.transpose(k, [0, 1, 3, 2])) * 0.25, axis=-1)
            return ops.reshape(ops.transpose(attn @ v, [0, 2, 1, 3]), [batch, tokens, channels])

    inputs = keras.Input((64, 16))
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(Attention(name="attn")(inputs)))


def _keras_model(name: str):
    import keras

    from lambda_export.bench import LayerConfig
    from lambda_layers import models

    keras.utils.set_random_seed(0)
    if name == "demo":
        return models.build_demo_model(seed=0)
    if name == "mit_heads1":
        return _mit_attention()
    if name == "local_8x8":
        return LayerConfig("local", (8, 8), 8, d=16, k=4, h=4, u=4, r=3).build()
    if name == "local_1d":
        return LayerConfig("local", (16,), 8, d=16, k=4, h=4, u=4, r=5).build()
    if name == "local_k16":
        return LayerConfig("local", (12, 12), 8, d=32, k=16, h=2, u=1, r=5).build()
    if name == "padded_pool":  # timm's stem pool as the Keras port writes it: reflect pad, "valid" max pool
        from lambda_layers.byobnet import PaddedMaxPooling2D

        inputs = keras.Input((15, 16, 8))
        hidden = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
        hidden = PaddedMaxPooling2D(3, 2, 1, name="pool")(hidden)
        hidden = keras.layers.GlobalAveragePooling2D(name="gap")(hidden)
        return keras.Model(inputs, keras.layers.Dense(10, name="dense")(hidden))
    inputs = keras.Input((8, 8, 64))  # conv_bn: a kernel of 288 KiB is traced as a graph input (Conv → Transpose → Mul)
    hidden = keras.layers.Conv2D(128, 3, padding="same", name="conv")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    hidden = keras.layers.ReLU(name="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D(name="pool")(hidden)
    return keras.Model(inputs, keras.layers.Dense(10, name="dense")(hidden))


def _plant_identity(model: onnx.ModelProto, tensor: str) -> None:
    _plant(model, tensor, lambda before: [helper.make_node("Identity", [before], [tensor], name=tensor + "/identity")])


def _plant_reshapes(model: onnx.ModelProto, tensor: str) -> None:
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(s, np.int64), n)
            for n, s in (("flat", [-1, 4096]), ("back", [-1, 128, 8, 8]))
        ]
    )
    _plant(
        model,
        tensor,
        lambda before: [
            helper.make_node("Reshape", [before, "flat"], [tensor + "/flat"], name=tensor + "/flatten"),
            helper.make_node("Reshape", [tensor + "/flat", "back"], [tensor], name=tensor + "/unflatten"),
        ],
    )


def _plant_transposes(model: onnx.ModelProto, tensor: str) -> None:
    _plant(
        model,
        tensor,
        lambda before: [
            helper.make_node("Transpose", [before], [tensor + "/nhwc"], name=tensor + "/to_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", [tensor + "/nhwc"], [tensor], name=tensor + "/to_nchw", perm=[0, 3, 1, 2]),
        ],
    )


def _plant_einsum(model: onnx.ModelProto, tensor: str) -> None:
    """The MatMul writing ``tensor`` becomes the same product as an Einsum (same name, inputs and output)."""
    node = next(n for n in model.graph.node if tensor in n.output)
    assert node.op_type == "MatMul", node.op_type
    node.CopyFrom(helper.make_node("Einsum", list(node.input), [tensor], name=node.name, equation="bi,io->bo"))


def _plant(model: onnx.ModelProto, tensor: str, build: Callable[[str], list[onnx.NodeProto]]) -> None:
    """Rename the producer's output of ``tensor`` and insert ``build(renamed)`` nodes that write ``tensor`` again."""
    graph = model.graph
    position, node = next((i, n) for i, n in enumerate(graph.node) if tensor in n.output)
    renamed = tensor + "/planted"
    node.output[list(node.output).index(tensor)] = renamed
    for offset, new in enumerate(build(renamed)):
        graph.node.insert(position + 1 + offset, new)


def _layer_output(model: onnx.ModelProto, op_type: str, layer: str) -> str:
    return next(n.output[0] for n in model.graph.node if n.op_type == op_type and layer in n.name)


PLANTS = {
    "remove_identities": (_plant_identity, "Relu", "relu"),
    "merge_reshapes": (_plant_reshapes, "Relu", "relu"),
    "merge_transposes": (_plant_transposes, "Relu", "relu"),
    "rewrite_einsum": (_plant_einsum, "MatMul", "dense"),
}

# (model, options) where each pass fires: every registered pass must be here
CASES: dict[str, tuple[str, dict]] = {
    "fix_reshape_zero_copies": ("mit_heads1", {}),
    "remove_identities": ("conv_bn", {}),
    "squeeze_matmul_constants": ("demo", FORCED),
    "fold_affine_into_matmul": ("demo", FORCED),
    "fold_affine_into_conv": ("conv_bn", {}),
    "squeeze_to_reshape": ("demo", FORCED),
    "squeeze_elementwise_constants": ("demo", FORCED),
    "merge_sibling_matmuls": ("demo", FORCED),
    "merge_reshapes": ("conv_bn", {}),
    "merge_transposes": ("conv_bn", {}),
    "pad_into_max_pool": ("padded_pool", {}),
    "rewrite_einsum": ("conv_bn", {}),
    "conv_as_dense_matmul": ("demo", FORCED),
    "conv_along_width": ("local_1d", {"min_elements": 0}),
    "conv_output_channels_last": ("local_k16", {}),
    "unmerge_split_matmul": ("demo", FORCED),
    "flatten_transposed_matmul": ("demo", FORCED),
    "split_slow_transposes": ("local_8x8", {"min_elements": 0}),
    "transpose_as_identity_matmul": ("demo", FORCED),
    "reshape_before_output_add": ("local_1d", {"min_elements": 0}),
}


@functools.cache
def _converted(model_name: str) -> tuple[LoadedModel, onnx.ModelProto]:
    """The model and its tf2onnx graph before any pass (captured from inside ``convert``)."""
    loaded = load_model(_keras_model(model_name))
    captured: list[onnx.ModelProto] = []
    original = conversion.rewrite_for_target

    def capture(model, *args, **kwargs):
        captured.append(copy.deepcopy(model))
        return original(model, *args, **kwargs)

    conversion.rewrite_for_target = capture
    try:
        conversion.convert(loaded.model, optimize="size", loaded=loaded)
    finally:
        conversion.rewrite_for_target = original
    return loaded, captured[0]


@functools.cache
def _steps(
    model_name: str, options_key: tuple, plant: str | None
) -> dict[str, tuple[onnx.ModelProto, onnx.ModelProto, PassRecord]]:
    """pass name → (graph before, graph after, its record) at the first step where the pass changed the graph."""
    _, raw = _converted(model_name)
    model = copy.deepcopy(raw)
    if plant is not None:
        planter, op_type, layer = PLANTS[plant]
        planter(model, _layer_output(model, op_type, layer))
        onnx.checker.check_model(model, full_check=True)
    options = dict(options_key)
    ctx = PassContext(model, "portable")
    sequence = [*CLEANUP] * CLEANUP_ROUNDS + [rewrite_einsum_nodes] + [*CLEANUP] * CLEANUP_ROUNDS + [*PERFORMANCE]
    found: dict[str, tuple[onnx.ModelProto, onnx.ModelProto, PassRecord]] = {}
    for one in sequence:
        before = copy.deepcopy(ctx.model)
        ctx.options = {name: value for name, value in options.items() if name in one.options}
        manager = PassManager([one])
        manager.run(ctx)
        if manager.log[-1].changed and one.name not in found:
            found[one.name] = (before, copy.deepcopy(ctx.model), manager.log[-1])
    return found


def _feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 2 for d in value.type.tensor_type.shape.dim]
        feed[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def _outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _keras_outputs(loaded: LoadedModel, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    outputs = loaded.model(list(feed.values()) if len(feed) > 1 else next(iter(feed.values())))
    return [np.asarray(out) for out in (outputs if isinstance(outputs, list | tuple) else [outputs])]


def test_every_registered_pass_has_a_case() -> None:
    assert sorted(CASES) == sorted(p.name for p in pipeline_passes("speed"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_fires_keeps_the_numbers_and_the_layer_names(name: str) -> None:
    model_name, options = CASES[name]
    steps = _steps(model_name, tuple(sorted(options.items())), name if name in PLANTS else None)
    assert name in steps, f"{name} did not fire on {model_name}; fired: {sorted(steps)}"
    before, after, record = steps[name]
    assert record.name == name and record.changed and record.rewritten > 0 and record.undone is None, record
    onnx.checker.check_model(after, full_check=True)
    feed = _feed(before)
    loaded, _ = _converted(model_name)
    expected_outputs = _keras_outputs(loaded, feed) if name in REPAIRS else _outputs(before, feed)
    for got, expected in zip(_outputs(after, feed), expected_outputs, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # regrouped sums: float32 rounding at most

    located = {}
    if name in REPAIRS:  # the graph before it cannot run: the layers it maps are those mapped after
        results, first, unmatched, notes = locate_divergence(loaded, after, feed)
        assert first is None and results, (first, results, unmatched, notes)
        return
    for stage, graph in (("before", before), ("after", after)):
        results, first, unmatched, notes = locate_divergence(loaded, graph, feed)
        assert first is None, (stage, first, results)
        located[stage] = ({r.layer for r in results}, unmatched, notes)
    mapped_before, _, _ = located["before"]
    mapped_after, unmatched_after, notes = located["after"]
    assert mapped_before, located["before"]
    lost = {layer: unmatched_after.get(layer) for layer in mapped_before - mapped_after}
    # a layer may only stop being matched by being fused into another's node (a folded batch norm)
    assert all(reason and "fused" in reason for reason in lost.values()), (lost, notes)
