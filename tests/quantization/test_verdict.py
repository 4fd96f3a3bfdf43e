"""The int8 verdict's metrics and rule, the calibration sets, the node groups and the target table, on plain arrays and
hand-made graphs (no TensorFlow, well under a second)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export.errors import InputError
from lambda_export.graph import TensorInfo
from lambda_export.quantization import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    PRECISIONS,
    calibration_data,
    check_quantize_arguments,
    compare_output,
    node_groups,
)
from lambda_export.quantization.calibration import NO_HELD_OUT_WARNING
from lambda_export.quantization.verdict import check_thresholds, output_passes


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_classifier_agreement_cosine_and_recovered_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 6)) * 3
    noisy = logits + rng.standard_normal(logits.shape) * 0.01
    flipped = noisy.copy()
    flipped[0] = -flipped[0]  # one sample's answer changes
    metrics = compare_output(_softmax(logits), _softmax(flipped), softmax=True)
    assert metrics["classifier"] and metrics["agreement"] == pytest.approx(49 / 50)
    centered = logits - logits.mean(axis=1, keepdims=True)
    other = flipped - flipped.mean(axis=1, keepdims=True)
    expected = np.sum(centered * other, 1) / np.linalg.norm(centered, axis=1) / np.linalg.norm(other, axis=1)
    assert metrics["logits_cosine"] == pytest.approx(expected.mean(), abs=1e-9)  # log p − mean(log p): the logits
    assert metrics["logits_cosine_min"] == pytest.approx(expected.min(), abs=1e-9)
    assert metrics["cosine_min"] < metrics["cosine"] <= 1.0
    # probabilities rounded to exactly 0 lose the logits: no logits cosine then
    rounded = np.round(_softmax(noisy) * 255) / 255
    assert compare_output(_softmax(logits), rounded, softmax=True)["logits_cosine"] is None


def test_feature_maps_are_not_classifiers_and_problems_are_named() -> None:
    reference = np.ones((4, 3, 3, 2))
    metrics = compare_output(reference, reference * 2)
    assert not metrics["classifier"] and metrics["agreement"] is None
    assert metrics["cosine"] == pytest.approx(1.0) and metrics["max_abs"] == 1.0  # cosine ignores the scale
    assert compare_output(reference, reference[:2])["problem"].startswith("shape mismatch")
    bad = reference.copy()
    bad[0, 0, 0, 0] = np.nan
    assert compare_output(reference, bad)["problem"] == "NaN or Inf in the int8 output"
    zeros = compare_output(np.zeros((2, 3)), np.zeros((2, 3)))
    assert zeros["cosine"] == 1.0 and zeros["agreement"] == 1.0


def test_pass_rule() -> None:
    classifier = {"classifier": True, "agreement": 0.985, "cosine": 0.9999, "logits_cosine": 0.9985, "problem": None}
    passed, failures, cosine, on = output_passes(classifier, 0.99, None)
    assert not passed and failures == ["top-1 agreement 0.9850 < 0.99"] and on == "logits" and cosine == 0.9985
    assert output_passes(classifier, 0.98, None)[0]  # no cosine rule for a classifier unless asked for
    passed, failures, _, _ = output_passes(classifier, 0.98, 0.999)  # asked for: on the logits
    assert not passed and failures == ["cosine (logits) 0.998500 < 0.999"]
    features = {"classifier": False, "agreement": None, "cosine": 0.9989, "logits_cosine": None, "problem": None}
    assert output_passes(features, 0.99, None)[1] == ["cosine (output) 0.998900 < 0.999"]  # default 0.999
    assert output_passes(features, 0.99, 0.998)[0]
    assert not output_passes({**features, "problem": "NaN or Inf in the int8 output"}, 0.99, None)[0]


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan])
def test_thresholds_outside_0_1_are_refused(value: float) -> None:
    with pytest.raises(InputError, match="must be between 0 and 1"):
        check_thresholds(value, None)
    with pytest.raises(InputError, match="min_cosine"):
        check_thresholds(0.99, value)


def test_calibration_split_generated_and_fixed_batch() -> None:
    inputs = [TensorInfo("x", (None, 4), "float32")]
    samples = np.arange(40, dtype=np.float32).reshape(10, 4)
    data = calibration_data(inputs, {"x": samples})
    assert data.n_calibration == 8 and data.n_held_out == 2 and not data.generated
    assert np.array_equal(data.held_out["x"], samples[8:])  # the last ones are held out, never calibrated on
    assert "the last 2 of the 10 samples" in data.held_out_source
    apart = calibration_data(inputs, samples, held_out={"x": samples[:3]})  # one array for a one-input model
    assert apart.n_calibration == 10 and apart.n_held_out == 3
    single = calibration_data(inputs, {"x": samples[:1]})  # too few to hold any out: judged on itself, said so
    assert single.n_calibration == 1 and single.n_held_out == 0 and list(single.sets()) == ["calibration"]
    assert single.notes == [NO_HELD_OUT_WARNING] and single.held_out_source.startswith("none: 1 sample(s)")
    with pytest.raises(InputError, match="missing input"):
        calibration_data(inputs, {"y": samples})
    generated = calibration_data(inputs, None, seed=1)
    assert generated.generated and generated.n_calibration == 32 and generated.n_held_out == 16
    assert not np.array_equal(generated.calibration["x"][:16], generated.held_out["x"])
    fixed = calibration_data([TensorInfo("x", (4, 4), "float32")], {"x": samples})  # batch fixed to 4
    assert fixed.n_calibration == 4 and fixed.n_held_out == 4 and fixed.notes  # whole batches; 2 samples dropped
    assert np.array_equal(fixed.held_out["x"], samples[6:])


def test_fixed_batch_too_few_samples() -> None:
    """Fewer than one fixed batch is refused; fewer than two calibrate on one batch with nothing held out, and every
    sample left out is said."""
    inputs = [TensorInfo("x", (4, 2), "float32")]
    with pytest.raises(InputError, match="3 sample\\(s\\), but the model's batch is fixed to 4: give at least 4"):
        calibration_data(inputs, {"x": np.zeros((3, 2), np.float32)})
    data = calibration_data(inputs, {"x": np.zeros((6, 2), np.float32)})
    assert data.n_calibration == 4 and data.n_held_out == 0 and list(data.sets()) == ["calibration"]
    assert data.notes == [NO_HELD_OUT_WARNING, "2 calibration sample(s) dropped to fit the model's fixed batch of 4"]


def _graph() -> onnx.ModelProto:
    """x → MatMul(W) → Softmax → MatMul(·, x) → Add(b) → Transpose → y."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "model/block_lambda_1/position_embedding")
    b = numpy_helper.from_array(np.ones((4,), np.float32), "model/dense_1/bias")
    nodes = [
        helper.make_node("MatMul", ["x", w.name], ["a"], name="model/block_lambda_1/MatMul"),
        helper.make_node("Softmax", ["a"], ["s"], name="model/block_lambda_1/Softmax"),
        helper.make_node("MatMul", ["s", "x"], ["m"], name="model/block_lambda_1/MatMul_1"),
        helper.make_node("Add", ["m", b.name], ["z"], name="model/dense_1/BiasAdd"),
        helper.make_node("Transpose", ["z"], ["y"], name="model/out/Transpose", perm=[1, 0]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_node_groups_by_kind_and_by_layer_class() -> None:
    model = _graph()
    assert node_groups(model) == {
        "MatMul (weights)": ["model/block_lambda_1/MatMul"],
        "Softmax": ["model/block_lambda_1/Softmax"],
        "MatMul (activations)": ["model/block_lambda_1/MatMul_1"],
        "Add (output)": ["model/dense_1/BiasAdd"],  # its result is only transposed into the graph output
    }
    layers = {"block_lambda": "LambdaNetwork2DConv", "dense": "Dense"}
    assert list(node_groups(model, layers)) == [
        "LambdaNetwork2DConv: MatMul (weights, position)",  # reads the position embedding
        "LambdaNetwork2DConv: Softmax",
        "LambdaNetwork2DConv: MatMul (activations)",
        "Dense: Add (output)",
    ]


def test_targets_that_cannot_load_qdq_are_refused_or_warned() -> None:
    from lambda_export.targets import TARGETS, quantization_problem

    assert {name for name in TARGETS if quantization_problem(name)} == {"opencv4", "portable"}
    with pytest.raises(InputError, match=r"OpenCV DNN 4\.6") as info:
        check_quantize_arguments(target="opencv4")
    assert info.value.argument == "target"
    warnings = check_quantize_arguments(target="portable")
    assert len(warnings) == 1 and "OpenCV DNN 4.6" in warnings[0] and "OpenVINO" in warnings[0]
    for target in ("ort", "openvino", "opencv5"):
        assert check_quantize_arguments(target=target) == []
    with pytest.raises(InputError, match="calibration_method 'kl'"):
        check_quantize_arguments(calibration_method="kl")


def test_the_command_line_copies_match_the_library() -> None:
    """The CLI starts without onnx: its literal choices must stay equal to the library's."""
    from lambda_export.cli import options

    assert sorted(options.CALIBRATION_METHOD_CHOICES) == sorted(CALIBRATION_METHODS)
    assert options.QuantizeOptions().calibration_method == DEFAULT_CALIBRATION_METHOD
    assert list(options.QUANTIZE_CHOICES) == list(PRECISIONS)
    for argument in ("quantize", "calibration", "calibration_method", "min_agreement", "min_cosine"):
        assert options.FLAGS[argument] == "--" + argument.replace("_", "-")


def test_bench_int8_table() -> None:
    from lambda_export.bench.render import int8_lines

    record = {
        "name": "demo b=8",
        "status": "ok",
        "tf_best": "tf_graph",
        "latency": {
            "tf_graph": {"median_ms": 20.0},
            "ort_portable": {"median_ms": 10.0},
            "ort_int8": {"median_ms": 5.0},
        },
        "ratios": {
            "ort_int8/ort_portable": {"median": 0.5, "p10": 0.4, "p90": 0.6},
            "ort_int8/tf_best": {"median": 0.25},
        },
        "export": {
            "portable": {"file_mb": 4.0},
            "int8": {"file_mb": 1.0, "size_ratio": 0.25, "float_groups": ["Dense: Add"]},
        },
        "int8_max_abs_diff_vs_tf_graph": 0.01,
    }
    lines = int8_lines({"entries": [record]})
    row = next(line for line in lines if line.startswith("| demo b=8"))
    assert "| 20.00 | 10.00 | 5.00 | **0.500** (0.40–0.60) | 0.250 | 4.00 | 1.00 | 0.250 |" in row
    assert row.endswith("| Dense: Add |")
    assert int8_lines({"entries": [{**record, "latency": {"ort_portable": {"median_ms": 1.0}}}]}) == []


def test_int8_speed_warnings_follow_the_measurement_and_the_cpus_dot_product_instructions() -> None:
    from lambda_export import env
    from lambda_export.quantization.speed import SpeedCheck, cpu_warning, speed_warning

    avx2 = ["avx", "avx2", "fma"]
    assert env.int8_dot_product(avx2) is False
    assert env.int8_dot_product([*avx2, "avx512f", "avx512_vnni"]) is True
    assert env.int8_dot_product([*avx2, "avx_vnni"]) is True  # Alder Lake and later: VNNI without AVX-512
    assert env.int8_dot_product(["amx_int8", "amx_tile"]) is True
    warning = cpu_warning(avx2)
    assert warning and "no VNNI" in warning and "avx avx2" in warning and "lambda-export bench" in warning
    assert cpu_warning([*avx2, "avx512_vnni"]) is None
    # this machine: the warning is given exactly when its flags lack the instructions
    assert (cpu_warning() is not None) == (env.int8_dot_product() is False)

    slower = SpeedCheck(8, 2, float32_ms=6.84, int8_ms=7.75, speedup=0.89, speedup_p10=0.75, speedup_p90=0.92, rounds=9)
    text = speed_warning(slower, avx2)
    assert text and text.startswith("int8 ran slower than float32 here: int8 0.89x the float32 speed")
    assert "7.75 vs 6.84 ms per batch of 8, 2 thread(s)" in text and "no VNNI" in text
    assert "no VNNI" not in (speed_warning(slower, [*avx2, "avx_vnni"]) or "")  # slower for another reason
    faster = SpeedCheck(
        8, 2, float32_ms=260.1, int8_ms=140.2, speedup=1.83, speedup_p10=1.63, speedup_p90=2.53, rounds=9
    )
    assert speed_warning(faster, avx2) is None
