"""examples/python_service: the Starlette + uvicorn + ONNX Runtime service, started as a subprocess and driven over HTTP."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from conftest import require

if TYPE_CHECKING:
    import httpx

pytestmark = pytest.mark.examples

APP = Path(__file__).resolve().parents[2] / "examples" / "python_service" / "app.py"
TOLERANCE = 1e-4  # vs TensorFlow
BATCHING_TOLERANCE = 1e-6  # batched (concurrent) vs single-request outputs; see test_concurrent_load
MAX_BODY_BYTES = 1_000_000
START_TIMEOUT_S = 30


@dataclass
class Server:
    """A running service subprocess."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path


def _require_service_deps() -> None:
    missing = [name for name in ("starlette", "uvicorn", "httpx") if importlib.util.find_spec(name) is None]
    require(not missing, f"Python packages {missing}", "pip install 'lambda-export[service]'")


def _start(model: Path, folder: Path, *extra: str) -> Server:
    """Start app.py on 127.0.0.1 with a free port; wait (bounded) for its READY line."""
    stdout, log = folder / "stdout.txt", folder / "server.log"
    command = [sys.executable, str(APP), "--model", str(model), "--host", "127.0.0.1", "--port", "0", *extra]
    with stdout.open("wb") as out, log.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready = [line for line in stdout.read_text().splitlines() if line.startswith("READY ")]
        if ready:
            return Server(process, ready[0].split()[1], log)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    _stop(process)
    pytest.fail(f"the service did not start within {START_TIMEOUT_S} s:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL if it does not exit within 15 s; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


@pytest.fixture(scope="module")
def server(demo_artifacts: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One service instance shared by the tests of this module (killed in any case at the end)."""
    _require_service_deps()
    running = _start(
        demo_artifacts["onnx"], tmp_path_factory.mktemp("service"), "--max-body-bytes", str(MAX_BODY_BYTES)
    )
    try:
        yield running
    finally:
        _stop(running.process)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    import httpx

    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def test_health_and_metadata(client: httpx.Client, demo_artifacts: dict) -> None:
    """/health describes the model and proves no TensorFlow in the server; /metadata carries the export provenance."""
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["model"] == "demo.onnx"
    assert body["inputs"] == [
        {"name": demo_artifacts["input_name"], "shape": [None, 32, 32, 3], "dtype": "tensor(float)"}
    ]
    assert [o["name"] for o in body["outputs"]] == [demo_artifacts["output_name"]]
    assert "CPUExecutionProvider" in body["providers"]
    assert body["batching"]["enabled"] is True
    assert body["heavy_modules_loaded"] == [] and body["tensorflow_loaded"] is False

    meta = client.get("/metadata").json()
    assert meta["sha256"] == hashlib.sha256(Path(demo_artifacts["onnx"]).read_bytes()).hexdigest()
    assert meta["producer_name"] == "lambda-export"
    assert meta["custom_metadata"]["target"] == "portable"


def test_predict_matches_tensorflow(client: httpx.Client, demo_artifacts: dict) -> None:
    """POST /predict with the demo batch matches the TensorFlow reference within 1e-4 max abs."""
    reference = json.loads(Path(demo_artifacts["reference_json"]).read_text())
    response = client.post("/predict", json={"inputs": reference["inputs"]})
    assert response.status_code == 200, response.text
    body = response.json()
    name = demo_artifacts["output_name"]
    output = np.asarray(body["outputs"][name], dtype=np.float32)
    expected = np.asarray(reference["outputs"][name], dtype=np.float32)
    assert body["rows"] == 4 and output.shape == expected.shape
    error = float(np.max(np.abs(output - expected)))
    print(f"\nservice: max abs error vs TensorFlow {error:.3g}")
    assert error <= TOLERANCE


def _image(value: float = 0.5, rows: int = 1) -> list:
    return np.full((rows, 32, 32, 3), value).tolist()


BAD_REQUESTS = {
    # id: (body, content type, expected status, expected error code)
    "not-json": (b"{inputs:", "application/json", 400, "invalid_json"),
    "empty-body": (b"", "application/json", 400, "empty_body"),
    "wrong-content-type": (b"{}", "text/plain", 415, "unsupported_media_type"),
    "no-inputs-field": (b'{"images": []}', "application/json", 422, "invalid_request"),
    "unknown-input-name": ({"inputs": {"pixels": _image()}}, "application/json", 422, "invalid_input_names"),
    "wrong-shape": ({"inputs": {"images": _image()[0]}}, "application/json", 422, "invalid_shape"),
    "ragged": ({"inputs": {"images": [[1.0, 2.0], [3.0]]}}, "application/json", 422, "invalid_input"),
    "strings": ({"inputs": {"images": [[[["a"] * 3] * 32] * 32]}}, "application/json", 422, "invalid_dtype"),
    "booleans": ({"inputs": {"images": [[[[True] * 3] * 32] * 32]}}, "application/json", 422, "invalid_dtype"),
    "nan": (b'{"inputs": {"images": [[[[NaN, 0, 0]]]]}}', "application/json", 422, "non_finite"),
    "float32-overflow": ({"inputs": {"images": _image(1e39)}}, "application/json", 422, "non_finite"),
    "too-many-rows": ({"inputs": {"images": _image(rows=33)}}, "application/json", 413, "batch_too_large"),
    "body-too-large": (b"[" + b"0," * (MAX_BODY_BYTES // 2 + 8) + b"0]", "application/json", 413, "body_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_predict_rejects_bad_requests(client: httpx.Client, case: str) -> None:
    """Malformed or invalid requests get the right 4xx status and a JSON error with a message."""
    body, content_type, status, code = BAD_REQUESTS[case]
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_body_limit_without_content_length(client: httpx.Client) -> None:
    """A chunked body (no Content-Length) is cut off at the limit while it streams in."""
    chunks = iter([b"[" + b"0," * 50_000] * (MAX_BODY_BYTES // 100_000 + 2))
    response = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/predict").status_code == 405


def test_concurrent_load(server: Server, client: httpx.Client, demo_artifacts: dict) -> None:
    """200 single-row requests from 8 threads: no errors, outputs equal to the single-request path.

    The micro-batcher concatenates concurrent requests (batches of 1 to 8 rows here), which changes the M dimension of
    ONNX Runtime's GEMMs. MLAS blocks and splits GEMMs along M/N but sums over K in the same order whatever M is, and
    every other op in the graph (Conv per image, Softmax per row, pooling) is row-independent, so the results are
    bitwise identical on this machine (measured: max diff 0.0). The assertion allows 1e-6 rather than bitwise equality
    because ORT does not promise M-independent kernels on every CPU; the test prints whether it was bitwise.
    """
    import httpx

    x = np.load(demo_artifacts["inputs"])[demo_artifacts["input_name"]]
    input_name, output_name = demo_artifacts["input_name"], demo_artifacts["output_name"]
    bodies = [{"inputs": {input_name: x[i : i + 1].tolist()}} for i in range(len(x))]
    single = []
    for body in bodies:  # the single-request path: one request at a time, batch of 1
        response = client.post("/predict", json=body)
        assert response.status_code == 200
        single.append(np.asarray(response.json()["outputs"][output_name], dtype=np.float32))
    before = client.get("/health").json()["stats"]

    threads, per_thread = 8, 25

    def worker(thread: int) -> list[tuple[int, int, str]]:
        results = []
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for k in range(per_thread):
                item = (thread + k) % len(bodies)
                response = http.post("/predict", json=bodies[item])
                results.append((item, response.status_code, response.text))
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = [r for chunk in pool.map(worker, range(threads)) for r in chunk]
    elapsed = time.perf_counter() - start

    errors = [(status, text[:200]) for _, status, text in results if status != 200]
    assert len(results) == threads * per_thread
    assert not errors, errors[:3]
    diffs = []
    for item, _, text in results:
        output = np.asarray(json.loads(text)["outputs"][output_name], dtype=np.float32)
        diffs.append(float(np.max(np.abs(output - single[item]))))
    health = client.get("/health").json()
    after = health["stats"]
    batches = after["batches"] - before["batches"]
    print(
        f"\nservice: {len(results)} requests from {threads} threads in {elapsed:.2f} s = {len(results) / elapsed:.1f} "
        f"requests/s; {batches} ORT runs (mean batch {len(results) / batches:.2f}, largest {after['largest_batch']}); "
        f"max diff vs single-request path {max(diffs):.3g} ({'bitwise identical' if max(diffs) == 0 else 'not bitwise'})"
    )
    assert max(diffs) <= BATCHING_TOLERANCE
    assert after["largest_batch"] >= 2, "concurrent requests were never batched"
    assert health["heavy_modules_loaded"] == []


def test_graceful_shutdown_and_bad_model(demo_artifacts: dict, tmp_path: Path) -> None:
    """SIGTERM finishes cleanly with status 0; a missing model file exits with status 1 and a message."""
    _require_service_deps()
    import httpx

    running = _start(demo_artifacts["onnx"], tmp_path)
    try:
        body = {"inputs": {demo_artifacts["input_name"]: _image()}}
        assert httpx.post(f"{running.url}/predict", json=body, timeout=30).status_code == 200
    finally:
        status = _stop(running.process)
    assert status == 0, running.log.read_text()
    assert "shutdown complete" in running.log.read_text()

    result = subprocess.run(
        [sys.executable, str(APP), "--model", str(tmp_path / "missing.onnx"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no such model file" in result.stderr
