"""fix_reshape_zero_copies (lambda_export/passes/repair.py): a Reshape whose 0 copies the wrong input dim gets the size
that was meant, from the output's declared shape or from the tensor a 2-D input was flattened from (tf2onnx's graph of
keras-hub's MiT attention, hand-built here; tests/passes/test_every_pass.py converts a Keras layer that does the same);
it refuses with the reason where nothing says what was meant, and leaves the 0s that are right alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export.passes.base import PassContext, PassManager
from lambda_export.passes.repair import fix_reshape_zero_copies

WEIGHT = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)


def _unknown(rank: int) -> list[str]:
    """An output shape that declares nothing but the rank (what tf2onnx writes for these outputs)."""
    return [f"unknown_{i}" for i in range(rank)]


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mit(x_dims: list, zeros_shape: list[int], output_dims: list | None = None) -> onnx.ModelProto:
    """tf2onnx's MiT keys: ``x (B, L, 16) → Reshape(-1, 16) → MatMul(W) → Reshape(zeros_shape)``."""
    inits = [
        numpy_helper.from_array(np.array([-1, 16], np.int64), "flat_shape"),
        numpy_helper.from_array(WEIGHT, "w"),
        numpy_helper.from_array(np.array(zeros_shape, np.int64), "keys_shape"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"], name="dense/Tensordot/Reshape"),
        helper.make_node("MatMul", ["flat", "w"], ["rows"], name="dense/Tensordot/MatMul"),
        helper.make_node("Reshape", ["rows", "keys_shape"], ["keys"], name="attn/transpose_1"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("keys", TensorProto.FLOAT, output_dims or _unknown(len(zeros_shape)))],
        inits,
    )


def _plain(x_dims: list | None, shape: list[int], output_dims: list | None = None) -> onnx.ModelProto:
    """``x → Reshape(shape)``, the output's shape declared as ``output_dims``."""
    return _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_dims or _unknown(len(shape)))],
        [numpy_helper.from_array(np.array(shape, np.int64), "shape")],
    )


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _apply(model: onnx.ModelProto, check: bool = True):
    manager = PassManager([fix_reshape_zero_copies], undo_failures=False)
    manager.run(PassContext(model))
    if check and manager.log[-1].changed:
        onnx.checker.check_model(model, full_check=True)
    return manager.log[-1]


def _shape_of(model: onnx.ModelProto, node_name: str) -> np.ndarray | None:
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next((i for i in model.graph.initializer if i.name == node.input[1]), None)
    return None if init is None else numpy_helper.to_array(init)


X = np.random.default_rng(0).standard_normal((2, 4, 16)).astype(np.float32)
KEYS = (X @ WEIGHT).reshape(2, 1, 4, 16)  # (B, heads=1, L, 16): what the layer means


@pytest.mark.parametrize(
    ("x_dims", "expected_shape"),
    [
        (["batch", "length", 16], None),  # B and L unknown: B read at run time (Shape → Concat)
        (["batch", 4, 16], [-1, 1, 4, 16]),  # L static: the -1 resolved, B becomes the -1
        ([2, "length", 16], [2, 1, -1, 16]),  # B static
    ],
)
def test_mit_keys_reshape_is_repaired_and_computes_the_layers_numbers(x_dims, expected_shape) -> None:
    model = _mit(x_dims, [0, 1, -1, 16])
    assert _run(model, X).shape == (8, 1, 1, 16)  # the 0 copies B·L = 8: the keys of every token in one "batch"
    record = _apply(model)
    assert record.rewritten == 1 and record.refused == ()
    if expected_shape is None:
        assert [n.op_type for n in model.graph.node][-3:] == ["Shape", "Concat", "Reshape"]
        assert all(n.name.startswith("attn/transpose_1/") for n in model.graph.node[-3:-1])
    else:
        assert _shape_of(model, "attn/transpose_1").tolist() == expected_shape
    np.testing.assert_allclose(_run(model, X), KEYS, rtol=1e-5, atol=1e-5)


def test_declared_output_shape_repairs_a_reshape_ort_fails_in() -> None:
    x = np.arange(6 * 16, dtype=np.float32).reshape(6, 16)  # B·L = 6 rows, B = 2 meant
    model = _plain([6, 16], [0, 3, 16], [2, 3, 16])
    with pytest.raises(Exception, match="Reshape"):
        _run(model, x)
    record = _apply(model)
    assert record.rewritten == 1
    assert _shape_of(model, "reshape").tolist() == [2, 3, 16]
    np.testing.assert_array_equal(_run(model, x), x.reshape(2, 3, 16))


def test_declared_output_with_one_unknown_dim_gets_a_minus_one() -> None:
    model = _plain([6, 16], [0, 3, 16], ["batch", 3, 16])
    assert _apply(model).rewritten == 1 and _shape_of(model, "reshape").tolist() == [-1, 3, 16]


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (_plain(None, [0, 3, 16]), "input rank unknown"),
        (_plain([6, 16], [0, 3, 16]), "0 copies an input dim but the element count does not fit"),
        (_plain([6, 16], [0, -1, 16], [2, "n", "m"]), "(6) but the output needs 2, and the output has more than one"),
        (_plain([6, 16], [0, 3, 16], [2, 4, 16]), "the shape's other entries disagree with the declared output"),
        (_mit(["batch", "length", 16], [0, 0, -1]), "0 copies a dim other than dim 0 of a flattened (B·L, C) input"),
    ],
)
def test_refuses_with_the_reason_where_the_truth_is_not_known(model: onnx.ModelProto, reason: str) -> None:
    before = model.SerializeToString()
    record = _apply(model)
    assert not record.changed and model.SerializeToString() == before
    ((why, count),) = record.refused
    assert reason in why and count == 1, record.refused


def test_mit_repair_needs_opset_15_when_b_is_read_at_run_time() -> None:
    model = _mit(["batch", "length", 16], [0, 1, -1, 16])
    model.opset_import[0].version = 14
    record = _apply(model)
    assert not record.changed and "opset < 15" in record.refused[0][0]


@pytest.mark.parametrize(
    "model",
    [
        _plain(["batch", 64, 16], [0, 8, 8, 16]),  # a batch passthrough
        _plain(["batch", 64, 16], [0, 4, 16, 16], ["batch", 4, 16, 16]),  # declared, and the 0 copies what it says
        _plain([2, 64, 16], [0, 0, 4, 4]),  # static, the element count fits
        _mit(["batch", 1, 16], [0, 1, -1, 16]),  # flattened (B·1, C): the 0 copies B
    ],
)
def test_correct_zeros_are_left_alone_and_not_counted(model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    record = _apply(model)
    assert not record.changed and record.refused == () and model.SerializeToString() == before


def test_allowzero_is_not_its_business() -> None:
    model = _plain([6, 16], [0, 3, 16])
    model.graph.node[0].attribute.append(helper.make_attribute("allowzero", 1))  # a 0 there is a size, not a copy
    record = _apply(model, check=False)
    assert not record.changed and record.refused == ()
