"""``pad_into_max_pool``: a reflect / edge Pad before a MaxPool becomes the pool's padding exactly where every padded
value is a copy of one the window already holds, and nowhere else.

The reference is the graph before the pass in ONNX Runtime (Pad, then a "valid" MaxPool), on inputs of both signs
(a maximum over a window of negatives is where −∞ padding and a copied value could differ); maxima are exact, so the
outputs must be equal bit for bit. Beyond the limit (reflect: 2p > k − 1, edge: p > k − 1) a window would see a
value from outside it, and the pass must refuse, saying why.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export.passes.base import PassContext, PassManager, PassRecord
from lambda_export.passes.cleanup import pad_into_max_pool


def _model(
    shape: list[int],
    pad_widths: list[int],
    kernel: list[int],
    strides: list[int],
    mode: str = "reflect",
    **pool_attrs: object,
) -> onnx.ModelProto:
    """x → Pad(mode, ``pad_widths`` as an initializer) → MaxPool(kernel, strides) → y (float32, NCHW-like)."""
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], name="pool/pad", mode=mode),
        helper.make_node(
            "MaxPool", ["padded"], ["y"], name="pool/max", kernel_shape=kernel, strides=strides, **pool_attrs
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(shape))],
        [numpy_helper.from_array(np.asarray(pad_widths, np.int64), "pads")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _rewrite(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    """The pass on a copy of ``model``, run as the pipeline runs it (the manager removes the Pad it leaves dead)."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    manager = PassManager([pad_into_max_pool])
    manager.run(PassContext(rewritten))
    return rewritten, manager.log[-1]


CASES_2D = [
    # (H, W), (k_h, k_w), (s_h, s_w), (begin_h, begin_w, end_h, end_w), mode
    ((128, 128), (3, 3), (2, 2), (1, 1, 1, 1), "reflect"),  # timm's stem (lambda_resnet26t at 256²)
    ((7, 9), (3, 3), (2, 2), (1, 1, 1, 1), "reflect"),  # odd sizes: the last window ends on the pad
    ((8, 8), (5, 5), (1, 1), (2, 2, 2, 2), "reflect"),
    ((8, 6), (5, 3), (3, 2), (2, 1, 0, 1), "reflect"),  # uneven pads
    ((10, 10), (3, 3), (1, 1), (2, 2, 2, 2), "edge"),
    ((9, 5), (4, 2), (2, 1), (3, 1, 1, 0), "edge"),
]


@pytest.mark.parametrize(("size", "kernel", "strides", "pads", "mode"), CASES_2D)
def test_fused_pool_gives_the_same_maxima(size, kernel, strides, pads, mode) -> None:
    onnx_pads = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
    model = _model([2, 3, *size], onnx_pads, list(kernel), list(strides), mode)
    rewritten, result = _rewrite(model)
    assert result.changed and result.rewritten == 1, result
    assert [n.op_type for n in rewritten.graph.node] == ["MaxPool"]
    pool = rewritten.graph.node[0]
    assert pool.input[0] == "x" and pool.output[0] == "y"
    assert next(a.ints for a in pool.attribute if a.name == "pads") == list(pads)
    onnx.checker.check_model(rewritten, full_check=True)
    rng = np.random.default_rng(0)
    for x in (
        rng.standard_normal((2, 3, *size)).astype(np.float32),
        -np.abs(rng.standard_normal((2, 3, *size))).astype(np.float32) - 1,  # all negative: −∞ vs copy differ
        np.arange(2 * 3 * size[0] * size[1], dtype=np.float32).reshape(2, 3, *size),  # monotone: the max at an edge
    ):
        np.testing.assert_array_equal(_run(rewritten, x), _run(model, x))


def test_every_small_1d_case_is_exact_or_refused() -> None:
    """All 1D cases with k ≤ 5, s ≤ 3, p ≤ 4, n ≤ 9: fused exactly when within the limit, refused otherwise."""
    rng = np.random.default_rng(1)
    fired = refused = 0
    for mode, k, s, begin, end, n in itertools.product(
        ("reflect", "edge"), range(1, 6), range(1, 4), range(5), range(5), range(2, 10)
    ):
        if (begin >= n or end >= n) or n + begin + end < k:
            continue  # the Pad (reflect needs p < n) or the pool itself would be invalid
        model = _model([1, 2, n], [0, 0, begin, 0, 0, end], [k], [s], mode)
        rewritten, result = _rewrite(model)
        limit = (k - 1) // 2 if mode == "reflect" else k - 1
        if max(begin, end) <= limit:
            assert result.changed, (mode, k, s, begin, end, n)
            x = rng.standard_normal((1, 2, n)).astype(np.float32)
            np.testing.assert_array_equal(_run(rewritten, x), _run(model, x), err_msg=str((mode, k, s, begin, end)))
            fired += 1
        else:
            assert not result.changed and dict(result.refused) == {f"{mode} pad wider than the window holds": 1}
            refused += 1
    assert fired > 100 and refused > 100  # both sides of the limit are exercised


@pytest.mark.parametrize(
    ("pads", "mode", "attrs", "reason"),
    [
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", {}, "constant Pad"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "wrap", {}, "wrap Pad"),
        ([0, 1, 1, 1, 0, 1, 1, 1], "reflect", {}, "pads the batch or channel axis"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "reflect", {"ceil_mode": 1}, "dilated or ceil_mode MaxPool"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "reflect", {"dilations": [2, 2]}, "dilated or ceil_mode MaxPool"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "reflect", {"pads": [1, 1, 1, 1]}, "MaxPool pads already"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "reflect", {"auto_pad": "SAME_UPPER"}, "MaxPool with auto_pad SAME"),
        ([0, 0, 2, 2, 0, 0, 2, 2], "reflect", {}, "reflect pad wider than the window holds"),
    ],
)
def test_refusals_say_why_and_leave_the_graph(pads, mode, attrs, reason) -> None:
    model = _model([1, 2, 8, 8], pads, [3, 3], [2, 2], mode, **attrs)
    rewritten, result = _rewrite(model)
    assert not result.changed and dict(result.refused) == {reason: 1}, result
    assert rewritten.SerializeToString() == model.SerializeToString()


def test_pad_read_elsewhere_stays_for_its_other_reader() -> None:
    model = _model([1, 2, 8, 8], [0, 0, 1, 1, 0, 0, 1, 1], [3, 3], [2, 2])
    model.graph.output.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, [None] * 4))
    rewritten, result = _rewrite(model)
    assert result.changed
    assert [n.op_type for n in rewritten.graph.node] == ["Pad", "MaxPool"]
    x = np.random.default_rng(2).standard_normal((1, 2, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, expected in zip(session.run(None, {"x": x}), reference.run(None, {"x": x}), strict=True):
        np.testing.assert_array_equal(got, expected)
