"""``lambda-export triton MODEL.onnx --repo DIR``: write a Triton Inference Server model repository.

The options map one to one onto :func:`lambda_export.triton.write_triton_repository`, which checks them against the
model and writes the files; this module parses ``--preferred-batch-size`` and prints what was written and the
``docker run`` command that serves it.
"""

from __future__ import annotations

from collections.abc import Iterable

import click

from lambda_export.cli.app import set_state
from lambda_export.cli.options import OutputOptions, output_options
from lambda_export.errors import EXIT_OK
from lambda_export.triton import DEFAULT_MAX_BATCH_SIZE, TRITON_IMAGE, write_triton_repository

__all__ = ["command", "parse_sizes"]


def parse_sizes(values: Iterable[str]) -> list[int]:
    """``--preferred-batch-size`` values (each a number or a comma/space separated list) → the sizes.

    Raises:
        click.BadParameter: an item that is not a positive integer.
    """
    sizes: list[int] = []
    for value in values:
        for token in value.replace(" ", ",").split(","):
            if not token:
                continue
            if not token.isdigit() or int(token) < 1:
                raise click.BadParameter(f"{token!r} is not a positive integer", param_hint="--preferred-batch-size")
            sizes.append(int(token))
    return sizes


@click.command(
    "triton",
    epilog="Exit codes: 0 written; 2 bad usage, unreadable model, options that contradict it, or an existing "
    "version without --force; 130 interrupted.",
)
@click.argument("onnx_file", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--repo", required=True, type=click.Path(file_okay=False), help="Model repository folder (created).")
@click.option("--name", help="Triton model name (default: MODEL without .onnx).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=0),
    help=f"Largest batch Triton forms (default {DEFAULT_MAX_BATCH_SIZE} for a dynamic-batch model; 0 = no batching, "
    "the only choice for a fixed-batch model).",
)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances.")
@click.option("--gpu", is_flag=True, help="Run the instances on GPU (KIND_GPU; default KIND_CPU).")
@click.option(
    "--dynamic-batching/--no-dynamic-batching",
    default=None,
    help="Let Triton merge requests into batches (default: on when the model batches).",
)
@click.option(
    "--preferred-batch-size",
    "preferred_batch_sizes",
    multiple=True,
    metavar="N",
    help="Preferred batch size of the dynamic batcher (repeatable, or a comma list: 4,8).",
)
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), help="How long the batcher may hold a request (µs).")
@click.option("--tensorrt", is_flag=True, help="Accelerate with ONNX Runtime's TensorRT provider (needs --gpu).")
@click.option(
    "--tensorrt-precision",
    type=click.Choice(["FP32", "FP16"], case_sensitive=False),
    metavar="FP32|FP16",
    help="TensorRT precision_mode (default FP32).",
)
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True, help="Model version.")
@click.option("--force", is_flag=True, help="Replace an existing model version (and a differing config.pbtxt).")
@output_options(
    report=False, json=None, quiet="Print nothing on success.", verbose="Print config.pbtxt; tracebacks on errors."
)
def command(
    onnx_file: str,
    repo: str,
    name: str | None,
    max_batch_size: int | None,
    instances: int,
    gpu: bool,
    dynamic_batching: bool | None,
    preferred_batch_sizes: tuple[str, ...],
    max_queue_delay_us: int | None,
    tensorrt: bool,
    tensorrt_precision: str | None,
    version: int,
    force: bool,
    output: OutputOptions,
) -> int:
    """Write a Triton Inference Server model repository (onnxruntime backend) for MODEL.onnx.

    \b
    REPO/NAME/config.pbtxt      inputs/outputs, max_batch_size, dynamic batching, instance groups, TensorRT
    REPO/NAME/VERSION/model.onnx
    """
    set_state(output)
    result = write_triton_repository(
        onnx_file,
        repo,
        name=name,
        max_batch_size=max_batch_size,
        instances=instances,
        gpu=gpu,
        dynamic_batching=dynamic_batching,
        preferred_batch_sizes=parse_sizes(preferred_batch_sizes),
        max_queue_delay_us=max_queue_delay_us,
        tensorrt=tensorrt,
        tensorrt_precision=tensorrt_precision.upper() if tensorrt_precision else None,
        version=version,
        force=force,
    )
    if output.quiet:
        return EXIT_OK
    if output.verbose:
        click.echo(result.text, nl=False)
    click.echo(f"wrote {result.config_path}")
    click.echo(f"wrote {result.model_path}")
    for path in result.replaced:
        click.echo(f"replaced {path}", err=True)
    gpus = "--gpus=all " if gpu else ""
    click.echo(
        f"serve: docker run --rm {gpus}-p8000:8000 -p8001:8001 -p8002:8002 -v {result.repo.resolve()}:/models "
        f"{TRITON_IMAGE} tritonserver --model-repository=/models"
    )
    return EXIT_OK
