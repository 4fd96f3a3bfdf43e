"""The int8 verdict weighs the benefit: the share of the multiply-adds in int8, the size and the speed against
float32, and the measured reason when int8 is larger or slower (on synthetic records and a hand-made graph; no timed
assertion: the speed itself is whatever this machine measures)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lambda_export.quantization.engine import Quantizer, int8_macs, node_macs
from lambda_export.quantization.speed import (
    SpeedCheck,
    benefit_record,
    int8_speed,
    kernel_kind,
    slow_reasons,
    speed_warning,
)
from lambda_export.quantization.verdict import benefit, verdict_line

AVX2 = ["avx", "avx2", "fma"]
PASSED = {"passed": True, "runtimes_run": ["onnxruntime"]}


def _record(**benefit_fields: object) -> dict:
    return {"verdict": PASSED, "speed": {"benefit": benefit_record(**benefit_fields)}}  # type: ignore[arg-type]


def test_no_benefit_is_said_in_the_verdict_itself() -> None:
    reasons = slow_reasons({}, 0.18)
    assert reasons == ["most multiply-adds kept in float (18% in int8)"]
    record = _record(
        mac_share=0.18, size_ratio=1.30, speedup=0.72, reasons=reasons, size_reason="15 Q/DQ nodes add 20 kB"
    )
    fields = record["speed"]["benefit"]
    assert fields == {
        "int8_mac_share": 0.18,
        "size_ratio": 1.3,
        "speed_ratio": 0.72,
        "smaller": False,
        "faster": False,
        "benefit": False,
        "reason": "most multiply-adds kept in float (18% in int8); 15 Q/DQ nodes add 20 kB",
    }
    assert verdict_line(record) == (
        "int8 verdict: PASS (accuracy) on onnxruntime — no benefit here: 18% of the multiply-adds in int8, 130% of "
        "the float32 size, 0.72× its speed; why: most multiply-adds kept in float (18% in int8); 15 Q/DQ nodes add "
        "20 kB"
    )


def test_a_benefit_and_half_a_benefit() -> None:
    line = verdict_line(_record(mac_share=0.96, size_ratio=0.262, speedup=1.83))
    assert line == (
        "int8 verdict: PASS (accuracy) on onnxruntime — benefit here: 96% of the multiply-adds in int8, 26% of the "
        "float32 size, 1.83× its speed"
    )
    slower = _record(mac_share=0.96, size_ratio=0.84, speedup=0.89, reasons=["profiled per batch: x"])
    assert slower["speed"]["benefit"]["benefit"] is True
    assert verdict_line(slower).endswith("0.89× its speed; why: profiled per batch: x")
    assert "— smaller but slower here:" in verdict_line(slower)
    larger = _record(mac_share=0.5, size_ratio=1.1, speedup=1.2, size_reason="r")
    assert "— faster but larger here:" in verdict_line(larger) and verdict_line(larger).endswith("; why: r")
    failed = {**_record(mac_share=0.5, size_ratio=0.3, speedup=1.2), "verdict": {**PASSED, "passed": False}}
    assert verdict_line(failed).startswith("int8 verdict: FAIL (accuracy) on onnxruntime — benefit here:")


def test_untimed_benefit_comes_from_the_size_and_the_sensitivity_groups() -> None:
    record = {
        "verdict": None,
        "speed": None,
        "size": {"ratio": 1.3},
        "sensitivity": {
            "groups": [
                {"group": "Conv2D: Conv", "macs_share": 0.7, "kept_float": True},
                {"group": "Dense: MatMul (weights)", "macs_share": 0.3, "kept_float": False},
            ]
        },
    }
    assert benefit(record)["int8_mac_share"] == 0.3 and benefit(record)["speed_ratio"] is None
    assert verdict_line(record) == (
        "int8 verdict: not taken (--skip-verify) — no benefit here: 30% of the multiply-adds in int8, 130% of the "
        "float32 size, speed not timed"
    )


def test_slow_reasons_come_from_the_profile() -> None:
    assert [
        kernel_kind(op) for op in ("QLinearConv", "Conv", "QLinearAdd", "DequantizeLinear", "Transpose", "Relu")
    ] == [
        "int8 multiply-add",
        "multiply-add",
        "int8 element-wise",
        "Q/DQ conversion",
        "layout",
        "other",
    ]
    kernels = {
        "float32": {"multiply-add": 3.3, "layout": 3.0, "other": 1.0},
        "int8": {"int8 multiply-add": 6.3, "multiply-add": 0.5, "Q/DQ conversion": 0.4, "layout": 3.0, "other": 1.0},
    }
    assert slow_reasons(kernels, 0.96) == [
        "profiled per batch: convolutions and GEMMs 6.80 ms in the int8 graph (ONNX Runtime's int8 kernels 6.30 ms) "
        "vs 3.30 ms in float32, Q/DQ conversions 0.40 ms"
    ]
    check = SpeedCheck(8, 2, 6.8, 7.8, 0.87, 0.8, 0.9, 9, 96, 100, 1000, 840, kernels)
    text = speed_warning(check, AVX2)
    assert text and "why: profiled per batch: convolutions and GEMMs" in text and "or int8 for its size" in text
    assert "VNNI/AMX)" in text and "no VNNI" in text
    # a CPU with VNNI: no advice to move to one, no missing instructions named
    assert "VNNI" not in (speed_warning(check, [*AVX2, "avx512_vnni"]) or "")


def _two_convs(pool: bool = False) -> onnx.ModelProto:
    """x (b, 4, 8, 8) → Conv 3×3 → Relu → Conv 1×1 → y: 9216 + 1024 multiply-adds per sample, 160 weights. With
    ``pool``, a reflect Pad and a 3×3 stride-2 MaxPool sit between the Relu and the second Conv (y: (b, 4, 4, 4)): the
    stem of timm's LambdaResNets as the port exports it."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w2")
    initializers = [w1, w2]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
    ]
    if pool:
        initializers.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
        nodes += [
            helper.make_node("Pad", ["r", "pads"], ["p"], name="pad", mode="reflect"),
            helper.make_node("MaxPool", ["p"], ["m"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
        ]
    nodes.append(helper.make_node("Conv", ["m" if pool else "r", "w2"], ["y"], name="conv2"))
    side = 4 if pool else 8
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, side, side])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_small_graph_int8_is_larger_and_says_why() -> None:
    model = _two_convs()
    assert node_macs(model) == {"conv1": 9216, "conv2": 1024}
    calibration = {"x": np.random.default_rng(1).normal(size=(8, 4, 8, 8)).astype(np.float32)}
    with Quantizer(model, calibration, "minmax", 4) as quantizer:
        int8 = quantizer.quantize(exclude=["conv2"])
    assert int8_macs(model, int8) == (9216, 10240)
    check = int8_speed(model, int8, {"x": calibration["x"][:4]}, budget_s=0.2, threads=1)
    record = check.to_dict()
    fields = record["benefit"]
    assert fields["int8_mac_share"] == 0.9 and fields["size_ratio"] > 1 and fields["smaller"] is False
    assert fields["speed_ratio"] == check.speedup and fields["faster"] is (check.speedup >= 1.0)
    assert "Q/DQ nodes with their scales and zero points add" in fields["reason"]
    assert fields["benefit"] is fields["faster"]  # larger: only speed could be a benefit
    assert set(record["kernels_ms"]) == {"float32", "int8"} and "int8 multiply-add" in record["kernels_ms"]["int8"]
    line = verdict_line({"verdict": PASSED, "speed": record})
    assert ("no benefit here: 90% of the multiply-adds in int8" in line) is (check.speedup < 1.0)
    assert f"{fields['size_ratio']:.0%} of the float32 size, {check.speedup:.2f}× its speed; why: " in line


def test_data_movement_between_float_nodes_stays_float() -> None:
    """Every compute node kept in float: no Q/DQ pair is left on a Relu or Pad between them (ONNX Runtime's quantizer
    put one on the Pad's tensors when only the compute nodes were excluded: an "int8" file as large as the float one,
    slower, and rounding its activations to 8 bits). With conv2 quantized, the movement next to it still is."""
    model = _two_convs(pool=True)
    calibration = {"x": np.random.default_rng(1).normal(size=(8, 4, 8, 8)).astype(np.float32)}
    with Quantizer(model, calibration, "minmax", 4) as quantizer:
        all_float = quantizer.quantize(exclude=["conv1", "conv2", "pool"])
        second = quantizer.quantize(exclude=["conv1"])
    assert not [n.op_type for n in all_float.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    quantized_inputs = {node.input[0] for node in second.graph.node if node.op_type == "QuantizeLinear"}
    assert quantized_inputs, "conv2 quantized: its input gets a QDQ pair"
