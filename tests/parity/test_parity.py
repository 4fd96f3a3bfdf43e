"""Parity engine: metrics, inputs, providers, verify on the demo model, divergence location, float16."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export import ort as lambda_ort
from lambda_export import parity
from lambda_export.errors import ConversionError, InputError, ProviderUnavailableError
from lambda_export.fp16 import emulate_fp16_rounding, to_float16
from lambda_export.loading import TensorInfo, load_model
from lambda_export.parity import (
    CPU,
    CUDA,
    TENSORRT,
    ParityReport,
    available_providers,
    compare,
    load_inputs,
    make_inputs,
    resolve_providers,
    session_providers,
    verify,
)

CUDA_USABLE = CUDA in available_providers()
NEEDS_CUDA = "needs CUDA GPU and onnxruntime-gpu"


@pytest.fixture(scope="module")
def loaded(demo_artifacts):
    return load_model(demo_artifacts["h5"])


@pytest.fixture(scope="module")
def demo_onnx(demo_artifacts) -> onnx.ModelProto:
    return onnx.load(str(demo_artifacts["onnx"]))


def _fast(loaded, model, **kwargs) -> ParityReport:
    options = {"providers": ["cpu"], "batch_sizes": (2,), "distributions": ("normal",), "loaded": loaded}
    options.update(kwargs)
    return verify(None, model, **options)


def _scaled(model: onnx.ModelProto, initializer: str, factor: float) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.name == initializer:
            init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * factor).astype(np.float32), init.name))
            return copy
    raise AssertionError(f"no initializer {initializer}")


def _weight_of(model: onnx.ModelProto, op_type: str, layer: str) -> str:
    """The weight initializer of the first `op_type` node that reads a weight named after Keras layer `layer`."""
    initializers = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != op_type:
            continue
        for name in node.input:
            if name in initializers and f"/{layer}_1/" in name:
                return name
    raise AssertionError(f"no {op_type} weight of {layer}")


# -- compare -------------------------------------------------------------------------------------------------------


def test_compare_hand_made_arrays():
    ref = np.array([1.0, 2.0, -4.0, 0.0], np.float32)
    cand = np.array([1.0, 2.001, -4.0, 5e-5], np.float32)
    m = compare(ref, cand, atol=1e-4, rtol=1e-3)
    assert m.passed and m.problem is None and m.size == 4
    assert m.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert m.max_rel == pytest.approx(5e-4, rel=1e-3)  # the zero reference does not count for max_rel
    assert m.mean_abs == pytest.approx((1e-3 + 5e-5) / 4, rel=1e-3)
    assert m.frac_within == 1.0
    assert m.min_passing_atol == pytest.approx(5e-5, rel=1e-3)  # set by the zero reference (rtol does not help)
    strict = compare(ref, cand, atol=1e-4, rtol=0.0)
    assert not strict.passed and strict.problem is None
    assert strict.frac_within == 0.75
    assert strict.min_passing_atol == pytest.approx(1e-3, rel=1e-3)
    assert compare(ref, cand, atol=strict.min_passing_atol, rtol=0.0).passed


def test_compare_nan_inf_and_shape_problems():
    ref = np.ones((2, 3), np.float32)
    bad = ref.copy()
    bad[1, 2] = np.nan
    m = compare(ref, bad, 1e-4, 1e-3)
    assert not m.passed and m.problem == "NaN in ONNX output (1 of 6 values)"
    assert m.min_passing_atol == float("inf") and m.frac_within == pytest.approx(5 / 6)
    inf_ref = ref.copy()
    inf_ref[0, 0] = np.inf
    m = compare(inf_ref, ref, 1e-4, 1e-3)
    assert not m.passed and m.problem.startswith("Inf in TF reference")
    both = compare(bad, bad, 1e-4, 1e-3)  # identical NaNs still fail
    assert not both.passed and "NaN in ONNX output" in both.problem and "NaN in TF reference" in both.problem
    m = compare(ref, np.ones((3, 2), np.float32), 1e-4, 1e-3)
    assert not m.passed and m.problem == "shape mismatch: ONNX output (3, 2) vs TF reference (2, 3)"
    assert m.to_dict()["max_abs"] is None  # not finite -> null in JSON
    with pytest.raises(InputError, match="atol"):
        compare(ref, ref, -1.0, 0.0)


# -- inputs --------------------------------------------------------------------------------------------------------

INFOS = [TensorInfo("x", (None, 3, 2), "float32"), TensorInfo("ids", (None, 5), "int32")]


def test_make_inputs_distributions_and_dtypes():
    normal = make_inputs(INFOS, 4, "normal", seed=7)
    again = make_inputs(INFOS, 4, "normal", seed=7)
    assert normal["x"].shape == (4, 3, 2) and normal["x"].dtype == np.float32
    assert np.array_equal(normal["x"], again["x"]) and np.array_equal(normal["ids"], again["ids"])
    assert normal["ids"].dtype == np.int32 and normal["ids"].min() >= 0 and normal["ids"].max() < parity.INT_HIGH
    uniform = make_inputs(INFOS, 64, "uniform", seed=1, int_high=3)
    assert uniform["x"].min() >= 0.0 and uniform["x"].max() < 1.0 and uniform["ids"].max() < 3
    assert not make_inputs(INFOS, 2, "zeros", seed=1)["x"].any()
    assert np.abs(make_inputs(INFOS, 8, "large", seed=1)["x"]).max() > 100
    with pytest.raises(InputError, match="unknown input distribution"):
        make_inputs(INFOS, 1, "cauchy", seed=0)
    with pytest.raises(InputError, match="unknown dims"):
        make_inputs([TensorInfo("img", (None, None, 3), "float32")], 1, "normal", seed=0)
    assert make_inputs([TensorInfo("fixed", (2, 3), "float32")], None, "normal", 0)["fixed"].shape == (2, 3)


def test_load_inputs_npz_and_npy(tmp_path, demo_artifacts):
    info = [TensorInfo(demo_artifacts["input_name"], (None, 32, 32, 3), "float32")]
    arrays = load_inputs(demo_artifacts["inputs"], info)
    assert arrays[info[0].name].shape == demo_artifacts["input_shape"]
    npy = tmp_path / "x.npy"
    np.save(npy, arrays[info[0].name].astype(np.float64))  # same kind: cast to the model's float32
    loaded_npy = load_inputs(npy, info)
    assert loaded_npy[info[0].name].dtype == np.float32


def _bad_inputs(tmp_path):
    good = np.zeros((2, 3, 2), np.float32)
    ids = np.zeros((2, 5), np.int32)
    nan = good.copy()
    nan[1, 0, 1] = np.nan
    inf = good.copy()
    inf[0, 0, 0] = np.inf
    return {
        "missing": ({"x": good}, "missing input"),
        "unknown": ({"x": good, "ids": ids, "extra": ids}, "unknown input name"),
        "shape": ({"x": np.zeros((2, 2, 3), np.float32), "ids": ids}, r"'x' has shape \(2, 2, 3\)"),
        "rank": ({"x": np.zeros((2, 3), np.float32), "ids": ids}, "'x' has shape"),
        "dtype": ({"x": good, "ids": ids.astype(np.float32)}, "'ids' has dtype float32"),
        "strings": ({"x": np.full((2, 3, 2), "a"), "ids": ids}, "'x' has dtype <U1"),
        "nan": ({"x": nan, "ids": ids}, r"'x' contains 1 NaN value\(s\) \(first at index \(1, 0, 1\)\)"),
        "inf": ({"x": inf, "ids": ids}, "'x' contains 1 Inf"),
        "batch": ({"x": good, "ids": np.zeros((3, 5), np.int32)}, "different batch sizes"),
    }


@pytest.mark.parametrize("case", ["missing", "unknown", "shape", "rank", "dtype", "strings", "nan", "inf", "batch"])
def test_load_inputs_rejects_bad_files(tmp_path, case):
    arrays, message = _bad_inputs(tmp_path)[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message) as info:
        load_inputs(path, INFOS)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_load_inputs_rejects_files(tmp_path):
    with pytest.raises(InputError, match="no such inputs file"):
        load_inputs(tmp_path / "none.npz", INFOS)
    text = tmp_path / "x.txt"
    text.write_text("1 2 3")
    with pytest.raises(InputError, match=r"\.npz .* or \.npy"):
        load_inputs(text, INFOS)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((2, 3, 2), np.float32))
    with pytest.raises(InputError, match=r"use a \.npz"):
        load_inputs(npy, INFOS)  # two inputs: a .npy cannot hold both
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot read the inputs"):
        load_inputs(pickled, INFOS[:1])
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="cannot read the inputs"):
        load_inputs(corrupt, INFOS)


# -- providers -----------------------------------------------------------------------------------------------------


def test_resolve_providers_names_and_defaults():
    assert resolve_providers(["cpu"]) == ([CPU], {})
    assert resolve_providers(["CPUExecutionProvider", "CPU"]) == ([CPU], {})
    run, skipped = resolve_providers(None)
    assert CPU in run
    for provider in (CUDA, TENSORRT):
        assert provider in run or skipped[provider]  # never silently missing: a reason is given
    if not CUDA_USABLE:
        assert CUDA in skipped and ("onnxruntime-gpu not installed" in skipped[CUDA] or "CUDA" in skipped[CUDA])
    with pytest.raises(InputError, match="unknown provider"):
        resolve_providers(["quantum"])
    with pytest.raises(InputError, match="at least one"):
        resolve_providers([])


def test_unavailable_provider_says_how_to_get_it():
    if CUDA_USABLE:
        pytest.skip("CUDA is usable here: the 'unavailable' message needs a machine without a CUDA GPU")
    with pytest.raises(ProviderUnavailableError) as info:
        resolve_providers(["cuda"])
    message = str(info.value)
    assert 'pip install "lambda-export[gpu]" in an environment without the onnxruntime package' in message
    assert "both install the same module" in message and "\n" not in message
    assert info.value.exit_code == 2


def test_session_providers_turn_tf32_off():
    assert session_providers(CPU) == [CPU]
    assert session_providers(CUDA) == [(CUDA, {"use_tf32": "0"}), CPU]
    assert session_providers(CUDA, tf32=True) == [(CUDA, {"use_tf32": "1"}), CPU]
    trt = session_providers(TENSORRT)
    assert trt[0][0] == TENSORRT and trt[1] == (CUDA, {"use_tf32": "0"}) and trt[-1] == CPU


def test_cuda_path_disables_tf32_on_both_sides(monkeypatch, loaded, demo_onnx):
    """The CUDA code path without a GPU: CUDA is faked as available and its session runs on the CPU."""
    import tensorflow as tf

    calls = []
    real_session = lambda_ort.session

    def fake_session(model_bytes, provider, tf32):
        calls.append(
            (
                provider,
                session_providers(provider, tf32=tf32),
                tf.config.experimental.tensor_float_32_execution_enabled(),
            )
        )
        return real_session(model_bytes, CPU, tf32=tf32)

    monkeypatch.setattr(lambda_ort, "provider_problem", lambda provider: None)
    monkeypatch.setattr(lambda_ort, "session", fake_session)
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    report = _fast(loaded, demo_onnx, providers=["cuda"])
    assert report.passed and report.providers_run == [CUDA] and report.tf32 is False
    assert calls and calls[0][1] == [(CUDA, {"use_tf32": "0"}), CPU] and calls[0][2] is False
    assert any("TF32 turned off" in note for note in report.notes)
    assert tf.config.experimental.tensor_float_32_execution_enabled() == before  # restored
    calls.clear()
    report = _fast(loaded, demo_onnx, providers=["cuda"], tf32=True)
    assert report.tf32 is True and calls[0][1] == [(CUDA, {"use_tf32": "1"}), CPU]
    assert any("TF32 left on" in note for note in report.notes)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_USABLE, reason=NEEDS_CUDA)
def test_demo_passes_on_cuda(loaded, demo_artifacts):
    report = verify(None, str(demo_artifacts["onnx"]), loaded=loaded, providers=["cuda", "cpu"], fp16=True)
    assert report.passed, [row.metrics for row in report.worst()]
    assert report.providers_run == [CUDA, CPU] and report.tf32 is False
    assert any("TF32 turned off" in note for note in report.notes)
    assert report.environment["gpu"]


# -- verify --------------------------------------------------------------------------------------------------------


def test_demo_passes_on_cpu(demo_artifacts):
    progress = []
    report = verify(str(demo_artifacts["h5"]), str(demo_artifacts["onnx"]), providers=["cpu"], progress=progress.append)
    assert report.passed, [row.metrics for row in report.worst()]
    assert report.providers_run == [CPU] and report.providers_skipped == {}
    assert len(report.results) == 4  # 2 batch sizes x 2 distributions x 1 sample x 1 output
    assert {(r.batch_size, r.distribution) for r in report.results} == {
        (1, "normal"),
        (1, "uniform"),
        (4, "normal"),
        (4, "uniform"),
    }
    assert all(r.metrics.truth.excess < 0.5 for r in report.results)  # half the allowance at most (measured ≤ 0.11)
    worst = report.worst()
    assert len(worst) == 1 and worst[0].output == demo_artifacts["output_name"]
    assert worst[0].metrics.max_abs < 1e-4  # the absolute rule's atol; measured 4.2e-6 on the softmax output
    assert report.first_divergent_layer is None and report.divergence == []
    assert {"python", "tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx", "ort_providers", "cpu", "cores"} <= set(
        report.environment
    )
    assert {"load", "reference", "total"} <= set(report.timings)
    assert progress and report.histograms[0].total == sum(r.metrics.size for r in report.results)
    seeds = [r.seed for r in report.results]
    again = verify(None, str(demo_artifacts["onnx"]), loaded=load_model(demo_artifacts["h5"]), providers=["cpu"])
    assert [r.seed for r in again.results] == seeds and len(set(seeds)) == 4


def test_verify_with_user_inputs(loaded, demo_artifacts, tmp_path):
    report = verify(
        None, str(demo_artifacts["onnx"]), loaded=loaded, providers=["cpu"], inputs=demo_artifacts["inputs"]
    )
    assert report.passed and len(report.results) == 1
    row = report.results[0]
    assert (row.distribution, row.batch_size, row.seed) == ("user", demo_artifacts["input_shape"][0], None)
    x = np.load(demo_artifacts["inputs"])[demo_artifacts["input_name"]]
    npy = tmp_path / "x.npy"
    np.save(npy, x[:3])
    report = verify(None, str(demo_artifacts["onnx"]), loaded=loaded, providers=["cpu"], inputs=str(npy))
    assert report.passed and report.results[0].batch_size == 3
    report = verify(
        None,
        str(demo_artifacts["onnx"]),
        loaded=loaded,
        providers=["cpu"],
        inputs={demo_artifacts["input_name"]: x[:1]},
    )
    assert report.passed and report.results[0].batch_size == 1
    with pytest.raises(InputError, match="has shape"):
        verify(
            None,
            str(demo_artifacts["onnx"]),
            loaded=loaded,
            providers=["cpu"],
            inputs={demo_artifacts["input_name"]: x[:, :16]},
        )


def test_verify_argument_errors(loaded, demo_onnx):
    with pytest.raises(InputError, match="locate"):
        _fast(loaded, demo_onnx, locate="sometimes")
    with pytest.raises(InputError, match="distribution"):
        _fast(loaded, demo_onnx, distributions=("cauchy",))
    with pytest.raises(InputError, match="samples"):
        _fast(loaded, demo_onnx, samples=0)
    with pytest.raises(InputError, match="batch size"):
        _fast(loaded, demo_onnx, batch_sizes=(0,))
    renamed = onnx.ModelProto()
    renamed.CopyFrom(demo_onnx)
    renamed.graph.input[0].name = "other"
    with pytest.raises(InputError, match="inputs"):
        _fast(loaded, renamed)


def test_nan_in_onnx_output_is_a_failure(loaded, demo_onnx):
    broken = _scaled(demo_onnx, _weight_of(demo_onnx, "Add", "predictions"), np.nan)
    report = _fast(loaded, broken, locate="never")
    assert not report.passed
    assert report.results[0].metrics.problem.startswith("NaN in ONNX output")
    assert report.histograms[0].nonfinite == report.results[0].metrics.size


def test_locate_always_on_the_healthy_demo(loaded, demo_onnx):
    report = _fast(loaded, demo_onnx, locate="always")
    assert report.passed and report.first_divergent_layer is None
    layers = [d.layer for d in report.divergence]
    assert len(layers) >= 18 and all(d.passed for d in report.divergence)
    assert max(d.truth.excess for d in report.divergence) < 0.5  # half the allowance at most (measured ≤ 0.16)
    assert {"stage1_block0_lambda", "predictions", "stem_bn", "avg_pool"} <= set(layers)
    lam = next(d for d in report.divergence if d.layer == "stage1_block0_lambda")
    assert lam.onnx_tensor.startswith("tiny_lambda_resnet_1/stage1_block0_lambda_1/") and lam.matched_by == "name"
    assert next(d for d in report.divergence if d.layer == "stem_bn").fused == ["stem_conv"]
    assert "fused" in report.unmatched_layers["stem_conv"]
    # batch norms folded into convolutions: the conv layers have no tensor of their own, and conv outputs are NCHW
    assert any(d.layout == "channels_first" for d in report.divergence)


@pytest.mark.parametrize(
    ("op_type", "owner", "expected"),
    [
        ("Conv", "stage1_block0_conv3", "stage1_block0_conv3"),  # deep: last convolution before the classifier
        ("MatMul", "stage1_block0_lambda", "stage1_block0_lambda"),  # a projection inside the lambda layer
        ("Conv", "stage0_block0_conv1", "stage0_block0_conv1"),  # early
    ],
)
def test_broken_weight_is_located(loaded, demo_onnx, op_type, owner, expected):
    weight = _weight_of(demo_onnx, op_type, owner)
    report = _fast(loaded, _scaled(demo_onnx, weight, 1.5))
    assert not report.passed
    assert report.first_divergent_layer == expected
    order = [d.layer for d in report.divergence]
    culprit = next(i for i, d in enumerate(report.divergence) if expected in (d.layer, *d.fused))
    assert all(d.passed for d in report.divergence[:culprit]), order[:culprit]
    # far from the allowance both ways (measured: the layers before ≤ 0.16 of it, the culprit ≥ 1.4e5×)
    assert all(d.truth.excess < 0.5 for d in report.divergence[:culprit]), order[:culprit]
    assert not report.divergence[culprit].passed and report.divergence[culprit].truth.excess > 10


# -- float16 -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightly_trained_demo(tmp_path_factory):
    """The demo model after 8 training steps (the suite's demo model is trained 40): the float16 tolerance (1e-2,
    see ParityConfig) was measured on it. The 40-step model's larger logits give float16 errors of ~3e-2."""
    from lambda_export import convert
    from lambda_layers import models

    model = models.build_demo_model(seed=0)
    models.train_demo_model(model, steps=8, seed=0)
    path = tmp_path_factory.mktemp("demo8") / "demo8.h5"
    model.save(path)
    return load_model(path), convert(str(path)).model


def test_fp16_passes_its_tolerance_on_the_demo(lightly_trained_demo, tmp_path):
    loaded, demo_onnx = lightly_trained_demo
    out = tmp_path / "demo_fp16.onnx"
    report = _fast(
        loaded, demo_onnx, fp16=True, batch_sizes=(1, 4), distributions=("normal", "uniform"), fp16_output=out
    )
    assert report.passed and report.fp16 and report.fp16_results
    assert {r.precision for r in report.fp16_results} == {"fp16", "fp16-emulated"}
    emulated = max(r.metrics.max_abs for r in report.fp16_results if r.precision == "fp16-emulated")
    assert 1e-6 < emulated < report.fp16_atol  # float16 rounding is visible but within tolerance (measured ~5e-4)
    half = report.fp16_model
    assert {init.data_type for init in half.graph.initializer if init.data_type in (1, 10)} == {TensorProto.FLOAT16}
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert onnx.load(str(out)).graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(h.precision == "fp16-emulated" for h in report.histograms)


def test_fp16_large_inputs_overflow_and_fail(loaded, demo_onnx):
    report = _fast(loaded, demo_onnx, fp16=True, distributions=("large",), locate="never")
    assert all(r.metrics.passed for r in report.results)  # float32 copes with 1e3-scale inputs
    assert not report.passed
    assert all(not r.metrics.passed and "ONNX fp16" in r.metrics.problem for r in report.fp16_results)


def _tiny(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    return session.run(None, feed)


def test_to_float16_io_casts_constants_and_block_list():
    w = numpy_helper.from_array(np.array([[1.5, -2.0], [3.0, 0.25]], np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["r", "nf"], ["y"]),
    ]
    model = _tiny(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    half = to_float16(model)
    inits = {i.name: i for i in half.graph.initializer}
    assert inits["w"].data_type == TensorProto.FLOAT16
    cast = next(n for n in half.graph.node if n.input == ["n"])
    assert cast.attribute[0].i == TensorProto.FLOAT16
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    feed = {"x": np.array([[1.0, 2.0]], np.float32), "n": np.array([[3, 4]], np.int64)}
    expected = _run(model, feed)[0]
    np.testing.assert_allclose(_run(half, feed)[0], expected, rtol=1e-3)
    big = numpy_helper.from_array(np.array([1e6, -1e6, 1e-9], np.float32), "big")
    scaled = to_float16(
        _tiny(
            [helper.make_node("Mul", ["v", "big"], ["out"])],
            [helper.make_tensor_value_info("v", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3])],
            [big],
        )
    )
    clamped = numpy_helper.to_array(scaled.graph.initializer[0])
    assert clamped.tolist() == [65504.0, -65504.0, 0.0]  # clamped to the largest float16, not Inf
    blocked = to_float16(model, op_block_list={"Relu"})
    relu = next(n for n in blocked.graph.node if n.op_type == "Relu")
    producers = {out: n for n in blocked.graph.node for out in n.output}
    assert producers[relu.input[0]].op_type == "Cast"  # back to float32 before the blocked op
    raw = to_float16(model, keep_io_types=False)
    assert raw.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert raw.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert _run(raw, {"x": feed["x"].astype(np.float16), "n": feed["n"]})[0].dtype == np.float16


def test_to_float16_keeps_float_only_inputs_and_refuses_control_flow():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = _tiny(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [scales],
    )
    half = to_float16(model, op_block_list=())  # Resize converted, but its `scales` input is tensor(float) only
    assert {i.name: i.data_type for i in half.graph.initializer}["scales"] == TensorProto.FLOAT
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(_run(half, {"x": x})[0], _run(model, {"x": x})[0])
    then = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    cond = _tiny(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then)],
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(ConversionError, match="control flow"):
        to_float16(cond)


def test_emulated_rounding_is_float32_and_rounds(demo_onnx):
    half = to_float16(demo_onnx)
    emulated = emulate_fp16_rounding(half)
    assert all(init.data_type != TensorProto.FLOAT16 for init in emulated.graph.initializer)
    casts = [n for n in emulated.graph.node if n.op_type == "Cast"]
    assert len(casts) > 2 * sum(n.op_type in ("Conv", "MatMul") for n in demo_onnx.graph.node)
    x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    name = demo_onnx.graph.input[0].name
    reference = _run(demo_onnx, {name: x})[0]
    got = _run(emulated, {name: x})[0]
    assert got.dtype == np.float32 and 0 < np.abs(got - reference).max() < 1e-2


def test_locate_in_a_nested_multi_output_model():
    """A nested model counts as one layer; a Dense whose MatMul carries the next batch norm's scale is no false alarm."""
    import keras

    from lambda_export.conversion import convert

    keras.utils.set_random_seed(1)
    features = keras.Input((8,), name="features")
    inner = keras.Model(
        features,
        keras.layers.ReLU(name="inner_relu")(keras.layers.Dense(8, name="inner_dense")(features)),
        name="inner",
    )
    x = keras.Input((12,), name="x")
    y = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(16, name="d1")(x))
    y = inner(keras.layers.Dense(8, activation="tanh", name="d2")(y))
    model = keras.Model(
        x, [keras.layers.Dense(4, activation="softmax", name="head")(y), keras.layers.Dense(2, name="aux")(y)]
    )
    bn = model.get_layer("bn")
    bn.set_weights([w + np.random.default_rng(0).random(w.shape).astype("float32") for w in bn.get_weights()])
    exported = convert(model).model
    assert any("_scaled" in init.name for init in exported.graph.initializer)  # the batch norm was folded
    healthy = verify(model, exported, providers=["cpu"], batch_sizes=(3,), distributions=("normal",), locate="always")
    assert healthy.passed and healthy.first_divergent_layer is None and len(healthy.results) == 2
    assert {"bn", "d2", "inner", "head", "aux"} <= {d.layer for d in healthy.divergence}
    assert "folded form" in healthy.unmatched_layers["d1"]  # MatMul(x, W·gamma/sigma) is not d1's output
    weight = next(i.name for i in exported.graph.initializer if "/inner_dense_1/" in i.name)
    broken = verify(
        model, _scaled(exported, weight, 1.5), providers=["cpu"], batch_sizes=(3,), distributions=("normal",)
    )
    assert not broken.passed and broken.first_divergent_layer == "inner"
