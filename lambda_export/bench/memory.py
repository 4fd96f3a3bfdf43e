"""Measurements in fresh subprocesses: peak resident memory per side, and the wall time of `lambda-export MODEL`.

:func:`process_memory_kib` / :func:`peak_rss_kib` read a process's resident set and its peak (``VmRSS``, ``VmHWM``
in ``/proc/PID/status``): the one reader, which ``benchmarks/zoo.py`` and ``benchmarks/conversion_memory.py`` use too.

The parent side (:func:`measure_memory`, :func:`export_cost`) starts ``python -m lambda_export.bench _worker JSON``
(:mod:`lambda_export.bench.__main__`) and reads the one JSON line it prints; the child side is
:func:`memory_worker` and :func:`export_cost_worker`. A fresh process imports only what its side needs, so the
figures do not include the other runtime or the parent's heap.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lambda_export.bench.configs import build_from_spec
from lambda_export.bench.runners import as_numpy, configure_tensorflow, make_feed, tf_function
from lambda_export.ort import cpu_session

__all__ = ["export_cost", "export_cost_worker", "measure_memory", "memory_worker", "peak_rss_kib", "process_memory_kib"]

# the folder that holds the lambda_export package, put on the worker's PYTHONPATH
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def process_memory_kib(pid: int | str = "self") -> dict[str, int | None]:
    """``VmHWM`` (peak resident set) and ``VmRSS`` (resident set) of process ``pid`` (default: this one) in KiB,
    from ``/proc/PID/status``; None where they cannot be read (no such process, not Linux)."""
    values: dict[str, int | None] = {"VmHWM": None, "VmRSS": None}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1])
    return values


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """The peak resident set (``VmHWM``) of process ``pid`` (default: this one) in KiB; None when unreadable."""
    return process_memory_kib(pid)["VmHWM"]


def _proc_status() -> dict[str, float | None]:
    """``VmHWM`` (peak resident) and ``VmRSS`` of this process in MiB (one decimal)."""
    return {key: None if kib is None else round(kib / 1024, 1) for key, kib in process_memory_kib().items()}


def _reset_peak() -> bool:
    """Reset this process's peak resident counter (``VmHWM``); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float | None:
    """``ru_maxrss`` of this process in MiB (recorded, not used: Linux keeps it across ``execve``)."""
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return None


def _ort_dtype(type_text: str) -> str:
    """The NumPy dtype name of an ONNX Runtime input type such as ``tensor(float)`` (float32 when unknown)."""
    mapping = {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(double)": "float64",
        "tensor(int64)": "int64",
        "tensor(int32)": "int32",
        "tensor(bool)": "bool",
    }
    return mapping.get(type_text, "float32")


def memory_worker(args: dict[str, Any]) -> dict[str, Any]:
    """Peak resident memory of one side (runs inside a fresh ``python -m lambda_export.bench _worker``)."""
    side, threads, batch, runs = args["side"], int(args["threads"]), int(args["batch"]), int(args["runs"])
    started = time.perf_counter()
    if side == "ort":
        import onnxruntime as ort  # noqa: F401  (the import is part of the baseline)

        baseline = _proc_status()["VmRSS"]
        session = cpu_session(args["onnx"], threads)
        feed = {}
        for value in session.get_inputs():
            info = type("Info", (), {"shape": value.shape, "dtype": _ort_dtype(value.type)})
            feed[value.name] = make_feed([info], batch)[0]

        def run() -> Any:
            return session.run(None, feed)
    else:
        configure_tensorflow(threads)
        import tensorflow as tf

        import lambda_layers  # noqa: F401  (registers the layers)

        baseline = _proc_status()["VmRSS"]
        model = build_from_spec(args["spec"])
        specs, arrays = [], []
        for value in model.inputs:
            info = type("Info", (), {"shape": tuple(value.shape), "dtype": value.dtype})
            array = make_feed([info], batch)[0]
            arrays.append(tf.constant(array))
            specs.append(tf.TensorSpec(array.shape, array.dtype))
        function = tf_function(model, side == "tf_xla", specs)

        def run() -> Any:
            return as_numpy(function(*arrays))

    run()
    loaded_peak = _proc_status()["VmHWM"]
    reset = _reset_peak()
    for _ in range(runs):
        run()
    status = _proc_status()
    peaks = [p for p in (loaded_peak, status["VmHWM"]) if p is not None]
    return {
        "side": side,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": max(peaks) if peaks else None,
        "inference_peak_rss_mb": status["VmHWM"] if reset else None,
        "final_rss_mb": status["VmRSS"],
        # ru_maxrss survives execve on Linux: it can include the parent's RSS at fork time, hence VmHWM above
        "ru_maxrss_mb": _ru_maxrss_mb(),
        "runs": runs + 1,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _run_worker(payload: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run ``python -m lambda_export.bench _worker`` with ``payload``; return its JSON answer (or an error)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = str(PACKAGE_ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lambda_export.bench", "_worker", json.dumps(payload)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    wall = round(time.perf_counter() - started, 2)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)[:400]}", "wall_s": wall}
    answer = json.loads(lines[-1])
    answer["wall_s"] = wall
    return answer


def measure_memory(spec: dict[str, Any], onnx_path: str, batch: int, threads: int, runs: int) -> dict[str, Any]:
    """Peak RSS of the TF side (graph mode) and of the ORT side (portable export), each in a fresh subprocess."""
    result = {}
    for side in ("tf", "ort"):
        payload = {"task": "memory", "side": side, "threads": threads, "batch": batch, "runs": runs}
        payload.update({"spec": spec} if side != "ort" else {"onnx": onnx_path})
        result[side] = _run_worker(payload)
    return result


def export_cost_worker(args: dict[str, Any]) -> dict[str, Any]:
    """`lambda-export MODEL` (convert + CPU parity), timed step by step in a fresh process.

    The conversion's steps are timed by wrapping functions of :mod:`lambda_export.conversion` (tf2onnx, the rewrite
    pipeline, the checks) for the duration of the call; a step whose function is not found is timed as
    ``convert_other_s`` and named in ``notes``.
    """
    timings: dict[str, Any] = {}
    notes: list[str] = []
    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow  # noqa: F401

    timings["tf_import_s"] = time.perf_counter() - started
    mark = time.perf_counter()
    import tf2onnx  # noqa: F401

    from lambda_export import conversion
    from lambda_export.loading import load_model

    timings["other_imports_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    loaded = load_model(args["model"])
    timings["load_s"] = time.perf_counter() - mark

    spent = {"tf2onnx": 0.0, "rewrites": 0.0, "checks": 0.0}
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attr: str, bucket: str) -> None:
        original = getattr(owner, attr, None)
        if original is None:
            notes.append(f"{owner.__name__}.{attr} not found: its time is in convert_other_s")
            return

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                spent[bucket] += time.perf_counter() - t0

        setattr(owner, attr, timed)
        patched.append((owner, attr, original))

    wrap(conversion, "_tf2onnx_convert", "tf2onnx")
    wrap(conversion, "rewrite_for_target", "rewrites")  # clean-up, Einsum rewrite (and speed passes)
    wrap(conversion, "_check_converted", "checks")
    mark = time.perf_counter()
    result = conversion.convert(args["model"], args["output"], loaded=loaded, overwrite=True)
    convert_total = time.perf_counter() - mark
    for owner, attr, original in patched:
        setattr(owner, attr, original)
    timings["conversion_s"] = spent["tf2onnx"]
    timings["rewrites_s"] = spent["rewrites"]
    timings["checks_s"] = spent["checks"]
    timings["convert_other_s"] = convert_total - sum(spent.values())
    timings["convert_total_s"] = convert_total
    try:
        from lambda_export.parity import verify
    except ImportError as exc:
        timings["parity_s"] = None
        notes.append(f"TODO: lambda_export.parity is not importable ({exc}); parity not timed")
        parity_passed = None
    else:
        mark = time.perf_counter()
        report = verify(loaded.model, result.model, loaded=loaded, providers=["cpu"])
        timings["parity_s"] = time.perf_counter() - mark
        parity_passed = bool(getattr(report, "passed", False))
    timings["total_in_process_s"] = time.perf_counter() - started
    return {
        "timings": {key: (round(value, 3) if isinstance(value, float) else value) for key, value in timings.items()},
        "parity_passed": parity_passed,
        "nodes": result.node_count,
        "passes": result.passes,
        "notes": notes,
    }


def export_cost(model_path: str, folder: Path, cli: bool = True) -> dict[str, Any]:
    """Wall time of `lambda-export` on ``model_path``: split in a fresh process, plus the CLI end to end."""
    answer = _run_worker({"task": "export_cost", "model": model_path, "output": str(folder / "export_cost.onnx")})
    answer["model"] = os.path.basename(model_path)
    answer["what"] = (
        "fresh `python -m lambda_export.bench _worker` process: import TensorFlow, import tf2onnx/lambda_export, "
        "load the .h5, convert (tf2onnx / clean-up rewrites / checks / other), verify parity on the CPU provider "
        "(lambda_export.parity.verify defaults: batches 1 and 4, normal and uniform inputs)"
    )
    if cli:
        script = Path(sys.executable).parent / "lambda-export"
        command = (
            [str(script)] if script.exists() else [sys.executable, "-c", "from lambda_export.cli import main; main()"]
        )
        command += [model_path, "-o", str(folder / "export_cost_cli.onnx"), "--force", "--providers", "cpu", "-q"]
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
        answer["cli_wall_s"] = round(time.perf_counter() - started, 2)
        answer["cli_command"] = "lambda-export " + " ".join(command[-7:])
        answer["cli_exit_code"] = proc.returncode
        if proc.returncode != 0:
            answer["cli_error"] = (proc.stderr or proc.stdout).strip()[-300:]
    return answer
