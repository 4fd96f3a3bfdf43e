"""How fast the int8 model runs against its float32 export on this CPU: ONNX Runtime, the same batch and threads,
runs interleaved so that a load change hits both (the method of :mod:`lambda_export.timing`).

int8 pays off only on CPUs with int8 dot-product instructions (VNNI, AMX): without them ONNX Runtime's int8
convolutions can run slower than its float32 ones (the demo model: 0.89x on an AVX2 EPYC). ``--quantize int8``
measures it on the spot and says so, rather than let a user ship a model that is slower than the one it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

__all__ = [
    "DEFAULT_TIMING_BUDGET_S",
    "KERNEL_KINDS",
    "NO_INT8_DOT_PRODUCT",
    "SpeedCheck",
    "benefit_record",
    "cpu_warning",
    "int8_speed",
    "kernel_kind",
    "kernel_times",
    "size_reason",
    "slow_reasons",
    "speed_line",
    "speed_warning",
]

DEFAULT_TIMING_BUDGET_S = 3.0
"""Seconds of interleaved runs after warm-up: enough for ~10 paired rounds of a 100 ms model; the median of the
paired ratios moves by a few percent from one run to the next on a shared machine (the bench's method notes)."""


NO_INT8_DOT_PRODUCT = "this CPU has no int8 dot-product instructions (no VNNI or AMX: {flags})"


KERNEL_KINDS = {
    "multiply-add": ("Conv", "ConvTranspose", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"),
    "int8 multiply-add": (
        "QLinearConv",
        "NhwcQLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "ConvInteger",
        "QGemm",
        "DynamicQuantizeMatMul",
    ),
    "Q/DQ conversion": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
    "layout": ("Transpose", "ReorderInput", "ReorderOutput"),
}
"""ONNX Runtime CPU kernels (profile ``op_name``) by what they do; other ``QLinear*`` kernels are ``int8 element-wise``
and the rest ``other``. The multiply-add kernels of both kinds are compared together: the int8 graph runs some of the
float32 graph's convolutions and GEMMs in int8 and keeps the others in float."""


def kernel_kind(op: str) -> str:
    """The :data:`KERNEL_KINDS` key of an ONNX Runtime kernel, ``int8 element-wise`` or ``other``."""
    for kind, ops in KERNEL_KINDS.items():
        if op in ops:
            return kind
    return "int8 element-wise" if op.startswith("QLinear") else "other"


@dataclass(frozen=True)
class SpeedCheck:
    """int8 vs float32 latency in ONNX Runtime CPU on one batch, and what the int8 file brings.

    Attributes:
        batch: samples per run (the model's fixed batch, else the verdict's evaluation batch).
        threads: ONNX Runtime intra-op threads (this machine's usable cores).
        float32_ms, int8_ms: median latency per run of each model.
        speedup: float32 time / int8 time, the median of the per-round ratios (above 1: int8 is faster).
        speedup_p10, speedup_p90: the spread of those per-round ratios.
        rounds: paired rounds measured.
        int8_macs, total_macs: multiply-adds per sample run in int8, and in all (Conv/MatMul/Gemm nodes by their
            shapes: :func:`lambda_export.quantization.engine.int8_macs`); None when not counted.
        float32_bytes, int8_bytes: the serialized sizes of both graphs (0 when not given).
        kernels: ms per run by kernel kind (:func:`kernel_kind`) in ONNX Runtime's profile, per model
            (``{"float32": {...}, "int8": {...}}``); empty when not profiled.
        size_reason: why the int8 file is not smaller (:func:`size_reason`), else None.
        cpu_int8_dot_product: whether this CPU lists VNNI/AMX (None: cannot be told); information, not a reason.
    """

    batch: int
    threads: int
    float32_ms: float
    int8_ms: float
    speedup: float
    speedup_p10: float
    speedup_p90: float
    rounds: int
    int8_macs: int | None = None
    total_macs: int | None = None
    float32_bytes: int = 0
    int8_bytes: int = 0
    kernels: dict[str, dict[str, float]] = field(default_factory=dict)
    size_reason: str | None = None
    cpu_int8_dot_product: bool | None = None

    @property
    def mac_share(self) -> float | None:
        """The share of the multiply-adds that run in int8 (None when not counted)."""
        if self.int8_macs is None or not self.total_macs:
            return None
        return self.int8_macs / self.total_macs

    @property
    def size_ratio(self) -> float | None:
        """int8 file size / float32 file size (None when the sizes were not given)."""
        return self.int8_bytes / self.float32_bytes if self.float32_bytes else None

    def benefit(self) -> dict[str, Any]:
        """:func:`benefit_record` of this measurement."""
        return benefit_record(
            mac_share=self.mac_share,
            size_ratio=self.size_ratio,
            speedup=self.speedup,
            reasons=slow_reasons(self.kernels, self.mac_share) if self.speedup < 1.0 else [],
            size_reason=self.size_reason,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able record (the ``speed`` part of the quantization summary; its ``benefit`` is
        :meth:`benefit`)."""
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
            "int8_macs": self.int8_macs,
            "total_macs": self.total_macs,
            "kernels_ms": {name: dict(times) for name, times in self.kernels.items()},
            "cpu_int8_dot_product": self.cpu_int8_dot_product,
            "benefit": self.benefit(),
        }

    def line(self) -> str:
        """One line for the terminal and the report (:func:`speed_line`)."""
        return speed_line(self.to_dict())


_MOST_IN_FLOAT = 0.5
"""Below this share of the multiply-adds in int8, "most multiply-adds kept in float" is a reason int8 gains little."""
_NOTABLE = 0.05
"""A kernel kind explains a slowdown when int8 spends more time in it than float32 by at least this share of the
float32 run."""


def slow_reasons(kernels: dict[str, dict[str, float]], mac_share: float | None) -> list[str]:
    """Why the int8 graph ran slower, from what was measured: the share of the multiply-adds in int8 (when most stayed
    in float), then each kind of kernel on which ONNX Runtime's profile shows the int8 graph spending more time than
    the float32 one (ms per run, biggest difference first)."""
    reasons = []
    if mac_share is not None and mac_share < _MOST_IN_FLOAT:
        reasons.append(f"most multiply-adds kept in float ({mac_share:.0%} in int8)")
    float32, int8 = kernels.get("float32") or {}, kernels.get("int8") or {}
    if not float32 or not int8:
        return reasons
    scale = sum(float32.values()) or 1.0
    merged = {
        "convolutions and GEMMs": ("multiply-add", "int8 multiply-add"),
        "Q/DQ conversions": ("Q/DQ conversion",),
        "int8 element-wise kernels": ("int8 element-wise",),
        "transposes and layout reorders": ("layout",),
    }
    found = []
    for label, kinds in merged.items():
        low = sum(int8.get(kind, 0.0) for kind in kinds)
        high = sum(float32.get(kind, 0.0) for kind in kinds)
        if low - high >= _NOTABLE * scale:
            if label == "convolutions and GEMMs" and int8.get("int8 multiply-add"):
                text = (
                    f"{label} {low:.2f} ms in the int8 graph (ONNX Runtime's int8 kernels "
                    f"{int8['int8 multiply-add']:.2f} ms) vs {high:.2f} ms in float32"
                )
            elif high:
                text = f"{label} {low:.2f} vs {high:.2f} ms"
            else:
                text = f"{label} {low:.2f} ms"
            found.append((low - high, text))
    found.sort(key=lambda item: -item[0])
    if found:
        reasons.append("profiled per batch: " + ", ".join(text for _, text in found))
    return reasons


def size_reason(float_model: onnx.ModelProto, int8_model: onnx.ModelProto) -> str | None:
    """Why the int8 file is not smaller than the float32 one (None when it is): the bytes its int8 weights save
    against what the Q/DQ nodes and their scales and zero points add, measured on the two graphs."""
    float_bytes, int8_bytes = float_model.ByteSize(), int8_model.ByteSize()
    if int8_bytes < float_bytes:
        return None
    low = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    int8_weights = sum(len(init.raw_data) for init in int8_model.graph.initializer if init.data_type in low)
    saved = 3 * int8_weights  # each int8 weight replaced 4 float32 bytes
    qdq = sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in int8_model.graph.node)
    added = int8_bytes - float_bytes + saved
    return (
        f"{qdq} Q/DQ nodes with their scales and zero points add {added / 1e3:.1f} kB, "
        f"the int8 weights save {saved / 1e3:.1f} kB"
    )


def benefit_record(
    *,
    mac_share: float | None,
    size_ratio: float | None,
    speedup: float | None,
    reasons: Sequence[str] = (),
    size_reason: str | None = None,
) -> dict[str, Any]:
    """What int8 brings here: the JSON record the verdict line states
    (:func:`lambda_export.quantization.verdict.verdict_line`).

    Returns:
        ``int8_mac_share`` (of the multiply-adds), ``size_ratio`` (int8 / float32 file), ``speed_ratio`` (int8 speed /
        float32 speed on this CPU; None when not timed), ``smaller``, ``faster`` (None when not timed), ``benefit``
        (smaller or faster), ``reason`` (why int8 is larger or slower, from the measurement; None when it is neither).
    """
    smaller = None if size_ratio is None else size_ratio < 1.0
    faster = None if speedup is None else speedup >= 1.0
    why = list(reasons) if faster is False else []
    if smaller is False and size_reason:
        why.append(size_reason)
    return {
        "int8_mac_share": None if mac_share is None else round(mac_share, 4),
        "size_ratio": None if size_ratio is None else round(size_ratio, 4),
        "speed_ratio": speedup,
        "smaller": smaller,
        "faster": faster,
        "benefit": bool(smaller or faster),
        "reason": "; ".join(why) or None,
    }


def speed_line(record: dict[str, Any]) -> str:
    """``int8 1.83x the float32 speed in ONNX Runtime CPU (...)`` from a :meth:`SpeedCheck.to_dict` record."""
    return (
        f"int8 {record['speedup']:.2f}x the float32 speed in ONNX Runtime CPU ({record['int8_ms']:.2f} vs "
        f"{record['float32_ms']:.2f} ms per batch of {record['batch']}, {record['threads']} thread(s), median of "
        f"{record['rounds']} paired rounds, p10-p90 {record['speedup_p10']:.2f}-{record['speedup_p90']:.2f}x)"
    )


_PROFILED_RUNS = 10
"""Runs of each model in ONNX Runtime's profiler after the timing (fewer for a slow model: about a quarter of the
timing budget, at least 3)."""


def kernel_times(model_bytes: bytes, feed: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, float]:
    """ms per run by kernel kind (:func:`kernel_kind`) in ONNX Runtime's CPU profile of ``runs`` runs (after one
    warm-up run, which the profile also holds and which is left out)."""
    import json
    import tempfile
    from pathlib import Path

    from lambda_export import ort

    with tempfile.TemporaryDirectory(prefix="lambda-export-profile-") as folder:
        session = ort.cpu_session(model_bytes, threads, profile_prefix=str(Path(folder) / "profile"))
        session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    started = None
    runs_seen = [event for event in events if event.get("name") == "model_run"]
    if len(runs_seen) > 1:
        started = runs_seen[0]["ts"] + runs_seen[0]["dur"]  # leave the warm-up run out
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if started is not None and event["ts"] < started:
            continue
        kind = kernel_kind(str((event.get("args") or {}).get("op_name", "")))
        totals[kind] = totals.get(kind, 0.0) + event["dur"] / 1000.0
    count = max(len(runs_seen) - 1, 1) if started is not None else runs + 1
    return {kind: round(total / count, 3) for kind, total in sorted(totals.items())}


def int8_speed(
    float_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    *,
    budget_s: float = DEFAULT_TIMING_BUDGET_S,
    threads: int | None = None,
    profile: bool = True,
) -> SpeedCheck:
    """Time ``int8_model`` against ``float_model`` on ``feed`` (arrays by input name, the batch both models take),
    and count what int8 brings: the multiply-adds it runs in int8, both file sizes, and (``profile``) each model's
    kernel times in ONNX Runtime's profiler, which say where an int8 graph loses time.

    Both run in CPU sessions with the recommended settings (:func:`lambda_export.ort.cpu_session`), ``threads``
    intra-op threads (default: this machine's usable cores), in interleaved rounds for ``budget_s`` seconds (at least
    5 rounds) after warm-up.
    """
    from lambda_export import env, ort
    from lambda_export.io import model_bytes
    from lambda_export.quantization.engine import int8_macs
    from lambda_export.timing import latency_stats, measure_interleaved, paired_ratio

    threads = threads or env.usable_cores() or 1
    files = {"float32": model_bytes(float_model), "int8": model_bytes(int8_model)}
    sessions = {name: ort.cpu_session(data, threads) for name, data in files.items()}
    runners = {name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()}
    measured = measure_interleaved(runners, budget_s=budget_s, min_rounds=5, block_s=0.1, warmup=2)
    ratio = paired_ratio(measured["rounds"], "float32", "int8")
    assert ratio is not None  # at least min_rounds rounds, each with both runners
    stats = {name: latency_stats(samples) for name, samples in measured["samples"].items()}
    kernels: dict[str, dict[str, float]] = {}
    if profile:
        slowest = max(float(stats[name]["median_ms"]) for name in stats) / 1000.0
        runs = max(3, min(_PROFILED_RUNS, int(budget_s / 4 / max(slowest, 1e-6))))
        kernels = {name: kernel_times(data, feed, threads, runs) for name, data in files.items()}
    counted, total = int8_macs(float_model, int8_model)
    return SpeedCheck(
        batch=int(next(iter(feed.values())).shape[0]),
        threads=int(threads),
        float32_ms=float(stats["float32"]["median_ms"]),
        int8_ms=float(stats["int8"]["median_ms"]),
        speedup=round(ratio["median"], 3),
        speedup_p10=round(ratio["p10"], 3),
        speedup_p90=round(ratio["p90"], 3),
        rounds=int(ratio["n"]),
        int8_macs=counted,
        total_macs=total,
        float32_bytes=len(files["float32"]),
        int8_bytes=len(files["int8"]),
        kernels=kernels,
        size_reason=size_reason(float_model, int8_model),
        cpu_int8_dot_product=env.int8_dot_product(),
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
    """A warning when the int8 model was not faster than float32 here (its median speed-up below 1), else None.

    It says why from the measurement (:func:`slow_reasons`: the multiply-adds kept in float, the kernels ONNX
    Runtime's profile shows slower); a CPU without int8 dot-product instructions is named as a fact, and the advice to
    try a CPU with VNNI/AMX is given only there (``flags``: default this CPU's): on one that has them it would be
    contradicted by the machine itself.
    """
    if check.speedup >= 1.0:
        return None
    missing = _no_dot_product(flags)
    reasons = slow_reasons(check.kernels, check.mac_share)
    return (
        f"int8 ran slower than float32 here: {check.line()}"
        + (f"; why: {'; '.join(reasons)}" if reasons else "")
        + (f"; {missing}" if missing else "")
        + "; ship the float32 export for speed"
        + (", or int8 for its size" if check.size_ratio is None or check.size_ratio < 1.0 else "")
        + (" (or time int8 on a CPU with VNNI/AMX)" if missing else "")
    )
