"""Results as text and pictures: the summary, the Markdown tables, the machine line, the chart, the JSON file.

* :func:`summarize`: which targets are met and missed, which entries were skipped or failed.
* :func:`markdown_table`, :func:`environment_text`, :func:`format_cell`: the Markdown the command prints (and that
  ``benchmarks/publish.py`` puts into RESULTS.md and the README).
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
    "draw_chart",
    "environment_text",
    "format_cell",
    "int8_lines",
    "json_default",
    "markdown_table",
    "min_latency_ratio",
    "report",
    "summarize",
    "write_json",
]


def min_latency_ratio(record: dict[str, Any], runner: str = "ort_portable") -> float | None:
    """Fastest ``runner`` run over the fastest run of the better TF: the least load-sensitive comparison."""
    latency = record.get("latency") or {}
    best = record.get("tf_best")
    if not best or runner not in latency or not latency[best].get("min_ms"):
        return None
    return round(latency[runner]["min_ms"] / latency[best]["min_ms"], 4)


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
    lines = _latency_table(results["entries"], targets=results.get("mode") != "model")
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
    lines = [header + " target | met |", align + "---:|:---:|"] if targets else [header, align]
    for record in entries:
        if record.get("status") != "ok":
            reason = record.get("reason", "")
            cells = [record["name"], f"{record.get('status')}: {reason}", *[""] * (11 if targets else 9)]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        lines.append(_latency_row(record, targets=targets))
    note = _LATENCY_NOTE.format(
        judged="; the targets are judged on it" if targets else "",
        openvino_target=" (target ≤ 1.25)" if targets else "",
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
    return row + f" ≤ {record['target']['ratio']} | {'✅' if met else '❌' if met is not None else '–'} |"


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


def environment_text(results: dict[str, Any]) -> str:
    """One line on the machine of ``results``: CPU, cores, RAM, OS, thread settings, versions, load average."""
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
