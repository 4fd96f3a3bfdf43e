"""Facts about this machine and the installed libraries, for reports, benchmarks and ONNX metadata.

One place for what used to be three copies (the parity report's environment, the benchmark's machine line and the
versions written into every exported model). Nothing here imports TensorFlow or ONNX Runtime unless asked for their
versions, and every probe degrades to ``None`` rather than raising.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

__all__ = [
    "cpu_flags",
    "cpu_model",
    "distribution_version",
    "gpu_names",
    "installed",
    "int8_dot_product",
    "load_average",
    "memory_total_gb",
    "nvidia_device_present",
    "package_versions",
    "usable_cores",
]

# The distributions whose versions reports and benchmarks record, in this order.
REPORTED_DISTRIBUTIONS = (
    "tensorflow",
    "keras",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "tf2onnx",
    "numpy",
    "lambda-export",
)


def installed(distribution: str) -> bool:
    """True when the pip distribution ``distribution`` (e.g. ``"onnxruntime-gpu"``) is installed."""
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def distribution_version(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` that is installed (``None`` when none is)."""
    for name in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return None


def package_versions(distributions: tuple[str, ...] = REPORTED_DISTRIBUTIONS) -> dict[str, str | None]:
    """``{"python": ..., distribution: version or None}`` for the benchmark's machine record."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in distributions:
        versions[name] = distribution_version(name)
    return versions


def _cpuinfo_field(prefix: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows elsewhere."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector-instruction flags of the CPU that matter for kernel choice (avx*, fma, amx*, sse4*), sorted."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "sse4")))


# x86 flags of the int8 dot-product instructions ONNX Runtime's and OpenVINO's int8 kernels are built on; without
# them (AVX2 alone) an int8 multiply-add takes a widening multiply and an add, and int8 convolutions can run slower
# than float32 ones (measured on an AVX2 EPYC: the demo's int8 export 0.89x the speed of its float32 export)
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_dot_product(flags: list[str] | None = None) -> bool | None:
    """Whether this CPU has int8 dot-product instructions (VNNI or AMX), which int8 inference needs to pay off.

    ``flags``: the CPU flags to judge (default: :func:`cpu_flags`). None where it cannot be told: not x86-64 (ARM's
    dot product is not listed the same way) or no ``/proc/cpuinfo``.
    """
    if flags is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return None
        flags = cpu_flags()
        if not flags:
            return None
    return any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS)


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages, rounded to 2 digits (``None`` where the OS has none)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def memory_total_gb() -> float | None:
    """Total RAM in GiB (one decimal), from ``/proc/meminfo``."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


def usable_cores() -> int | None:
    """Cores this process may run on (its CPU affinity), which can be fewer than the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def nvidia_device_present() -> bool:
    """True when the NVIDIA driver exposes a device (``/dev/nvidia*`` or ``/proc/driver/nvidia/gpus``)."""
    if os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0"):
        return True
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def gpu_names() -> list[str]:
    """The names ``nvidia-smi`` reports, one per GPU (empty without the tool or a GPU)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []
