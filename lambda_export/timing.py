"""Timing one function against another on a shared machine: interleaved rounds, latency statistics, paired ratios.

A library service: ``lambda-export MODEL --quantize int8`` times its int8 model against the float32 one with it
(:mod:`lambda_export.quantization.speed`), and ``lambda-export bench`` times ONNX Runtime against TensorFlow
(:mod:`lambda_export.bench.harness`, whose docstring describes the method in full).

* :func:`measure_interleaved`: after warm-up, the runners take turns in rounds; each round runs every runner for a block
  of about ``block_s`` seconds, in an order that rotates every round, so that a change of load hits all of them.
* :func:`latency_stats`: median, p90, mean and min of the timed runs, in milliseconds.
* :func:`paired_ratio`: the ratio of two runners round by round (block median over block median), summarised by the
  median and p10/p90 of those ratios, which cancels most of the drift of a machine shared with other work.

NumPy only: nothing here imports ONNX, ONNX Runtime or TensorFlow (the benchmark's memory workers import it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["latency_stats", "measure_interleaved", "paired_ratio"]


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
    """Run ``runners`` in interleaved rounds (see the module docstring); return samples, per-round block medians,
    first-call times and the block sizes.

    The first run of a block is untimed when runs are short (under 50 ms), so that a runner does not pay for the
    previous one's spinning threads or evicted caches.
    """
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
