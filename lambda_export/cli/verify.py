"""``lambda-export verify MODEL ONNX``: the parity of an existing ONNX file against the Keras model.

Also what ``export`` (and so ``demo``) shares with it: :func:`run_parity` runs the parity engine with the typed
:class:`~lambda_export.cli.options.ParityOptions`, :func:`finish` prints the verdict (table, one line, or JSON), writes
the report and returns the exit code.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from typing import Any

import click

from lambda_export.cli.app import STATE, checkpoint, progress, set_state, tensorflow_progress, timed, warn
from lambda_export.cli.options import (
    EXIT_CODES_HELP,
    RESULT_SCHEMA,
    LoadOptions,
    OutputOptions,
    ParityOptions,
    cli_warning,
    load_options,
    output_options,
    parity_options,
)
from lambda_export.errors import EXIT_OK, EXIT_PARITY_FAILED, InputError

__all__ = ["check_inputs_file", "command", "finish", "run_parity", "source_mismatch"]


@click.command("verify", epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path())
@click.argument("onnx_file", metavar="ONNX", type=click.Path())
@parity_options
@load_options
@output_options()
def command(model: str, onnx_file: str, parity: ParityOptions, load: LoadOptions, output: OutputOptions) -> int:
    """Check that ONNX computes what the Keras MODEL computes."""
    set_state(output)
    from lambda_export.io import load_onnx
    from lambda_export.loading import load_model

    output.check_report()
    parity.check()
    with timed("load"):
        onnx_model = load_onnx(onnx_file)
    if parity.inputs:
        from lambda_export.graph import graph_io

        check_inputs_file(parity.inputs, graph_io(onnx_model)[0])  # bad inputs fail before TensorFlow starts
    tensorflow_progress()
    with timed("load", f"loading {model}"):
        loaded = load_model(model, trust_code=load.trust_code, imports=load.imports)
    provenance = source_mismatch(onnx_model, onnx_file, model, loaded.sha256)
    if provenance:
        warn(provenance)  # at once: the parity that follows compares two models that may be unrelated
    onnx_inputs = [value.name for value in onnx_model.graph.input]
    expected = [info.name for info in loaded.inputs]
    initializers = {init.name for init in onnx_model.graph.initializer}
    if [name for name in onnx_inputs if name not in initializers] != expected:
        raise InputError(f"{onnx_file}: its inputs {onnx_inputs} do not match the model's inputs {expected}")
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    fixed = bool(dims) and dims[0].HasField("dim_value")
    report = run_parity(loaded, onnx_model, parity, fixed_batch=fixed)
    if provenance:
        report.warnings.insert(0, provenance)  # in the JSON and the report file too (finish says it once)
    checkpoint()
    summary = onnx_summary(onnx_model) if output.report else None
    return finish(
        {"schema": RESULT_SCHEMA, "model": model, "onnx": onnx_file}, report, output.report, conversion=summary
    )


def source_mismatch(onnx_model: Any, onnx_file: str, model: str, sha256: str | None) -> str | None:
    """The warning when the ONNX file's metadata records another source than the Keras model given (the SHA-256 that
    :func:`lambda_export.conversion.convert` stamps, ``source_sha256``, differs from the model's), else None (also
    for a file without that record: not exported by lambda-export, or from a model in memory)."""
    metadata = {prop.key: prop.value for prop in onnx_model.metadata_props}
    recorded = metadata.get("source_sha256")
    if not recorded or recorded == "in-memory" or not sha256 or recorded == sha256:
        return None
    source = metadata.get("source") or "another model"
    return f"{onnx_file} was exported from {source} (sha256 {recorded[:12]}…), not from {model} (sha256 {sha256[:12]}…)"


def check_inputs_file(path: str, inputs: list[Any]) -> None:
    """Check the ``--inputs`` file against the model's ``inputs`` (``TensorInfo``); any number of samples where
    the batch is dynamic.

    Raises:
        InputError: one line naming ``--inputs`` and saying what the file holds against what the model needs.
    """
    from lambda_export.parity import load_inputs

    try:
        load_inputs(path, inputs)
    except InputError as exc:
        raise InputError(f"inputs {exc}", argument="inputs") from exc


def onnx_summary(onnx_model: Any) -> dict[str, Any]:
    """What ``--report`` shows of an ONNX file it did not convert: opset, nodes, ops, and from the metadata that
    lambda-export writes, the target, the optimization level and the passes (with what the target would refuse)."""
    import collections

    from lambda_export.targets import TARGETS, check_target

    metadata = {prop.key: prop.value for prop in onnx_model.metadata_props}
    target = metadata.get("target")
    return {
        "opset": next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), None),
        "target": target,
        "optimize": metadata.get("optimize"),
        "nodes": len(onnx_model.graph.node),
        "op_histogram": dict(sorted(collections.Counter(n.op_type for n in onnx_model.graph.node).items())),
        "passes": [name for name in metadata.get("rewrite_passes", "").split(",") if name],
        "warnings": [],
        "target_issues": [str(issue) for issue in check_target(onnx_model, target)] if target in TARGETS else [],
        "producer": f"{onnx_model.producer_name} {onnx_model.producer_version}".strip(),
    }


def run_parity(loaded: Any, onnx_model: Any, parity: ParityOptions, *, fixed_batch: bool) -> Any:
    """Run the parity engine on a loaded Keras model and an ONNX model; return its ``ParityReport``.

    Args:
        loaded: the :class:`~lambda_export.loading.LoadedModel`.
        fixed_batch: the ONNX graph has a fixed batch (``--batch-sizes`` does not apply).
    """
    from lambda_export.parity import verify

    config = parity.config(fixed_batch=fixed_batch, int_high=_int_high(loaded))
    return verify(loaded.model, onnx_model, config, loaded=loaded, progress=progress)


def _command_timings(parity: dict[str, float]) -> dict[str, float]:
    """The command's steps (:func:`~lambda_export.cli.app.timed`: load, train, convert, write) followed by the parity
    engine's, and the whole command as ``total``. The engine's ``load`` (near 0 when it got the loaded model) is added
    to the command's."""
    timings = dict(STATE.timings)
    for step, seconds in parity.items():
        if step != "total":
            timings[step] = timings.get(step, 0.0) + seconds
    timings["total"] = time.perf_counter() - STATE.started if STATE.started else parity.get("total", 0.0)
    return timings


def _int_high(loaded: Any) -> int:
    """Exclusive upper bound of random integer inputs: the smallest ``Embedding`` vocabulary, so token ids are valid.

    TensorFlow raises on an out-of-range embedding index (and ONNX Runtime's Gather too), so the parity engine's
    default range [0, 100) would break every model with a vocabulary under 100.
    """
    from lambda_export.loading import walk_layers
    from lambda_export.parity import INT_HIGH

    sizes = [
        int(layer.input_dim)
        for layer in walk_layers(loaded.model)
        if type(layer).__name__ == "Embedding" and getattr(layer, "input_dim", 0)
    ]
    return max(1, min([INT_HIGH, *sizes]))


def _say_warnings(report: Any, conversion: dict[str, Any] | None, quantization: dict[str, Any] | None) -> None:
    """Word the warnings of the parity report, the conversion and int8 for the command line (in the JSON and the
    report file too: ``calibration=FILE.npz`` → ``--calibration FILE.npz``) and say each once on stderr (those said
    earlier in this run are not repeated)."""
    if report is not None:
        report.warnings = [cli_warning(warning) for warning in report.warnings]
    for part in (conversion, quantization):
        if part and part.get("warnings"):
            part["warnings"] = [cli_warning(warning) for warning in part["warnings"]]
    for warning in [
        *(conversion or {}).get("warnings", []),
        *(quantization or {}).get("warnings", []),
        *(report.warnings if report is not None else []),
    ]:
        warn(warning)


def finish(
    result: dict[str, Any],
    report: Any,
    report_path: str | None,
    *,
    conversion: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
) -> int:
    """Print the verdict (table or JSON), write the report, and return the exit code.

    Args:
        result: what the JSON verdict holds besides the parity (schema, model, onnx, conversion, quantization).
        report: the ``ParityReport``, or None when parity was not checked (``--skip-verify``).
        report_path: ``--report``.
        conversion: the conversion summary (or the ONNX file's, for ``verify``) the report shows.
        quantization: the int8 record (``--quantize int8``): its verdict fails the command (exit 1) like parity.
    """
    exit_code = EXIT_OK
    int8_failed = bool(quantization and quantization.get("passed") is False)
    _say_warnings(report, conversion, quantization)
    if report is not None:
        exit_code = EXIT_OK if report.passed and not int8_failed else EXIT_PARITY_FAILED
        if result.get("onnx") and report.model.get("onnx") in (None, "in-memory"):
            report.model["onnx"] = str(result["onnx"])  # the file the command wrote or read, not the proto in memory
        report.timings = _command_timings(report.timings)
        result["parity"] = report.to_dict()
        if report_path:
            from lambda_export.report import write_report

            write_report(report, report_path, conversion=conversion, quantization=quantization)
            result["report"] = report_path
    result["exit_code"] = exit_code
    result["verdict"] = "pass" if exit_code == EXIT_OK else "fail"
    if STATE.json:
        click.echo(json.dumps(result, indent=2, default=str))
        return exit_code
    if report is not None and not STATE.quiet:
        from lambda_export.report import render_text

        table = copy.copy(report)
        table.warnings = []  # said on stderr (_say_warnings), not again in the table
        click.echo(render_text(table, color=sys.stdout.isatty()))
        if STATE.verbose:  # the table says the GPU providers that cannot exist here in one line; -v says each and why
            for provider, reason in report.providers_skipped.items():
                click.echo(f"skipped {provider}: {reason}", err=True)
    if quantization is not None and not STATE.quiet:
        from lambda_export.report import render_quantization_text

        text = render_quantization_text({**quantization, "warnings": []}, color=sys.stdout.isatty())
        click.echo(text)
    if report is None:
        click.echo(f"converted: {result.get('onnx')} (parity not checked)")
    elif STATE.quiet:
        verdict = "PASS" if exit_code == EXIT_OK else "FAIL"
        click.echo(f"{verdict}: {result.get('onnx', '')}")
    if report_path and not STATE.quiet:
        click.echo(f"report: {report_path}")
    return exit_code
