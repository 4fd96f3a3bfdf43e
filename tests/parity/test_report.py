"""Text, HTML and JSON parity reports."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import onnx
import pytest
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
            LayerDivergence("dense <b>", "MatMul_0", 0.5, False, "Dense"),
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
    assert "3.00e-05" in logits and "4/uniform" in logits and logits.rstrip().endswith("PASS")
    boxes = next(line for line in rows if "boxes" in line)
    assert "FAIL: NaN in ONNX output (1 of 4 values)" in boxes
    assert "skipped CUDA: onnxruntime-gpu not installed" in text
    assert "first divergent layer: dense <b> (ONNX tensor MatMul_0, max abs 5.00e-01)" in text
    assert lines[-1].startswith("FAIL: 3 comparison(s) on CPU")
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
    assert "max |onnx − tf| per Keras layer" in page and "atol 0.0001" in page
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
