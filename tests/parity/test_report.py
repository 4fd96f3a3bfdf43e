"""Text, HTML and JSON parity reports."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import require
from onnx import numpy_helper

from lambda_export.errors import InputError
from lambda_export.loading import load_model
from lambda_export.parity import (
    SCHEMA,
    ErrorHistogram,
    LayerDivergence,
    Metrics,
    ParityReport,
    ResultRow,
    compare,
    verify,
)
from lambda_export.report import render_html, render_text, write_report


def _row(provider, output, batch, distribution, metrics, precision="fp32"):
    return ResultRow(provider, output, batch, distribution, 0, metrics, seed=123, precision=precision)


@pytest.fixture
def handmade() -> ParityReport:
    good = compare(np.ones(4), np.ones(4) + 1e-6, 1e-4, 1e-3)
    worse = compare(np.ones(4), np.ones(4) + 3e-5, 1e-4, 1e-3)
    nan = compare(np.ones(4), np.array([1.0, np.nan, 1.0, 1.0]), 1e-4, 1e-3)
    hist = ErrorHistogram("CPUExecutionProvider", "logits")
    hist.add(np.zeros(100), np.linspace(0, 1e-3, 100))
    return ParityReport(
        passed=False,
        atol=1e-4,
        rtol=1e-3,
        providers_run=["CPUExecutionProvider"],
        providers_skipped={"CUDAExecutionProvider": "onnxruntime-gpu not installed"},
        results=[
            _row("CPUExecutionProvider", "logits", 1, "normal", good),
            _row("CPUExecutionProvider", "logits", 4, "uniform", worse),
            _row("CPUExecutionProvider", "boxes", 4, "normal", nan),
        ],
        divergence=[
            LayerDivergence("stem_bn", "Conv", 2e-6, True, "BatchNormalization", fused=["stem_conv"]),
            LayerDivergence("dense <b>", "MatMul_0", 0.5, False, "Dense", min_passing_atol=0.4999),
        ],
        first_divergent_layer="dense <b>",
        unmatched_layers={"stem_conv": "computed inside the ONNX node of stem_bn (fused)"},
        notes=["a note with <html> & 'quotes'"],
        environment={"python": "3.11.9", "onnxruntime": "1.32.0", "cpu": "Test CPU", "cores": 2, "gpu": None},
        timings={"reference": 0.5, "total": 1.25},
        histograms=[hist],
        settings={"batch_sizes": [1, 4], "distributions": ["normal", "uniform"], "samples": 1, "seed": 0},
        model={"source": "model.h5", "onnx": "model.onnx"},
    )


@pytest.fixture(scope="module")
def real_report(demo_artifacts) -> ParityReport:
    """A failing verify on the demo with one convolution weight scaled, with float16 rows and the layer chart."""
    model = onnx.load(str(demo_artifacts["onnx"]))
    init = next(i for i in model.graph.initializer if "/stage1_block0_conv3_1/" in i.name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    loaded = load_model(demo_artifacts["h5"])
    return verify(None, model, loaded=loaded, providers=["cpu"], batch_sizes=(2,), fp16=True)


def test_text_table_has_the_worst_rows(handmade):
    text = render_text(handmade)
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("CPUExecutionProvider ")]
    assert len(rows) == 2  # worst per provider x output: logits (batch 4 row) and boxes
    logits = next(line for line in rows if "logits" in line)
    assert "3.00e-05" in logits and "batch 4, uniform inputs" in logits and logits.rstrip().endswith("PASS")
    boxes = next(line for line in rows if "boxes" in line)
    assert "FAIL: NaN in ONNX output (1 of 4 values)" in boxes
    assert "GPU providers: not available here (onnxruntime-gpu not installed)" in text
    assert "skipped CUDA" not in text  # a provider that cannot exist here is no news
    assert (
        "first divergent layer: dense <b> (ONNX tensor MatMul_0, max abs 5.00e-01, atol to pass 5.00e-01 > atol" in text
    )
    assert lines[-1].startswith("FAIL: 3 comparisons on CPU")
    assert "\033[" not in text
    coloured = render_text(handmade, color=True)
    assert "\033[31m" in coloured and "\033[32mPASS" in coloured


def test_text_of_a_real_report(real_report):
    text = render_text(real_report)
    assert not real_report.passed
    assert "first divergent layer: stage1_block0_conv3" in text
    assert re.search(r"^CPUExecutionProvider\s+predictions\s+fp32\s+\S+", text, re.M)
    assert re.search(r"^CPUExecutionProvider\s+predictions\s+fp16-emulated\s+", text, re.M)
    assert "float16 tolerances" in text


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    lowered = page.lower()
    for needle in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert needle not in lowered, needle
    assert "src=" not in lowered


def test_html_is_self_contained_with_charts_and_environment(handmade, real_report):
    page = render_html(handmade, title="My <model>")
    _assert_self_contained(page)
    assert "<title>My &lt;model&gt;</title>" in page
    assert page.count("<svg") == 2  # per-layer divergence + one histogram
    assert "atol to pass per Keras layer" in page and "atol 0.0001" in page
    assert "dense &lt;b&gt;" in page and "<b>dense <b></b>" not in page  # escaped
    assert "a note with &lt;html&gt; &amp; &#x27;quotes&#x27;" in page
    assert "Test CPU" in page and "3.11.9" in page and "Environment" in page
    assert "onnxruntime-gpu not installed" in page
    real = render_html(real_report)
    _assert_self_contained(real)
    # divergence chart + one histogram per precision (fp32, fp16, fp16-emulated)
    assert real.count("<svg") == 4
    assert "stage1_block0_conv3" in real and "◀ first" in real
    assert real_report.environment["onnxruntime"] in real


def test_json_round_trips(handmade, real_report, tmp_path):
    for report in (handmade, real_report):
        data = report.to_dict()
        text = json.dumps(data, allow_nan=False)  # no NaN/Infinity: strict JSON
        back = json.loads(text)
        assert back == data
        assert back["schema"] == SCHEMA and back["passed"] is False
        again = ParityReport.from_dict(back)
        assert again.to_dict() == data
    data = handmade.to_dict()
    boxes = next(row for row in data["results"] if row["output"] == "boxes")
    assert boxes["metrics"]["min_passing_atol"] is None and boxes["metrics"]["problem"].startswith("NaN")
    assert data["first_divergent_layer"] == "dense <b>" and len(data["worst"]) == 2
    assert data["histograms"][0]["counts"][-1] == 0 and sum(data["histograms"][0]["counts"]) == 100
    real = real_report.to_dict()
    assert real["fp16"] is True and {r["precision"] for r in real["fp16_results"]} == {"fp16", "fp16-emulated"}
    assert real["first_divergent_layer"] == "stage1_block0_conv3"
    with pytest.raises(InputError, match="not a parity report"):
        ParityReport.from_dict({"schema": "something/else"})


def test_write_report_json_and_html(handmade, tmp_path):
    json_path = write_report(handmade, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["schema"] == SCHEMA
    assert json_path == str(tmp_path / "report.json")
    write_report(handmade, tmp_path / "report.html")
    write_report(handmade, tmp_path / "report.htm")
    _assert_self_contained((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert sorted(os.listdir(tmp_path)) == ["report.htm", "report.html", "report.json"]  # no temporary leftovers


def test_write_report_rejects_unknown_suffix_and_bad_folders(handmade, tmp_path):
    for name in ("report.txt", "report", "report.pdf"):
        with pytest.raises(InputError, match=r"\.json or \.html"):
            write_report(handmade, tmp_path / name)
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError, match="does not exist"):
        write_report(handmade, tmp_path / "missing" / "report.json")


def test_write_report_is_atomic(handmade, tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("previous")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(InputError, match="No space left on device"):
        write_report(handmade, target)
    assert target.read_text() == "previous"  # the old report is intact
    assert os.listdir(tmp_path) == ["report.json"]  # and the temporary file is gone


def test_metrics_failure_serialises_to_null():
    data = Metrics.failure("ONNX Runtime failed").to_dict()
    assert data["max_abs"] is None and data["passed"] is False and data["problem"] == "ONNX Runtime failed"
    assert json.loads(json.dumps(data, allow_nan=False)) == data


# -- wording and layout (issue #15) ----------------------------------------------------------------------------------

# what ONNX Runtime 1.32 raises for a Reshape that cannot apply, cut at 300 characters by the parity engine
ORT_FAILURE = (
    "ONNX Runtime failed on CPUExecutionProvider: [ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while "
    "running Reshape node. Name:'bad_reshape' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/"
    "reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::"
    "TensorShapeV"
)


def _report(rows, **fields) -> ParityReport:
    base = {
        "passed": all(row.metrics.passed for row in rows),
        "atol": 1e-4,
        "rtol": 1e-3,
        "providers_run": ["CPUExecutionProvider"],
        "providers_skipped": {},
        "results": rows,
        "settings": {"batch_sizes": [1, 4], "distributions": ["normal"], "samples": 1, "seed": 0},
        "model": {"source": "model.h5", "onnx": "model.onnx"},
        "timings": {"load": 5.6, "total": 9.0},
    }
    return ParityReport(**{**base, **fields})


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("CPUExecutionProvider ")]


def test_table_says_where_in_words_and_atol_to_pass_only_when_it_helps():
    """ "worst at 4/normal" reads "batch 4, normal inputs"; "atol to pass" appears only when a row missed the tolerance."""
    passing = _report(
        [_row("CPUExecutionProvider", "y", 4, "normal", compare(np.ones(4), np.ones(4) + 1e-6, 1e-4, 1e-3))]
    )
    text = render_text(passing)
    assert "batch 4, normal inputs" in text and "4/normal" not in text
    assert "atol to pass" not in text.splitlines()[2]  # the header: no column of 1e-38s on a passing check
    assert "min atol" not in text and "1.13e-38" not in text
    missed = compare(np.ones(4), np.ones(4) + 5e-3, 1e-4, 1e-3)
    failing = _report([_row("CPUExecutionProvider", "y", 1, "uniform", missed)], passed=False)
    text = render_text(failing)
    header = text.splitlines()[2]
    assert "atol to pass" in header and "worst case" in header
    assert re.search(r"atol to pass: the smallest atol .* would pass", text)
    assert "batch 1, uniform inputs" in _table_rows(text)[0]


def test_failed_onnx_runtime_run_is_one_short_line_in_the_table():
    """A failing run shows a short reason in its cell; the full message is printed once, below the table."""
    report = _report([_row("CPUExecutionProvider", "y", 4, "normal", Metrics.failure(ORT_FAILURE))], passed=False)
    text = render_text(report)
    row = _table_rows(text)[0]
    assert len(row) < 140, row
    assert "FAIL: ORT run: Reshape node 'bad_reshape' failed" in row
    assert "onnxruntime_src" not in row and "[ONNXRuntimeError]" not in row
    assert text.count(ORT_FAILURE) == 1 and f"problem: CPU, y, fp32, batch 4, normal inputs: {ORT_FAILURE}" in text
    page = render_html(report)
    cell = re.search(r"<td title='[^']*'>(FAIL[^<]*)</td>", page)
    assert cell and len(cell.group(1)) < 80 and "ORT run: Reshape node" in cell.group(1)
    # a MatMul failure keeps ONNX Runtime's own words
    matmul = (
        "ONNX Runtime failed on CPUExecutionProvider: [ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned "
        "while running MatMul node. Name:'mm' Status Message: matmul_helper.h:59 Compute MatMul dimension mismatch"
    )
    report = _report([_row("CPUExecutionProvider", "y", 4, "normal", Metrics.failure(matmul))], passed=False)
    assert "FAIL: ORT run: MatMul node 'mm': Compute MatMul dimension mismatch" in _table_rows(render_text(report))[0]


def test_first_diverging_layer_is_said_once(handmade, real_report):
    handmade.notes.append("first diverging layer: dense <b> (on CPUExecutionProvider, normal inputs)")
    text = render_text(handmade)
    assert len(re.findall(r"first diverg", text)) == 1, text
    assert (
        "first divergent layer: dense <b> (ONNX tensor MatMul_0, max abs 5.00e-01, atol to pass 5.00e-01 > atol 0.0001)"
        ", found on CPU, normal inputs" in text
    )
    assert "note: a note with <html>" in text  # other notes stay
    page = render_html(handmade)
    assert len(re.findall(r"first diverg", page, re.I)) == 1
    real = render_text(real_report)
    assert len(re.findall(r"first diverg", real)) == 1, real


def test_html_header_model_names_conversion_and_timings(handmade):
    conversion = {
        "opset": 17,
        "target": "portable",
        "optimize": "speed",
        "nodes": 49,
        "op_histogram": {"Conv": 9, "MatMul": 7},
        "passes": ["fold_affine_into_matmul", "eliminate_dead_nodes"],
        "warnings": ["an Einsum was left"],
        "target_issues": [],
    }
    passing = _report([_row("CPUExecutionProvider", "y", 4, "normal", compare(np.ones(4), np.ones(4), 1e-4, 1e-3))])
    page = render_html(passing, conversion=conversion)
    assert "PASS PASS" not in re.sub(r"<[^>]+>", " ", page).replace("  ", " ")
    assert re.search(r"<span class='badge pass'>PASS</span> <span class='muted'>1 comparison", page)
    assert "<code>model.h5</code> → ONNX model <code>model.onnx</code>" in page
    assert "<h2>ONNX model</h2>" in page and "Conv × 9, MatMul × 7" in page and "fold_affine_into_matmul" in page
    assert "<td>17</td>" in page and "an Einsum was left" in page
    assert "<th>load</th><td>5.600 s</td>" in page
    assert "<h2>ONNX model</h2>" not in render_html(passing)


def test_json_report_carries_the_conversion(handmade, tmp_path):
    write_report(handmade, tmp_path / "r.json", conversion={"opset": 17, "nodes": 3})
    assert json.loads((tmp_path / "r.json").read_text())["conversion"] == {"opset": 17, "nodes": 3}


def test_svg_labels_do_not_collide(real_report):
    """The limit's label sits below the per-layer chart's title; histogram axis labels are ≥ 40 px apart."""
    page = render_html(real_report)
    chart = re.search(r"<svg[^>]*per-layer.*?</svg>", page).group(0)
    title_y = float(re.search(r"<text x='[\d.]+' y='([\d.]+)' font-size='12'[^>]*>max \|onnx", chart).group(1))
    atol_y = float(re.search(r"<text x='[\d.]+' y='([\d.]+)' fill='#9a6700'>\| allowed max ", chart).group(1))
    assert atol_y - title_y >= 14  # 12 px title + 11 px label: no overlap
    histogram = re.search(r"<svg[^>]*error histogram.*?</svg>", page).group(0)
    labels = [
        (float(x), text)
        for x, text in re.findall(
            r"<text x='([\d.]+)' y='[\d.]+' text-anchor='middle' fill='#5b6472'>([^<]+)</text>", histogram
        )
    ]
    assert [text for _, text in labels][:3] == ["1e-6", "1e-5", "1e-4"]  # error / allowed error
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(labels)]
    assert min(gaps) >= 40  # a label is at most 5 characters of a 10 px monospace font (~30 px)


def _screenshot(page: Path, png: Path, tmp_path: Path) -> None:
    """Render ``page`` in headless Chromium into ``png`` (1200×2400)."""
    command = [
        "/usr/bin/chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={png}",
        "--window-size=1200,2400",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"Chromium wrote no screenshot of {page}"


def test_report_renders_in_chromium(real_report, tmp_path):
    """Screenshots of a failing report (per-layer chart, histograms, a failed ORT run) for a person to look at.

    Saved as artifacts/report-fail.png and artifacts/report-pass.png (CI keeps artifacts/; elsewhere tmp_path).
    """
    require(Path("/usr/bin/chromium").is_file(), "Debian's chromium (/usr/bin/chromium)", "apt-get install -y chromium")
    root = Path(__file__).resolve().parents[2]
    out = root / "artifacts" if (root / "artifacts").is_dir() else tmp_path
    failed_run = _row("CUDAExecutionProvider", "predictions", 4, "normal", Metrics.failure(ORT_FAILURE))
    failing = ParityReport.from_dict(real_report.to_dict())
    failing.results.append(failed_run)
    failing.model["onnx"] = "demo_model.onnx"
    conversion = {"opset": 17, "target": "portable", "nodes": 49, "op_histogram": {"Conv": 9}, "passes": ["p"]}
    passing = _report([_row("CPUExecutionProvider", "y", 4, "normal", compare(np.ones(4), np.ones(4), 1e-4, 1e-3))])
    for name, report in (("report-fail", failing), ("report-pass", passing)):
        page = tmp_path / f"{name}.html"
        write_report(report, page, conversion=conversion)
        png = out / f"{name}.png"
        png.unlink(missing_ok=True)
        _screenshot(page, png, tmp_path)
        assert png.stat().st_size > 20_000  # a rendered page, not a blank one
