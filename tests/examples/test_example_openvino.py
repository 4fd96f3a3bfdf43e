"""examples/openvino: OpenVINO CPU runs the export with f32 pinned; its default precision (bf16 on AVX-512 BF16/AMX CPUs)
is reported along with its error."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

pytestmark = pytest.mark.examples

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "openvino" / "infer.py"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def report(demo_artifacts: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The script's JSON report for one invocation with ``--precision f32 --precision default``."""
    require(importlib.util.find_spec("openvino") is not None, "OpenVINO", "pip install 'lambda-export[openvino]'")
    out = tmp_path_factory.mktemp("openvino") / "report.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--model",
        str(demo_artifacts["onnx"]),
        "--inputs",
        str(demo_artifacts["inputs"]),
        "--reference",
        str(demo_artifacts["reference"]),
        "--precision",
        "f32",
        "--precision",
        "default",
        "--runs",
        "3",
        "--json",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    print("\n" + result.stdout.strip())
    payload = json.loads(out.read_text())
    payload["stdout"] = result.stdout
    return payload


def _run(report: dict, requested: str) -> dict:
    return next(run for run in report["runs"] if run["requested"] == requested)


def test_openvino_f32_matches_tensorflow(report: dict, demo_artifacts: dict) -> None:
    """With INFERENCE_PRECISION_HINT=f32 pinned, OpenVINO matches TensorFlow within 1e-4 max abs."""
    run = _run(report, "f32")
    assert run["reported"] == "f32"
    assert run["outputs"] == {demo_artifacts["output_name"]: [demo_artifacts["input_shape"][0], 10]}
    assert run["max_abs_error"] <= TOLERANCE


def test_openvino_default_precision_is_reported(report: dict) -> None:
    """The plugin's default precision is reported with its error: f32 → same tolerance; bf16 → looser but bounded."""
    f32, default = _run(report, "f32"), _run(report, "default")
    assert default["reported"] in {"f32", "bf16", "f16"}
    assert f"compiled model reports {default['reported']}" in report["stdout"]
    assert default["max_abs_error"] is not None
    if default["reported"] == "f32":
        assert default["max_abs_error"] <= TOLERANCE
    else:
        assert "BF16" in report["capabilities"] or default["reported"] == "f16"
        assert f32["max_abs_error"] < default["max_abs_error"] < 0.1
        assert "pin INFERENCE_PRECISION_HINT=f32" in report["stdout"]


def test_openvino_missing_file_fails_cleanly(tmp_path: Path) -> None:
    """A missing model file gives a one-line error and exit status 1."""
    require(importlib.util.find_spec("openvino") is not None, "OpenVINO", "pip install 'lambda-export[openvino]'")
    np_inputs = tmp_path / "inputs.npz"
    np_inputs.write_bytes(b"")
    command = [sys.executable, str(SCRIPT), "--model", str(tmp_path / "missing.onnx"), "--inputs", str(np_inputs)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "missing.onnx: no such file" in result.stderr
