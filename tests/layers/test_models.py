"""Tests of the LambdaResNet builders and the tiny demo model (lambda_layers.models)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import lambda_layers
from lambda_layers import LambdaNetwork2DConv
from lambda_layers.models import (
    DEMO_CLASS_NAMES,
    build_demo_model,
    lambda_resnet,
    lambda_resnet26,
    lambda_resnet50,
    make_demo_data,
    tiny_lambda_resnet,
    train_demo_model,
)

ALLOWED_LAYERS = {
    keras.layers.InputLayer,
    keras.layers.Conv2D,
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Add,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.Dense,
    LambdaNetwork2DConv,
}
TRAIN_STEPS = 40


def lambda_layers_by_stage(model: keras.Model) -> dict[int, list[LambdaNetwork2DConv]]:
    found: dict[int, list[LambdaNetwork2DConv]] = collections.defaultdict(list)
    for layer in model.layers:
        if isinstance(layer, LambdaNetwork2DConv):
            stage = int(layer.name.split("_")[0].removeprefix("stage"))
            found[stage].append(layer)
    return dict(found)


@pytest.fixture(scope="module")
def trained_demo() -> tuple[keras.Model, dict[str, Any]]:
    model = build_demo_model(seed=0)
    history = train_demo_model(model, steps=TRAIN_STEPS, seed=0)
    return model, history


def test_package_exports_models() -> None:
    assert lambda_layers.models.lambda_resnet is lambda_resnet
    assert "models" in lambda_layers.__all__


# -- demo data and tiny model ----------------------------------------------------------------------------------------


def test_demo_data_shapes_labels_and_determinism() -> None:
    x, y = make_demo_data(64, seed=3)
    assert x.shape == (64, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (64,) and y.dtype == np.int32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) <= set(range(len(DEMO_CLASS_NAMES))) and len(DEMO_CLASS_NAMES) == 10
    x2, y2 = make_demo_data(64, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(make_demo_data(64, seed=4)[0], x)
    x_cf, y_cf = make_demo_data(64, seed=3, data_format="channels_first")
    np.testing.assert_array_equal(x_cf, np.transpose(x, (0, 3, 1, 2)))
    np.testing.assert_array_equal(y_cf, y)
    # The bar's colour is recoverable: its pixels are the bright ones (noise < 0.25, bar >= 0.7 in its main channel).
    colour = y // 2
    bright_channels = (x.max(axis=(1, 2)) > 0.5).astype(int)  # n, 3
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]])[colour]
    np.testing.assert_array_equal(bright_channels, expected)


def test_tiny_model_builds_with_right_output() -> None:
    model = tiny_lambda_resnet()
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 10)
    assert {type(layer) for layer in model.layers} <= ALLOWED_LAYERS
    stages = lambda_layers_by_stage(model)
    assert list(stages) == [1] and len(stages[1]) == 1
    layer = stages[1][0]
    assert (layer.mode, layer.receptive_kernel, layer.key_depth, layer.kernel_out) == ("local", 7, 8, 32)
    x, _ = make_demo_data(4, seed=0)
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_demo_training_lowers_loss(trained_demo: tuple[keras.Model, dict[str, Any]]) -> None:
    _, history = trained_demo
    losses = np.asarray(history["loss"])
    assert losses.shape == (TRAIN_STEPS,) and np.all(np.isfinite(losses))
    first, last = losses[:5].mean(), losses[-5:].mean()
    # Measured over seeds 0-4: first ~2.3, last ~1.3-1.4; chance level is ln(10) = 2.30.
    assert last < 0.8 * first, (first, last)
    assert history["val_loss"] < 0.8 * first
    assert history["val_accuracy"] > 0.3  # chance is 0.1; measured 0.99 after 40 steps (learning rate 1e-2)
    assert len(history["accuracy"]) == TRAIN_STEPS and history["seconds"] > 0


# -- serialisation and export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_save_load_round_trip(trained_demo: tuple[keras.Model, dict[str, Any]], tmp_path: Path, ext: str) -> None:
    model, _ = trained_demo
    x, _ = make_demo_data(16, seed=7)
    expected = model.predict(x, verbose=0)
    path = tmp_path / f"demo.{ext}"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: importing lambda_layers registered the layer
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def test_onnx_export_matches_keras(trained_demo: tuple[keras.Model, dict[str, Any]]) -> None:
    tf2onnx = pytest.importorskip("tf2onnx")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, _ = trained_demo
    spec = [tf.TensorSpec((None, 32, 32, 3), tf.float32, name="images")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    onnx.checker.check_model(proto, full_check=True)
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, _ = make_demo_data(8, seed=11)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


# -- channels first --------------------------------------------------------------------------------------------------


def test_channels_first_matches_channels_last() -> None:
    last = tiny_lambda_resnet()
    first = tiny_lambda_resnet((3, 32, 32), data_format="channels_first")
    assert first.input_shape == (None, 3, 32, 32) and first.output_shape == (None, 10)
    assert all(layer.data_format == "channels_first" for layer in first.layers if hasattr(layer, "data_format"))
    # Kernels do not depend on the layout and the lambda layer orders its channels (h, v) in both formats.
    first.set_weights(last.get_weights())
    x, _ = make_demo_data(4, seed=2)
    # TensorFlow's CPU Conv2D has NCHW kernels only through oneDNN (conftest turns oneDNN off): XLA runs NCHW anywhere.
    got = tf.function(first, jit_compile=True)(np.transpose(x, (0, 3, 1, 2)), training=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(last(x, training=False)), atol=1e-5)


# -- full-size builders ----------------------------------------------------------------------------------------------


def test_lambda_resnet26_shape_parameters_and_placement() -> None:
    model = lambda_resnet26()
    assert model.input_shape == (None, 128, 128, 3)
    assert model.output_shape == (None, 1000)
    assert {type(layer) for layer in model.layers} <= ALLOWED_LAYERS
    params = model.count_params()
    # ResNet-26 (bottleneck, 2-2-2-2) has 16.0M parameters; lambda layers in c4/c5 replace the two largest 3x3 convs.
    assert 9_000_000 < params < 12_000_000, params
    stages = lambda_layers_by_stage(model)
    assert {stage: len(found) for stage, found in stages.items()} == {2: 2, 3: 2}
    for layer in stages[2] + stages[3]:
        assert (layer.mode, layer.receptive_kernel, layer.key_depth, layer.intra_depth, layer.heads) == (
            "local",
            23,
            16,
            1,
            4,
        )
    assert [layer.kernel_out for layer in stages[2] + stages[3]] == [256, 256, 512, 512]
    # Downsampling lambda blocks average-pool after the lambda layer; conv stages keep their 3x3 convolutions.
    names = {layer.name for layer in model.layers}
    assert {"stage2_block0_pool", "stage3_block0_pool"} <= names
    assert "stage2_block1_pool" not in names
    assert {"stage0_block0_conv2", "stage1_block1_conv2"} <= names and "stage2_block0_conv2" not in names


def test_lambda_resnet50_matches_paper_parameter_counts() -> None:
    default = lambda_resnet50()
    assert {stage: len(found) for stage, found in lambda_layers_by_stage(default).items()} == {2: 6, 3: 3}
    everywhere = lambda_resnet50(lambda_stages=(0, 1, 2, 3))
    assert sum(map(len, lambda_layers_by_stage(everywhere).values())) == 16
    # Paper (Table 3): ResNet-50 25.6M parameters, LambdaResNet-50 (lambda layers in every stage) 15.0M.
    assert abs(everywhere.count_params() - 15.0e6) < 0.15e6, everywhere.count_params()
    assert everywhere.count_params() < default.count_params() < 25.6e6


@pytest.mark.parametrize(
    ("lambda_stages", "expected"),
    [((), {}), ((0,), {0: 1}), ((0, 2), {0: 1, 2: 1}), ((1, 2), {1: 2, 2: 1})],
)
def test_lambda_layers_placed_in_requested_stages(lambda_stages: tuple[int, ...], expected: dict[int, int]) -> None:
    model = lambda_resnet(
        (16, 16, 3),
        5,
        depths=(1, 2, 1),
        widths=(8, 8, 16),
        stem_width=8,
        lambda_stages=lambda_stages,
        key_depth=4,
        heads=2,
        receptive_kernel=3,
        stem_kernel=3,
        stem_stride=1,
        stem_pool=False,
    )
    assert {stage: len(found) for stage, found in lambda_layers_by_stage(model).items()} == expected
    assert model.output_shape == (None, 5)


def test_global_relative_variant_runs() -> None:
    model = tiny_lambda_resnet(receptive_kernel=None)
    (layer,) = lambda_layers_by_stage(model)[1]
    assert layer.mode == "relative"
    x, _ = make_demo_data(2, seed=0)
    assert np.asarray(model(x, training=False)).shape == (2, 10)


# -- argument checking -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lambda_stages": (4,)},
        {"lambda_stages": (-1,)},
        {"lambda_stages": (2, 2)},
        {"lambda_stages": 2},
        {"depths": (2, 2, 2)},
        {"widths": (64, 128, 256)},
        {"depths": (2, 0, 2, 2)},
        {"depths": ()},
        {"widths": (64, 128, 250, 512)},  # 250 not divisible by heads=4
        {"receptive_kernel": 4},
        {"receptive_kernel": 0},
        {"key_depth": 0},
        {"heads": 3},
        {"data_format": "NHWC"},
        {"strides": (1, 2)},
        {"input_shape": (128, 128)},
        {"input_shape": (None, None, 3), "receptive_kernel": None},
        {"num_classes": 0},
        {"stem_width": 1.5},
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    args = {"input_shape": (128, 128, 3), "num_classes": 10, **kwargs}
    with pytest.raises(ValueError):
        lambda_resnet(args.pop("input_shape"), args.pop("num_classes"), **args)


def test_bad_demo_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError):
        make_demo_data(0, seed=0)
    with pytest.raises(ValueError):
        make_demo_data(4, seed=0, data_format="NCHW")
    with pytest.raises(ValueError):
        make_demo_data(4, seed=0, image_size=4)
