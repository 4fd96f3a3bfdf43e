"""examples/browser: the static page runs the demo model with onnxruntime-web (WASM) in headless Chromium."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import require

pytestmark = pytest.mark.examples

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "cd examples/browser && npm ci"
TOLERANCE = 1e-4
STEP_TIMEOUT_S = 20  # each page step (load, model, run); a normal run takes about 3 s in all
DRIVER_TIMEOUT_S = 40


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the example folder, plus /model.onnx and /reference.json from the paths in ``extra``."""

    extensions_map = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}  # noqa: RUF012

    def __init__(self, *args, extra: dict[str, Path | None], **kwargs) -> None:
        self.extra = extra
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        route = path.split("?", 1)[0].split("#", 1)[0]
        if route in self.extra:
            target = self.extra[route]
            return str(target) if target is not None else str(EXAMPLE / "__missing__")
        return super().translate_path(path)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serve(extra: dict[str, Path | None]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (free port) in a thread; yields the page URL."""
    handler = functools.partial(_Handler, directory=str(EXAMPLE), extra=extra)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")  # session scope: set up before the session-scoped demo_artifacts
def browser_tools() -> None:
    """Node.js, Chromium and the npm packages (checked before the demo model is built)."""
    require(shutil.which("node") is not None, "Node.js (node)", "apt-get install -y nodejs npm")
    require(CHROMIUM.is_file(), "Debian's chromium (/usr/bin/chromium)", "apt-get install -y chromium")
    require(
        (EXAMPLE / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.js").is_file()
        and (EXAMPLE / "node_modules" / "playwright-core" / "package.json").is_file(),
        "onnxruntime-web and playwright-core in examples/browser/node_modules",
        INSTALL,
    )


def _drive(url: str, out: Path, screenshot: Path | None) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run run_in_browser.mjs in its own process group, killed whole (node and Chromium) if it overruns."""
    command = [shutil.which("node") or "node", "run_in_browser.mjs", url, "--out", str(out)]
    command += ["--chromium", str(CHROMIUM), "--timeout-ms", str(STEP_TIMEOUT_S * 1000)]
    if screenshot is not None:
        command += ["--screenshot", str(screenshot)]
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    process = subprocess.Popen(
        command, cwd=EXAMPLE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=10)
        pytest.fail(f"run_in_browser.mjs did not finish in {DRIVER_TIMEOUT_S} s:\n{stdout}\n{stderr}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a Chromium left behind by a crashed driver
    report = json.loads(out.read_text()) if out.is_file() else {}
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), report


def _screenshot_path(tmp_path: Path) -> Path:
    artifacts = ROOT / "artifacts"
    return (artifacts if artifacts.is_dir() else tmp_path) / "browser.png"


def test_browser_matches_tensorflow(browser_tools: None, demo_artifacts: dict, tmp_path: Path) -> None:
    """UI clicks and window.runReference both match the TF reference within 1e-4 max abs; nothing leaves 127.0.0.1."""
    reference = np.load(demo_artifacts["reference"])[demo_artifacts["output_name"]]
    screenshot = _screenshot_path(tmp_path)
    extra = {"/model.onnx": demo_artifacts["onnx"], "/reference.json": demo_artifacts["reference_json"]}
    with _serve(extra) as url:
        result, report = _drive(url, tmp_path / "result.json", screenshot)
    assert result.returncode == 0, f"driver failed:\n{result.stdout}\n{result.stderr}\n{report.get('error')}"
    print(f"\nbrowser example: screenshot {screenshot}")
    assert screenshot.is_file() and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report["page_errors"], report["page_errors"]
    origin = url.rsplit("/", 1)[0] + "/"
    foreign = [u for u in report["requests"] if not (u.startswith(origin) or u.startswith("data:"))]
    assert not foreign, f"the page fetched from elsewhere than the test server: {foreign}"
    assert any(u.endswith(".wasm") for u in report["requests"]), report["requests"]
    for path in ("ui", "api"):
        run = report[path]
        assert run["backend"] == "wasm"
        assert run["threads"] == 1
        output = run["outputs"][demo_artifacts["output_name"]]
        values = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        assert values.shape == reference.shape
        error = float(np.max(np.abs(values - reference)))
        print(
            f"browser example ({path}): onnxruntime-web {run['ort_version']}, max abs error {error:.3g} "
            f"(page: {run['max_abs_error']:.3g}), median latency {run['latency_ms']:.2f} ms over {run['runs']} runs, "
            f"first run {run['first_run_ms']:.2f} ms"
        )
        assert error <= TOLERANCE
        assert run["max_abs_error"] <= TOLERANCE
        assert np.array_equal(np.argmax(values, axis=1), np.argmax(reference, axis=1))


def test_browser_reports_missing_model(browser_tools: None, demo_artifacts: dict, tmp_path: Path) -> None:
    """Without model.onnx next to the page, the page shows an error state instead of hanging."""
    with _serve({"/model.onnx": None, "/reference.json": demo_artifacts["reference_json"]}) as url:
        result, report = _drive(url, tmp_path / "result.json", None)
    assert result.returncode == 1
    assert "model.onnx" in (report.get("error") or ""), report
    assert "404" in report["error"]
