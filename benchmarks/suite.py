"""This repository's benchmark grid: which lambda layers and models ``benchmarks/run.py`` measures, and how long.

* :func:`layer_grid`: the full grid of lambda-layer configurations; :func:`default_suite`: the entries of a mode,
  ``full`` (``make bench``: the grid and both LambdaResNets), ``quick`` (``make bench-quick``) or ``smoke`` (the
  tests); :func:`settings_for_mode`: the timing budget of each mode.
* :func:`memory_skip_reason`: which global layers are skipped because converting them would not fit in memory.

The measuring itself is :mod:`lambda_export.bench`.
"""

from __future__ import annotations

from dataclasses import asdict

from lambda_export.bench import RATIO_TARGET_MODEL, BenchSettings, Entry, LayerConfig
from lambda_export.env import memory_total_gb

__all__ = [
    "CONVERSION_MEMORY_FACTOR",
    "CONVERSION_MEMORY_FRACTION",
    "default_suite",
    "layer_grid",
    "memory_skip_reason",
    "settings_for_mode",
]


# Peak memory of one benchmark entry of a global layer, in units of its position embedding: the conversion itself
# peaks at ~2.4× (weights traced as graph inputs, folded and attached once: 5.7 GB for the 2.4 GB embedding of a 56×56,
# u=4 relative layer, benchmarks/conversion_memory.py), and the entry then holds the file's tensor in ONNX Runtime (plus
# its pre-packed copy), in OpenVINO and in TensorFlow's gathered table at the same time. Before the weights were kept
# out of tf2onnx's graph it was ~20× (tf2onnx's folding and TensorFlow's grappler) and the limit was protobuf's 2 GB.
CONVERSION_MEMORY_FACTOR = 6
CONVERSION_MEMORY_FRACTION = 0.75  # of the machine's RAM an entry may be predicted to take


def memory_skip_reason(config: LayerConfig, budget_bytes: int) -> str | None:
    """Why a configuration is skipped for memory (None: it runs): the position embedding n·m·k·u exceeds the budget,
    or the entry's predicted peak (:data:`CONVERSION_MEMORY_FACTOR` × embedding) exceeds
    :data:`CONVERSION_MEMORY_FRACTION` of this machine's RAM."""
    size = config.embedding_bytes
    what = f"position embedding n·m·k·u = {config.n}²·{config.k}·{config.u} floats = {size / 1e9:.2f} GB"
    if size > budget_bytes:
        return f"{what} exceeds the memory budget of {budget_bytes / 1e9:.2f} GB"
    total_gb = memory_total_gb()
    total = total_gb * 1024**3 if total_gb else None
    predicted = CONVERSION_MEMORY_FACTOR * size
    if total and predicted > CONVERSION_MEMORY_FRACTION * total:
        return (
            f"{what}: the entry is predicted to peak at {predicted / 1e9:.0f} GB resident "
            f"(~{CONVERSION_MEMORY_FACTOR}× the embedding), more than {CONVERSION_MEMORY_FRACTION:.0%} of this "
            f"machine's {total / 1e9:.1f} GB"
        )
    return None


def layer_grid() -> list[LayerConfig]:
    """The full grid of the issue: 2D global absolute / relative / local r=7 on 28×28×16 and 56×56×32, 1D global
    (absolute) / local r=7 on T=256 and 1024 with 64 channels; d=64, k=16, h=4, u ∈ {1, 4}, batch ∈ {1, 8}."""
    configs = []
    for mode in ("absolute", "relative", "local"):
        for spatial, channels in (((28, 28), 16), ((56, 56), 32)):
            for u in (1, 4):
                for batch in (1, 8):
                    configs.append(LayerConfig(mode, spatial, channels, batch=batch, u=u))
    for mode in ("absolute", "local"):
        for t in (256, 1024):
            for u in (1, 4):
                for batch in (1, 8):
                    configs.append(LayerConfig(mode, (t,), 64, batch=batch, u=u))
    return configs


def default_suite(mode: str = "full", memory_budget_bytes: int = 1 << 30) -> list[Entry]:
    """The entries of ``benchmarks/run.py``: ``full`` (the whole grid and both models), ``quick`` (one small
    configuration per layer kind – 2D global relative, 2D local, 1D global, 1D local, u=1, batch 1 – and the demo model;
    < 2 minutes on 2 cores) or ``smoke`` (one tiny layer, for the tests)."""
    entries: list[Entry] = []
    if mode == "smoke":
        config = LayerConfig("local", (8, 8), 8, d=16, k=8, h=4, u=1, r=3)
        return [Entry(config.name, "layer", {"kind": "layer", "config": asdict(config)}, 1, config)]
    if mode == "quick":
        configs = [
            LayerConfig("relative", (28, 28), 16),
            LayerConfig("local", (28, 28), 16),
            LayerConfig("absolute", (256,), 64),
            LayerConfig("local", (256,), 64),
        ]
    else:
        configs = layer_grid()
    for config in configs:
        entry = Entry(config.name, "layer", {"kind": "layer", "config": asdict(config)}, config.batch, config)
        entry.memory = mode == "full"
        entry.skip_reason = memory_skip_reason(config, memory_budget_bytes)
        entries.append(entry)
    model_batches = (1, 8) if mode == "full" else (1,)
    for name in ("demo", "lambda_resnet26_128"):
        for batch in model_batches:
            entry = Entry(
                f"{name} b={batch}",
                "model",
                {"kind": "builtin", "name": name},
                batch,
                ratio_target=RATIO_TARGET_MODEL,
            )
            entry.memory = mode == "full" or batch == 1
            if mode == "quick" and name != "demo":
                entry.skip_reason = "quick mode: only the demo model (run without --quick for LambdaResNet-26)"
            entries.append(entry)
    return entries


def settings_for_mode(mode: str, threads: int = 2) -> BenchSettings:
    """How long to measure in each mode: ``smoke`` (a fraction of a second per entry, for the tests), ``quick``
    (2.5 s per entry) or ``full`` (the :class:`~lambda_export.bench.BenchSettings` defaults)."""
    if mode == "smoke":
        return BenchSettings(
            threads=threads, budget_s=0.3, min_rounds=3, max_rounds=5, block_s=0.02, warmup=1, memory_runs=2
        )
    if mode == "quick":
        return BenchSettings(threads=threads, budget_s=2.5, min_rounds=5, max_rounds=60, block_s=0.05, warmup=2)
    return BenchSettings(threads=threads)
