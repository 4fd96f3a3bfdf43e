"""How long and how to measure: :class:`BenchSettings`, every knob of a benchmark run.

The timing itself (interleaved rounds, latency statistics, paired ratios) is a library service,
:mod:`lambda_export.timing`; the method is described in :mod:`lambda_export.bench.harness`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BenchSettings"]


@dataclass
class BenchSettings:
    """How long and how to measure."""

    threads: int = 2
    budget_s: float = 8.0  # measurement time per entry (all runners together)
    min_rounds: int = 8
    max_rounds: int = 200
    block_s: float = 0.08
    warmup: int = 3
    # pause after each timed block: the runtimes share this process, and the one that ran last keeps its threads
    # spinning on the cores for a while (up to tens of ms); see lambda_export.timing
    settle_s: float = 0.05
    memory: bool = True
    memory_runs: int = 5
    profile: bool = True
    xla: bool = True
    anchor: bool = True
    ceiling: bool = True
    openvino: bool = True  # also time the portable file on OpenVINO (f32 pinned) where the extra is installed
    int8: bool = True  # also time the int8 QDQ model that `--quantize int8` makes of the portable export (ORT CPU)
    compare_raw: bool = True  # also time convert(optimize="size")'s graph (when the performance passes change it)
    opset: int = 17
    target: str = "portable"
    memory_budget_bytes: int = 1 << 30
    workdir: str | None = None
    verbose: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def timing(self) -> dict[str, Any]:
        """The keyword arguments of :func:`lambda_export.timing.measure_interleaved` these settings give."""
        return {
            "budget_s": self.budget_s,
            "min_rounds": self.min_rounds,
            "max_rounds": self.max_rounds,
            "block_s": self.block_s,
            "warmup": self.warmup,
            "settle_s": self.settle_s,
        }
