"""How fast the int8 model runs against its float32 export on this CPU: ONNX Runtime, the same batch and threads,
runs interleaved so that a load change hits both (the method of :mod:`lambda_export.timing`).

int8 pays off only on CPUs with int8 dot-product instructions (VNNI, AMX): without them ONNX Runtime's int8
convolutions can run slower than its float32 ones (the demo model: 0.89x on an AVX2 EPYC). ``--quantize int8``
measures it on the spot and says so, rather than let a user ship a model that is slower than the one it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

__all__ = [
    "DEFAULT_TIMING_BUDGET_S",
    "NO_INT8_DOT_PRODUCT",
    "SpeedCheck",
    "cpu_warning",
    "int8_speed",
    "speed_line",
    "speed_warning",
]

DEFAULT_TIMING_BUDGET_S = 3.0
"""Seconds of interleaved runs after warm-up: enough for ~10 paired rounds of a 100 ms model; the median of the
paired ratios moves by a few percent from one run to the next on a shared machine (the bench's method notes)."""


NO_INT8_DOT_PRODUCT = "this CPU has no int8 dot-product instructions (no VNNI or AMX: {flags})"


@dataclass(frozen=True)
class SpeedCheck:
    """int8 vs float32 latency in ONNX Runtime CPU on one batch.

    Attributes:
        batch: samples per run (the model's fixed batch, else the verdict's evaluation batch).
        threads: ONNX Runtime intra-op threads (this machine's usable cores).
        float32_ms, int8_ms: median latency per run of each model.
        speedup: float32 time / int8 time, the median of the per-round ratios (above 1: int8 is faster).
        speedup_p10, speedup_p90: the spread of those per-round ratios.
        rounds: paired rounds measured.
    """

    batch: int
    threads: int
    float32_ms: float
    int8_ms: float
    speedup: float
    speedup_p10: float
    speedup_p90: float
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able record (the ``speed`` part of the quantization summary)."""
        return {
            "runtime": "onnxruntime-cpu",
            "batch": self.batch,
            "threads": self.threads,
            "float32_ms": self.float32_ms,
            "int8_ms": self.int8_ms,
            "speedup": self.speedup,
            "speedup_p10": self.speedup_p10,
            "speedup_p90": self.speedup_p90,
            "rounds": self.rounds,
        }

    def line(self) -> str:
        """One line for the terminal and the report (:func:`speed_line`)."""
        return speed_line(self.to_dict())


def speed_line(record: dict[str, Any]) -> str:
    """``int8 1.83x the float32 speed in ONNX Runtime CPU (...)`` from a :meth:`SpeedCheck.to_dict` record."""
    return (
        f"int8 {record['speedup']:.2f}x the float32 speed in ONNX Runtime CPU ({record['int8_ms']:.2f} vs "
        f"{record['float32_ms']:.2f} ms per batch of {record['batch']}, {record['threads']} thread(s), median of "
        f"{record['rounds']} paired rounds, p10-p90 {record['speedup_p10']:.2f}-{record['speedup_p90']:.2f}x)"
    )


def int8_speed(
    float_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    *,
    budget_s: float = DEFAULT_TIMING_BUDGET_S,
    threads: int | None = None,
) -> SpeedCheck:
    """Time ``int8_model`` against ``float_model`` on ``feed`` (arrays by input name, the batch both models take).

    Both run in CPU sessions with the recommended settings (:func:`lambda_export.ort.cpu_session`), ``threads``
    intra-op threads (default: this machine's usable cores), in interleaved rounds for ``budget_s`` seconds (at least
    5 rounds) after warm-up.
    """
    from lambda_export import env, ort
    from lambda_export.io import model_bytes
    from lambda_export.timing import latency_stats, measure_interleaved, paired_ratio

    threads = threads or env.usable_cores() or 1
    sessions = {
        "float32": ort.cpu_session(model_bytes(float_model), threads),
        "int8": ort.cpu_session(model_bytes(int8_model), threads),
    }
    runners = {name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()}
    measured = measure_interleaved(runners, budget_s=budget_s, min_rounds=5, block_s=0.1, warmup=2)
    ratio = paired_ratio(measured["rounds"], "float32", "int8")
    assert ratio is not None  # at least min_rounds rounds, each with both runners
    stats = {name: latency_stats(samples) for name, samples in measured["samples"].items()}
    return SpeedCheck(
        batch=int(next(iter(feed.values())).shape[0]),
        threads=int(threads),
        float32_ms=float(stats["float32"]["median_ms"]),
        int8_ms=float(stats["int8"]["median_ms"]),
        speedup=round(ratio["median"], 3),
        speedup_p10=round(ratio["p10"], 3),
        speedup_p90=round(ratio["p90"], 3),
        rounds=int(ratio["n"]),
    )


def _no_dot_product(flags: list[str] | None) -> str | None:
    """What :data:`NO_INT8_DOT_PRODUCT` says of this CPU (``flags``: default this CPU's), or None where it has the
    instructions or it cannot be told (:func:`lambda_export.env.int8_dot_product`)."""
    from lambda_export import env

    if env.int8_dot_product(flags) is not False:
        return None
    shown = [flag for flag in (flags if flags is not None else env.cpu_flags()) if flag.startswith("avx")]
    return NO_INT8_DOT_PRODUCT.format(flags=" ".join(shown) or "no AVX")


def cpu_warning(flags: list[str] | None = None) -> str | None:
    """The warning for an int8 model that was not timed, on a CPU without VNNI/AMX (else None)."""
    missing = _no_dot_product(flags)
    if missing is None:
        return None
    return (
        f"{missing}: ONNX Runtime's int8 kernels gain little on it and small convolutions run slower than float32 "
        f"(the demo model: 0.89x); time both on the deployment CPU with `lambda-export bench MODEL`"
    )


def speed_warning(check: SpeedCheck, flags: list[str] | None = None) -> str | None:
    """A warning when the int8 model was not faster than float32 here (its median speed-up below 1), else None;
    it names the missing instructions where the CPU lacks them (``flags``: default this CPU's)."""
    if check.speedup >= 1.0:
        return None
    missing = _no_dot_product(flags)
    return (
        f"int8 ran slower than float32 here: {check.line()}"
        + (f"; {missing}" if missing else "")
        + "; ship the float32 export for speed, or int8 for its size (or on a CPU with VNNI/AMX)"
    )
