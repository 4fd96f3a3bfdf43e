"""The ``lambda-export`` click group and the process around it: lazy verbs, run state, signals, errors → exit codes.

* :data:`VERBS` maps each verb to the module that defines its ``command`` and to its one-line help.
  :class:`LazyGroup` imports a verb's module only when that verb runs; ``lambda-export --help`` lists the verbs from
  the table alone, so it starts without TensorFlow, ONNX or the verbs' code. :class:`DefaultVerbGroup` adds the
  default verb: ``lambda-export MODEL ...`` is ``lambda-export export MODEL ...``.
* :data:`STATE` holds the settings of this invocation (:func:`set_state`), the file written so far, the timings of
  its steps (:func:`timed`) and a pending interruption; :func:`progress` prints progress lines; :func:`warn` prints
  a warning (once, on stderr, worded for the command line); :func:`checkpoint` raises an interruption that library
  code swallowed.
* :func:`main`, the console-script entry point: SIGINT/SIGTERM handlers, and every failure → one line on stderr
  (and a JSON verdict with ``--json``) and an exit code.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import click

from lambda_export.cli.options import EXIT_CODES_HELP, RESULT_SCHEMA, OutputOptions, cli_message, cli_warning
from lambda_export.errors import EXIT_CONVERSION, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, LambdaExportError, described
from lambda_export.ort import ONNXRUNTIME_MISSING
from lambda_export.version import __version__

__all__ = [
    "EXIT_TERMINATED",
    "STATE",
    "VERBS",
    "DefaultVerbGroup",
    "LazyGroup",
    "Verb",
    "checkpoint",
    "cli",
    "main",
    "progress",
    "set_state",
    "tensorflow_progress",
    "timed",
    "warn",
]

EXIT_TERMINATED = 128 + signal.SIGTERM


@dataclass(frozen=True)
class Verb:
    """Where a verb's ``command`` lives, and what ``lambda-export --help`` says of it without importing it."""

    module: str
    help: str  # the first paragraph of the command's docstring


VERBS: dict[str, Verb] = {
    "export": Verb(
        "lambda_export.cli.export", "Convert MODEL (.h5, .keras, SavedModel folder) to ONNX, verify parity, report."
    ),
    "verify": Verb("lambda_export.cli.verify", "Check that ONNX computes what the Keras MODEL computes."),
    "inspect": Verb(
        "lambda_export.cli.inspect",
        "Describe an ONNX file: inputs/outputs, op histogram, opset, target checks, metadata.",
    ),
    "demo": Verb(
        "lambda_export.cli.demo",
        "Build a small LambdaResNet, train it briefly on generated data, save .h5, export it and print the report.",
    ),
    "bench": Verb(
        "lambda_export.cli.bench",
        "ONNX Runtime vs TensorFlow on MODEL: latency (graph, XLA, ORT), GFLOP/s, peak memory, file size.",
    ),
    "triton": Verb(
        "lambda_export.cli.triton",
        "Write a Triton Inference Server model repository (onnxruntime backend) for MODEL.onnx.",
    ),
}


# -- run state and progress ------------------------------------------------------------------------------------------


class _State:
    """Per-invocation output settings (set by the verbs, read by the error handler)."""

    verbose = 0
    quiet = False
    json = False
    written: str | None = None  # the output file, once written (an interruption after that says so)
    interrupted: int | None = None  # SIGINT/SIGTERM received (sticky: library code may swallow the exception)
    started: float = 0.0  # time.perf_counter() when the verb started

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}  # step → seconds, for the report (set_state starts each invocation's)
        self.warned: set[str] = set()  # the warnings said so far (each is said once)


STATE = _State()


def set_state(output: OutputOptions) -> None:
    """Start a verb: take its output settings, forget an earlier output file and timings, quiet TensorFlow's C++ logs
    unless -v."""
    STATE.quiet, STATE.verbose, STATE.json = output.quiet, output.verbose, output.json
    STATE.written = None
    STATE.started, STATE.timings = time.perf_counter(), {}
    STATE.warned = set()
    # TensorFlow's C++ INFO/WARNING lines would break the one-line error promise; -v shows them (TensorFlow reads the
    # variable once, when it starts: lambda_export.loading.import_keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if output.verbose else "2")


def progress(message: str) -> None:
    """Show a progress line on a terminal (stderr), never when piped, with -q, or with --json."""
    if STATE.quiet or STATE.json:
        return
    if STATE.verbose or sys.stderr.isatty():
        click.echo(f"… {message}", err=True)


def warn(message: str) -> None:
    """Say a warning: one line on stderr, worded for the command line (:func:`~lambda_export.cli.options.cli_warning`:
    ``calibration=FILE.npz`` → ``--calibration FILE.npz``), once per invocation however often it is raised (the
    library repeats some in later results); nothing with --json, whose document carries them."""
    text = cli_warning(message)
    if STATE.json or text in STATE.warned:
        return
    STATE.warned.add(text)
    click.echo(f"warning: {text}", err=True)


def tensorflow_progress() -> None:
    """A progress line before TensorFlow starts (5–10 s), when it has not started yet."""
    if "tensorflow" not in sys.modules:
        progress("starting TensorFlow")


@contextlib.contextmanager
def timed(step: str, message: str | None = None) -> Iterator[None]:
    """Time a step of this invocation (``STATE.timings[step]``, the report's timings), after a progress line."""
    if message:
        progress(message)
    started = time.perf_counter()
    try:
        yield
    finally:
        STATE.timings[step] = STATE.timings.get(step, 0.0) + time.perf_counter() - started


# -- the group -------------------------------------------------------------------------------------------------------


class LazyGroup(click.Group):
    """A group whose verbs (``verbs``: name → :class:`Verb`) are imported when first asked for."""

    def __init__(self, *args: Any, verbs: Mapping[str, Verb] = VERBS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.verbs = verbs

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.verbs})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        verb = self.verbs.get(cmd_name)
        if verb is None:
            return super().get_command(ctx, cmd_name)
        return importlib.import_module(verb.module).command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The "Commands" section of ``--help``, as click writes it, from the table (no verb module is imported)."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            verb = self.verbs.get(name)
            if verb is None:
                command = super().get_command(ctx, name)
                if command is None or command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(limit)))
            else:
                rows.append((name, _short_help(verb.help, limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class DefaultVerbGroup(LazyGroup):
    """A group whose first positional argument, if not a verb, is the MODEL of the default `export` verb."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        verbs = set(self.list_commands(ctx))
        if args and args[0] not in verbs and not args[0].startswith("-"):
            args = ["export", *args]
        elif (
            args
            and args[0].startswith("-")
            and args[0] not in ("--help", "-h", "--version")
            and any(not a.startswith("-") and a not in verbs for a in args)
        ):
            args = ["export", *args]  # options before the model: `lambda-export --opset 13 model.h5`
        return super().parse_args(ctx, args)


@click.group(
    cls=DefaultVerbGroup,
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


# -- interruptions ---------------------------------------------------------------------------------------------------


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM (CI cancellation), so temporary files are removed on the way out."""


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: remember it, then raise at once (KeyboardInterrupt / _Terminated).

    An exception raised from a signal handler can land inside C++ code that calls back into Python (TensorFlow's
    nest utilities, tf.function tracing), which turns it into a SystemError and carries on. The flag survives that:
    :func:`checkpoint` raises again before the output is written and before the verdict.
    """
    STATE.interrupted = signum
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def checkpoint() -> None:
    """Raise a pending interruption that library code swallowed."""
    if STATE.interrupted == signal.SIGTERM:
        raise _Terminated()
    if STATE.interrupted is not None:
        raise KeyboardInterrupt()


# -- the entry point -------------------------------------------------------------------------------------------------


def _short_help(text: str, limit: int) -> str:
    """The first sentence of ``text``'s first paragraph, cut to ``limit`` characters with "..." (what Click shows for
    a command's short help; its own ``make_default_short_help`` is deprecated in Click 8.3 and goes in 9.0)."""
    words = text.split("\n\n")[0].split()
    if words and words[0] == "\b":
        words = words[1:]
    if not words:
        return ""
    total = 0
    for index, word in enumerate(words):
        total += len(word) + (index > 0)
        if total > limit:
            break
        if word.endswith("."):
            return " ".join(words[: index + 1])
        if total == limit and index != len(words) - 1:
            break
    else:
        return " ".join(words)
    total += len("...")
    while index > 0:
        total -= len(words[index]) + (index > 0)
        if total <= limit:
            break
        index -= 1
    return " ".join(words[:index]) + "..."


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn every failure into a one-line message and an exit code."""
    if argv is None:  # the real command line (not a test calling main in-process)
        with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
            signal.signal(signal.SIGTERM, _on_signal)
            signal.signal(signal.SIGINT, _on_signal)
    code = _run(argv)
    if argv is None:  # the verdict stands: a late Ctrl-C must not end in a traceback at exit
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.flush()
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _run(argv: list[str] | None) -> Any:
    """Run the group; return its exit code, or the exit code of the failure (reported as one line)."""
    try:
        code = cli.main(args=argv, prog_name="lambda-export", standalone_mode=False)
        checkpoint()
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
            _error(cli_message(exc), exc.exit_code)
            code = exc.exit_code
    except MemoryError:
        _error("out of memory", EXIT_CONVERSION)
        code = EXIT_CONVERSION
    except Exception as exc:  # anything unexpected: still one line, with a hint
        if STATE.interrupted is not None:
            code = _report_interruption(STATE.interrupted)
        elif isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
            # the base install has no ONNX Runtime (it comes from the cpu or the gpu extra): say how to get one
            _error(ONNXRUNTIME_MISSING, EXIT_USAGE)
            code = EXIT_USAGE
        else:
            _error(
                f"internal error: {described(exc, None)} (run with -v for the traceback and please report it)",
                EXIT_CONVERSION,
            )
            code = EXIT_CONVERSION
    return code


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
    """The one error line on stderr (a traceback before it with -v); with --json also the error verdict on stdout."""
    if STATE.verbose and sys.exc_info()[0] is not None:
        traceback.print_exc()
    message = " ".join(message.split())  # one line
    click.echo(f"lambda-export: error: {message}", err=True)
    if STATE.json:
        click.echo(json.dumps({"schema": RESULT_SCHEMA, "verdict": "error", "exit_code": code, "error": message}))
