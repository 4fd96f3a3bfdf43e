"""Results as text and pictures: the summary, the Markdown tables, the machine line, the chart, the JSON file.

* :func:`summarize`: which targets are met and missed (ORT/TF best, the MatMul ceiling of 2D global layers, and
  ORT/OpenVINO ≤ :data:`RATIO_TARGET_OPENVINO` on the same file), which entries were skipped or failed;
  :func:`openvino_target` judges one entry's ORT/OpenVINO ratio, :func:`target_lines` says the three verdicts in words.
* :func:`markdown_table`, :func:`environment_text`, :func:`format_cell`: the Markdown the command prints (and that
  ``benchmarks/publish.py`` puts into RESULTS.md and the README); :func:`cpu_text` is the CPU part of the machine
  line (model, family/model numbers, the SIMD flags that decide which kernels the runtimes pick).
* :func:`draw_chart`: the ORT/TF latency ratio per configuration (PNG; needs matplotlib, the ``bench`` extra).
* :func:`report`: the printable text and the chart next to the JSON file; :func:`write_json` writes that file
  atomically (:func:`json_default` turns NumPy scalars, tuples and sets into JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RATIO_TARGET_OPENVINO",
    "SIMD_FLAGS",
    "cpu_flags_text",
    "cpu_text",
    "draw_chart",
    "environment_text",
    "format_cell",
    "int8_lines",
    "json_default",
    "markdown_table",
    "min_latency_ratio",
    "openvino_target",
    "report",
    "summarize",
    "target_lines",
    "write_json",
]

# ONNX Runtime over OpenVINO on the same portable file: ORT may be at most 25 % slower (issue 27, item 6), on whichever
# CPU the benchmark runs
RATIO_TARGET_OPENVINO = 1.25

# The CPU flags the machine line shows (``environment.cpu_flags`` in the JSON keeps all of avx*, fma, amx*, sse4*):
# the ones that decide which float32 and int8 kernels ONNX Runtime, OpenVINO, oneDNN and XLA pick, in this order
SIMD_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def min_latency_ratio(record: dict[str, Any], runner: str = "ort_portable") -> float | None:
    """Fastest ``runner`` run over the fastest run of the better TF: the least load-sensitive comparison."""
    latency = record.get("latency") or {}
    best = record.get("tf_best")
    if not best or runner not in latency or not latency[best].get("min_ms"):
        return None
    return round(latency[runner]["min_ms"] / latency[best]["min_ms"], 4)


def openvino_target(record: dict[str, Any]) -> dict[str, Any]:
    """The ORT/OpenVINO target of one measured entry: ``{"ratio": 1.25, "value": median or None, "met": bool or
    None}`` (None: OpenVINO was not measured). Read from ``target`` where the harness recorded it, else judged on the
    record's paired ratio (results written before the target was judged)."""
    target = record.get("target") or {}
    if "openvino_ratio" in target:
        return {
            "ratio": target["openvino_ratio"],
            "value": target.get("openvino_value"),
            "met": target.get("openvino_met"),
        }
    value = ((record.get("ratios") or {}).get("ort_portable/openvino") or {}).get("median")
    return {
        "ratio": RATIO_TARGET_OPENVINO,
        "value": value,
        "met": None if value is None else value <= RATIO_TARGET_OPENVINO,
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Which targets are met, which not, which entries were skipped.

    ``met`` / ``missed``: the ORT/TF best ratio and, for 2D global layers, the MatMul ceiling fraction (both must hold);
    ``ratio_met`` / ``ceiling_met``: ``[met, judged]`` counts of each on its own; ``openvino``: the second target,
    ORT/OpenVINO on the same file at most :data:`RATIO_TARGET_OPENVINO` (``met``, ``missed`` and ``not_measured``
    entry names)."""
    met, missed, skipped, failed = [], [], [], []
    openvino: dict[str, Any] = {"target": RATIO_TARGET_OPENVINO, "met": [], "missed": [], "not_measured": []}
    ratio_met, ceiling_met = [0, 0], [0, 0]
    for record in results["entries"]:
        if record.get("status") == "skipped":
            skipped.append({"name": record["name"], "reason": record.get("reason")})
            continue
        if record.get("status") != "ok":
            failed.append({"name": record["name"], "reason": record.get("reason")})
            continue
        target = record["target"]
        versus = openvino_target(record)
        if versus["met"] is None:
            openvino["not_measured"].append(record["name"])
        else:
            openvino["met" if versus["met"] else "missed"].append({"name": record["name"], "ratio": versus["value"]})
        if target.get("met") is not None:
            ratio_met[0] += bool(target["met"])
            ratio_met[1] += 1
        if target.get("ceiling_met") is not None:
            ceiling_met[0] += bool(target["ceiling_met"])
            ceiling_met[1] += 1
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
        "ratio_met": ratio_met,
        "ceiling_met": ceiling_met,
        "openvino": openvino,
    }


def target_lines(results: dict[str, Any]) -> list[str]:
    """The verdicts in words, one line per target: ORT/TF best (its ratio per kind of entry), the MatMul ceiling of
    the 2D global layers (where judged), ORT/OpenVINO ≤ :data:`RATIO_TARGET_OPENVINO` (with the entries that missed
    it and how many had no OpenVINO figure). Computed from the entries, so that results written before a target
    existed are judged the same way."""
    summary = summarize(results)
    ok = [record for record in results["entries"] if record.get("status") == "ok"]
    kinds = sorted({(record.get("kind") or "", record["target"]["ratio"]) for record in ok})
    per_kind = ", ".join(f"≤ {ratio} for {kind}s" if kind else f"≤ {ratio}" for kind, ratio in kinds)
    met, judged = summary["ratio_met"]
    missed_ratio = [record["name"] for record in ok if record["target"].get("met") is False]
    lines = [
        f"Target ORT/TF best ({per_kind or 'none measured'}): met on {met} of {judged} measured configurations"
        + (f"; missed: {', '.join(missed_ratio)}." if missed_ratio else ".")
    ]
    met, judged = summary["ceiling_met"]
    if judged:
        lines.append(
            f"Target MatMul ceiling (2D global layers at ≥ {ok[0]['target'].get('ceiling_fraction', 0.6):.0%} of the "
            f"plain-MatMul GFLOP/s): met on {met} of {judged}."
        )
    openvino = summary["openvino"]
    measured = len(openvino["met"]) + len(openvino["missed"])
    line = (
        f"Target ORT/OpenVINO ≤ {openvino['target']} (the same portable file on both runtimes): met on "
        f"{len(openvino['met'])} of {measured} measured configurations"
    )
    if openvino["missed"]:
        line += "; missed: " + ", ".join(f"{item['name']} ({item['ratio']:.3f})" for item in openvino["missed"])
    if openvino["not_measured"]:
        line += f"; {len(openvino['not_measured'])} without an OpenVINO figure"
    lines.append(line + ".")
    return lines


def write_json(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``results`` as indented JSON to ``path`` (folders created; atomic: a reader never sees half a file)."""
    # imported here: lambda_export.io imports onnx, which the memory workers (that import this package) must not load
    from lambda_export.io import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(results, indent=1, default=json_default), what="the benchmark results")


def json_default(value: Any) -> Any:
    """``json.dumps`` ``default``: NumPy scalars as numbers, tuples and sets as lists, anything else as text."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def format_cell(value: Any, digits: int = 2) -> str:
    """A table cell: "–" for None, a float with ``digits`` decimals, anything else as text."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(results: dict[str, Any]) -> str:
    """The results as Markdown: the latency/ratio table, then the int8, GFLOP/s and memory, export cost and GPU
    sections, and the skipped and failed entries.

    The project's own runs judge each configuration against its target (``target``, ``met`` columns); a user's model
    (``lambda-export bench MODEL``, mode ``model``) gets the ratios only: those targets are the project's benchmark
    goals for its layers and models, not a verdict on someone else's model."""
    targets = results.get("mode") != "model"
    lines = _latency_table(results["entries"], targets=targets)
    if targets:
        lines.extend(["", *(f"- {line}" for line in target_lines(results))])
    lines.extend(int8_lines(results))
    lines.append("")
    lines.extend(_throughput_table(results["entries"]))
    lines.append("")
    lines.extend(_export_cost_lines(results.get("export_cost") or {}))
    lines.extend(_gpu_lines(results.get("gpu") or {}))
    lines.extend(_summary_lines(results.get("summary") or {}))
    return "\n".join(lines)


_LATENCY_NOTE = (
    "Latency: medians over all timed runs. Ratios: median (p10–p90) of the paired per-round ratios against the "
    "better TF (ᴳ graph mode, ˣ XLA){judged}. *min-latency ratio*: fastest ORT run over "
    "fastest TF run, a best case that other work on the machine disturbs least. *ORT portable*: the "
    "default export (`lambda-export MODEL`, `--optimize speed`); *--optimize size*: the fewest-nodes export of the "
    "same target (– where the two are the same graph). *OpenVINO*: the same portable file on OpenVINO's CPU "
    "plugin, f32 inference precision pinned, the same thread count, latency hint; *ORT/OpenVINO*: paired "
    "per-round ratio on that file{openvino_target}."
)


def _latency_table(entries: list[dict[str, Any]], *, targets: bool = True) -> list[str]:
    """The main table: latencies of every runner and the ratios against the better TF, one row per entry; with
    ``targets``, each entry's target and whether it is met."""
    header = (
        "| configuration | TF graph ms | TF XLA ms | ORT portable ms | ORT tf2onnx ms | OpenVINO ms "
        "| ORT/TF best (p10–p90) | min-latency ratio | --optimize size / TF best | tf2onnx/TF best "
        "| ORT/OpenVINO (p10–p90) |"
    )
    align = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    lines = (
        [header + f" target | met | ORT/OpenVINO ≤ {RATIO_TARGET_OPENVINO} |", align + "---:|:---:|:---:|"]
        if targets
        else [header, align]
    )
    for record in entries:
        if record.get("status") != "ok":
            reason = record.get("reason", "")
            cells = [record["name"], f"{record.get('status')}: {reason}", *[""] * (12 if targets else 9)]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        lines.append(_latency_row(record, targets=targets))
    note = _LATENCY_NOTE.format(
        judged="; the targets are judged on it" if targets else "",
        openvino_target=f" (target ≤ {RATIO_TARGET_OPENVINO}, judged in the last column)" if targets else "",
    )
    return [*lines, "", note, *_openvino_lines(entries)]


def _openvino_lines(entries: list[dict[str, Any]]) -> list[str]:
    """Why the OpenVINO column is empty, once: ``OpenVINO: not installed (pip install 'lambda-export[openvino]')``, or
    the error of the entries where the file did not load there."""
    reasons = dict.fromkeys(
        _openvino_reason(record["errors"]["openvino"])
        for record in entries
        if record.get("status") == "ok" and (record.get("errors") or {}).get("openvino")
    )
    return [f"OpenVINO: {reason}" for reason in reasons]


def _openvino_reason(error: str) -> str:
    """An OpenVINO runner error as the table's footnote says it (results written before the harness said "not
    installed" recorded the ModuleNotFoundError)."""
    if error.startswith("ModuleNotFoundError") and "openvino" in error:
        return "not installed (pip install 'lambda-export[openvino]')"
    return error


def _latency_row(record: dict[str, Any], *, targets: bool = True) -> str:
    lat = record["latency"]

    def ms(name: str) -> str:
        return format_cell((lat.get(name) or {}).get("median_ms"))

    ratios = record["ratios"]
    paired = ratios.get("ort_portable/tf_best") or {}
    spread = f" ({format_cell(paired.get('p10'))}–{format_cell(paired.get('p90'))})" if paired else ""
    anchor = (ratios.get("ort_tf2onnx/tf_best") or {}).get("median")
    raw = (ratios.get("ort_convert_only/tf_best") or {}).get("median")
    met = record["target"]["met"]
    mark = {"tf_graph": "ᴳ", "tf_xla": "ˣ"}.get(record.get("tf_best") or "", "")
    versus = ratios.get("ort_portable/openvino") or {}
    versus_text = (
        f"{format_cell(versus.get('median'), 3)} ({format_cell(versus.get('p10'))}–{format_cell(versus.get('p90'))})"
        if versus
        else "–"
    )
    row = (
        f"| {record['name']} | {ms('tf_graph')} | {ms('tf_xla')} | {ms('ort_portable')} | {ms('ort_tf2onnx')} "
        f"| {ms('openvino')} "
        f"| **{format_cell(paired.get('median'), 3)}**{mark}{spread} | {format_cell(min_latency_ratio(record))} "
        f"| {format_cell(raw)} | {format_cell(anchor)} "
        f"| {versus_text} |"
    )
    if not targets:
        return row
    return row + f" ≤ {record['target']['ratio']} | {_mark(met)} | {_mark(openvino_target(record)['met'])} |"


def _mark(met: bool | None) -> str:
    """A verdict cell: ✅ met, ❌ missed, – not judged."""
    return "✅" if met else "❌" if met is not None else "–"


def _throughput_table(entries: list[dict[str, Any]]) -> list[str]:
    """GFLOP/s against the MatMul ceiling, peak memory of each side, file sizes, node counts, the slowest op."""
    lines = [
        "| configuration | GFLOP | ORT GFLOP/s | TF best GFLOP/s | MatMul ceiling GFLOP/s | ORT % of ceiling "
        "| peak MB TF | peak MB ORT | inference peak MB TF / ORT | ONNX MB portable / tf2onnx | nodes portable / tf2onnx "
        "| top ORT node |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    return lines + [_throughput_row(record) for record in entries if record.get("status") == "ok"]


def _throughput_row(record: dict[str, Any]) -> str:
    gflops = record.get("gflops", {})
    ceiling = record.get("ceiling", {})
    memory = record.get("memory", {})
    tf_mem, ort_mem = memory.get("tf", {}), memory.get("ort", {})
    export = record.get("export", {})
    portable, anchor = export.get("portable", {}), export.get("tf2onnx", {})
    top = (record.get("profile") or {}).get("top_nodes") or [{}]
    top_text = f"{top[0].get('op', '')} {top[0].get('share', 0) * 100:.0f}%" if top[0] else "–"
    fraction = ceiling.get("ort_portable_fraction")
    return (
        f"| {record['name']} | {format_cell(record['flops']['total'] / 1e9, 3)} "
        f"| {format_cell(gflops.get('ort_portable'), 1)} "
        f"| {format_cell(gflops.get(record.get('tf_best') or ''), 1)} | {format_cell(ceiling.get('gflops'), 1)} "
        f"| {format_cell(None if fraction is None else fraction * 100, 0)}% "
        f"| {format_cell(tf_mem.get('peak_rss_mb'), 0)} "
        f"| {format_cell(ort_mem.get('peak_rss_mb'), 0)} "
        f"| {format_cell(tf_mem.get('inference_peak_rss_mb'), 0)} / "
        f"{format_cell(ort_mem.get('inference_peak_rss_mb'), 0)} "
        f"| {format_cell(portable.get('file_mb'), 2)} / {format_cell(anchor.get('file_mb'), 2)} "
        f"| {portable.get('nodes', '–')} / {anchor.get('nodes', '–')} | {top_text} |"
    )


def _export_cost_lines(cost: dict[str, Any]) -> list[str]:
    """Where the seconds of `lambda-export MODEL` go (or why they were not measured)."""
    if not cost.get("timings"):
        return [f"Export cost: {cost.get('reason') or cost.get('error')}"] if cost else []
    t = cost["timings"]
    line = (
        f"Export cost ({cost.get('model')}): TF import {format_cell(t.get('tf_import_s'))} s, other imports "
        f"{format_cell(t.get('other_imports_s'))} s, load {format_cell(t.get('load_s'))} s, conversion (tf2onnx) "
        f"{format_cell(t.get('conversion_s'))} s, rewrites {format_cell(t.get('rewrites_s'))} s, "
        f"checks {format_cell(t.get('checks_s'))} s, "
        f"other {format_cell(t.get('convert_other_s'))} s, parity {format_cell(t.get('parity_s'))} s; in-process total "
        f"{format_cell(t.get('total_in_process_s'))} s, subprocess wall {format_cell(cost.get('wall_s'))} s"
    )
    if "cli_wall_s" in cost:
        line += f"; `lambda-export` CLI end to end {format_cell(cost.get('cli_wall_s'))} s"
    return [line + ".", *(f"Note: {note}" for note in cost.get("notes", []))]


def _gpu_lines(gpu: dict[str, Any]) -> list[str]:
    """The GPU table (ORT CUDA vs TF GPU, TF32 off and on), or why it was skipped."""
    if gpu.get("skipped"):
        return ["", f"GPU: skipped – {gpu.get('reason')}"]
    if not gpu.get("results"):
        return []
    lines = [
        "",
        "| configuration (GPU) | TF best ms (TF32 off) | ORT CUDA ms | ratio | TF best ms (TF32 on) | ORT CUDA ms | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for record in gpu["results"]:
        if record.get("status") != "ok":
            lines.append(f"| {record['name']} | {record.get('status')}: {record.get('reason')} | | | | | |")
            continue
        cells = []
        for key in ("off", "on"):
            part = record["tf32"][key]
            cells += [
                format_cell(part["latency"][part["tf_best"]]["median_ms"]),
                format_cell(part["latency"]["ort_cuda"]["median_ms"]),
                format_cell((part["ratio"] or {}).get("median")),
            ]
        lines.append(f"| {record['name']} | " + " | ".join(cells) + " |")
    return lines


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    """The entries that were skipped (and why) and the ones that failed."""
    lines = []
    if summary.get("skipped"):
        lines.append("")
        lines.extend(f"Skipped: {item['name']} – {item['reason']}" for item in summary["skipped"])
    lines.extend(f"Failed: {item['name']} – {item['reason']}" for item in summary.get("failed", []))
    return lines


def int8_lines(results: dict[str, Any]) -> list[str]:
    """The INT8 table (Markdown lines, empty when no entry has an int8 run): the int8 QDQ model that ``--quantize
    int8`` makes of the portable export, beside that float32 file on ONNX Runtime and the better TensorFlow."""
    rows = []
    for record in results["entries"]:
        if record.get("status") != "ok" or "ort_int8" not in (record.get("latency") or {}):
            continue
        lat, ratios = record["latency"], record.get("ratios") or {}
        export = record.get("export") or {}
        portable, int8 = export.get("portable") or {}, export.get("int8") or {}
        speed = ratios.get("ort_int8/ort_portable") or {}
        versus_tf = ratios.get("ort_int8/tf_best") or {}
        best = record.get("tf_best") or ""
        rows.append(
            f"| {record['name']} | {format_cell((lat.get(best) or {}).get('median_ms'))} "
            f"| {format_cell(lat['ort_portable']['median_ms'])} | {format_cell(lat['ort_int8']['median_ms'])} "
            f"| **{format_cell(speed.get('median'), 3)}** ({format_cell(speed.get('p10'))}–{format_cell(speed.get('p90'))}) "
            f"| {format_cell(versus_tf.get('median'), 3)} "
            f"| {format_cell(portable.get('file_mb'), 2)} | {format_cell(int8.get('file_mb'), 2)} "
            f"| {format_cell(int8.get('size_ratio'), 3)} "
            f"| {format_cell(record.get('int8_max_abs_diff_vs_tf_graph'), 3)} "
            f"| {', '.join(int8.get('float_groups') or []) or '–'} |"
        )
    if not rows:
        return []
    return [
        "",
        "| configuration (int8) | TF best ms | ORT fp32 ms | ORT int8 ms | int8/fp32 (p10–p90) | int8/TF best "
        "| fp32 MB | int8 MB | size ratio | max abs vs TF | kept in float |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "*ORT int8*: the int8 QDQ model `lambda-export MODEL --quantize int8` makes of the same portable export "
        "(ONNX Runtime's static quantizer, per-channel weights, generated N(0, 1) calibration inputs, what the "
        "sensitivity measurement kept in float listed); *int8/fp32*: paired per-round ratio against the float32 file "
        "it was made from (the speed-up is its inverse); *max abs vs TF*: on the benchmark's random inputs, not a "
        "verdict (`--quantize int8` judges it on real samples).",
    ]


def cpu_flags_text(flags: list[str] | None) -> str:
    """The SIMD flags of :data:`SIMD_FLAGS` a CPU has, and which of AVX-512, VNNI and AMX it lacks:
    ``"flags avx avx2 fma; no AVX-512, VNNI or AMX"``; ``"CPU flags not recorded"`` for results without them."""
    if flags is None:
        return "CPU flags not recorded"
    present = set(flags)
    shown = [flag for flag in SIMD_FLAGS if flag in present]
    families = {
        "AVX-512": any(flag.startswith("avx512") for flag in present),
        "VNNI": any(flag in present for flag in ("avx512_vnni", "avx_vnni")),
        "AMX": any(flag.startswith("amx") for flag in present),
    }
    absent = [name for name, has in families.items() if not has]
    text = f"flags {' '.join(shown)}" if shown else "no AVX/FMA flags"
    if absent:
        text += "; no " + (", ".join(absent[:-1]) + " or " + absent[-1] if len(absent) > 1 else absent[0])
    return text


def cpu_text(env: dict[str, Any]) -> str:
    """The CPU of an ``environment`` record: model name, family/model numbers (where recorded) and SIMD flags:
    ``"AMD EPYC (family 25 model 1; flags avx avx2 fma; no AVX-512, VNNI or AMX)"``."""
    ident = env.get("cpu_id") or {}
    parts = []
    if ident.get("family") is not None:
        parts.append(f"family {ident['family']} model {ident.get('model')}")
    parts.append(cpu_flags_text(env.get("cpu_flags")))
    return f"{env.get('cpu_model')} ({'; '.join(parts)})"


def environment_text(results: dict[str, Any]) -> str:
    """One line on the machine of ``results``: CPU (model, SIMD flags), cores, RAM, OS, thread settings, versions,
    load average."""
    env = results["environment"]
    versions = env.get("versions", {})
    threads = env.get("threads", {})
    return (
        f"{cpu_text(env)}, {env.get('usable_cores')} usable cores, {env.get('memory_gb')} GiB RAM, {env.get('os')}; "
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
    # a user's model (mode "model") has no target: the project's goals are no verdict on it
    targets = [] if results.get("mode") == "model" else [r["target"]["ratio"] for r in records]
    height = max(3.0, 0.28 * len(records) + 1.5)
    fig, ax = plt.subplots(figsize=(10, height))
    y = np.arange(len(records))
    colors = (
        ["#2a9d8f" if p <= t else "#e76f51" for p, t in zip(portable, targets, strict=True)]
        if targets
        else ["#2a9d8f"] * len(records)
    )
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
    ticks_note = "black tick = target, " if targets else ""
    ax.set_xlabel(f"latency ratio (lower is better; {ticks_note}dashed = parity with TF)")
    ax.set_title(
        f"{results.get('title', 'benchmark')}: ORT / TF latency, {results['environment']['threads']['n']} threads"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def report(results: dict[str, Any], out_json: str | os.PathLike[str], chart: bool = True) -> tuple[str, str | None]:
    """Print-ready Markdown (environment + tables) and the chart path (next to the JSON file)."""
    text = f"## {results.get('title')}\n\nMachine: {environment_text(results)}\n\n{markdown_table(results)}\n"
    chart_path = None
    if chart:
        chart_path = draw_chart(results, Path(out_json).with_suffix(".png"))
        if chart_path is None:
            text += "\n(chart skipped: matplotlib is not installed; pip install 'lambda-export[bench]')\n"
    return text, chart_path
