"""ONNX Runtime vs TensorFlow: latency, throughput, memory and export cost, measured side by side.

Used by ``benchmarks/run.py`` (the fixed suite: every lambda-layer configuration and two LambdaResNets) and by
``lambda-export bench MODEL`` (one user model). Both write one JSON file (schema :data:`SCHEMA`), print a Markdown
table and draw a PNG chart.

How the figures are taken (written into the JSON under ``method`` as well):

* **Same conditions.** One process, same inputs (seeded N(0, 1) float32), same thread count N on both sides: TensorFlow
  ``intra_op`` and ``inter_op`` parallelism threads = N, ONNX Runtime ``intra_op_num_threads`` = N (sequential
  execution, so its inter-op pool is unused). TensorFlow runs a concrete ``tf.function`` in graph mode, and the same
  function with ``jit_compile=True`` (XLA); the better of the two is the baseline ("TF best"). ONNX Runtime runs two
  exports of the same Keras model on the CPU provider with every graph optimisation on: the ``portable`` export of
  :func:`lambda_export.conversion.convert` with ``optimize="speed"`` (what ``lambda-export MODEL --optimize speed``
  writes: the performance passes of :mod:`lambda_export.rewrites.performance` under the portable target's rules) and
  the plain tf2onnx export (``tf2onnx.convert.from_keras``, default optimisers, no rewrites of ours) as the anchor;
  the full suite also times the ``optimize="default"`` export (the fewest-nodes graph ``lambda-export MODEL`` writes). Both sides take host NumPy inputs and return host arrays.
* **Interleaved rounds.** After warm-up (XLA compiles there) the runners take turns: each round runs every runner for
  a block of about ``block_s`` seconds (the first run of a block is untimed when runs are short, so that a runtime
  does not pay for the other one's spinning threads or evicted caches), in an order that rotates every round. Latency
  statistics (median, p90) are over all timed runs; a ratio ORT/TF is computed pair by pair, round by round (block
  median over block median) and summarised by the median (and p10/p90) of those per-round ratios, which cancels most
  of the drift of a machine shared with other work.
* **FLOPs.** :func:`layer_flops` counts a lambda layer analytically (multiply-adds × 2 of every matrix product and
  convolution it computes; softmax, adds and data movement are not counted); :func:`onnx_flops` counts MatMul / Gemm /
  Conv in an ONNX graph (used for whole models, and cross-checked against the analytic count for layers). Achieved
  GFLOP/s = FLOPs / median latency. The practical ceiling is what ONNX Runtime reaches, in the same rounds, on one
  square MatMul (constant, pre-packed weight) of the same total FLOPs.
* **Memory.** Each side runs in a fresh subprocess (``python -m lambda_export.bench _worker``) that imports only its
  runtime (ORT: onnxruntime + NumPy, no TensorFlow), loads the model (ORT: the ``.onnx`` file; TF: the Keras model,
  rebuilt from its configuration or loaded from the user's file), runs it, and reads ``VmHWM`` (peak resident set)
  from ``/proc/self/status``. Reported: the peak of the whole process (``peak_rss_mb``, imports + load + runs), the
  resident size after the imports (``baseline_rss_mb``), and the peak during inference only
  (``inference_peak_rss_mb``: the peak counter is reset by writing 5 to ``/proc/self/clear_refs`` after loading and
  one warm-up run; null where the kernel refuses). ``ru_maxrss`` is recorded too but not used: Linux keeps it across
  ``execve``, so a forked worker reports at least its parent's resident size.
* **Noise.** Nothing here pins CPUs or stops other processes: report ratios, not absolute times; the load average
  before and after the run is in ``environment``.

Recommended ONNX Runtime settings (what the benchmark uses, :func:`ort_session_options`): ``intra_op_num_threads`` =
the number of cores you give the model, ``inter_op_num_threads`` = 1 with sequential execution,
``graph_optimization_level`` = ``ORT_ENABLE_ALL`` (enables the NCHWc convolution kernels and MatMul fusions),
``session.intra_op.allow_spinning`` = 1 (the default: worker threads spin briefly between ops instead of sleeping;
set it to 0 when the cores are shared with other busy work) and pre-packing of constant weights left on (the
default; ``session.disable_prepacking`` = 0).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

__all__ = [
    "SCHEMA",
    "BenchSettings",
    "LayerConfig",
    "bench_cmd",
    "default_suite",
    "layer_flops",
    "measure_interleaved",
    "onnx_flops",
    "ort_session_options",
    "run_suite",
]

SCHEMA = "lambda-export/bench/v1"
RATIO_TARGET_LAYER = 0.7
RATIO_TARGET_MODEL = 0.5
CEILING_TARGET = 0.6  # 2D global layers: fraction of the plain-MatMul GFLOP/s
TF_RUNNERS = ("tf_graph", "tf_xla")
ORT_RUNNERS = ("ort_portable", "ort_convert_only", "ort_tf2onnx")
CEILING_RUNNER = "ort_matmul"
RUNNER_LABELS = {
    "tf_graph": "TF graph",
    "tf_xla": "TF XLA",
    "ort_portable": "ORT portable --optimize speed",
    "ort_convert_only": "ORT portable --optimize default (the fewest-nodes graph)",
    "ort_tf2onnx": "ORT tf2onnx",
    "ort_matmul": "ORT MatMul ceiling",
}


# -- configurations ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerConfig:
    """One lambda layer in a one-layer Keras model: (b, *spatial, c) -> (b, *spatial, d).

    ``mode`` is ``absolute`` (global, learned (n, n, k, u) embedding), ``relative`` (global, relative table gathered
    to (n, n, k, u)) or ``local`` (lambda convolution with receptive field ``r``); ``spatial`` is (H, W) for a 2D
    layer (:class:`~lambda_layers.layers.LambdaNetwork2DConv`) and (T,) for a 1D layer
    (:class:`~lambda_layers.layers.LambdaNetwork1DConv`).
    """

    mode: str
    spatial: tuple[int, ...]
    channels: int
    batch: int = 1
    d: int = 64
    k: int = 16
    h: int = 4
    u: int = 1
    r: int = 7

    @property
    def rank(self) -> int:
        return len(self.spatial)

    @property
    def n(self) -> int:
        return math.prod(self.spatial)

    @property
    def v(self) -> int:
        return self.d // self.h

    @property
    def is_global(self) -> bool:
        return self.mode in ("absolute", "relative")

    @property
    def name(self) -> str:
        size = "x".join(map(str, self.spatial))
        mode = "global" if self.rank == 1 and self.mode == "absolute" else self.mode
        mode = f"local r={self.r}" if self.mode == "local" else mode
        return f"{self.rank}D {mode} {size}x{self.channels} u={self.u} b={self.batch}"

    @property
    def embedding_bytes(self) -> int:
        """Bytes of the (n, m, k, u) float32 position embedding a global layer multiplies with (0 for local)."""
        return self.n * self.n * self.k * self.u * 4 if self.is_global else 0

    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, *self.spatial, self.channels)

    def build(self) -> Any:
        """The one-layer Keras model (weights seeded)."""
        import keras

        from lambda_layers.layers import LambdaNetwork1DConv, LambdaNetwork2DConv

        keras.utils.set_random_seed(0)
        layer_cls = LambdaNetwork2DConv if self.rank == 2 else LambdaNetwork1DConv
        kwargs: dict[str, Any] = {"absolute": {"size": self.n}, "relative": {"relative": True}}.get(self.mode, {})
        if self.mode == "local":
            kwargs = {"receptive_kernel": self.r}
        inputs = keras.Input((*self.spatial, self.channels), name="x")
        outputs = layer_cls(self.d, key_depth=self.k, intra_depth=self.u, heads=self.h, name="lambda", **kwargs)(inputs)
        return keras.Model(inputs, outputs, name="lambda_layer")


def layer_flops(config: LayerConfig) -> dict[str, int]:
    """Analytic FLOP count (2 per multiply-add) of one lambda layer as implemented in ``lambda_layers.layers``.

    b batch, n = m positions, c input channels, k key depth, u intra-depth, h heads, v = d / h, r receptive field:

    * ``projections``      2·b·n·c·(h·k + u·k + u·v)   queries, keys, values (1×1 convolutions; BN folds away)
    * ``content_lambda``   2·b·m·u·k·v                 λc = Σ_{m,u} softmax_m(K) V
    * ``content_output``   2·b·n·h·k·v                 q·λc
    * ``position_lambda``  global: 2·b·n·m·k·u·v       λp[n] = Σ_{m,u} E[n,m] V
                           local:  2·b·n·k·u·v·r^D     the lambda convolution (D = 1 or 2 spatial dims, 'same' padding)
    * ``position_output``  2·b·n·h·k·v                 q·λp (computed as a second product, then added)

    Not counted: the key softmax (~3·b·m·u·k exp/add/div), the output add (b·n·h·v) and data movement.
    """
    b, n, m, c = config.batch, config.n, config.n, config.channels
    k, u, h, v = config.k, config.u, config.h, config.v
    position = 2 * b * n * m * k * u * v if config.is_global else 2 * b * n * k * u * v * config.r**config.rank
    terms = {
        "projections": 2 * b * n * c * (h * k + u * k + u * v),
        "content_lambda": 2 * b * m * u * k * v,
        "content_output": 2 * b * n * h * k * v,
        "position_lambda": position,
        "position_output": 2 * b * n * h * k * v,
    }
    terms["total"] = sum(terms.values())
    return terms


BUILTIN_MODELS = {
    "demo": "the demo LambdaResNet (lambda_layers.models.build_demo_model): 32×32×3 → 10, local lambda r=7",
    "lambda_resnet26_128": "LambdaResNet-26 (lambda_layers.models.lambda_resnet26) at 128×128×3 → 1000, local r=23",
}


def build_builtin(name: str) -> Any:
    import keras

    from lambda_layers import models

    keras.utils.set_random_seed(0)
    if name == "demo":
        return models.build_demo_model(seed=0)
    if name == "lambda_resnet26_128":
        return models.lambda_resnet26((128, 128, 3), 1000)
    raise ValueError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTIN_MODELS)}")


@dataclass
class Entry:
    """One thing to benchmark: a layer configuration, a built-in model or a user model file, at one batch size."""

    name: str
    kind: str  # "layer" | "model"
    spec: dict[str, Any]  # what a subprocess needs to rebuild the Keras model (see _build_from_spec)
    batch: int
    config: LayerConfig | None = None
    ratio_target: float = RATIO_TARGET_LAYER
    skip_reason: str | None = None
    memory: bool = True


def _build_from_spec(spec: dict[str, Any]) -> Any:
    kind = spec["kind"]
    if kind == "layer":
        return LayerConfig(**{**spec["config"], "spatial": tuple(spec["config"]["spatial"])}).build()
    if kind == "builtin":
        return build_builtin(spec["name"])
    if kind == "path":
        from lambda_export.loading import load_model

        return load_model(spec["path"], trust_code=spec.get("trust_code", False), imports=spec.get("imports", ())).model
    raise ValueError(f"unknown model spec {spec!r}")


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


# Converting a global lambda layer peaks at about 20× its position embedding in resident memory (measured 19–24× for
# the 39 MB embedding of a 28×28, u=1 layer and the 630 MB one of a 56×56, u=1 layer: +12 GB, mostly in TensorFlow's
# grappler). Before conversion._collecting it was ~55× and the 630 MB layer was OOM-killed at 24 GB.
CONVERSION_MEMORY_FACTOR = 25
CONVERSION_MEMORY_FRACTION = 0.75  # of the machine's RAM a conversion may be predicted to take


def _mem_total_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) * 1024
    return None


def memory_skip_reason(config: LayerConfig, budget_bytes: int) -> str | None:
    """Why a configuration is skipped for memory (None: it runs): the position embedding n·m·k·u is over 2 GiB (the
    limit of a TensorFlow tensor proto), exceeds the budget, or the conversion's predicted peak (:data:`CONVERSION_MEMORY_FACTOR` × embedding) exceeds
    :data:`CONVERSION_MEMORY_FRACTION` of this machine's RAM."""
    size = config.embedding_bytes
    what = f"position embedding n·m·k·u = {config.n}²·{config.k}·{config.u} floats = {size / 1e9:.2f} GB"
    if size > 2**31:
        return (
            f"{what}: over protobuf's 2 GB limit, so it cannot be converted (absolute: TensorFlow refuses to freeze it; "
            f"relative: tf2onnx's folding of the gathered table fails; lambda-export exits 3 with a message saying "
            f"so); a conversion would also be predicted to peak at ~{CONVERSION_MEMORY_FACTOR * size / 1e9:.0f} GB"
        )
    if size > budget_bytes:
        return f"{what} exceeds the memory budget of {budget_bytes / 1e9:.2f} GB"
    total = _mem_total_bytes()
    predicted = CONVERSION_MEMORY_FACTOR * size
    if total and predicted > CONVERSION_MEMORY_FRACTION * total:
        return (
            f"{what}: converting it is predicted to peak at {predicted / 1e9:.0f} GB resident (tf2onnx needs "
            f"~{CONVERSION_MEMORY_FACTOR}× the embedding), more than {CONVERSION_MEMORY_FRACTION:.0%} of this "
            f"machine's {total / 1e9:.1f} GB"
        )
    return None


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

    @classmethod
    def for_mode(cls, mode: str, threads: int = 2) -> BenchSettings:
        if mode == "smoke":
            return cls(threads=threads, budget_s=0.3, min_rounds=3, max_rounds=5, block_s=0.02, warmup=1, memory_runs=2)
        if mode == "quick":
            return cls(threads=threads, budget_s=2.5, min_rounds=5, max_rounds=60, block_s=0.05, warmup=2)
        return cls(threads=threads)


# -- environment ---------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "sse4")))
    return []


def _load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "onnxruntime", "onnxruntime-gpu", "onnx", "tf2onnx", "numpy", "lambda-export"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def environment_info(threads: int) -> dict[str, Any]:
    """CPU, cores, memory, OS, library versions and the thread settings of both runtimes."""
    total_memory = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                total_memory = round(int(line.split()[1]) / 1024**2, 1)
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": total_memory,
        "os": platform.platform(),
        "hostname_hash": abs(hash(platform.node())) % 10**8,
        "versions": _versions(),
        "threads": {
            "n": threads,
            "tf_intra_op": threads,
            "tf_inter_op": threads,
            "ort_intra_op": threads,
            "ort_inter_op": 1,
            "ort_execution_mode": "sequential",
        },
        "ort_session_options": recommended_ort_settings(threads),
        "tf_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 Linux builds)"),
        "load_average_start": _load_average(),
    }
    with contextlib.suppress(Exception):
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
    return info


# -- runtimes ------------------------------------------------------------------------------------------------------


def recommended_ort_settings(threads: int) -> dict[str, Any]:
    """The ONNX Runtime CPU settings we recommend (and measure with); see the module docstring."""
    return {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "session.intra_op.allow_spinning": "1",
        "session.disable_prepacking": "0",
    }


def ort_session_options(threads: int, *, profile_prefix: str | None = None, optimized_path: str | None = None) -> Any:
    """``onnxruntime.SessionOptions`` with :func:`recommended_ort_settings`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.disable_prepacking", "0")
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return options


def configure_tensorflow(threads: int) -> dict[str, Any]:
    """Set TF's intra/inter-op thread pools to ``threads`` (must run before TF executes anything)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    note = None
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:  # the runtime was initialised already
        note = f"could not set TF threads: {exc}"
    return {
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "note": note,
    }


def _tf_function(model: Any, xla: bool, input_specs: list[Any]) -> Any:
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert
    def forward(*args: Any) -> Any:
        return model(args[0] if len(args) == 1 else list(args), training=False)

    return tf.function(forward, jit_compile=xla).get_concrete_function(*input_specs)


def _as_numpy(result: Any) -> Any:
    if isinstance(result, (list, tuple)):
        return [np.asarray(r) for r in result]
    if isinstance(result, dict):
        return [np.asarray(r) for r in result.values()]
    return np.asarray(result)


def _first(result: Any) -> np.ndarray:
    while isinstance(result, (list, tuple)):
        result = result[0]
    return np.asarray(result)


def make_feed(inputs: Sequence[Any], batch: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs (float N(0, 1); integers in [0, 10)) for TensorInfo-like ``inputs`` at ``batch``."""
    rng = np.random.default_rng(seed)
    arrays = []
    for info in inputs:
        shape = (batch, *[int(d) for d in info.shape[1:]])
        dtype = np.dtype(info.dtype)
        if np.issubdtype(dtype, np.integer):
            arrays.append(rng.integers(0, 10, shape).astype(dtype))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def export_tf2onnx_plain(model: Any, inputs: Sequence[Any], opset: int) -> tuple[Any, str]:
    """The anchor: tf2onnx's own export with default settings (its optimisers, none of our rewrites).

    Same opset and input signature (dynamic batch) as the portable export. Returns (ModelProto, how).
    """
    import logging

    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    signature = [tf.TensorSpec(info.shape, tf.as_dtype(info.dtype), name=info.name) for info in inputs]
    from lambda_export.conversion import tf2onnx_memory_bounded

    sink = io.StringIO()
    # the memory bound only frees garbage between tf2onnx's optimizers: the graph is tf2onnx's own
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), tf2onnx_memory_bounded():
        try:
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
            how = "tf2onnx.convert.from_keras"
        except Exception:
            function = tf.function(lambda *args: model(args[0] if len(args) == 1 else list(args), training=False))
            proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
            how = "tf2onnx.convert.from_function (from_keras failed)"
    return proto, how


def onnx_flops(model: Any, batch: int) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of the MatMul, Gemm and Conv nodes of an ONNX graph at ``batch``.

    Shapes come from ``onnx.shape_inference`` with the batch dim of every input set to ``batch``; nodes whose shapes
    stay unknown are counted in ``unknown_nodes``.
    """
    import onnx
    from onnx import helper

    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.output.extend(model.graph.output)
    initializer_names = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        dims = copy.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
        graph.input.append(copy)
    for init in model.graph.initializer:
        small_int = init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and np.prod(init.dims) <= 64
        if small_int:
            graph.initializer.append(init)
        else:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    shapes: dict[str, list[int | None]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    counts = {"matmul": 0, "conv": 0, "unknown_nodes": 0}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        out = shapes.get(node.output[0])
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[1])
        if not out or any(d is None for d in out) or a is None or b is None:
            counts["unknown_nodes"] += 1
            continue
        if node.op_type == "Conv":
            group = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
            kernel = b[1:]  # (C_in / group, *kernel)
            if any(d is None for d in kernel):
                counts["unknown_nodes"] += 1
                continue
            counts["conv"] += 2 * math.prod(out) * math.prod(kernel)
            del group
        else:
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            depth = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
            if depth is None:
                counts["unknown_nodes"] += 1
                continue
            counts["matmul"] += 2 * math.prod(out) * depth
    counts["total"] = counts["matmul"] + counts["conv"]
    return counts


def matmul_model(flops: int) -> tuple[Any, tuple[int, int, int]]:
    """A one-MatMul ONNX model (s×s input, constant s×s weight) with 2·s³ ≈ ``flops``: the GEMM ceiling."""
    import onnx
    from onnx import helper, numpy_helper

    size = round((max(flops, 2 * 64**3) / 2) ** (1 / 3))
    size = max(64, min(size, 4096))
    weight = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "matmul_ceiling",
        [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, (size, size, size)


def _ort_session(model_bytes_or_path: Any, threads: int, **kwargs: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(
        model_bytes_or_path, ort_session_options(threads, **kwargs), providers=["CPUExecutionProvider"]
    )


def _serialize(model: Any, folder: Path, name: str) -> tuple[str, int]:
    """Write ``model`` to ``folder/name`` (external data above 1.9 GB); return (path, bytes on disk)."""
    import onnx

    path = folder / name
    if model.ByteSize() > 1_900_000_000:
        onnx.save_model(model, str(path), save_as_external_data=True, location=name + ".data")
        size = path.stat().st_size + (folder / (name + ".data")).stat().st_size
    else:
        path.write_bytes(model.SerializeToString())
        size = path.stat().st_size
    return str(path), size


# -- measurement ---------------------------------------------------------------------------------------------------


def _stats(samples: Sequence[float]) -> dict[str, float | int | None]:
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
    first-call times and the block sizes."""
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


# -- profiling -----------------------------------------------------------------------------------------------------


def profile_ort(model_bytes: bytes, feed: dict[str, np.ndarray], threads: int, runs: int = 5) -> dict[str, Any]:
    """ONNX Runtime's profiler over ``runs`` runs after two warm-up runs: the nodes and op types that take the most
    time (per node: the median of its per-run kernel times, so one preempted run does not decide)."""
    folder = tempfile.mkdtemp(prefix="lambda-bench-profile-")
    session = _ort_session(model_bytes, threads, profile_prefix=os.path.join(folder, "ort"))
    warm = 2
    for _ in range(warm + runs):
        session.run(None, feed)
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    with contextlib.suppress(OSError):
        Path(path).unlink()
        os.rmdir(folder)
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
    top = sorted(per_node.values(), key=lambda item: -item["us"])[:6]
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
            for item in top
        ],
        "by_op_type": {op: round(us / total, 3) for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])},
    }


def _shape_summary(shape: Any) -> Any:
    if not isinstance(shape, list):
        return shape
    return [list(next(iter(item.values()))) if isinstance(item, dict) and item else item for item in shape]


# -- memory (subprocesses) -----------------------------------------------------------------------------------------


def _proc_status() -> dict[str, float | None]:
    values: dict[str, float | None] = {"VmHWM": None, "VmRSS": None}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = round(int(line.split()[1]) / 1024, 1)  # kB -> MiB
    return values


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float | None:
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return None


def _memory_worker(args: dict[str, Any]) -> dict[str, Any]:
    """Peak resident memory of one side (runs inside a fresh ``python -m lambda_export.bench _worker``)."""
    side, threads, batch, runs = args["side"], int(args["threads"]), int(args["batch"]), int(args["runs"])
    started = time.perf_counter()
    if side == "ort":
        import onnxruntime as ort  # noqa: F401  (the import is part of the baseline)

        baseline = _proc_status()["VmRSS"]
        session = _ort_session(args["onnx"], threads)
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
        model = _build_from_spec(args["spec"])
        specs, arrays = [], []
        for value in model.inputs:
            info = type("Info", (), {"shape": tuple(value.shape), "dtype": value.dtype})
            array = make_feed([info], batch)[0]
            arrays.append(tf.constant(array))
            specs.append(tf.TensorSpec(array.shape, array.dtype))
        function = _tf_function(model, side == "tf_xla", specs)

        def run() -> Any:
            return _as_numpy(function(*arrays))

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


def _ort_dtype(type_text: str) -> str:
    mapping = {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(double)": "float64",
        "tensor(int64)": "int64",
        "tensor(int32)": "int32",
        "tensor(bool)": "bool",
    }
    return mapping.get(type_text, "float32")


def _run_worker(payload: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run ``python -m lambda_export.bench _worker`` with ``payload``; return its JSON answer (or an error)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = str(Path(__file__).resolve().parent.parent)
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


# -- export cost ---------------------------------------------------------------------------------------------------


def _export_cost_worker(args: dict[str, Any]) -> dict[str, Any]:
    """`lambda-export MODEL` (convert + CPU parity), timed step by step in a fresh process."""
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
    wrap(conversion, "run_cleanup", "rewrites")
    wrap(conversion, "_check_converted", "checks")
    with contextlib.suppress(ImportError):
        from lambda_export.rewrites import einsum

        wrap(einsum, "rewrite_einsum", "rewrites")
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


# -- one entry -----------------------------------------------------------------------------------------------------


def _log(settings: BenchSettings, message: str) -> None:
    if settings.verbose:
        click.echo(f"[bench] {message}", err=True)


def _portable_export(model: Any, settings: BenchSettings, input_shapes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The export that is timed: the ``portable`` export with the performance passes that ``convert(...,
    optimize="speed")`` runs (``lambda-export MODEL --optimize speed``), and, with ``settings.compare_raw``, the
    ``optimize="default"`` graph (the fewest nodes) when the passes changed anything.

    The model is converted once (``optimize="default"``) and the passes run on a copy, exactly as ``convert`` runs
    them (same function, same target, after the same clean-up); only node names differ from a separate
    ``optimize="speed"`` conversion. Converting twice would cost a second memory peak (≈ 20× the position embedding;
    before ``conversion._collecting`` a second conversion of the 268 MB T=1024, u=4 embedding was OOM-killed).
    """
    import copy

    from lambda_export.conversion import convert
    from lambda_export.rewrites.performance import optimize_for_ort

    started = time.perf_counter()
    result = convert(model, opset=settings.opset, target=settings.target, input_shapes=input_shapes)
    speed = copy.deepcopy(result.model)
    performance = optimize_for_ort(speed, target=settings.target)
    convert_s = time.perf_counter() - started
    raw_bytes = result.model.SerializeToString() if settings.compare_raw and performance else None
    if performance:
        result.passes = [*result.passes, *performance]
    return {
        "result": result,
        "model": speed,
        "raw_bytes": raw_bytes,
        "convert_s": convert_s,
        "performance_passes": performance,
    }


def _graph_info(model: Any, path: str, size: int) -> dict[str, Any]:
    import collections

    histogram = collections.Counter(node.op_type for node in model.graph.node)
    return {
        "nodes": len(model.graph.node),
        "file_bytes": size,
        "file_mb": round(size / 1e6, 3),
        "op_histogram": dict(sorted(histogram.items())),
        "file": os.path.basename(path),
    }


def _cache_key(spec: dict[str, Any]) -> str:
    """Entries that differ only in batch size share the Keras model and both exports (the batch is dynamic)."""
    spec = dict(spec)
    if spec.get("kind") == "layer":
        spec["config"] = {**spec["config"], "batch": 1}
    return json.dumps(spec, sort_keys=True, default=str)


def _prepare(entry: Entry, settings: BenchSettings, folder: Path, keras_model: Any) -> dict[str, Any]:
    """Build the Keras model, export it both ways and write the files (shared by the batch sizes of one model)."""
    started = time.perf_counter()
    model = keras_model if keras_model is not None else _build_from_spec(entry.spec)
    prepared: dict[str, Any] = {"model": model, "build_s": round(time.perf_counter() - started, 2), "errors": {}}
    portable = _portable_export(model, settings, entry.spec.get("input_shapes"))
    result = portable["result"]
    stem = _slug(entry.name.rsplit(" b=", 1)[0])
    path, size = _serialize(portable["model"], folder, f"{stem}.portable.onnx")
    prepared["portable_model"] = portable["model"]
    prepared["raw_bytes"] = portable["raw_bytes"]
    prepared["portable_path"] = path
    prepared["inputs"] = result.inputs
    prepared["portable_info"] = {
        **_graph_info(portable["model"], path, size),
        "convert_s": round(portable["convert_s"], 2),
        "passes": list(result.passes),
        "optimize": "speed",
        "performance_passes": portable["performance_passes"],
        "target_issues": len(result.target_issues),
    }
    _log(settings, f"{entry.name}: portable export {len(portable['model'].graph.node)} nodes, {size / 1e6:.1f} MB")
    prepared["anchor_model"] = None
    if settings.anchor:
        try:
            anchor_started = time.perf_counter()
            anchor_model, how = export_tf2onnx_plain(model, result.inputs, settings.opset)
            anchor_s = time.perf_counter() - anchor_started
            apath, asize = _serialize(anchor_model, folder, f"{stem}.tf2onnx.onnx")
            prepared["anchor_model"] = anchor_model
            prepared["anchor_info"] = {**_graph_info(anchor_model, apath, asize), "convert_s": round(anchor_s, 2)}
            prepared["anchor_info"]["how"] = how
        except Exception as exc:
            prepared["errors"]["ort_tf2onnx"] = _short(exc)
    return prepared


def bench_entry(
    entry: Entry,
    settings: BenchSettings,
    folder: Path,
    keras_model: Any = None,
    cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, check, time, profile and measure one entry; returns its JSON record.

    ``cache`` (a dict kept by the caller) holds the last model and its exports, reused by the next entry that differs
    only in batch size.
    """
    import keras
    import tensorflow as tf

    record: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "batch": entry.batch, "spec": entry.spec}
    if entry.config is not None:
        record["config"] = {**asdict(entry.config), "v": entry.config.v, "n": entry.config.n}
        record["embedding_mb"] = round(entry.config.embedding_bytes / 1e6, 1)
    record["ratio_target"] = entry.ratio_target
    if entry.skip_reason:
        record.update(status="skipped", reason=entry.skip_reason)
        return record
    started = time.perf_counter()
    cache = cache if cache is not None else {}
    key = _cache_key(entry.spec)
    if cache.get("key") != key:
        cache.clear()
        gc.collect()  # drop the previous model's graphs and sessions before converting the next one
        gc.collect()
        cache["prepared"] = _prepare(entry, settings, folder, keras_model)
        cache["key"] = key
        record["export_reused"] = False
    else:
        record["export_reused"] = True
    prepared = cache["prepared"]
    model = prepared["model"]
    record["build_s"] = prepared["build_s"]
    inputs = prepared["inputs"]
    path = prepared["portable_path"]
    feed_arrays = make_feed(inputs, entry.batch)
    feed = {info.name: array for info, array in zip(inputs, feed_arrays, strict=True)}
    record["export"] = {"portable": prepared["portable_info"]}
    if prepared.get("anchor_info"):
        record["export"]["tf2onnx"] = prepared["anchor_info"]
    portable = {"model": prepared["portable_model"]}

    # FLOPs: analytic for layers (cross-checked against the graph), counted from the graph for models: the tf2onnx
    # anchor's graph, which computes what TensorFlow computes (the speed export may do different work for the same
    # result, e.g. a small-map convolution as a dense GEMM), so that GFLOP/s compare like with like
    graph_flops = onnx_flops(portable["model"], entry.batch)
    if entry.config is not None:
        flops = layer_flops(entry.config)
        flops["graph_count"] = graph_flops["total"]
    else:
        counted = prepared.get("anchor_model") or portable["model"]
        model_flops = onnx_flops(counted, entry.batch)
        flops = {
            **model_flops,
            "graph_count": graph_flops["total"],
            "counted_on": "tf2onnx" if counted is not portable["model"] else "portable",
        }
    record["flops"] = flops

    # runners
    specs = [tf.TensorSpec(array.shape, tf.as_dtype(array.dtype)) for array in feed_arrays]
    tf_inputs = [tf.constant(array) for array in feed_arrays]
    runners: dict[str, Callable[[], Any]] = {}
    errors: dict[str, str] = dict(prepared["errors"])
    functions: dict[str, Any] = {}
    for name, xla in (("tf_graph", False), ("tf_xla", True)):
        if xla and not settings.xla:
            continue
        try:
            functions[name] = _tf_function(model, xla, specs)
        except Exception as exc:
            errors[name] = _short(exc)
    for name, function in functions.items():
        runners[name] = lambda f=function, x=tf_inputs: _as_numpy(f(*x))

    portable_bytes = portable["model"].SerializeToString()
    sessions = {"ort_portable": _ort_session(portable_bytes, settings.threads)}
    if prepared.get("raw_bytes"):
        sessions["ort_convert_only"] = _ort_session(prepared["raw_bytes"], settings.threads)
    if prepared["anchor_model"] is not None:
        sessions["ort_tf2onnx"] = _ort_session(prepared["anchor_model"].SerializeToString(), settings.threads)
    for name, session in sessions.items():
        names = [value.name for value in session.get_inputs()]
        session_feed = dict(zip(names, feed_arrays, strict=True))
        runners[name] = lambda s=session, f=session_feed: s.run(None, f)
    ceiling_shape = None
    if settings.ceiling:
        ceiling_model, ceiling_shape = matmul_model(int(flops["total"]))
        ceiling_session = _ort_session(ceiling_model.SerializeToString(), settings.threads)
        a = np.random.default_rng(2).standard_normal(ceiling_shape[:2]).astype(np.float32)
        runners[CEILING_RUNNER] = lambda s=ceiling_session, a=a: s.run(None, {"a": a})

    # numbers agree? (sanity: a benchmark of a wrong graph is worthless)
    reference = _first(runners["tf_graph"]()) if "tf_graph" in runners else None
    agreement = {}
    if reference is not None:
        for name in ("tf_xla", *sessions):
            if name in runners:
                out = _first(runners[name]())
                agreement[name] = float(np.max(np.abs(out.astype(np.float64) - reference))) if out.size else 0.0
    record["max_abs_diff_vs_tf_graph"] = agreement

    _log(settings, f"{entry.name}: measuring {', '.join(runners)}")
    measured = measure_interleaved(runners, **settings.timing())
    record["latency"] = {name: _stats(samples) for name, samples in measured["samples"].items()}
    record["first_call_s"] = measured["first_call_s"]
    record["rounds"] = len(measured["rounds"])
    record["block_runs"] = measured["block_runs"]
    record["measure_s"] = measured["measure_s"]
    record["errors"] = errors
    tf_present = [name for name in TF_RUNNERS if name in record["latency"]]
    tf_best = min(tf_present, key=lambda name: record["latency"][name]["median_ms"]) if tf_present else None
    record["tf_best"] = tf_best
    ratios: dict[str, Any] = {}
    for ort_name in ORT_RUNNERS:
        if ort_name not in record["latency"]:
            continue
        for tf_name in tf_present:
            ratios[f"{ort_name}/{tf_name}"] = paired_ratio(measured["rounds"], ort_name, tf_name)
        if tf_best:
            ratios[f"{ort_name}/tf_best"] = paired_ratio(measured["rounds"], ort_name, tf_best)
    record["ratios"] = ratios
    record["min_latency_ratio"] = min_latency_ratio(record)

    total = flops["total"]
    gflops = {}
    for name, stats in record["latency"].items():
        if name == CEILING_RUNNER or not stats["median_ms"]:
            continue
        gflops[name] = round(total / (stats["median_ms"] / 1e3) / 1e9, 2)
    record["gflops"] = gflops
    if ceiling_shape is not None and record["latency"].get(CEILING_RUNNER, {}).get("median_ms"):
        size = ceiling_shape[0]
        ceiling_flops = 2 * size**3
        ceiling_gflops = ceiling_flops / (record["latency"][CEILING_RUNNER]["median_ms"] / 1e3) / 1e9
        record["ceiling"] = {
            "matmul_shape": list(ceiling_shape),
            "flops": ceiling_flops,
            "gflops": round(ceiling_gflops, 2),
            "ort_portable_fraction": round(gflops.get("ort_portable", 0.0) / ceiling_gflops, 3),
        }
        if tf_best and tf_best in gflops:
            record["ceiling"]["tf_best_fraction"] = round(gflops[tf_best] / ceiling_gflops, 3)

    best_ratio = (ratios.get("ort_portable/tf_best") or {}).get("median")
    record["target"] = {
        "ratio": entry.ratio_target,
        "value": best_ratio,
        "met": None if best_ratio is None else best_ratio <= entry.ratio_target,
    }
    if entry.config is not None and entry.config.rank == 2 and entry.config.is_global and "ceiling" in record:
        fraction = record["ceiling"]["ort_portable_fraction"]
        record["target"]["ceiling_fraction"] = CEILING_TARGET
        record["target"]["ceiling_value"] = fraction
        record["target"]["ceiling_met"] = fraction >= CEILING_TARGET

    if settings.profile:
        try:
            estimate = record["latency"]["ort_portable"]["median_ms"] / 1e3
            runs = int(max(3, min(20, 1.0 / max(estimate, 1e-4))))
            record["profile"] = profile_ort(portable_bytes, feed, settings.threads, runs)
        except Exception as exc:
            record["profile"] = {"error": _short(exc)}

    # free the big things before the memory subprocesses start
    del runners, sessions, functions, tf_inputs, portable_bytes, model, prepared, portable
    gc.collect()
    keras.backend.clear_session()
    gc.collect()

    if settings.memory and entry.memory:
        _log(settings, f"{entry.name}: peak memory (fresh subprocesses)")
        record["memory"] = measure_memory(entry.spec, path, entry.batch, settings.threads, settings.memory_runs)
    else:
        record["memory"] = {"skipped": True, "reason": "not measured in this mode (full mode measures every entry)"}
    record["status"] = "ok"
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")[:80]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


# -- GPU -----------------------------------------------------------------------------------------------------------


def gpu_status() -> tuple[bool, str]:
    """Whether the ORT CUDA provider and a TF GPU are both available (and why not)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return False, f"onnxruntime is not importable: {exc}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, (
            "onnxruntime has no CUDAExecutionProvider (CPU wheel installed; the GPU table needs the `gpu` extra, "
            "onnxruntime-gpu, and a CUDA GPU)"
        )
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return False, "TensorFlow sees no GPU (install tensorflow[and-cuda] on a machine with a CUDA GPU)"
    return True, "available"


def bench_gpu(entries: Sequence[Entry], settings: BenchSettings) -> dict[str, Any]:
    """ORT CUDA vs TF GPU latency, with TF32 off and on (both sides), on the same entries; skipped without a GPU."""
    available, reason = gpu_status()
    if not available:
        return {"skipped": True, "reason": reason}
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    results = []
    for entry in entries:
        if entry.skip_reason:
            results.append({"name": entry.name, "status": "skipped", "reason": entry.skip_reason})
            continue
        record: dict[str, Any] = {"name": entry.name, "batch": entry.batch, "tf32": {}}
        try:
            model = _build_from_spec(entry.spec)
            portable = _portable_export(model, settings, entry.spec.get("input_shapes"))
            inputs = portable["result"].inputs
            arrays = make_feed(inputs, entry.batch)
            specs = [tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in arrays]
            model_bytes = portable["model"].SerializeToString()
            for tf32 in (False, True):
                tf.config.experimental.enable_tensor_float_32_execution(tf32)
                with tf.device("/GPU:0"):
                    graph = _tf_function(model, False, specs)
                    xla = _tf_function(model, True, specs) if settings.xla else None
                with tf.device("/CPU:0"):
                    host = [tf.constant(a) for a in arrays]  # host inputs: the copy to the GPU is part of the run
                options = ort_session_options(settings.threads)
                providers = [("CUDAExecutionProvider", {"use_tf32": "1" if tf32 else "0"}), "CPUExecutionProvider"]
                session = ort.InferenceSession(model_bytes, options, providers=providers)
                names = [v.name for v in session.get_inputs()]
                session_feed = dict(zip(names, arrays, strict=True))
                runners: dict[str, Callable[[], Any]] = {
                    "tf_gpu_graph": lambda g=graph, h=host: _as_numpy(g(*h)),
                    "ort_cuda": lambda s=session, f=session_feed: s.run(None, f),
                }
                if xla is not None:
                    runners["tf_gpu_xla"] = lambda g=xla, h=host: _as_numpy(g(*h))
                measured = measure_interleaved(runners, **settings.timing())
                latency = {name: _stats(samples) for name, samples in measured["samples"].items()}
                tf_names = [n for n in ("tf_gpu_graph", "tf_gpu_xla") if n in latency]
                best = min(tf_names, key=lambda n: latency[n]["median_ms"])
                record["tf32"]["on" if tf32 else "off"] = {
                    "latency": latency,
                    "tf_best": best,
                    "ratio": paired_ratio(measured["rounds"], "ort_cuda", best),
                    "providers": session.get_providers(),
                }
            record["status"] = "ok"
        except Exception as exc:
            record.update(status="error", reason=_short(exc))
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(True)
            keras.backend.clear_session()
            gc.collect()
        results.append(record)
    return {"skipped": False, "results": results}


# -- suite, report ---------------------------------------------------------------------------------------------------


def run_suite(
    entries: Sequence[Entry],
    settings: BenchSettings,
    *,
    mode: str,
    out_json: str | os.PathLike[str],
    export_cost_model: str | bool | None = True,
    gpu: bool = True,
    keras_models: dict[str, Any] | None = None,
    title: str = "lambda-export benchmark",
) -> dict[str, Any]:
    """Benchmark every entry, then export cost and the GPU table; write the JSON file and return the results."""
    started = time.perf_counter()
    tf_threads = configure_tensorflow(settings.threads)
    environment = environment_info(settings.threads)
    environment["threads"].update({k: v for k, v in tf_threads.items() if v is not None})
    import tensorflow as tf

    environment["tf_gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    folder = Path(settings.workdir or tempfile.mkdtemp(prefix="lambda-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "title": title,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "environment": environment,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("workdir", "verbose")},
        "method": _method_text(),
        "targets": {
            "ratio_layer": RATIO_TARGET_LAYER,
            "ratio_model": RATIO_TARGET_MODEL,
            "ceiling_fraction_2d_global": CEILING_TARGET,
        },
        "entries": [],
    }
    cache: dict[str, Any] = {}
    # The largest position embeddings run first, while the process is fresh: a conversion peaks at ~20x the
    # embedding, and what earlier entries leave behind in TensorFlow is not all given back (a full run that reached
    # the T=1024, u=4 layer as entry 31 was OOM-killed at 24 GB). The records are put back in suite order at the end.
    order = sorted(range(len(entries)), key=lambda i: -(entries[i].config.embedding_bytes if entries[i].config else 0))
    for position, index in enumerate(order, 1):
        entry = entries[index]
        _log(settings, f"({position}/{len(entries)}) {entry.name}")
        try:
            record = bench_entry(entry, settings, folder, (keras_models or {}).get(entry.name), cache)
        except Exception as exc:
            record = {"name": entry.name, "kind": entry.kind, "batch": entry.batch, "status": "error"}
            record["reason"] = _short(exc)
            record["traceback"] = traceback.format_exc()[-2000:]
            _log(settings, f"{entry.name}: ERROR {record['reason']}")
        if record.get("status") == "ok":
            ratio = record["target"]["value"]
            _log(settings, f"{entry.name}: ORT/TF best = {ratio} (target {entry.ratio_target})")
        results["entries"].append(record)
        _write_json(results, out_json)
    rank = {entry.name: position for position, entry in enumerate(entries)}
    results["entries"].sort(key=lambda record: rank.get(record["name"], len(entries)))
    cache.clear()
    gc.collect()
    if export_cost_model:
        _log(settings, "export cost (fresh subprocess)")
        model_path = export_cost_model if isinstance(export_cost_model, str) else None
        if model_path is None:
            model_path = str(folder / "demo_model.h5")
            demo = build_builtin("demo")
            demo.save(model_path)
        try:
            results["export_cost"] = export_cost(model_path, folder, cli=mode not in ("smoke", "quick"))
        except Exception as exc:
            results["export_cost"] = {"error": _short(exc)}
    else:
        results["export_cost"] = {"skipped": True, "reason": f"not measured in {mode} mode"}
    results["gpu"] = bench_gpu(entries, settings) if gpu else {"skipped": True, "reason": "--no-gpu"}
    results["summary"] = summarize(results)
    results["environment"]["load_average_end"] = _load_average()
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    _write_json(results, out_json)
    return results


def _method_text() -> dict[str, str]:
    doc = __doc__ or ""
    return {
        "timing": "interleaved rounds, block medians, paired per-round ratios; warm-up (and XLA compilation) excluded",
        "tf_baseline": "better (lower median) of tf.function graph mode and tf.function(jit_compile=True)",
        "ort": "CPUExecutionProvider, ORT_ENABLE_ALL, intra_op_num_threads = N, sequential",
        "flops": layer_flops.__doc__.split("\n\n", 1)[1].strip() if layer_flops.__doc__ else "",
        "ceiling": "ORT CPU on one square MatMul (constant weight) of the same total FLOPs, in the same rounds",
        "memory": "VmHWM of a fresh subprocess per side; inference peak after resetting the counter "
        "(/proc/self/clear_refs) once the model is loaded and has run once",
        "details": doc.split("How the figures are taken", 1)[-1][:3000],
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Which targets are met, which not, which entries were skipped."""
    met, missed, skipped, failed = [], [], [], []
    for record in results["entries"]:
        if record.get("status") == "skipped":
            skipped.append({"name": record["name"], "reason": record.get("reason")})
            continue
        if record.get("status") != "ok":
            failed.append({"name": record["name"], "reason": record.get("reason")})
            continue
        target = record["target"]
        item = {"name": record["name"], "ratio": target["value"], "target": target["ratio"]}
        if target.get("ceiling_value") is not None:
            item["ceiling_fraction"] = target["ceiling_value"]
            item["ceiling_met"] = target["ceiling_met"]
        if target["met"] and target.get("ceiling_met", True):
            met.append(item)
        else:
            profile = record.get("profile", {})
            if profile.get("top_nodes"):
                top = profile["top_nodes"][0]
                item["dominant_node"] = f"{top['op']} {top['share'] * 100:.0f}% ({top['node']})"
            missed.append(item)
    ratios = [item["ratio"] for item in met + missed if item["ratio"]]
    return {
        "met": met,
        "missed": missed,
        "skipped": skipped,
        "failed": failed,
        "geomean_ratio": round(float(np.exp(np.mean(np.log(ratios)))), 4) if ratios else None,
    }


def _write_json(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def min_latency_ratio(record: dict[str, Any], runner: str = "ort_portable") -> float | None:
    """Fastest ``runner`` run over the fastest run of the better TF: the least load-sensitive comparison."""
    latency = record.get("latency") or {}
    best = record.get("tf_best")
    if not best or runner not in latency or not latency[best].get("min_ms"):
        return None
    return round(latency[runner]["min_ms"] / latency[best]["min_ms"], 4)


def markdown_table(results: dict[str, Any]) -> str:
    """The results as Markdown: the latency/ratio table, then GFLOP/s, memory, export and GPU sections."""
    lines = [
        "| configuration | TF graph ms | TF XLA ms | ORT portable ms | ORT tf2onnx ms | ORT/TF best (p10–p90) "
        "| min-latency ratio | --optimize default / TF best | tf2onnx/TF best | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for record in results["entries"]:
        if record.get("status") != "ok":
            reason = record.get("reason", "")
            lines.append(f"| {record['name']} | {record.get('status')}: {reason} | | | | | | | | | |")
            continue
        lat = record["latency"]

        def ms(name: str, lat: dict[str, Any] = lat) -> str:
            return _fmt((lat.get(name) or {}).get("median_ms"))

        paired = record["ratios"].get("ort_portable/tf_best") or {}
        ratio = paired.get("median")
        spread = f" ({_fmt(paired.get('p10'))}–{_fmt(paired.get('p90'))})" if paired else ""
        anchor = (record["ratios"].get("ort_tf2onnx/tf_best") or {}).get("median")
        raw = (record["ratios"].get("ort_convert_only/tf_best") or {}).get("median")
        met = record["target"]["met"]
        best = record.get("tf_best") or ""
        best_case = min_latency_ratio(record)
        mark = {"tf_graph": "ᴳ", "tf_xla": "ˣ"}.get(best, "")
        lines.append(
            f"| {record['name']} | {ms('tf_graph')} | {ms('tf_xla')} | {ms('ort_portable')} | {ms('ort_tf2onnx')} "
            f"| **{_fmt(ratio, 3)}**{mark}{spread} | {_fmt(best_case)} | {_fmt(raw)} | {_fmt(anchor)} "
            f"| ≤ {record['target']['ratio']} "
            f"| {'✅' if met else '❌' if met is not None else '–'} |"
        )
    lines.append("")
    lines.append(
        "Latency: medians over all timed runs. Ratios: median (p10–p90) of the paired per-round ratios against the "
        "better TF (ᴳ graph mode, ˣ XLA); the targets are judged on it. *min-latency ratio*: fastest ORT run over "
        "fastest TF run, a best case that other work on the machine disturbs least. *ORT portable*: the "
        "`--optimize speed` export (`lambda-export MODEL --optimize speed`); *--optimize default*: the fewest-nodes "
        "export of the same target, which `lambda-export MODEL` writes (– where the two are the same graph)."
    )
    lines.append("")
    lines.append(
        "| configuration | GFLOP | ORT GFLOP/s | TF best GFLOP/s | MatMul ceiling GFLOP/s | ORT % of ceiling "
        "| peak MB TF | peak MB ORT | inference peak MB TF / ORT | ONNX MB portable / tf2onnx | nodes portable / tf2onnx "
        "| top ORT node |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for record in results["entries"]:
        if record.get("status") != "ok":
            continue
        gflops = record.get("gflops", {})
        ceiling = record.get("ceiling", {})
        memory = record.get("memory", {})
        tf_mem, ort_mem = memory.get("tf", {}), memory.get("ort", {})
        export = record.get("export", {})
        portable, anchor = export.get("portable", {}), export.get("tf2onnx", {})
        top = (record.get("profile") or {}).get("top_nodes") or [{}]
        top_text = f"{top[0].get('op', '')} {top[0].get('share', 0) * 100:.0f}%" if top[0] else "–"
        fraction = ceiling.get("ort_portable_fraction")
        lines.append(
            f"| {record['name']} | {_fmt(record['flops']['total'] / 1e9, 3)} | {_fmt(gflops.get('ort_portable'), 1)} "
            f"| {_fmt(gflops.get(record.get('tf_best') or ''), 1)} | {_fmt(ceiling.get('gflops'), 1)} "
            f"| {_fmt(None if fraction is None else fraction * 100, 0)}% "
            f"| {_fmt(tf_mem.get('peak_rss_mb'), 0)} "
            f"| {_fmt(ort_mem.get('peak_rss_mb'), 0)} "
            f"| {_fmt(tf_mem.get('inference_peak_rss_mb'), 0)} / {_fmt(ort_mem.get('inference_peak_rss_mb'), 0)} "
            f"| {_fmt(portable.get('file_mb'), 2)} / {_fmt(anchor.get('file_mb'), 2)} "
            f"| {portable.get('nodes', '–')} / {anchor.get('nodes', '–')} | {top_text} |"
        )
    lines.append("")
    cost = results.get("export_cost") or {}
    if cost.get("timings"):
        t = cost["timings"]
        lines.append(
            f"Export cost ({cost.get('model')}): TF import {_fmt(t.get('tf_import_s'))} s, other imports "
            f"{_fmt(t.get('other_imports_s'))} s, load {_fmt(t.get('load_s'))} s, conversion (tf2onnx) "
            f"{_fmt(t.get('conversion_s'))} s, rewrites {_fmt(t.get('rewrites_s'))} s, checks {_fmt(t.get('checks_s'))} s, "
            f"other {_fmt(t.get('convert_other_s'))} s, parity {_fmt(t.get('parity_s'))} s; in-process total "
            f"{_fmt(t.get('total_in_process_s'))} s, subprocess wall {_fmt(cost.get('wall_s'))} s"
            + (f"; `lambda-export` CLI end to end {_fmt(cost.get('cli_wall_s'))} s" if "cli_wall_s" in cost else "")
            + "."
        )
        for note in cost.get("notes", []):
            lines.append(f"Note: {note}")
    elif cost:
        lines.append(f"Export cost: {cost.get('reason') or cost.get('error')}")
    gpu = results.get("gpu") or {}
    if gpu.get("skipped"):
        lines.append("")
        lines.append(f"GPU: skipped – {gpu.get('reason')}")
    elif gpu.get("results"):
        lines.append("")
        lines.append(
            "| configuration (GPU) | TF best ms (TF32 off) | ORT CUDA ms | ratio | TF best ms (TF32 on) | ORT CUDA ms | ratio |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for record in gpu["results"]:
            if record.get("status") != "ok":
                lines.append(f"| {record['name']} | {record.get('status')}: {record.get('reason')} | | | | | |")
                continue
            cells = []
            for key in ("off", "on"):
                part = record["tf32"][key]
                cells += [
                    _fmt(part["latency"][part["tf_best"]]["median_ms"]),
                    _fmt(part["latency"]["ort_cuda"]["median_ms"]),
                    _fmt((part["ratio"] or {}).get("median")),
                ]
            lines.append(f"| {record['name']} | " + " | ".join(cells) + " |")
    summary = results.get("summary") or {}
    if summary.get("skipped"):
        lines.append("")
        for item in summary["skipped"]:
            lines.append(f"Skipped: {item['name']} – {item['reason']}")
    for item in summary.get("failed", []):
        lines.append(f"Failed: {item['name']} – {item['reason']}")
    return "\n".join(lines)


def environment_text(results: dict[str, Any]) -> str:
    env = results["environment"]
    versions = env.get("versions", {})
    threads = env.get("threads", {})
    return (
        f"{env.get('cpu_model')} ({env.get('usable_cores')} usable cores, {env.get('memory_gb')} GiB RAM), {env.get('os')}; "
        f"threads N = {threads.get('n')} (TF intra {threads.get('tf_intra_op')} / inter {threads.get('tf_inter_op')}, "
        f"ORT intra {threads.get('ort_intra_op')}); TensorFlow {versions.get('tensorflow')}, Keras {versions.get('keras')}, "
        f"ONNX Runtime {versions.get('onnxruntime') or versions.get('onnxruntime-gpu')}, tf2onnx {versions.get('tf2onnx')}, "
        f"onnx {versions.get('onnx')}, NumPy {versions.get('numpy')}, Python {versions.get('python')}; oneDNN: "
        f"{env.get('tf_onednn_opts')}; load average {env.get('load_average_start')} → {env.get('load_average_end')}"
    )


def draw_chart(results: dict[str, Any], path: str | os.PathLike[str]) -> str | None:
    """Latency ratio ORT/TF best per configuration (portable and tf2onnx anchor), log scale; None if no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [r for r in results["entries"] if r.get("status") == "ok"]
    if not records:
        return None
    names = [r["name"] for r in records]
    portable = [(r["ratios"].get("ort_portable/tf_best") or {}).get("median") or np.nan for r in records]
    anchor = [(r["ratios"].get("ort_tf2onnx/tf_best") or {}).get("median") or np.nan for r in records]
    targets = [r["target"]["ratio"] for r in records]
    height = max(3.0, 0.28 * len(records) + 1.5)
    fig, ax = plt.subplots(figsize=(10, height))
    y = np.arange(len(records))
    colors = ["#2a9d8f" if p <= t else "#e76f51" for p, t in zip(portable, targets, strict=True)]
    ax.barh(y - 0.2, portable, height=0.4, color=colors, label="ORT portable / TF best")
    ax.barh(y + 0.2, anchor, height=0.4, color="#b0b0b0", label="ORT tf2onnx (anchor) / TF best")
    for i, target in enumerate(targets):
        ax.plot([target, target], [i - 0.45, i + 0.45], color="black", linewidth=1)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ticks = [
        t for t in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0) if t <= 1.2 * np.nanmax([*portable, *anchor, 1.0])
    ]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency ratio (lower is better; black tick = target, dashed = parity with TF)")
    ax.set_title(
        f"{results.get('title', 'benchmark')}: ORT / TF latency, {results['environment']['threads']['n']} threads"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _write_marked(path: str | os.PathLike[str], begin: str, end: str, lines: list[str], title: str) -> None:
    """Replace the text between the ``begin`` and ``end`` markers of ``path`` (appending them if missing)."""
    path = Path(path)
    generated = [begin, *lines, end]
    text = path.read_text() if path.exists() else f"# {title}\n\n{begin}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + "\n".join(generated) + tail
    else:
        text = text.rstrip() + "\n\n" + "\n".join(generated) + "\n"
    path.write_text(text)


def write_results_md(results: dict[str, Any], path: str | os.PathLike[str], chart_name: str | None) -> None:
    """Write the generated part of RESULTS.md between markers, keeping any text outside them."""
    generated = [
        f"Generated {results['created']} by `python benchmarks/run.py` ({results['mode']} mode, "
        f"{results.get('runtime_s')} s).",
        "",
        f"Machine: {environment_text(results)}.",
        "",
    ]
    if results.get("merged_from"):
        generated += [f"Two invocations merged: {results['merged_from'].get('why')}.", ""]
    if chart_name:
        generated += [f"![ORT/TF latency ratio per configuration]({chart_name})", ""]
    generated += [markdown_table(results), ""]
    begin, end = "<!-- bench:begin (generated by benchmarks/run.py) -->", "<!-- bench:end -->"
    _write_marked(path, begin, end, generated, "Benchmark results")


def write_readme_summary(
    results: dict[str, Any], path: str | os.PathLike[str], chart_path: str | None, details: str
) -> None:
    """The README's short form of the latest results (machine, chart, ratio per configuration) between markers."""
    summary = summarize(results)
    lines = [
        f"Latest full run ({results['created'][:10]}, `make bench`), machine: {environment_text(results)}.",
        f"Targets met: {len(summary['met'])} of {len(summary['met']) + len(summary['missed'])} measured "
        f"configurations ({len(summary['skipped'])} skipped); all figures, p10–p90 spreads, GFLOP/s, memory and "
        f"profiles: [{Path(details).name}]({details}).",
        "",
    ]
    if results.get("merged_from"):
        lines += [f"Two invocations merged: {results['merged_from'].get('why')}.", ""]
    if chart_path:
        lines += [f"![ORT/TF latency ratio per configuration]({chart_path})", ""]
    lines += [
        "| configuration | ORT `--optimize speed` / TF best | ORT `--optimize default` / TF best | target | met |",
        "|---|---:|---:|---:|:---:|",
    ]
    for record in results["entries"]:
        if record.get("status") != "ok":
            continue
        speed = (record["ratios"].get("ort_portable/tf_best") or {}).get("median")
        default = (record["ratios"].get("ort_convert_only/tf_best") or {}).get("median") or speed
        met = record["target"]["met"]
        lines.append(
            f"| {record['name']} | {_fmt(speed, 3)} | {_fmt(default, 3)} | ≤ {record['target']['ratio']} "
            f"| {'✅' if met else '❌' if met is not None else '–'} |"
        )
    lines.append("")
    begin, end = "<!-- bench-summary:begin (generated by benchmarks/run.py) -->", "<!-- bench-summary:end -->"
    _write_marked(path, begin, end, lines, "README")


def report(results: dict[str, Any], out_json: str | os.PathLike[str], chart: bool = True) -> tuple[str, str | None]:
    """Print-ready Markdown (environment + tables) and the chart path (next to the JSON file)."""
    text = f"## {results.get('title')}\n\nMachine: {environment_text(results)}\n\n{markdown_table(results)}\n"
    chart_path = None
    if chart:
        chart_path = draw_chart(results, Path(out_json).with_suffix(".png"))
        if chart_path is None:
            text += "\n(chart skipped: matplotlib is not installed; pip install 'lambda-export[bench]')\n"
    return text, chart_path


# -- CLI: lambda-export bench MODEL ----------------------------------------------------------------------------------


def _parse_batches(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: expected e.g. 1,8", param_hint="--batch-sizes") from exc
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter(f"{text!r}: expected positive integers", param_hint="--batch-sizes")
    return values


@click.command("bench")
@click.argument("model", type=click.Path())
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Threads N for both sides.")
@click.option("--batch-sizes", default="1", show_default=True, help="Batch sizes to measure, e.g. 1,8.")
@click.option(
    "--budget", type=float, default=5.0, show_default=True, help="Seconds of interleaved timing per batch size."
)
@click.option(
    "--out",
    "out_json",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON file to write (default: MODEL.bench.json); the chart goes next to it (.png).",
)
@click.option("--memory/--no-memory", default=True, show_default=True, help="Peak RSS per side (subprocesses).")
@click.option("--xla/--no-xla", default=True, show_default=True, help="Also time TF with jit_compile=True.")
@click.option("--anchor/--no-anchor", default=True, show_default=True, help="Also time the plain tf2onnx export.")
@click.option("--profile/--no-profile", default=True, show_default=True, help="ORT profiler: the slowest nodes.")
@click.option("--export-cost/--no-export-cost", default=False, show_default=True, help="Time `lambda-export MODEL`.")
@click.option("--gpu/--no-gpu", default=True, show_default=True, help="ORT CUDA vs TF GPU table when a GPU is there.")
@click.option("--opset", type=click.IntRange(13, 18), default=17, show_default=True)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Shape for an input with unknown dims, e.g. images=?,64,64,3 (repeatable).",
)
@click.option("--import", "imports", multiple=True, metavar="MODULE_OR_FILE", help="Code registering custom layers.")
@click.option("--trust-code", is_flag=True, help="Allow Lambda layers (loading them executes code from the file).")
@click.option("-q", "--quiet", is_flag=True, help="Only the table.")
def bench_cmd(
    model: str,
    threads: int,
    batch_sizes: str,
    budget: float,
    out_json: str | None,
    memory: bool,
    xla: bool,
    anchor: bool,
    profile: bool,
    export_cost: bool,
    gpu: bool,
    opset: int,
    input_shapes: tuple[str, ...],
    imports: tuple[str, ...],
    trust_code: bool,
    quiet: bool,
) -> int:
    """ONNX Runtime vs TensorFlow on MODEL: latency (graph, XLA, ORT), GFLOP/s, peak memory, file size.

    Same inputs and N threads on both sides, interleaved rounds, paired ratios; writes JSON + PNG and prints a
    Markdown table. See lambda_export/bench.py for the method and the recommended ORT session options.
    """
    from lambda_export.cli import _parse_shape
    from lambda_export.errors import InputError

    batches = _parse_batches(batch_sizes)
    if not Path(model).exists():
        raise InputError(f"{model}: no such file or folder")
    settings = BenchSettings(
        threads=threads,
        budget_s=budget,
        memory=memory,
        xla=xla,
        anchor=anchor,
        profile=profile,
        opset=opset,
        verbose=not quiet,
    )
    configure_tensorflow(threads)  # before the model is loaded: TF's thread pools are fixed at first use
    from lambda_export.loading import load_model

    loaded = load_model(model, trust_code=trust_code, imports=imports)
    shapes = dict(_parse_shape(text) for text in input_shapes) or None
    spec = {
        "kind": "path",
        "path": str(Path(model).resolve()),
        "imports": list(imports),
        "trust_code": trust_code,
        "input_shapes": shapes,
    }
    base = Path(model).name.rstrip("/")
    entries = [Entry(f"{base} b={b}", "model", spec, b, ratio_target=RATIO_TARGET_MODEL) for b in batches]
    out = Path(out_json) if out_json else Path(str(Path(model)).rstrip("/") + ".bench.json")
    results = run_suite(
        entries,
        settings,
        mode="model",
        out_json=out,
        export_cost_model=str(Path(model).resolve()) if export_cost else None,
        gpu=gpu,
        keras_models={entry.name: loaded.model for entry in entries},
        title=f"lambda-export bench {base}",
    )
    text, chart = report(results, out)
    click.echo(text)
    if not quiet:
        click.echo(f"wrote {out}" + (f" and {chart}" if chart else ""), err=True)
    return 0


# -- worker entry point ----------------------------------------------------------------------------------------------


def _worker_main(argv: Iterable[str]) -> int:
    args = json.loads(next(iter(argv)))
    task = args.pop("task")
    if task == "memory":
        answer = _memory_worker(args)
    elif task == "export_cost":
        answer = _export_cost_worker(args)
    else:
        raise SystemExit(f"unknown task {task!r}")
    sys.stdout.write(json.dumps(answer, default=_json_default) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "_worker":
        sys.exit(_worker_main(sys.argv[2:]))
    sys.exit("usage: python -m lambda_export.bench _worker JSON (internal); use `lambda-export bench MODEL`")
