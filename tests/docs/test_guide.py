"""Every code block of docs/guide.md runs, in order, and the README's Python snippets run (issue "Every line true").

How a fenced block is treated, by its info string:

* ``python``: run with ``exec`` in one namespace shared by all the guide's Python blocks, in a temporary folder;
* ``sh``: every line is a ``lambda-export`` command, run with this environment's console script in the same folder
  (it must exit 0); a line that is not a ``lambda-export`` command fails the test;
* ``sh norun`` (commands that need other tools: npm, cmake, a server) and ``text`` (output, listings): never run;
* anything else fails the test, so no block is skipped silently.

The README's ``python`` blocks run the same way, each README in its own temporary folder and namespace.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide.md"
README = ROOT / "README.md"
EXE = Path(sys.executable).parent / "lambda-export"

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = {"text", "sh norun"}


@dataclass
class Block:
    info: str
    body: str
    line: int  # 1-based line of the opening fence

    def where(self, path: Path) -> str:
        return f"{path.relative_to(ROOT)}:{self.line} ({self.info})"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    return [Block(m["info"].strip(), m["body"], text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def commands(block: Block) -> list[list[str]]:
    """The ``lambda-export`` command lines of a ``sh`` block (comments and blank lines left out)."""
    lines = [shlex.split(line, comments=True) for line in block.body.splitlines()]
    return [argv for argv in lines if argv]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{EXE.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_blocks(path: Path, chosen: list[Block], folder: Path) -> dict[str, float]:
    """Run ``chosen`` in order in ``folder``, one namespace for the Python blocks; seconds per block."""
    namespace: dict[str, object] = {"__name__": "__guide__"}
    seconds: dict[str, float] = {}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for block in chosen:
            started = time.perf_counter()
            if block.info == "python":
                code = compile(block.body, block.where(path), "exec")
                exec(code, namespace)
            else:
                for argv in commands(block):
                    done = subprocess.run(
                        [str(EXE), *argv[1:]], cwd=folder, env=_env(), capture_output=True, text=True, timeout=120
                    )
                    assert done.returncode == 0, (
                        f"{block.where(path)}: `{shlex.join(argv)}` exited {done.returncode}\n"
                        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
                    )
            seconds[block.where(path)] = time.perf_counter() - started
    finally:
        os.chdir(cwd)
    return seconds


def test_guide_blocks_are_all_marked() -> None:
    """Each block is run (python, sh of lambda-export commands) or explicitly not run (text, sh norun)."""
    found = blocks(GUIDE)
    assert found, "docs/guide.md has no code blocks"
    for block in found:
        assert block.info in {"python", "sh", *NOT_RUN}, f"{block.where(GUIDE)}: mark it python, sh, sh norun or text"
        if block.info == "sh":
            for argv in commands(block):
                assert argv[0] == "lambda-export", (
                    f"{block.where(GUIDE)}: `{shlex.join(argv)}` is not a lambda-export command; mark the block "
                    "`sh norun` if it must not run"
                )
    assert sum(block.info == "python" for block in found) >= 5
    assert sum(block.info == "sh" for block in found) >= 1


def test_guide_runs(tmp_path: Path) -> None:
    """The guide, followed from top to bottom in an empty folder, works."""
    chosen = [block for block in blocks(GUIDE) if block.info in {"python", "sh"}]
    seconds = run_blocks(GUIDE, chosen, tmp_path)
    print("\n".join(f"{value:6.1f} s  {where}" for where, value in seconds.items()))
    for name in ("image_model.keras", "image_model.h5", "image_model.onnx", "sequence_model.onnx", "parity.html"):
        assert (tmp_path / name).is_file(), f"the guide promises {name}"


def test_readme_python_blocks_run(tmp_path: Path) -> None:
    """The README's Python snippets run as written, in an empty folder."""
    chosen = [block for block in blocks(README) if block.info == "python"]
    assert chosen, "README.md has no python block"
    run_blocks(README, chosen, tmp_path)
