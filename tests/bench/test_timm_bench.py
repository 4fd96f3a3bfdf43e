"""benchmarks/timm_bench.py's pure parts: the targets' verdicts, the summary, the agreement figures and the Markdown
rendered from a small results dict. Nothing is exported or timed here (no timing assertions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import timm_bench


def _ratio(median: float) -> dict[str, float]:
    return {"median": median, "p10": median * 0.9, "p90": median * 1.1, "n": 8}


def _entry(batch: int, versus_timm: float, versus_tf: float, versus_openvino: float | None) -> dict[str, Any]:
    ratios = {"ours/timm_onnx": _ratio(versus_timm), "ours/tf_best": _ratio(versus_tf)}
    if versus_openvino is not None:
        ratios["ours/openvino"] = _ratio(versus_openvino)
    latency = {
        "ours": {"median_ms": 100.0},
        "timm_onnx": {"median_ms": 100.0 / versus_timm},
        "tf_graph": {"median_ms": 100.0 / versus_tf},
        "tf_xla": {"median_ms": 300.0},
    }
    by_op = {
        "Conv": {"ours": 80.0, "timm_onnx": 85.0},
        "Pad": {"ours": 6.0, "timm_onnx": 0.0},
        "Transpose": {"ours": 4.0, "timm_onnx": 2.0},
        "MatMul": {"ours": 1.0, "timm_onnx": 2.0},
    }
    return {
        "batch": batch,
        "latency": latency,
        "tf_best": "tf_graph",
        "ratios": ratios,
        "verdicts": timm_bench.ratio_verdicts(ratios),
        "profile": {"batch": batch, "node_ms_per_run": {"ours": 91.0, "timm_onnx": 89.0}, "by_op_type_ms": by_op},
    }


def _results() -> dict[str, Any]:
    network = {
        "name": "lambda_resnet26t",
        "torch": {"parameters": 10_958_272},
        "flops": {"gflop_per_image": 6.007},
        "files": {"ours": {"nodes": 151, "file_mb": 43.82}, "timm_onnx": {"nodes": 325, "file_mb": 43.86}},
        "export": {"convert_s": 6.6, "passes": ["fold_affine_into_conv"]},
        "agreement": {
            "ours_vs_timm_onnx": {"max_abs": 8.9e-8, "max_rel": 2.3e-7, "top1_agreement": 1.0},
            "ours_vs_pytorch": {"max_abs": 1.5e-7},
            "timm_onnx_vs_pytorch": {"max_abs": 1.3e-7},
            "keras_tf_vs_pytorch": {"max_abs": 1.5e-7},
            "logit_scale": 0.381,
        },
        "entries": [_entry(1, 0.75, 0.45, 1.1), _entry(8, 1.02, 0.7, None)],
    }
    failed = {"name": "lambda_resnet50ts", "error": "RuntimeError: the PyTorch export of lambda_resnet50ts failed"}
    return {
        "mode": "full",
        "created": "2026-12-07T19:00:00+00:00",
        "runtime_s": 700.0,
        "settings": {"threads": 2},
        "environment": {
            "cpu_model": "AMD EPYC",
            "cpu_id": {"family": 25, "model": 1},
            "cpu_flags": ["avx", "avx2", "fma", "sse4_2"],
            "threads": {"n": 2},
            "versions": {"torch": "2.14.1", "timm": "1.0.31", "openvino": "2026.4.1"},
        },
        "networks": [network, failed],
    }


def test_verdicts_judge_each_target_at_or_below_its_bound() -> None:
    verdicts = timm_bench.ratio_verdicts(
        {"ours/timm_onnx": _ratio(0.8), "ours/tf_best": _ratio(0.51), "timm_onnx/tf_best": _ratio(0.1)}
    )
    assert verdicts["ours/timm_onnx"] == {"target": 0.8, "value": 0.8, "met": True}  # at the bound: met
    assert verdicts["ours/tf_best"] == {"target": 0.5, "value": 0.51, "met": False}
    assert verdicts["ours/openvino"] == {"target": 1.25, "value": None, "met": None}  # not measured: no verdict
    assert set(verdicts) == set(timm_bench.TARGETS)


def test_summary_counts_the_measured_entries_only() -> None:
    summary = timm_bench.summarize(_results()["networks"])
    assert summary["ours/timm_onnx"] == {
        "target": 0.8,
        "met": ["lambda_resnet26t b=1"],
        "missed": ["lambda_resnet26t b=8"],
    }
    assert summary["ours/tf_best"]["missed"] == ["lambda_resnet26t b=8"]
    assert summary["ours/openvino"] == {"target": 1.25, "met": ["lambda_resnet26t b=1"], "missed": []}


def test_agreement_figures() -> None:
    reference = np.array([[1.0, -4.0, 2.0], [0.5, 0.2, 0.1]], np.float32)
    candidate = reference + np.array([[0.0, 0.004, 0.0], [0.0, 0.0, 0.002]], np.float32)
    figures = timm_bench.agreement(candidate, reference)
    assert figures["max_abs"] == pytest.approx(0.004, rel=1e-4)
    assert figures["max_rel"] == pytest.approx(0.001, rel=1e-4)  # over the largest |logit|, 4
    assert figures["top1_agreement"] == 1.0
    assert timm_bench.agreement(candidate[:, ::-1], reference)["top1_agreement"] == 0.0


def test_markdown_renders_the_table_targets_agreement_and_profile() -> None:
    text = timm_bench.markdown(_results())
    lines = text.splitlines()
    assert lines[0].startswith("Generated 2026-12-07T19:00:00+00:00 by `python benchmarks/timm_bench.py` (full mode")
    assert "Machine: AMD EPYC (family 25 model 1; flags avx avx2 fma; no AVX-512, VNNI or AMX)" in text
    assert "PyTorch 2.14.1, timm 1.0.31, OpenVINO 2026.4.1" in text
    header = next(line for line in lines if line.startswith("| network | batch | ours (ORT) ms"))
    rows = [line for line in lines if line.startswith("| lambda_resnet26t | ") and "**" in line]
    assert len(rows) == 2 and all(row.count("|") == header.count("|") for row in rows)
    assert rows[0].startswith(
        "| lambda_resnet26t | 1 | 100.0 | 133.3 | 222.2 | 300.0 | – | **0.750** (0.68–0.83) | ✅ "
    )
    assert "| **0.450**ᴳ (0.41–0.50) | ✅ | **1.100** (0.99–1.21) | ✅ |" in rows[0]
    assert rows[1].endswith("| **1.020** (0.92–1.12) | ❌ | **0.700**ᴳ (0.63–0.77) | ❌ | – | – |")
    error_row = next(line for line in lines if line.startswith("| lambda_resnet50ts |"))
    assert "error: RuntimeError" in error_row and error_row.count("|") == header.count("|")
    assert (
        "- Target ours / timm's ONNX file (both on ONNX Runtime) ≤ 0.8: met on 1 of 2; missed: lambda_resnet26t b=8."
        in lines
    )
    assert "- Target ours on ONNX Runtime / ours on OpenVINO ≤ 1.25: met on 1 of 1." in lines
    assert "| lambda_resnet26t | 8.90e-08 | 2.30e-07 | 100% | 1.50e-07 | 1.30e-07 | 1.50e-07 | 0.381 |" in lines
    # the profile: totals, Conv, the rest, and the op types where ours spends more (largest excess first)
    assert (
        "| lambda_resnet26t | 1 | 91.0 / 89.0 | 80.0 / 85.0 | 11.0 / 4.0 | Pad 6.0 / 0.0, Transpose 4.0 / 2.0, MatMul* 1.0 / 2.0 |"
        in lines
    )
    assert "| lambda_resnet26t | 11.0 M | 6.01 | 151, 43.82 | 325, 43.86 | 6.6 | fold_affine_into_conv |" in lines


def test_timm_md_keeps_the_text_around_its_markers(tmp_path: Path) -> None:
    path = tmp_path / "TIMM.md"
    path.write_text(f"# Title\n\nintro\n\n{timm_bench.BEGIN}\nold\n{timm_bench.END}\n\n## Findings\n\nkept\n")
    timm_bench.write_timm_md(_results(), path)
    text = path.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith("## Findings\n\nkept\n")
    assert "\nold\n" not in text and "| lambda_resnet26t | 1 | 100.0 |" in text


def test_cpu_time_per_run_share_and_ratios() -> None:
    samples = {  # the timed calls only (the workers' warm-up is not in them)
        "ours": [0.10, 0.10, 0.12],
        "timm_onnx": [0.125, 0.125, 0.125],
        "tf_graph": [0.2, 0.2, 0.2],
        "tf_xla": [0.16, 0.16, 0.16],
    }
    latency = {name: {"median_ms": 200.0} for name in samples}
    cpu = timm_bench.cpu_time(samples, latency)
    assert cpu["per_run"]["ours"] == {"median_ms": 100.0, "share_of_wall": 0.5}
    assert cpu["tf_best"] == "tf_xla"  # the TF runner with the least CPU time
    assert cpu["ratios"] == {"ours/timm_onnx": 0.8, "ours/tf_best": 0.625}
    assert timm_bench.cpu_time({"ours": [0.1]}, {})["ratios"] == {
        "ours/timm_onnx": None,
        "ours/tf_best": None,
    }


def test_cpu_table_and_the_shared_machine_warning() -> None:
    results = _results()
    assert timm_bench.cpu_table(results) == [] and timm_bench.load_lines(results) == []  # neither recorded
    entry = results["networks"][0]["entries"][0]
    entry["cpu"] = {
        "per_run": {
            "ours": {"median_ms": 134.0, "share_of_wall": 0.28},
            "tf_graph": {"median_ms": 189.0, "share_of_wall": 0.66},
        },
        "tf_best": "tf_graph",
        "ratios": {"ours/timm_onnx": None, "ours/tf_best": 0.709},
    }
    table = timm_bench.cpu_table(results)
    assert table[2] == "| lambda_resnet26t | 1 | 134.0 (0.28) | – | 189.0 (0.66) | – | – | – | 0.709ᴳ |"
    results["environment"].update(usable_cores=2, load_average_start=[1.5, 1.0, 1.0], load_average_end=[1.9, 1.0, 1.0])
    assert timm_bench.load_lines(results) == []  # a quiet machine: no warning
    entry["load_average"] = [9.9, 9.5, 8.0]
    (warning, _) = timm_bench.load_lines(results)
    assert warning.startswith("**Shared machine**: the 1-minute load average ranged 1.5–9.9 on 2 usable cores")
    assert "CPU time per run" in timm_bench.markdown(results) and "**Shared machine**" in timm_bench.markdown(results)


def test_roofline_rates_shares_and_what_each_target_needs() -> None:
    results = _results()
    assert timm_bench.roofline_table(results) == []  # no ceiling measured: no table
    results["ceiling"] = {"op": "Conv 3×3", "median_gflops": 150.0, "best_gflops": 160.0}
    lines = timm_bench.roofline_table(results)
    assert len(lines) == 2 + 2  # header, rule, one row per entry of the network that ran
    # batch 1: 6.007 GFLOP; ours 100 ms → 60 GFLOP/s (40 % of 150); timm 133.3 ms; TF graph 222.2 ms
    # ≤ 0.8 × timm needs 6.007 / (0.8 · 0.1333) = 56.3 GFLOP/s; ≤ 0.5 × TF best needs 6.007 / (0.5 · 0.2222) = 54.1
    assert lines[2] == "| lambda_resnet26t | 1 | 60 / 45 / 27 / – | 40% | 56 (38%) | 54 (36%) |"
    assert lines[3].startswith("| lambda_resnet26t | 8 | 481 / 490 / 336 / – | 320% |")
    assert "Roofline" in timm_bench.markdown(results)
