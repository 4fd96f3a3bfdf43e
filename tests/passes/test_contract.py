"""The pass contract (lambda_export/passes/base.py): rules say why they refuse, shape inference runs once per sweep,
unknown options are errors, and dead nodes are removed by the manager only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export.passes import pipelines
from lambda_export.passes.base import NoMatch, PassContext, PassManager, format_log
from lambda_export.passes.performance import conv_as_dense_matmul, transpose_as_identity_matmul


def _transposes(count: int) -> onnx.ModelProto:
    """``count`` branches ``x (b, 16, 320) → Transpose → (b, 320, 16) → Relu``, each a graph output."""
    nodes = []
    for i in range(count):
        nodes += [
            helper.make_node("Transpose", ["x"], [f"t{i}"], name=f"t{i}", perm=[0, 2, 1]),
            helper.make_node("Relu", [f"t{i}"], [f"r{i}"], name=f"r{i}"),
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 320])],
        [helper.make_tensor_value_info(f"r{i}", TensorProto.FLOAT, ["batch", 320, 16]) for i in range(count)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(kernel: int, stride: int = 1, bias: bool = False, spatial: int = 5) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, kernel, kernel)).astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(np.ones(3, np.float32), "b"))
        inputs.append("b")
    pad = kernel // 2
    graph = helper.make_graph(
        [helper.make_node("Conv", inputs, ["y"], name="conv", pads=[pad] * 4, strides=[stride, stride])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, spatial, spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_no_match_is_falsy_and_carries_its_reason() -> None:
    refusal = NoMatch("group > 1")
    assert not refusal and refusal.reason == "group > 1"


def test_shape_inference_runs_once_per_sweep() -> None:
    """Five rewrites in one sweep read one shapes snapshot; a second sweep (fresh shapes) finds nothing more. The
    per-match driver this replaced inferred shapes once per rewrite plus once (6 times here)."""
    ctx = PassContext(_transposes(5), options={"min_elements": 0})
    result = transpose_as_identity_matmul.run(ctx)
    assert result.rewritten == 5 and ctx.shape_inferences == 2
    assert sum(n.op_type == "MatMul" for n in ctx.model.graph.node) == 5


def test_refusals_are_counted_by_reason_and_logged() -> None:
    manager = PassManager([conv_as_dense_matmul])
    for model in (_conv(7), _conv(3, stride=2), _conv(7, bias=True), _conv(3, spatial=12)):
        manager.run(PassContext(model))
    refused = [dict(record.refused) for record in manager.log]
    assert refused == [
        {},
        {"strided": 1},
        {"has a bias": 1},
        {"map large next to the kernel (dense matrix mostly zeros)": 1},
    ]
    assert manager.log[0].rewritten == 1
    (line,) = format_log(manager.log)
    assert line.startswith("conv_as_dense_matmul: 1 rewritten; refused 1 (map large next to the kernel"), line


def test_an_option_no_pass_declares_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'min_element'.*split_slow_transposes: min_elements"):
        PassManager(pipelines.PERFORMANCE).run(PassContext(_transposes(1), options={"min_element": 0}))
    with pytest.raises(ValueError, match="'max_axis'"):  # a PERFORMANCE option in a size pipeline
        pipelines.check_options(pipelines.pipeline_passes("size"), {"max_axis": 8})
    with pytest.raises(TypeError, match="no option min_element"):
        transpose_as_identity_matmul(_transposes(1), min_element=0)


def test_dead_nodes_are_removed_by_the_manager_not_by_the_pass() -> None:
    model = _conv(7)
    ctx = PassContext(model)
    assert conv_as_dense_matmul.run(ctx).changed
    assert "w" in {init.name for init in model.graph.initializer}  # the pass leaves the Conv's weight behind
    model = _conv(7)
    manager = PassManager([conv_as_dense_matmul])
    assert manager.run(PassContext(model)) == ["conv_as_dense_matmul"]
    assert "w" not in {init.name for init in model.graph.initializer} and manager.log[0].dead == 1
