"""Benchmark suite: ONNX Runtime (portable export and plain tf2onnx) vs TensorFlow (graph mode and XLA) on the CPU.

    python benchmarks/run.py             # full grid + LambdaResNets (`make bench`); writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick     # one small configuration per layer kind + the demo model, < 2 min on 2 cores
    python benchmarks/run.py --smoke     # one tiny layer (what the tests run)

Writes OUT/bench.json (every figure and the environment), OUT/bench.png (latency ratio chart) and prints a Markdown
table. The grid and the modes are ``benchmarks/suite.py``; RESULTS.md and the README summary are written by
``benchmarks/publish.py``. The method (interleaved rounds, paired ratios, FLOP counts, memory in fresh subprocesses)
is described in ``lambda_export/bench/harness.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.publish import write_readme_summary, write_results_md  # noqa: E402
from benchmarks.suite import default_suite, settings_for_mode  # noqa: E402
from lambda_export.bench import report, run_suite  # noqa: E402
from lambda_export.io import write_text_atomic  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--quick", "mode", flag_value="quick", help="Small subset, < 2 minutes on 2 cores.")
@click.option("--smoke", "mode", flag_value="smoke", help="One tiny layer (for the tests).")
@click.option("--full", "mode", flag_value="full", default=True, help="Everything (default).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Threads N on both sides.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=str(HERE / "out"),
    show_default=True,
    help="Folder for bench.json / bench.png / bench.md.",
)
@click.option("--only", multiple=True, metavar="TEXT", help="Only entries whose name contains TEXT (repeatable).")
@click.option("--budget", type=float, default=None, help="Seconds of interleaved timing per entry (mode default).")
@click.option("--memory-budget-gb", type=float, default=3.0, show_default=True, help="Skip larger position embeddings.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Peak RSS per side (subprocesses).")
@click.option("--profile/--no-profile", default=True, show_default=True, help="ORT profiler top nodes per entry.")
@click.option("--export-cost/--no-export-cost", default=None, help="Time `lambda-export` on the demo (not in smoke).")
@click.option("--gpu/--no-gpu", default=True, show_default=True, help="GPU table when CUDA is available.")
@click.option(
    "--results/--no-results",
    "write_results",
    default=None,
    help="Update benchmarks/RESULTS.md and results.png/.json (default: only in full mode without --only).",
)
@click.option(
    "--render",
    "render_json",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Measure nothing: re-render the table/chart (and RESULTS.md with --results) from an existing bench.json.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def main(
    mode: str,
    threads: int,
    out_dir: str,
    only: tuple[str, ...],
    budget: float | None,
    memory_budget_gb: float,
    memory: bool,
    profile: bool,
    export_cost: bool | None,
    gpu: bool,
    write_results: bool | None,
    render_json: str | None,
    quiet: bool,
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if render_json:
        import json

        results = json.loads(Path(render_json).read_text())
        out_json = out / "bench.json"
        if Path(render_json).resolve() != out_json.resolve():
            write_text_atomic(out_json, Path(render_json).read_text(), what="the benchmark results")
        # re-rendering the published results without matplotlib: their chart (drawn from the same figures) stays
        published = Path(render_json).resolve() == (HERE / "results.json").resolve() and (HERE / "results.png").exists()
        _publish(results, out_json, bool(write_results), keep_chart=published)
        return
    settings = settings_for_mode(mode, threads)
    settings.memory_budget_bytes = int(memory_budget_gb * 1e9)
    settings.memory = memory
    settings.profile = profile
    settings.verbose = not quiet
    if budget is not None:
        settings.budget_s = budget
    entries = default_suite(mode, settings.memory_budget_bytes)
    if only:
        entries = [e for e in entries if any(text in e.name for text in only)]
        if not entries:
            raise click.UsageError(f"--only {' '.join(only)}: no entry matches")
    if export_cost is None:
        export_cost = mode != "smoke" and not only
    out_json = out / "bench.json"
    results = run_suite(
        entries,
        settings,
        mode=mode,
        out_json=out_json,
        export_cost_model=export_cost,
        gpu=gpu,
        title=f"lambda-export benchmark ({mode})",
    )
    if write_results is None:
        write_results = mode == "full" and not only
    _publish(results, out_json, write_results)


def _publish(results: dict, out_json: Path, write_results: bool, keep_chart: bool = False) -> None:
    """Print the Markdown table, write bench.md and the chart next to ``out_json``; update RESULTS.md if asked
    (``keep_chart``: where no chart could be drawn, RESULTS.md and the README keep showing results.png, which was
    drawn from the same results)."""
    text, chart = report(results, out_json)
    write_text_atomic(out_json.with_suffix(".md"), text, what="the Markdown table")
    click.echo(text)
    if write_results:
        import shutil

        shutil.copyfile(out_json, HERE / "results.json")
        chart_name = "results.png" if keep_chart else None
        if chart:
            shutil.copyfile(chart, HERE / "results.png")
            chart_name = "results.png"
        write_results_md(results, HERE / "RESULTS.md", chart_name)
        readme = HERE.parent / "README.md"
        write_readme_summary(
            results, readme, chart_name and f"benchmarks/{chart_name}", details="benchmarks/RESULTS.md"
        )
        click.echo(f"updated {HERE / 'RESULTS.md'} and the summary in {readme}", err=True)
    click.echo(f"wrote {out_json}" + (f" and {chart}" if chart else "") + f" in {results.get('runtime_s')} s", err=True)


if __name__ == "__main__":
    main()
