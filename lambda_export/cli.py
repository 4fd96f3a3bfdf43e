"""The ``lambda-export`` command line: convert + verify + report, and one verb per piece of the job.

    lambda-export MODEL [-o OUT.onnx] [options]     convert, verify parity, report (same as `lambda-export export`)
    lambda-export verify MODEL ONNX [options]       parity of an existing ONNX file against the Keras model
    lambda-export inspect ONNX [--json]             inputs/outputs, op histogram, opset, target checks, metadata
    lambda-export demo [--out DIR]                  build, train and export the sample model (what `make demo` runs)
    lambda-export bench MODEL                       ONNX Runtime vs TensorFlow latency, side by side
    lambda-export triton ONNX --repo DIR            write a Triton Inference Server model repository

Exit codes: 0 parity holds everywhere it ran; 1 parity failed; 2 bad usage or unreadable input; 3 conversion failed;
130 interrupted (SIGINT); 143 terminated (SIGTERM). Errors are one line on stderr (``-v`` adds the traceback).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import click

from lambda_export import __version__
from lambda_export.errors import (
    EXIT_CONVERSION,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARITY_FAILED,
    EXIT_USAGE,
    InputError,
    LambdaExportError,
)

EXIT_CODES_HELP = (
    "Exit codes: 0 parity holds everywhere it ran; 1 parity failed; 2 bad usage or unreadable input; "
    "3 conversion failed; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)."
)
# literal copies (the CLI starts without importing onnx); tests/cli/test_cli.py checks them against the library
TARGET_CHOICES = ["portable", "ort", "openvino", "opencv4", "opencv5"]
OPTIMIZE_CHOICES = ["default", "speed"]
RESULT_SCHEMA = "lambda-export/result/v1"


class _State:
    """Per-invocation output settings (set by the command callbacks, read by the error handler)."""

    verbose = 0
    quiet = False
    json = False
    written: str | None = None  # the output file, once written (an interruption after that says so)
    interrupted: int | None = None  # SIGINT/SIGTERM received (sticky: library code may swallow the exception)


STATE = _State()


def _progress(message: str) -> None:
    """Show a progress line on a terminal (stderr), never when piped, with -q, or with --json."""
    if STATE.quiet or STATE.json:
        return
    if STATE.verbose or sys.stderr.isatty():
        click.echo(f"… {message}", err=True)


def _parse_shape(value: str) -> tuple[str, tuple[int | None, ...]]:
    if "=" not in value:
        raise click.BadParameter(f"{value!r}: expected NAME=DIMS, e.g. images=?,64,64,3", param_hint="--input-shape")
    name, dims_text = value.split("=", 1)
    dims: list[int | None] = []
    separator = "," if "," in dims_text else "x"  # images=?,64,64,3 or images=1x64x64x3
    for token in dims_text.split(separator):
        token = token.strip()
        if token in ("?", "-1", "None", "none", "N", ""):
            dims.append(None)
        elif token.isdigit() and int(token) > 0:
            dims.append(int(token))
        else:
            raise click.BadParameter(
                f"{value!r}: dim {token!r} is not a positive integer or ?", param_hint="--input-shape"
            )
    return name.strip(), tuple(dims)


def _parse_providers(value: str | None) -> list[str] | None:
    if value is None or value.strip().lower() in ("", "all", "auto"):
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _common_options(fn: Any) -> Any:
    """Options shared by `export`, `verify` and `demo`."""
    options = [
        click.option(
            "--providers",
            metavar="LIST",
            help="ONNX Runtime providers to verify on: cpu,cuda,tensorrt (default: all available).",
        ),
        click.option(
            "--atol",
            type=float,
            default=1e-4,
            show_default=True,
            help="Absolute tolerance: |onnx − tf| ≤ atol + rtol·|tf|.",
        ),
        click.option("--rtol", type=float, default=1e-3, show_default=True, help="Relative tolerance."),
        click.option(
            "--inputs",
            "inputs_path",
            type=click.Path(dir_okay=False),
            help="Inputs for the check: .npz (keys = input names) or .npy.",
        ),
        click.option(
            "--samples",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Random draws per batch size and distribution.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs."),
        click.option(
            "--batch-sizes", default="1,4", show_default=True, help="Batch sizes checked when the batch is dynamic."
        ),
        click.option(
            "--fp16", is_flag=True, help="Also check a float16 export (weights and compute) against the fp32 reference."
        ),
        click.option("--tf32", is_flag=True, help="Leave TF32 matmuls on for GPU checks (default: off on both sides)."),
        click.option(
            "--locate/--no-locate",
            default=True,
            show_default=True,
            help="On failure, name the first Keras layer that diverges.",
        ),
        click.option(
            "--import",
            "imports",
            multiple=True,
            metavar="MODULE_OR_FILE",
            help="Import code that registers custom layers (repeatable).",
        ),
        click.option(
            "--trust-code", is_flag=True, help="Allow Lambda layers (loading them executes code from the model file)."
        ),
        click.option(
            "--report", "report_path", type=click.Path(dir_okay=False), help="Write a report: FILE.json or FILE.html."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print a machine-readable verdict (JSON) on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="Only errors and the final verdict line."),
        click.option("-v", "--verbose", count=True, help="Show progress and tracebacks."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _convert_options(fn: Any) -> Any:
    options = [
        click.option(
            "-o",
            "--output",
            type=click.Path(dir_okay=False),
            help="Output .onnx file (default: MODEL with .onnx suffix).",
        ),
        click.option("--opset", type=click.IntRange(13, 18), default=17, show_default=True, help="ONNX opset (13–18)."),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=None, help="Fix the batch dimension (default: dynamic)."
        ),
        click.option("--dynamic-batch", is_flag=True, help="Keep the batch dimension dynamic (the default)."),
        click.option(
            "--input-shape",
            "input_shapes",
            multiple=True,
            metavar="NAME=DIMS",
            help="Shape for an input with unknown dims, e.g. images=?,64,64,3 (repeatable).",
        ),
        click.option(
            "--target",
            type=click.Choice(TARGET_CHOICES),
            default="portable",
            show_default=True,
            help="Runtimes the graph must load on.",
        ),
        click.option(
            "--optimize",
            type=click.Choice(OPTIMIZE_CHOICES),
            default="default",
            show_default=True,
            help="default: fewest nodes; speed: also the exact ONNX Runtime CPU performance rewrites (same target rules).",
        ),
        click.option("--force", is_flag=True, help="Overwrite an existing output file."),
        click.option(
            "--skip-verify", is_flag=True, help="Convert only; no parity check (exit 0 after a successful conversion)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _set_state(quiet: bool, verbose: int, as_json: bool) -> None:
    STATE.quiet, STATE.verbose, STATE.json = quiet, verbose, as_json
    STATE.written = None
    if not verbose:
        # TensorFlow's C++ INFO/WARNING lines would break the one-line error promise; -v shows them
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _os_reason(exc: OSError) -> str:
    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENOTDIR: "not a folder",
        errno.ENOENT: "the folder does not accept new files",
    }
    return reasons.get(exc.errno or 0, exc.strerror or str(exc))


def _check_output_writable(output: Path) -> None:
    """Fail before the (slow) conversion when the output folder cannot take a new file."""
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.exists():
        raise InputError(f"{output}: the output folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{output}: cannot write the output: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{output}: cannot write to the output folder {folder}: {_os_reason(exc)}") from exc
    os.close(fd)
    os.unlink(probe)


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise InputError(f"--batch-sizes {text!r}: expected a comma-separated list of positive integers") from exc
    if not sizes or any(size <= 0 for size in sizes):
        raise InputError(f"--batch-sizes {text!r}: expected a comma-separated list of positive integers")
    return sizes


def _default_output(model: str) -> Path:
    path = Path(model)
    if path.is_dir():
        return path.parent / (path.name.rstrip("/") + ".onnx")
    return path.with_suffix(".onnx")


def _check_verify_options(opts: dict[str, Any]) -> None:
    """Refuse bad parity-check options before the slow work: an exit 2 must not come with a freshly written file."""
    import math

    for name in ("atol", "rtol"):
        value = opts[name]
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--{name} {value!r}: must be a finite number >= 0")
    _batch_sizes(opts["batch_sizes"])
    requested = _parse_providers(opts["providers"])
    if requested is not None:  # None = every available provider, probed by the check itself
        from lambda_export.parity import resolve_providers

        resolve_providers(requested)


def _check_report_path(report_path: str | None) -> None:
    if report_path and Path(report_path).suffix.lower() not in (".json", ".html", ".htm"):
        raise InputError(f"--report {report_path}: the report file must end in .json or .html")


def _run_verify(loaded: Any, onnx_model: Any, opts: dict[str, Any], *, fixed_batch: bool) -> Any:
    """Run the parity engine with the verification options shared by `export`, `verify` and `demo`."""
    from lambda_export.parity import verify

    return verify(
        loaded.model,
        onnx_model,
        loaded=loaded,
        int_high=_int_high(loaded),
        providers=_parse_providers(opts["providers"]),
        atol=opts["atol"],
        rtol=opts["rtol"],
        inputs=opts["inputs_path"],
        batch_sizes=(None,) if fixed_batch else _batch_sizes(opts["batch_sizes"]),
        samples=opts["samples"],
        seed=opts["seed"],
        tf32=opts["tf32"],
        locate="on_failure" if opts["locate"] else "never",
        fp16=opts["fp16"],
        progress=_progress,
    )


def _int_high(loaded: Any) -> int:
    """Exclusive upper bound of random integer inputs: the smallest ``Embedding`` vocabulary, so token ids are valid.

    TensorFlow raises on an out-of-range embedding index (and ONNX Runtime's Gather too), so the parity engine's
    default range [0, 100) would break every model with a vocabulary under 100.
    """
    from lambda_export.loading import _walk_layers
    from lambda_export.parity import INT_HIGH

    sizes = [
        int(layer.input_dim)
        for layer in _walk_layers(loaded.model)
        if type(layer).__name__ == "Embedding" and getattr(layer, "input_dim", 0)
    ]
    return max(1, min([INT_HIGH, *sizes]))


def _finish(result: dict[str, Any], report: Any, report_path: str | None) -> int:
    """Print the verdict (table or JSON), write the report, and return the exit code."""
    exit_code = EXIT_OK
    if report is not None:
        exit_code = EXIT_OK if report.passed else EXIT_PARITY_FAILED
        result["parity"] = report.to_dict()
        if report_path:
            from lambda_export.report import write_report

            write_report(report, report_path)
            result["report"] = report_path
    result["exit_code"] = exit_code
    result["verdict"] = "pass" if exit_code == EXIT_OK else "fail"
    if STATE.json:
        click.echo(json.dumps(result, indent=2, default=str))
        return exit_code
    if report is not None and not STATE.quiet:
        from lambda_export.report import render_text

        click.echo(render_text(report, color=sys.stdout.isatty()))
    if report is None:
        click.echo(f"converted: {result.get('onnx')} (parity not checked)")
    elif STATE.quiet:
        verdict = "PASS" if report.passed else "FAIL"
        click.echo(f"{verdict}: {result.get('onnx', '')}")
    if report_path and not STATE.quiet:
        click.echo(f"report: {report_path}")
    return exit_code


def _graph_inputs(model: Any) -> list[Any]:
    """Name, shape (None for a symbolic dim) and dtype of an ONNX graph's inputs (initializers left out)."""
    from lambda_export.parity import _onnx_io

    return _onnx_io(model)[0]


def _conversion_summary(result: Any) -> dict[str, Any]:
    return {
        "nodes": result.node_count,
        "op_histogram": result.op_histogram,
        "passes": result.passes,
        "warnings": result.warnings,
        "target_issues": result.target_issues,
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in result.inputs],
        "outputs": [{"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in result.outputs],
    }


def _export(model: str | None, *, loaded: Any = None, **opts: Any) -> int:
    """convert → check → save → verify → report (the default command)."""
    from lambda_export.conversion import convert
    from lambda_export.loading import load_model

    _check_report_path(opts["report_path"])
    if opts["batch_size"] is not None and opts["dynamic_batch"]:
        raise InputError("--batch-size and --dynamic-batch contradict each other")
    input_shapes = dict(_parse_shape(text) for text in opts["input_shapes"])
    if model is not None and not str(model).strip():
        raise InputError("MODEL is an empty path")
    if opts["output"] is not None and not str(opts["output"]).strip():
        raise InputError("-o/--output is an empty path")
    if not opts["skip_verify"]:
        _check_verify_options(opts)
    output = Path(opts["output"]) if opts["output"] else _default_output(model or "model")
    if output.is_dir():
        raise InputError(f"{output}: the output is a folder; give a file name ending in .onnx")
    if output.exists() and not opts["force"]:
        raise InputError(f"{output} exists; pass --force to replace it")
    if output.exists() and not output.is_file():
        raise InputError(f"{output} exists and is not a regular file; refusing to replace it")
    _check_output_writable(output)
    if loaded is None:
        _progress(f"loading {model}")
        started = time.perf_counter()
        loaded = load_model(model, trust_code=opts["trust_code"], imports=opts["imports"])
        _progress(f"loaded in {time.perf_counter() - started:.1f}s")
    if opts["inputs_path"] and not opts["skip_verify"]:
        from lambda_export.parity import load_inputs

        load_inputs(opts["inputs_path"], loaded.inputs)  # bad inputs fail before the conversion writes anything
    _progress(f"converting (opset {opts['opset']}, target {opts['target']})")
    _checkpoint()
    from lambda_export.conversion import save_model_atomic

    result = convert(
        model,
        None,
        opset=opts["opset"],
        batch_size=opts["batch_size"],
        input_shapes=input_shapes or None,
        target=opts["target"],
        optimize=opts["optimize"],
        overwrite=opts["force"],
        loaded=loaded,
    )
    _checkpoint()  # an interruption swallowed inside TensorFlow/tf2onnx must not end in a written file
    result.path = save_model_atomic(result.model, output, overwrite=opts["force"])
    for warning in result.warnings:
        if not STATE.json:
            click.echo(f"warning: {warning}", err=True)
    STATE.written = result.path
    _progress(f"wrote {result.path} ({result.node_count} nodes)")
    summary: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "model": str(model) if model else None,
        "onnx": result.path,
        "conversion": _conversion_summary(result),
    }
    report = None
    if not opts["skip_verify"]:
        fixed = all(info.shape and info.shape[0] is not None for info in result.inputs)
        report = _run_verify(loaded, result.model, opts, fixed_batch=fixed)
    _checkpoint()
    return _finish(summary, report, opts["report_path"])


class _DefaultGroup(click.Group):
    """A group whose first positional argument, if not a verb, is the MODEL of the default `export` verb."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["export", *args]
        elif (
            args
            and args[0].startswith("-")
            and args[0] not in ("--help", "-h", "--version")
            and any(not a.startswith("-") and a not in self.commands for a in args)
        ):
            args = ["export", *args]  # options before the model: `lambda-export --opset 13 model.h5`
        return super().parse_args(ctx, args)


@click.group(
    cls=_DefaultGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, "--version", prog_name="lambda-export")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Export a Keras model with lambda layers to portable ONNX and prove parity with TensorFlow.

    \b
    lambda-export MODEL [-o OUT.onnx]   convert + verify + report (MODEL: .h5, .keras or SavedModel folder)
    lambda-export verify MODEL ONNX     check an existing ONNX file
    lambda-export inspect ONNX          describe an ONNX file
    lambda-export demo                  build, train and export a sample lambda model
    lambda-export bench MODEL           ONNX Runtime vs TensorFlow latency
    lambda-export triton ONNX --repo D  write a Triton model repository
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command("export", epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path())
@_convert_options
@_common_options
def export_cmd(model: str, **opts: Any) -> int:
    """Convert MODEL (.h5, .keras, SavedModel folder) to ONNX, verify parity, report."""
    _set_state(opts["quiet"], opts["verbose"], opts["as_json"])
    return _export(model, **opts)


@cli.command("verify", epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path())
@click.argument("onnx_file", metavar="ONNX", type=click.Path())
@_common_options
def verify_cmd(model: str, onnx_file: str, **opts: Any) -> int:
    """Check that ONNX computes what the Keras MODEL computes."""
    _set_state(opts["quiet"], opts["verbose"], opts["as_json"])
    from lambda_export.loading import load_model
    from lambda_export.onnx_io import load_onnx

    _check_report_path(opts["report_path"])
    _check_verify_options(opts)
    onnx_model = load_onnx(onnx_file)
    if opts["inputs_path"]:
        from lambda_export.parity import load_inputs

        load_inputs(opts["inputs_path"], _graph_inputs(onnx_model))  # bad inputs fail before TensorFlow starts
    _progress(f"loading {model}")
    loaded = load_model(model, trust_code=opts["trust_code"], imports=opts["imports"])
    onnx_inputs = [value.name for value in onnx_model.graph.input]
    expected = [info.name for info in loaded.inputs]
    initializers = {init.name for init in onnx_model.graph.initializer}
    if [name for name in onnx_inputs if name not in initializers] != expected:
        raise InputError(f"{onnx_file}: its inputs {onnx_inputs} do not match the model's inputs {expected}")
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    fixed = bool(dims) and dims[0].HasField("dim_value")
    report = _run_verify(loaded, onnx_model, opts, fixed_batch=fixed)
    _checkpoint()
    return _finish({"schema": RESULT_SCHEMA, "model": model, "onnx": onnx_file}, report, opts["report_path"])


@cli.command("inspect")
@click.argument("onnx_file", metavar="ONNX", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="Show tracebacks on errors.")
def inspect_cmd(onnx_file: str, as_json: bool, verbose: int) -> int:
    """Describe an ONNX file: inputs/outputs, op histogram, opset, target checks, metadata."""
    _set_state(False, verbose, as_json)
    import collections

    import onnx

    from lambda_export.onnx_io import load_onnx
    from lambda_export.targets import TARGETS, check_target

    model = load_onnx(onnx_file)

    def describe(values: Any) -> list[dict[str, Any]]:
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

    histogram = dict(sorted(collections.Counter(node.op_type for node in model.graph.node).items()))
    info = {
        "schema": "lambda-export/inspect/v1",
        "file": onnx_file,
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
        "nodes": len(model.graph.node),
        "op_histogram": histogram,
        "parameters": int(sum(int(__import__("numpy").prod(init.dims)) for init in model.graph.initializer)),
        "targets": {name: [str(o) for o in check_target(model, name)] for name in TARGETS},
        "metadata": {prop.key: prop.value for prop in model.metadata_props},
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return EXIT_OK
    click.echo(
        f"{onnx_file}: {info['nodes']} nodes, {info['parameters']:,} parameters, opset {info['opset']}, {info['producer']}"
    )
    for kind in ("inputs", "outputs"):
        for item in info[kind]:
            click.echo(f"  {kind[:-1]:6} {item['name']:24} {item['dtype']:8} {item['shape']}")
    click.echo("  ops    " + ", ".join(f"{op}×{count}" for op, count in histogram.items()))
    for name, offenses in info["targets"].items():
        status = "ok" if not offenses else f"{len(offenses)} problem(s): " + "; ".join(offenses[:3])
        click.echo(f"  target {name:9} {status}")
    for key, value in info["metadata"].items():
        click.echo(f"  meta   {key} = {value}")
    return EXIT_OK


@cli.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="demo_output",
    show_default=True,
    help="Folder for the sample model, its ONNX export and the report.",
)
@click.option(
    "--steps", type=click.IntRange(min=0), default=60, show_default=True, help="Training steps on generated data."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable verdict on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only the final verdict line.")
@click.option("-v", "--verbose", count=True, help="Progress and tracebacks.")
def demo_cmd(out_dir: str, steps: int, as_json: bool, quiet: bool, verbose: int) -> int:
    """Build a small LambdaResNet, train it briefly on generated data, save .h5, export it and print the report."""
    _set_state(quiet, verbose, as_json)
    from lambda_export.loading import load_model
    from lambda_layers import models

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _progress("building the tiny LambdaResNet")
    model = models.build_demo_model(seed=0)
    if not (quiet or as_json):
        model.summary(print_fn=lambda line, *_, **__: click.echo(line, err=True))
    history = models.train_demo_model(model, steps=steps, seed=0) if steps else {}
    if history and not (quiet or as_json):
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
    loaded = load_model(str(h5))
    if not (as_json or quiet):
        click.echo(f"saved {h5}; exporting as: lambda-export {h5} -o {folder / 'demo_model.onnx'} --force", err=True)
    return _export(
        str(h5),
        loaded=loaded,
        output=str(folder / "demo_model.onnx"),
        opset=17,
        batch_size=None,
        dynamic_batch=False,
        input_shapes=(),
        target="portable",
        optimize="default",
        force=True,
        skip_verify=False,
        providers=None,
        atol=1e-4,
        rtol=1e-3,
        inputs_path=None,
        samples=1,
        seed=0,
        batch_sizes="1,4",
        fp16=False,
        tf32=False,
        locate=True,
        imports=(),
        trust_code=False,
        report_path=str(folder / "report.html"),
        as_json=as_json,
        quiet=quiet,
        verbose=verbose,
    )


def _register_optional_commands() -> None:
    """`bench` and `triton` live in their own modules; they are added when present."""
    for module_name, attr in (("lambda_export.bench", "bench_cmd"), ("lambda_export.triton", "triton_cmd")):
        try:
            module = __import__(module_name, fromlist=[attr])
        except ImportError:
            continue
        command = getattr(module, attr, None)
        if command is not None:
            cli.add_command(command)


_register_optional_commands()


EXIT_TERMINATED = 128 + signal.SIGTERM


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM (CI cancellation), so temporary files are removed on the way out."""


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: remember it, then raise at once (KeyboardInterrupt / _Terminated).

    An exception raised from a signal handler can land inside C++ code that calls back into Python (TensorFlow's
    nest utilities, tf.function tracing), which turns it into a SystemError and carries on. The flag survives that:
    :func:`_checkpoint` raises again before the output is written and before the verdict.
    """
    STATE.interrupted = signum
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _checkpoint() -> None:
    """Raise a pending interruption that library code swallowed."""
    if STATE.interrupted == signal.SIGTERM:
        raise _Terminated()
    if STATE.interrupted is not None:
        raise KeyboardInterrupt()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn every failure into a one-line message and an exit code."""
    if argv is None:  # the real command line (not a test calling main in-process)
        with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
            signal.signal(signal.SIGTERM, _on_signal)
            signal.signal(signal.SIGINT, _on_signal)
    try:
        code = cli.main(args=argv, prog_name="lambda-export", standalone_mode=False)
        _checkpoint()
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        code = EXIT_OK
    except click.ClickException as exc:
        _error(exc.format_message(), EXIT_USAGE)
        code = EXIT_USAGE
    except click.exceptions.Abort:  # Click turns KeyboardInterrupt into Abort
        code = _report_interruption(STATE.interrupted or signal.SIGINT)
    except KeyboardInterrupt:
        code = _report_interruption(signal.SIGINT)
    except _Terminated:
        code = _report_interruption(signal.SIGTERM)
    except LambdaExportError as exc:
        if STATE.interrupted is not None:  # the interruption surfaced as a wrapped error (e.g. tf2onnx failed: ...)
            code = _report_interruption(STATE.interrupted)
        else:
            _error(str(exc), exc.exit_code)
            code = exc.exit_code
    except MemoryError:
        _error("out of memory", EXIT_CONVERSION)
        code = EXIT_CONVERSION
    except Exception as exc:  # anything unexpected: still one line, with a hint
        if STATE.interrupted is not None:
            code = _report_interruption(STATE.interrupted)
        else:
            _error(
                f"internal error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                " (run with -v for the traceback and please report it)",
                EXIT_CONVERSION,
            )
            code = EXIT_CONVERSION
    if argv is None:  # the verdict stands: a late Ctrl-C must not end in a traceback at exit
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.flush()
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _report_interruption(signum: int) -> int:
    """One line saying what an interruption left behind; returns 130 (SIGINT) or 143 (SIGTERM)."""
    what, code = (
        ("terminated (SIGTERM)", EXIT_TERMINATED) if signum == signal.SIGTERM else ("interrupted", EXIT_INTERRUPTED)
    )
    if STATE.written:
        _error(f"{what} after writing {STATE.written}; its parity was not checked", code)
    else:
        _error(f"{what}; no output file was written", code)
    return code


def _error(message: str, code: int) -> None:
    if STATE.verbose and sys.exc_info()[0] is not None:
        traceback.print_exc()
    message = " ".join(message.split())  # one line
    click.echo(f"lambda-export: error: {message}", err=True)
    if STATE.json:
        click.echo(json.dumps({"schema": RESULT_SCHEMA, "verdict": "error", "exit_code": code, "error": message}))
