"""Exceptions of `lambda_export`, each carrying the exit code the command line uses for it.

Exit codes (documented in ``lambda-export --help`` and the README):
0 parity holds everywhere it ran; 1 parity failed; 2 bad usage or unreadable input; 3 conversion failed;
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

__all__ = [
    "EXIT_CONVERSION",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARITY_FAILED",
    "EXIT_USAGE",
    "ConversionError",
    "InputError",
    "LambdaExportError",
    "ProviderUnavailableError",
    "UnsafeModelError",
    "described",
    "first_line",
]

EXIT_OK = 0
EXIT_PARITY_FAILED = 1
EXIT_USAGE = 2
EXIT_CONVERSION = 3
EXIT_INTERRUPTED = 130


class LambdaExportError(Exception):
    """Base class: a problem the user can fix, reported as one line with ``exit_code``.

    Messages name the Python API's arguments (``opset``, ``input_shapes``, ``overwrite=True``); ``argument`` holds the
    one the message names (or a tuple of them), exactly as written in it, so that the command line can say
    ``--opset`` instead (:func:`lambda_export.cli.options.cli_message`).
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str = "", *, argument: str | tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class InputError(LambdaExportError):
    """Bad usage or an unreadable / invalid input file (exit code 2)."""

    exit_code = EXIT_USAGE


class UnsafeModelError(InputError):
    """The model would execute code on load (a ``Lambda`` layer) and ``trust_code`` was not given (exit code 2)."""


class ConversionError(LambdaExportError):
    """TensorFlow → ONNX conversion or a graph rewrite failed, or produced an invalid graph (exit code 3)."""

    exit_code = EXIT_CONVERSION


class ProviderUnavailableError(InputError):
    """An ONNX Runtime execution provider was asked for but is not available (exit code 2)."""


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters; None: all of it), or its type name when it
    has no message: how an exception from a library becomes part of a one-line error."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line if limit is None else line[:limit]


def described(exc: BaseException, limit: int | None = 300) -> str:
    """``TypeName: first line of the message`` (just ``TypeName`` when there is no message): an unexpected exception
    from a library, in one line."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc, limit)}" if str(exc).strip() else name
