"""Upstream internals live in lambda_export/upstream.py only, so that an upgrade of tf2onnx or Keras fails in one place.

Read from the source with ``ast`` (nothing is imported). Outside the bridge, no module of the package may

* read an attribute with a leading underscore from anything imported from tf2onnx, Keras or TensorFlow
  (``optimizer._get_optimizers``, ``keras.src``-style ``keras._tf_keras``),
* import a private name from them, or import an internal module (``keras.src``, any tf2onnx module but the public
  ``tf2onnx.convert``: ``tf_loader``, ``optimizer``, ``utils``, ``graph``... whose API tf2onnx does not promise),
* name a private attribute in ``getattr``/``hasattr``/``setattr``/``delattr`` (how a Keras model's ``_operations`` was
  read), which no attribute scan sees.

The bridge's symbols are checked on the installed versions by tests/conversion/test_upstream_contract.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lambda_export", "lambda_layers")
BRIDGE = Path("lambda_export/upstream.py")
UPSTREAM = ("tf2onnx", "keras", "tensorflow")
PUBLIC_TF2ONNX_MODULES = ("tf2onnx", "tf2onnx.convert")
INTERNAL_PREFIXES = ("keras.src", "keras._", "tensorflow.python", "tensorflow._")

KNOWN_OUTSIDE: dict[str, set[str]] = {}
"""Offences known and waiting to move into the bridge (file → offences); the test fails once one is gone, too."""


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _upstream_names(tree: ast.AST) -> dict[str, str]:
    """Local name → the upstream module (or module.name) it is bound to by an import in this file."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in UPSTREAM:  # `import a.b` binds `a`; `import a.b as c` binds `c` to `a.b`
                    names[alias.asname or top] = alias.name if alias.asname else top
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] in UPSTREAM
        ):
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def offences(path: Path) -> set[str]:
    """What ``path`` does with upstream internals (see the module docstring), one short string per kind of offence."""
    tree = ast.parse(path.read_text(), str(path))
    upstream = _upstream_names(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _root(node) in upstream:
            found.add(f"{ast.unparse(node)} ({upstream[_root(node)]})")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                module = alias.name
                if module.startswith(INTERNAL_PREFIXES) or (
                    module.startswith("tf2onnx.") and module not in PUBLIC_TF2ONNX_MODULES
                ):
                    found.add(f"import {module}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top not in UPSTREAM:
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                internal = full.startswith(INTERNAL_PREFIXES) or node.module.startswith(INTERNAL_PREFIXES)
                if top == "tf2onnx" and full not in PUBLIC_TF2ONNX_MODULES and node.module != "tf2onnx.convert":
                    internal = True
                if internal or _private(alias.name):
                    found.add(f"from {node.module} import {alias.name}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.add(f"{node.func.id} {node.args[1].value}")
    return found


def _sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def test_upstream_internals_are_used_in_the_bridge_only() -> None:
    report = []
    for path in _sources():
        relative = path.relative_to(ROOT)
        if relative == BRIDGE:
            continue
        unexpected = offences(path) - KNOWN_OUTSIDE.get(relative.as_posix(), set())
        report += [f"{relative}: {offence}" for offence in sorted(unexpected)]
    assert not report, (
        "upstream internals outside lambda_export/upstream.py (move them there, with a contract in "
        "tests/conversion/test_upstream_contract.py):\n" + "\n".join(report)
    )


def test_known_offences_outside_the_bridge_are_still_there() -> None:
    """An entry of KNOWN_OUTSIDE that was fixed must leave the list (so that it cannot come back unnoticed)."""
    stale = [
        f"{name}: {offence}"
        for name, expected in KNOWN_OUTSIDE.items()
        for offence in sorted(expected - offences(ROOT / name))
    ]
    assert not stale, "fixed, remove from KNOWN_OUTSIDE:\n" + "\n".join(stale)


def test_the_scan_sees_each_kind_of_offence(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import keras\nfrom tf2onnx import optimizer, convert\nfrom tf2onnx.tf_loader import from_function\n"
        "import keras.src.ops\nfrom keras import _private\n"
        "optimizer._get_optimizers()\nconvert._convert_common(1)\nkeras.Model()._operations\n"
        "getattr(model, '_inbound_nodes', None)\nconvert.from_function(1)\nobject()._fine\n"
    )
    assert offences(sample) == {
        "from tf2onnx import optimizer",
        "from tf2onnx.tf_loader import from_function",
        "import keras.src.ops",
        "from keras import _private",
        "optimizer._get_optimizers (tf2onnx.optimizer)",
        "convert._convert_common (tf2onnx.convert)",
        "keras.Model()._operations (keras)",
        "getattr _inbound_nodes",
    }
