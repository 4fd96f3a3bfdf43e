"""How long and how to measure, and the timing itself: interleaved rounds, latency statistics, paired ratios.

:class:`BenchSettings` holds every knob of a run (threads, time budget, which runners and extras). The timing method
(interleaved rounds of blocks, per-round ratios of block medians) is described in :mod:`lambda_export.bench.harness`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BenchSettings", "latency_stats", "measure_interleaved", "min_latency_ratio", "paired_ratio"]


@dataclass
class BenchSettings:
    """How long and how to measure."""

    threads: int = 2
    budget_s: float = 8.0  # measurement time per entry (all runners together)
    min_rounds: int = 8
    max_rounds: int = 200
    block_s: float = 0.08
    warmup: int = 3
    memory: bool = True
    memory_runs: int = 5
    profile: bool = True
    xla: bool = True
    anchor: bool = True
    ceiling: bool = True
    openvino: bool = True  # also time the portable file on OpenVINO (f32 pinned) where the extra is installed
    int8: bool = True  # also time the int8 QDQ model that `--quantize int8` makes of the portable export (ORT CPU)
    compare_raw: bool = True  # also time convert()'s output without the performance passes (when they change it)
    opset: int = 17
    target: str = "portable"
    memory_budget_bytes: int = 1 << 30
    workdir: str | None = None
    verbose: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def timing(self) -> dict[str, Any]:
        """The keyword arguments of :func:`measure_interleaved` these settings give."""
        return {
            "budget_s": self.budget_s,
            "min_rounds": self.min_rounds,
            "max_rounds": self.max_rounds,
            "block_s": self.block_s,
            "warmup": self.warmup,
        }


def latency_stats(samples: Sequence[float]) -> dict[str, float | int | None]:
    """Median, p90, mean and min in milliseconds (4 decimals) and the count of ``samples`` (seconds)."""
    if not samples:
        return {"median_ms": None, "p90_ms": None, "mean_ms": None, "min_ms": None, "n": 0}
    array = np.asarray(samples) * 1e3
    return {
        "median_ms": round(float(np.median(array)), 4),
        "p90_ms": round(float(np.percentile(array, 90)), 4),
        "mean_ms": round(float(array.mean()), 4),
        "min_ms": round(float(array.min()), 4),
        "n": len(samples),
    }


def measure_interleaved(
    runners: dict[str, Callable[[], Any]],
    *,
    budget_s: float,
    min_rounds: int = 5,
    max_rounds: int = 200,
    block_s: float = 0.05,
    warmup: int = 2,
    max_block: int = 25,
) -> dict[str, Any]:
    """Run ``runners`` in interleaved rounds (see the method notes of :mod:`lambda_export.bench.harness`); return
    samples, per-round block medians, first-call times and the block sizes."""
    first_call: dict[str, float] = {}
    estimate: dict[str, float] = {}
    for name, fn in runners.items():
        started = time.perf_counter()
        fn()
        first_call[name] = time.perf_counter() - started
        last = first_call[name]
        for _ in range(max(0, warmup - 1)):
            started = time.perf_counter()
            fn()
            last = time.perf_counter() - started
        estimate[name] = max(last, 1e-6)
    blocks = {name: int(min(max_block, max(1, round(block_s / estimate[name])))) for name in runners}
    discard = {name: estimate[name] < 0.05 for name in runners}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    rounds: list[dict[str, float]] = []
    names = list(runners)
    started_all = time.perf_counter()
    while len(rounds) < max_rounds:
        if len(rounds) >= min_rounds and time.perf_counter() - started_all >= budget_s:
            break
        offset = len(rounds) % len(names)
        order = names[offset:] + names[:offset]
        medians: dict[str, float] = {}
        for name in order:
            fn = runners[name]
            if discard[name]:
                fn()
            block = []
            for _ in range(blocks[name]):
                started = time.perf_counter()
                fn()
                block.append(time.perf_counter() - started)
            samples[name].extend(block)
            medians[name] = statistics.median(block)
        rounds.append(medians)
    return {
        "samples": samples,
        "rounds": rounds,
        "first_call_s": {name: round(value, 4) for name, value in first_call.items()},
        "block_runs": blocks,
        "measure_s": round(time.perf_counter() - started_all, 2),
    }


def paired_ratio(rounds: Sequence[dict[str, float]], numerator: str, denominator: str) -> dict[str, float | int] | None:
    """Per-round ratio of block medians numerator/denominator, summarised (median, p10, p90, n)."""
    values = [r[numerator] / r[denominator] for r in rounds if numerator in r and denominator in r and r[denominator]]
    if not values:
        return None
    return {
        "median": round(float(np.median(values)), 4),
        "p10": round(float(np.percentile(values, 10)), 4),
        "p90": round(float(np.percentile(values, 90)), 4),
        "n": len(values),
    }


def min_latency_ratio(record: dict[str, Any], runner: str = "ort_portable") -> float | None:
    """Fastest ``runner`` run over the fastest run of the better TF: the least load-sensitive comparison."""
    latency = record.get("latency") or {}
    best = record.get("tf_best")
    if not best or runner not in latency or not latency[best].get("min_ms"):
        return None
    return round(latency[runner]["min_ms"] / latency[best]["min_ms"], 4)
