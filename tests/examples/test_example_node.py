"""examples/node: the onnxruntime-node HTTP service runs the demo model, matches TensorFlow, and rejects bad requests."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from node_example import find_node, start_server, stop

pytestmark = pytest.mark.examples

TOLERANCE = 1e-4
START_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 20
MAX_BODY_BYTES = 10 * 1024 * 1024  # server.js default


class Server:
    """A running `node server.js` with its base URL and log file."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def request(
        self, path: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict, dict]:
        """Send one request; returns (status, parsed JSON body, response headers) for successes and HTTP errors."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read()), dict(error.headers)

    def predict_json(self, payload: object) -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, data, _ = self.request(
            "/predict", method="POST", body=body, headers={"Content-Type": "application/json"}
        )
        return status, data

    def predict_raw(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        status, data, _ = self.request(
            "/predict", method="POST", body=body, headers={"Content-Type": "application/octet-stream", **headers}
        )
        return status, data


@pytest.fixture(scope="session")  # session scope: set up before the session-scoped demo_artifacts
def node() -> str:
    """The `node` executable, once onnxruntime-node is installed (checked before the demo model is built)."""
    return find_node()


@pytest.fixture(scope="module")
def server(node: str, demo_artifacts: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`node server.js --model demo.onnx --port 0` on 127.0.0.1; the bound port is read from its stdout."""
    log = tmp_path_factory.mktemp("node_server") / "server.log"
    started = time.monotonic()
    process, url = start_server(node, demo_artifacts["onnx"], log, START_TIMEOUT_S)
    print(f"\nnode example: {url} (started in {time.monotonic() - started:.1f} s)")
    try:
        yield Server(process, url, log)
    finally:
        stop(process)


def _reference(demo_artifacts: dict) -> tuple[np.ndarray, np.ndarray]:
    x = np.load(demo_artifacts["inputs"])[demo_artifacts["input_name"]]
    reference = np.load(demo_artifacts["reference"])[demo_artifacts["output_name"]]
    return x, reference


def _output(response: dict, name: str) -> np.ndarray:
    output = response["outputs"][name]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def test_node_health(server: Server, demo_artifacts: dict) -> None:
    status, health, _ = server.request("/health")
    assert status == 200
    assert health["status"] == "ok"
    assert [i["name"] for i in health["inputs"]] == [demo_artifacts["input_name"]]
    assert [o["name"] for o in health["outputs"]] == [demo_artifacts["output_name"]]
    assert health["inputs"][0]["shape"][1:] == list(demo_artifacts["input_shape"][1:])


def test_node_json_matches_tensorflow(server: Server, demo_artifacts: dict) -> None:
    """Nested-list JSON and flat list + shape JSON both match the TF reference within 1e-4 max abs."""
    x, reference = _reference(demo_artifacts)
    name, out = demo_artifacts["input_name"], demo_artifacts["output_name"]
    for label, value in (
        ("nested", x.tolist()),
        ("flat+shape", {"data": x.ravel().tolist(), "shape": list(x.shape)}),
    ):
        status, response = server.predict_json({"inputs": {name: value}})
        assert status == 200, response
        output = _output(response, out)
        assert output.shape == reference.shape
        error = float(np.max(np.abs(output - reference)))
        print(f"node example JSON ({label}): max abs error {error:.3g}, latency {response['latency_ms']:.2f} ms")
        assert error <= TOLERANCE
        assert response["latency_ms"] >= 0
        assert np.array_equal(np.argmax(output, axis=1), np.argmax(reference, axis=1))


def test_node_raw_float32_matches_tensorflow(server: Server, demo_artifacts: dict) -> None:
    """application/octet-stream little-endian float32 with an X-Shape header matches the TF reference."""
    x, reference = _reference(demo_artifacts)
    shape = ",".join(map(str, x.shape))
    status, response = server.predict_raw(x.astype("<f4").tobytes(), {"X-Shape": shape})
    assert status == 200, response
    error = float(np.max(np.abs(_output(response, demo_artifacts["output_name"]) - reference)))
    print(f"node example raw float32: max abs error {error:.3g}, latency {response['latency_ms']:.2f} ms")
    assert error <= TOLERANCE
    # A single item (batch 1) with the input named explicitly.
    status, response = server.predict_raw(
        x[:1].astype("<f4").tobytes(),
        {"X-Shape": ",".join(map(str, (1, *x.shape[1:]))), "X-Input-Name": demo_artifacts["input_name"]},
    )
    assert status == 200, response
    assert float(np.max(np.abs(_output(response, demo_artifacts["output_name"]) - reference[:1]))) <= TOLERANCE


def _error_cases(name: str, shape: tuple[int, ...]) -> list[tuple[str, dict, int, str]]:
    """(id, request kwargs, expected status, fragment of the error message)."""
    x = np.zeros(shape, dtype=np.float32)
    raw_shape = ",".join(map(str, shape))
    nan = x.copy()
    nan[0, 1, 2, 0] = np.nan
    ragged = x.tolist()
    ragged[1][3] = ragged[1][3][:-1]
    wrong_channels = np.zeros((*shape[:-1], shape[-1] + 1), dtype=np.float32)
    non_numeric = x.tolist()
    non_numeric[0][0][0][0] = "zero"
    json_headers = {"Content-Type": "application/json"}
    raw_headers = {"Content-Type": "application/octet-stream", "X-Shape": raw_shape}

    def post_json(body: bytes) -> dict:
        return {"path": "/predict", "method": "POST", "body": body, "headers": json_headers}

    return [
        ("malformed-json", post_json(b'{"inputs": {'), 400, "malformed JSON"),
        ("json-not-object", post_json(b"[1, 2, 3]"), 400, "inputs"),
        ("missing-inputs", post_json(b'{"data": []}'), 400, "inputs"),
        ("wrong-input-name", post_json(json.dumps({"inputs": {"pixels": x.tolist()}}).encode()), 422, "unknown input"),
        ("wrong-shape", post_json(json.dumps({"inputs": {name: wrong_channels.tolist()}}).encode()), 422, "axis 3"),
        ("wrong-rank", post_json(json.dumps({"inputs": {name: [1.0, 2.0]}}).encode()), 422, "rank"),
        ("ragged", post_json(json.dumps({"inputs": {name: ragged}}).encode()), 422, "ragged"),
        ("non-numeric", post_json(json.dumps({"inputs": {name: non_numeric}}).encode()), 422, "non-numeric"),
        ("nan-json", post_json(json.dumps({"inputs": {name: nan.tolist()}}).encode()), 400, "NaN"),
        (
            "flat-size-mismatch",
            post_json(json.dumps({"inputs": {name: {"data": [0.0] * 5, "shape": list(shape)}}}).encode()),
            422,
            "do not match shape",
        ),
        (
            "nan-raw",
            {"path": "/predict", "method": "POST", "body": nan.tobytes(), "headers": raw_headers},
            422,
            "NaN",
        ),
        (
            "raw-missing-shape",
            {
                "path": "/predict",
                "method": "POST",
                "body": x.tobytes(),
                "headers": {"Content-Type": "application/octet-stream"},
            },
            400,
            "X-Shape",
        ),
        (
            "raw-byte-count",
            {"path": "/predict", "method": "POST", "body": x.tobytes()[:-4], "headers": raw_headers},
            422,
            "bytes",
        ),
        (
            "raw-wrong-shape",
            {
                "path": "/predict",
                "method": "POST",
                "body": wrong_channels.tobytes(),
                "headers": {**raw_headers, "X-Shape": ",".join(map(str, wrong_channels.shape))},
            },
            422,
            "axis 3",
        ),
        (
            "raw-wrong-input-name",
            {
                "path": "/predict",
                "method": "POST",
                "body": x.tobytes(),
                "headers": {**raw_headers, "X-Input-Name": "x"},
            },
            422,
            "unknown input",
        ),
        (
            "too-large",
            {"path": "/predict", "method": "POST", "body": bytes(MAX_BODY_BYTES + 4), "headers": raw_headers},
            413,
            "exceeds the limit",
        ),
        (
            "unsupported-content-type",
            {"path": "/predict", "method": "POST", "body": b"a=1", "headers": {"Content-Type": "text/plain"}},
            415,
            "Content-Type",
        ),
        ("unknown-route", {"path": "/nope"}, 404, "no route"),
        ("get-predict", {"path": "/predict"}, 405, "not allowed"),
        (
            "post-health",
            {"path": "/health", "method": "POST", "body": b"{}", "headers": json_headers},
            405,
            "not allowed",
        ),
    ]


def test_node_rejects_bad_requests(server: Server, demo_artifacts: dict) -> None:
    """Each malformed request gets its 4xx status and a JSON error message; the server keeps serving afterwards."""
    x, reference = _reference(demo_artifacts)
    failures = []
    for case, kwargs, expected, fragment in _error_cases(demo_artifacts["input_name"], demo_artifacts["input_shape"]):
        status, body, headers = server.request(**kwargs)
        message = body.get("error", "")
        if status != expected or fragment not in message:
            failures.append(f"{case}: got {status} {message!r}, expected {expected} with {fragment!r}")
        if expected == 405 and "Allow" not in headers:
            failures.append(f"{case}: 405 without an Allow header")
    assert not failures, "\n".join(failures)
    status, response = server.predict_json({"inputs": {demo_artifacts["input_name"]: x.tolist()}})
    assert status == 200
    assert float(np.max(np.abs(_output(response, demo_artifacts["output_name"]) - reference))) <= TOLERANCE
    assert server.process.poll() is None, server.log.read_text()
