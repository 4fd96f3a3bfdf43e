"""The `lambda-export` command line (placeholder until the conversion core lands)."""

from __future__ import annotations

import click

from lambda_export import __version__


@click.group(invoke_without_command=True)
@click.version_option(__version__, prog_name="lambda-export")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Export a Keras model with lambda layers to ONNX and verify parity."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
