"""A graph ONNX Runtime cannot run is a conversion failure (exit 3) naming the node, not a parity failure (exit 1)."""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest

from lambda_export.conversion import convert
from lambda_export.errors import EXIT_CONVERSION, ConversionError
from lambda_export.parity import verify


def _broken(model: keras.Model) -> onnx.ModelProto:
    """``model`` exported, with a Reshape to (3, 6) of its (batch, 6) output: valid, loads, fails at batch 2."""
    exported = convert(model).model
    graph = exported.graph
    output = graph.output[0].name
    producer = next(node for node in graph.node if output in node.output)
    producer.output[list(producer.output).index(output)] = "before_reshape"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([3, 6], np.int64), "bad_shape"))
    graph.node.append(
        onnx.helper.make_node("Reshape", ["before_reshape", "bad_shape"], [output], name="broken_reshape")
    )
    onnx.checker.check_model(exported, full_check=True)
    return exported


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    return keras.Model(inputs, keras.layers.Dense(6, name="d")(inputs))


def test_verify_raises_a_conversion_error_naming_the_node(model):
    with pytest.raises(ConversionError) as info:
        verify(model, _broken(model), providers=["cpu"], batch_sizes=(2,), distributions=("normal",))
    message = str(info.value)
    assert info.value.exit_code == EXIT_CONVERSION
    assert "\n" not in message and "node 'broken_reshape' (Reshape)" in message
    assert message.startswith("ONNX Runtime (CPUExecutionProvider) cannot run the ONNX model at batch 2: node")
    assert "Input shape:{2,6}, requested shape:{3,6}" in message and "onnxruntime_src" not in message


def test_a_graph_that_does_not_load_names_its_node(model):
    broken = _broken(model)
    next(init for init in broken.graph.initializer if init.name == "bad_shape").CopyFrom(
        onnx.numpy_helper.from_array(np.array([3.0, 6.0], np.float32), "bad_shape")  # a shape must be int64
    )
    with pytest.raises(ConversionError, match=r"cannot load the ONNX model: node 'broken_reshape' \(Reshape\)"):
        verify(model, broken, providers=["cpu"], batch_sizes=(2,), distributions=("normal",))


def test_cli_verify_exits_3_naming_the_node(model, tmp_path, capsys):
    from lambda_export import cli

    keras_path, onnx_path = tmp_path / "model.keras", tmp_path / "broken.onnx"
    model.save(keras_path)
    onnx.save(_broken(model), str(onnx_path))
    cli.STATE.verbose, cli.STATE.quiet, cli.STATE.json = 0, False, False
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["verify", str(keras_path), str(onnx_path), "--providers", "cpu", "--batch-sizes", "2"])
    assert exit_info.value.code == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lambda-export: error:")]
    assert len(errors) == 1 and "node 'broken_reshape' (Reshape)" in errors[0] and "cannot run" in errors[0]
