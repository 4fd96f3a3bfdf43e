"""``lambda-export inspect ONNX``: inputs/outputs, op histogram, opset, producer, parameters, target checks, metadata.

Printed as a few aligned lines, or with ``--json`` as one document (schema ``lambda-export/inspect/v1``).
"""

from __future__ import annotations

import collections
import json
from typing import Any

import click

from lambda_export.cli.app import set_state
from lambda_export.cli.options import OutputOptions, output_options
from lambda_export.errors import EXIT_OK

__all__ = ["INSPECT_SCHEMA", "command", "describe_model", "opset_text"]

INSPECT_SCHEMA = "lambda-export/inspect/v1"


@click.command("inspect")
@click.argument("onnx_file", metavar="ONNX", type=click.Path())
@output_options(report=False, json="Machine-readable output.", quiet=None, verbose="Show tracebacks on errors.")
def command(onnx_file: str, output: OutputOptions) -> int:
    """Describe an ONNX file: inputs/outputs, op histogram, opset, target checks, metadata."""
    set_state(output)
    from lambda_export.io import load_onnx

    info = describe_model(load_onnx(onnx_file), onnx_file)
    if output.json:
        click.echo(json.dumps(info, indent=2))
        return EXIT_OK
    click.echo(
        f"{onnx_file}: {info['nodes']} nodes, {info['parameters']:,} parameters, {opset_text(info['opset'])}, "
        f"{info['producer']}"
    )
    for kind in ("inputs", "outputs"):
        for item in info[kind]:
            click.echo(f"  {kind[:-1]:6} {item['name']:24} {item['dtype']:8} {item['shape']}")
    click.echo("  ops    " + ", ".join(f"{op}×{count}" for op, count in info["op_histogram"].items()))
    for name, offenses in info["targets"].items():
        status = "ok" if not offenses else f"{len(offenses)} problem(s): " + "; ".join(offenses[:3])
        click.echo(f"  target {name:9} {status}")
    for key, value in info["metadata"].items():
        click.echo(f"  meta   {key} = {value}")
    return EXIT_OK


def opset_text(opsets: dict[str, int]) -> str:
    """The opsets of a model (domain → version) for people: ``opset 17``, other domains after it by name
    (``opset 17, ai.onnx.ml 3``)."""
    main = opsets.get("ai.onnx")
    others = [f"{domain} {version}" for domain, version in opsets.items() if domain != "ai.onnx"]
    return ", ".join([f"opset {main}" if main is not None else "no ai.onnx opset", *others])


def describe_model(model: Any, path: str) -> dict[str, Any]:
    """What ``inspect --json`` prints for the ``onnx.ModelProto`` read from ``path``."""
    import numpy as np

    from lambda_export.targets import TARGETS, check_target

    histogram = dict(sorted(collections.Counter(node.op_type for node in model.graph.node).items()))
    return {
        "schema": INSPECT_SCHEMA,
        "file": path,
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": _tensors(model, model.graph.input),
        "outputs": _tensors(model, model.graph.output),
        "nodes": len(model.graph.node),
        "op_histogram": histogram,
        "parameters": int(sum(int(np.prod(init.dims)) for init in model.graph.initializer)),
        "targets": {name: [str(o) for o in check_target(model, name)] for name in TARGETS},
        "metadata": {prop.key: prop.value for prop in model.metadata_props},
    }


def _tensors(model: Any, values: Any) -> list[dict[str, Any]]:
    """Name, shape (a symbolic dim by its name, None if unnamed) and dtype of graph inputs/outputs, initializers left
    out."""
    import onnx

    out = []
    initializers = {init.name for init in model.graph.initializer}
    for value in values:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
        out.append({"name": value.name, "shape": dims, "dtype": dtype})
    return out
