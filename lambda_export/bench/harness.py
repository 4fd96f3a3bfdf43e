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
  does not pay for the other one's spinning threads or evicted caches), in an order that rotates every round. Latency
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from lambda_export import env
from lambda_export.bench.configs import LayerConfig, build_builtin, build_from_spec
from lambda_export.bench.flops import layer_flops, onnx_flops
from lambda_export.bench.memory import export_cost, export_cost_worker, measure_memory, memory_worker
from lambda_export.bench.profile import profile_ort
from lambda_export.bench.render import json_default, summarize, write_json
from lambda_export.bench.runners import (
    LARGE_MODEL_BYTES,
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
from lambda_export.bench.timing import (
    BenchSettings,
    latency_stats,
    measure_interleaved,
    min_latency_ratio,
    paired_ratio,
)
from lambda_export.ort import CUDA, cpu_session, cpu_session_options, recommended_cpu_settings, session_providers

__all__ = [
    "CEILING_RUNNER",
    "CEILING_TARGET",
    "INT8_RUNNER",
    "OPENVINO_RUNNER",
    "ORT_RUNNERS",
    "RATIO_TARGET_LAYER",
    "RATIO_TARGET_MODEL",
    "SCHEMA",
    "TF_RUNNERS",
    "Entry",
    "bench_entry",
    "bench_gpu",
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


def environment_info(threads: int) -> dict[str, Any]:
    """CPU, cores, memory, OS, library versions and the thread settings of both runtimes."""
    info: dict[str, Any] = {
        "cpu_model": env.cpu_model(),
        "cpu_flags": env.cpu_flags(),
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


def _prepare(entry: Entry, settings: BenchSettings, folder: Path, keras_model: Any) -> dict[str, Any]:
    """Build the Keras model, export it both ways and write the files (shared by the batch sizes of one model)."""
    started = time.perf_counter()
    model = keras_model if keras_model is not None else build_from_spec(entry.spec)
    prepared: dict[str, Any] = {"model": model, "build_s": round(time.perf_counter() - started, 2), "errors": {}}
    portable = portable_export(model, settings, entry.spec.get("input_shapes"))
    result = portable["result"]
    stem = _slug(entry.name.rsplit(" b=", 1)[0])
    path, size = serialize_model(portable["model"], folder, f"{stem}.portable.onnx")
    prepared["portable_model"] = portable["model"]
    prepared["raw_bytes"] = portable["raw_bytes"]
    prepared["portable_path"] = path
    prepared["large"] = size > LARGE_MODEL_BYTES
    prepared["inputs"] = result.inputs
    prepared["portable_info"] = {
        **graph_info(portable["model"], path, size),
        "convert_s": round(portable["convert_s"], 2),
        "passes": list(result.passes),
        "optimize": "speed",
        "performance_passes": portable["performance_passes"],
        "target_issues": len(result.target_issues),
    }
    _log(settings, f"{entry.name}: portable export {len(portable['model'].graph.node)} nodes, {size / 1e6:.1f} MB")
    prepared["int8_model"] = None
    if settings.int8 and size > INT8_MAX_BYTES:
        prepared["errors"][INT8_RUNNER] = (
            f"not measured: the float32 file is over {INT8_MAX_BYTES / 1e6:.0f} MB (quantizing it takes minutes)"
        )
    elif settings.int8:
        try:
            int8 = int8_export(model, portable["model"], settings.target)
            ipath, isize = serialize_model(int8["model"], folder, f"{stem}.int8.onnx")
            prepared["int8_model"] = int8["model"]
            prepared["int8_info"] = {
                **graph_info(int8["model"], ipath, isize),
                "quantize_s": round(int8["quantize_s"], 2),
                "float_groups": int8["float_groups"],
                "size_ratio": round(isize / size, 4) if size else None,
            }
            _log(settings, f"{entry.name}: int8 export {isize / 1e6:.1f} MB, in float: {int8['float_groups']}")
        except Exception as exc:
            prepared["errors"][INT8_RUNNER] = _short(exc)
    prepared["anchor_model"] = None
    if settings.anchor and entry.config is not None and entry.config.embedding_bytes > 2**31:
        # TensorFlow cannot freeze (absolute) and tf2onnx cannot fold (relative) a tensor over protobuf's 2 GB: the
        # plain export fails, after a peak of ~20× the tensor that this machine may not have
        prepared["errors"]["ort_tf2onnx"] = "plain tf2onnx cannot convert a position embedding over 2 GB"
    elif settings.anchor:
        try:
            anchor_started = time.perf_counter()
            anchor_model, how = export_tf2onnx_plain(model, result.inputs, settings.opset)
            anchor_s = time.perf_counter() - anchor_started
            apath, asize = serialize_model(anchor_model, folder, f"{stem}.tf2onnx.onnx")
            prepared["anchor_model"] = anchor_model
            prepared["anchor_info"] = {**graph_info(anchor_model, apath, asize), "convert_s": round(anchor_s, 2)}
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
    if prepared.get("int8_info"):
        record["export"]["int8"] = prepared["int8_info"]
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
            functions[name] = tf_function(model, xla, specs)
        except Exception as exc:
            errors[name] = _short(exc)
    for name, function in functions.items():
        runners[name] = lambda f=function, x=tf_inputs: as_numpy(f(*x))

    # the bytes, or the written file (with its external data) for a model over protobuf's 2 GB
    portable_bytes = path if prepared["large"] else portable["model"].SerializeToString()
    sessions = {"ort_portable": cpu_session(portable_bytes, settings.threads)}
    if prepared.get("raw_bytes"):
        sessions["ort_convert_only"] = cpu_session(prepared["raw_bytes"], settings.threads)
    if prepared["anchor_model"] is not None:
        sessions["ort_tf2onnx"] = cpu_session(prepared["anchor_model"].SerializeToString(), settings.threads)
    if prepared.get("int8_model") is not None:
        sessions[INT8_RUNNER] = cpu_session(prepared["int8_model"].SerializeToString(), settings.threads)
    for name, session in sessions.items():
        names = [value.name for value in session.get_inputs()]
        session_feed = dict(zip(names, feed_arrays, strict=True))
        runners[name] = lambda s=session, f=session_feed: s.run(None, f)
    if settings.openvino:
        try:
            run_openvino = openvino_runner(path, inputs, settings.threads)
            runners[OPENVINO_RUNNER] = lambda run=run_openvino, x=feed_arrays: run(x)
        except Exception as exc:  # not installed (an optional extra), or the file does not load there
            errors[OPENVINO_RUNNER] = _short(exc)
    ceiling_shape = None
    if settings.ceiling:
        ceiling_model, ceiling_shape = matmul_model(int(flops["total"]))
        ceiling_session = cpu_session(ceiling_model.SerializeToString(), settings.threads)
        a = np.random.default_rng(2).standard_normal(ceiling_shape[:2]).astype(np.float32)
        runners[CEILING_RUNNER] = lambda s=ceiling_session, a=a: s.run(None, {"a": a})

    # numbers agree? (sanity: a benchmark of a wrong graph is worthless)
    reference = first_output(runners["tf_graph"]()) if "tf_graph" in runners else None
    agreement = {}
    if reference is not None:
        for name in ("tf_xla", *sessions, OPENVINO_RUNNER):
            if name in runners:
                out = first_output(runners[name]())
                agreement[name] = float(np.max(np.abs(out.astype(np.float64) - reference))) if out.size else 0.0
    # int8 is not the same computation: its difference is recorded apart (the --quantize verdict judges it)
    int8_difference = agreement.pop(INT8_RUNNER, None)
    record["max_abs_diff_vs_tf_graph"] = agreement
    if int8_difference is not None:
        record["int8_max_abs_diff_vs_tf_graph"] = int8_difference

    _log(settings, f"{entry.name}: measuring {', '.join(runners)}")
    measured = measure_interleaved(runners, **settings.timing())
    record["latency"] = {name: latency_stats(samples) for name, samples in measured["samples"].items()}
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
    if INT8_RUNNER in record["latency"]:  # the int8 speed-up over the float32 file it was made from
        ratios[f"{INT8_RUNNER}/ort_portable"] = paired_ratio(measured["rounds"], INT8_RUNNER, "ort_portable")
    if OPENVINO_RUNNER in record["latency"]:
        # the same file on both runtimes: how close ONNX Runtime comes to OpenVINO (issue target: ≤ 1.25)
        ratios[f"ort_portable/{OPENVINO_RUNNER}"] = paired_ratio(measured["rounds"], "ort_portable", OPENVINO_RUNNER)
        if tf_best:
            ratios[f"{OPENVINO_RUNNER}/tf_best"] = paired_ratio(measured["rounds"], OPENVINO_RUNNER, tf_best)
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
    """``text`` as a file-name stem: alphanumerics kept, everything else "_", at most 80 characters."""
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")[:80]


def _short(exc: BaseException) -> str:
    """An exception as one short line for the JSON record: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


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
            model = build_from_spec(entry.spec)
            portable = portable_export(model, settings, entry.spec.get("input_shapes"))
            inputs = portable["result"].inputs
            arrays = make_feed(inputs, entry.batch)
            specs = [tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in arrays]
            model_bytes = portable["model"].SerializeToString()
            for tf32 in (False, True):
                tf.config.experimental.enable_tensor_float_32_execution(tf32)
                with tf.device("/GPU:0"):
                    graph = tf_function(model, False, specs)
                    xla = tf_function(model, True, specs) if settings.xla else None
                with tf.device("/CPU:0"):
                    host = [tf.constant(a) for a in arrays]  # host inputs: the copy to the GPU is part of the run
                options = cpu_session_options(settings.threads)
                session = ort.InferenceSession(model_bytes, options, providers=session_providers(CUDA, tf32=tf32))
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
            record.update(status="error", reason=_short(exc))
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
            results["export_cost"] = {"error": _short(exc)}
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
