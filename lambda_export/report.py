"""Human-readable parity reports: a terminal table, one self-contained HTML file, and JSON.

* :func:`render_text` – provider × output table (worst case over batch sizes, distributions and samples), the errors
  against the float64 truth and their ratio (relative rule), warnings, verdict, skipped providers, first divergent
  layer.
* :func:`render_html` – the same plus the per-layer divergence chart, an error histogram per output, every row, the
  environment and timings; inline CSS and hand-drawn inline SVG, no script and no external reference, so the file
  opens offline and can be attached to a CI run.
* :func:`write_report` – ``.json`` (schema ``lambda-export/parity-report/v1``) or ``.html``/``.htm``, atomically.
* :func:`render_quantization_text`, :func:`render_quantization_html` – the int8 section (``--quantize int8``): the
  verdict per runtime, set and output, the groups of nodes kept in float and why, the file sizes; from the
  ``quantization`` record of the JSON verdict (:meth:`lambda_export.quantization.QuantizeResult.summary`).

The HTML is built with f-strings and :func:`html.escape` (``_e``), one function per section (``_html_summary``,
``_html_truth``, ``_html_divergence``, ...), not with templates. Jinja2 would be the maintained way, but it is not a
base dependency (it arrives only with the torch/dev extras) and the project keeps dependencies few. The standard
library's ``string.Template`` has no conditionals, loops or escaping: every section here is conditional or a loop
over rows, so the logic and the escaping would stay in Python and the templates would only hold the static prose,
split from the code that decides it, plus package data to ship and a missing-file failure mode in installs. Every
value goes through ``_e`` at the point it is inserted, which a reviewer can see in one place per section.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from lambda_export.errors import InputError
from lambda_export.io import write_text_atomic
from lambda_export.parity import ParityReport, ResultRow

__all__ = ["render_html", "render_quantization_html", "render_quantization_text", "render_text", "write_report"]

_GREEN, _RED, _YELLOW, _DIM, _RESET = "\033[32m", "\033[31m", "\033[33m", "\033[2m", "\033[0m"


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    return f"{value:.2e}"


_SHORT_NAMES = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}


def _short(provider: str) -> str:
    return _SHORT_NAMES.get(provider, provider.replace("ExecutionProvider", ""))


def _status(row: ResultRow) -> str:
    if row.metrics.passed:
        return "PASS"
    return f"FAIL: {row.metrics.problem}" if row.metrics.problem else "FAIL"


def _cell_status(row: ResultRow) -> str:
    """:func:`_status` for a table cell: a failed ONNX Runtime run in one short line (the full text below the table)."""
    if row.metrics.passed or not row.metrics.problem:
        return _status(row)
    return f"FAIL: {_short_problem(row.metrics.problem)}"


_ORT_PREFIX = re.compile(r"^ONNX Runtime (failed on|could not create a) \S+( session)?: ")
_ORT_CODE = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_NODE = re.compile(r"^Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message: ")


def _short_problem(problem: str, limit: int = 64) -> str:
    """A problem in one short line: ONNX Runtime's error code, source locations and C++ signatures left out."""
    text = " ".join(problem.split())
    prefix = _ORT_PREFIX.match(text)
    if prefix:
        text = ("ORT session: " if prefix.group(1).startswith("could") else "ORT run: ") + _ORT_CODE.sub(
            "", text[prefix.end() :]
        )
        node = _ORT_NODE.match(text[len("ORT run: ") :]) if text.startswith("ORT run: ") else None
        if node:
            detail = text[len("ORT run: ") + node.end() :]
            detail = re.sub(r"^\S+\.(h|cc|cpp|cu):\d+ ", "", detail)  # the source location
            detail = re.sub(r"^.*? was false\. ", "", detail)  # the C++ check that failed
            detail = "" if detail.startswith("onnxruntime::") else detail  # a signature cut off by the length cap
            text = f"ORT run: {node.group(1)} node {node.group(2)!r}" + (f": {detail}" if detail else " failed")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _where(row: ResultRow) -> str:
    """Which inputs a row ran on, in words: ``batch 4, normal inputs`` (``, sample 2`` after the first draw)."""
    inputs = "your inputs" if row.distribution == "user" else f"{row.distribution} inputs"
    sample = f", sample {row.sample + 1}" if row.sample else ""
    return f"batch {row.batch_size}, {inputs}{sample}"


def _atol_adds_something(rows: list[ResultRow]) -> bool:
    """Show "atol to pass" only when a row failed on the absolute tolerance: then it says which atol would pass. On
    rows that pass it is mostly noise (1e-38 where the rtol term alone covers every value)."""
    return any(
        not row.metrics.passed
        and row.metrics.problem is None
        and math.isfinite(row.metrics.min_passing_atol)
        and getattr(row.metrics, "rule", "absolute") == "absolute"
        for row in rows
    )


def _problems(rows: list[ResultRow]) -> list[str]:
    """The full text of each distinct problem the table shortened, with the row it came from."""
    seen: dict[str, str] = {}
    for row in rows:
        problem = row.metrics.problem
        if problem and not row.metrics.passed and _short_problem(problem) != problem and problem not in seen:
            seen[problem] = f"{_short(row.provider)}, {row.output}, {row.precision}, {_where(row)}: {problem}"
    return list(seen.values())


def _notes(report: ParityReport) -> list[str]:
    """The report's notes without the one that repeats the first diverging layer (said once, on its own line)."""
    first = report.first_divergent_layer
    return [n for n in report.notes if not (first and n.startswith(f"first diverging layer: {first} "))]


def _divergence_found_on(report: ParityReport) -> str:
    """``on CPU, normal inputs``: where the divergence search ran, from the engine's note about it ('' if none)."""
    first = report.first_divergent_layer
    for note in report.notes:
        match = re.match(rf"first diverging layer: {re.escape(first or '')} \(on (\S+), (.+)\)$", note)
        if first and match:
            return f"on {_short(match.group(1))}, {match.group(2)}"
    return ""


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _paint(text: str, colour: str, color: bool) -> str:
    return f"{colour}{text}{_RESET}" if color else text


def _worst_rows(rows: list[ResultRow], atol: bool = False) -> list[list[str]]:
    """Table rows: provider, output, precision, max abs, max rel, (atol to pass,) worst case, result."""
    return [
        [
            row.provider,
            row.output,
            row.precision,
            _num(row.metrics.max_abs),
            _num(row.metrics.max_rel),
            *([_num(row.metrics.min_passing_atol) if _atol_adds_something([row]) else "—"] if atol else []),
            _where(row),
            _cell_status(row),
        ]
        for row in rows
    ]


def _rule_text(report: ParityReport) -> str:
    """One line: which rule decided, with its settings."""
    if report.float64_available:
        return (
            f"error vs a float64 truth (the Keras model in float64) ≤ {report.factor:g} × TensorFlow float32's own "
            f"+ {report.floor:g} float32 eps of the output's scale, for the max and the RMS"
        )
    return f"|onnx − tf| ≤ {report.atol:g} + {report.rtol:g}·|tf|"


def _ratio(value: float) -> str:
    return "—" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.2f}")


def _truth_rows(rows: list[ResultRow]) -> list[list[str]]:
    """Provider, output, TensorFlow's and the export's max error vs float64, the ratios (max, RMS), the rule."""
    out = []
    for row in rows:
        truth = row.metrics.truth
        if truth is None:
            continue
        out.append(
            [
                row.provider,
                row.output,
                _num(truth.baseline_max),
                _num(truth.candidate_max),
                _ratio(truth.ratio_max),
                _ratio(truth.ratio_rms),
                _num(truth.allowed_max),
                _where(row),
                row.metrics.rule,
            ]
        )
    return out


def _verdict(report: ParityReport) -> str:
    runs = len(report.results)
    providers = ", ".join(_short(p) for p in report.providers_run) or "none"
    sizes = ", ".join(str(s) for s in report.settings.get("batch_sizes", []))
    dists = ", ".join(report.settings.get("distributions", []))
    what = f"{runs} comparison(s) on {providers}; batch {sizes}; inputs {dists}"
    if report.fp16:
        what += f"; float16 {'passed' if all(r.metrics.passed for r in report.fp16_results) else 'FAILED'}"
    return f"{'PASS' if report.passed else 'FAIL'}: {what}"


def render_text(report: ParityReport, color: bool = False) -> str:
    """A compact terminal summary: worst case per provider × output, verdict, skipped providers, divergence."""
    worst = report.worst() + (report.worst(fp16=True) if report.fp16 else [])
    show_atol = _atol_adds_something(worst)
    header = ["provider", "output", "prec", "max abs", "max rel", *(["atol to pass"] if show_atol else [])]
    header += ["worst case", "result"]
    lines = [f"parity vs TensorFlow (CPU reference): {_rule_text(report)}"]
    table = _table(_worst_rows(worst, atol=show_atol), header)
    if show_atol:
        table.append("atol to pass: the smallest atol with which every value of that comparison would pass (same rtol)")
    table += [f"problem: {problem}" for problem in _problems(worst)]
    for line in table:
        if color and line.rstrip().endswith("PASS"):
            line = line[: -len("PASS")] + _paint("PASS", _GREEN, True)
        elif color and "FAIL" in line:
            head, _, tail = line.partition("FAIL")
            line = head + _paint("FAIL" + tail, _RED, True)
        lines.append(line)
    truth_rows = _truth_rows(report.worst())
    if truth_rows:
        lines.append("error vs float64 (max |x − f64|; ratio = export / TensorFlow float32, max and RMS):")
        truth_header = ["provider", "output", "tf32", "export", "ratio", "rms ratio", "allowed", "worst at", "rule"]
        lines.extend("  " + line for line in _table(truth_rows, truth_header))
    if report.fp16:
        lines.append(f"float16 tolerances: |onnx − tf| ≤ {report.fp16_atol:g} + {report.fp16_rtol:g}·|tf|")
    for warning in report.warnings:
        lines.append(_paint(f"warning: {warning}", _YELLOW, color))
    for provider, reason in report.providers_skipped.items():
        lines.append(_paint(f"skipped {_short(provider)}: {reason}", _YELLOW, color))
    if report.first_divergent_layer:
        item = next(
            (d for d in report.divergence if report.first_divergent_layer in (d.layer, *d.fused)),
            None,
        )
        where = f" (ONNX tensor {item.onnx_tensor}, max abs {_num(item.max_abs)})" if item else ""
        if item is not None and item.truth is not None:
            where += f": {_ratio(item.truth.ratio_max)}× TensorFlow float32's own error there"
        found_on = _divergence_found_on(report)
        where += f", found {found_on}" if found_on else ""
        lines.append(_paint(f"first divergent layer: {report.first_divergent_layer}{where}", _RED, color))
    elif report.divergence:
        lines.append(f"per-layer check: {len(report.divergence)} layer(s) compared, none beyond tolerance")
    for note in _notes(report):
        lines.append(_paint(f"note: {note}", _DIM, color))
    verdict = _verdict(report)
    lines.append(_paint(verdict, _GREEN if report.passed else _RED, color))
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e8;padding-bottom:4px}
.badge{display:inline-block;padding:3px 12px;border-radius:12px;font-weight:600;color:#fff}
.pass{background:#1a7f37}.fail{background:#c62828}.skip{background:#9a6700}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums;font-family:ui-monospace,monospace}
tr.bad td{background:#fdecea}.warn{background:#fff4d6;border-left:4px solid #9a6700;padding:6px 10px}.muted{color:#5b6472}code{font-family:ui-monospace,monospace;font-size:12px}
svg{background:#fff;border:1px solid #dde1e8;margin:6px 0}details{margin:6px 0}summary{cursor:pointer}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_rows(rows: list[ResultRow], show_all: bool = False) -> str:
    out = [
        "<table><tr><th>provider</th><th>output</th><th>precision</th>"
        + ("<th>batch</th><th>inputs</th><th>sample</th><th>seed</th>" if show_all else "<th>worst case</th>")
        + "<th>max abs</th><th>max rel</th><th>mean abs</th><th>within</th><th>atol to pass</th><th>result</th></tr>"
    ]
    for row in rows:
        m = row.metrics
        where = (
            f"<td class=num>{row.batch_size}</td><td>{_e(row.distribution)}</td><td class=num>{row.sample}</td>"
            f"<td class=num>{_e(row.seed if row.seed is not None else '—')}</td>"
            if show_all
            else f"<td>{_e(_where(row))}</td>"
        )
        out.append(
            f"<tr class='{'' if m.passed else 'bad'}'><td>{_e(_short(row.provider))}</td><td>{_e(row.output)}</td>"
            f"<td>{_e(row.precision)}</td>{where}<td class=num>{_num(m.max_abs)}</td><td class=num>{_num(m.max_rel)}</td>"
            f"<td class=num>{_num(m.mean_abs)}</td><td class=num>{m.frac_within * 100:.2f}%</td>"
            f"<td class=num>{_num(m.min_passing_atol)}</td><td title='{_e(_status(row))}'>{_e(_cell_status(row))}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _log_position(value: float, low: float, high: float, length: float) -> float:
    value = min(max(value, low), high)
    return (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low)) * length


def _divergence_svg(report: ParityReport) -> str:
    """Horizontal bars of each layer's max abs error on a log scale, with the atol line."""
    items = report.divergence
    if not items:
        return ""
    finite = [d.max_abs for d in items if d.max_abs > 0 and math.isfinite(d.max_abs)]
    low = 10 ** math.floor(math.log10(min([*finite, report.atol]) if finite else report.atol) - 0.5)
    low = max(low, 1e-12)
    high = 10 ** math.ceil(math.log10(max([*finite, report.atol * 10]) if finite else report.atol * 10) + 0.01)
    label_w, plot_w, bar_h, top = 240, 600, 16, 46  # the atol label sits on its own line under the title
    height = top + len(items) * (bar_h + 4) + 30
    width = label_w + plot_w + 110
    parts = [
        f"<svg role='img' aria-label='per-layer max abs error' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' font-family='ui-monospace,monospace' font-size='11'>",
        f"<text x='{label_w}' y='16' font-size='12' fill='#1d2330'>max |onnx − tf| per Keras layer (log scale)</text>",
    ]
    decade = math.log10(low)
    while decade <= math.log10(high) + 1e-9:
        x = label_w + _log_position(10**decade, low, high, plot_w)
        parts.append(f"<line x1='{x:.1f}' y1='{top - 4}' x2='{x:.1f}' y2='{height - 26}' stroke='#eef0f4'/>")
        parts.append(f"<text x='{x:.1f}' y='{height - 12}' text-anchor='middle' fill='#5b6472'>1e{int(decade)}</text>")
        decade += 1
    for index, item in enumerate(items):
        y = top + index * (bar_h + 4)
        value = item.max_abs if math.isfinite(item.max_abs) else high
        w = _log_position(value, low, high, plot_w) if value > 0 else 1.0
        colour = "#1a7f37" if item.passed else "#c62828"
        name = item.layer if len(item.layer) <= 30 else item.layer[:29] + "…"
        if item.fused:
            name += f" +{len(item.fused)}"
        first = report.first_divergent_layer in (item.layer, *item.fused)
        parts.append(
            f"<text x='{label_w - 6}' y='{y + bar_h - 4}' text-anchor='end' fill='#1d2330'>{_e(name)}</text>"
            f"<rect x='{label_w}' y='{y}' width='{max(w, 1.0):.1f}' height='{bar_h}' fill='{colour}' opacity='0.85'>"
            f"<title>{_e(item.layer)} → {_e(item.onnx_tensor)}: max abs {_num(item.max_abs)}"
            f"{' (fused: ' + _e(', '.join(item.fused)) + ')' if item.fused else ''}</title></rect>"
            f"<text x='{label_w + max(w, 1.0) + 4:.1f}' y='{y + bar_h - 4}' fill='#5b6472'>{_num(item.max_abs)}"
            f"{' ◀ first' if first else ''}</text>"
        )
    x = label_w + _log_position(report.atol, low, high, plot_w)
    parts.append(
        f"<line x1='{x:.1f}' y1='{top - 6}' x2='{x:.1f}' y2='{height - 26}' stroke='#9a6700' stroke-width='1.5' "
        f"stroke-dasharray='5,3'/><text x='{x + 3:.1f}' y='{top - 8}' fill='#9a6700'>atol {report.atol:g}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _histogram_svg(hist: Any, atol: float) -> str:
    """Bars of the |onnx − tf| counts per log-spaced bin, with the atol position marked."""
    counts = list(hist.counts)
    edges = list(hist.edges)
    n = len(counts)
    bar_w, plot_h, left, top = 22, 150, 50, 32
    width, height = left + n * bar_w + 20, top + plot_h + 46
    peak = max(counts) if any(counts) else 1
    parts = [
        f"<svg role='img' aria-label='error histogram' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' font-family='ui-monospace,monospace' font-size='10'>",
        f"<text x='{left}' y='14' font-size='12' fill='#1d2330'>{_e(_short(hist.provider))} · {_e(hist.output)} · "
        f"{_e(hist.precision)}: |onnx − tf| counts ({hist.total} values)</text>",
        f"<line x1='{left}' y1='{top + plot_h}' x2='{left + n * bar_w}' y2='{top + plot_h}' stroke='#5b6472'/>",
        f"<text x='{left - 4}' y='{top + 8}' text-anchor='end' fill='#5b6472'>{peak}</text>",
        f"<text x='{left - 4}' y='{top + plot_h}' text-anchor='end' fill='#5b6472'>0</text>",
    ]
    for index, count in enumerate(counts):
        h = plot_h * count / peak
        x = left + index * bar_w
        low = edges[index]
        high = edges[index + 1] if index + 1 < n else math.inf
        over = low >= atol
        colour = "#c62828" if over else "#3b6fb6"
        parts.append(
            f"<rect x='{x + 1}' y='{top + plot_h - h:.1f}' width='{bar_w - 2}' height='{h:.1f}' fill='{colour}'>"
            f"<title>[{_num(low)}, {_num(high)}): {count}</title></rect>"
        )
        if low > 0 and abs(math.log10(low) - round(math.log10(low))) < 1e-9:
            # a decade edge: a tick and its label at the bar's left edge, every other bin (44 px apart, labels ≤ 30 px)
            parts.append(
                f"<line x1='{x}' y1='{top + plot_h}' x2='{x}' y2='{top + plot_h + 4}' stroke='#5b6472'/>"
                f"<text x='{x}' y='{top + plot_h + 15}' text-anchor='middle' fill='#5b6472'>1e{round(math.log10(low))}</text>"
            )
    # atol marker between the bins around it
    position = next((i for i in range(1, n) if edges[i] >= atol), n - 1)
    x = left + position * bar_w
    parts.append(
        f"<line x1='{x}' y1='{top - 2}' x2='{x}' y2='{top + plot_h}' stroke='#9a6700' stroke-dasharray='4,3'/>"
        f"<text x='{x + 3}' y='{top - 4}' fill='#9a6700'>atol</text>"
    )
    if hist.nonfinite:
        parts.append(
            f"<text x='{left}' y='{height - 6}' fill='#c62828'>{hist.nonfinite} NaN/Inf value(s) not counted</text>"
        )
    else:
        parts.append(
            f"<text x='{left}' y='{height - 6}' fill='#5b6472'>bars: half decades; the first from 0, the last "
            "open-ended</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(
    report: ParityReport,
    title: str = "lambda-export parity report",
    *,
    conversion: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
) -> str:
    """One self-contained HTML page (inline CSS and SVG, no script, no network reference).

    Args:
        conversion: what the conversion produced (the ``conversion`` part of the command line's JSON verdict: opset,
            target, nodes, op histogram, passes, warnings, target issues), shown in its own section.
        quantization: the int8 record (``--quantize int8``), shown as the "INT8 quantization" section.

    The page is its sections in order, each a list of HTML fragments that the page joins with newlines.
    """
    body = [
        *_html_summary(report, title, quantization),
        *_html_truth(report),
        *_html_fp16(report),
        *_html_skipped(report),
        *_html_divergence(report),
        *_html_histograms(report),
        *_html_notes(report),
        *([_conversion_html(conversion)] if conversion else []),
        *([render_quantization_html(quantization)] if quantization else []),
        *_html_comparisons_and_facts(report),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + f"<p class=muted>schema {_e(report.to_dict()['schema'])}</p></body></html>\n"
    )


def _html_summary(report: ParityReport, title: str, quantization: dict[str, Any] | None) -> list[str]:
    """Title, verdict badge, rule, model names, warnings and the worst case per provider and output."""
    int8_failed = bool(quantization and quantization.get("passed") is False)
    status = "pass" if report.passed and not int8_failed else "fail"
    verdict = _verdict(report).split(": ", 1)[-1]  # the badge says PASS/FAIL
    if int8_failed:
        verdict += "; the int8 verdict FAILED (see INT8 quantization)"
    return [
        f"<h1>{_e(title)}</h1>",
        f"<p><span class='badge {status}'>{status.upper()}</span> <span class='muted'>{_e(verdict)}</span></p>",
        _html_rule(report),
        f"<p class=muted>Keras model <code>{_e(report.model.get('source', '?'))}</code> → ONNX model "
        f"<code>{_e(report.model.get('onnx', '?'))}</code></p>",
        *(f"<p class='warn'>⚠ {_e(w)}</p>" for w in report.warnings),
        "<h2>Worst case per provider and output</h2>",
        _html_rows(report.worst()),
        "<p class=muted><i>max abs</i>, <i>max rel</i>, <i>mean abs</i>: |onnx − tf| and |onnx − tf| / |tf| over the "
        "values of the worst comparison; <i>within</i>: the share of its values that pass; <i>atol to pass</i>: the "
        "smallest atol with which every value would pass at the same rtol (far below atol when the rtol term alone "
        "covers every value).</p>",
        *(f"<p class=muted>Problem: {_e(problem)}</p>" for problem in _problems(report.worst())),
    ]


def _html_truth(report: ParityReport) -> list[str]:
    """The "Against the float64 truth" table (empty without a float64 reference)."""
    truth_rows = _truth_rows(report.worst())
    if not truth_rows:
        return []
    parts = [
        "<h2>Against the float64 truth</h2><p>The Keras model rebuilt in float64 with the same weights, on the same "
        "inputs. <i>tf32</i>: TensorFlow float32's own error against it; <i>export</i>: the ONNX output's; "
        "<i>ratio</i>: export / TensorFlow (max, and root mean square of the elementwise errors); <i>allowed</i>: "
        f"{report.factor:g} × TensorFlow's max + the floor.</p><table><tr><th>provider</th><th>output</th>"
        "<th>tf32 max err</th><th>export max err</th><th>ratio</th><th>RMS ratio</th><th>allowed</th>"
        "<th>worst at</th><th>rule</th></tr>"
    ]
    for cells in truth_rows:
        cells = [_short(cells[0]), *cells[1:]]
        parts.append(
            "<tr>"
            + "".join(
                f"<td class=num>{_e(c)}</td>" if 2 <= i <= 6 else f"<td>{_e(c)}</td>" for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    parts.append("</table>")
    return parts


def _html_fp16(report: ParityReport) -> list[str]:
    """The float16 section (when the report has float16 rows)."""
    if not report.fp16:
        return []
    return [
        f"<h2>float16</h2><p>Tolerances atol = {report.fp16_atol:g}, rtol = {report.fp16_rtol:g}, "
        "against the float32 TensorFlow reference.</p>",
        _html_rows(report.worst(fp16=True)),
    ]


def _html_skipped(report: ParityReport) -> list[str]:
    """The providers that were asked for but not run, and why."""
    if not report.providers_skipped:
        return []
    return [
        "<h2>Skipped providers</h2><table><tr><th>provider</th><th>reason</th></tr>",
        *(
            f"<tr><td><span class='badge skip'>{_e(_short(p))}</span></td><td>{_e(r)}</td></tr>"
            for p, r in report.providers_skipped.items()
        ),
        "</table>",
    ]


def _html_divergence(report: ParityReport) -> list[str]:
    """The per-layer divergence: first divergent layer, the chart, the layer matches and the unmatched layers."""
    if not (report.divergence or report.unmatched_layers):
        return []
    first = report.first_divergent_layer
    parts = [
        "<h2>Per-layer divergence</h2>",
        f"<p>First divergent layer: <b>{_e(first)}</b> {_e(_divergence_found_on(report))}</p>"
        if first
        else "<p>No layer beyond tolerance.</p>",
        _divergence_svg(report),
        "<p class=muted>Bars: max |onnx − tf| of the layer's output against its matching ONNX tensor; red = beyond "
        "atol + rtol·|tf|. A bar past the atol line can still pass through the rtol term. “+N”: N earlier layers "
        "(e.g. a convolution whose batch normalisation was folded into it) are computed by the same ONNX node.</p>",
        "<details><summary>Layer matches</summary><table><tr><th>layer</th><th>class</th><th>ONNX tensor</th>"
        "<th>layout</th><th>matched by</th><th>fused</th><th>max abs</th><th>ratio vs tf32 (f64)</th>"
        "<th>result</th></tr>",
    ]
    for d in report.divergence:
        ratio = _ratio(d.truth.ratio_max) if d.truth is not None else "—"
        parts.append(
            f"<tr class='{'' if d.passed else 'bad'}'><td>{_e(d.layer)}</td><td>{_e(d.class_name)}</td>"
            f"<td><code>{_e(d.onnx_tensor)}</code></td><td>{_e(d.layout)}</td><td>{_e(d.matched_by)}</td>"
            f"<td>{_e(', '.join(d.fused))}</td><td class=num>{_num(d.max_abs)}</td><td class=num>{ratio}</td>"
            f"<td>{'pass' if d.passed else _e('FAIL' + (': ' + d.problem if d.problem else ''))}</td></tr>"
        )
    parts.append("</table></details>")
    if report.unmatched_layers:
        parts.append("<details><summary>Layers without an ONNX counterpart</summary><table>")
        parts += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in report.unmatched_layers.items()]
        parts.append("</table></details>")
    return parts


def _html_histograms(report: ParityReport) -> list[str]:
    """One error histogram chart per output, provider and precision."""
    if not report.histograms:
        return []
    return [
        "<h2>Error histograms</h2>",
        *(
            _histogram_svg(hist, report.atol if hist.precision == "fp32" else report.fp16_atol)
            for hist in report.histograms
        ),
    ]


def _html_notes(report: ParityReport) -> list[str]:
    notes = _notes(report)
    return ["<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"] if notes else []


def _html_comparisons_and_facts(report: ParityReport) -> list[str]:
    """Every comparison (folded), then the settings, the environment and the timings."""
    return [
        "<h2>All comparisons</h2><details><summary>"
        + f"{len(report.results) + len(report.fp16_results)} rows</summary>",
        _html_rows(report.results + report.fp16_results, show_all=True) + "</details>",
        "<h2>Settings</h2>" + _kv_table(report.settings),
        "<h2>Environment</h2>" + _kv_table(report.environment),
        "<h2>Timings</h2>" + _kv_table({k: f"{v:.3f} s" for k, v in report.timings.items()}),
    ]


def _html_rule(report: ParityReport) -> str:
    """The paragraph saying which rule decided and what the reference is."""
    common = (
        "NaN or Inf on either side fails. Reference: Keras, <code>training=False</code>, TensorFlow on the CPU. "
        f"TF32 {'allowed' if report.tf32 else 'off'}."
    )
    if report.float64_available:
        return (
            "<p>Rule: relative to TensorFlow. The export passes when its error against a float64 truth (the Keras model "
            f"in float64, same weights and inputs) is at most {report.factor:g} × TensorFlow float32's own error plus "
            f"{report.floor:g} float32 eps of the output's scale, for the max and for the RMS of the elementwise "
            f"errors. {common}</p>"
        )
    why = f" (no float64 reference: {_e(report.float64_reason)})" if report.float64_reason else ""
    return (
        f"<p>Rule{why}: <code>|onnx − tf| ≤ atol + rtol·|tf|</code> with atol = {report.atol:g}, "
        f"rtol = {report.rtol:g}; {common}</p>"
    )


def _conversion_html(conversion: dict[str, Any]) -> str:
    """The "ONNX model" section: opset, target, nodes, op histogram, passes, warnings and what the target refuses."""
    ops = conversion.get("op_histogram") or {}
    facts = {
        "opset": conversion.get("opset", "?"),
        "target": conversion.get("target") or "—",
        "optimize": conversion.get("optimize") or "—",
        "nodes": conversion.get("nodes", "?"),
        "ops": ", ".join(f"{op} × {count}" for op, count in ops.items()) or "—",
        "rewrite passes": ", ".join(conversion.get("passes") or []) or "none",
    }
    if conversion.get("producer"):
        facts["producer"] = conversion["producer"]
    issues = [*(conversion.get("warnings") or []), *(conversion.get("target_issues") or [])]
    listed = "".join(f"<li>{_e(issue)}</li>" for issue in issues)
    return (
        "<h2>ONNX model</h2>"
        + _kv_table(facts)
        + (f"<p>Warnings ({len(issues)}):</p><ul>{listed}</ul>" if issues else "<p class=muted>No target warnings.</p>")
    )


def _kv_table(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v)}</td></tr>"
        for k, v in data.items()
    )
    return f"<table>{rows}</table>"


def write_report(
    report: ParityReport,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    conversion: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
) -> str:
    """Write ``report`` as JSON (``.json``) or HTML (``.html``/``.htm``), atomically (temporary file + rename).

    ``conversion`` and ``quantization`` (see :func:`render_html`) are shown in the HTML and, in JSON, added under the
    keys ``conversion`` and ``quantization``.

    The file gets the mode of the report it replaces, or the umask's default
    (:func:`lambda_export.io.write_text_atomic`).

    Raises:
        InputError: another suffix, a missing or unwritable folder.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = report.to_dict()
        if conversion:
            data["conversion"] = conversion
        if quantization:
            data["quantization"] = quantization
        text = json.dumps(data, indent=2, allow_nan=False, default=str) + "\n"
    elif suffix in (".html", ".htm"):
        text = render_html(
            report, title=title or "lambda-export parity report", conversion=conversion, quantization=quantization
        )
    else:
        raise InputError(f"{path}: a report must end in .json or .html, not {suffix or 'no suffix'!r}")
    return write_text_atomic(path, text, what="the report")


# -- int8 ------------------------------------------------------------------------------------------------------------


def _fixed(value: Any, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _int8_rows(verdict: dict[str, Any]) -> list[list[str]]:
    """One row per runtime × set × output of an int8 verdict record."""
    rows = []
    for row in verdict.get("results", []):
        status = "PASS" if row["passed"] else "FAIL: " + "; ".join(row.get("failures") or [])
        rows.append(
            [
                row["runtime"],
                row["set"].replace("_", "-"),
                row["output"],
                str(row.get("samples") or "—"),
                _fixed(row.get("top1_agreement"), 4),
                _fixed(row.get("cosine"), 6) + (" (logits)" if row.get("cosine_on") == "logits" else ""),
                _fixed(row.get("output_cosine_min"), 6),
                _num(row.get("max_abs")),
                status,
            ]
        )
    return rows


_INT8_HEADER = ["runtime", "set", "output", "n", "top-1 agree", "cosine (mean)", "worst cosine", "max abs", "result"]


def _size_text(size: dict[str, Any]) -> str:
    if not size or not size.get("float32_bytes"):
        return "size: —"
    return (
        f"size: {size['int8_bytes'] / 1e6:.3f} MB int8 vs {size['float32_bytes'] / 1e6:.3f} MB float32 "
        f"({size['ratio']:.1%})"
    )


def _speed_text(speed: dict[str, Any] | None) -> str:
    from lambda_export.quantization.speed import speed_line

    return "speed: not timed (--skip-verify)" if not speed else f"speed: {speed_line(speed)}"


def render_quantization_text(quantization: dict[str, Any], color: bool = False) -> str:
    """The int8 section for the terminal: verdict table, groups kept in float (and why), size, worst layers."""
    verdict = quantization.get("verdict")
    calibration = quantization.get("calibration") or {}
    method = (quantization.get("settings") or {}).get("calibration_method", "?")
    lines = [
        f"int8 (QDQ, {method} calibration on {calibration.get('samples', '?')} samples"
        + (", GENERATED" if calibration.get("generated") else "")
        + f"; held out: {calibration.get('held_out_samples', '?')}) vs TensorFlow float32"
        + (f": {verdict['rule']}" if verdict else "")
    ]
    if verdict:
        lines.extend(_table(_int8_rows(verdict), _INT8_HEADER))
        for runtime, reason in (verdict.get("runtimes_skipped") or {}).items():
            lines.append(_paint(f"skipped {runtime}: {reason}", _YELLOW, color))
        for layer in verdict.get("worst_layers") or []:
            lines.append(
                _paint(
                    f"worst layer: {layer['layer']} ({layer.get('class_name') or '?'}): relative error "
                    f"{_num(layer.get('relative_error'))}, +{_num(layer.get('added'))} over the layer before it",
                    _RED,
                    color,
                )
            )
    kept = [group for group in (quantization.get("sensitivity") or {}).get("groups", []) if group.get("kept_float")]
    if kept:
        lines.append("kept in float:")
        lines.extend(f"  {group['group']} ({group['nodes']} node(s)): {group.get('reason')}" for group in kept)
    else:
        lines.append("kept in float: nothing")
    lines.append(_size_text(quantization.get("size") or {}))
    lines.append(_speed_text(quantization.get("speed")))
    for warning in quantization.get("warnings") or []:
        lines.append(_paint(f"warning: {warning}", _YELLOW, color))
    if verdict is None:
        lines.append("int8 verdict: not taken (--skip-verify)")
    else:
        text = f"int8 verdict: {'PASS' if verdict['passed'] else 'FAIL'} on {', '.join(verdict['runtimes_run'])}"
        lines.append(_paint(text, _GREEN if verdict["passed"] else _RED, color))
    return "\n".join(lines)


def render_quantization_html(quantization: dict[str, Any]) -> str:
    """The "INT8 quantization" section of the HTML report."""
    verdict = quantization.get("verdict")
    calibration = quantization.get("calibration") or {}
    settings = quantization.get("settings") or {}
    parts = ["<h2>INT8 quantization</h2>"]
    if verdict is not None:
        status = "pass" if verdict["passed"] else "fail"
        parts.append(
            f"<p><span class='badge {status}'>{status.upper()}</span> <span class='muted'>{_e(verdict['rule'])}, "
            "against TensorFlow float32 on the calibration and held-out samples</span></p>"
        )
    for warning in quantization.get("warnings") or []:
        parts.append(f"<p class='warn'>⚠ {_e(warning)}</p>")
    facts = {
        "format": settings.get("format"),
        "weights": settings.get("weights") + (" (7-bit range)" if settings.get("reduce_range") else ""),
        "activations": settings.get("activations"),
        "calibration": f"{settings.get('calibration_method')} on {calibration.get('samples')} samples of "
        f"{calibration.get('source')}",
        "held out": f"{calibration.get('held_out_samples')} samples: {calibration.get('held_out_source')}",
        "size": _size_text(quantization.get("size") or {}).removeprefix("size: "),
        "speed": _speed_text(quantization.get("speed")).removeprefix("speed: "),
        "nodes": quantization.get("nodes"),
        "quantizer": settings.get("tool"),
    }
    parts.append(_kv_table(facts))
    if verdict is not None:
        parts.append("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in _INT8_HEADER) + "</tr>")
        for cells, row in zip(_int8_rows(verdict), verdict.get("results", []), strict=True):
            parts.append(
                f"<tr class='{'' if row['passed'] else 'bad'}'>"
                + "".join(
                    f"<td class=num>{_e(c)}</td>" if 3 <= i <= 7 else f"<td>{_e(c)}</td>" for i, c in enumerate(cells)
                )
                + "</tr>"
            )
        parts.append("</table>")
        parts.append(
            "<p class=muted><i>top-1 agree</i>: share of samples whose highest-scoring class is TensorFlow's "
            "(classifier outputs); <i>cosine</i>: mean over samples of the cosine similarity with TensorFlow's output "
            "(on the logits of a softmax output, recovered as log p − mean log p); <i>worst cosine</i>: the lowest "
            "per-sample cosine of the output itself.</p>"
        )
        if verdict.get("runtimes_skipped"):
            parts.append(
                "<p>Skipped: " + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in verdict["runtimes_skipped"].items()) + "</p>"
            )
        if verdict.get("worst_layers"):
            parts.append(
                "<p>Layers that add the most int8 error (matched by the divergence locator; relative error "
                "‖int8 − float32‖ / ‖float32‖ of the layer's output):</p><table><tr><th>layer</th><th>class</th>"
                "<th>ONNX tensor</th><th>relative error</th><th>added</th></tr>"
            )
            parts += [
                f"<tr><td>{_e(layer['layer'])}</td><td>{_e(layer.get('class_name'))}</td>"
                f"<td><code>{_e(layer['onnx_tensor'])}</code></td><td class=num>{_num(layer.get('relative_error'))}"
                f"</td><td class=num>{_num(layer.get('added'))}</td></tr>"
                for layer in verdict["worst_layers"]
            ]
            parts.append("</table>")
    sensitivity = quantization.get("sensitivity") or {}
    goal = sensitivity.get("goal") or {}
    parts.append(
        "<h3>Sensitivity: each kind of node quantized alone</h3><p class=muted>Against the float32 export on the "
        f"calibration samples; goal of the combination: cosine ≥ {goal.get('cosine', '?')}, top-1 agreement ≥ "
        f"{goal.get('top1_agreement', '?')}.</p>"
        "<table><tr><th>group</th><th>nodes</th><th>multiply-adds</th><th>top-1 agree</th><th>cosine</th>"
        "<th>max abs</th><th>int8</th><th>why in float</th></tr>"
    )
    for group in sensitivity.get("groups", []):
        alone = group.get("alone") or {}
        parts.append(
            f"<tr class='{'bad' if group.get('kept_float') else ''}'><td>{_e(group['group'])}</td>"
            f"<td class=num>{group['nodes']}</td><td class=num>{group.get('macs_share', 0):.1%}</td>"
            f"<td class=num>{_fixed(alone.get('top1_agreement'), 4)}</td>"
            f"<td class=num>{_fixed(alone.get('cosine'), 6)}</td><td class=num>{_num(alone.get('max_abs'))}</td>"
            f"<td>{'float' if group.get('kept_float') else 'int8'}</td><td>{_e(group.get('reason') or '')}</td></tr>"
        )
    parts.append("</table>")
    combined = sensitivity.get("combined") or {}
    parts.append(
        f"<p class=muted>All int8 groups together: top-1 agreement {_fixed(combined.get('top1_agreement'), 4)}, "
        f"cosine {_fixed(combined.get('cosine'), 6)} against the float32 export.</p>"
    )
    return "".join(parts)
