"""Target checks and clean-up passes on small hand-built ONNX graphs (no TensorFlow involved).

``check_target`` must flag what each runtime refuses (verified on each runtime) and pass clean graphs; every
clean-up pass must keep the numbers the graph computes: ONNX Runtime runs the graph before and after the pass. Passes
that only move data (reshape/transpose/squeeze rewrites) must give bit-identical outputs; passes that fold constants
into weights or merge GEMMs may change float rounding, so they are held to 1e-6 absolute on O(1) outputs (~10 ulps).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export.passes import cleanup
from lambda_export.passes.pipelines import run_cleanup
from lambda_export.targets import TARGETS, Offense, check_target

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(20261125)


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    """A checked model; ``inputs``/``outputs`` are (name, shape) pairs (None in a shape: dynamic batch)."""

    def info(name, shape):
        dims = None if shape is None else [("batch" if d is None else d) for d in shape]
        return helper.make_tensor_value_info(name, FLOAT, dims)

    graph = helper.make_graph(
        list(nodes),
        "test",
        [info(n, s) for n, s in inputs],
        [info(n, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _apply(model: onnx.ModelProto, fn, feeds, *, exact: bool, **kwargs) -> onnx.ModelProto:
    """Run pass ``fn`` on a copy; assert it changed the graph, the graph stays valid and the outputs are kept."""
    before = _run(model, feeds)
    after_model = onnx.ModelProto()
    after_model.CopyFrom(model)
    assert fn(after_model, **kwargs), f"{fn.__name__} did not change the graph"
    cleanup.eliminate_dead_nodes(after_model)
    onnx.checker.check_model(after_model, full_check=True)
    after = _run(after_model, feeds)
    for a, b in zip(before, after, strict=True):
        assert a.shape == b.shape
        if exact:
            np.testing.assert_array_equal(b, a)
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    return after_model


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def _reasons(offenses: list[Offense]) -> list[tuple[str, str]]:
    return [(o.op_type, o.reason) for o in offenses]


# -- check_target -----------------------------------------------------------------------------------------------------


def test_einsum_is_refused_by_opencv4_and_portable_only() -> None:
    model = _model(
        [helper.make_node("Einsum", ["x", "w"], ["y"], name="ein", equation="bij,jk->bik")],
        [("x", (None, 4, 6))],
        [("y", (None, 4, 5))],
        [("w", _weights(6, 5))],
    )
    for target in ("portable", "opencv4"):
        offenses = check_target(model, target)
        assert [(o.node, o.op_type) for o in offenses] == [("ein", "Einsum")]
        assert "Einsum" in str(offenses[0])
    for target in ("ort", "openvino", "opencv5"):
        assert check_target(model, target) == []


def test_shape_gather_chain_is_refused_where_shapes_must_be_static() -> None:
    """x -> Shape -> Gather(0) -> Concat with -1 -> Reshape: tf2onnx's dynamic-batch pattern."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    model = _model(
        nodes,
        [("x", (None, 4, 6))],
        [("y", (None, 24))],
        [("zero", np.array([0], np.int64)), ("minus_one", np.array([-1], np.int64))],
    )
    for target in ("portable", "opencv4", "opencv5"):
        kinds = {o.op_type for o in check_target(model, target)}
        assert {"Shape", "Gather", "Reshape"} <= kinds, target
    assert check_target(model, "ort") == []
    assert check_target(model, "openvino") == []


def test_gather_on_a_constant_table_is_fine_for_opencv5() -> None:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], name="lookup", axis=0)],
        "g",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", FLOAT, ["batch", 3])],
        [numpy_helper.from_array(_weights(5, 3), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert check_target(model, "opencv5") == []
    # OpenCV 4.6 has no Gather layer at all
    assert _reasons(check_target(model, "portable")) == [
        ("Gather", "op not supported by every runtime above (OpenCV 4.6 rules)")
    ]


def test_broadcasting_matmul_is_refused_by_opencv4() -> None:
    """(b, n, h, k) @ (b, 1, k, v): the batch dims broadcast, which OpenCV 4.6's MatMul cannot do."""
    model = _model(
        [helper.make_node("MatMul", ["q", "lam"], ["y"], name="mm")],
        [("q", (None, 5, 4, 3)), ("lam", (None, 1, 3, 6))],
        [("y", (None, 5, 4, 6))],
    )
    offenses = check_target(model, "portable")
    assert len(offenses) == 1 and offenses[0].node == "mm"
    assert offenses[0].reason.startswith("broadcasting MatMul")
    assert check_target(model, "opencv4") == offenses
    assert check_target(model, "opencv5") == []
    assert check_target(model, "ort") == []


def test_rank_mismatched_matmul_is_refused_by_opencv4() -> None:
    model = _model(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
        [("a", (None, 5, 4, 3)), ("b", (None, 3, 6))],
        [("y", (None, 5, 4, 6))],
    )
    assert [o.reason for o in check_target(model, "portable")] == ["broadcasting MatMul (None, 5, 4, 3) @ (None, 3, 6)"]


def test_constant_first_matmul_is_refused_by_opencv4() -> None:
    model = _model(
        [helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")],
        [("x", (None, 6, 3))],
        [("y", (None, 4, 3))],
        [("w", _weights(4, 6))],
    )
    assert _reasons(check_target(model, "portable")) == [("MatMul", "constant first MatMul operand")]
    assert check_target(model, "ort") == []


def test_rank3_constant_matmul_operand_is_refused_by_opencv4() -> None:
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [("x", (None, 4, 6))],
        [("y", (None, 4, 5))],
        [("w", _weights(1, 6, 5))],
    )
    assert _reasons(check_target(model, "portable")) == [("MatMul", "constant MatMul operand of rank 3 (must be 2)")]


def test_uneven_split_is_refused_and_even_split_accepted() -> None:
    def split(sizes):
        outputs = [f"y{i}" for i in range(len(sizes))]
        return _model(
            [helper.make_node("Split", ["x", "sizes"], outputs, name="split", axis=-1)],
            [("x", (None, 4, sum(sizes)))],
            [(name, (None, 4, s)) for name, s in zip(outputs, sizes, strict=True)],
            [("sizes", np.array(sizes, np.int64))],
        )

    uneven = split([2, 3])
    assert _reasons(check_target(uneven, "portable")) == [
        ("Split", "Split with unequal sizes (OpenCV 4.6 splits evenly)")
    ]
    assert check_target(uneven, "opencv5") == []
    assert check_target(split([3, 3, 3]), "portable") == []


def test_broadcasting_elementwise_between_computed_tensors_is_refused() -> None:
    model = _model(
        [helper.make_node("Add", ["a", "b"], ["y"], name="add")],
        [("a", (None, 4, 6)), ("b", (None, 1, 6))],
        [("y", (None, 4, 6))],
    )
    assert [o.op_type for o in check_target(model, "portable")] == ["Add"]
    assert check_target(model, "opencv5") == []


def test_non_standard_domain_is_refused_everywhere() -> None:
    graph = helper.make_graph(
        [helper.make_node("Lgamma", ["x"], ["y"], name="tf_op", domain="ai.onnx.contrib")],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2])],
        [helper.make_tensor_value_info("y", FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    )
    for target in TARGETS:
        assert [o.op_type for o in check_target(model, target)] == ["Lgamma"], target


def test_unknown_target_raises_value_error() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", (None, 3))], [("y", (None, 3))])
    with pytest.raises(ValueError, match="unknown target 'tensorrt'"):
        check_target(model, "tensorrt")


def test_clean_graph_passes_every_target() -> None:
    """The shapes of an exported lambda layer: 2D constant weights second, equal-rank batched MatMuls, static reshapes,
    an even Split, per-channel constants, Softmax, NCHW Conv."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["proj"], name="proj"),
        helper.make_node("Add", ["proj", "bias"], ["proj_b"], name="bias"),
        helper.make_node("Split", ["proj_b", "sizes"], ["q", "k"], name="split", axis=-1),
        helper.make_node("Softmax", ["k"], ["k_soft"], name="softmax", axis=1),
        helper.make_node("Transpose", ["k_soft"], ["k_t"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["k_t", "q"], ["lam"], name="lambda"),  # (b, 8, 6) @ (b, 6, 8)
        helper.make_node("Reshape", ["lam", "shape"], ["lam4"], name="to_nchw"),
        helper.make_node("Conv", ["lam4", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["y"], name="relu"),
    ]
    model = _model(
        nodes,
        [("x", (None, 6, 4))],
        [("y", (None, 2, 8, 8))],
        [
            ("w", _weights(4, 16)),
            ("bias", _weights(16)),
            ("sizes", np.array([8, 8], np.int64)),
            ("shape", np.array([-1, 1, 8, 8], np.int64)),
            ("conv_w", _weights(2, 1, 3, 3)),
            ("conv_b", _weights(2)),
        ],
    )
    for target in TARGETS:
        assert check_target(model, target) == [], target
    _run(model, {"x": _weights(3, 6, 4)})  # and it runs


# -- clean-up passes keep the numbers ---------------------------------------------------------------------------------


def _mm_feeds(shape=(3, 4, 8)) -> dict[str, np.ndarray]:
    return {"x": _weights(*shape)}


def test_fold_mul_into_matmul_weights() -> None:
    """Keras BatchNormalization after a 1x1 projection exports as MatMul -> Mul(scale) -> Add(shift)."""
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
            helper.make_node("Mul", ["mm", "scale"], ["scaled"], name="bn_scale"),
            helper.make_node("Add", ["scaled", "shift"], ["y"], name="bn_shift"),
        ],
        [("x", (None, 4, 8))],
        [("y", (None, 4, 6))],
        [("w", _weights(8, 6)), ("scale", _weights(6)), ("shift", _weights(6))],
    )
    after = _apply(model, cleanup.fold_affine_into_matmul, _mm_feeds(), exact=False)
    assert _ops(after) == ["MatMul", "Add"]


def test_fold_mul_into_matmul_whose_output_is_the_graph_output() -> None:
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
            helper.make_node("Mul", ["scale", "mm"], ["y"], name="bn_scale"),  # constant first
        ],
        [("x", (None, 4, 8))],
        [("y", (None, 4, 6))],
        [("w", _weights(8, 6)), ("scale", _weights(1, 1, 6))],
    )
    after = _apply(model, cleanup.fold_affine_into_matmul, _mm_feeds(), exact=False)
    assert _ops(after) == ["MatMul"] and after.graph.node[0].output[0] == "y"


def test_matmul_fold_leaves_non_channel_scales_alone() -> None:
    """A (n, 1) scale multiplies rows, not output channels: it must not be folded, even when n equals the width."""
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
            helper.make_node("Mul", ["mm", "scale"], ["y"], name="row_scale"),
        ],
        [("x", (None, 6, 8))],
        [("y", (None, 6, 6))],
        [("w", _weights(8, 6)), ("scale", _weights(6, 1))],
    )
    assert not cleanup.fold_affine_into_matmul(model)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batch_normalization_node_into_conv(with_bias: bool) -> None:
    inputs = ["x", "w", "b"] if with_bias else ["x", "w"]
    var = RNG.uniform(0.5, 2.0, 4).astype(np.float32)
    model = _model(
        [
            helper.make_node("Conv", inputs, ["conv"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node(
                "BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["y"], name="bn", epsilon=1e-3
            ),
        ],
        [("x", (None, 3, 5, 5))],
        [("y", (None, 4, 5, 5))],
        [
            ("w", _weights(4, 3, 3, 3) * 0.3),
            ("b", _weights(4)),
            ("gamma", _weights(4)),
            ("beta", _weights(4)),
            ("mean", _weights(4)),
            ("var", var),
        ],
    )
    after = _apply(model, cleanup.fold_affine_into_conv, {"x": _weights(2, 3, 5, 5)}, exact=False)
    assert _ops(after) == ["Conv"]


def test_fold_per_channel_mul_and_add_into_conv() -> None:
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["conv"], name="conv"),
            helper.make_node("Mul", ["conv", "scale"], ["scaled"], name="scale"),
            helper.make_node("Add", ["shift", "scaled"], ["y"], name="shift"),
        ],
        [("x", (None, 3, 5, 5))],
        [("y", (None, 4, 5, 5))],
        [("w", _weights(4, 3, 1, 1)), ("scale", _weights(4, 1, 1)), ("shift", _weights(1, 4, 1, 1))],
    )
    after = _apply(model, cleanup.fold_affine_into_conv, {"x": _weights(2, 3, 5, 5)}, exact=False)
    assert _ops(after) == ["Conv"]


def test_conv_fold_leaves_width_vectors_alone() -> None:
    """A (W,) constant broadcasts along the last (width) axis: not a per-channel scale even when W == C."""
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["conv"], name="conv"),
            helper.make_node("Mul", ["conv", "scale"], ["y"], name="scale"),
        ],
        [("x", (None, 3, 4, 4))],
        [("y", (None, 4, 4, 4))],
        [("w", _weights(4, 3, 1, 1)), ("scale", _weights(4))],
    )
    assert not cleanup.fold_affine_into_conv(model)


def _conv_transpose_affine(scale_shape: tuple[int, ...], *, second_reader: bool = False) -> onnx.ModelProto:
    """Conv (4 channels, 4×4 map) → Transpose to NHWC → Mul(scale) → Add(shift): a Keras batch norm as tf2onnx leaves
    it when the kernel was a graph input during its conversion."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], name="conv"),
        helper.make_node("Transpose", ["conv"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Mul", ["nhwc", "scale"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "shift"], ["y"], name="shift"),
    ]
    outputs = [("y", (None, 4, 4, 4))]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["nhwc"], ["z"], name="other_reader"))
        outputs.append(("z", (None, 4, 4, 4)))
    return _model(
        nodes,
        [("x", (None, 3, 4, 4))],
        outputs,
        [
            ("w", _weights(4, 3, 1, 1)),
            ("b", _weights(4)),
            ("scale", _weights(*scale_shape)),
            ("shift", _weights(1, 1, 1, 4)),
        ],
    )


def test_fold_per_channel_mul_and_add_after_a_transpose_into_conv() -> None:
    """The channels moved to the last axis: a (C,) or (1, 1, 1, C) constant there is per channel; both fold, the
    Transpose stays (checked against ONNX Runtime on the unfolded graph)."""
    model = _conv_transpose_affine((4,))
    feeds = {"x": _weights(2, 3, 4, 4)}
    once = _apply(model, cleanup.fold_affine_into_conv, feeds, exact=False)  # the Mul, then the Add it uncovers
    assert _ops(once) == ["Conv", "Transpose"]
    folded = _apply(model, lambda m: bool(run_cleanup(m)), feeds, exact=False)
    assert _ops(folded) == ["Conv", "Transpose"]


def test_conv_fold_after_a_transpose_refuses_other_axes_and_shared_outputs() -> None:
    # (4, 1) broadcasts along the NHWC width axis (also 4 long): not per channel
    assert not cleanup.fold_affine_into_conv(_conv_transpose_affine((4, 1)))
    # the transposed output is read by another node too: folding would change what it reads
    assert not cleanup.fold_affine_into_conv(_conv_transpose_affine((4,), second_reader=True))


def _siblings(widths=(4, 4, 4), bias=(True, False, True)) -> onnx.ModelProto:
    nodes, inits, outputs = [], [], []
    for i, (width, has_bias) in enumerate(zip(widths, bias, strict=True)):
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"mm{i}"], name=f"mm{i}"))
        inits.append((f"w{i}", _weights(8, width)))
        out = f"mm{i}"
        if has_bias:
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"y{i}"], name=f"add{i}"))
            inits.append((f"b{i}", _weights(width)))
            out = f"y{i}"
        nodes.append(helper.make_node("Relu", [out], [f"out{i}"], name=f"relu{i}"))
        outputs.append((f"out{i}", (None, 4, width)))
    return _model(nodes, [("x", (None, 4, 8))], outputs, inits)


@pytest.mark.parametrize("bias", [(True, False, True), (False, False, False), (True, True, True)])
def test_merge_sibling_matmuls(bias: tuple[bool, ...]) -> None:
    after = _apply(_siblings(bias=bias), cleanup.merge_sibling_matmuls, _mm_feeds(), exact=False)
    ops = _ops(after)
    assert ops.count("MatMul") == 1 and ops.count("Split") == 1
    assert ops.count("Add") == (1 if any(bias) else 0)
    assert check_target(after, "portable") == []


def test_merge_sibling_matmuls_even_splits_only() -> None:
    uneven = _siblings(widths=(4, 6, 4))
    assert not cleanup.merge_sibling_matmuls(uneven, even_splits_only=True)
    after = _apply(uneven, cleanup.merge_sibling_matmuls, _mm_feeds(), exact=False)
    assert [o.op_type for o in check_target(after, "portable")] == ["Split"]
    assert check_target(after, "opencv5") == []


@pytest.mark.parametrize(
    ("op", "extra", "attrs"),
    [
        ("Squeeze", [("axes", np.array([1], np.int64))], {}),
        ("Unsqueeze", [("axes", np.array([2], np.int64))], {}),
        ("Flatten", [], {"axis": 1}),
    ],
)
def test_squeeze_to_reshape(op: str, extra: list, attrs: dict) -> None:
    shapes = {"Squeeze": (None, 6), "Unsqueeze": (None, 1, 1, 6), "Flatten": (None, 6)}
    inputs = ["x"] + [name for name, _ in extra]
    model = _model(
        [helper.make_node(op, inputs, ["y"], name="sq", **attrs)], [("x", (None, 1, 6))], [("y", shapes[op])], extra
    )
    after = _apply(model, cleanup.squeeze_to_reshape, _mm_feeds((3, 1, 6)), exact=True)
    assert _ops(after) == ["Reshape"]


def test_merge_reshapes() -> None:
    model = _model(
        [
            helper.make_node("Reshape", ["x", "s1"], ["r1"], name="r1"),
            helper.make_node("Reshape", ["r1", "s2"], ["y"], name="r2"),
        ],
        [("x", (None, 4, 6))],
        [("y", (None, 3, 8))],
        [("s1", np.array([-1, 24], np.int64)), ("s2", np.array([-1, 3, 8], np.int64))],
    )
    after = _apply(model, cleanup.merge_reshapes, _mm_feeds((2, 4, 6)), exact=True)
    assert _ops(after) == ["Reshape"]


def test_merge_reshapes_keeps_copy_dims() -> None:
    """A 0 ("copy this dim of the input") in the outer shape refers to the inner output: not mergeable."""
    model = _model(
        [
            helper.make_node("Reshape", ["x", "s1"], ["r1"], name="r1"),
            helper.make_node("Reshape", ["r1", "s2"], ["y"], name="r2"),
        ],
        [("x", (None, 4, 6))],
        [("y", (None, 24))],
        [("s1", np.array([-1, 24, 1], np.int64)), ("s2", np.array([0, 24], np.int64))],
    )
    assert not cleanup.merge_reshapes(model)


def test_merge_transposes() -> None:
    model = _model(
        [
            helper.make_node("Transpose", ["x"], ["t1"], name="t1", perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t1"], ["t2"], name="t2", perm=[0, 2, 1, 3]),
            helper.make_node("Relu", ["t2"], ["y"], name="relu"),
        ],
        [("x", (None, 2, 3, 4))],
        [("y", (None, 4, 3, 2))],  # (b, 2, 3, 4) -t1-> (b, 3, 4, 2) -t2-> (b, 4, 3, 2)
    )
    after = _apply(model, cleanup.merge_transposes, _mm_feeds((2, 2, 3, 4)), exact=True)
    assert _ops(after) == ["Transpose", "Relu"]


def test_merge_transposes_removes_inverse_pairs() -> None:
    model = _model(
        [
            helper.make_node("Transpose", ["x"], ["t1"], name="t1", perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t1"], ["t2"], name="t2", perm=[0, 3, 1, 2]),
            helper.make_node("Relu", ["t2"], ["y"], name="relu"),
        ],
        [("x", (None, 2, 3, 4))],
        [("y", (None, 2, 3, 4))],
    )
    after = _apply(model, cleanup.merge_transposes, _mm_feeds((2, 2, 3, 4)), exact=True)
    assert _ops(after) == ["Relu"]


def test_squeeze_elementwise_constants() -> None:
    model = _model(
        [
            helper.make_node("Mul", ["x", "scale"], ["m"], name="mul"),
            helper.make_node("Sub", ["shift", "m"], ["y"], name="sub"),  # constant first, non-commutative
        ],
        [("x", (None, 4, 3, 3))],
        [("y", (None, 4, 3, 3))],
        [("scale", _weights(1, 4, 1, 1)), ("shift", _weights(1, 1, 1, 3))],
    )
    after = _apply(model, cleanup.squeeze_elementwise_constants, _mm_feeds((2, 4, 3, 3)), exact=True)
    assert sorted(tuple(init.dims) for init in after.graph.initializer) == [(3,), (4, 1, 1)]
    assert check_target(after, "portable") == []


def test_squeeze_matmul_constants() -> None:
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [("x", (None, 4, 8))],
        [("y", (None, 4, 6))],
        [("w", _weights(1, 8, 6))],
    )
    after = _apply(model, cleanup.squeeze_matmul_constants, _mm_feeds(), exact=True)
    assert [len(init.dims) for init in after.graph.initializer] == [2]
    assert check_target(after, "portable") == []


def test_run_cleanup_on_a_projection_with_batch_norm() -> None:
    """All passes together: squeezed weights, folded BN scale, merged siblings; numbers kept, target clean."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("Mul", ["q", "q_scale"], ["q_s"], name="q_bn_scale"),
        helper.make_node("Add", ["q_s", "q_shift"], ["q_b"], name="q_bn_shift"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
        helper.make_node("Identity", ["v"], ["v_id"], name="identity"),
        helper.make_node("Transpose", ["q_b"], ["q_t"], name="q_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q_t", "v_id"], ["y"], name="qv"),
    ]
    model = _model(
        nodes,
        [("x", (None, 4, 8))],
        [("y", (None, 6, 6))],
        [("wq", _weights(1, 8, 6)), ("wv", _weights(1, 8, 6)), ("q_scale", _weights(6)), ("q_shift", _weights(6))],
    )
    feeds = _mm_feeds()
    before = _run(model, feeds)[0]
    passes = run_cleanup(model, even_splits_only=True)
    assert {"remove_identities", "squeeze_matmul_constants", "fold_affine_into_matmul", "merge_sibling_matmuls"} <= set(
        passes
    )
    np.testing.assert_allclose(_run(model, feeds)[0], before, rtol=0, atol=1e-5)
    assert check_target(model, "portable") == []
    assert "Mul" not in _ops(model) and "Identity" not in _ops(model)


def test_lookup_ops_of_ai_onnx_ml_run_on_onnx_runtime_only():
    """StringLookup exports as CategoryMapper (ai.onnx.ml, an official domain): fine on ONNX Runtime, refused by name
    on the OpenCV targets; a domain that is not ONNX's own is still 'non-standard'."""
    nodes = [
        helper.make_node("CategoryMapper", ["s"], ["i"], domain="ai.onnx.ml", cats_strings=["a"], cats_int64s=[1]),
        helper.make_node("Custom", ["i"], ["y"], domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    ort_reasons = [offense.reason for offense in check_target(model, "ort")]
    assert ort_reasons == ["non-standard domain 'com.example'"]
    portable = [offense.reason for offense in check_target(model, "portable")]
    assert portable[0].startswith("ai.onnx.ml op not supported by") and portable[1] == ort_reasons[0]
