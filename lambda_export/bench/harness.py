"""Benchmark entries end to end: export, check, time, profile and measure them; the suite run; the GPU table.

Used by ``benchmarks/run.py`` (the repository's fixed suite, ``benchmarks/suite.py``) and by ``lambda-export bench
MODEL`` (one user model, :mod:`lambda_export.cli.bench`). Both call :func:`run_suite`, which writes one JSON file
(schema :data:`SCHEMA`); :mod:`lambda_export.bench.render` turns it into a Markdown table and a PNG chart.

How the figures are taken (written into the JSON under ``method`` as well):

* **Same conditions.** One process, same inputs (seeded N(0, 1) float32), same thread count N on both sides: TensorFlow
  ``intra_op`` and ``inter_op`` parallelism threads = N, ONNX Runtime ``intra_op_num_threads`` = N (sequential
  execution, so its inter-op pool is unused). TensorFlow runs a concrete ``tf.function`` in graph mode, and the same
  function with ``jit_compile=True`` (XLA); the better of the two is the baseline ("TF best"). ONNX Runtime runs two
  exports of the same Keras model on the CPU provider with every graph optimisation on: the ``portable`` export of
  :func:`lambda_export.conversion.convert` with ``optimize="speed"`` (what ``lambda-export MODEL --optimize speed``
  writes: the performance passes of :mod:`lambda_export.passes.performance` under the portable target's rules) and
  the plain tf2onnx export (``tf2onnx.convert.from_keras``, default optimisers, no rewrites of ours) as the anchor;
  the full suite also times the ``optimize="size"`` export (the fewest-nodes graph ``lambda-export MODEL``
  writes). Both sides take host NumPy inputs and return host arrays.
* **Interleaved rounds.** After warm-up (XLA compiles there) the runners take turns: each round runs every runner for
  a block of about ``block_s`` seconds (the first run of a block is untimed when runs are short, so that a runtime
  does not pay for evicted caches), in an order that rotates every round, with a pause of ``settle_s`` (50 ms) after
  each block: the runtime that ran last keeps its threads spinning on the cores for a while, and without the pause
  the next one ran on what they left (measured on 2 cores, ``lambda_resnet26t`` at batch 1 next to TensorFlow and
  OpenVINO: timm's ONNX file 76 ms instead of 44, TF XLA 100 ms instead of 74; with the pause every runtime is within
  ~10 % of its time alone in a process and the ratios within 3 % of those measured with each runtime in a process
  of its own, :class:`lambda_export.timing.IsolatedRunners`, which ``benchmarks/timm_bench.py`` uses). Latency
  statistics (median, p90) are over all timed runs; a ratio ORT/TF is computed pair by pair, round by round (block
  median over block median) and summarised by the median (and p10/p90) of those per-round ratios, which cancels most
  of the drift of a machine shared with other work.
* **FLOPs.** :func:`~lambda_export.bench.flops.layer_flops` counts a lambda layer analytically (multiply-adds × 2
  of every matrix product and convolution it computes; softmax, adds and data movement are not counted);
  :func:`~lambda_export.bench.flops.onnx_flops` counts MatMul / Gemm / Conv in an ONNX graph (used for whole models,
  and cross-checked against the analytic count for layers). Achieved
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

Recommended ONNX Runtime settings (what the benchmark uses, :func:`lambda_export.ort.cpu_session_options`):
``intra_op_num_threads`` = the number of cores you give the model, ``inter_op_num_threads`` = 1 with sequential
execution,
``graph_optimization_level`` = ``ORT_ENABLE_ALL`` (enables the NCHWc convolution kernels and MatMul fusions),
``session.intra_op.allow_spinning`` = 1 (the default: worker threads spin briefly between ops instead of sleeping;
set it to 0 when the cores are shared with other busy work) and pre-packing of constant weights left on (the
default; ``session.disable_prepacking`` = 0).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import platform
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

from lambda_export import env
from lambda_export.bench.configs import LayerConfig, build_builtin, build_from_spec
from lambda_export.bench.flops import layer_flops, onnx_flops
from lambda_export.bench.memory import export_cost, export_cost_worker, measure_memory, memory_worker
from lambda_export.bench.profile import profile_ort
from lambda_export.bench.render import (
    RATIO_TARGET_OPENVINO,
    json_default,
    min_latency_ratio,
    openvino_target,
    summarize,
    write_json,
)
from lambda_export.bench.runners import (
    as_numpy,
    configure_tensorflow,
    export_tf2onnx_plain,
    first_output,
    graph_info,
    int8_export,
    make_feed,
    matmul_model,
    openvino_runner,
    portable_export,
    serialize_model,
    tf_function,
)
from lambda_export.bench.settings import BenchSettings
from lambda_export.errors import described
from lambda_export.ort import CUDA, cpu_session, cpu_session_options, recommended_cpu_settings, session_providers
from lambda_export.timing import latency_stats, measure_interleaved, paired_ratio

__all__ = [
    "CEILING_RUNNER",
    "CEILING_TARGET",
    "INT8_RUNNER",
    "OPENVINO_MISSING",
    "OPENVINO_RUNNER",
    "ORT_RUNNERS",
    "RATIO_TARGET_LAYER",
    "RATIO_TARGET_MODEL",
    "RATIO_TARGET_OPENVINO",
    "SCHEMA",
    "TF_RUNNERS",
    "Entry",
    "bench_entry",
    "bench_gpu",
    "cpu_id",
    "environment_info",
    "gpu_status",
    "run_suite",
    "worker_main",
]

SCHEMA = "lambda-export/bench/v1"
RATIO_TARGET_LAYER = 0.7
RATIO_TARGET_MODEL = 0.5
CEILING_TARGET = 0.6  # 2D global layers: fraction of the plain-MatMul GFLOP/s
TF_RUNNERS = ("tf_graph", "tf_xla")
INT8_RUNNER = "ort_int8"  # the int8 QDQ model `lambda-export MODEL --quantize int8` makes of the portable export
INT8_MAX_BYTES = 256 * 10**6  # larger exports are not quantized by the benchmark (one quantizer pass per node group)
ORT_RUNNERS = ("ort_portable", "ort_convert_only", "ort_tf2onnx", INT8_RUNNER)
OPENVINO_RUNNER = "openvino"  # the portable file on OpenVINO, f32 pinned: what a user would pick instead of ORT
OPENVINO_MISSING = "not installed (pip install 'lambda-export[openvino]')"
CEILING_RUNNER = "ort_matmul"


@dataclass
class Entry:
    """One thing to benchmark: a layer configuration, a built-in model or a user model file, at one batch size."""

    name: str
    kind: str  # "layer" | "model"
    spec: dict[str, Any]  # what a subprocess needs to rebuild the Keras model (see build_from_spec)
    batch: int
    config: LayerConfig | None = None
    ratio_target: float = RATIO_TARGET_LAYER
    skip_reason: str | None = None
    memory: bool = True


def cpu_id() -> dict[str, Any]:
    """The CPU's vendor, family, model and stepping from ``/proc/cpuinfo`` (x86 Linux; ``{}`` elsewhere): the model
    name alone can be as vague as "AMD EPYC" on a virtual machine, the family and model numbers tell the generation."""
    fields = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping"}
    ident: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor is enough
            key, _, value = line.partition(":")
            name = fields.get(key.strip())
            if name:
                value = value.strip()
                ident[name] = int(value) if value.isdigit() else value
    return ident


def environment_info(threads: int) -> dict[str, Any]:
    """CPU (model, family/model numbers, SIMD flags), cores, memory, OS, library versions and the thread settings of
    both runtimes."""
    info: dict[str, Any] = {
        "cpu_model": env.cpu_model(),
        "cpu_id": cpu_id(),
        "cpu_flags": env.cpu_flags(),
        "int8_dot_product": env.int8_dot_product(),
        "logical_cores": os.cpu_count(),
        "usable_cores": env.usable_cores(),
        "memory_gb": env.memory_total_gb(),
        "os": platform.platform(),
        "versions": env.package_versions(),
        "threads": {
            "n": threads,
            "tf_intra_op": threads,
            "tf_inter_op": threads,
            "ort_intra_op": threads,
            "ort_inter_op": 1,
            "ort_execution_mode": "sequential",
        },
        "ort_session_options": recommended_cpu_settings(threads),
        "tf_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 Linux builds)"),
        "load_average_start": env.load_average(),
    }
    with contextlib.suppress(Exception):
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
    return info


def _log(settings: BenchSettings, message: str) -> None:
    """A progress line on stderr, unless ``settings.verbose`` is off."""
    if settings.verbose:
        click.echo(f"[bench] {message}", err=True)


def _cache_key(spec: dict[str, Any]) -> str:
    """Entries that differ only in batch size share the Keras model and both exports (the batch is dynamic)."""
    spec = dict(spec)
    if spec.get("kind") == "layer":
        spec["config"] = {**spec["config"], "batch": 1}
    return json.dumps(spec, sort_keys=True, default=str)


# -- the typed records of one entry ---------------------------------------------------------------------------------


@dataclass
class Export:
    """One ONNX export of the entry's model, written to the work folder: the graph, its file, and its part of the
    record's ``export`` section (nodes, size, op histogram and how it was made)."""

    model: Any
    path: str
    size: int
    info: dict[str, Any]


@dataclass
class Prepared:
    """What the batch sizes of one model share (cached between entries): the Keras model and its exports.

    ``portable`` is the timed graph (``convert(optimize="speed")``); ``size_model`` the ``optimize="size"`` graph
    (when it differs); ``large``: the portable model is too large for one protobuf message (ONNX Runtime loads its
    file, with external data). ``errors``: why an optional runner is missing, by runner name.
    """

    model: Any
    build_s: float
    inputs: list[Any]
    portable: Export
    large: bool
    size_model: Any = None
    int8: Export | None = None
    anchor: Export | None = None
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Runners:
    """The timed functions of one entry by runner name, why the missing ones are missing, and what they hold.

    ``sessions``: the ONNX Runtime runners' names; ``portable_source``: what the portable session was made from
    (bytes, or the file of a large model), which the profiler loads again; ``ceiling_shape``: the shape of the MatMul
    ceiling (None: not measured); ``held``: the TF functions, inputs and sessions, dropped before the memory
    subprocesses start.
    """

    calls: dict[str, Callable[[], Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    sessions: list[str] = field(default_factory=list)
    portable_source: bytes | str = b""
    ceiling_shape: tuple[int, int, int] | None = None
    held: list[Any] = field(default_factory=list)


# -- preparing: the Keras model and its exports ----------------------------------------------------------------------


def _prepare(entry: Entry, settings: BenchSettings, folder: Path, keras_model: Any) -> Prepared:
    """Build the Keras model, export it (speed, size, int8, plain tf2onnx) and write the files."""
    from lambda_export.io import too_large_for_protobuf  # here: io imports onnx (the memory workers must not)

    started = time.perf_counter()
    model = keras_model if keras_model is not None else build_from_spec(entry.spec)
    build_s = round(time.perf_counter() - started, 2)
    exported = portable_export(model, settings, entry.spec.get("input_shapes"))
    result = exported.result
    stem = _slug(entry.name.rsplit(" b=", 1)[0])
    path, size = serialize_model(exported.model, folder, f"{stem}.portable.onnx")
    info = {
        **graph_info(exported.model, path, size),
        "convert_s": round(exported.convert_s, 2),
        "passes": list(result.passes),
        "optimize": "speed",
        "performance_passes": exported.performance_passes,
        "target_issues": len(result.target_issues),
    }
    prepared = Prepared(
        model=model,
        build_s=build_s,
        inputs=result.inputs,
        portable=Export(exported.model, path, size, info),
        large=too_large_for_protobuf(exported.model),
        size_model=exported.size_model,
    )
    _log(settings, f"{entry.name}: portable export {len(exported.model.graph.node)} nodes, {size / 1e6:.1f} MB")
    _prepare_int8(prepared, settings, folder, stem, entry.name)
    _prepare_anchor(prepared, entry, settings, folder, stem)
    return prepared


def _prepare_int8(prepared: Prepared, settings: BenchSettings, folder: Path, stem: str, name: str) -> None:
    """The int8 QDQ model of the portable export and its file (or why there is none, in ``prepared.errors``)."""
    if not settings.int8:
        return
    size = prepared.portable.size
    if size > INT8_MAX_BYTES:
        prepared.errors[INT8_RUNNER] = (
            f"not measured: the float32 file is over {INT8_MAX_BYTES / 1e6:.0f} MB (quantizing it takes minutes)"
        )
        return
    try:
        int8 = int8_export(prepared.model, prepared.portable.model, settings.target)
        path, int8_size = serialize_model(int8.model, folder, f"{stem}.int8.onnx")
        info = {
            **graph_info(int8.model, path, int8_size),
            "quantize_s": round(int8.quantize_s, 2),
            "float_groups": int8.float_groups,
            "size_ratio": round(int8_size / size, 4) if size else None,
        }
        prepared.int8 = Export(int8.model, path, int8_size, info)
        _log(settings, f"{name}: int8 export {int8_size / 1e6:.1f} MB, in float: {int8.float_groups}")
    except Exception as exc:
        prepared.errors[INT8_RUNNER] = described(exc)


def _prepare_anchor(prepared: Prepared, entry: Entry, settings: BenchSettings, folder: Path, stem: str) -> None:
    """The plain tf2onnx export and its file (or why there is none, in ``prepared.errors``)."""
    if not settings.anchor:
        return
    if entry.config is not None and entry.config.embedding_bytes > 2**31:
        # TensorFlow cannot freeze (absolute) and tf2onnx cannot fold (relative) a tensor over protobuf's 2 GB: the
        # plain export fails, after a peak of ~20× the tensor that this machine may not have
        prepared.errors["ort_tf2onnx"] = "plain tf2onnx cannot convert a position embedding over 2 GB"
        return
    try:
        started = time.perf_counter()
        model, how = export_tf2onnx_plain(prepared.model, prepared.inputs, settings.opset)
        convert_s = time.perf_counter() - started
        path, size = serialize_model(model, folder, f"{stem}.tf2onnx.onnx")
        info = {**graph_info(model, path, size), "convert_s": round(convert_s, 2), "how": how}
        prepared.anchor = Export(model, path, size, info)
    except Exception as exc:
        prepared.errors["ort_tf2onnx"] = described(exc)


def _prepared(
    entry: Entry, settings: BenchSettings, folder: Path, keras_model: Any, cache: dict[str, Any]
) -> tuple[Prepared, bool]:
    """The entry's :class:`Prepared` from ``cache`` when the previous entry differs only in batch size (True), else
    a new one, after dropping the previous model (False)."""
    key = _cache_key(entry.spec)
    if cache.get("key") == key:
        return cache["prepared"], True
    cache.clear()
    gc.collect()  # drop the previous model's graphs and sessions before converting the next one
    gc.collect()
    cache["prepared"] = _prepare(entry, settings, folder, keras_model)
    cache["key"] = key
    return cache["prepared"], False


# -- one entry, step by step -----------------------------------------------------------------------------------------


def _entry_header(entry: Entry) -> dict[str, Any]:
    """The start of the entry's record: what it is, its configuration and its target."""
    record: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "batch": entry.batch, "spec": entry.spec}
    if entry.config is not None:
        record["config"] = {**asdict(entry.config), "v": entry.config.v, "n": entry.config.n}
        record["embedding_mb"] = round(entry.config.embedding_bytes / 1e6, 1)
    record["ratio_target"] = entry.ratio_target
    return record


def _export_section(prepared: Prepared) -> dict[str, Any]:
    """The record's ``export`` section: each written export's graph and file."""
    section = {"portable": prepared.portable.info}
    if prepared.anchor is not None:
        section["tf2onnx"] = prepared.anchor.info
    if prepared.int8 is not None:
        section["int8"] = prepared.int8.info
    return section


def _flops(entry: Entry, prepared: Prepared) -> dict[str, Any]:
    """FLOPs: analytic for layers (cross-checked against the graph), counted from the graph for models.

    For models the count is the tf2onnx anchor's graph, which computes what TensorFlow computes (the speed export may
    do different work for the same result, e.g. a small-map convolution as a dense GEMM), so that GFLOP/s compare
    like with like.
    """
    portable = prepared.portable.model
    graph_flops = onnx_flops(portable, entry.batch)
    if entry.config is not None:
        return {**layer_flops(entry.config), "graph_count": graph_flops["total"]}
    counted = prepared.anchor.model if prepared.anchor is not None else portable
    return {
        **onnx_flops(counted, entry.batch),
        "graph_count": graph_flops["total"],
        "counted_on": "tf2onnx" if counted is not portable else "portable",
    }


def _tf_runners(runners: Runners, model: Any, arrays: list[np.ndarray], settings: BenchSettings) -> None:
    """TensorFlow in graph mode and with XLA, on host tensors of ``arrays``."""
    import tensorflow as tf

    specs = [tf.TensorSpec(array.shape, tf.as_dtype(array.dtype)) for array in arrays]
    tf_inputs = [tf.constant(array) for array in arrays]
    runners.held.append(tf_inputs)
    for name, xla in (("tf_graph", False), ("tf_xla", True)):
        if xla and not settings.xla:
            continue
        try:
            function = tf_function(model, xla, specs)
        except Exception as exc:
            runners.errors[name] = described(exc)
            continue
        runners.held.append(function)
        runners.calls[name] = lambda f=function, x=tf_inputs: as_numpy(f(*x))


def _ort_runners(runners: Runners, prepared: Prepared, arrays: list[np.ndarray], threads: int) -> None:
    """ONNX Runtime CPU sessions of the exports: portable (the timed file), size, plain tf2onnx, int8."""
    from lambda_export.io import model_bytes  # here: io imports onnx (the memory workers must not)

    # the bytes, or the written file (with its external data) for a model over protobuf's 2 GB
    runners.portable_source = prepared.portable.path if prepared.large else model_bytes(prepared.portable.model)
    sources: dict[str, Any] = {"ort_portable": runners.portable_source}
    if prepared.size_model is not None:
        sources["ort_convert_only"] = model_bytes(prepared.size_model)
    if prepared.anchor is not None:
        sources["ort_tf2onnx"] = model_bytes(prepared.anchor.model)
    if prepared.int8 is not None:
        sources[INT8_RUNNER] = model_bytes(prepared.int8.model)
    for name, source in sources.items():
        session = cpu_session(source, threads)
        runners.held.append(session)
        runners.sessions.append(name)
        names = [value.name for value in session.get_inputs()]
        session_feed = dict(zip(names, arrays, strict=True))
        runners.calls[name] = lambda s=session, f=session_feed: s.run(None, f)


def _other_runners(
    runners: Runners, prepared: Prepared, arrays: list[np.ndarray], settings: BenchSettings, flops: int
) -> None:
    """The portable file on OpenVINO (where installed) and the MatMul ceiling of the same FLOPs."""
    if settings.openvino:
        try:
            run_openvino = openvino_runner(prepared.portable.path, prepared.inputs, settings.threads)
            runners.calls[OPENVINO_RUNNER] = lambda run=run_openvino, x=arrays: run(x)
        except ModuleNotFoundError as exc:  # an optional extra: the table says so under its OpenVINO column
            if exc.name is None or exc.name.split(".")[0] != "openvino":
                runners.errors[OPENVINO_RUNNER] = described(exc)
            else:
                runners.errors[OPENVINO_RUNNER] = OPENVINO_MISSING
        except Exception as exc:  # the file does not load there
            runners.errors[OPENVINO_RUNNER] = described(exc)
    if settings.ceiling:
        from lambda_export.io import model_bytes

        ceiling_model, runners.ceiling_shape = matmul_model(flops)
        session = cpu_session(model_bytes(ceiling_model), settings.threads)
        runners.held.append(session)
        a = np.random.default_rng(2).standard_normal(runners.ceiling_shape[:2]).astype(np.float32)
        runners.calls[CEILING_RUNNER] = lambda s=session, a=a: s.run(None, {"a": a})


def _agreement(record: dict[str, Any], runners: Runners) -> None:
    """Do the numbers agree? Each runner's largest difference from TF graph mode (a benchmark of a wrong graph is
    worthless); int8 is not the same computation, so its difference is recorded apart (``--quantize`` judges it)."""
    calls = runners.calls
    reference = first_output(calls["tf_graph"]()) if "tf_graph" in calls else None
    agreement = {}
    if reference is not None:
        for name in ("tf_xla", *runners.sessions, OPENVINO_RUNNER):
            if name in calls:
                out = first_output(calls[name]())
                agreement[name] = float(np.max(np.abs(out.astype(np.float64) - reference))) if out.size else 0.0
    int8_difference = agreement.pop(INT8_RUNNER, None)
    record["max_abs_diff_vs_tf_graph"] = agreement
    if int8_difference is not None:
        record["int8_max_abs_diff_vs_tf_graph"] = int8_difference


def _measure(record: dict[str, Any], runners: Runners, settings: BenchSettings) -> None:
    """Time the runners in interleaved rounds: latency statistics, the better TF, the paired ratios."""
    measured = measure_interleaved(runners.calls, **settings.timing())
    latency = {name: latency_stats(samples) for name, samples in measured["samples"].items()}
    record["latency"] = latency
    record["first_call_s"] = measured["first_call_s"]
    record["rounds"] = len(measured["rounds"])
    record["block_runs"] = measured["block_runs"]
    record["measure_s"] = measured["measure_s"]
    record["errors"] = runners.errors
    tf_present = [name for name in TF_RUNNERS if name in latency]
    tf_best = min(tf_present, key=lambda name: latency[name]["median_ms"]) if tf_present else None
    record["tf_best"] = tf_best
    rounds = measured["rounds"]
    ratios: dict[str, Any] = {}
    for ort_name in ORT_RUNNERS:
        if ort_name not in latency:
            continue
        for tf_name in tf_present:
            ratios[f"{ort_name}/{tf_name}"] = paired_ratio(rounds, ort_name, tf_name)
        if tf_best:
            ratios[f"{ort_name}/tf_best"] = paired_ratio(rounds, ort_name, tf_best)
    if INT8_RUNNER in latency:  # the int8 speed-up over the float32 file it was made from
        ratios[f"{INT8_RUNNER}/ort_portable"] = paired_ratio(rounds, INT8_RUNNER, "ort_portable")
    if OPENVINO_RUNNER in latency:
        # the same file on both runtimes: how close ONNX Runtime comes to OpenVINO (issue target: ≤ 1.25)
        ratios[f"ort_portable/{OPENVINO_RUNNER}"] = paired_ratio(rounds, "ort_portable", OPENVINO_RUNNER)
        if tf_best:
            ratios[f"{OPENVINO_RUNNER}/tf_best"] = paired_ratio(rounds, OPENVINO_RUNNER, tf_best)
    record["ratios"] = ratios
    record["min_latency_ratio"] = min_latency_ratio(record)


def _throughput(record: dict[str, Any], ceiling_shape: tuple[int, int, int] | None) -> None:
    """GFLOP/s of every runner, and the fraction of the MatMul ceiling ORT and the better TF reach."""
    total = record["flops"]["total"]
    latency = record["latency"]
    gflops = {}
    for name, stats in latency.items():
        if name == CEILING_RUNNER or not stats["median_ms"]:
            continue
        gflops[name] = round(total / (stats["median_ms"] / 1e3) / 1e9, 2)
    record["gflops"] = gflops
    if ceiling_shape is None or not latency.get(CEILING_RUNNER, {}).get("median_ms"):
        return
    size = ceiling_shape[0]
    ceiling_flops = 2 * size**3
    ceiling_gflops = ceiling_flops / (latency[CEILING_RUNNER]["median_ms"] / 1e3) / 1e9
    record["ceiling"] = {
        "matmul_shape": list(ceiling_shape),
        "flops": ceiling_flops,
        "gflops": round(ceiling_gflops, 2),
        "ort_portable_fraction": round(gflops.get("ort_portable", 0.0) / ceiling_gflops, 3),
    }
    tf_best = record["tf_best"]
    if tf_best and tf_best in gflops:
        record["ceiling"]["tf_best_fraction"] = round(gflops[tf_best] / ceiling_gflops, 3)


def _target(record: dict[str, Any], entry: Entry) -> None:
    """Are the entry's targets met: ORT/TF best at most its ratio (and, for 2D global layers, the ceiling fraction)?
    And, judged apart (``openvino_*``), ORT over OpenVINO on the same file at most :data:`RATIO_TARGET_OPENVINO`
    (``openvino_met`` None where OpenVINO was not measured)."""
    best_ratio = (record["ratios"].get("ort_portable/tf_best") or {}).get("median")
    record["target"] = {
        "ratio": entry.ratio_target,
        "value": best_ratio,
        "met": None if best_ratio is None else best_ratio <= entry.ratio_target,
    }
    versus = openvino_target({"ratios": record["ratios"]})
    record["target"].update(openvino_ratio=versus["ratio"], openvino_value=versus["value"], openvino_met=versus["met"])
    if entry.config is not None and entry.config.rank == 2 and entry.config.is_global and "ceiling" in record:
        fraction = record["ceiling"]["ort_portable_fraction"]
        record["target"]["ceiling_fraction"] = CEILING_TARGET
        record["target"]["ceiling_value"] = fraction
        record["target"]["ceiling_met"] = fraction >= CEILING_TARGET


def _profile(record: dict[str, Any], runners: Runners, feed: dict[str, np.ndarray], settings: BenchSettings) -> None:
    """ONNX Runtime's profiler on the portable export: the slowest nodes."""
    try:
        estimate = record["latency"]["ort_portable"]["median_ms"] / 1e3
        runs = int(max(3, min(20, 1.0 / max(estimate, 1e-4))))
        record["profile"] = profile_ort(runners.portable_source, feed, settings.threads, runs)
    except Exception as exc:
        record["profile"] = {"error": described(exc)}


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

    record = _entry_header(entry)
    if entry.skip_reason:
        record.update(status="skipped", reason=entry.skip_reason)
        return record
    started = time.perf_counter()
    prepared, record["export_reused"] = _prepared(
        entry, settings, folder, keras_model, cache if cache is not None else {}
    )
    record["build_s"] = prepared.build_s
    arrays = make_feed(prepared.inputs, entry.batch)
    feed = {info.name: array for info, array in zip(prepared.inputs, arrays, strict=True)}
    record["export"] = _export_section(prepared)
    record["flops"] = _flops(entry, prepared)

    runners = Runners(errors=dict(prepared.errors))
    _tf_runners(runners, prepared.model, arrays, settings)
    _ort_runners(runners, prepared, arrays, settings.threads)
    _other_runners(runners, prepared, arrays, settings, int(record["flops"]["total"]))
    _agreement(record, runners)
    _log(settings, f"{entry.name}: measuring {', '.join(runners.calls)}")
    _measure(record, runners, settings)
    _throughput(record, runners.ceiling_shape)
    _target(record, entry)
    if settings.profile:
        _profile(record, runners, feed, settings)

    # free the big things before the memory subprocesses start
    path = prepared.portable.path
    del runners, prepared
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
    """``text`` as a file-name stem: alphanumerics kept, everything else "_", at most 80 characters."""
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")[:80]


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

    from lambda_export.io import model_bytes

    results = []
    for entry in entries:
        if entry.skip_reason:
            results.append({"name": entry.name, "status": "skipped", "reason": entry.skip_reason})
            continue
        record: dict[str, Any] = {"name": entry.name, "batch": entry.batch, "tf32": {}}
        try:
            model = build_from_spec(entry.spec)
            portable = portable_export(model, settings, entry.spec.get("input_shapes"), size_graph=False)
            arrays = make_feed(portable.result.inputs, entry.batch)
            specs = [tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in arrays]
            source = model_bytes(portable.model)
            for tf32 in (False, True):
                tf.config.experimental.enable_tensor_float_32_execution(tf32)
                with tf.device("/GPU:0"):
                    graph = tf_function(model, False, specs)
                    xla = tf_function(model, True, specs) if settings.xla else None
                with tf.device("/CPU:0"):
                    host = [tf.constant(a) for a in arrays]  # host inputs: the copy to the GPU is part of the run
                options = cpu_session_options(settings.threads)
                session = ort.InferenceSession(source, options, providers=session_providers(CUDA, tf32=tf32))
                names = [v.name for v in session.get_inputs()]
                session_feed = dict(zip(names, arrays, strict=True))
                runners: dict[str, Callable[[], Any]] = {
                    "tf_gpu_graph": lambda g=graph, h=host: as_numpy(g(*h)),
                    "ort_cuda": lambda s=session, f=session_feed: s.run(None, f),
                }
                if xla is not None:
                    runners["tf_gpu_xla"] = lambda g=xla, h=host: as_numpy(g(*h))
                measured = measure_interleaved(runners, **settings.timing())
                latency = {name: latency_stats(samples) for name, samples in measured["samples"].items()}
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
            record.update(status="error", reason=described(exc))
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(True)
            keras.backend.clear_session()
            gc.collect()
        results.append(record)
    return {"skipped": False, "results": results}


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
            "ratio_ort_openvino": RATIO_TARGET_OPENVINO,
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
            record["reason"] = described(exc)
            record["traceback"] = traceback.format_exc()[-2000:]
            _log(settings, f"{entry.name}: ERROR {record['reason']}")
        if record.get("status") == "ok":
            ratio = record["target"]["value"]
            versus = record["target"]["openvino_value"]
            model_mode = mode == "model"  # a user's model has no target
            target = "" if model_mode else f" (target {entry.ratio_target})"
            versus_target = "" if model_mode else f" (target {RATIO_TARGET_OPENVINO})"
            _log(settings, f"{entry.name}: ORT/TF best = {ratio}{target}, ORT/OpenVINO = {versus}{versus_target}")
        results["entries"].append(record)
        write_json(results, out_json)
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
            results["export_cost"] = {"error": described(exc)}
    else:
        results["export_cost"] = {"skipped": True, "reason": f"not measured in {mode} mode"}
    results["gpu"] = bench_gpu(entries, settings) if gpu else {"skipped": True, "reason": "--no-gpu"}
    results["summary"] = summarize(results)
    results["environment"]["load_average_end"] = env.load_average()
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    write_json(results, out_json)
    return results


def _method_text() -> dict[str, str]:
    """The ``method`` record of the JSON file: one line per aspect, and the method notes of this module's docstring."""
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


def worker_main(argv: Iterable[str]) -> int:
    """The subprocess side of :mod:`lambda_export.bench.memory`: run the task of the JSON payload ``argv[0]``
    (``memory`` or ``export_cost``) and print its answer as one JSON line."""
    args = json.loads(next(iter(argv)))
    task = args.pop("task")
    if task == "memory":
        answer = memory_worker(args)
    elif task == "export_cost":
        answer = export_cost_worker(args)
    else:
        raise SystemExit(f"unknown task {task!r}")
    sys.stdout.write(json.dumps(answer, default=json_default) + "\n")
    sys.stdout.flush()
    return 0
