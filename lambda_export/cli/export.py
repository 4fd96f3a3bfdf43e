"""``lambda-export export MODEL`` (also plain ``lambda-export MODEL``): convert → check → save → verify → report.

:func:`export` is the whole job on typed options; ``demo`` runs it on its sample model. Every option is checked, and
the output folder probed, before the slow work: an exit 2 never comes with a freshly written file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import click

from lambda_export.cli.app import STATE, checkpoint, progress, set_state, tensorflow_progress, timed, warn
from lambda_export.cli.options import (
    EXIT_CODES_HELP,
    RESULT_SCHEMA,
    ConvertOptions,
    LoadOptions,
    OutputOptions,
    ParityOptions,
    QuantizeOptions,
    convert_options,
    load_options,
    output_options,
    parity_options,
    quantize_options,
)
from lambda_export.cli.verify import check_inputs_file, finish, run_parity
from lambda_export.errors import InputError

__all__ = ["command", "default_output", "expected_inputs", "export", "size_text"]


@click.command("export", epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path())
@convert_options
@parity_options
@load_options
@quantize_options
@output_options()
def command(
    model: str,
    convert: ConvertOptions,
    parity: ParityOptions,
    load: LoadOptions,
    quantize: QuantizeOptions,
    output: OutputOptions,
) -> int:
    """Convert MODEL (.h5, .keras, SavedModel folder) to ONNX, verify parity, report."""
    set_state(output)
    return export(model, convert, parity, load, output, quantize=quantize)


def export(
    model: str | None,
    convert: ConvertOptions,
    parity: ParityOptions,
    load: LoadOptions,
    output: OutputOptions,
    *,
    loaded: Any = None,
    quantize: QuantizeOptions | None = None,
) -> int:
    """convert → check → save → verify → report; returns the exit code.

    With ``--quantize int8``: convert → quantize (calibrate, measure, keep in float what breaks accuracy) → the int8
    verdict against TensorFlow → save the int8 model → parity of the float32 graph it came from → report; exit 1 when
    either fails.

    Args:
        model: the Keras model's path (.h5, .keras, SavedModel folder).
        loaded: the model, already loaded (``demo``); ``model`` then only names it.
        quantize: ``--quantize`` and its options (None: a float32 export).
    """
    from lambda_export.conversion import convert as convert_model
    from lambda_export.io import save_model_atomic

    quantize = quantize or QuantizeOptions()
    input_shapes, output_path = _check(model, convert, parity, output, quantize)
    _early_warnings(convert, quantize)
    loaded = _load_and_check_samples(model, loaded, convert, parity, load, quantize, input_shapes)
    checkpoint()
    with timed("convert", f"converting (opset {convert.opset}, target {convert.target})"):
        result = convert_model(
            model,
            None,
            opset=convert.opset,
            batch_size=convert.batch_size,
            input_shapes=input_shapes or None,
            target=convert.target,
            optimize=convert.optimize,
            overwrite=convert.force,
            loaded=loaded,
        )
    if STATE.verbose and not STATE.json:  # what each pass rewrote and, where it looked and refused, why
        for line in result.pass_log:
            click.echo(f"pass {line}", err=True)
    checkpoint()  # an interruption swallowed inside TensorFlow/tf2onnx must not end in a written file
    int8 = _quantize(loaded, result.model, quantize, verify=not convert.skip_verify) if quantize.enabled else None
    checkpoint()
    written = result.model if int8 is None else int8.model
    with timed("write"):
        result.path = save_model_atomic(written, output_path, overwrite=convert.force)
    _say_written(result, written, int8)
    summary: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "model": str(model) if model else None,
        "onnx": result.path,
        "conversion": _conversion_summary(
            result, opset=convert.opset, target=convert.target, optimize=convert.optimize
        ),
    }
    if int8 is not None:
        summary["quantization"] = int8.summary()
    report = None
    if not convert.skip_verify:
        fixed = all(info.shape and info.shape[0] is not None for info in result.inputs)
        report = run_parity(loaded, result.model, parity, fixed_batch=fixed)
        if int8 is not None:  # the parity is the float32 graph's, in memory: the file on disk is its int8 form
            report.model["onnx"] = f"{result.path} (its float32 graph, before int8 quantization)"
    checkpoint()
    return finish(
        summary,
        report,
        output.report,
        conversion=summary["conversion"],
        quantization=summary.get("quantization"),
    )


def _early_warnings(convert: ConvertOptions, quantize: QuantizeOptions) -> None:
    """Say the int8 warnings known before any work at once (the user may want another ``--target``); the int8 result
    repeats them, and :func:`~lambda_export.cli.app.warn` says each once."""
    for warning in quantize.check(convert.target):
        warn(warning)
    if quantize.enabled and not quantize.calibration:
        from lambda_export.quantization.calibration import GENERATED_WARNING

        warn(GENERATED_WARNING)


def _load_and_check_samples(
    model: str | None,
    loaded: Any,
    convert: ConvertOptions,
    parity: ParityOptions,
    load: LoadOptions,
    quantize: QuantizeOptions,
    input_shapes: dict[str, tuple[int | None, ...]],
) -> Any:
    """The Keras model (loaded here unless given), after checking ``--inputs`` and ``--calibration`` against the
    inputs the export will have: a bad file fails before the conversion starts."""
    from lambda_export.loading import load_model

    if loaded is None:
        tensorflow_progress()
        with timed("load", f"loading {model}"):
            loaded = load_model(model, trust_code=load.trust_code, imports=load.imports)
    expected = expected_inputs(loaded.inputs, convert.batch_size, input_shapes)
    if parity.inputs and not convert.skip_verify:
        check_inputs_file(parity.inputs, expected)
    if quantize.calibration:
        from lambda_export.quantization.calibration import fixed_batch, load_calibration

        samples = len(next(iter(load_calibration(quantize.calibration, expected).values())))
        batch = fixed_batch(expected)  # any number of samples, but at least one batch where --batch-size fixes it
        if batch is not None and samples < batch:
            raise InputError(
                f"--calibration {quantize.calibration}: {samples} sample(s), but the batch is fixed to {batch}: "
                f"give at least {batch}"
            )
    return loaded


def _say_written(result: Any, written: Any, int8: Any) -> None:
    """The conversion's and int8's warnings (each once: those said before the work are not repeated), then the line
    that names the file written."""
    for warning in [*result.warnings, *(int8.warnings if int8 else [])]:
        warn(warning)
    STATE.written = result.path
    if not (STATE.json or STATE.quiet):  # said even when piped: the file is the result
        nodes = len(written.graph.node)
        size = size_text(_file_bytes(result.path))
        extra = f", {int8.int8_bytes / int8.float_bytes:.0%} of the float32 graph" if int8 else ""
        click.echo(f"wrote {result.path} ({'int8, ' if int8 else ''}{nodes} nodes, {size}{extra})")


def _quantize(loaded: Any, float_model: Any, quantize: QuantizeOptions, *, verify: bool) -> Any:
    """``--quantize int8``: :func:`lambda_export.quantization.quantize` on the float32 export just made (timed)."""
    from lambda_export.quantization import quantize as quantize_model

    with timed("quantize", f"quantizing to {quantize.precision} ({quantize.calibration_method} calibration)"):
        return quantize_model(
            loaded,
            None,
            onnx_model=float_model,
            calibration=quantize.calibration,
            calibration_method=quantize.calibration_method,
            min_agreement=quantize.min_agreement,
            min_cosine=quantize.min_cosine,
            verify=verify,
            timing=verify,
            loaded=loaded,
            target=str(_metadata(float_model).get("target", "portable")),
            progress=progress,
        )


def _metadata(model: Any) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def _check(
    model: str | None,
    convert: ConvertOptions,
    parity: ParityOptions,
    output: OutputOptions,
    quantize: QuantizeOptions | None = None,
) -> tuple[dict[str, tuple[int | None, ...]], Path]:
    """Every check that needs no model: returns the parsed ``--input-shape`` values and the output path.

    Raises:
        InputError, click.BadParameter: a bad option, an empty path, an output that cannot or must not be written.
    """
    from lambda_export.io import check_output_writable

    output.check_report()
    if convert.batch_size is not None and convert.dynamic_batch:
        raise InputError("--batch-size and --dynamic-batch contradict each other")
    input_shapes = convert.shapes()
    if model is not None and not str(model).strip():
        raise InputError("MODEL is an empty path")
    if convert.output is not None and not str(convert.output).strip():
        raise InputError("-o/--output is an empty path")
    if not convert.skip_verify:
        parity.check()
    quantized = quantize is not None and quantize.enabled
    output_path = Path(convert.output) if convert.output else default_output(model or "model", int8=quantized)
    if output_path.is_dir():
        raise InputError(f"{output_path}: the output is a folder; give a file name ending in .onnx")
    if output_path.exists() and not convert.force:
        raise InputError(f"{output_path} exists; pass --force to replace it")
    if output_path.exists() and not output_path.is_file():
        raise InputError(f"{output_path} exists and is not a regular file; refusing to replace it")
    check_output_writable(output_path)
    return input_shapes, output_path


def expected_inputs(
    inputs: list[Any], batch_size: int | None, input_shapes: dict[str, tuple[int | None, ...]] | None
) -> list[Any]:
    """The Keras model's inputs (``TensorInfo``) with what ``--input-shape`` and ``--batch-size`` will fix in the
    export, so that ``--inputs`` and ``--calibration`` are checked against them before the conversion. An override
    that does not fit is left out here: the conversion refuses it with its own message."""
    from lambda_export.graph import TensorInfo

    out = []
    for info in inputs:
        shape = list(info.shape)
        new = (input_shapes or {}).get(info.name)
        if new is not None and len(new) == len(shape):
            shape = [model if dim is None else dim for model, dim in zip(shape, new, strict=True)]
        if batch_size is not None and shape and shape[0] is None:
            shape[0] = batch_size
        out.append(TensorInfo(info.name, tuple(shape), info.dtype))
    return out


def default_output(model: str, *, int8: bool = False) -> Path:
    """The output when ``-o`` is not given: MODEL with the suffix ``.onnx`` (a SavedModel folder: ``FOLDER.onnx``);
    ``.int8.onnx`` for an int8 model."""
    suffix = ".int8.onnx" if int8 else ".onnx"
    path = Path(model)
    if path.is_dir():
        return path.parent / (path.name.rstrip("/") + suffix)
    return path.with_suffix(suffix)


def size_text(size: int) -> str:
    """A file size for people: ``850 B``, ``107 kB``, ``3.4 MB``, ``1.20 GB`` (powers of 1000)."""
    if size < 1000:
        return f"{size} B"
    if size < 1000**2:
        return f"{size / 1000:.0f} kB"
    if size < 1000**3:
        return f"{size / 1000**2:.1f} MB"
    return f"{size / 1000**3:.2f} GB"


def _file_bytes(path: str) -> int:
    """The size of a written model, its external data file (``PATH.data``) included."""
    total = 0
    for name in (path, path + ".data"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(name)
    return total


def _conversion_summary(result: Any, *, opset: int, target: str, optimize: str) -> dict[str, Any]:
    """The ``conversion`` part of the JSON verdict (and of ``--report``)."""
    return {
        "opset": opset,
        "target": target,
        "optimize": optimize,
        "nodes": result.node_count,
        "op_histogram": result.op_histogram,
        "passes": result.passes,
        "warnings": result.warnings,
        "target_issues": result.target_issues,
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in result.inputs],
        "outputs": [{"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in result.outputs],
    }
