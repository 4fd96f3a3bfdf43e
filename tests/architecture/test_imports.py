"""The package's import structure: no import cycles, no private name imported from another module.

Both are read from the source with ``ast`` (nothing is imported), over every import statement, the ones inside
functions included: a lazy import that closes a cycle is still a cycle in the design. A package's ``__init__`` is its
own node; importing ``a.b.c`` counts as an edge to ``a.b.c`` only (not to the packages around it), as Python resolves
a submodule without running a cycle through its parents.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lambda_export", "lambda_layers")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import of one of our modules in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names if alias.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                # `from package import submodule` is an edge to the submodule, not a name
                out.append(
                    (submodule, None, node.lineno) if submodule in modules else (node.module, alias.name, node.lineno)
                )
    return out


def test_no_private_name_is_imported_from_another_module() -> None:
    modules = _modules()
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name} from {target}"
        for source, path in modules.items()
        for target, name, line in _imports(path, modules)
        if name and name.startswith("_") and not name.startswith("__") and target != source
    ]
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {
        source: sorted({target for target, _, _ in _imports(path, modules) if target in modules and target != source})
        for source, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(cycle) for cycle in cycles)


def test_the_walk_sees_imports() -> None:
    """The checks above would pass vacuously if the walk found nothing: it must see known edges."""
    modules = _modules()
    edges = {(s, t) for s, p in modules.items() for t, _, _ in _imports(p, modules)}
    assert ("lambda_export.conversion", "lambda_export.passes.pipelines") in edges
    assert ("lambda_export.cli.bench", "lambda_export.cli.options") in edges
    assert len(modules) > 30


def test_public_api_and_version() -> None:
    """The names the README shows import from the top-level package; the version is written once."""
    import tomllib

    import lambda_export
    from lambda_export import ConvertResult, ParityConfig, ParityReport, convert, verify

    assert callable(convert) and callable(verify)
    assert {ConvertResult.__name__, ParityConfig.__name__, ParityReport.__name__} <= set(lambda_export.__all__)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert lambda_export.__version__ == project["version"]
