"""The `lambda-export` command line: in-process (``main`` / Click's CliRunner) and as a real installed subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_main
from click.testing import CliRunner
from onnx import numpy_helper

from lambda_export import cli as cli_module

EXE = Path(sys.executable).parent / "lambda-export"


def run_exe(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (pip install put it next to the interpreter)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture()
def workdir(tmp_path: Path, demo_artifacts: dict) -> Path:
    shutil.copy(demo_artifacts["h5"], tmp_path / "demo.h5")
    return tmp_path


def test_help_documents_exit_codes() -> None:
    result = CliRunner().invoke(cli_module.cli, ["--help"])
    assert result.exit_code == 0
    for code in ("0 parity holds", "1 parity failed", "2 bad usage", "3 conversion failed"):
        assert code in result.output
    for verb in ("verify", "inspect", "demo", "export"):
        assert verb in result.output
    export_help = CliRunner().invoke(cli_module.cli, ["export", "--help"]).output
    for option in (
        "--opset",
        "--batch-size",
        "--input-shape",
        "--target",
        "--providers",
        "--atol",
        "--rtol",
        "--inputs",
        "--samples",
        "--seed",
        "--fp16",
        "--import",
        "--report",
        "--json",
        "--force",
        "--trust-code",
        "--quiet",
        "--verbose",
    ):
        assert option in export_help, option


def test_installed_script_version_and_help() -> None:
    assert EXE.exists(), "pip install -e . should put lambda-export next to the interpreter"
    version = run_exe("--version", timeout=60)
    assert version.returncode == 0 and "lambda-export" in version.stdout
    assert run_exe("--help", timeout=60).returncode == 0


def test_export_json_success_and_schema(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main([str(workdir / "demo.h5"), "--json", "--report", str(workdir / "r.html")], capsys)
    assert code == 0, err
    result = json.loads(out)  # stdout holds only the JSON document
    assert result["schema"] == "lambda-export/result/v1"
    assert result["verdict"] == "pass" and result["exit_code"] == 0
    assert Path(result["onnx"]) == workdir / "demo.onnx" and (workdir / "demo.onnx").exists()
    conversion = result["conversion"]
    assert conversion["nodes"] > 0 and conversion["op_histogram"]
    assert "Einsum" not in conversion["op_histogram"]
    assert conversion["inputs"][0]["name"] == "images"
    parity = result["parity"]
    assert parity["passed"] is True
    assert "CPUExecutionProvider" in parity["providers_run"]
    for row in parity["results"]:  # within half the allowance, not at its edge (measured ≤ 0.11 of it)
        errors = row["metrics"]["vs_float64"]
        assert errors["onnx_max"] < errors["allowed_max"] / 2 and errors["onnx_rms"] < errors["allowed_rms"] / 2
    html = (workdir / "r.html").read_text()
    assert "<svg" in html and "http://" not in html and "https://" not in html


def test_refuses_to_overwrite_without_force(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = workdir / "existing.onnx"
    target.write_bytes(b"previous output")
    code, _, err = run_main([str(workdir / "demo.h5"), "-o", str(target), "--skip-verify"], capsys)
    assert code == 2
    assert "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == b"previous output"
    code, _, err = run_main([str(workdir / "demo.h5"), "-o", str(target), "--skip-verify", "--force"], capsys)
    assert code == 0, err
    onnx.checker.check_model(onnx.load(str(target)))
    assert not [p for p in workdir.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["missing.h5"], "no such file"),
        (["demo.h5", "--target", "nowhere"], "nowhere"),
        (["demo.h5", "--opset", "9"], "9"),
        (["demo.h5", "--input-shape", "nosuch=?,32,32,3", "--skip-verify"], "unknown input"),
        (["demo.h5", "--report", "report.txt"], ".json or .html"),
        (["inspect", "missing.onnx"], "no such file"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    code, _, err = run_main(args, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lambda-export: error:"), err
    assert expected in lines[0]
    assert "Traceback" not in err


def test_conversion_failure_exits_3(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ConversionError anywhere in the pipeline maps to exit code 3 with a one-line message."""
    from lambda_export import conversion
    from lambda_export.errors import ConversionError

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ConversionError("TensorFlow op(s) with no ONNX conversion: FakeOp (model/fake)")

    monkeypatch.setattr(conversion, "_tf2onnx_convert", broken)
    code, _, err = run_main([str(workdir / "demo.h5"), "-o", str(workdir / "x.onnx")], capsys)
    assert code == 3
    assert "FakeOp" in err and not (workdir / "x.onnx").exists()


def _perturb_weight(source: Path, target: Path, name_part: str, factor: float = 1.5) -> str:
    """Copy an ONNX file with one initializer (the first whose name contains name_part) multiplied by factor."""
    model = onnx.load(str(source))
    for index, init in enumerate(model.graph.initializer):
        value = numpy_helper.to_array(init)
        if name_part in init.name and value.size > 16 and value.dtype == np.float32:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value * factor, init.name))
            onnx.save(model, str(target))
            return init.name
    raise AssertionError(f"no initializer matching {name_part!r}")


def test_broken_onnx_fails_parity_and_locates_layer(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A perturbed weight in the lambda layer: exit 1, and the report names that Keras layer first."""
    good = workdir / "good.onnx"
    code, _, err = run_main([str(workdir / "demo.h5"), "-o", str(good), "--skip-verify"], capsys)
    assert code == 0, err
    broken = workdir / "broken.onnx"
    name = _perturb_weight(good, broken, "stage1_block0_lambda")
    code, out, err = run_main(["verify", str(workdir / "demo.h5"), str(broken), "--json"], capsys)
    assert code == 1, err
    result = json.loads(out)
    assert result["verdict"] == "fail"
    assert result["parity"]["passed"] is False
    assert result["parity"]["first_divergent_layer"] == "stage1_block0_lambda", (name, result["parity"])
    # the untouched file passes through the same command
    code, out, err = run_main(["verify", str(workdir / "demo.h5"), str(good), "--json"], capsys)
    assert code == 0, err


def test_inspect_json(workdir: Path, demo_artifacts: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["inspect", str(demo_artifacts["onnx"]), "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["schema"] == "lambda-export/inspect/v1"
    assert info["inputs"][0]["shape"] == ["batch", 32, 32, 3]
    assert info["targets"]["portable"] == []
    assert len(info["metadata"]["source_sha256"]) == 64


def test_subprocess_export_quiet_when_piped(workdir: Path) -> None:
    """The real installed command: exit 0, compact table on stdout, no progress lines when piped."""
    proc = run_exe(str(workdir / "demo.h5"), "-o", str(workdir / "piped.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout.upper()
    assert "CPUExecutionProvider" in proc.stdout
    assert "…" not in proc.stderr  # progress lines only on a terminal or with -v
    verbose = run_exe(str(workdir / "demo.h5"), "-o", str(workdir / "v.onnx"), "-v", "--skip-verify")
    assert verbose.returncode == 0 and "converting" in verbose.stderr


def test_subprocess_exit_code_1_and_2(workdir: Path) -> None:
    good = workdir / "good.onnx"
    assert run_exe(str(workdir / "demo.h5"), "-o", str(good), "--skip-verify").returncode == 0
    broken = workdir / "broken.onnx"
    _perturb_weight(good, broken, "stage1_block0_lambda", factor=3.0)
    proc = run_exe("verify", str(workdir / "demo.h5"), str(broken), "-q")
    assert proc.returncode == 1, proc.stderr
    assert "FAIL" in proc.stdout
    proc = run_exe(str(workdir / "nope.keras"))
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_choice_lists_match_the_library() -> None:
    """The CLI keeps literal copies of the choices (it starts without importing onnx); they must not drift."""
    from lambda_export.conversion import OPTIMIZE_CHOICES
    from lambda_export.targets import TARGETS

    assert sorted(cli_module.TARGET_CHOICES) == sorted(TARGETS)
    assert list(cli_module.OPTIMIZE_CHOICES) == list(OPTIMIZE_CHOICES)


def test_export_optimize_speed(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--optimize speed`` adds the performance passes, records it in the metadata and still passes parity."""
    out_file = workdir / "fast.onnx"
    code, out, err = run_main([str(workdir / "demo.h5"), "-o", str(out_file), "--optimize", "speed", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["parity"]["passed"] is True
    props = {p.key: p.value for p in onnx.load(str(out_file)).metadata_props}
    assert props["optimize"] == "speed"
    code, _, err = run_main([str(workdir / "demo.h5"), "-o", str(workdir / "x.onnx"), "--optimize", "fastest"], capsys)
    assert code == 2 and "fastest" in err


def test_library_errors_name_api_arguments_and_the_cli_names_flags(demo_artifacts: dict, tmp_path: Path) -> None:
    """The Python API says `opset 19`, `overwrite=True`, `tensorrt_precision`; the command line says the flags."""
    from lambda_export import convert, triton
    from lambda_export.cli.options import cli_message
    from lambda_export.errors import InputError

    with pytest.raises(InputError) as info:
        convert(str(demo_artifacts["h5"]), opset=19)
    assert str(info.value).startswith("opset 19:") and "--" not in str(info.value)
    assert cli_message(info.value).startswith("--opset 19: supported opsets are 13 to 18")
    (tmp_path / "taken.onnx").write_bytes(b"x")
    with pytest.raises(InputError) as info:
        convert(str(demo_artifacts["h5"]), tmp_path / "taken.onnx")
    assert "pass overwrite=True" in str(info.value)
    assert "pass --force to replace it" in cli_message(info.value)
    options = triton.TritonOptions(name="m", tensorrt_precision="FP16")
    with pytest.raises(InputError) as info:
        triton.build_model_config(onnx.load(str(demo_artifacts["onnx"])), options)
    assert str(info.value) == "tensorrt_precision only applies with tensorrt=True"
    assert cli_message(info.value) == "--tensorrt-precision only applies with --tensorrt"


def test_explicit_tolerances_select_the_absolute_rule() -> None:
    """--atol/--rtol given → the absolute rule (as before the float64 verdict); neither → the relative rule; --rule
    decides when given."""
    from lambda_export.cli.options import ParityOptions

    assert ParityOptions().config(fixed_batch=False).rule == "relative"
    given = ParityOptions(atol=1e-3)
    assert given.config(fixed_batch=False).rule == "absolute"
    assert given.config(fixed_batch=False).atol == 1e-3 and given.config(fixed_batch=False).rtol == 1e-3
    assert ParityOptions(rtol=0.0, rule="relative").config(fixed_batch=False).rule == "relative"


def test_without_onnx_runtime_the_error_says_which_extra(demo_artifacts: dict) -> None:
    """The base install has no ONNX Runtime (the `cpu` and `gpu` extras each bring one, never both): the command line
    says how to get one, in one line with exit code 2, not an internal error."""
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"  # `import onnxruntime` now raises ModuleNotFoundError
        "from lambda_export.cli import main\n"
        f"main(['verify', {str(demo_artifacts['h5'])!r}, {str(demo_artifacts['onnx'])!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "ONNX Runtime is not installed" in line and "lambda-export[cpu]" in line and "lambda-export[gpu]" in line
    assert "Traceback" not in proc.stderr


def test_verbose_lists_what_each_pass_did_and_why_it_refused(
    workdir: Path, demo_artifacts: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v prints the per-pass log: every pass of the pipeline, what it rewrote, and its counted refusals."""
    from lambda_export.passes.pipelines import pipeline_passes

    out = workdir / "verbose.onnx"
    code, _, err = run_main(["export", str(demo_artifacts["h5"]), "-o", str(out), "-v", "--skip-verify"], capsys)
    assert code == 0, err
    lines = [line.removeprefix("pass ") for line in err.splitlines() if line.startswith("pass ")]
    logged = {line.split(":")[0] for line in lines}
    assert logged == {p.name for p in pipeline_passes("speed")}, logged
    assert any(" rewritten" in line and not line.split(":")[1].strip().startswith("0 ") for line in lines), lines
    assert any("refused" in line for line in lines), lines  # the demo has convolutions the dense-matmul pass refuses
    code, _, err = run_main(["export", str(demo_artifacts["h5"]), "-o", str(out), "--force", "--skip-verify"], capsys)
    assert code == 0 and not [line for line in err.splitlines() if line.startswith("pass ")]  # only with -v
