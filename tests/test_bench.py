"""The benchmark runs and writes well-formed results; the performance passes it measures are exact.

No timed assertions: only that the figures exist, are positive and are consistent with each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _check_entry(record: dict) -> None:
    assert record["status"] == "ok", record.get("reason")
    for key in ("latency", "ratios", "flops", "gflops", "export", "target", "tf_best", "max_abs_diff_vs_tf_graph"):
        assert key in record, key
    for name in ("tf_graph", "ort_portable"):
        stats = record["latency"][name]
        assert stats["n"] > 0
        assert 0 < stats["median_ms"] <= stats["p90_ms"]
    ratio = record["ratios"]["ort_portable/tf_best"]
    assert ratio["median"] > 0 and ratio["n"] >= 1
    assert all(value is None or value["median"] > 0 for value in record["ratios"].values())
    assert record["flops"]["total"] > 0
    assert record["export"]["portable"]["nodes"] > 0 and record["export"]["portable"]["file_bytes"] > 0
    assert max(record["max_abs_diff_vs_tf_graph"].values()) < 1e-3  # the timed graphs compute the same thing


def test_smoke_benchmark_writes_wellformed_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(out), "--no-results", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "bench.json").read_text())
    assert results["schema"] == "lambda-export/bench/v1"
    assert results["mode"] == "smoke"
    for key in ("environment", "settings", "method", "targets", "entries", "gpu", "export_cost", "summary"):
        assert key in results, key
    environment = results["environment"]
    assert environment["cpu_model"] and environment["threads"]["n"] == 2
    assert environment["threads"]["ort_intra_op"] == environment["threads"]["tf_intra_op"] == 2
    assert environment["versions"]["onnxruntime"] and environment["versions"]["tensorflow"]
    assert len(results["entries"]) == 1
    record = results["entries"][0]
    _check_entry(record)
    assert record["flops"]["total"] == record["flops"]["graph_count"]  # analytic count == count from the graph
    memory = record["memory"]
    for side in ("tf", "ort"):
        assert "error" not in memory[side], memory[side]
        assert memory[side]["peak_rss_mb"] > 0
    assert results["gpu"].get("skipped") in (True, False)
    if results["gpu"].get("skipped"):
        assert results["gpu"]["reason"]
    assert "| configuration |" in proc.stdout  # the Markdown table
    assert (out / "bench.md").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "chart skipped" in proc.stdout
    else:
        assert (out / "bench.png").stat().st_size > 0


def test_cli_bench_on_a_saved_model(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lambda_export.bench import LayerConfig
    from lambda_export.cli import cli

    assert "bench" in cli.commands
    model = LayerConfig("absolute", (4, 4), 8, d=16, k=4, h=4, u=2).build()
    path = tmp_path / "layer.keras"
    model.save(path)
    out = tmp_path / "layer.bench.json"
    args = ["bench", str(path), "--batch-sizes", "1,2", "--budget", "0.2", "--no-memory", "--out", str(out), "-q"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert results["mode"] == "model" and len(results["entries"]) == 2
    for record in results["entries"]:
        _check_entry(record)
    assert results["entries"][1]["export_reused"]  # batch 2 reuses the batch-1 exports (dynamic batch)
    assert "layer.keras b=1" in result.output


def test_layer_flops_match_the_exported_graph() -> None:
    from lambda_export.bench import LayerConfig, layer_flops, onnx_flops
    from lambda_export.conversion import convert

    for config in (
        LayerConfig("local", (6, 5), 8, d=16, k=4, h=2, u=3, r=3, batch=2),
        LayerConfig("relative", (4, 3), 8, d=16, k=4, h=4, u=2, batch=3),
        LayerConfig("absolute", (10,), 8, d=8, k=4, h=2, u=1, batch=1),
        LayerConfig("local", (12,), 8, d=8, k=4, h=2, u=2, r=5, batch=2),
    ):
        model = convert(config.build()).model
        assert onnx_flops(model, config.batch)["total"] == layer_flops(config)["total"], config.name


def test_interleaved_measurement_and_paired_ratios() -> None:
    from lambda_export.bench import measure_interleaved, paired_ratio

    calls = {"a": 0, "b": 0}

    def runner(name: str):
        def run() -> None:
            calls[name] += 1
            sum(range(2000 if name == "a" else 4000))

        return run

    measured = measure_interleaved(
        {"a": runner("a"), "b": runner("b")}, budget_s=0.0, min_rounds=4, max_rounds=4, block_s=0.001
    )
    assert len(measured["rounds"]) == 4
    assert all(set(r) == {"a", "b"} for r in measured["rounds"])
    assert len(measured["samples"]["a"]) == 4 * measured["block_runs"]["a"]
    ratio = paired_ratio(measured["rounds"], "a", "b")
    assert ratio is not None and ratio["n"] == 4 and ratio["p10"] <= ratio["median"] <= ratio["p90"]


def _run(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(
    "config_args",
    [
        ("local", (6, 6), 8, {"u": 4, "r": 3}),
        ("local", (6, 6), 8, {"u": 1, "r": 3}),
        ("relative", (5, 4), 8, {"u": 4}),
        ("absolute", (9,), 8, {"u": 2}),
        ("local", (16,), 8, {"u": 4, "r": 5}),
        ("local", (20,), 8, {"u": 1, "r": 7}),
    ],
)
def test_performance_passes_are_exact_and_portable(config_args: tuple) -> None:
    import copy
    import inspect

    from lambda_export.bench import LayerConfig
    from lambda_export.conversion import convert
    from lambda_export.rewrites import performance
    from lambda_export.targets import check_target

    mode, spatial, channels, extra = config_args
    config = LayerConfig(mode, spatial, channels, d=16, k=4, h=4, **extra)
    original = convert(config.build()).model
    optimized = copy.deepcopy(original)
    applied = []
    # thresholds at 0 so that the small test graphs take every rewrite the real sizes take
    for name, fn in performance.PERFORMANCE_PASSES:
        parameters = inspect.signature(fn).parameters
        kwargs = {key: value for key, value in (("min_elements", 0),) if key in parameters}
        if fn(optimized, **kwargs):
            applied.append(name)
    assert applied, "no pass applied: the test graph does not exercise the passes"
    import onnx

    onnx.checker.check_model(optimized, full_check=True)
    assert not check_target(optimized, "portable"), check_target(optimized, "portable")
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *spatial, channels)).astype(np.float32)
        expected, got = _run(original, x), _run(optimized, x)
        np.testing.assert_array_equal(got, expected)  # data movement and regrouped GEMMs: bit-identical


def test_split_slow_transposes_is_exact() -> None:
    import copy

    from lambda_export.bench import LayerConfig
    from lambda_export.conversion import convert
    from lambda_export.rewrites import performance

    config = LayerConfig("local", (24, 24), 8, d=16, k=4, h=4, u=4, r=3)
    original = convert(config.build()).model
    optimized = copy.deepcopy(original)
    slow = sum(node.op_type == "Transpose" for node in optimized.graph.node)
    assert performance.split_slow_transposes(optimized, min_elements=0)
    assert sum(node.op_type == "Transpose" for node in optimized.graph.node) > slow  # chains of fast moves
    x = np.random.default_rng(0).standard_normal((2, 24, 24, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(optimized, x), _run(original, x))  # pure data movement: bit-identical


def test_transpose_decomposition_realises_the_permutation() -> None:
    from itertools import permutations

    from lambda_export.rewrites.performance import _cheapest_moves

    shape = [2, 3, 4, 5, 6]
    x = np.arange(np.prod(shape)).reshape(shape)
    for perm in permutations(range(1, 5)):
        perm = [0, *perm]
        _, moves = _cheapest_moves(shape, perm)
        y = x
        for step in moves:
            y = np.transpose(y, step)
        np.testing.assert_array_equal(y, np.transpose(x, perm))


def force_performance_passes(model) -> list[str]:
    """Every performance pass on ``model`` in place with its size thresholds off (small test graphs then take the
    rewrites that real sizes take); returns the names of the passes that changed the graph."""
    import inspect

    from lambda_export.rewrites import performance

    forced = {"min_elements": 0, "max_density_loss": 1e9}
    applied = []
    for name, fn in performance.PERFORMANCE_PASSES:
        parameters = inspect.signature(fn).parameters
        if fn(model, **{key: value for key, value in forced.items() if key in parameters}):
            applied.append(name)
    return applied


def _direct_conv(x: np.ndarray, w: np.ndarray, pads: list[int]) -> np.ndarray:
    """Reference: ONNX Conv (cross-correlation, stride 1, zero padding) by explicit loops; x (C, *S), w (K, C, *R)."""
    rank = x.ndim - 1
    padded = np.pad(x, [(0, 0)] + [(pads[i], pads[rank + i]) for i in range(rank)])
    out_spatial = [padded.shape[1 + i] - w.shape[2 + i] + 1 for i in range(rank)]
    out = np.zeros((w.shape[0], *out_spatial))
    for index in np.ndindex(*out_spatial):
        window = padded[(slice(None), *(slice(i, i + k) for i, k in zip(index, w.shape[2:], strict=True)))]
        out[(slice(None), *index)] = np.tensordot(w, window, axes=rank + 1)
    return out


@pytest.mark.parametrize(
    ("spatial", "kernel", "pads", "channels", "outputs"),
    [
        ((5, 6), (3, 5), [1, 2, 1, 2], 2, 3),
        ((4, 4), (7, 7), [3, 3, 3, 3], 1, 4),  # kernel larger than the map: most taps see padding
        ((3, 5), (3, 3), [0, 2, 2, 0], 2, 2),  # asymmetric pads, still "same" size
        ((9,), (5,), [2, 2], 3, 2),
    ],
)
def test_dense_conv_matrix_is_the_convolution(spatial, kernel, pads, channels, outputs) -> None:
    from lambda_export.rewrites.performance import dense_conv_matrix

    rng = np.random.default_rng(len(spatial) * 10 + channels)
    w = rng.standard_normal((outputs, channels, *kernel))
    x = rng.standard_normal((channels, *spatial))
    expected = _direct_conv(x, w, pads).reshape(outputs, -1)  # k, s
    n = int(np.prod(spatial))
    by_ks = x.reshape(-1) @ dense_conv_matrix(w, spatial, pads, order="ks")
    by_sk = x.reshape(-1) @ dense_conv_matrix(w, spatial, pads, order="sk")
    np.testing.assert_allclose(by_ks.reshape(outputs, n), expected, rtol=0, atol=1e-12)  # fp64: rounding only
    np.testing.assert_allclose(by_sk.reshape(n, outputs).T, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("spatial", "extra", "data_format"),
    [
        ((8, 8), {"u": 1, "r": 23}, "channels_last"),
        ((6, 6), {"u": 4, "r": 9}, "channels_last"),
        ((8, 8), {"u": 1, "r": 23}, "channels_first"),
        ((12,), {"u": 2, "r": 23}, "channels_last"),
    ],
)
def test_conv_as_dense_matmul_on_local_lambda_layers(spatial, extra, data_format) -> None:
    """The small-map local lambda layer as one GEMM: same outputs as TensorFlow and as the Conv graph.

    Tolerance 1e-5 max abs on outputs of size O(1–10): the GEMM adds the same float32 products (and exact zeros) in
    another order; the Conv graph itself is ~3e-6 from TensorFlow.
    """
    import keras

    from lambda_export.conversion import convert
    from lambda_export.rewrites import performance
    from lambda_export.targets import check_target
    from lambda_layers.layers import LambdaNetwork1DConv, LambdaNetwork2DConv

    keras.utils.set_random_seed(3)
    channels = 8
    shape = (*spatial, channels) if data_format == "channels_last" else (channels, *spatial)
    cls = LambdaNetwork2DConv if len(spatial) == 2 else LambdaNetwork1DConv
    inputs = keras.Input(shape)
    layer = cls(16, key_depth=4, heads=4, intra_depth=extra["u"], receptive_kernel=extra["r"], data_format=data_format)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    reference = np.asarray(model(x))
    original = convert(model).model
    optimized = convert(model, optimize="speed").model
    assert "Conv" in {node.op_type for node in original.graph.node}
    assert "Conv" not in {node.op_type for node in optimized.graph.node}  # rewritten with the default thresholds
    props = {p.key: p.value for p in optimized.metadata_props}
    assert "conv_as_dense_matmul" in props["rewrite_passes"] and props["optimize"] == "speed"
    assert check_target(optimized, "portable") == []
    got, before = _run(optimized, x), _run(original, x)
    assert np.abs(before - reference).max() <= 1e-5
    assert np.abs(got - reference).max() <= 1e-5
    assert np.abs(got - before).max() <= 1e-5
    assert got.shape == reference.shape
    if len(spatial) == 2 and data_format == "channels_last" and extra["u"] == 1:
        # the (b, v, k, n) -> (b, n, k, v) transpose went into the matrix layout: no generic transpose is left
        perms = [list(a.ints) for n in optimized.graph.node if n.op_type == "Transpose" for a in n.attribute]
        assert all(performance._is_single_move(perm) for perm in perms), perms


def test_conv_as_dense_matmul_generic_conv_and_refusals() -> None:
    """A plain Keras Conv2D without the lambda pattern takes the generic (N, K, H, W) form; bias, stride and large
    maps are left alone."""
    import keras

    from lambda_export.conversion import convert
    from lambda_export.rewrites.performance import conv_as_dense_matmul

    keras.utils.set_random_seed(4)
    inputs = keras.Input((5, 5, 2))
    hidden = keras.layers.Conv2D(3, 7, padding="same", use_bias=False)(inputs)
    outputs = keras.layers.ReLU()(hidden)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).standard_normal((2, 5, 5, 2)).astype(np.float32)
    original = convert(model).model
    import copy

    optimized = copy.deepcopy(original)
    assert conv_as_dense_matmul(optimized)
    assert "Conv" not in {node.op_type for node in optimized.graph.node}
    np.testing.assert_allclose(_run(optimized, x), np.asarray(model(x)), rtol=0, atol=1e-5)

    for layer in (
        keras.layers.Conv2D(3, 7, padding="same", use_bias=True, bias_initializer="ones"),  # bias input
        keras.layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False),  # stride 2
        keras.layers.Conv2D(3, 3, padding="same", use_bias=False),  # 25 positions > 2 x 9 taps: Conv is cheaper
    ):
        keras.utils.set_random_seed(5)
        inputs = keras.Input((5, 5, 2))
        graph = convert(keras.Model(inputs, layer(inputs))).model
        assert not conv_as_dense_matmul(graph), layer.get_config()


def test_convert_rejects_unknown_optimize_mode() -> None:
    from lambda_export.conversion import convert
    from lambda_export.errors import InputError

    with pytest.raises(InputError, match="--optimize 'fast'"):
        convert(None, optimize="fast")  # checked before anything is loaded


@pytest.mark.parametrize(
    ("shape", "perm", "rewritten"),
    [
        ((5, 16, 40, 8), (0, 2, 3, 1), True),  # v (16) moves to the end: (b, 16, 320) -> (b, 320, 16)
        ((5, 16, 320), (0, 2, 1), True),
        ((5, 64, 320), (0, 2, 1), False),  # axis longer than max_axis: the GEMM would cost more than it saves
        ((5, 320, 16), (0, 2, 1), False),  # the long axis moves inwards: ORT's own kernel is fast there
    ],
)
def test_transpose_as_identity_matmul_is_exact(shape, perm, rewritten) -> None:
    import onnx
    from onnx import TensorProto, helper

    from lambda_export.rewrites.performance import transpose_as_identity_matmul

    out_shape = [shape[a] for a in perm]
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=list(perm)), helper.make_node("Relu", ["t"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape[1:]])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert transpose_as_identity_matmul(model, min_elements=0) is rewritten
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x), np.maximum(np.transpose(x, perm), 0))  # x * 1 + 0s: bit-exact
