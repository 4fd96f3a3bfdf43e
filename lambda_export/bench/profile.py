"""ONNX Runtime's profiler: which nodes and op types take the time, in one export (:func:`profile_ort`) or in several
profiled in turns (:func:`profile_ort_paired`: two files of the same network, run alternately, so that a change of load
on a shared machine hits both profiles alike)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lambda_export.ort import cpu_session

__all__ = ["profile_ort", "profile_ort_paired"]

WARM_RUNS = 2  # untimed runs before the profiled ones (first-run allocations, pre-packing)


def profile_ort(model_bytes: bytes | str, feed: dict[str, np.ndarray], threads: int, runs: int = 5) -> dict[str, Any]:
    """ONNX Runtime's profiler over ``runs`` runs after two warm-up runs: the nodes and op types that take the most
    time (per node: the median of its per-run kernel times, so one preempted run does not decide)."""
    return profile_ort_paired({"model": (model_bytes, feed)}, threads, runs)["model"]


def profile_ort_paired(
    sources: dict[str, tuple[bytes | str, dict[str, np.ndarray]]], threads: int, runs: int = 5, top: int = 6
) -> dict[str, dict[str, Any]]:
    """:func:`profile_ort` of several models at once, by name: ``sources`` maps a name to (model bytes or file,
    feed). Every round runs each model once, in turns, so that the profiles share the machine's conditions; each
    profile is summarised as :func:`profile_ort`'s (``top`` slowest nodes; ``by_op_type`` shares and
    ``by_op_type_ms`` per run)."""
    folder = tempfile.mkdtemp(prefix="lambda-bench-profile-")
    sessions = {
        name: cpu_session(source, threads, profile_prefix=os.path.join(folder, f"ort_{index}"))
        for index, (name, (source, _)) in enumerate(sources.items())
    }
    for _ in range(WARM_RUNS + runs):
        for name, session in sessions.items():
            session.run(None, sources[name][1])
    profiles = {}
    for name, session in sessions.items():
        path = session.end_profiling()
        events = json.loads(Path(path).read_text())
        with contextlib.suppress(OSError):
            Path(path).unlink()
        profiles[name] = _summary(events, top)
    with contextlib.suppress(OSError):
        os.rmdir(folder)
    return profiles


def _summary(events: list[dict[str, Any]], top: int) -> dict[str, Any]:
    """The profile of one session's ``events``: per-node median kernel time over the profiled runs, the slowest
    ``top`` nodes and the share (and ms per run) of each op type."""
    warm = WARM_RUNS
    windows = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[warm:]
    per_node: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        run = next((i for i, (lo, hi) in enumerate(windows) if lo <= event["ts"] <= hi), None)
        if run is None:
            continue
        args = event.get("args", {})
        node = event["name"][: -len("_kernel_time")]
        item = per_node.setdefault(
            node, {"node": node, "op": args.get("op_name"), "runs": {}, "shape": args.get("output_type_shape")}
        )
        item["runs"][run] = item["runs"].get(run, 0.0) + event.get("dur", 0)
    for item in per_node.values():
        item["us"] = float(np.median(list(item["runs"].values())))
    total = sum(item["us"] for item in per_node.values()) or 1.0
    by_op: dict[str, float] = {}
    for item in per_node.values():
        by_op[item["op"]] = by_op.get(item["op"], 0.0) + item["us"]
    slowest = sorted(per_node.values(), key=lambda item: -item["us"])[:top]
    return {
        "runs": len(windows),
        "ort_node_time_ms_per_run": round(total / 1e3, 3),
        "top_nodes": [
            {
                "node": item["node"][-80:],
                "op": item["op"],
                "share": round(item["us"] / total, 3),
                "ms_per_run": round(item["us"] / 1e3, 3),
                "output_shape": _shape_summary(item["shape"]),
            }
            for item in slowest
        ],
        "by_op_type": {op: round(us / total, 3) for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "by_op_type_ms": {op: round(us / 1e3, 3) for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])},
    }


def _shape_summary(shape: Any) -> Any:
    """The profiler's ``output_type_shape`` (a list of ``{dtype: shape}``) as a list of plain shapes."""
    if not isinstance(shape, list):
        return shape
    return [list(next(iter(item.values()))) if isinstance(item, dict) and item else item for item in shape]
