"""Shared pytest fixtures and the policy for optional runtimes.

Tests that need an optional runtime (OpenCV 4.6, OpenVINO, Node.js, Chromium, a GPU...) call :func:`require`. On a
developer's machine a missing runtime skips the test with a reason that says how to install it; in CI
(``LAMBDA_EXPORT_REQUIRE_EXAMPLES=1``, set by ``.ci/run``) it fails the test instead, so nothing is silently skipped.
CUDA tests are the exception: CI machines have no GPU, so they always skip with a reason.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # deterministic TF CPU kernels for the numerical tests

import pytest

STRICT = os.environ.get("LAMBDA_EXPORT_REQUIRE_EXAMPLES") == "1"


def require(condition: bool, what: str, how: str) -> None:
    """Skip (developer machine) or fail (CI) when an optional runtime is missing.

    Args:
        condition: True when the runtime is available.
        what: the missing thing, e.g. "Debian python3-opencv (OpenCV 4.6)".
        how: the install command, e.g. "apt-get install -y python3-opencv".
    """
    if condition:
        return
    message = f"{what} is not available; install it with: {how}"
    if STRICT:
        pytest.fail(f"required in CI (LAMBDA_EXPORT_REQUIRE_EXAMPLES=1): {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo model trained as ``lambda-export demo`` trains it, saved as .h5, exported to .onnx, plus inputs and TF
    reference outputs.

    Trained enough (``models.DEMO_TRAIN_STEPS``) that its top class is right on most held-out images, so the
    examples' top-class checks compare real predictions, not one class everywhere.

    Returns a dict with paths ``h5``, ``onnx``, ``inputs`` (``.npz`` with the model's input names as keys, batch 4),
    ``reference`` (``.npz`` with the output names as keys, TensorFlow inference-mode outputs), ``reference_json``
    (same, as JSON lists), and the ``input_name``/``output_name`` strings.
    """
    import json

    import numpy as np

    from lambda_export.conversion import convert
    from lambda_layers import models

    folder = tmp_path_factory.mktemp("demo")
    model = models.build_demo_model(seed=0)
    models.train_demo_model(model, steps=models.DEMO_TRAIN_STEPS, seed=0)
    h5 = folder / "demo.h5"
    model.save(h5)
    result = convert(str(h5), folder / "demo.onnx")
    x, _ = models.make_demo_data(4, seed=123)
    input_name, output_name = result.input_names[0], result.output_names[0]
    reference = np.asarray(model(x, training=False))
    np.savez(folder / "inputs.npz", **{input_name: x})
    np.savez(folder / "reference.npz", **{output_name: reference})
    (folder / "reference.json").write_text(
        json.dumps({"inputs": {input_name: x.tolist()}, "outputs": {output_name: reference.tolist()}})
    )
    return {
        "h5": h5,
        "onnx": folder / "demo.onnx",
        "inputs": folder / "inputs.npz",
        "reference": folder / "reference.npz",
        "reference_json": folder / "reference.json",
        "input_name": input_name,
        "output_name": output_name,
        "input_shape": tuple(x.shape),
    }
