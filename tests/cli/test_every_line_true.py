"""Every line the command line prints is true and said once (issue "Every line true", item 3).

* each warning once, on stderr, worded for the command line (``--calibration FILE.npz``, not ``calibration=``);
* ``inspect`` says ``opset 17``, not a dict;
* ``bench`` on a user's model shows the ratios without the project's targets, and says why OpenVINO's column is empty;
* ``verify`` warns when the ONNX file's metadata records another source than the model given;
* GPU providers that cannot exist on this machine are one quiet line, their reasons kept in the JSON.

The models are tiny Keras models made here (seconds to convert), not the trained demo.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_helpers import run_main

EXE = Path(sys.executable).parent / "lambda-export"
GENERATED = "no calibration samples given"
CONSTANT = "barely depends on its inputs"


def _save(path: Path, *, zero_kernel: bool, seed: int = 0) -> Path:
    """A (b, 8, 8, 3) → Conv2D 4 → (b, 8, 8, 4) model; ``zero_kernel``: its output is its bias whatever the input
    (the parity check warns that it cannot tell a right graph from a wrong one)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="images")
    conv = keras.layers.Conv2D(
        4, 3, padding="same", name="conv", kernel_initializer="zeros" if zero_kernel else "glorot_uniform"
    )
    keras.Model(inputs, conv(inputs)).save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("every-line")
    return {
        "tiny": _save(folder / "tiny.keras", zero_kernel=False),
        "other": _save(folder / "other.keras", zero_kernel=False, seed=1),
        "constant": _save(folder / "constant.keras", zero_kernel=True),
    }


FAST = ["--providers", "cpu", "--batch-sizes", "2", "--samples", "1"]


def _warnings(stderr: str) -> list[str]:
    return [line[len("warning: ") :] for line in stderr.splitlines() if line.startswith("warning: ")]


def _check_once(out: str, err: str, marker: str, flag: str, argument: str) -> None:
    """The warning containing ``marker``: on stderr, once across stdout and stderr, with ``flag`` and without the
    Python ``argument=``; every other warning once too."""
    warnings = _warnings(err)
    assert [w for w in warnings if marker in w], err
    for warning in warnings:
        assert (out + err).count(warning) == 1, (warning, out, err)
    (line,) = [w for w in warnings if marker in w]
    assert flag in line and f"{argument}=" not in out + err, line
    assert marker not in out, out


def test_int8_without_calibration_warns_once_on_stderr_with_the_flag(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the generated-inputs warning on stderr (``--calibration FILE.npz``) and again in the stdout table
    (``calibration=FILE.npz``), the target and speed warnings twice too."""
    out_file = tmp_path / "tiny.int8.onnx"
    code, out, err = run_main([str(models["tiny"]), "--quantize", "int8", "-o", str(out_file), *FAST], capsys)
    assert code in (0, 1), err  # the int8 verdict on generated inputs may fail: the warnings are the point
    _check_once(out, err, GENERATED, "--calibration FILE.npz", "calibration")
    assert "int8 verdict:" in out  # the tables are still printed, only without the warnings


def test_int8_warnings_once_in_a_real_subprocess(models: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    argv = [str(EXE), str(models["tiny"]), "--quantize", "int8", "-o", str(tmp_path / "t.onnx"), *FAST]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    _check_once(proc.stdout, proc.stderr, GENERATED, "--calibration FILE.npz", "calibration")


def test_parity_warning_once_on_stderr_with_the_flag(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``warning: output ... barely depends on its inputs`` in the stdout table only."""
    out_file = tmp_path / "constant.onnx"
    code, out, err = run_main([str(models["constant"]), "-o", str(out_file), *FAST], capsys)
    assert code == 0, err
    _check_once(out, err, CONSTANT, "--inputs FILE.npz", "inputs")
    # the JSON and the report file carry it, worded for the command line as well
    code, out, err = run_main([str(models["constant"]), "-o", str(out_file), "--force", "--json", *FAST], capsys)
    assert code == 0 and "warning:" not in err, err
    (warning,) = json.loads(out)["parity"]["warnings"]
    assert CONSTANT in warning and "--inputs FILE.npz" in warning


def test_the_python_api_words_warnings_with_its_arguments(models: dict[str, Path]) -> None:
    from lambda_export import convert, verify

    report = verify(str(models["constant"]), convert(str(models["constant"])).model, providers=["cpu"])
    (warning,) = report.warnings
    assert "inputs=FILE.npz" in warning and "--inputs" not in warning


def test_cli_warning_maps_api_arguments_to_flags() -> None:
    from lambda_export.cli.options import cli_warning
    from lambda_export.quantization.calibration import GENERATED_WARNING

    assert "calibration=FILE.npz" in GENERATED_WARNING
    text = cli_warning(GENERATED_WARNING)
    assert "(--calibration FILE.npz)" in text and "calibration=" not in text
    assert cli_warning("pass overwrite=True, fp16=True or seed=3; key=1 stays") == (
        "pass --force, --fp16 or --seed 3; key=1 stays"
    )


# -- inspect -----------------------------------------------------------------------------------------------------------


def test_inspect_says_opset_17(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: ``opset {'ai.onnx': 17}``."""
    from lambda_export.cli.inspect import opset_text

    onnx_file = tmp_path / "tiny.onnx"
    assert run_main([str(models["tiny"]), "-o", str(onnx_file), "--skip-verify"], capsys)[0] == 0
    code, out, err = run_main(["inspect", str(onnx_file)], capsys)
    assert code == 0, err
    first = out.splitlines()[0]
    assert ", opset 17, " in first and "{" not in first, first
    assert opset_text({"ai.onnx": 17, "ai.onnx.ml": 3}) == "opset 17, ai.onnx.ml 3"


# -- verify: the file's recorded source -----------------------------------------------------------------------------


def test_verify_warns_once_when_the_onnx_file_was_exported_from_another_model(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``verify model.h5 other.onnx`` said nothing of the metadata's ``source=other.keras``."""
    from lambda_export.loading import sha256_of

    onnx_file = tmp_path / "other.onnx"
    assert run_main([str(models["other"]), "-o", str(onnx_file), "--skip-verify"], capsys)[0] == 0
    code, out, err = run_main(["verify", str(models["tiny"]), str(onnx_file), *FAST], capsys)
    assert code == 1, err  # other weights: parity fails, and now the user knows why
    expected = (
        f"{onnx_file} was exported from other.keras (sha256 {sha256_of(models['other'])[:12]}…), not from "
        f"{models['tiny']} (sha256 {sha256_of(models['tiny'])[:12]}…)"
    )
    assert f"warning: {expected}" in err.splitlines()
    assert (out + err).count(expected) == 1
    code, out, err = run_main(["verify", str(models["tiny"]), str(onnx_file), "--json", *FAST], capsys)
    assert expected in json.loads(out)["parity"]["warnings"]
    # its own source: no warning
    code, out, err = run_main(["verify", str(models["other"]), str(onnx_file), *FAST], capsys)
    assert code == 0 and "was exported from" not in out + err, err


# -- providers that cannot exist here --------------------------------------------------------------------------------


def test_absent_gpu_providers_are_one_quiet_line_and_stay_in_the_json(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: every run on a machine without a GPU ended with ``skipped CUDA: ...`` and ``skipped TensorRT: ...``."""
    from lambda_export.ort import absent_here, resolve_providers

    _, skipped = resolve_providers(None)
    out_file = tmp_path / "tiny.onnx"
    args = [str(models["tiny"]), "-o", str(out_file), "--batch-sizes", "2", "--samples", "1"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    for provider, reason in skipped.items():
        short = provider.replace("ExecutionProvider", "").replace("Tensorrt", "TensorRT")
        assert (f"skipped {short}:" in out) == (absent_here(reason) is None), out
    if any(absent_here(reason) for reason in skipped.values()):
        assert re.search(r"^GPU providers: not available here \(.+\)$", out, re.M), out
    code, out, err = run_main([*args, "--force", "--json"], capsys)
    assert json.loads(out)["parity"]["providers_skipped"] == skipped  # complete, reasons and all
    code, out, err = run_main([*args, "--force", "-v"], capsys)
    for provider, reason in skipped.items():
        assert f"skipped {provider}: {reason}" in err  # -v says each and why


def test_a_provider_asked_for_is_still_an_error_with_its_reason(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lambda_export.ort import CUDA, provider_problem

    reason = provider_problem(CUDA)
    if reason is None:
        pytest.skip("CUDA runs here")
    code, _, err = run_main([str(models["tiny"]), "-o", str(tmp_path / "x.onnx"), "--providers", "cuda"], capsys)
    assert code == 2 and reason in err, err


def test_skipped_lines_keep_what_the_user_must_hear() -> None:
    from lambda_export.ort import absent_here
    from lambda_export.report import _skipped_providers

    broken = "CUDA / cuDNN libraries for onnxruntime-gpu 1.23 not found or unusable (ONNX Runtime fell back to the CPU)"
    absent, shown = _skipped_providers(
        {
            "CUDAExecutionProvider": broken,
            "TensorrtExecutionProvider": "onnxruntime-gpu not installed (this environment has the CPU-only package)",
        }
    )
    assert absent == "GPU providers: not available here (onnxruntime-gpu not installed)"
    assert shown == {"CUDAExecutionProvider": broken}
    absent, shown = _skipped_providers(
        {
            "CUDAExecutionProvider": "no NVIDIA device (ONNX Runtime fell back to the CPU)",
            "TensorrtExecutionProvider": "onnxruntime-gpu not installed",
        }
    )
    assert (
        absent == "GPU providers: not available here (CUDA: no NVIDIA device; TensorRT: onnxruntime-gpu not installed)"
    )
    assert shown == {}
    assert absent_here("cannot create a session: out of memory") is None


# -- bench -------------------------------------------------------------------------------------------------------------


def _bench_results(mode: str, openvino_error: str | None) -> dict:
    """A benchmark result with one entry, as the harness writes it (the fields the tables read)."""
    ratio = {"median": 0.8, "p10": 0.7, "p90": 0.9, "n": 10}
    latency = {name: {"median_ms": 1.0, "min_ms": 0.9} for name in ("tf_graph", "ort_portable")}
    record = {
        "name": "model.keras b=1",
        "status": "ok",
        "latency": latency,
        "ratios": {"ort_portable/tf_best": ratio},
        "tf_best": "tf_graph",
        "target": {"ratio": 0.5, "value": 0.8, "met": False},
        "flops": {"total": 1e6},
        "errors": {} if openvino_error is None else {"openvino": openvino_error},
    }
    return {"mode": mode, "entries": [record], "summary": {}}


def test_bench_table_of_a_users_model_has_no_target_and_says_openvino_is_missing() -> None:
    """Before: ``| ≤ 0.5 | ❌ |`` on a user's model, and ``–`` under OpenVINO without a word."""
    from lambda_export.bench.harness import OPENVINO_MISSING
    from lambda_export.bench.render import markdown_table

    text = markdown_table(_bench_results("model", OPENVINO_MISSING))
    header = next(line for line in text.splitlines() if line.startswith("| configuration | TF graph"))
    assert "target" not in header and "met" not in header
    assert "≤ 0.5" not in text and "❌" not in text and "✅" not in text
    assert "targets are judged" not in text and "target ≤" not in text
    assert "**0.800**" in text  # the ratio itself stays
    assert "OpenVINO: not installed (pip install 'lambda-export[openvino]')" in text.splitlines()
    # the project's own runs keep their targets; results written before said ModuleNotFoundError
    text = markdown_table(_bench_results("quick", "ModuleNotFoundError: No module named 'openvino'"))
    assert "| target | met |" in text and "| ≤ 0.5 | ❌ |" in text
    assert "OpenVINO: not installed (pip install 'lambda-export[openvino]')" in text
    assert "OpenVINO:" not in markdown_table(_bench_results("quick", None))


def test_bench_harness_says_openvino_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from lambda_export.bench import harness

    def missing(*args: object) -> None:
        raise ModuleNotFoundError("No module named 'openvino'", name="openvino")

    monkeypatch.setattr(harness, "openvino_runner", missing)
    runners = harness.Runners()
    settings = harness.BenchSettings(ceiling=False)
    prepared = SimpleNamespace(portable=SimpleNamespace(path="model.onnx"), inputs=[])
    harness._other_runners(runners, prepared, [], settings, 0)  # type: ignore[arg-type]
    assert runners.errors == {"openvino": harness.OPENVINO_MISSING}
