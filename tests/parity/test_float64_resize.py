"""The float64 truth of models that resize: TensorFlow's ResizeBilinear outputs float32 whatever its input, so the
float64 graph computes it itself (parity/reference.py), exactly as the op's attributes say."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lambda_export.parity.reference import float64_model


def _bilinear(x: np.ndarray, height: int, width: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """TensorFlow's bilinear resize in NumPy float64 (resize_bilinear_op.cc: lower/upper rows and the lerp)."""

    def weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = (size_in - 1) / (size_out - 1) if align_corners and size_out > 1 else size_in / size_out
        source = (np.arange(size_out) + 0.5) * scale - 0.5 if half_pixel else np.arange(size_out) * scale
        low = np.floor(source)
        return np.maximum(low, 0).astype(int), np.minimum(np.ceil(source), size_in - 1).astype(int), source - low

    top, bottom, y_lerp = weights(x.shape[1], height)
    left, right, x_lerp = weights(x.shape[2], width)
    x_lerp, y_lerp = x_lerp[None, None, :, None], y_lerp[None, :, None, None]

    def row(rows: np.ndarray) -> np.ndarray:
        return rows[:, :, left] + (rows[:, :, right] - rows[:, :, left]) * x_lerp

    upper, lower = row(x[:, top]), row(x[:, bottom])
    return upper + (lower - upper) * y_lerp


@pytest.mark.parametrize("size", [(10, 14), (3, 4), (8, 9)])
@pytest.mark.parametrize("align_corners, half_pixel", [(False, True), (False, False), (True, False)])
def test_resize_bilinear_in_float64_matches_numpy_and_tensorflow(size, align_corners, half_pixel):
    inputs = keras.Input((5, 7, 3))
    resize = keras.layers.Lambda(
        lambda v: tf.compat.v1.image.resize_bilinear(
            v, size, align_corners=align_corners, half_pixel_centers=half_pixel
        )
    )
    model = keras.Model(inputs, resize(inputs))
    x = np.random.default_rng(0).standard_normal((2, 5, 7, 3)).astype(np.float32)
    clone, reason = float64_model(model)
    if (align_corners, size) == (True, (3, 4)):  # integer source coordinates: a copy, float32's bit for bit
        assert clone is None and "bit for bit" in reason
        return
    assert reason is None
    (y64,) = clone(x)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, _bilinear(x.astype(np.float64), *size, align_corners, half_pixel), atol=1e-14)
    assert np.abs(y64 - np.asarray(model(x))).max() < 2e-6  # TensorFlow float32 on the same input


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.UpSampling2D(2, interpolation="bilinear"),
        keras.layers.Resizing(4, 6, interpolation="bilinear"),
        keras.layers.Resizing(9, 11, interpolation="bilinear", crop_to_aspect_ratio=True),
    ],
    ids=["upsampling", "resizing_down", "resizing_cropped"],
)
def test_keras_bilinear_layers_get_a_float64_truth(layer):
    inputs = keras.Input((5, 7, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(layer(inputs)))
    clone, reason = float64_model(model)
    assert reason is None
    x = np.random.default_rng(1).uniform(size=(2, 5, 7, 3)).astype(np.float32)
    (y64,) = clone(x)
    y32 = np.asarray(model(x))
    assert y64.dtype == np.float64 and y64.shape == y32.shape
    assert 0 < np.abs(y64 - y32).max() < 1e-5 * np.abs(y64).max()


@pytest.mark.parametrize("interpolation", ["bicubic", "area", "lanczos3"])
def test_resizes_without_a_float64_result_fall_back_with_the_op_named(interpolation):
    inputs = keras.Input((5, 7, 3))
    model = keras.Model(inputs, keras.layers.Resizing(9, 11, interpolation=interpolation)(inputs))
    clone, reason = float64_model(model)
    assert clone is None and "does not compute in float64" in reason, reason
