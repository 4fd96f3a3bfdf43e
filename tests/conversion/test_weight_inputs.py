"""Conversion memory: large weights traced as graph inputs, attached and folded after tf2onnx; tensor-by-tensor writing.

``conversion.WEIGHT_INPUT_BYTES`` and more: a weight is a placeholder of the traced function (nothing for TensorFlow to
freeze or tf2onnx to deep-copy), becomes an initializer after the conversion, and what tf2onnx would have folded on it
(kernel transposes, the gather of a relative position table) is folded exactly by :mod:`lambda_export.folding`.
:mod:`lambda_export.lean` writes and sizes models without protobuf's whole-message copies. The 2.5 GB case itself
(a 56x56, u=4 global relative layer) is measured by ``benchmarks/conversion_memory.py``; here a 12x12 layer stands
in for it, with the protobuf limit lowered so that the same external-data paths run.
"""

from __future__ import annotations

import io

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export import conversion, folding, lean
from lambda_export import io as lambda_io
from lambda_export.conversion import convert
from lambda_export.io import save_model_atomic
from lambda_export.parity import verify
from lambda_layers import LambdaNetwork2DConv


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def _initializers(model: onnx.ModelProto) -> dict[bytes, str]:
    return {numpy_helper.to_array(t).tobytes(): t.name for t in model.graph.initializer}


def _dense_conv_model() -> keras.Model:
    """A convolution (3x3x32x64 kernel, 72 KiB) and a dense layer (256x128, 128 KiB) over the threshold, biases under."""
    keras.utils.set_random_seed(5)
    x = keras.Input((8, 8, 32), name="x")
    y = keras.layers.Conv2D(64, 3, padding="same", name="conv")(x)
    y = keras.layers.Flatten()(keras.layers.AveragePooling2D(2)(y))  # 4*4*64 = 1024 features
    y = keras.layers.Dense(256, activation="relu", name="hidden")(y)
    return keras.Model(x, keras.layers.Dense(128, name="head")(y))


def test_large_weights_convert_as_graph_inputs_and_export_byte_exact(monkeypatch):
    model = _dense_conv_model()
    large = conversion.weight_inputs(model)
    assert [v.path for v in large] == ["conv/kernel", "hidden/kernel", "head/kernel"]  # the biases stay frozen
    calls = []
    real = conversion.run_tf2onnx

    def spy(*args, **kwargs):
        calls.append(len(kwargs.get("weights", ())))
        return real(*args, **kwargs)

    monkeypatch.setattr(conversion, "run_tf2onnx", spy)
    result = convert(model, optimize="size")
    assert calls == [3], "the placeholder trace was not used (or fell back to frozen weights)"
    exported = _initializers(result.model)
    kernel = model.get_layer("conv").kernel.numpy()
    assert np.transpose(kernel, (3, 2, 0, 1)).tobytes() in exported  # HWIO -> OIHW, folded exactly
    assert model.get_layer("hidden").kernel.numpy().tobytes() in exported
    assert model.get_layer("head").kernel.numpy().tobytes() in exported
    assert not [v for v in result.model.graph.input if v.name != "x"]  # no weight left as a graph input

    x = np.random.default_rng(0).standard_normal((2, 8, 8, 32)).astype(np.float32)
    (y,) = _run(result.model, {"x": x})
    np.testing.assert_allclose(y, np.asarray(model(x)), atol=2e-5, rtol=1e-5)

    monkeypatch.setattr(conversion, "WEIGHT_INPUT_BYTES", None)  # every weight frozen: tf2onnx's own way
    frozen = convert(model, optimize="size")
    assert frozen.op_histogram == result.op_histogram
    np.testing.assert_array_equal(_run(frozen.model, {"x": x})[0], y)


def test_a_failing_placeholder_trace_falls_back_to_frozen_weights(monkeypatch):
    model = _dense_conv_model()

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(conversion, "attach_weights", broken)
    result = convert(model)  # the frozen path does not attach weights
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], np.asarray(model(x)), atol=2e-5, rtol=1e-5)


def _relative_layer(size: int = 12) -> tuple[keras.Model, LambdaNetwork2DConv]:
    """A global relative lambda layer, u=4: a (2s-1)²·16·4 table (135 KiB at 12x12) gathered to s⁴·64 floats."""
    keras.utils.set_random_seed(6)
    x = keras.Input((size, size, 16), name="x")
    layer = LambdaNetwork2DConv(64, key_depth=16, heads=4, intra_depth=4, relative=True)
    return keras.Model(x, layer(x)), layer


def test_gathered_relative_embedding_is_folded_exactly_and_large_models_use_external_data(monkeypatch, tmp_path):
    """The proxy of the 2.5 GB case: the gathered embedding is folded from the table (the fold that makes it large),
    and with the protobuf limit lowered below the model's size the checks skip the in-memory session, the file is
    saved with external data, and parity runs from a temporary file with external data."""
    model, layer = _relative_layer()
    n = 12 * 12
    expected = np.asarray(layer.position_embeddings())  # n, m, k, u as TensorFlow computes it
    expected = np.transpose(expected, (1, 3, 0, 2)).reshape(n * 4, n * 16)  # the MatMul operand (m u, n k)
    monkeypatch.setattr(lambda_io, "PROTOBUF_LIMIT", 1_000_000)  # the model (5.3 MB) is now "too large"
    out = tmp_path / "relative.onnx"
    result = convert(model, out, optimize="size")
    assert "Gather" not in result.op_histogram
    assert expected.tobytes() in _initializers(result.model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relative.onnx", "relative.onnx.data"]
    assert out.stat().st_size < 100_000  # the weights are in the data file

    x = np.random.default_rng(2).standard_normal((2, 12, 12, 16)).astype(np.float32)
    (y,) = _run(str(out), {"x": x})
    np.testing.assert_allclose(y, np.asarray(model(x)), atol=1e-5, rtol=1e-5)
    report = verify(model, result.model, loaded=result.loaded, batch_sizes=(1, 2))
    assert report.results and report.passed


def _fold_model(nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray], inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [*inputs, *[helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in weights.items()]],
        outputs,
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx 1.23 writes IR 14 by default; ONNX Runtime 1.31 (the gpu extra's) reads up to 13
    return model


def test_folding_is_exact_and_leaves_the_rest():
    """Every fold of a chain read from weight inputs gives what ONNX Runtime computes on the unfolded graph, bit for
    bit; nodes that read a real input stay."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((5, 3, 4)).astype(np.float32)
    scale = rng.standard_normal((4,)).astype(np.float32)
    index = rng.integers(0, 5, (6, 2)).astype(np.int64)
    nodes = [
        helper.make_node("Gather", ["table", "index"], ["g"], axis=0),  # 6, 2, 3, 4
        helper.make_node("Transpose", ["g"], ["t"], perm=[1, 3, 0, 2]),  # 2, 4, 6, 3: a strided view
        helper.make_node("Reshape", ["t", "shape"], ["r"]),  # 1, 8, 18: copied once, when written
        helper.make_node("Mul", ["scale", "scale"], ["s2"]),
        helper.make_node("Sqrt", ["s2"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "axes"], ["su"]),  # 1, 4
        helper.make_node("Concat", ["su", "su"], ["cat"], axis=0),  # 2, 4
        helper.make_node("Slice", ["cat", "starts", "ends"], ["sl"]),  # 2, 3
        helper.make_node("MatMul", ["x", "r"], ["y"]),
        helper.make_node("Add", ["x2", "sl"], ["z"]),
    ]
    inits = [
        numpy_helper.from_array(index, "index"),
        numpy_helper.from_array(np.array([1, 8, 18], np.int64), "shape"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "starts"),
        numpy_helper.from_array(np.array([5, 4], np.int64), "ends"),
    ]
    weights = {"table": table, "scale": scale}
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8]),
        helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 3]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 18]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
    ]
    unfolded = _fold_model(nodes, inputs, outputs, weights, inits)
    feeds = {"x": rng.standard_normal((2, 3, 8)).astype(np.float32), "x2": rng.standard_normal((2, 3)).astype("f4")}
    expected = _run(unfolded, {**feeds, **weights})

    folded = _fold_model(nodes, inputs, outputs, weights, inits)
    folding.attach_weights(folded.graph, {name: (lambda v=value: v) for name, value in weights.items()})
    assert [node.op_type for node in folded.graph.node] == ["MatMul", "Add"]
    assert sorted(t.name for t in folded.graph.initializer) == ["r", "sl"]  # index, shape... were only folded
    assert [v.name for v in folded.graph.input] == ["x", "x2"]
    onnx.checker.check_model(folded, full_check=True)
    for got, want in zip(_run(folded, feeds), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_lean_writing_is_protobufs_own_bytes(tmp_path):
    model = _fold_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 32])],
        {},
        [
            numpy_helper.from_array(np.arange(64 * 32, dtype=np.float32).reshape(64, 32), "w"),
            numpy_helper.from_array(np.ones(32, np.float32), "b"),
        ],
    )
    onnx.helper.set_model_props(model, {"k": "v"})
    buffer = io.BytesIO()
    lean.write_model(model, buffer)
    assert buffer.getvalue() == model.SerializeToString() == lean.serialize(model)
    assert lean.serialized_size(model) == model.ByteSize()
    # external data: what onnx's helpers write (one data file, tensors of 1 KiB and more)
    path = tmp_path / "m.onnx"
    save_model_atomic(model, path, external_data=True)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    onnx.external_data_helper.convert_model_to_external_data(reference, location="m.onnx.data", size_threshold=1024)
    other = tmp_path / "other"
    other.mkdir()
    onnx.external_data_helper.write_external_data_tensors(reference, str(other))
    assert path.read_bytes() == reference.SerializeToString()
    assert (tmp_path / "m.onnx.data").read_bytes() == (other / "m.onnx.data").read_bytes()
    # a snapshot puts back nodes and initializers without having copied the weights
    snapshot = lean.Snapshot(model)
    before = model.SerializeToString()
    model.graph.node[0].op_type = "Gemm"
    model.graph.initializer.remove(model.graph.initializer[0])
    model.graph.initializer.add().name = "new"
    snapshot.restore(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("size", [100, 40 * 1024**2])
def test_tensor_digest_ignores_the_name(size: int):
    values = np.frombuffer(np.random.default_rng(4).bytes(size), np.uint8)
    a, b = numpy_helper.from_array(values, "first/kernel"), numpy_helper.from_array(values, "third/kernel")
    assert lean.tensor_digest(a) == lean.tensor_digest(b)
    c = numpy_helper.from_array(values[::-1].copy(), "first/kernel")
    assert lean.tensor_digest(c) != lean.tensor_digest(a)


def test_lean_reads_repeated_fields_on_every_protobuf_and_refuses_an_unknown_one():
    """protobuf 7 removed ``FieldDescriptor.label`` (every export failed with an AttributeError); the dev extras run
    protobuf 6, CI's newest-versions lane protobuf 7: this test runs on both."""
    fields = onnx.TensorProto.DESCRIPTOR.fields_by_name
    assert lean.is_repeated_field(fields["dims"]) and not lean.is_repeated_field(fields["raw_data"])

    class Unknown:  # a descriptor API that has neither `is_repeated` nor `label`
        name = "dims"

    with pytest.raises(lean.UnsupportedProtobufError, match=r"protobuf .*tested with protobuf 6 and 7") as caught:
        lean.is_repeated_field(Unknown())
    assert caught.value.exit_code == 3  # a one-line conversion error on the command line, not an internal error
