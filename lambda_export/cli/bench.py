"""``lambda-export bench MODEL``: ONNX Runtime vs TensorFlow on one user model (the click command :data:`command`).

The measuring is :mod:`lambda_export.bench`; this module parses the options, loads the model and prints the table.
"""

from __future__ import annotations

from pathlib import Path

import click

from lambda_export.bench import RATIO_TARGET_MODEL, BenchSettings, Entry, configure_tensorflow, report, run_suite
from lambda_export.cli.options import parse_shape
from lambda_export.errors import InputError

__all__ = ["command"]


def _parse_batches(text: str) -> list[int]:
    """``--batch-sizes`` text (``1,8``) → the sizes (click.BadParameter when malformed)."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: expected e.g. 1,8", param_hint="--batch-sizes") from exc
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter(f"{text!r}: expected positive integers", param_hint="--batch-sizes")
    return values


@click.command("bench")
@click.argument("model", type=click.Path())
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Threads N for both sides.")
@click.option("--batch-sizes", default="1", show_default=True, help="Batch sizes to measure, e.g. 1,8.")
@click.option(
    "--budget", type=float, default=5.0, show_default=True, help="Seconds of interleaved timing per batch size."
)
@click.option(
    "--out",
    "out_json",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON file to write (default: MODEL.bench.json); the chart goes next to it (.png).",
)
@click.option("--memory/--no-memory", default=True, show_default=True, help="Peak RSS per side (subprocesses).")
@click.option("--xla/--no-xla", default=True, show_default=True, help="Also time TF with jit_compile=True.")
@click.option("--anchor/--no-anchor", default=True, show_default=True, help="Also time the plain tf2onnx export.")
@click.option("--profile/--no-profile", default=True, show_default=True, help="ORT profiler: the slowest nodes.")
@click.option(
    "--int8/--no-int8",
    default=True,
    show_default=True,
    help="Also time the int8 model --quantize int8 makes (generated calibration inputs) and show its file size.",
)
@click.option("--export-cost/--no-export-cost", default=False, show_default=True, help="Time `lambda-export MODEL`.")
@click.option("--gpu/--no-gpu", default=True, show_default=True, help="ORT CUDA vs TF GPU table when a GPU is there.")
@click.option("--opset", type=click.IntRange(13, 18), default=17, show_default=True)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Shape for an input with unknown dims, e.g. images=?,64,64,3 (repeatable).",
)
@click.option("--import", "imports", multiple=True, metavar="MODULE_OR_FILE", help="Code registering custom layers.")
@click.option("--trust-code", is_flag=True, help="Allow Lambda layers (loading them executes code from the file).")
@click.option("-q", "--quiet", is_flag=True, help="Only the table.")
def command(
    model: str,
    threads: int,
    batch_sizes: str,
    budget: float,
    out_json: str | None,
    memory: bool,
    xla: bool,
    anchor: bool,
    profile: bool,
    int8: bool,
    export_cost: bool,
    gpu: bool,
    opset: int,
    input_shapes: tuple[str, ...],
    imports: tuple[str, ...],
    trust_code: bool,
    quiet: bool,
) -> int:
    """ONNX Runtime vs TensorFlow on MODEL: latency (graph, XLA, ORT), GFLOP/s, peak memory, file size.

    Same inputs and N threads on both sides, interleaved rounds, paired ratios; writes JSON + PNG and prints a
    Markdown table. See lambda_export/bench/harness.py for the method and the recommended ORT session options.
    """
    batches = _parse_batches(batch_sizes)
    if not Path(model).exists():
        raise InputError(f"{model}: no such file or folder")
    settings = BenchSettings(
        threads=threads,
        budget_s=budget,
        memory=memory,
        xla=xla,
        anchor=anchor,
        profile=profile,
        int8=int8,
        opset=opset,
        verbose=not quiet,
    )
    from lambda_export.loading import import_keras, load_model

    import_keras()  # TensorFlow's start-up lines kept off stderr (its thread pools can still be set after this)
    configure_tensorflow(threads)  # before the model is loaded: TF's thread pools are fixed at first use
    loaded = load_model(model, trust_code=trust_code, imports=imports)
    shapes = dict(parse_shape(text) for text in input_shapes) or None
    spec = {
        "kind": "path",
        "path": str(Path(model).resolve()),
        "imports": list(imports),
        "trust_code": trust_code,
        "input_shapes": shapes,
    }
    base = Path(model).name.rstrip("/")
    entries = [Entry(f"{base} b={b}", "model", spec, b, ratio_target=RATIO_TARGET_MODEL) for b in batches]
    out = Path(out_json) if out_json else Path(str(Path(model)).rstrip("/") + ".bench.json")
    results = run_suite(
        entries,
        settings,
        mode="model",
        out_json=out,
        export_cost_model=str(Path(model).resolve()) if export_cost else None,
        gpu=gpu,
        keras_models={entry.name: loaded.model for entry in entries},
        title=f"lambda-export bench {base}",
    )
    text, chart = report(results, out)
    click.echo(text)
    if not quiet:
        click.echo(f"wrote {out}" + (f" and {chart}" if chart else ""), err=True)
    return 0
