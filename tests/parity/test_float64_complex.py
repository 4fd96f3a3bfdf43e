"""The float64 truth of models with complex intermediates (FFT front ends, FNet's token mixing): complex64 is widened
to complex128 wherever float32 becomes float64 (parity/reference.py), so their float64 graph runs (TensorFlow has no
``Complex`` kernel from float64 parts to complex64) and computes in float64, not float32."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lambda_export.parity.reference import float64_model


@keras.saving.register_keras_serializable(package="test_float64_complex")
class _Pipeline(keras.layers.Layer):
    def __init__(self, pipeline: str, **kwargs):
        super().__init__(**kwargs)
        self.pipeline = pipeline

    def call(self, x):
        return PIPELINES[self.pipeline][0](x)

    def get_config(self):
        return {**super().get_config(), "pipeline": self.pipeline}


# pipeline → (TensorFlow, the same in NumPy float64)
PIPELINES = {
    "fnet_cast": (
        lambda x: tf.math.real(tf.signal.fft2d(tf.cast(x, tf.complex64))),
        lambda x: np.fft.fft2(x).real,
    ),
    "fnet_keras": (lambda x: keras.ops.fft2((x, keras.ops.zeros_like(x)))[0], lambda x: np.fft.fft2(x).real),
    "rfft_magnitude": (lambda x: tf.abs(tf.signal.rfft(x)), lambda x: np.abs(np.fft.rfft(x))),
    "irfft": (
        lambda x: tf.signal.irfft(tf.complex(x, x + 1), [11]),
        lambda x: np.fft.irfft(x + 1j * (x + 1), 11),
    ),
    "complex_constant": (  # a complex64 constant in the graph: widened exactly
        lambda x: tf.math.real(tf.signal.fft(tf.complex(x, x)) * tf.constant(0.1 + 0.3j, tf.complex64)),
        lambda x: (np.fft.fft(x + 1j * x) * complex(np.complex64(0.1 + 0.3j))).real,
    ),
}


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_complex_pipelines_get_a_float64_truth(pipeline: str) -> None:
    inputs = keras.Input((16, 12))
    model = keras.Model(inputs, _Pipeline(pipeline)(inputs))
    clone, reason = float64_model(model)
    assert reason is None and clone is not None
    assert not clone.narrow_nodes(np.zeros((1, 16, 12), np.float32))
    x = np.random.default_rng(3).standard_normal((2, 16, 12)).astype(np.float32)
    (wide,) = clone(x)
    want = PIPELINES[pipeline][1](x.astype(np.float64))
    scale = np.abs(want).max()
    assert wide.dtype == np.float64
    assert np.abs(wide - want).max() <= 1e-13 * scale  # float64: ~1e-15, float32 would be ~1e-6
    assert np.abs(np.asarray(model(x), np.float64) - want).max() > 1e-9 * scale  # TensorFlow float32 is not


def test_stft_magnitude_gets_a_float64_truth() -> None:
    inputs = keras.Input((64,))
    stft = keras.layers.Lambda(lambda v: tf.abs(tf.signal.stft(v, frame_length=8, frame_step=4)))
    model = keras.Model(inputs, stft(inputs))
    clone, reason = float64_model(model)
    assert reason is None
    x = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    (wide,) = clone(x)
    # the model's window is float32 (a constant of its graph, as the export's): widened exactly, framed in float64
    window = tf.signal.hann_window(8, dtype=tf.float32).numpy().astype(np.float64)
    frames = np.stack([x[:, i : i + 8].astype(np.float64) for i in range(0, 64 - 8 + 1, 4)], axis=1)
    want = np.abs(np.fft.rfft(frames * window, 8))
    assert wide.dtype == np.float64 and np.abs(wide - want).max() <= 1e-13 * np.abs(want).max()


def test_a_complex64_left_in_the_graph_is_named(monkeypatch) -> None:
    """The "is it really float64" guard sees complex64 too: a widening that left it would be a float32 truth."""
    from tensorflow.core.framework import types_pb2

    from lambda_export.parity import reference

    only_float = {types_pb2.DT_FLOAT: types_pb2.DT_DOUBLE}  # as if complex64 were forgotten
    monkeypatch.setattr(reference, "_wide_types", lambda: only_float)
    inputs = keras.Input((16, 12))
    model = keras.Model(inputs, _Pipeline("fnet_cast")(inputs))
    clone, reason = float64_model(model)
    assert clone is None and "complex64" in reason and "does not compute in float64" in reason
