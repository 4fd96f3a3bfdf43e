"""Test helpers for the command line, shared by tests/cli and tests/quantization (importable from any test: tests/ is
on sys.path, as the folder of the root conftest.py)."""

from __future__ import annotations

import pytest

from lambda_export import cli as cli_module


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the console-script entry point in-process; return (exit code, stdout, stderr)."""
    cli_module.STATE.verbose, cli_module.STATE.quiet, cli_module.STATE.json = 0, False, False
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code), captured.out, captured.err
