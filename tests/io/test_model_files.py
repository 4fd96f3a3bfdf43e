"""lambda_export.io is the one place where a model becomes bytes or a file.

The walk reads the library's source with ``ast`` (nothing is imported) and refuses, outside ``io.py`` and ``lean.py``:
``x.SerializeToString()``, ``onnx.save(...)`` / ``onnx.save_model(...)``, ``write_model(...)`` and ``lean.serialize``
(called or imported). A call that must stay is allow-listed below with its reason. The other tests pin what the io
functions write: protobuf's own bytes, one threshold for external data, and the file sizes they report.
"""

from __future__ import annotations

import ast
import io as stdio
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lambda_export import io
from lambda_export.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "lambda_export"
HOMES = {"lambda_export/io.py", "lambda_export/lean.py"}  # lean does the tensor-by-tensor work io hands it

# (file, what) -> why the call stays where it is (none today; a new entry needs its reason)
ALLOWED: dict[tuple[str, str], str] = {}

LEAN_WRITERS = {"write_model", "serialize"}


def _offences(path: Path) -> list[tuple[str, int]]:
    """(what, line) for every way ``path`` turns a model into bytes or a file by itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "lambda_export.lean":
            found += [
                (f"from lambda_export.lean import {a.name}", node.lineno) for a in node.names if a.name in LEAN_WRITERS
            ]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if func.attr == "SerializeToString":
                found.append(("SerializeToString(", node.lineno))
            elif owner == "onnx" and func.attr in ("save", "save_model"):
                found.append((f"onnx.{func.attr}(", node.lineno))
            elif owner == "lean" and func.attr in LEAN_WRITERS:
                found.append((f"lean.{func.attr}(", node.lineno))
            elif func.attr == "write_model":
                found.append(("write_model(", node.lineno))
        elif isinstance(func, ast.Name) and func.id in ("write_model", "save_model"):
            found.append((f"{func.id}(", node.lineno))
    return found


def test_only_io_turns_a_model_into_bytes_or_a_file() -> None:
    offenders, used = [], set()
    for path in sorted(LIBRARY.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in HOMES:
            continue
        for what, line in _offences(path):
            if (relative, what) in ALLOWED:
                used.add((relative, what))
                continue
            offenders.append(f"{relative}:{line}: {what} (use lambda_export.io.model_bytes / write_model_file)")
    assert not offenders, "models serialized outside lambda_export/io.py:\n" + "\n".join(offenders)
    assert used == set(ALLOWED), f"allow-list entries with nothing left to allow: {set(ALLOWED) - used}"


def test_the_walk_sees_each_way() -> None:
    source = (
        "import onnx\nfrom lambda_export.lean import serialize\nfrom lambda_export import lean\n"
        "m.SerializeToString()\nonnx.save(m, 'a')\nonnx.save_model(m, 'a')\nwrite_model(m, f)\nlean.serialize(m)\n"
        "lean.write_model(m, f)\n"
    )
    path = ROOT / "tests" / "io" / "_probe_source.txt"
    try:
        path.write_text(source)
        found = [what for what, _ in _offences(path)]
    finally:
        path.unlink()
    assert found.count("SerializeToString(") == 1 and "onnx.save(" in found and "onnx.save_model(" in found
    assert "write_model(" in found and "lean.serialize(" in found and "lean.write_model(" in found
    assert "from lambda_export.lean import serialize" in found


def _model(columns: int = 32) -> onnx.ModelProto:
    weight = np.arange(64 * columns, dtype=np.float32).reshape(64, columns)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, columns])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.ones(columns, np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_bytes_are_protobufs_own() -> None:
    model = _model()
    assert io.model_bytes(model) == model.SerializeToString()


def test_one_threshold_decides_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    path = tmp_path / "m.onnx"
    size = io.write_model_file(model, path)
    assert path.read_bytes() == model.SerializeToString() and size == path.stat().st_size
    assert not (tmp_path / "m.onnx.data").exists()
    # the same model over the (lowered) limit: bytes are refused, a file gets its weights beside it
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    assert io.too_large_for_protobuf(model)
    with pytest.raises(InputError, match="larger than 2 GiB"):
        io.model_bytes(model)
    big = tmp_path / "big.onnx"
    size = io.write_model_file(model, big)
    data = tmp_path / "big.onnx.data"
    assert size == big.stat().st_size + data.stat().st_size and data.stat().st_size == 64 * 32 * 4
    assert io.load_onnx(big).graph.initializer[0].raw_data == model.graph.initializer[0].raw_data


def test_write_model_file_replaces_and_reports_external_data(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    size = io.write_model_file(_model(), path, external_data=True)
    assert size == path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size
    buffer = stdio.BytesIO(path.read_bytes())
    assert onnx.load(buffer, load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temporary files left
