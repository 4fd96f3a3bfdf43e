"""The benchmark's rendering (issue 27 item 6): the CPU and its SIMD flags in every machine line, the ORT/OpenVINO
≤ 1.25 target judged beside ORT/TF best (own column, own summary line), results written before either was recorded.

Pure functions on small results dicts: nothing is timed or converted here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from lambda_export.bench.render import (
    RATIO_TARGET_OPENVINO,
    cpu_flags_text,
    cpu_text,
    environment_text,
    markdown_table,
    openvino_target,
    summarize,
    target_lines,
)

EPYC_FLAGS = ["avx", "avx2", "fma", "sse4_1", "sse4_2", "sse4a"]
SAPPHIRE_RAPIDS_FLAGS = [
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx",
    "avx2",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx512bw",
    "avx512cd",
    "avx512f",
    "avx512vl",
    "avx_vnni",
    "fma",
    "sse4_2",
]


def _environment(flags: list[str] | None = EPYC_FLAGS) -> dict[str, Any]:
    environment: dict[str, Any] = {
        "cpu_model": "AMD EPYC",
        "cpu_id": {"vendor": "AuthenticAMD", "family": 25, "model": 1, "stepping": 1},
        "usable_cores": 2,
        "memory_gb": 23.5,
        "os": "Linux",
        "threads": {"n": 2, "tf_intra_op": 2, "tf_inter_op": 2, "ort_intra_op": 2},
        "versions": {"tensorflow": "2.21.0", "onnxruntime": "1.32.0"},
    }
    if flags is not None:
        environment["cpu_flags"] = flags
    return environment


def _record(name: str, kind: str, versus_tf: float, versus_openvino: float | None, target: float) -> dict[str, Any]:
    """An entry as the harness wrote it before the OpenVINO target was recorded under ``target``."""
    ratios: dict[str, Any] = {"ort_portable/tf_best": {"median": versus_tf, "p10": versus_tf, "p90": versus_tf}}
    if versus_openvino is not None:
        ratios["ort_portable/openvino"] = {"median": versus_openvino, "p10": 1.0, "p90": 1.4, "n": 9}
    return {
        "name": name,
        "kind": kind,
        "status": "ok",
        "latency": {"tf_graph": {"median_ms": 2.0, "min_ms": 1.9}, "ort_portable": {"median_ms": 1.0, "min_ms": 0.9}},
        "ratios": ratios,
        "tf_best": "tf_graph",
        "target": {"ratio": target, "value": versus_tf, "met": versus_tf <= target},
        "flops": {"total": 1e6},
        "errors": {},
    }


def _results(mode: str = "full", flags: list[str] | None = EPYC_FLAGS) -> dict[str, Any]:
    return {
        "mode": mode,
        "created": "2026-12-02T11:01:29+00:00",
        "environment": _environment(flags),
        "entries": [
            _record("layer a b=1", "layer", 0.3, 0.9, 0.7),
            _record("layer a b=8", "layer", 0.8, 1.4, 0.7),
            _record("model b=1", "model", 0.4, None, 0.5),
            {"name": "big layer", "kind": "layer", "status": "skipped", "reason": "over the memory budget"},
        ],
        "summary": {},
    }


def test_cpu_flags_text_shows_the_simd_flags_and_what_is_missing() -> None:
    assert cpu_flags_text(EPYC_FLAGS) == "flags avx avx2 fma; no AVX-512, VNNI or AMX"
    text = cpu_flags_text(SAPPHIRE_RAPIDS_FLAGS)
    assert text.startswith("flags avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 avx_vnni")
    assert text.endswith("amx_tile amx_bf16 amx_int8") and "no " not in text
    assert "avx512cd" not in text and "sse4" not in text  # the JSON keeps them; the line shows what picks kernels
    assert cpu_flags_text(["avx", "avx2", "fma", "avx_vnni"]) == "flags avx avx2 fma avx_vnni; no AVX-512 or AMX"
    assert cpu_flags_text([]) == "no AVX/FMA flags; no AVX-512, VNNI or AMX"  # e.g. an ARM machine
    assert cpu_flags_text(None) == "CPU flags not recorded"


def test_every_machine_line_names_the_cpu_and_its_flags() -> None:
    environment = _environment()
    assert cpu_text(environment) == "AMD EPYC (family 25 model 1; flags avx avx2 fma; no AVX-512, VNNI or AMX)"
    line = environment_text(_results())
    assert line.startswith("AMD EPYC (family 25 model 1; flags avx avx2 fma; no AVX-512, VNNI or AMX), 2 usable cores")
    # results written before the family and flags were recorded
    del environment["cpu_id"], environment["cpu_flags"]
    assert cpu_text(environment) == "AMD EPYC (CPU flags not recorded)"


def test_openvino_target_is_judged_from_the_ratio_or_the_recorded_target() -> None:
    results = _results()
    first, second, third = results["entries"][:3]
    assert openvino_target(first) == {"ratio": RATIO_TARGET_OPENVINO, "value": 0.9, "met": True}
    assert openvino_target(second)["met"] is False
    assert openvino_target(third) == {"ratio": RATIO_TARGET_OPENVINO, "value": None, "met": None}
    # the harness records it under target; that verdict is the one read
    recorded = copy.deepcopy(first)
    recorded["target"].update(openvino_ratio=1.25, openvino_value=1.3, openvino_met=False)
    assert openvino_target(recorded) == {"ratio": 1.25, "value": 1.3, "met": False}


def test_summary_judges_both_targets_apart() -> None:
    summary = summarize(_results())
    assert [item["name"] for item in summary["missed"]] == ["layer a b=8"]
    assert summary["ratio_met"] == [2, 3]
    assert summary["openvino"]["target"] == RATIO_TARGET_OPENVINO
    assert [item["name"] for item in summary["openvino"]["met"]] == ["layer a b=1"]
    assert summary["openvino"]["missed"] == [{"name": "layer a b=8", "ratio": 1.4}]
    assert summary["openvino"]["not_measured"] == ["model b=1"]
    assert summary["skipped"] == [{"name": "big layer", "reason": "over the memory budget"}]
    lines = target_lines(_results())
    assert lines[0] == (
        "Target ORT/TF best (≤ 0.7 for layers, ≤ 0.5 for models): met on 2 of 3 measured configurations; "
        "missed: layer a b=8."
    )
    assert lines[1] == (
        "Target ORT/OpenVINO ≤ 1.25 (the same portable file on both runtimes): met on 1 of 2 measured "
        "configurations; missed: layer a b=8 (1.400); 1 without an OpenVINO figure."
    )


def test_latency_table_has_an_openvino_met_column_and_the_summary_lines() -> None:
    text = markdown_table(_results())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| configuration | TF graph"))
    assert header.endswith("| target | met | ORT/OpenVINO ≤ 1.25 |")
    latency_rows = [line for line in lines if line.startswith("| ") and "**" in line]  # the ratio cell is bold
    rows = {line.split(" | ")[0][2:]: line for line in latency_rows}
    assert rows["layer a b=1"].endswith("| ≤ 0.7 | ✅ | ✅ |")
    assert rows["layer a b=8"].endswith("| ≤ 0.7 | ❌ | ❌ |")
    assert rows["model b=1"].endswith("| ≤ 0.5 | ✅ | – |")
    assert all(line.count("|") == header.count("|") for line in rows.values())
    assert any(line.startswith("- Target ORT/OpenVINO ≤ 1.25") for line in lines)
    assert any(line.startswith("- Target ORT/TF best") for line in lines)
    # a user's model: ratios only, no verdict on either target
    text = markdown_table(_results(mode="model"))
    assert "Target " not in text and "✅" not in text and "❌" not in text


def test_results_md_and_readme_summary_show_flags_and_both_verdicts(tmp_path: Path) -> None:
    from benchmarks.publish import write_readme_summary, write_results_md

    results = _results()
    path = tmp_path / "RESULTS.md"
    write_results_md(results, path, chart_name=None)
    text = path.read_text()
    assert "Machine: AMD EPYC (family 25 model 1; flags avx avx2 fma; no AVX-512, VNNI or AMX)" in text
    assert "ORT/OpenVINO ≤ 1.25 |" in text and "Target ORT/OpenVINO ≤ 1.25" in text
    readme = tmp_path / "README.md"
    write_readme_summary(results, readme, None, details="benchmarks/RESULTS.md")
    text = readme.read_text()
    assert "flags avx avx2 fma" in text
    assert "- Target ORT/TF best (≤ 0.7 for layers, ≤ 0.5 for models): met on 2 of 3" in text
    assert "- Target ORT/OpenVINO ≤ 1.25" in text
    assert "| layer a b=8 | 0.800 | 0.800 | – | 1.400 | ≤ 0.7 | ❌ | ❌ |" in text
    assert "1 configuration(s) skipped" in text


def test_quantize_results_record_the_machine() -> None:
    from benchmarks.quantize import _markdown, results_document

    environment = _environment()
    document = results_document([], environment)
    assert document["environment"]["cpu_model"] == "AMD EPYC" and document["environment"]["cpu_flags"] == EPYC_FLAGS
    assert document["models"] == [] and document["targets"]["speedup"] == 1.8
    assert _markdown([], environment).startswith("Machine: AMD EPYC (family 25 model 1; flags avx avx2 fma;")
