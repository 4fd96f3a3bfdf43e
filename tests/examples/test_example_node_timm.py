"""examples/node runs a ported timm network: lambda_resnet26t (random timm checkpoint -> from_timm -> lambda-export).

The service takes any ONNX file `lambda-export` writes, so nothing in examples/node changes: the test makes timm's
network with seeded random weights and batch-norm statistics (tests/layers/timm_reference.py, a PyTorch subprocess:
timm is never imported next to TensorFlow), ports it with ``lambda_layers.from_timm``, exports it with the real command
(``lambda-export MODEL.keras -o MODEL.onnx --json``, parity check included), starts ``node server.js`` on it, and sends
structured 256x256 images (a colour gradient, discs and rectangles, a checkerboard, smooth noise; normalised as timm
feeds them) as raw float32 (batch 4) and as JSON (batch 1). The logits must match Keras' and give the same top-1
class.

Tolerance, the conformance zoo's grade (benchmarks/zoo.py): max |node − keras| ≤ 1e-4, or, where TensorFlow float32
is itself further than that from the truth, |node − keras float64| ≤ 5x |keras float32 − keras float64|. The logits of
this random network reach 15 on the checkerboard image, where TensorFlow float32 is 1.4e-4 from the float64 port and
ONNX Runtime (Python, same file) 1.2e-4 from TensorFlow, 8e-5 from float64 (a relative 8e-6: other summation
orders); a bare 1e-4 would fail on rounding alone, while a wrong weight, a misplaced position embedding or a wrong
input layout moves the logits by 1e-2 or more.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from node_example import find_node, start_server, stop

pytest.importorskip("torch", reason="PyTorch is an optional dependency: pip install -e '.[torch]'")
if (
    importlib.util.find_spec("timm") is None
):  # importing timm next to TensorFlow crashes (tests/layers/timm_reference.py)
    pytest.skip("timm is an optional dependency: pip install -e '.[torch]'", allow_module_level=True)

from benchmarks.timm_export import grade, keras_step, make_checkpoint, run_lambda_export

pytestmark = [pytest.mark.examples, pytest.mark.slow]

NAME = "lambda_resnet26t"
START_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def node() -> str:
    return find_node()


@pytest.fixture(scope="module")
def exported(node: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """lambda_resnet26t: timm checkpoint, Keras port (.keras), the real command's ONNX file, Keras' logits."""
    folder = tmp_path_factory.mktemp(NAME)
    make_checkpoint(NAME, folder)
    keras_step(NAME, folder)
    onnx_path = folder / f"{NAME}.onnx"
    run = run_lambda_export([str(folder / f"{NAME}.keras"), "-o", str(onnx_path)], timeout=1200)
    assert run["exit"] == 0, run["stderr"]
    assert run["json"]["verdict"] == "pass"
    with (
        np.load(folder / "eval.npz") as a,
        np.load(folder / "keras_logits.npz") as b,
        np.load(folder / "float64.npz") as c,
    ):
        return {"onnx": onnx_path, "x": a["image"], "reference": b["logits"], "truth": c["logits"]}


def _check(logits: np.ndarray, reference: np.ndarray, truth: np.ndarray) -> dict:
    """The zoo's grade of ``logits`` against Keras float32 ``reference`` and the float64 ``truth``."""
    noise = float(np.max(np.abs(reference.astype(np.float64) - truth)))
    result = {
        "max_abs": float(np.max(np.abs(logits.astype(np.float64) - reference))),
        "max_abs_float64": float(np.max(np.abs(logits.astype(np.float64) - truth))),
        "tf32_error": noise,
    }
    return result | {"grade": grade(result, noise)}


@pytest.fixture(scope="module")
def server(node: str, exported: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`node server.js --model lambda_resnet26t.onnx --port 0` on 127.0.0.1; yields its base URL."""
    log = tmp_path_factory.mktemp("node_timm") / "server.log"
    process, url = start_server(node, exported["onnx"], log, START_TIMEOUT_S)
    try:
        yield url
    finally:
        stop(process)


def _post(url: str, body: bytes, headers: dict[str, str]) -> dict:
    request = urllib.request.Request(url + "/predict", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        assert response.status == 200
        return json.loads(response.read())


def _logits(response: dict) -> np.ndarray:
    output = response["outputs"]["logits"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def test_node_serves_timm_network(server: str, exported: dict) -> None:
    """Health names the timm port's input and output; raw float32 logits of 4 structured images match Keras."""
    with urllib.request.urlopen(server + "/health", timeout=REQUEST_TIMEOUT_S) as response:
        health = json.loads(response.read())
    assert [i["name"] for i in health["inputs"]] == ["image"]
    assert health["inputs"][0]["shape"][1:] == [256, 256, 3]
    assert [o["name"] for o in health["outputs"]] == ["logits"]

    x, reference = exported["x"], exported["reference"]
    assert x.shape == (4, 256, 256, 3)
    raw = _post(
        server,
        x.astype("<f4").tobytes(),
        {"Content-Type": "application/octet-stream", "X-Shape": ",".join(map(str, x.shape))},
    )
    logits = _logits(raw)
    assert logits.shape == reference.shape == (4, 1000)
    check = _check(logits, reference, exported["truth"])
    print(
        f"\nnode example, {NAME}: raw float32 batch 4, {check} (max |logit| {np.max(np.abs(reference)):.3g}), "
        f"latency {raw['latency_ms']:.0f} ms, top-1 {np.argmax(logits, 1).tolist()}"
    )
    assert check["grade"] in ("ok", "noise"), check
    assert np.array_equal(np.argmax(logits, 1), np.argmax(reference, 1))


def test_node_timm_json_matches_keras(server: str, exported: dict) -> None:
    """A JSON request (nested list, batch 1) gives Keras' logits and top-1 class for the checkerboard image."""
    x, reference, truth = exported["x"][2:3], exported["reference"][2:3], exported["truth"][2:3]
    response = _post(
        server, json.dumps({"inputs": {"image": x.tolist()}}).encode(), {"Content-Type": "application/json"}
    )
    logits = _logits(response)
    check = _check(logits, reference, truth)
    print(f"\nnode example, {NAME}: JSON batch 1 (checkerboard), {check}")
    assert check["grade"] in ("ok", "noise"), check
    assert int(np.argmax(logits)) == int(np.argmax(reference))
