"""Complex-valued FFT pipelines (lambda_export/spectral.py): FNet's token mixing, spectrogram front ends.

Before, ``keras-hub``'s ``FNetBackbone`` exited 3 (``TensorFlow op(s) with no ONNX conversion: Complex …, FFT2D …``)
and an ``rfft`` magnitude too (tf2onnx's own ``ComplexAbs`` handler failed on a dynamic batch). Now a pipeline that
starts from real tensors and ends in ``Real``/``Imag``/``ComplexAbs``/``IRFFT`` is lowered to real ONNX ops (a complex
tensor is a trailing (real, imag) axis; each transformed axis a MatMul with its float64-computed DFT matrix, ONNX
``DFT`` for the large ones), and anything else on complex values is a one-line exit 3 naming the op.

Tolerance of the ORT-vs-TensorFlow comparisons: ``|ort − tf| ≤ 4·eps32·log2(N)·max|tf|`` with N the number of
points transformed: an FFT output sums N terms, float32 rounding grows like ``eps·log N·|x|`` for TensorFlow's FFT
and like ``eps·√N·|x|`` for the DFT-matrix product (measured 0.8–3.3× TensorFlow's own error against float64 for
N ≤ 4096), both far under this bound for these sizes (measured: at most ~6 % of it), while a wrong lowering (a sign, a
transposed axis, a missing ``1/N``) is off by the output's own scale.
"""

from __future__ import annotations

import keras
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from cli_helpers import run_main

from lambda_export.conversion import convert
from lambda_export.errors import ConversionError

EPS32 = float(np.finfo(np.float32).eps)


@keras.saving.register_keras_serializable(package="test_fft")
class Spectral(keras.layers.Layer):
    """One of :data:`PIPELINES` (by name) as a Keras layer, saveable for the command line."""

    def __init__(self, pipeline: str, **kwargs):
        super().__init__(**kwargs)
        self.pipeline = pipeline

    def call(self, x):
        return PIPELINES[self.pipeline](x)

    def get_config(self):
        return {**super().get_config(), "pipeline": self.pipeline}


def _fnet_mixing(x):
    """keras-hub 0.32's FNetEncoder: ``ops.fft2((x, zeros_like(x)))[0]`` (Complex → FFT2D → Real)."""
    return keras.ops.fft2((x, keras.ops.zeros_like(x)))[0]


PIPELINES = {
    "fnet": _fnet_mixing,
    "fnet_cast": lambda x: tf.math.real(tf.signal.fft2d(tf.cast(x, tf.complex64))),
    "rfft_magnitude": lambda x: tf.abs(tf.signal.rfft(x)),
    "rfft_padded": lambda x: tf.abs(tf.signal.rfft(x, [24])),
    "rfft_cropped_imag": lambda x: tf.math.imag(tf.signal.rfft(x, [10])),
    "stft_magnitude": lambda x: tf.abs(tf.signal.stft(x[:, 0], frame_length=8, frame_step=4)),
    "keras_stft": lambda x: keras.ops.stft(x[:, 0], 8, 4, 8)[1],
    "ifft_imag": lambda x: tf.math.imag(tf.signal.ifft(tf.complex(x, 2 * x))),
    "irfft": lambda x: tf.signal.irfft(tf.complex(x, x + 1), [11]),
    "rfft2d_magnitude": lambda x: tf.abs(tf.signal.rfft2d(x)),
    "irfft2d": lambda x: tf.signal.irfft2d(tf.complex(x, -x), [9, 14]),
    "conj_fft": lambda x: tf.math.imag(tf.math.conj(tf.signal.fft(tf.complex(x, x * x)))),
    "long_rfft": lambda x: tf.abs(tf.signal.rfft(x[..., 0])),  # 2048 points: ONNX DFT (opset 17)
    "complex_mul": lambda x: tf.math.real(tf.signal.fft(tf.complex(x, x)) * tf.complex(x, x)),
}
POINTS = {"fnet": 16 * 12, "fnet_cast": 16 * 12, "rfft2d_magnitude": 16 * 12, "irfft2d": 9 * 14, "long_rfft": 2048}


def _model(pipeline: str, shape: tuple[int, ...] = (16, 12)) -> keras.Model:
    inputs = keras.Input(shape, name="signal")
    return keras.Model(inputs, Spectral(pipeline, name=pipeline)(inputs), name=f"{pipeline}_model")


def _fnet_block() -> keras.Model:
    """Dense → FNet token mixing (fft2d) with its residual → LayerNorm → Dense, as keras-hub's FNetEncoder."""
    inputs = keras.Input((16, 12), name="tokens")
    x = keras.layers.Dense(12, name="embed")(inputs)
    mixed = keras.layers.LayerNormalization(name="mixing_norm")(x + Spectral("fnet", name="mixing")(x))
    return keras.Model(inputs, keras.layers.Dense(8, name="head")(mixed), name="fnet_block")


def _ort(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_fnet_block_exports_and_passes_through_the_cli(tmp_path, capsys) -> None:
    source, out = tmp_path / "fnet.keras", tmp_path / "fnet.onnx"
    _fnet_block().save(source)
    code, stdout, stderr = run_main([str(source), "-o", str(out), "--providers", "cpu"], capsys)
    assert code == 0, stderr
    assert "PASS" in stdout and "FAIL" not in stdout
    # judged against a genuine float64 truth (complex64 widened to complex128), not the absolute fallback
    assert "relative rule" in stdout and "absolute rule" not in stdout and "no float64 reference" not in stdout
    import onnx

    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "MatMul" in ops and not ops & {"Complex", "FFT2D", "Real", "DFT"}


@pytest.mark.parametrize("pipeline", ["rfft_magnitude", "fnet_cast"])
def test_spectral_front_ends_pass_on_the_relative_rule_through_the_cli(pipeline: str, tmp_path, capsys) -> None:
    source, out = tmp_path / f"{pipeline}.keras", tmp_path / f"{pipeline}.onnx"
    _model(pipeline).save(source)
    code, stdout, stderr = run_main([str(source), "-o", str(out), "--providers", "cpu"], capsys)
    assert code == 0, stderr
    assert "PASS" in stdout and "FAIL" not in stdout
    assert "relative rule" in stdout and "absolute rule" not in stdout and "no float64 reference" not in stdout


@pytest.mark.parametrize("pipeline", [p for p in PIPELINES if p != "complex_mul"])
def test_pipelines_match_tensorflow(pipeline: str) -> None:
    shape = (2048, 1) if pipeline == "long_rfft" else (16, 12)
    model = _model(pipeline, shape)
    result = convert(model)
    assert not {node.op_type for node in result.model.graph.node} & {"Complex", "Real", "Imag", "ComplexAbs"}
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    got, want = _ort(result.model, x), model(x).numpy()
    assert got.shape == want.shape
    points = POINTS.get(pipeline, shape[-1] if "stft" not in pipeline else 8)
    tolerance = 4 * EPS32 * np.log2(points) * np.abs(want).max()
    assert np.abs(got - want).max() <= tolerance, (np.abs(got - want).max(), tolerance)


def test_small_transforms_need_no_dft_and_convert_below_opset_17() -> None:
    result = convert(_model("rfft_magnitude"), opset=13)
    assert "DFT" not in result.op_histogram and "MatMul" in result.op_histogram


def test_a_long_transform_below_opset_17_exits_3_naming_the_op(tmp_path, capsys) -> None:
    source = tmp_path / "long.keras"
    _model("long_rfft", (2048, 1)).save(source)
    code, _, stderr = run_main([str(source), "-o", str(tmp_path / "long.onnx"), "--opset", "16"], capsys)
    assert code == 3
    message = stderr.strip().splitlines()[-1]
    assert "RFFT" in message and "DFT" in message and "opset 17" in message and "opset 16" in message


def test_a_complex_op_without_conversion_exits_3_naming_it(tmp_path, capsys) -> None:
    source = tmp_path / "mul.keras"
    _model("complex_mul").save(source)
    code, _, stderr = run_main([str(source), "-o", str(tmp_path / "mul.onnx"), "--providers", "cpu"], capsys)
    assert code == 3
    (line,) = [line for line in stderr.splitlines() if line.startswith("lambda-export: error:")]
    assert "Mul (" in line and "complex values" in line


def test_a_complex_graph_output_is_refused() -> None:
    import tensorflow as tf

    from lambda_export.conversion import run_tf2onnx

    @tf.function
    def forward(x):
        return tf.identity(tf.signal.rfft(x))

    with pytest.raises(ConversionError, match=r"graph output .* is complex"):
        run_tf2onnx(forward, [tf.TensorSpec((None, 8), tf.float32, name="x")], 17)
