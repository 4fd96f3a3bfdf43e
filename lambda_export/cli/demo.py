"""``lambda-export demo``: build the tiny LambdaResNet, train it briefly on generated data, save it as .h5 and run
``export`` on it with the default options (what ``make demo`` runs)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from lambda_export.cli.app import progress, set_state, tensorflow_progress, timed
from lambda_export.cli.export import export
from lambda_export.cli.options import ConvertOptions, LoadOptions, OutputOptions, ParityOptions, output_options

__all__ = ["command"]


@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="demo_output",
    show_default=True,
    help="Folder for the sample model, its ONNX export and the report.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=None,
    help="Training steps on generated data  [default: 40, lambda_layers.models.DEMO_TRAIN_STEPS].",
)
@output_options(
    report=False,
    json="Machine-readable verdict on stdout.",
    quiet="Only the final verdict line.",
    verbose="Progress and tracebacks.",
)
def command(out_dir: str, steps: int | None, output: OutputOptions) -> int:
    """Build a small LambdaResNet, train it briefly on generated data, save .h5, export it and print the report."""
    set_state(output)
    from lambda_export.loading import import_keras, load_model

    tensorflow_progress()
    import_keras()  # first, so that TensorFlow's start-up lines stay off stderr (lambda_layers imports Keras)
    from lambda_layers import models

    steps = models.DEMO_TRAIN_STEPS if steps is None else steps
    chatty = not (output.quiet or output.json)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    progress("building the tiny LambdaResNet")
    model = models.build_demo_model(seed=0)
    if chatty:
        model.summary(print_fn=lambda line, *_, **__: click.echo(line, err=True))
    with timed("train", f"training {steps} steps on generated images" if steps else None):
        history = models.train_demo_model(model, steps=steps, seed=0) if steps else {}
    if history and chatty:
        losses = history.get("loss", [])
        click.echo(
            f"trained {steps} steps: loss {losses[0]:.3f} → {losses[-1]:.3f}, "
            f"held-out accuracy {history.get('val_accuracy', float('nan')):.3f}",
            err=True,
        )
    h5 = folder / "demo_model.h5"
    tmp = folder / ".demo_model.tmp.h5"
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)  # .h5 is asked for by design; no "legacy format" warning
    model.save(tmp)
    os.replace(tmp, h5)
    with timed("load"):
        loaded = load_model(str(h5))
    onnx_path = folder / "demo_model.onnx"
    if chatty:
        click.echo(f"saved {h5}; exporting as: lambda-export {h5} -o {onnx_path} --force", err=True)
    return export(
        str(h5),
        ConvertOptions(output=str(onnx_path), force=True),
        ParityOptions(),
        LoadOptions(),
        OutputOptions(report=str(folder / "report.html"), json=output.json, quiet=output.quiet, verbose=output.verbose),
        loaded=loaded,
    )
