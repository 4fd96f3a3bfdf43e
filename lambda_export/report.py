"""Human-readable parity reports: a terminal table, one self-contained HTML file, and JSON.

* :func:`render_text` – provider × output table (worst case over batch sizes, distributions and samples), verdict,
  skipped providers, first divergent layer.
* :func:`render_html` – the same plus the per-layer divergence chart, an error histogram per output, every row, the
  environment and timings; inline CSS and hand-drawn inline SVG, no script and no external reference, so the file
  opens offline and can be attached to a CI run.
* :func:`write_report` – ``.json`` (schema ``lambda-export/parity-report/v1``) or ``.html``/``.htm``, atomically.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from lambda_export.errors import InputError
from lambda_export.io import write_text_atomic
from lambda_export.parity import ParityReport, ResultRow

__all__ = ["render_html", "render_text", "write_report"]

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


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _paint(text: str, colour: str, color: bool) -> str:
    return f"{colour}{text}{_RESET}" if color else text


def _worst_rows(rows: list[ResultRow]) -> list[list[str]]:
    return [
        [
            row.provider,
            row.output,
            row.precision,
            _num(row.metrics.max_abs),
            _num(row.metrics.max_rel),
            _num(row.metrics.min_passing_atol),
            f"{row.batch_size}/{row.distribution}",
            _status(row),
        ]
        for row in rows
    ]


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
    header = ["provider", "output", "prec", "max abs", "max rel", "min atol", "worst at", "result"]
    lines = [f"parity vs TensorFlow (CPU reference): |onnx − tf| ≤ {report.atol:g} + {report.rtol:g}·|tf|"]
    table = _table(_worst_rows(report.worst()), header)
    if report.fp16:
        lines_fp16 = _worst_rows(report.worst(fp16=True))
        table = _table(_worst_rows(report.worst()) + lines_fp16, header)
    for line in table:
        if color and line.rstrip().endswith("PASS"):
            line = line[: -len("PASS")] + _paint("PASS", _GREEN, True)
        elif color and "FAIL" in line:
            head, _, tail = line.partition("FAIL")
            line = head + _paint("FAIL" + tail, _RED, True)
        lines.append(line)
    if report.fp16:
        lines.append(f"float16 tolerances: |onnx − tf| ≤ {report.fp16_atol:g} + {report.fp16_rtol:g}·|tf|")
    for provider, reason in report.providers_skipped.items():
        lines.append(_paint(f"skipped {_short(provider)}: {reason}", _YELLOW, color))
    if report.first_divergent_layer:
        item = next(
            (d for d in report.divergence if report.first_divergent_layer in (d.layer, *d.fused)),
            None,
        )
        where = f" (ONNX tensor {item.onnx_tensor}, max abs {_num(item.max_abs)})" if item else ""
        lines.append(_paint(f"first divergent layer: {report.first_divergent_layer}{where}", _RED, color))
    elif report.divergence:
        lines.append(f"per-layer check: {len(report.divergence)} layer(s) compared, none beyond tolerance")
    for note in report.notes:
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
tr.bad td{background:#fdecea}.muted{color:#5b6472}code{font-family:ui-monospace,monospace;font-size:12px}
svg{background:#fff;border:1px solid #dde1e8;margin:6px 0}details{margin:6px 0}summary{cursor:pointer}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_rows(rows: list[ResultRow], show_all: bool = False) -> str:
    out = [
        "<table><tr><th>provider</th><th>output</th><th>precision</th>"
        + ("<th>batch</th><th>inputs</th><th>sample</th><th>seed</th>" if show_all else "<th>worst at</th>")
        + "<th>max abs</th><th>max rel</th><th>mean abs</th><th>within</th><th>min passing atol</th><th>result</th></tr>"
    ]
    for row in rows:
        m = row.metrics
        where = (
            f"<td class=num>{row.batch_size}</td><td>{_e(row.distribution)}</td><td class=num>{row.sample}</td>"
            f"<td class=num>{_e(row.seed if row.seed is not None else '—')}</td>"
            if show_all
            else f"<td>batch {row.batch_size}, {_e(row.distribution)}</td>"
        )
        out.append(
            f"<tr class='{'' if m.passed else 'bad'}'><td>{_e(_short(row.provider))}</td><td>{_e(row.output)}</td>"
            f"<td>{_e(row.precision)}</td>{where}<td class=num>{_num(m.max_abs)}</td><td class=num>{_num(m.max_rel)}</td>"
            f"<td class=num>{_num(m.mean_abs)}</td><td class=num>{m.frac_within * 100:.2f}%</td>"
            f"<td class=num>{_num(m.min_passing_atol)}</td><td>{_e(_status(row))}</td></tr>"
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
    label_w, plot_w, bar_h, top = 240, 600, 16, 28
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
        if index % 2 == 1 or index == 0:
            label = "0" if low == 0 else f"1e{round(math.log10(low))}"
            parts.append(
                f"<text x='{x + bar_w / 2:.1f}' y='{top + plot_h + 12}' text-anchor='middle' fill='#5b6472'>{label}</text>"
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
        parts.append(f"<text x='{left}' y='{height - 6}' fill='#5b6472'>bins: half decades; last bin open-ended</text>")
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: ParityReport, title: str = "lambda-export parity report") -> str:
    """One self-contained HTML page (inline CSS and SVG, no script, no network reference)."""
    status = "pass" if report.passed else "fail"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p><span class='badge {status}'>{'PASS' if report.passed else 'FAIL'}</span> "
        f"<span class='muted'>{_e(_verdict(report))}</span></p>",
        f"<p>Rule: <code>|onnx − tf| ≤ atol + rtol·|tf|</code> with atol = {report.atol:g}, rtol = {report.rtol:g}; "
        f"NaN or Inf on either side fails. Reference: Keras, <code>training=False</code>, TensorFlow on the CPU. "
        f"TF32 {'allowed' if report.tf32 else 'off'}.</p>",
        f"<p class=muted>Model: <code>{_e(report.model.get('source', '?'))}</code> → "
        f"<code>{_e(report.model.get('onnx', '?'))}</code></p>",
        "<h2>Worst case per provider and output</h2>",
        _html_rows(report.worst()),
    ]
    if report.fp16:
        body += [
            f"<h2>float16</h2><p>Tolerances atol = {report.fp16_atol:g}, rtol = {report.fp16_rtol:g}, "
            "against the float32 TensorFlow reference.</p>",
            _html_rows(report.worst(fp16=True)),
        ]
    if report.providers_skipped:
        body.append("<h2>Skipped providers</h2><table><tr><th>provider</th><th>reason</th></tr>")
        body += [
            f"<tr><td><span class='badge skip'>{_e(_short(p))}</span></td><td>{_e(r)}</td></tr>"
            for p, r in report.providers_skipped.items()
        ]
        body.append("</table>")
    if report.divergence or report.unmatched_layers:
        first = report.first_divergent_layer
        body.append("<h2>Per-layer divergence</h2>")
        body.append(
            f"<p>First divergent layer: <b>{_e(first)}</b></p>" if first else "<p>No layer beyond tolerance.</p>"
        )
        body.append(_divergence_svg(report))
        body.append(
            "<p class=muted>Bars: max |onnx − tf| of the layer's output against its matching ONNX tensor; red = beyond "
            "atol + rtol·|tf|. A bar past the atol line can still pass through the rtol term. “+N”: N earlier layers "
            "(e.g. a convolution whose batch normalisation was folded into it) are computed by the same ONNX node.</p>"
        )
        body.append(
            "<details><summary>Layer matches</summary><table><tr><th>layer</th><th>class</th><th>ONNX tensor</th>"
            "<th>layout</th><th>matched by</th><th>fused</th><th>max abs</th><th>result</th></tr>"
        )
        for d in report.divergence:
            body.append(
                f"<tr class='{'' if d.passed else 'bad'}'><td>{_e(d.layer)}</td><td>{_e(d.class_name)}</td>"
                f"<td><code>{_e(d.onnx_tensor)}</code></td><td>{_e(d.layout)}</td><td>{_e(d.matched_by)}</td>"
                f"<td>{_e(', '.join(d.fused))}</td><td class=num>{_num(d.max_abs)}</td>"
                f"<td>{'pass' if d.passed else _e('FAIL' + (': ' + d.problem if d.problem else ''))}</td></tr>"
            )
        body.append("</table></details>")
        if report.unmatched_layers:
            body.append("<details><summary>Layers without an ONNX counterpart</summary><table>")
            body += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in report.unmatched_layers.items()]
            body.append("</table></details>")
    if report.histograms:
        body.append("<h2>Error histograms</h2>")
        for hist in report.histograms:
            tolerance = report.atol if hist.precision == "fp32" else report.fp16_atol
            body.append(_histogram_svg(hist, tolerance))
    if report.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    body.append(
        "<h2>All comparisons</h2><details><summary>"
        + f"{len(report.results) + len(report.fp16_results)} rows</summary>"
    )
    body.append(_html_rows(report.results + report.fp16_results, show_all=True) + "</details>")
    body.append("<h2>Settings</h2>" + _kv_table(report.settings))
    body.append("<h2>Environment</h2>" + _kv_table(report.environment))
    body.append("<h2>Timings</h2>" + _kv_table({k: f"{v:.3f} s" for k, v in report.timings.items()}))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + f"<p class=muted>schema {_e(report.to_dict()['schema'])}</p></body></html>\n"
    )


def _kv_table(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v)}</td></tr>"
        for k, v in data.items()
    )
    return f"<table>{rows}</table>"


def write_report(report: ParityReport, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Write ``report`` as JSON (``.json``) or HTML (``.html``/``.htm``), atomically (temporary file + rename).

    The file gets the mode of the report it replaces, or the umask's default
    (:func:`lambda_export.io.write_text_atomic`).

    Raises:
        InputError: another suffix, a missing or unwritable folder.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    elif suffix in (".html", ".htm"):
        text = render_html(report, title=title or "lambda-export parity report")
    else:
        raise InputError(f"{path}: a report must end in .json or .html, not {suffix or 'no suffix'!r}")
    return write_text_atomic(path, text, what="the report")
