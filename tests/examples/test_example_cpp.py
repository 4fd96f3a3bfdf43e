"""examples/cpp_opencv: build the C++17 OpenCV 4.6 program with CMake, run it on the demo model, compare with TensorFlow."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require

pytestmark = pytest.mark.examples

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpp_opencv"
OPENCV_CMAKE_CONFIG = Path("/usr/lib/x86_64-linux-gnu/cmake/opencv4/OpenCVConfig.cmake")
TOLERANCE = 1e-4


def _opencv_dev_available() -> bool:
    """True when OpenCV 4 development files (headers + CMake config) are installed."""
    if OPENCV_CMAKE_CONFIG.exists():
        return True
    if shutil.which("pkg-config") is None:
        return False
    return subprocess.run(["pkg-config", "--exists", "opencv4"], check=False).returncode == 0


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built in a temporary build directory (Release)."""
    require(shutil.which("cmake") is not None, "cmake", "apt-get install -y cmake")
    require(shutil.which("g++") is not None, "g++", "apt-get install -y g++")
    require(
        _opencv_dev_available(), "OpenCV 4 development files (Debian libopencv-dev)", "apt-get install -y libopencv-dev"
    )
    build = tmp_path_factory.mktemp("cpp_opencv_build")
    start = time.perf_counter()
    for command in (
        ["cmake", "-S", str(EXAMPLE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "--parallel", "2"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    print(f"\ncpp_opencv: configure + build took {time.perf_counter() - start:.1f} s")
    path = build / "onnx_infer"
    assert path.is_file()
    return path


def _run(binary: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def test_cpp_opencv_matches_tensorflow(binary: Path, demo_artifacts: dict, tmp_path: Path) -> None:
    """OpenCV 4.6 DNN runs the portable export and matches the TF reference within 1e-4 max abs."""
    x = np.load(demo_artifacts["inputs"])[demo_artifacts["input_name"]]
    reference = np.load(demo_artifacts["reference"])[demo_artifacts["output_name"]]
    np.save(tmp_path / "input.npy", x)
    result = _run(binary, demo_artifacts["onnx"], tmp_path / "input.npy", "-o", tmp_path / "out.npy", "--runs", "5")
    assert result.returncode == 0, result.stderr
    output = np.load(tmp_path / "out.npy")
    assert output.dtype == np.float32
    assert output.shape == reference.shape
    error = float(np.max(np.abs(output - reference)))
    print(f"cpp_opencv: max abs error vs TensorFlow {error:.3g}")
    print(result.stdout.strip())
    assert error <= TOLERANCE
    for item, row in enumerate(reference):
        assert f"item {item} -> class {int(np.argmax(row))} " in result.stdout
    assert "latency:" in result.stdout


def test_cpp_opencv_bad_inputs(binary: Path, demo_artifacts: dict, tmp_path: Path) -> None:
    """Missing or malformed files and bad arguments give a clear message and a non-zero exit status."""
    x = np.load(demo_artifacts["inputs"])[demo_artifacts["input_name"]]
    np.save(tmp_path / "input.npy", x)
    np.save(tmp_path / "float64.npy", x.astype(np.float64))
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "input.npy").read_bytes()[:-8])
    model = demo_artifacts["onnx"]

    result = _run(binary, model, tmp_path / "missing.npy")
    assert result.returncode == 1
    assert "missing.npy: no such file" in result.stderr

    result = _run(binary, tmp_path / "missing.onnx", tmp_path / "input.npy")
    assert result.returncode == 1
    assert "no such model file" in result.stderr

    result = _run(binary, model, tmp_path / "float64.npy")
    assert result.returncode == 1
    assert "is not float32" in result.stderr

    result = _run(binary, model, tmp_path / "truncated.npy")
    assert result.returncode == 1
    assert "truncated or corrupt" in result.stderr

    result = _run(binary, model)
    assert result.returncode == 2
    assert "usage:" in result.stderr
