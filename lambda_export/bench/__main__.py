"""``python -m lambda_export.bench _worker JSON``: the fresh subprocess of the memory and export-cost measurements.

Started by :mod:`lambda_export.bench.memory`; not a user command (``lambda-export bench MODEL`` is).
"""

from __future__ import annotations

import sys

from lambda_export.bench.harness import worker_main

if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "_worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit("usage: python -m lambda_export.bench _worker JSON (internal); use `lambda-export bench MODEL`")
