"""Shared pytest fixtures and the policy for optional runtimes.

Tests that need an optional runtime (OpenCV 4.6, OpenVINO, Node.js, Chromium, a GPU...) call :func:`require`. On a
developer's machine a missing runtime skips the test with a reason that says how to install it; in CI
(``LAMBDA_EXPORT_REQUIRE_EXAMPLES=1``, set by ``.ci/run``) it fails the test instead, so nothing is silently skipped.
CUDA tests are the exception: CI machines have no GPU, so they always skip with a reason.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # deterministic TF CPU kernels for the numerical tests

import pytest

STRICT = os.environ.get("LAMBDA_EXPORT_REQUIRE_EXAMPLES") == "1"


def require(condition: bool, what: str, how: str) -> None:
    """Skip (developer machine) or fail (CI) when an optional runtime is missing.

    Args:
        condition: True when the runtime is available.
        what: the missing thing, e.g. "Debian python3-opencv (OpenCV 4.6)".
        how: the install command, e.g. "apt-get install -y python3-opencv".
    """
    if condition:
        return
    message = f"{what} is not available; install it with: {how}"
    if STRICT:
        pytest.fail(f"required in CI (LAMBDA_EXPORT_REQUIRE_EXAMPLES=1): {message}", pytrace=False)
    pytest.skip(message)
