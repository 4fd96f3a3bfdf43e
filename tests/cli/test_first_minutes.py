"""The first ten minutes (issue #15): `make demo`/`make test` set-up, quiet start-up, what the command says on a pipe
and on a terminal, the report file, and a demo model whose predictions mean something.

Most checks run the installed ``lambda-export`` (and ``python -c``) as real subprocesses, without
``TF_CPP_MIN_LOG_LEVEL`` in their environment, as a newcomer's shell has it.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import require
from onnx import numpy_helper

from lambda_export import cli as cli_module

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "lambda-export"

# What TensorFlow's native code and ONNX Runtime's logger write to stderr when nothing keeps them off.
NOISE = re.compile(
    r"cudart_stub|cuInit|cuda_platform|devices\.cc|single_machine\.cc|cpu_feature_guard|"
    r"All log messages before absl::InitializeLog|oneDNN custom operations|\[[WE]:onnxruntime"
)
WROTE = re.compile(r"^wrote (\S+\.onnx) \((\d+) nodes, [\d.]+ (B|kB|MB|GB)\)$", re.M)


def _env() -> dict[str, str]:
    """The environment of a fresh shell: no TF_CPP_MIN_LOG_LEVEL (the test session sets one for itself)."""
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}


def _run(*args: str, timeout: int = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=timeout, env=_env())


def _assert_quiet(stderr: str) -> None:
    noisy = [line for line in stderr.splitlines() if NOISE.search(line)]
    assert not noisy, "start-up noise on stderr:\n" + "\n".join(noisy)


def _on_terminal(*args: str, timeout: int = 400) -> tuple[int, str]:
    """Run the command with stdin/stdout/stderr on a pseudo-terminal; return (exit code, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(EXE), *args], stdin=slave, stdout=slave, stderr=slave, env=_env(), close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"timed out; output so far:\n{b''.join(chunks).decode(errors='replace')}")
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal is closed, the command has ended
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


@pytest.fixture()
def workdir(tmp_path: Path, demo_artifacts: dict) -> Path:
    shutil.copy(demo_artifacts["h5"], tmp_path / "demo.h5")
    return tmp_path


# -- set-up ----------------------------------------------------------------------------------------------------------


def _make_env() -> dict[str, str]:
    """The environment without what an outer make passes down: inside `make test PYTEST_ARGS=...` (as .ci/run runs
    it) MAKEFLAGS and the environment carry that override into every nested make, changing what the dry runs print."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTEST_ARGS")
    }


def _make_dry_run(folder: Path, target: str) -> list[str]:
    """The commands `make -n TARGET` would run in ``folder``, without the comments."""
    proc = subprocess.run(
        ["make", "-n", target], cwd=folder, capture_output=True, text=True, timeout=60, env=_make_env()
    )
    assert proc.returncode == 0, proc.stderr
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def test_make_installs_base_for_demo_dev_for_test_and_starts_at_once_after(tmp_path: Path) -> None:
    """`make demo`: `pip install -e ".[cpu]"` with pip's progress; `make test`: `.[cpu,dev]` even after `make demo`; stamps."""
    require(shutil.which("make") is not None, "GNU make", "apt-get install -y make")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("#!/bin/sh\n")
    (bin_dir / "python").chmod(0o755)
    demo = _make_dry_run(tmp_path, "demo")
    installs = [line for line in demo if "pip install" in line]
    assert installs == ['.venv/bin/python -m pip install -e ".[cpu]"'], (
        demo
    )  # the base dependencies and the CPU runtime, no -q
    assert demo[-1] == ".venv/bin/lambda-export demo"
    (tmp_path / ".venv" / ".installed-base").touch()  # what the demo's install leaves
    assert _make_dry_run(tmp_path, "demo") == [".venv/bin/lambda-export demo"]  # the second run starts at once
    test = _make_dry_run(tmp_path, "test")
    assert '.venv/bin/python -m pip install -e ".[cpu,dev]"' in test, test  # after `make demo`: the dev extras still
    assert test[-1] == ".venv/bin/python -m pytest -rs --durations=15"  # skip reasons and the slowest tests
    (tmp_path / ".venv" / ".installed-dev").touch()
    assert _make_dry_run(tmp_path, "test") == [".venv/bin/python -m pytest -rs --durations=15"]
    assert not any("-q" in line.split() for line in demo + test)
    ci = subprocess.run(
        ["make", "-n", "test", "PYTEST_ARGS=-rfEs --junitxml=artifacts/junit.xml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=_make_env(),
    )
    assert ci.stdout.strip() == ".venv/bin/python -m pytest -rs --durations=15 -rfEs --junitxml=artifacts/junit.xml"


def test_readme_says_how_to_enable_the_example_tests() -> None:
    """Every system package and npm step .ci/run sets up is named in the README, next to `make test`."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "ONNXRUNTIME_NODE_INSTALL_CUDA=skip" in ci and "ONNXRUNTIME_NODE_INSTALL_CUDA=skip" in readme
    for folder in ("examples/node", "examples/browser"):
        assert folder in readme
    assert "npm ci" in readme
    for package in ("python3-opencv", "libopencv-dev", "cmake", "g++", "pkg-config", "chromium"):
        assert package in ci and package in readme, package


# -- start-up noise, piped output, the report ------------------------------------------------------------------------


def _perturb(source: Path, target: Path) -> None:
    model = onnx.load(str(source))
    init = next(i for i in model.graph.initializer if "stage1_block0_lambda" in i.name and len(i.dims) > 1)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3.0, init.name))
    onnx.save(model, str(target))


def test_export_and_verify_piped_are_quiet_and_say_what_they_wrote(workdir: Path) -> None:
    """`lambda-export MODEL` on a pipe: no TensorFlow/ORT log lines, `wrote X.onnx (N nodes, S)`, a report that names
    the ONNX file, shows the conversion and real timings, with the .onnx file's mode; `verify` of a broken file names
    the first diverging layer once."""
    out, page = workdir / "out.onnx", workdir / "r.html"
    proc = _run(str(workdir / "demo.h5"), "-o", str(out), "--report", str(page))
    assert proc.returncode == 0, proc.stderr
    _assert_quiet(proc.stderr)
    wrote = WROTE.search(proc.stdout)
    assert wrote and wrote.group(1) == str(out), proc.stdout
    assert int(wrote.group(2)) == len(onnx.load(str(out)).graph.node)
    assert "…" not in proc.stderr  # progress only on a terminal
    html = page.read_text()
    assert f"ONNX model <code>{out}</code>" in html and "in-memory" not in html
    assert "<h2>ONNX model</h2>" in html and "<th>opset</th><td>17</td>" in html and "rewrite passes" in html
    load = float(re.search(r"<th>load</th><td>([\d.]+) s</td>", html).group(1))
    convert = float(re.search(r"<th>convert</th><td>([\d.]+) s</td>", html).group(1))
    assert load > 0.05 and convert > 0.1, (load, convert)  # TensorFlow's start and the conversion, not 0.000 s
    assert stat.S_IMODE(page.stat().st_mode) == stat.S_IMODE(out.stat().st_mode)

    broken = workdir / "broken.onnx"
    _perturb(out, broken)
    proc = _run("verify", str(workdir / "demo.h5"), str(broken), "--report", str(workdir / "v.html"))
    assert proc.returncode == 1, proc.stderr
    _assert_quiet(proc.stderr)
    assert len(re.findall(r"first diverg", proc.stdout, re.I)) == 1, proc.stdout
    assert "first divergent layer: stage1_block0_lambda" in proc.stdout
    assert "4/normal" not in proc.stdout and "min atol" not in proc.stdout
    html = (workdir / "v.html").read_text()
    assert f"ONNX model <code>{broken}</code>" in html and "<h2>ONNX model</h2>" in html


def test_python_api_is_quiet(workdir: Path) -> None:
    """`from lambda_export import convert, verify` in a fresh interpreter: no start-up noise on stderr."""
    script = (
        "import sys; from lambda_export import convert, verify; "
        f"r = convert({str(workdir / 'demo.h5')!r}, {str(workdir / 'api.onnx')!r}); "
        f"report = verify({str(workdir / 'demo.h5')!r}, r.model, providers=['cpu']); "
        "print('passed', report.passed)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=400, env=_env(), cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr
    assert "passed True" in proc.stdout
    _assert_quiet(proc.stderr)


def test_report_has_the_mode_of_the_onnx_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0o027)
    try:
        cli_module.STATE.verbose, cli_module.STATE.quiet, cli_module.STATE.json = 0, False, False
        with pytest.raises(SystemExit) as info:
            cli_module.main(
                [str(workdir / "demo.h5"), "-o", str(workdir / "m.onnx"), "--report", str(workdir / "m.html")]
            )
        capsys.readouterr()
    finally:
        os.umask(old)
    assert info.value.code == 0
    assert stat.S_IMODE((workdir / "m.onnx").stat().st_mode) == 0o640
    assert stat.S_IMODE((workdir / "m.html").stat().st_mode) == 0o640


# -- a terminal ------------------------------------------------------------------------------------------------------


def test_progress_on_a_terminal_and_quiet_with_q(workdir: Path) -> None:
    code, shown = _on_terminal(str(workdir / "demo.h5"), "-o", str(workdir / "tty.onnx"))
    assert code == 0, shown
    for step in ("… starting TensorFlow", "… loading", "… converting", "… TensorFlow reference", "… ONNX Runtime CPU"):
        assert step in shown, (step, shown)
    assert WROTE.search(shown)
    _assert_quiet(shown)
    code, shown = _on_terminal(str(workdir / "demo.h5"), "-o", str(workdir / "q.onnx"), "-q", "--skip-verify")
    assert code == 0, shown
    assert "…" not in shown and not WROTE.search(shown)
    assert shown.strip().splitlines() == [f"converted: {workdir / 'q.onnx'} (parity not checked)"]


# -- the demo model --------------------------------------------------------------------------------------------------


def _predictions(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    from lambda_export import ort

    session = ort.session(str(onnx_path))
    return np.argmax(session.run(None, {session.get_inputs()[0].name: x})[0], axis=1)


def test_demo_model_predictions_mean_something(demo_artifacts: dict) -> None:
    """The suite's demo model (what the examples run) is right on most held-out images and predicts most classes."""
    from lambda_layers.models import make_demo_data

    x, y = make_demo_data(512, seed=2024)
    predicted = _predictions(demo_artifacts["onnx"], x)
    assert (predicted == y).mean() > 0.6  # chance: 0.1; measured 0.93-1.0 (seeds 0-2)
    assert len(set(predicted.tolist())) >= 8
    examples = np.load(demo_artifacts["inputs"])[demo_artifacts["input_name"]]  # the examples' 4 images
    assert len(set(_predictions(demo_artifacts["onnx"], examples).tolist())) >= 3


@pytest.mark.slow
def test_demo_subprocess(tmp_path: Path) -> None:
    """`lambda-export demo` as `make demo` runs it, on a pipe: no noise, says what it wrote, a useful model."""
    from lambda_layers.models import make_demo_data

    started = time.perf_counter()
    proc = _run("demo", "--out", str(tmp_path / "demo_output"))
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    _assert_quiet(proc.stderr)
    wrote = WROTE.search(proc.stdout)
    assert wrote and wrote.group(1) == str(tmp_path / "demo_output" / "demo_model.onnx"), proc.stdout
    accuracy = float(re.search(r"held-out accuracy ([\d.]+)", proc.stderr).group(1))
    assert accuracy > 0.6, proc.stderr
    x, y = make_demo_data(512, seed=2024)
    predicted = _predictions(tmp_path / "demo_output" / "demo_model.onnx", x)
    assert (predicted == y).mean() > 0.6 and len(set(predicted.tolist())) >= 8
    html = (tmp_path / "demo_output" / "report.html").read_text()
    train = float(re.search(r"<th>train</th><td>([\d.]+) s</td>", html).group(1))
    assert 0 < train < seconds  # the report's training time is part of the run (no bound on how fast a machine is)
    print(f"lambda-export demo: {seconds:.1f} s wall, training {train:.1f} s")
