"""Human-readable parity reports: a terminal table, one self-contained HTML file, and JSON.

* :func:`render_text` – provider × output table (worst case over batch sizes, distributions and samples), the errors
  against the float64 truth and their ratio (relative rule), warnings, verdict, skipped providers, first divergent
  layer.
* :func:`render_html` – the same plus the per-layer divergence chart, an error histogram per output, every row, the
  environment and timings; inline CSS and hand-drawn inline SVG, no script and no external reference, so the file
  opens offline and can be attached to a CI run.
One rule everywhere: each table, mark, colour and line shows the rule that judged its rows. Rows judged by the
relative rule show their error against float64, the allowed max and RMS, ``× allowed`` and the factor that would pass;
rows of the absolute rule show |onnx − tf|, the share within atol + rtol·|tf| and the atol that would pass (a table
per rule, float16 rows with float16's tolerances). The per-layer chart draws each layer's allowed max as a tick
(relative) or the atol line (absolute); the histograms count each value's error over its allowed error, with the
limit at 1 (:meth:`lambda_export.parity.ErrorHistogram.add_judged`).

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


def _plural(count: int, word: str, plural: str | None = None) -> str:
    """``1 row``, ``3 rows``."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _percent(fraction: float) -> str:
    """A share rounded down, so that only all of the values reads 100%."""
    if fraction >= 1:
        return "100%"
    return f"{math.floor(fraction * 10000) / 100:.2f}%"


def _times(value: float) -> str:
    """A ratio to the rule's limit (passes when ≤ 1), never rounded onto 1 from above."""
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "inf"
    text = f"{value:.3g}"
    return f">{text}" if value > 1 and float(text) <= 1 else text


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


def _row_rule(report: ParityReport, row: ResultRow) -> str:
    """The rule that judged ``row``: "relative" when it has errors against float64; a row that failed before any
    comparison (NaN, an ONNX Runtime failure) goes with the rule of its precision's other rows."""
    if row.metrics.truth is not None:
        return "relative"
    if row.metrics.problem and row.precision == "fp32" and report.float64_available:
        return "relative"
    return "absolute"


def _tolerances(report: ParityReport, row: ResultRow) -> tuple[float, float]:
    """The absolute rule's (atol, rtol) for ``row``: float16's for float16 rows."""
    return (report.atol, report.rtol) if row.precision == "fp32" else (report.fp16_atol, report.fp16_rtol)


def _groups(report: ParityReport, rows: list[ResultRow]) -> list[tuple[str, tuple[float, float], list[ResultRow]]]:
    """``rows`` split by the rule that judged them (and, for the absolute rule, its tolerances), in first-seen order."""
    groups: dict[tuple[str, tuple[float, float]], list[ResultRow]] = {}
    for row in rows:
        rule = _row_rule(report, row)
        key = (rule, (0.0, 0.0) if rule == "relative" else _tolerances(report, row))
        groups.setdefault(key, []).append(row)
    return [(rule, tolerances, members) for (rule, tolerances), members in groups.items()]


def _group_title(report: ParityReport, rule: str, tolerances: tuple[float, float]) -> str:
    """What a table's rows were judged by, in one line."""
    if rule == "relative":
        return (
            f"relative rule: max and RMS of |onnx − f64| ≤ allowed = {report.factor:g} × TensorFlow float32's own "
            f"+ {report.floor:g} float32 eps of the output's scale"
        )
    return f"absolute rule: |onnx − tf| ≤ atol + rtol·|tf|, atol = {tolerances[0]:g}, rtol = {tolerances[1]:g}"


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


_TEXT_HEADERS = {
    "relative": ["provider", "output", "prec", "max |x−f64|", "allowed", "× allowed", "factor to pass"],
    "absolute": ["provider", "output", "prec", "max abs", "max rel", "atol to pass"],
}
_TEXT_LEGENDS = {
    "relative": "× allowed: the larger of max/allowed max and RMS/allowed RMS (passes ≤ 1); factor to pass: the "
    "smallest factor with which it would pass",
    "absolute": "atol to pass: the smallest atol with which every value would pass (same rtol; passes ≤ atol)",
}


def _rule_cells(rule: str, row: ResultRow) -> list[str]:
    """The numbers the rule judged ``row`` by: relative: max error vs float64, allowed max, × allowed, factor to
    pass; absolute: max abs, max rel, atol to pass."""
    m = row.metrics
    if rule == "relative":
        t = m.truth
        if t is None:
            return ["—", "—", "—", "—"]
        return [_num(t.candidate_max), _num(t.allowed_max), _times(t.excess), _num(t.factor_to_pass)]
    return [_num(m.max_abs), _num(m.max_rel), _num(m.min_passing_atol)]


def _atol_adds_something(rows: list[ResultRow]) -> bool:
    """Show "atol to pass" in the terminal only when a row failed on the absolute tolerance: then it says which atol
    would pass. On rows that pass it is mostly noise (1e-38 where the rtol term alone covers every value)."""
    return any(
        not row.metrics.passed and row.metrics.problem is None and math.isfinite(row.metrics.min_passing_atol)
        for row in rows
    )


def _worst_rows(rule: str, rows: list[ResultRow], atol: bool = True) -> list[list[str]]:
    """Table rows: provider, output, precision, the rule's numbers (:func:`_rule_cells`; without the atol to pass
    unless ``atol``), worst case, result."""
    return [
        [
            row.provider,
            row.output,
            row.precision,
            *_rule_cells(rule, row)[: None if rule == "relative" or atol else -1],
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


_TRUTH_HEADER = [
    "provider",
    "output",
    "tf32",
    "export",
    "ratio",
    "allowed",
    "rms tf32",
    "rms export",
    "rms ratio",
    "rms allowed",
    "worst at",
    "result",
]


def _truth_rows(rows: list[ResultRow]) -> list[list[str]]:
    """Provider, output, TensorFlow's and the export's error vs float64, their ratio and what the rule allows (max,
    then RMS), where, and the result."""
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
                _num(truth.allowed_max),
                _num(truth.baseline_rms),
                _num(truth.candidate_rms),
                _ratio(truth.ratio_rms),
                _num(truth.allowed_rms),
                _where(row),
                _cell_status(row),
            ]
        )
    return out


def _verdict(report: ParityReport) -> str:
    runs = len(report.results)
    providers = ", ".join(_short(p) for p in report.providers_run) or "none"
    sizes = ", ".join(str(s) for s in report.settings.get("batch_sizes", []))
    dists = ", ".join(report.settings.get("distributions", []))
    what = f"{_plural(runs, 'comparison')} on {providers}; batch {sizes}; inputs {dists}"
    if report.fp16:
        what += f"; float16 {'passed' if all(r.metrics.passed for r in report.fp16_results) else 'FAILED'}"
    return f"{'PASS' if report.passed else 'FAIL'}: {what}"


def _layer_numbers(item: Any, report: ParityReport) -> str:
    """The ONNX tensor of a layer and the numbers its rule judged it by, in words."""
    if item.truth is not None:
        t = item.truth
        return (
            f"ONNX tensor {item.onnx_tensor}, max |onnx − f64| {_num(t.candidate_max)}, allowed {_num(t.allowed_max)}, "
            f"{_times(t.excess)}× allowed"
        )
    return (
        f"ONNX tensor {item.onnx_tensor}, max abs {_num(item.max_abs)}, atol to pass {_num(item.min_passing_atol)} "
        f"{'≤' if item.passed else '>'} atol {report.atol:g}"
    )


def _precisions(rows: list[ResultRow]) -> str:
    """``fp32`` or ``fp16, fp16-emulated``: the precisions of ``rows``."""
    return ", ".join(dict.fromkeys(row.precision for row in rows))


def render_text(report: ParityReport, color: bool = False) -> str:
    """A compact terminal summary: worst case per provider × output, verdict, skipped providers, divergence."""
    worst = report.worst() + (report.worst(fp16=True) if report.fp16 else [])
    lines = [f"parity vs TensorFlow (CPU reference): {_rule_text(report)}"]
    table: list[str] = []
    for rule, tolerances, rows in _groups(report, worst):
        table.append(f"{_precisions(rows)}, {_group_title(report, rule, tolerances)}:")
        atol = rule == "relative" or _atol_adds_something(rows)
        header = _TEXT_HEADERS[rule] if atol else _TEXT_HEADERS[rule][:-1]
        table += _table(_worst_rows(rule, rows, atol), [*header, "worst case", "result"])
        if atol:
            table.append(_TEXT_LEGENDS[rule])
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
        lines.append(
            "error vs float64 (max |x − f64| and its RMS; ratio = export / TensorFlow float32; allowed = "
            f"{report.factor:g} × TensorFlow float32's + the floor):"
        )
        lines.extend("  " + line for line in _table(truth_rows, _TRUTH_HEADER))
    if report.fp16:
        lines.append(f"float16 tolerances: |onnx − tf| ≤ {report.fp16_atol:g} + {report.fp16_rtol:g}·|tf|")
    for warning in report.warnings:
        lines.append(_paint(f"warning: {warning}", _YELLOW, color))
    absent, skipped = _skipped_providers(report.providers_skipped)
    lines.extend(
        _paint(f"skipped {_short(provider)}: {reason}", _YELLOW, color) for provider, reason in skipped.items()
    )
    if absent:
        lines.append(_paint(absent, _DIM, color))
    if report.first_divergent_layer:
        item = next(
            (d for d in report.divergence if report.first_divergent_layer in (d.layer, *d.fused)),
            None,
        )
        where = f" ({_layer_numbers(item, report)})" if item else ""
        if item is not None and item.truth is not None:
            where += f": {_ratio(item.truth.ratio_max)}× TensorFlow float32's own error there"
        found_on = _divergence_found_on(report)
        where += f", found {found_on}" if found_on else ""
        lines.append(_paint(f"first divergent layer: {report.first_divergent_layer}{where}", _RED, color))
    elif report.divergence:
        lines.append(f"per-layer check: {_plural(len(report.divergence), 'layer')} compared, none beyond tolerance")
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


_HTML_HEADERS = {
    "relative": [
        "max |onnx − f64|",
        "allowed max",
        "RMS |onnx − f64|",
        "allowed RMS",
        "× allowed",
        "within allowed max",
        "factor to pass",
    ],
    "absolute": ["max abs", "max rel", "mean abs", "within", "atol to pass"],
}


def _html_rule_cells(rule: str, row: ResultRow) -> list[str]:
    """The numbers of :data:`_HTML_HEADERS` for ``row`` (text, unescaped)."""
    m = row.metrics
    if rule == "relative":
        t = m.truth
        if t is None:
            return ["—"] * len(_HTML_HEADERS["relative"])
        return [
            _num(t.candidate_max),
            _num(t.allowed_max),
            _num(t.candidate_rms),
            _num(t.allowed_rms),
            _times(t.excess),
            _percent(t.frac_within),
            _num(t.factor_to_pass),
        ]
    return [_num(m.max_abs), _num(m.max_rel), _num(m.mean_abs), _percent(m.frac_within), _num(m.min_passing_atol)]


def _html_legend(report: ParityReport, rule: str, tolerances: tuple[float, float]) -> str:
    """What the columns of a table of ``rule`` mean."""
    if rule == "relative":
        return (
            "<p class=muted><i>max</i>, <i>RMS |onnx − f64|</i>: the ONNX output's error against the float64 truth, "
            "largest and root mean square over the values of the comparison; <i>allowed</i>: "
            f"{report.factor:g} × TensorFlow float32's own error + {report.floor:g} float32 eps of the output's scale; "
            "<i>× allowed</i>: the larger of the two errors over what is allowed (passes when ≤ 1); <i>within allowed "
            "max</i>: the share of the values whose error is at most the allowed max (the RMS must pass too); "
            f"<i>factor to pass</i>: the smallest factor with which it would pass (the rule's: {report.factor:g}).</p>"
        )
    return (
        "<p class=muted><i>max abs</i>, <i>max rel</i>, <i>mean abs</i>: |onnx − tf| and |onnx − tf| / |tf| over the "
        f"values of the comparison; <i>within</i>: the share of its values within atol + rtol·|tf| (atol = "
        f"{tolerances[0]:g}, rtol = {tolerances[1]:g}); <i>atol to pass</i>: the smallest atol with which every value "
        f"would pass at the same rtol (passes when ≤ {tolerances[0]:g}).</p>"
    )


def _html_rows(report: ParityReport, rows: list[ResultRow], show_all: bool = False) -> str:
    """One table per rule that judged ``rows`` (a caption line each), with that rule's numbers and the result."""
    parts = []
    for rule, tolerances, members in _groups(report, rows):
        limit = report.factor if rule == "relative" else tolerances[0]
        parts.append(
            f"<p class=rule-caption>{_e(_precisions(members))}, {_e(_group_title(report, rule, tolerances))}</p>"
            f"<table class=results data-rule='{rule}' data-limit='{limit!r}'><tr><th>provider</th><th>output</th>"
            "<th>precision</th>"
            + ("<th>batch</th><th>inputs</th><th>sample</th><th>seed</th>" if show_all else "<th>worst case</th>")
            + "".join(f"<th>{_e(h)}</th>" for h in _HTML_HEADERS[rule])
            + "<th>result</th></tr>"
        )
        for row in members:
            where = (
                f"<td class=num>{row.batch_size}</td><td>{_e(row.distribution)}</td><td class=num>{row.sample}</td>"
                f"<td class=num>{_e(row.seed if row.seed is not None else '—')}</td>"
                if show_all
                else f"<td>{_e(_where(row))}</td>"
            )
            cells = "".join(f"<td class=num>{_e(c)}</td>" for c in _html_rule_cells(rule, row))
            parts.append(
                f"<tr class='{'' if row.metrics.passed else 'bad'}'><td>{_e(_short(row.provider))}</td>"
                f"<td>{_e(row.output)}</td><td>{_e(row.precision)}</td>{where}{cells}"
                f"<td title='{_e(_status(row))}'>{_e(_cell_status(row))}</td></tr>"
            )
        parts.append("</table>" + _html_legend(report, rule, tolerances))
    return "".join(parts)


def _log_position(value: float, low: float, high: float, length: float) -> float:
    value = min(max(value, low), high)
    return (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low)) * length


def _layer_check(item: Any, report: ParityReport) -> tuple[float, float, float]:
    """(value, limit, value / limit) of the rule that judged a layer: the max |onnx − f64| against the allowed max
    under the relative rule (the ratio is :attr:`TruthErrors.excess`, which counts the RMS too), the atol with which
    the layer would pass against atol under the absolute one."""
    if item.truth is not None:
        return item.truth.candidate_max, item.truth.allowed_max, item.truth.excess
    value = item.min_passing_atol
    ratio = 0.0 if value == 0 else (value / report.atol if report.atol > 0 else math.inf)
    return value, report.atol, ratio


def _divergence_svg(report: ParityReport) -> str:
    """Horizontal bars, on a log scale, of what the rule compared for each layer, with the rule's limit: per layer
    (a tick: the allowed max error against float64) under the relative rule, one atol line under the absolute one."""
    items = report.divergence
    if not items:
        return ""
    checks = [_layer_check(d, report) for d in items]
    relative = any(d.truth is not None for d in items)
    absolute = any(d.truth is None for d in items)
    positive = [v for value, limit, _ in checks for v in (value, limit) if v > 0 and math.isfinite(v)]
    low = max(10 ** math.floor(math.log10(min(positive)) - 0.5) if positive else 1e-8, 1e-12)
    high = 10 ** math.ceil(math.log10(max(positive) * 10) + 0.01) if positive else 1.0
    label_w, plot_w, bar_h, top = 240, 600, 16, 46  # the limit's label sits on its own line under the title
    height = top + len(items) * (bar_h + 4) + 30
    width = label_w + plot_w + 170
    title = (
        "max |onnx − f64| per Keras layer (log scale); tick: the allowed max"
        if relative and not absolute
        else "atol to pass per Keras layer (log scale)"
        if not relative
        else "per Keras layer (log scale): max |onnx − f64| (tick: allowed max), or the atol to pass"
    )
    parts = [
        f"<svg role='img' aria-label='per-layer check' class=layers width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' font-family='ui-monospace,monospace' font-size='11'>",
        f"<text x='{label_w}' y='16' font-size='12' fill='#1d2330'>{_e(title)}</text>",
    ]
    decade = math.log10(low)
    while decade <= math.log10(high) + 1e-9:
        x = label_w + _log_position(10**decade, low, high, plot_w)
        parts.append(f"<line x1='{x:.1f}' y1='{top - 4}' x2='{x:.1f}' y2='{height - 26}' stroke='#eef0f4'/>")
        parts.append(
            f"<text x='{x:.1f}' y='{height - 12}' text-anchor='middle' fill='#5b6472'>1e{round(decade)}</text>"
        )
        decade += 1
    for index, (item, (value, limit, ratio)) in enumerate(zip(items, checks, strict=True)):
        y = top + index * (bar_h + 4)
        shown = value if math.isfinite(value) else high
        w = _log_position(shown, low, high, plot_w) if shown > 0 else 1.0
        colour = "#1a7f37" if item.passed else "#c62828"
        name = item.layer if len(item.layer) <= 30 else item.layer[:29] + "…"
        if item.fused:
            name += f" +{len(item.fused)}"
        first = report.first_divergent_layer in (item.layer, *item.fused)
        rule = "relative" if item.truth is not None else "absolute"
        what = "max |onnx − f64|" if rule == "relative" else "atol to pass"
        limit_name = "allowed max" if rule == "relative" else "atol"
        parts.append(
            f"<text x='{label_w - 6}' y='{y + bar_h - 4}' text-anchor='end' fill='#1d2330'>{_e(name)}</text>"
            f"<rect class=layer x='{label_w}' y='{y}' width='{max(w, 1.0):.1f}' height='{bar_h}' fill='{colour}' "
            f"opacity='0.85' data-rule='{rule}' data-value='{value!r}' data-limit='{limit!r}' "
            f"data-passed='{str(item.passed).lower()}'>"
            f"<title>{_e(item.layer)} → {_e(item.onnx_tensor)}: {what} {_num(value)}, {limit_name} {_num(limit)}"
            f"{' (fused: ' + _e(', '.join(item.fused)) + ')' if item.fused else ''}</title></rect>"
        )
        end = label_w + max(w, 1.0)
        if rule == "relative" and limit > 0:
            tick = label_w + _log_position(limit, low, high, plot_w)
            end = max(end, tick + 2)
            parts.append(
                f"<line class=limit x1='{tick:.1f}' y1='{y - 2}' x2='{tick:.1f}' y2='{y + bar_h + 2}' stroke='#9a6700' "
                f"stroke-width='2' data-limit='{limit!r}'><title>allowed max {_num(limit)}</title></line>"
            )
        label = f"{_num(value)} ({_times(ratio)}× {limit_name})" if rule == "relative" else _num(value)
        parts.append(
            f"<text x='{end + 4:.1f}' y='{y + bar_h - 4}' fill='#5b6472'>{_e(label)}"
            f"{' ◀ first' if first else ''}</text>"
        )
    if absolute:
        x = label_w + _log_position(report.atol, low, high, plot_w)
        parts.append(
            f"<line class=limit x1='{x:.1f}' y1='{top - 6}' x2='{x:.1f}' y2='{height - 26}' stroke='#9a6700' "
            f"stroke-width='1.5' stroke-dasharray='5,3' data-limit='{report.atol!r}'/>"
            f"<text x='{x + 3:.1f}' y='{top - 8}' fill='#9a6700'>atol {report.atol:g}</text>"
        )
    if relative:
        parts.append(
            f"<text x='{label_w}' y='{top - 8}' fill='#9a6700'>| allowed max = {report.factor:g} × TensorFlow "
            f"float32's error + {report.floor:g} eps of scale (relative rule; the RMS is checked too)</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _histogram_limit(report: ParityReport, hist: Any) -> tuple[float | None, str, list[tuple[str, bool]]]:
    """Where a histogram's limit line goes (None: no line), its label, and notes to print under the chart (with
    whether each says the rule failed)."""
    rows = [
        row
        for row in report.results + report.fp16_results
        if (row.provider, row.output, row.precision) == (hist.provider, hist.output, hist.precision)
    ]
    atol, rtol = (report.atol, report.rtol) if hist.precision == "fp32" else (report.fp16_atol, report.fp16_rtol)
    if hist.measure == "ratio":
        truths = [row.metrics.truth for row in rows if row.metrics.truth is not None]
        notes = []
        if truths:
            allowed = sorted(t.allowed_max for t in truths)
            span = _num(allowed[0]) if allowed[0] == allowed[-1] else f"{_num(allowed[0])}–{_num(allowed[-1])}"
            label = f"1 = allowed max ({span})"
            rms = max(_ratio_or_zero(t.candidate_rms, t.allowed_rms) for t in truths)
            notes.append((f"RMS |onnx − f64|: at most {_times(rms)}× the allowed RMS", rms > 1))
            if "absolute" in hist.rules:
                label += f" or atol + rtol·|tf| ({atol:g} + {rtol:g}·|tf|)"
        else:
            label = f"1 = atol + rtol·|tf| ({atol:g} + {rtol:g}·|tf|)"
        return 1.0, label, notes
    if hist.precision == "fp32" and report.float64_available:
        return (
            None,
            "",
            ["|onnx − tf| against TensorFlow float32: the relative rule judges |onnx − f64|, no limit drawn"],
        )
    notes = [] if rtol == 0 else [(f"values beyond atol may still pass through the rtol term ({rtol:g}·|tf|)", False)]
    return atol, f"atol {atol:g}", notes


def _ratio_or_zero(numerator: float, denominator: float) -> float:
    if numerator == 0:
        return 0.0
    return numerator / denominator if denominator > 0 else math.inf


def _histogram_svg(hist: Any, report: ParityReport) -> str:
    """Bars of the counts per log-spaced bin with the rule's limit marked: under ``measure="ratio"`` each value's
    error over its allowed error (the limit is 1), else |onnx − tf| with the atol line (absolute rule only)."""
    counts = list(hist.counts)
    edges = list(hist.edges)
    n = len(counts)
    limit, label, notes = _histogram_limit(report, hist)
    if hist.measure == "ratio":
        quantity = "|onnx − f64| / allowed" if "relative" in hist.rules else "|onnx − tf| / (atol + rtol·|tf|)"
        if len(hist.rules) > 1:
            quantity = "error / allowed error"
    else:
        quantity = "|onnx − tf|"
    bar_w, plot_h, left, top = 22, 150, 50, 32
    width, height = max(left + n * bar_w + 20, 560), top + plot_h + 46 + 14 * len(notes)
    peak = max(counts) if any(counts) else 1
    parts = [
        f"<svg role='img' aria-label='error histogram' class=histogram data-measure='{_e(hist.measure)}' "
        f"width='{width}' height='{height}' viewBox='0 0 {width} {height}' font-family='ui-monospace,monospace' "
        "font-size='10'>",
        f"<text x='{left}' y='14' font-size='12' fill='#1d2330'>{_e(_short(hist.provider))} · {_e(hist.output)} · "
        f"{_e(hist.precision)}: {_e(quantity)} ({_plural(hist.total, 'value')})</text>",
        f"<line x1='{left}' y1='{top + plot_h}' x2='{left + n * bar_w}' y2='{top + plot_h}' stroke='#5b6472'/>",
        f"<text x='{left - 4}' y='{top + 8}' text-anchor='end' fill='#5b6472'>{peak}</text>",
        f"<text x='{left - 4}' y='{top + plot_h}' text-anchor='end' fill='#5b6472'>0</text>",
    ]
    for index, count in enumerate(counts):
        h = plot_h * count / peak
        x = left + index * bar_w
        low = edges[index]
        high = edges[index + 1] if index + 1 < n else math.inf
        over = limit is not None and low >= limit
        colour = "#c62828" if over else "#3b6fb6"
        parts.append(
            f"<rect class=bin x='{x + 1}' y='{top + plot_h - h:.1f}' width='{bar_w - 2}' height='{h:.1f}' "
            f"fill='{colour}' data-low='{low!r}' data-count='{count}' data-over='{str(over).lower()}'>"
            f"<title>[{_num(low)}, {_num(high)}): {count}</title></rect>"
        )
        if low > 0 and abs(math.log10(low) - round(math.log10(low))) < 1e-9:
            # a decade edge: a tick and its label at the bar's left edge, every other bin (44 px apart, labels ≤ 30 px)
            parts.append(
                f"<line x1='{x}' y1='{top + plot_h}' x2='{x}' y2='{top + plot_h + 4}' stroke='#5b6472'/>"
                f"<text x='{x}' y='{top + plot_h + 15}' text-anchor='middle' fill='#5b6472'>1e{round(math.log10(low))}</text>"
            )
    if limit is not None:
        # the limit line between the bins around it
        position = next((i for i in range(1, n) if edges[i] >= limit), n - 1)
        x = left + position * bar_w
        parts.append(
            f"<line class=limit x1='{x}' y1='{top - 2}' x2='{x}' y2='{top + plot_h}' stroke='#9a6700' "
            f"stroke-dasharray='4,3' data-limit='{limit!r}'/>"
            f"<text x='{min(x + 3, width - 8 * len(label))}' y='{top - 4}' fill='#9a6700'>{_e(label)}</text>"
        )
    lines = [*notes]
    if hist.nonfinite:
        lines.append((f"{_plural(hist.nonfinite, 'NaN/Inf value')} not counted", True))
    else:
        lines.append(("bars: half decades; the first from 0, the last open-ended", False))
    for index, (line, red) in enumerate(lines):
        parts.append(
            f"<text x='{left}' y='{top + plot_h + 32 + 14 * index}' fill='{'#c62828' if red else '#5b6472'}'>"
            f"{_e(line)}</text>"
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
        _html_rows(report, report.worst()),
        *(f"<p class=muted>Problem: {_e(problem)}</p>" for problem in _problems(report.worst())),
    ]


def _html_truth(report: ParityReport) -> list[str]:
    """The "Against the float64 truth" table (empty without a float64 reference)."""
    truth_rows = _truth_rows(report.worst())
    if not truth_rows:
        return []
    parts = [
        "<h2>Against the float64 truth</h2><p>The Keras model rebuilt in float64 with the same weights, on the same "
        "inputs. <i>tf32</i>: TensorFlow float32's own error against it (the largest over the inputs of that kind); "
        "<i>export</i>: the ONNX output's; <i>ratio</i>: export / TensorFlow; <i>allowed</i>: "
        f"{report.factor:g} × TensorFlow's + {report.floor:g} float32 eps of the output's scale. The max and the "
        "root mean square of the elementwise errors must both be within what is allowed.</p>"
        "<table class=truth data-rule='relative'><tr>" + "".join(f"<th>{_e(h)}</th>" for h in _TRUTH_HEADER) + "</tr>"
    ]
    worst = [row for row in report.worst() if row.metrics.truth is not None]
    for cells, row in zip(truth_rows, worst, strict=True):
        cells = [_short(cells[0]), *cells[1:]]
        parts.append(
            f"<tr class='{'' if row.metrics.passed else 'bad'}'>"
            + "".join(
                f"<td class=num>{_e(c)}</td>" if 2 <= i <= 9 else f"<td>{_e(c)}</td>" for i, c in enumerate(cells)
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
        "<h2>float16</h2><p>Against the float32 TensorFlow reference, by the absolute rule with float16's "
        f"tolerances (atol = {report.fp16_atol:g}, rtol = {report.fp16_rtol:g}).</p>",
        _html_rows(report, report.worst(fp16=True)),
    ]


def _skipped_providers(skipped: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """The providers that did not run: one quiet line for the GPU providers that cannot exist on this machine
    (``GPU providers: not available here (onnxruntime-gpu not installed)``; None when there are none), and the others
    (there but unusable: the user must hear why), provider → reason. The JSON keeps every reason."""
    from lambda_export.ort import absent_here

    absent = {provider: absent_here(reason) for provider, reason in skipped.items()}
    others = {provider: reason for provider, reason in skipped.items() if absent[provider] is None}
    shorts = {provider: short for provider, short in absent.items() if short is not None}
    if not shorts:
        return None, others
    if len(set(shorts.values())) == 1:
        why = next(iter(shorts.values()))
    else:
        why = "; ".join(f"{_short(provider)}: {short}" for provider, short in shorts.items())
    return f"GPU providers: not available here ({why})", others


def _html_skipped(report: ParityReport) -> list[str]:
    """The providers that were asked for but not run, and why (those that cannot exist here in one quiet line)."""
    absent, skipped = _skipped_providers(report.providers_skipped)
    parts = [f"<p class=muted>{_e(absent)}</p>"] if absent else []
    if not skipped:
        return parts
    return [
        "<h2>Skipped providers</h2><table><tr><th>provider</th><th>reason</th></tr>",
        *(
            f"<tr><td><span class='badge skip'>{_e(_short(p))}</span></td><td>{_e(r)}</td></tr>"
            for p, r in skipped.items()
        ),
        "</table>",
        *parts,
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
        f"<p class=muted>{_divergence_caption(report)} Red: the layer failed. “+N”: N earlier layers (e.g. a "
        "convolution whose batch normalisation was folded into it) are computed by the same ONNX node.</p>",
        "<details><summary>Layer matches</summary><table class=layers><tr><th>layer</th><th>class</th>"
        "<th>ONNX tensor</th><th>layout</th><th>matched by</th><th>fused</th><th>rule</th><th>checked</th>"
        "<th>value</th><th>limit</th><th>× limit</th><th>ratio vs tf32 (f64)</th><th>result</th></tr>",
    ]
    for d in report.divergence:
        value, limit, excess = _layer_check(d, report)
        ratio = _ratio(d.truth.ratio_max) if d.truth is not None else "—"
        rule = "relative" if d.truth is not None else "absolute"
        checked = "max |onnx − f64|, RMS" if rule == "relative" else "atol to pass"
        parts.append(
            f"<tr class='{'' if d.passed else 'bad'}'><td>{_e(d.layer)}</td><td>{_e(d.class_name)}</td>"
            f"<td><code>{_e(d.onnx_tensor)}</code></td><td>{_e(d.layout)}</td><td>{_e(d.matched_by)}</td>"
            f"<td>{_e(', '.join(d.fused))}</td><td>{rule}</td><td>{checked}</td><td class=num>{_num(value)}</td>"
            f"<td class=num>{_num(limit)}</td><td class=num>{_times(excess)}</td><td class=num>{ratio}</td>"
            f"<td>{'PASS' if d.passed else _e('FAIL' + (': ' + d.problem if d.problem else ''))}</td></tr>"
        )
    parts.append("</table></details>")
    if report.unmatched_layers:
        parts.append("<details><summary>Layers without an ONNX counterpart</summary><table>")
        parts += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in report.unmatched_layers.items()]
        parts.append("</table></details>")
    return parts


def _divergence_caption(report: ParityReport) -> str:
    """What the bars of the per-layer chart are, for the rules that judged the layers."""
    rules = {"relative" if d.truth is not None else "absolute" for d in report.divergence}
    relative = (
        "the max |onnx − f64| of the layer's output against its matching ONNX tensor, and as a tick the allowed max "
        "of the relative rule (the layer also fails when its RMS error is beyond the allowed RMS)"
    )
    absolute = (
        f"the smallest atol with which every value of the layer's output passes (rtol = {report.rtol:g}) against "
        f"the atol line ({report.atol:g})"
    )
    if rules == {"relative"}:
        return f"Bars: {relative}."
    if rules == {"absolute"}:
        return f"Bars: {absolute}."
    return f"Bars: for layers judged by the relative rule, {relative}; for the others, {absolute}."


def _html_histograms(report: ParityReport) -> list[str]:
    """One error histogram chart per output, provider and precision."""
    if not report.histograms:
        return []
    return [
        "<h2>Error histograms</h2>",
        *(_histogram_svg(hist, report) for hist in report.histograms),
    ]


def _html_notes(report: ParityReport) -> list[str]:
    notes = _notes(report)
    return ["<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"] if notes else []


def _html_comparisons_and_facts(report: ParityReport) -> list[str]:
    """Every comparison (folded), then the settings, the environment and the timings."""
    return [
        "<h2>All comparisons</h2><details><summary>"
        + f"{_plural(len(report.results) + len(report.fp16_results), 'row')}</summary>",
        _html_rows(report, report.results + report.fp16_results, show_all=True) + "</details>",
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
    from lambda_export.quantization.verdict import verdict_line

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
    # accuracy, runtimes and what int8 brings here (share of the multiply-adds, size, speed: "no benefit here: ...")
    text = verdict_line(quantization)
    lines.append(text if verdict is None else _paint(text, _GREEN if verdict["passed"] else _RED, color))
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
