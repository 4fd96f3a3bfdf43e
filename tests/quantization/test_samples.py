"""Users' samples as they have them: any sample count with every calibration method, one unnamed array (``arr_0``)
for a one-input model, and files that do not fit the model refused in one line before any conversion.

A tiny model (8×8×3 → Conv2D → lambda convolution → Conv2D), converted once; each quantization here skips the
verdict, the sensitivity measurement and the timing, so it takes a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_main

from lambda_export.errors import EXIT_USAGE, InputError
from lambda_export.graph import TensorInfo
from lambda_export.parity import load_inputs
from lambda_export.quantization import CALIBRATION_METHODS, load_calibration
from lambda_export.quantization.calibration import NO_HELD_OUT_WARNING, equal_batch

INPUT = "images"


def _build(seed: int = 0):  # -> keras.Model
    """(b, 8, 8, 3) → Conv2D 8 + ReLU → local lambda convolution (r=3, k=4, h=2) → Conv2D 4."""
    import keras
    from keras import layers

    from lambda_layers import LambdaNetwork2DConv

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name=INPUT)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = LambdaNetwork2DConv(8, key_depth=4, heads=2, intra_depth=1, receptive_kernel=3, name="lambda")(x)
    outputs = layers.Conv2D(4, 1, name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny model saved as ``tiny.keras``, loaded, and its float32 export (in memory and as ``tiny.onnx``)."""
    from lambda_export import convert
    from lambda_export.loading import load_model

    folder = tmp_path_factory.mktemp("samples")
    path = folder / "tiny.keras"
    _build().save(path)
    loaded = load_model(path)
    converted = convert(path, folder / "tiny.onnx", loaded=loaded)
    return {"keras": path, "loaded": loaded, "onnx": converted.model, "onnx_path": folder / "tiny.onnx"}


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 8, 8, 3)).astype(np.float32)


def test_equal_batch_divides_the_count() -> None:
    assert [equal_batch(n, 16) for n in (128, 103, 96, 37, 30, 1, 7)] == [16, 1, 16, 1, 15, 1, 7]
    assert equal_batch(8, 4) == 4  # a fixed batch of 4 on whole batches stays 4
    with pytest.raises(ValueError):
        equal_batch(0, 16)


@pytest.mark.parametrize("count", [128, 37, 1])
@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_every_method_calibrates_any_sample_count(tiny: dict, method: str, count: int) -> None:
    """128 samples (103 calibrate: 6 batches of 16 and one of 7), a prime 37 and a single sample: ONNX Runtime's
    histogram calibrators (entropy, percentile) failed on a last, shorter batch. Every sample is used."""
    from lambda_export import quantize

    result = quantize(
        tiny["loaded"],
        onnx_model=tiny["onnx"],
        calibration={INPUT: _images(count)},
        calibration_method=method,
        verify=False,
        sensitivity=False,
        timing=False,
        target="opencv5",
    )
    ops = {node.op_type for node in result.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    data = result.calibration
    assert data.n_calibration + data.n_held_out == count  # nothing dropped
    assert data.n_held_out == (0 if count == 1 else max(1, count // 5))
    assert (NO_HELD_OUT_WARNING in result.warnings) == (count == 1)


def test_a_single_sample_is_judged_on_itself_with_a_warning(tiny: dict) -> None:
    from lambda_export import quantize

    result = quantize(
        tiny["loaded"],
        onnx_model=tiny["onnx"],
        calibration={INPUT: _images(1)},
        runtimes=("onnxruntime",),
        sensitivity=False,
        timing=False,
        target="opencv5",
    )
    assert result.verdict is not None and {row.set for row in result.verdict.rows} == {"calibration"}
    assert result.summary()["calibration"]["held_out_samples"] == 0 and NO_HELD_OUT_WARNING in result.warnings


# -- one unnamed array ---------------------------------------------------------------------------------------------


def test_an_unnamed_array_is_the_input_of_a_one_input_model(tiny: dict, tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    np.savez(path, _images(5))  # stored as arr_0
    inputs = tiny["loaded"].inputs
    assert list(load_calibration(path, inputs)) == [INPUT]
    assert load_inputs(path, inputs)[INPUT].shape == (5, 8, 8, 3)


MULTI = [TensorInfo("x", (None, 3, 2), "float32"), TensorInfo("ids", (None, 5), "int32")]


def test_unnamed_arrays_for_a_multi_input_model_say_what_is_needed(tmp_path: Path) -> None:
    path = tmp_path / "two.npz"
    np.savez(path, np.zeros((4, 3, 2), np.float32), np.zeros((4, 5), np.int32))
    message = (
        "it holds unnamed array(s) 'arr_0' (4×3×2 float32), 'arr_1' (4×5 int32) (np.savez without names), but the "
        "model's inputs are 'x' (None×3×2 float32), 'ids' (None×5 int32): save one array per input by name, e.g. "
        "np.savez(path, x=..., ids=...)"
    )
    for load in (load_inputs, load_calibration):
        with pytest.raises(InputError) as info:
            load(path, MULTI)
        assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({}, "it holds no arrays; the model's inputs are 'x' (None×3×2 float32), 'ids' (None×5 int32)"),
        (
            {"x": np.zeros((4, 3, 2), np.float32), "ids": np.zeros((3, 5), np.int32)},
            "inputs 'x' and 'ids' have different batch sizes (4 and 3 samples)",
        ),
        (
            {"x": np.zeros((4, 3, 2), np.float32), "ids": np.full((4, 5), 2**40, np.int64)},
            "input 'ids' has int64 values in [1099511627776, 1099511627776], beyond int32's range",
        ),
        (
            {"x": np.full((4, 3, 2), 1e300), "ids": np.zeros((4, 5), np.int32)},
            "input 'x' has float64 values beyond float32's range",
        ),
        ({"x": np.zeros((3, 2), np.float32), "ids": np.zeros((1, 5), np.int32)}, "one sample without the batch dim?"),
        (
            {"x": np.zeros((0, 3, 2), np.float32), "ids": np.zeros((0, 5), np.int32)},
            "input 'x' holds 0 samples (shape (0, 3, 2)): give at least one",
        ),
    ],
)
def test_files_that_do_not_fit_are_refused_in_one_line(tmp_path: Path, arrays: dict, expected: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError) as info:
        load_inputs(path, MULTI)
    assert expected in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


# -- the command line: odd counts work, bad files exit 2 before the conversion -------------------------------------


def test_cli_odd_unnamed_calibration_with_entropy(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """37 samples saved without a name, ``--calibration-method entropy``: an int8 model, every sample used."""
    import json

    calibration = tmp_path / "calib.npz"
    np.savez(calibration, _images(37))
    out = tmp_path / "out.onnx"
    args = [str(tiny["keras"]), "--quantize", "int8", "--calibration", str(calibration), "-o", str(out)]
    code, stdout, stderr = run_main([*args, "--calibration-method", "entropy", "--skip-verify", "--json"], capsys)
    assert code == 0, stderr
    calibration_record = json.loads(stdout)["quantization"]["calibration"]
    assert calibration_record["samples"] + calibration_record["held_out_samples"] == 37 and out.exists()


def test_cli_odd_unnamed_inputs_for_parity(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``verify`` with 7 parity inputs saved without a name: checked as one batch of 7."""
    import json

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, _images(7, seed=1))
    args = ["verify", str(tiny["keras"]), str(tiny["onnx_path"]), "--inputs", str(inputs), "--providers", "cpu"]
    code, stdout, stderr = run_main([*args, "--json"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["verdict"] == "pass" and result["parity"]["settings"]["batch_sizes"] == [7], result


@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call to the converter fails the test: the file must be refused before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the conversion started before the file was checked")

    monkeypatch.setattr("lambda_export.conversion.convert", refuse)


@pytest.mark.parametrize(
    ("flag", "arrays", "extra", "expected"),
    [
        (
            "--calibration",
            {"foo": _images(12)},
            [],
            "missing input(s) images; it holds 'foo' (12×8×8×3 float32), the model's inputs are 'images' "
            "(None×8×8×3 float32)",
        ),
        (
            "--calibration",
            {INPUT: np.zeros((12, 8, 8, 1), np.float32)},
            [],
            "input 'images' has shape (12, 8, 8, 1); the model expects (?, 8, 8, 3)",
        ),
        ("--calibration", {INPUT: np.full((12, 8, 8, 3), "a")}, [], "input 'images' has dtype <U1"),
        ("--calibration", {INPUT: _images(3)}, ["--batch-size", "4"], "3 sample(s), but the batch is fixed to 4"),
        (
            "--inputs",
            {"foo": _images(3)},
            [],
            "missing input(s) images; it holds 'foo' (3×8×8×3 float32), the model's inputs are 'images'",
        ),
        (
            "--inputs",
            {INPUT: _images(7)},
            ["--batch-size", "4"],
            "the model's batch is fixed to 4, so give exactly 4 samples",
        ),
    ],
)
def test_cli_refuses_a_file_that_does_not_fit_before_converting(
    tiny: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_conversion: None,
    flag: str,
    arrays: dict,
    extra: list[str],
    expected: str,
) -> None:
    path = tmp_path / "samples.npz"
    np.savez(path, **arrays)
    out = tmp_path / "out.onnx"
    args = [str(tiny["keras"]), flag, str(path), "-o", str(out), *extra]
    if flag == "--calibration":
        args += ["--quantize", "int8", "--target", "ort"]
    code, _, stderr = run_main(args, capsys)
    lines = stderr.strip().splitlines()
    assert code == EXIT_USAGE and len(lines) == 1, stderr
    assert lines[0].startswith(f"lambda-export: error: {flag} {path}: ") and expected in lines[0], lines[0]
    assert not out.exists()


def test_quantize_checks_the_calibration_before_converting(tiny: dict, tmp_path: Path, no_conversion: None) -> None:
    from lambda_export import quantize

    path = tmp_path / "calib.npz"
    np.savez(path, foo=_images(4))
    with pytest.raises(InputError, match=r"missing input\(s\) images; it holds 'foo' \(4×8×8×3 float32\)"):
        quantize(tiny["loaded"], calibration=path, target="ort")
