"""keras-hub backbones through the real command: ``lambda-export MODEL.keras -o OUT.onnx --providers cpu --json``.

The set is ``benchmarks/hub_models.py`` (:data:`benchmarks.hub_models.HUB`): keras-hub 0.32 backbones built from
tiny constructor configs with seeded random weights (no preset, no download): vision transformers and CNNs, speech
encoder-decoders, encoder, encoder-decoder and decoder-only language models. ``python benchmarks/hub_models.py``
runs all of them next to plain tf2onnx and writes the table to ``benchmarks/HUB.md``.

Each model is saved as ``.keras`` with its inputs (token ids below the vocabulary, right-padded sequences with their
padding masks, batch 2) and exported by the command (``--inputs`` with those inputs, ``--input-shape`` for the
sequence length), two at a time, which must exit 0 with a passing verdict decided by the float64 rule (the relative
rule against the model's own graph in float64: no fallback to the absolute rule). The test then runs the ONNX file
in ONNX Runtime CPU itself: max |onnx − keras| ≤ 1e-4 on the same inputs.

The entries marked ``ci`` (ViT, ResNet, BERT, GPT-2, Llama: vision, an encoder and two decoder-only models, a few
seconds each) run in every test run; the whole set (28 models, ~16 min on 2 cores) runs in ``make zoo``
(``benchmarks/zoo.py --hub``), as the conformance zoo's full run does: CI's time is kept for the subset. keras-hub is a test dependency (the ``dev``
extra): without it these tests skip on a developer's machine and fail in CI, as ``conftest.require`` does.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import require

from benchmarks.hub_models import HUB, build_model, call_model, lambda_export_command, make_inputs
from benchmarks.zoo import run_measured

TOLERANCE = 1e-4
CLI_TIMEOUT = 600
HAS_KERAS_HUB = importlib.util.find_spec("keras_hub") is not None


def _require_keras_hub() -> None:
    require(HAS_KERAS_HUB, "keras-hub 0.32 (pip package keras-hub)", "pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Per model, on first use: built, saved, its inputs and Keras outputs, its CLI export started (two at a time)."""
    folder = tmp_path_factory.mktemp("hub")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    cache: dict[str, dict] = {}

    def start(names: list[str]) -> None:
        for entry in HUB:
            if entry.name not in names or entry.name in cache:
                continue
            model = build_model(entry)
            feeds = make_inputs(entry, model)
            reference = call_model(model, feeds)
            path = folder / f"{entry.name}.keras"
            model.save(path)
            inputs = folder / f"{entry.name}.inputs.npz"
            np.savez(inputs, **feeds)
            onnx_path = folder / f"{entry.name}.onnx"
            argv = lambda_export_command(entry, path, onnx_path, inputs, feeds)
            cache[entry.name] = {
                "feeds": feeds,
                "reference": reference,
                "onnx": onnx_path,
                "run": pool.submit(run_measured, argv, timeout=CLI_TIMEOUT),
            }

    yield {"start": start, "cache": cache}
    pool.shutdown(wait=True, cancel_futures=True)


def _check(name: str, exports: dict, record_property) -> None:
    _require_keras_hub()
    # the CI subset is started together (two exports at a time); a slow model alone
    ci = [entry.name for entry in HUB if entry.ci]
    exports["start"](ci if name in ci else [name])
    item = exports["cache"][name]
    run = item["run"].result(timeout=2 * CLI_TIMEOUT)
    record_property("cli_seconds", f"{run.seconds:.1f}")
    assert run.returncode == 0, f"{name}: lambda-export exit {run.returncode}: {run.error_line()}"
    result = json.loads(run.stdout)
    parity = result["parity"]
    assert result["verdict"] == "pass" and parity["passed"] is True, name
    assert parity["rule"] == "relative", f"{name}: rule {parity['rule']}"
    assert parity["float64"] == {"available": True, "reason": None}, f"{name}: no float64 truth: {parity['float64']}"
    ratios = [row["metrics"]["vs_float64"]["ratio_max"] for row in parity["worst"]]
    record_property("worst_ratio", f"{max(r for r in ratios if r is not None):.2f}")

    reference = item["reference"]
    floats = [y for y in reference if y.dtype.kind == "f"]
    assert all(np.isfinite(y).all() for y in floats), f"{name}: Keras outputs are not finite"
    spread = max(float(np.abs(y - y[:1]).max()) for y in floats)
    assert spread > 1e-3, f"{name}: Keras outputs barely vary over the batch ({spread:.1e}): parity would say little"

    import onnxruntime as ort

    session = ort.InferenceSession(str(item["onnx"]), providers=["CPUExecutionProvider"])
    feeds = item["feeds"]
    assert sorted(i.name for i in session.get_inputs()) == sorted(feeds), name
    outputs = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    assert len(outputs) == len(reference), name
    for index, (got, want) in enumerate(zip(outputs, reference, strict=True)):
        assert got.shape == want.shape, f"{name}: output {index}: shape {got.shape}, Keras {want.shape}"
        if want.dtype.kind != "f":
            np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=f"{name}: output {index}")
            continue
        error = float(np.abs(got.astype(np.float64) - want).max())
        assert error <= TOLERANCE, f"{name}: output {index}: max |onnx − keras| = {error:.2e}"


@pytest.mark.parametrize("name", [entry.name for entry in HUB if entry.ci])
def test_hub_ci_model_exports_with_float64_parity(name: str, exports: dict, record_property) -> None:
    _check(name, exports, record_property)
