"""The same saved model gives a byte-identical .onnx file from two fresh processes.

tf2onnx emits the same graph in a node order that changes from one process to the next (and keeps whichever of two
merged duplicate nodes came first); before the canonical order (``graph.canonical_order``) and the stable duplicate
merge, a MobileNetV2 or an LSTM exported twice gave two different files (41 of a 50-model corpus differed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import onnx
import onnx.numpy_helper

from lambda_export.graph import canonical_order
from lambda_export.lean import tensor_digest

_EXPORT = """
import sys
from lambda_export import convert
for source in sys.argv[2:]:
    for optimize in ("speed", "size"):
        convert(source, f"{source}.{optimize}.{sys.argv[1]}.onnx", optimize=optimize)
"""


def _models() -> dict[str, keras.Model]:
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 8), name="x")
    lstm = keras.Model(x, keras.layers.Dense(4)(keras.layers.LSTM(16)(x)))
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35)
    return {"lstm": lstm, "mobilenetv2": mobilenet}


def test_two_processes_write_the_same_bytes(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    sources = []
    for name, model in _models().items():
        sources.append(tmp_path / f"{name}.keras")
        model.save(sources[-1])
    for run in ("first", "second"):
        subprocess.run([sys.executable, "-c", _EXPORT, run, *map(str, sources)], check=True, env=env, timeout=600)
    for source in sources:
        for optimize in ("speed", "size"):
            first, second = (Path(f"{source}.{optimize}.{run}.onnx").read_bytes() for run in ("first", "second"))
            assert first == second, f"{source.name} ({optimize}): the two exports differ"


def _initializer_graph(names: tuple[str, str], reverse: bool) -> onnx.ModelProto:
    """Two MatMuls reading the same input with two different weights (initializers named ``names``), nodes in either
    order: the same computation whatever the names and the node order."""
    import numpy as np

    weights = [np.full((2, 2), 1.0, np.float32), np.full((2, 2), 2.0, np.float32)]
    inits = [onnx.numpy_helper.from_array(w, name) for w, name in zip(weights, names, strict=True)]
    nodes = [onnx.helper.make_node("MatMul", ["x", name], [f"y{i}"], name=f"mm{i}") for i, name in enumerate(names)]
    add = onnx.helper.make_node("Add", ["y0", "y1"], ["z"], name="add")
    graph = onnx.helper.make_graph(
        [*(reversed(nodes) if reverse else nodes), add],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 2])],
        inits,
    )
    return onnx.helper.make_model(graph)


def test_tensor_digest_ignores_the_name_and_its_length() -> None:
    """The digest of a tensor is of its content alone. It used to remove the name's bytes from the serialization and
    keep their length prefix, so two equal weights named "w_1" and "w_12" (Keras' process-global counters) hashed
    differently and the canonical node order changed between two conversions in one process."""
    import numpy as np

    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    short, long = onnx.numpy_helper.from_array(data, "w_1"), onnx.numpy_helper.from_array(data, "w_12345")
    assert tensor_digest(short) == tensor_digest(long)
    assert tensor_digest(short) != tensor_digest(onnx.numpy_helper.from_array(data + 1, "w_1"))
    # a name whose bytes also occur in the data must not be cut out of the data
    raw = onnx.numpy_helper.from_array(np.frombuffer(b"abcdabcd", np.uint8), "abcd")
    other = onnx.numpy_helper.from_array(np.frombuffer(b"abcdxxxx", np.uint8), "abcd")
    assert tensor_digest(raw) != tensor_digest(other)


def test_canonical_order_depends_on_what_the_graph_computes_not_on_names_or_order() -> None:
    orders = []
    for names in (("w_1", "v_1"), ("w_123", "v_1"), ("w_1", "v_12345")):
        for reverse in (False, True):
            model = _initializer_graph(names, reverse)
            canonical_order(model.graph)
            by_weight = {init.name: float(onnx.numpy_helper.to_array(init).flat[0]) for init in model.graph.initializer}
            orders.append([by_weight.get(node.input[1]) for node in model.graph.node])
    assert all(order == orders[0] for order in orders), orders
