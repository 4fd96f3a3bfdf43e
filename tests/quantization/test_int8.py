"""``--quantize int8`` end to end on a small lambda model: the Python API, the command line, the metadata, OpenVINO.

The model (``build_small_model``) is a feature map model, so its verdict is the cosine rule (≥ 0.999 by default); the
classifier rule is tested on arrays in ``test_verdict.py``. Everything here runs in ~30 s on two cores: 8×8 images,
40 samples (32 calibrate, 8 are held out).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_main

INPUT = "images"


def build_small_model(seed: int = 0):  # -> keras.Model
    """(b, 8, 8, 3) → Conv2D 8 + ReLU → local lambda convolution (r=3, k=4, h=2) → ReLU → Conv2D 4: (b, 8, 8, 4)."""
    import keras
    from keras import layers

    from lambda_layers import LambdaNetwork2DConv

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name=INPUT)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = LambdaNetwork2DConv(8, key_depth=4, heads=2, intra_depth=1, receptive_kernel=3, name="lambda")(x)
    x = layers.ReLU(name="relu")(x)
    outputs = layers.Conv2D(4, 1, name="head")(x)
    return keras.Model(inputs, outputs, name="small")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small model saved as ``small.keras`` with 40 samples in ``samples.npz`` (uniform images in [0, 1))."""
    folder = tmp_path_factory.mktemp("int8")
    path = folder / "small.keras"
    build_small_model().save(path)
    samples = np.random.default_rng(3).random((40, 8, 8, 3)).astype(np.float32)
    np.savez(folder / "samples.npz", **{INPUT: samples})
    return {"keras": path, "samples": folder / "samples.npz", "x": samples, "folder": folder}


@pytest.fixture(scope="module")
def small_result(small_model: dict):  # -> lambda_export.QuantizeResult
    """``lambda_export.quantize`` of the small model on its samples (default settings, verdict taken), written."""
    from lambda_export import quantize

    return quantize(small_model["keras"], small_model["folder"] / "small.int8.onnx", calibration=small_model["samples"])


# -- the Python API ----------------------------------------------------------------------------------------------------


def test_quantize_passes_on_both_sets_in_onnx_runtime_and_openvino(small_result) -> None:
    """The int8 model is QDQ, its verdict passes on the calibration and held-out sets in ONNX Runtime and OpenVINO
    (OpenVINO is a dev dependency: its absence fails this test instead of skipping it)."""
    verdict = small_result.verdict
    assert small_result.passed is True, verdict.failures()
    assert verdict.runtimes_run == ["onnxruntime", "openvino"], verdict.runtimes_skipped
    assert {(row.runtime, row.set) for row in verdict.rows} == {
        (runtime, part) for runtime in ("onnxruntime", "openvino") for part in ("calibration", "held_out")
    }
    for row in verdict.rows:
        assert row.metrics["classifier"] is False and 0.999 <= row.cosine <= 1.0 and row.metrics["max_abs"] > 0
    ops = {node.op_type for node in small_result.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert small_result.calibration.n_calibration == 32 and small_result.calibration.n_held_out == 8


def test_int8_is_timed_against_float32_and_a_slower_int8_is_said(small_result) -> None:
    """The speed check: both models run in ONNX Runtime CPU on the same batch, and the warning follows the measured
    speed-up (whichever way this machine's int8 kernels go)."""
    speed = small_result.speed
    assert speed is not None and speed.rounds >= 5 and speed.batch == 16
    assert speed.float32_ms > 0 and speed.int8_ms > 0 and speed.speedup_p10 <= speed.speedup <= speed.speedup_p90
    # (no bound on how the paired median and the ratio of medians agree: on a busy machine that is noise, not a check)
    summary = small_result.summary()
    record = summary["speed"]
    assert record["runtime"] == "onnxruntime-cpu" and record["speedup"] == speed.speedup
    # what int8 brings, at the top of the record: the timed benefit, with the measured speed in it
    assert summary["benefit"] == record["benefit"] and summary["benefit"]["speed_ratio"] is not None
    slower = [w for w in small_result.warnings if w.startswith("int8 ran slower than float32 here")]
    assert bool(slower) == (speed.speedup < 1.0)


def test_size_floor_bounds_what_int8_weights_can_give(small_result) -> None:
    """benchmarks/quantize.py's size floor: the file with every float32 weight at a quarter of its bytes. The int8
    file, which adds scales, zero points and QDQ nodes, cannot be smaller."""
    from benchmarks.quantize import size_floor

    float_model = small_result.float_model
    from onnx import numpy_helper

    weights = sum(numpy_helper.to_array(i).nbytes for i in float_model.graph.initializer if i.data_type == 1)
    floor = size_floor(float_model)
    assert 0.25 < floor < 1 and weights > 0
    assert floor == pytest.approx(1 - 0.75 * weights / float_model.ByteSize(), abs=1e-9)
    assert small_result.int8_bytes / small_result.float_bytes >= floor


def test_sensitivity_is_measured_and_every_float_group_says_why(small_result) -> None:
    """Every kind of compute node is measured alone (or kept in float by a stated policy); what stays in float has a
    reason; the groups name the Keras layer class (the lambda layer's softmax and position convolution apart)."""
    groups = {group.group: group for group in small_result.selection.groups}
    assert {"Conv2D: Conv", "LambdaNetwork2DConv: Softmax", "LambdaNetwork2DConv: Conv (position)"} <= set(groups)
    assert "Conv2D: Conv (output)" in groups  # the head computes the graph output
    for group in groups.values():
        assert group.alone is not None or group.kept_float
        assert (group.reason is not None) == group.kept_float
    assert groups["Conv2D: Conv (output)"].kept_float
    assert small_result.selection.float_groups == [name for name, group in groups.items() if group.kept_float]
    assert any(not group.kept_float for group in groups.values())  # something is int8
    combined = small_result.selection.combined
    assert combined.cosine >= small_result.selection.goal_cosine


def test_metadata_records_the_settings_the_float_groups_and_the_verdict(small_result) -> None:
    written = onnx.load(small_result.path)
    metadata = {prop.key: prop.value for prop in written.metadata_props}
    assert metadata["quantization"] == "int8"
    assert metadata["quantization_format"] == "QDQ"
    assert metadata["quantization_calibration"].startswith("percentile on 32 samples of ")
    assert metadata["quantization_float_groups"] == ",".join(small_result.selection.float_groups)
    assert set(metadata["quantization_float_nodes"].split(",")) == set(small_result.selection.float_nodes)
    sensitivity = json.loads(metadata["quantization_sensitivity"])
    assert [entry["group"] for entry in sensitivity] == [group.group for group in small_result.selection.groups]
    assert all(entry["reason"] for entry in sensitivity if entry["kept_float"])
    assert metadata["quantization_verdict"].startswith("pass (")
    assert "onnxruntime, openvino" in metadata["quantization_verdict"]
    assert len(metadata["source_sha256"]) == 64  # the float32 export's provenance is kept
    assert metadata["quantization_tool"].startswith("onnxruntime.quantization ")


def test_openvino_runs_the_written_int8_file(small_result, small_model: dict) -> None:
    """The file itself, compiled by OpenVINO (f32 inference precision pinned), gives TensorFlow's answers."""
    import openvino as ov

    from lambda_export.loading import load_model
    from lambda_export.quantization import compare_output
    from lambda_export.quantization.verdict import tensorflow_outputs

    compiled = ov.Core().compile_model(str(small_result.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    held_out = small_model["x"][32:]
    got = np.asarray(compiled(held_out)[compiled.output(0)])
    (reference,) = tensorflow_outputs(load_model(small_model["keras"]), {INPUT: held_out}, 8)
    metrics = compare_output(reference, got)
    assert metrics["cosine"] >= 0.999 and metrics["max_abs"] < 0.1


def test_int8_verdict_function_and_an_impossible_threshold(small_result, small_model: dict) -> None:
    """``lambda_export.int8_verdict`` judges a written file; ``min_cosine=1.0`` cannot be met by a real int8 model and
    fails, naming the rows and the layers that add the most error."""
    from lambda_export import int8_verdict

    samples = {"held_out": small_model["samples"]}
    ok = int8_verdict(small_model["keras"], small_result.path, samples, runtimes=("onnxruntime",))
    assert ok.passed and [row.set for row in ok.rows] == ["held_out"]
    failed = int8_verdict(
        small_model["keras"],
        small_result.path,
        samples,
        min_cosine=1.0,
        runtimes=("onnxruntime",),
        float_model=small_result.float_model,
    )
    assert not failed.passed
    assert failed.failures() and "cosine (output)" in failed.failures()[0] and "< 1" in failed.failures()[0]
    assert failed.worst_layers and {"layer", "relative_error", "added"} <= set(failed.worst_layers[0])
    assert failed.worst_layers[0]["layer"] in {"conv", "lambda", "relu", "head"}


def test_generated_calibration_warns_loudly(small_model: dict) -> None:
    from lambda_export import quantize

    result = quantize(small_model["keras"], verify=False, sensitivity=False, timing=False, target="opencv5")
    assert result.calibration.generated and result.calibration.n_calibration == 32
    assert result.warnings[0].startswith("no calibration samples given") and "real samples" in result.warnings[0]
    from lambda_export import env

    # not timed, on a CPU without VNNI/AMX (this repository's AVX2 benchmark machine), where int8 can be slower: the
    # CPU's flags alone say so
    assert any("no int8 dot-product" in w for w in result.warnings) == (env.int8_dot_product() is False)
    assert result.verdict is None and result.path is None and result.speed is None
    metadata = {prop.key: prop.value for prop in result.model.metadata_props}
    assert "generated N(0, 1) inputs (not representative)" in metadata["quantization_calibration"]
    assert metadata["quantization_verdict"] == "not checked"


# -- the command line --------------------------------------------------------------------------------------------------


def test_cli_quantize_passes_with_exit_0_and_json_fields(
    small_model: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.html"
    args = [str(small_model["keras"]), "--quantize", "int8", "--calibration", str(small_model["samples"])]
    args += ["-o", str(out), "--target", "ort", "--providers", "cpu", "--batch-sizes", "2", "--report", str(report)]
    code, stdout, stderr = run_main([*args, "--json"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["verdict"] == "pass" and result["exit_code"] == 0
    quantization = result["quantization"]
    assert quantization["passed"] is True and quantization["verdict"]["passed"] is True
    assert quantization["calibration"]["samples"] == 32 and quantization["calibration"]["held_out_samples"] == 8
    assert quantization["settings"]["calibration_method"] == "percentile"
    assert quantization["size"]["int8_bytes"] > 0 and quantization["float_groups"]
    # a dynamic-batch export: timed at the verdict's evaluation batch (16)
    assert quantization["speed"]["speedup"] > 0 and quantization["speed"]["batch"] == 16
    assert {row["runtime"] for row in quantization["verdict"]["results"]} == {"onnxruntime", "openvino"}
    assert "INT8 quantization" in report.read_text() and "Sensitivity" in report.read_text()
    metadata = {prop.key: prop.value for prop in onnx.load(out).metadata_props}
    assert metadata["quantization"] == "int8" and metadata["target"] == "ort"
    # the same as a table: the verdict and the float groups are printed
    code, stdout, _ = run_main([*args, "--force"], capsys)
    assert code == 0 and "int8 verdict: PASS (accuracy) on onnxruntime, openvino — " in stdout
    assert "kept in float:" in stdout and "of the multiply-adds in int8" in stdout  # the verdict weighs the benefit
    assert quantization["benefit"]["int8_mac_share"] is not None and "benefit" in quantization["benefit"]
    assert "speed: int8 " in stdout and "x the float32 speed in ONNX Runtime CPU" in stdout


def test_cli_impossible_threshold_exits_1_and_names_the_worst_layers(
    small_model: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.onnx"
    args = [str(small_model["keras"]), "--quantize", "int8", "--calibration", str(small_model["samples"])]
    args += ["-o", str(out), "--target", "ort", "--providers", "cpu", "--batch-sizes", "2", "--min-cosine", "1.0"]
    code, stdout, stderr = run_main(args, capsys)
    assert code == 1, stderr
    assert "int8 verdict: FAIL" in stdout and "cosine (output)" in stdout and "< 1" in stdout
    assert "worst layer:" in stdout
    assert "PASS: " in stdout  # the float32 graph's parity itself holds: only the int8 verdict fails
    assert out.exists()  # like a parity failure, the file is kept (its metadata says the verdict failed)
    metadata = {prop.key: prop.value for prop in onnx.load(out).metadata_props}
    assert metadata["quantization_verdict"].startswith("fail (")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        (b"PK\x03\x04 not really a zip archive", "cannot read the inputs"),
        ("wrong-name", "missing input(s) images"),
        ("empty", "input 'images' holds 0 samples (shape (0, 8, 8, 3)): give at least one"),
    ],
)
def test_cli_bad_calibration_file_exits_2_with_one_line_and_no_output(
    small_model: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, expected: str
) -> None:
    calibration = tmp_path / "samples.npz"
    if content == "wrong-name":
        np.savez(calibration, pixels=small_model["x"])
    elif content == "empty":
        np.savez(calibration, images=small_model["x"][:0])
    elif isinstance(content, bytes):
        calibration.write_bytes(content)
    out = tmp_path / "out.onnx"
    args = [str(small_model["keras"]), "--quantize", "int8", "--calibration", str(calibration), "-o", str(out)]
    code, _, stderr = run_main([*args, "--target", "ort"], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lambda-export: error: --calibration") and expected in lines[0]
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == (
        [] if content is None else ["samples.npz"]
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--target", "opencv4"], "cannot run an int8 model: OpenCV DNN 4.6 cannot load int8 QDQ models"),
        (["--target", "ort", "--min-agreement", "1.5"], "--min-agreement 1.5: must be between 0 and 1"),
        (["--target", "ort", "--calibration-method", "kl"], "Invalid value for '--calibration-method'"),
    ],
)
def test_cli_refuses_bad_quantize_options_before_any_work(
    small_model: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    out = tmp_path / "out.onnx"
    code, _, stderr = run_main([str(small_model["keras"]), "--quantize", "int8", "-o", str(out), *args], capsys)
    assert code == 2 and expected in stderr and not out.exists()


def test_cli_calibration_without_quantize_is_refused(
    small_model: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = run_main(
        [str(small_model["keras"]), "--calibration", str(small_model["samples"]), "-o", str(tmp_path / "o.onnx")],
        capsys,
    )
    assert code == 2 and "--calibration is only used with --quantize int8" in stderr


# -- the examples' runtimes --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def held_out_files(small_result, small_model: dict) -> dict:
    """The held-out images (.npz) and TensorFlow's outputs on them (.npz keyed by output name)."""
    from lambda_export.loading import load_model
    from lambda_export.quantization.verdict import tensorflow_outputs

    held_out = small_model["x"][32:]
    (reference,) = tensorflow_outputs(load_model(small_model["keras"]), {INPUT: held_out}, 8)
    folder = Path(small_model["folder"])
    np.savez(folder / "held_out.npz", **{INPUT: held_out})
    output = small_result.model.graph.output[0].name
    np.savez(folder / "reference.npz", **{output: reference})
    return {"inputs": folder / "held_out.npz", "reference": folder / "reference.npz", "x": held_out, "y": reference}


def test_the_openvino_example_runs_the_int8_file(small_result, held_out_files: dict, tmp_path: Path) -> None:
    """examples/openvino/infer.py (f32 inference precision pinned) loads and runs the int8 file."""
    import subprocess
    import sys

    report = tmp_path / "openvino.json"
    command = [sys.executable, str(ROOT / "examples" / "openvino" / "infer.py"), "--model", str(small_result.path)]
    command += ["--inputs", str(held_out_files["inputs"]), "--reference", str(held_out_files["reference"])]
    command += ["--precision", "f32", "--runs", "1", "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(report.read_text())["runs"]
    assert run["reported"] == "f32" and 0 < run["max_abs_error"] < 0.1


_WASM_PROBE = """
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
const [packageJson, model, input, shape] = process.argv.slice(2);
const ort = createRequire(packageJson)('onnxruntime-web');
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(readFileSync(model), { executionProviders: ['wasm'] });
const data = new Float32Array(readFileSync(input).buffer.slice(0));
const dims = shape.split(',').map(Number);
const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', data, dims) });
process.stdout.write(JSON.stringify(Array.from(out[session.outputNames[0]].data)));
"""


def test_onnxruntime_web_wasm_runs_the_int8_file(small_result, held_out_files: dict, tmp_path: Path) -> None:
    """onnxruntime-web's WASM backend (the browser example's) runs the QDQ file with TensorFlow's answers."""
    import shutil
    import subprocess

    from conftest import require

    from lambda_export.quantization import compare_output

    package = ROOT / "examples" / "browser" / "node_modules" / "onnxruntime-web" / "package.json"
    require(
        shutil.which("node") is not None and package.exists(),
        "Node.js and the browser example's npm packages",
        "apt-get install -y nodejs npm && (cd examples/browser && npm ci)",
    )
    probe = tmp_path / "probe.mjs"
    probe.write_text(_WASM_PROBE)
    x = np.ascontiguousarray(held_out_files["x"], dtype=np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    command = ["node", str(probe), str(package), str(small_result.path), str(tmp_path / "x.bin")]
    done = subprocess.run(
        [*command, ",".join(map(str, x.shape))], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.asarray(json.loads(done.stdout), dtype=np.float32).reshape(held_out_files["y"].shape)
    assert compare_output(held_out_files["y"], got)["cosine"] >= 0.999
