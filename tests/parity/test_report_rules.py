"""One rule everywhere: every number, colour and line of a parity report comes from the rule that decided it.

The demo model, exported, checked as a new user would: as exported (PASS) and with one weight of its lambda layer
multiplied by 1.001 (FAIL), under the relative rule (the default) and the absolute one (``rule="absolute"``). The HTML
is parsed and every element checked against the verdict: each row's PASS/FAIL mark against the row's own numbers and
the limit of the rule that judged it, the chart lines labelled with that limit (no atol line under the relative
rule), the headline equal to ``report.passed``; the terminal table and the JSON likewise. Screenshots of the four
reports go to ``artifacts/report-screenshots/`` (CI keeps ``artifacts/``) for a person to look at.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import require
from sabotage import copy, initializer, replace
from test_report import _report, _row, _screenshot

from lambda_export.loading import load_model
from lambda_export.parity import ParityReport, compare, verify
from lambda_export.report import render_html, render_text, write_report

CASES = [("relative", "pass"), ("relative", "fail"), ("absolute", "pass"), ("absolute", "fail")]


@pytest.fixture(scope="module")
def reports(demo_artifacts) -> dict[tuple[str, str], ParityReport]:
    """The four reports: (rule, "pass"/"fail") → the report of verify with the per-layer search."""
    exported = onnx.load(str(demo_artifacts["onnx"]))
    sabotaged = copy(exported)
    name = next(
        i.name
        for i in sabotaged.graph.initializer
        if "_lambda_1/" in i.name and initializer(sabotaged, i.name).size > 16
    )
    replace(sabotaged, name, initializer(sabotaged, name) * np.float32(1.001))  # one lambda weight off by 1e-3
    loaded = load_model(demo_artifacts["h5"])
    out = {}
    for rule, outcome in CASES:
        model = exported if outcome == "pass" else sabotaged
        out[rule, outcome] = verify(None, model, loaded=loaded, providers=["cpu"], locate="always", rule=rule)
    return out


class _Page(HTMLParser):
    """Tables (attributes, rows of (attributes, cells)), SVG elements and the verdict badge of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.svgs: list[dict] = []
        self.badge: str | None = None
        self.summaries: list[str] = []
        self._cell: list[str] | None = None
        self._element: dict | None = None
        self._in_badge = self._in_summary = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"attrs": attrs, "header": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append({"attrs": attrs, "cells": []})
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "svg":
            self.svgs.append({"attrs": attrs, "elements": []})
        elif tag in ("rect", "line", "text") and self.svgs:
            self._element = {"tag": tag, "attrs": attrs, "text": ""}
            self.svgs[-1]["elements"].append(self._element)
        elif tag == "span" and "badge" in attrs.get("class", ""):
            self._in_badge = self.badge is None
        elif tag == "summary":
            self._in_summary = True
            self.summaries.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            row = self.tables[-1]["rows"][-1]
            row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("rect", "line", "text"):
            self._element = None
        elif tag == "span":
            self._in_badge = False
        elif tag == "summary":
            self._in_summary = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._element is not None and self._element["tag"] == "text":
            self._element["text"] += data
        if self._in_badge:
            self.badge = data.strip()
        if self._in_summary:
            self.summaries[-1] += data


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    for table in parser.tables:
        if table["rows"]:
            table["header"] = table["rows"][0]["cells"]
            table["rows"] = table["rows"][1:]
    return parser


def _value(text: str) -> float:
    """A number as the report prints it: 2.74e-03, 331, >1.00, 77.50%, 100%, inf."""
    text = text.lstrip(">").rstrip("%")
    return float(text)


def _rows(table: dict) -> list[tuple[dict[str, str], bool, bool]]:
    """(cells by header, marked PASS, row coloured as failed) of each row of a parsed table."""
    out = []
    for row in table["rows"]:
        cells = dict(zip(table["header"], row["cells"], strict=True))
        result = cells["result"]
        assert result.startswith(("PASS", "FAIL")), cells
        out.append((cells, result.startswith("PASS"), "bad" in row["attrs"].get("class", "")))
    return out


def _check_result_tables(page: _Page, report: ParityReport) -> int:
    """Every row of the results tables: its mark agrees with its numbers against the limit of its rule."""
    checked = 0
    for table in (t for t in page.tables if t["attrs"].get("class") == "results"):
        rule, limit = table["attrs"]["data-rule"], float(table["attrs"]["data-limit"])
        for cells, passed, bad in _rows(table):
            assert bad == (not passed), cells
            if rule == "relative":
                assert not any("atol" in header for header in table["header"]), table["header"]
                within_max = _value(cells["max |onnx − f64|"]) <= _value(cells["allowed max"])
                within_rms = _value(cells["RMS |onnx − f64|"]) <= _value(cells["allowed RMS"])
                assert passed == (within_max and within_rms), cells
                assert passed == (_value(cells["× allowed"]) <= 1), cells
                assert passed == (_value(cells["factor to pass"]) <= limit), cells
                assert (cells["within allowed max"] == "100%") == within_max, cells
            else:
                assert passed == (_value(cells["atol to pass"]) <= limit), cells
                assert passed == (cells["within"] == "100%"), cells
            checked += 1
    assert checked >= len(report.worst()) + len(report.results)  # the worst rows and every comparison
    return checked


def _check_truth_table(page: _Page, report: ParityReport) -> None:
    tables = [t for t in page.tables if t["attrs"].get("class") == "truth"]
    assert len(tables) == (1 if report.float64_available else 0)
    for table in tables:
        for cells, passed, bad in _rows(table):
            assert bad == (not passed), cells
            ok = _value(cells["export"]) <= _value(cells["allowed"])
            ok = ok and _value(cells["rms export"]) <= _value(cells["rms allowed"])
            assert passed == ok, cells


def _check_layers(page: _Page, report: ParityReport, rule: str) -> None:
    (table,) = [t for t in page.tables if t["attrs"].get("class") == "layers"]
    for cells, passed, bad in _rows(table):
        assert bad == (not passed) and cells["rule"] == rule, cells
        assert passed == (_value(cells["× limit"]) <= 1), cells
        if not passed and rule == "absolute":
            assert _value(cells["value"]) > _value(cells["limit"]), cells
        if passed:
            assert _value(cells["value"]) <= _value(cells["limit"]), cells
    (chart,) = [s for s in page.svgs if s["attrs"].get("class") == "layers"]
    bars = [e for e in chart["elements"] if e["tag"] == "rect"]
    assert len(bars) == len(report.divergence)
    for bar, item in zip(bars, report.divergence, strict=True):
        a = bar["attrs"]
        assert a["data-passed"] == str(item.passed).lower() and a["data-rule"] == rule
        assert a["fill"] == ("#1a7f37" if item.passed else "#c62828")
        if float(a["data-value"]) > float(a["data-limit"]):
            assert not item.passed, a  # a bar beyond its limit is red
        if rule == "absolute":
            assert item.passed == (float(a["data-value"]) <= float(a["data-limit"]))
    texts = " ".join(e["text"] for e in chart["elements"] if e["tag"] == "text")
    limits = [e for e in chart["elements"] if e["tag"] == "line" and "limit" in e["attrs"].get("class", "")]
    if rule == "relative":
        assert "atol" not in texts and "allowed max" in texts
        assert len(limits) == len(report.divergence)  # one tick per layer: its own allowed max
        for line, item in zip(limits, report.divergence, strict=True):
            assert float(line["attrs"]["data-limit"]) == item.truth.allowed_max
    else:
        assert len(limits) == 1 and float(limits[0]["attrs"]["data-limit"]) == report.atol
        assert f"atol {report.atol:g}" in texts


def _check_histograms(page: _Page, report: ParityReport, rule: str) -> None:
    charts = [s for s in page.svgs if s["attrs"].get("class") == "histogram"]
    assert len(charts) == len(report.histograms) >= 1
    for chart in charts:
        assert chart["attrs"]["data-measure"] == "ratio"
        texts = " ".join(e["text"] for e in chart["elements"] if e["tag"] == "text")
        (limit,) = [e for e in chart["elements"] if e["tag"] == "line" and "limit" in e["attrs"].get("class", "")]
        assert float(limit["attrs"]["data-limit"]) == 1.0
        if rule == "relative":
            assert "atol" not in texts and "1 = allowed max (" in texts and "|onnx − f64| / allowed" in texts
        else:
            assert f"1 = atol + rtol·|tf| ({report.atol:g} + {report.rtol:g}·|tf|)" in texts
        over = sum(int(e["attrs"]["data-count"]) for e in chart["elements"] if e["attrs"].get("data-over") == "true")
        for bar in (e for e in chart["elements"] if e["tag"] == "rect"):
            beyond = float(bar["attrs"]["data-low"]) >= 1.0
            assert (bar["attrs"]["data-over"] == "true") == beyond
            assert bar["attrs"]["fill"] == ("#c62828" if beyond else "#3b6fb6")
        if report.passed:
            assert over == 0  # no value beyond the limit in a passing report
        if rule == "absolute":
            assert (over > 0) == (not report.passed)  # the absolute rule fails exactly on such values
        if rule == "relative":
            rms = re.search(r"RMS \|onnx − f64\|: at most >?([\d.e+-]+|inf)× the allowed RMS", texts)
            assert rms, texts
            assert report.passed or over > 0 or float(rms.group(1)) > 1


def _check_text(text: str, report: ParityReport, rule: str) -> None:
    rows = [line for line in text.splitlines() if line.lstrip().startswith("CPUExecutionProvider ")]
    worst = {(row.output, row.precision): row.metrics.passed for row in report.worst()}
    assert rows and len(rows) == len(worst) + (len(worst) if rule == "relative" else 0)  # + the float64 table
    for line in rows:
        assert line.rstrip().endswith("PASS" if report.passed else "FAIL"), line
    if rule == "relative":
        assert "atol" not in text
        header = next(line for line in text.splitlines() if line.startswith("provider "))
        assert "× allowed" in header and "factor to pass" in header
    assert text.splitlines()[-1].startswith(("PASS: " if report.passed else "FAIL: ") + "4 comparisons on CPU")


def _check_json(report: ParityReport, rule: str) -> None:
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["passed"] is report.passed and data["rule"] == rule
    for row in data["results"] + data["worst"]:
        m = row["metrics"]
        assert m["rule"] == rule
        if rule == "relative":
            vs = m["vs_float64"]
            assert m["min_passing_atol"] is None and m["frac_within"] == vs["frac_within"]
            assert m["passed"] == (vs["onnx_max"] <= vs["allowed_max"] and vs["onnx_rms"] <= vs["allowed_rms"])
            assert m["passed"] == (vs["excess"] <= 1) == (vs["factor_to_pass"] <= data["factor"])
            if vs["frac_within"] < 1:
                assert not m["passed"]
        else:
            assert m["vs_float64"] is None
            assert m["passed"] == (m["min_passing_atol"] <= data["atol"]) == (m["frac_within"] == 1.0)
    for layer in data["divergence"]:
        assert layer["rule"] == rule
        if rule == "relative":
            assert layer["min_passing_atol"] is None
            assert layer["passed"] == (layer["vs_float64"]["excess"] <= 1)
        else:
            assert layer["passed"] == (layer["min_passing_atol"] <= data["atol"])
    for hist in data["histograms"]:
        assert hist["measure"] == "ratio" and hist["rules"] == [rule]
    assert ParityReport.from_dict(data).to_dict() == data


@pytest.mark.parametrize(("rule", "outcome"), CASES, ids=["-".join(case) for case in CASES])
def test_every_element_agrees_with_the_verdict(reports, rule, outcome):
    report = reports[rule, outcome]
    assert report.rule == rule and report.passed == (outcome == "pass")
    assert report.float64_available == (rule == "relative")
    if outcome == "fail":
        assert "_lambda" in (report.first_divergent_layer or ""), report.first_divergent_layer
    page = render_html(report)
    parsed = _parse(page)
    assert parsed.badge == ("PASS" if report.passed else "FAIL")
    _check_result_tables(parsed, report)
    _check_truth_table(parsed, report)
    _check_layers(parsed, report, rule)
    _check_histograms(parsed, report, rule)
    if rule == "relative":
        assert "atol" not in page  # no absolute tolerance anywhere: it decided nothing
    assert any(summary.strip() == f"{len(report.results)} rows" for summary in parsed.summaries)
    _check_text(render_text(report), report, rule)
    _check_json(report, rule)


def test_plurals_and_a_failing_row_in_every_table(reports):
    one = _report([_row("CPUExecutionProvider", "y", 4, "normal", compare(np.ones(4), np.ones(4), 1e-4, 1e-3))])
    page = render_html(one)
    assert "<summary>1 row</summary>" in page and "1 rows" not in page
    assert "1 comparison on CPU" in page and "comparison(s)" not in page
    assert render_text(one).splitlines()[-1].startswith("PASS: 1 comparison on CPU")
    failing = reports["relative", "fail"]
    parsed = _parse(render_html(failing))
    # the failing output is marked in the worst-case table, the float64 table and the table of every comparison
    marked = [
        t["attrs"].get("class")
        for t in parsed.tables
        if t["header"][:2] == ["provider", "output"] and any(not passed for _, passed, _ in _rows(t))
    ]
    assert marked == ["results", "truth", "results"], marked
    text = render_text(failing)
    truth_rows = [line for line in text.splitlines() if line.startswith("  CPUExecutionProvider ")]
    assert truth_rows and all(line.rstrip().endswith("FAIL") for line in truth_rows)


def test_screenshots_of_the_four_reports(reports, tmp_path):
    """Relative/absolute × PASS/FAIL rendered by Chromium into artifacts/report-screenshots/ (created here)."""
    require(Path("/usr/bin/chromium").is_file(), "Debian's chromium (/usr/bin/chromium)", "apt-get install -y chromium")
    out = Path(__file__).resolve().parents[2] / "artifacts" / "report-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for rule, outcome in CASES:
        page = tmp_path / f"{rule}-{outcome}.html"
        write_report(reports[rule, outcome], page)
        png = out / f"{rule}-{outcome}.png"
        png.unlink(missing_ok=True)
        _screenshot(page, png, tmp_path)
        assert png.stat().st_size > 20_000  # a rendered page, not a blank one
