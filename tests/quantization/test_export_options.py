"""quantize and convert share one record of the conversion's options (ExportOptions); quantize's keyword API stays as
it was; quantize, convert and to_float16 are named steps under 100 lines each."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from lambda_export import ExportOptions, InputError, quantize
from lambda_export.conversion import DEFAULT_OPTIMIZE, convert

ROOT = Path(__file__).resolve().parents[2]

OLD_KEYWORDS = {
    "output": None,
    "onnx_model": None,
    "calibration": None,
    "held_out": None,
    "calibration_method": "percentile",
    "min_agreement": 0.99,
    "min_cosine": None,
    "verify": True,
    "timing": True,
    "runtimes": ("onnxruntime", "openvino"),
    "sensitivity": True,
    "target": "portable",
    "opset": 17,
    "optimize": None,
    "batch_size": None,
    "input_shapes": None,
    "trust_code": False,
    "imports": (),
    "overwrite": False,
    "loaded": None,
    "seed": 0,
    "progress": None,
}


def test_quantize_keeps_every_keyword_and_default() -> None:
    parameters = inspect.signature(quantize).parameters
    for name, default in OLD_KEYWORDS.items():
        assert name in parameters, name
        assert parameters[name].default == default, name
    assert "timing_budget_s" in parameters and parameters["export"].default is None
    documented = inspect.getdoc(quantize) or ""
    for name in parameters:
        assert f"{name}" in documented, f"quantize's docstring does not document {name}"


def test_export_options_are_convert_keywords() -> None:
    options = ExportOptions(target="ort", opset=15, optimize="size", batch_size=2, imports=("a",))
    parameters = inspect.signature(convert).parameters
    arguments = options.convert_arguments()
    assert set(arguments) <= set(parameters)
    assert ExportOptions().optimize == DEFAULT_OPTIMIZE == parameters["optimize"].default
    for name, value in ExportOptions().convert_arguments().items():
        assert parameters[name].default == value or (name == "imports" and tuple(parameters[name].default) == value)


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        (ExportOptions(opset=12), "opset"),
        (ExportOptions(target="nope"), "target"),
        (ExportOptions(optimize="fast"), "optimize"),
        (ExportOptions(batch_size=0), "batch_size"),
    ],
)
def test_export_options_check(options: ExportOptions, argument: str) -> None:
    with pytest.raises(InputError) as error:
        options.check()
    assert error.value.argument == argument


def test_quantize_refuses_bad_conversion_options_before_loading(tmp_path: Path) -> None:
    missing = tmp_path / "missing.keras"  # never read: the options are refused first
    with pytest.raises(InputError, match="opset 12: supported opsets are 13 to 18"):
        quantize(missing, opset=12, target="ort")
    with pytest.raises(InputError, match="optimize 'fast'"):
        quantize(missing, export=ExportOptions(target="ort", optimize="fast"))


def test_quantize_takes_the_export_options_once(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="export and opset, target: give the export options once") as error:
        quantize(tmp_path / "missing.keras", export=ExportOptions(target="ort"), target="ort", opset=15)
    assert error.value.argument == "export"


def test_quantize_checks_the_export_options_target(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot run an int8 model"):
        quantize(tmp_path / "missing.keras", export=ExportOptions(target="opencv4"))


def _lengths(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text())
    return {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.end_lineno is not None
    }


@pytest.mark.parametrize(
    ("module", "function"),
    [
        ("lambda_export/quantization/api.py", "quantize"),
        ("lambda_export/conversion.py", "convert"),
        ("lambda_export/fp16.py", "to_float16"),
    ],
)
def test_the_largest_functions_are_named_steps(module: str, function: str) -> None:
    """The project's rule: no function over 100 lines (parsers and data tables aside)."""
    assert _lengths(ROOT / module)[function] <= 100
