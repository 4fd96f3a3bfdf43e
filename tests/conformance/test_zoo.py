"""The CI subset of the conformance zoo: public architectures and common-layer models through the real command.

The zoo (``benchmarks/zoo_models.py``) builds every ``keras.applications`` family and models made of common layers with
seeded random weights; ``make zoo`` (``benchmarks/zoo.py``) runs all of it next to plain tf2onnx and writes
``benchmarks/ZOO.md``. This module runs the entries marked ``ci``, chosen to cover distinct failure modes in a few
minutes on 2 cores: EfficientNetB0 and ``rescale_normalize`` (preprocessing constants inside the model),
MobileNetV3Small (hard_swish, squeeze-excitation), ConvNeXtTiny (depthwise ``Conv2D(groups=C)``, which Keras 3 runs
through XLA on the CPU), ``conv1d_gru`` (a recurrent loop), an exact-gelu transformer block (Erf), causal
MultiHeadAttention blocks, an Embedding on integer ids, a model with three inputs and two outputs, and the tiny
LambdaResNet.

Each model is saved as ``.keras`` and exported by ``lambda-export MODEL.keras -o OUT.onnx --json`` in a subprocess
(two at a time), which must exit 0 with a passing verdict decided by the float64 rule (no fallback to the absolute
rule; ``benchmarks/float64_coverage.py`` measures that for the whole zoo: ``benchmarks/FLOAT64.md``). The test then
checks parity itself: the ONNX file in ONNX Runtime CPU, and in OpenVINO with f32 inference precision where the graph
loads there, against the in-memory Keras model on the same inputs, max |onnx − keras| ≤ 1e-4.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from benchmarks.zoo import check_onnx, lambda_export_command, run_measured
from benchmarks.zoo_models import TOLERANCE, build_model, call_model, ci_subset, make_inputs

pytestmark = pytest.mark.slow

CI = ci_subset()
CLI_TIMEOUT = 900


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """Every CI model built, saved, with its inputs and Keras outputs; its CLI export started (two at a time)."""
    folder = tmp_path_factory.mktemp("zoo")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    out: dict[str, dict] = {}
    for entry in CI:
        model = build_model(entry)
        feeds = make_inputs(entry, model)
        reference = [np.asarray(y) for y in call_model(model, feeds)]
        path = folder / f"{entry.name}.keras"
        model.save(path)
        np.savez(folder / f"{entry.name}.inputs.npz", **feeds)
        onnx_path = folder / f"{entry.name}.onnx"
        argv = lambda_export_command(entry, path, onnx_path, folder / f"{entry.name}.inputs.npz")
        out[entry.name] = {
            "feeds": feeds,
            "reference": reference,
            "onnx": onnx_path,
            "run": pool.submit(run_measured, argv, timeout=CLI_TIMEOUT),
        }
    yield out
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", [entry.name for entry in CI])
def test_zoo_model_exports_and_matches_keras(name: str, zoo: dict, record_property) -> None:
    item = zoo[name]
    run = item["run"].result(timeout=2 * CLI_TIMEOUT)
    record_property("cli_seconds", f"{run.seconds:.1f}")
    record_property("cli_peak_mb", f"{run.peak_mb:.0f}")
    assert run.returncode == 0, f"{name}: lambda-export exit {run.returncode}: {run.error_line()}"
    result = json.loads(run.stdout)
    assert result["verdict"] == "pass" and result["parity"]["passed"] is True, name
    # judged by the float64 rule, not the absolute fallback (benchmarks/FLOAT64.md: the whole zoo)
    float64 = result["parity"]["float64"]
    assert float64 == {"available": True, "reason": None}, f"{name}: no float64 truth: {float64}"
    assert Path(item["onnx"]).exists()

    reference = item["reference"]
    assert all(np.isfinite(y).all() for y in reference), f"{name}: Keras outputs are not finite"
    spread = max(float(np.abs(y - y[:1]).max()) for y in reference)
    assert spread > 1e-3, f"{name}: Keras outputs barely vary over the batch ({spread:.1e}): parity would say little"

    errors = check_onnx(item["onnx"], item["feeds"], reference)
    print(f"{name}: {result['conversion']['nodes']} nodes, {run.seconds:.1f} s, {run.peak_mb:.0f} MiB, {errors}")
    ort = errors["ort"]
    assert "max_abs" in ort, f"{name}: ONNX Runtime: {ort.get('error')}"
    record_property("onnxruntime_max_abs_error", f"{ort['max_abs']:.3e}")
    assert ort["max_abs"] <= TOLERANCE, f"{name}: ONNX Runtime max |onnx − keras| = {ort['max_abs']:.2e}"
    openvino = errors["openvino"]
    require(
        not openvino.get("error", "").startswith("not installed"),
        "OpenVINO (pip package openvino)",
        "pip install -e '.[dev]'",
    )
    if "max_abs" not in openvino:  # the zoo's requirement holds where the graph loads; a refusal is recorded
        assert openvino["error"].startswith("does not load"), f"{name}: OpenVINO: {openvino['error']}"
        record_property("openvino", openvino["error"])
        return
    record_property("openvino_f32_max_abs_error", f"{openvino['max_abs']:.3e}")
    assert openvino["max_abs"] <= TOLERANCE, f"{name}: OpenVINO f32 max |onnx − keras| = {openvino['max_abs']:.2e}"
