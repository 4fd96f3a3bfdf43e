"""New names come one way (graph.UniqueNames over graph.graph_names) and never equal a name the graph already uses,
graph inputs included (GraphIndex used to reserve only node names, initializers and node outputs)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lambda_export.graph import GraphIndex, all_names, graph_names


def _graph() -> onnx.GraphProto:
    # "unused" is a graph input no node reads; "body_t" exists only inside a Loop body
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["body_t"]), helper.make_node("Identity", ["body_t"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])],
    )
    return helper.make_graph(
        [
            helper.make_node("Add", ["x", "w"], ["y"], name="add"),
            helper.make_node("Loop", ["", "c"], [], name="loop", body=body),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("unused", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "w")],
    )


def test_a_fresh_name_never_equals_a_graph_input() -> None:
    graph = _graph()
    index = GraphIndex(graph)
    inputs = {value.name for value in graph.input}
    fresh = [index.fresh(name) for name in [*inputs, *inputs, "y", "add", "body_t", "w"]]
    assert not set(fresh) & graph_names(graph)
    assert index.fresh("unused") == "unused_3"  # reserved; "unused_1" and "unused_2" were handed out above
    assert len(set(fresh)) == len(fresh)


def test_graph_names_is_all_names_of_the_main_graph() -> None:
    graph = _graph()
    model = helper.make_model(graph)
    assert graph_names(graph) == all_names(model)
    assert {"x", "unused", "c", "w", "y", "add", "loop", "body_t", "cond_in", "cond_out", "i"} <= all_names(model)
    assert "" not in all_names(model)


def test_float16_names_avoid_every_used_name() -> None:
    from lambda_export.fp16 import to_float16

    # the converter's cast would be named "x_fp16"; a graph input already has that name
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x_fp16"], ["y"], name="add")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("x_fp16", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = to_float16(model)
    produced = [name for node in half.graph.node for name in node.output]
    assert len(produced) == len(set(produced))
    assert not set(produced) & {value.name for value in half.graph.input}
