"""examples/node for the tests that run it (the demo model, a ported timm network): find Node.js, start and stop
``server.js`` on a free port."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from conftest import require

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
INSTALL = "cd examples/node && ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci"


def find_node() -> str:
    """The `node` executable, once onnxruntime-node is installed in examples/node (skip or fail as `require` does)."""
    node = shutil.which("node")
    require(node is not None, "Node.js (node)", "apt-get install -y nodejs npm")
    require(
        (EXAMPLE / "node_modules" / "onnxruntime-node" / "package.json").is_file(),
        "onnxruntime-node in examples/node/node_modules",
        INSTALL,
    )
    return node


def start_server(node: str, model: Path, log: Path, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """`node server.js --model MODEL --port 0` on 127.0.0.1, output to ``log``; returns the process and its base URL
    (read from the log) once it listens. Fails with the log when it exits or does not listen within ``timeout_s``."""
    command = [node, "server.js", "--model", str(model), "--port", "0", "--host", "127.0.0.1"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=EXAMPLE, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
            if match is not None:
                return process, match.group(1)
            assert process.poll() is None, f"server.js exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"server.js did not start in {timeout_s} s:\n{log.read_text()}"
            time.sleep(0.05)
    except BaseException:
        stop(process)
        raise


def stop(process: subprocess.Popen) -> None:
    """Terminate ``process`` (kill it after 5 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
