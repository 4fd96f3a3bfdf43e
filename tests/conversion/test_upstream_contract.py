"""The contract of every private upstream symbol lambda_export uses (lambda_export/upstream.py), on the installed versions.

One check per entry of ``upstream.PRIVATE_SYMBOLS`` (a symbol added there without a check here fails), each testing
that the symbol exists with the signature and the behaviour the bridge relies on. An upgrade of tf2onnx, Keras or
TensorFlow that breaks one fails here, by name; tests/architecture/test_upstream_bridge.py keeps them out of every
other module.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import numpy as np
import pytest

from lambda_export import env, upstream
from lambda_export.errors import ConversionError


def _parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture(scope="module")
def converted():
    """A tf.function with a mixed-case einsum, an exact-gelu Erfc and an XLA-compiled inner function, converted by
    lambda_export's tf2onnx path (every tf2onnx symbol of the bridge on one small graph), with its input."""
    import tensorflow as tf

    from lambda_export.conversion import run_tf2onnx

    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)

    @tf.function(jit_compile=True)
    def compiled(x):
        return x * 2.0

    @tf.function
    def forward(x):
        y = tf.einsum("bIi,iK->bIK", x, tf.constant(weight))
        return tf.identity(compiled(tf.math.erfc(y)))

    signature = [tf.TensorSpec((None, 2, 3), tf.float32, name="x")]
    x = np.random.default_rng(1).standard_normal((2, 2, 3)).astype(np.float32)
    return run_tf2onnx(forward, signature, 17), x, forward(x).numpy()


@pytest.fixture(scope="module")
def converted_lookups():
    """A tf.function with a captured string→int64 and an int64→int64 table, a string compared with a captured token
    and an integer floor modulo of negative numbers, converted by lambda_export's tf2onnx path, and ONNX Runtime's
    outputs beside TensorFlow's."""
    import onnxruntime as ort
    import tensorflow as tf

    from lambda_export.conversion import run_tf2onnx

    words = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64)), -1
    )
    ids = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant([10, 20], tf.int64), tf.constant([5, 6], tf.int64)), 0
    )
    token = tf.constant("b")

    @tf.function
    def forward(text, numbers):
        return (
            tf.identity(words.lookup(text)),
            tf.identity(ids.lookup(numbers)),
            tf.identity(tf.equal(text, token)),
            tf.identity(tf.math.floormod(numbers, 3)),
        )

    signature = [tf.TensorSpec((None, 3), tf.string, name="text"), tf.TensorSpec((None, 3), tf.int64, name="numbers")]
    model = run_tf2onnx(forward, signature, 17)
    text = np.array([["a", "b", "z"]], dtype=object)
    numbers = np.array([[10, -7, 20]], dtype=np.int64)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in session.get_inputs()], [text, numbers], strict=True))
    expected = [t.numpy() for t in forward(tf.constant(text.astype(str)), tf.constant(numbers))]
    return model, session.run(None, feed), expected


def _table_lookup_handler(converted, converted_lookups) -> None:
    model, got, expected = converted_lookups
    ops = {node.op_type for node in model.graph.node}
    assert {"CategoryMapper", "LabelEncoder"} <= ops and not any(op.startswith("LookupTable") for op in ops)
    assert [i.name for i in model.graph.input] == ["text", "numbers"]  # no table handle left as an input
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def _rewriter_api(converted, converted_lookups) -> None:
    model, got, expected = converted_lookups
    ops = [node.op_type for node in model.graph.node]
    assert "Mod" in ops and "Div" not in ops  # integer_floor_mod
    np.testing.assert_array_equal(got[2], expected[2])  # string_equality_rewriter: no cast of strings to numbers
    np.testing.assert_array_equal(got[3], expected[3])  # floor modulo of −7 by 3 is 2


def _ops_replacer(converted) -> None:
    """FNet's token mixing (Complex → FFT2D → Real) through lambda_export's tf2onnx path: the plan saw the graph, its
    ONNX nodes replaced the TensorFlow ones, and ONNX Runtime computes TensorFlow's numbers."""
    import onnxruntime as ort
    import tensorflow as tf

    from lambda_export.conversion import run_tf2onnx

    @tf.function
    def forward(x):
        return tf.identity(tf.math.real(tf.signal.fft2d(tf.complex(x, tf.zeros_like(x)))))

    model = run_tf2onnx(forward, [tf.TensorSpec((None, 4, 6), tf.float32, name="x")], 17)
    ops = {node.op_type for node in model.graph.node}
    assert "MatMul" in ops and not ops & {"Complex", "FFT2D", "Real"}
    x = np.random.default_rng(2).standard_normal((2, 4, 6)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], forward(x).numpy(), atol=1e-5)


def _keras_history(converted, converted_lookups) -> None:
    import keras

    unnamed, named = keras.Input((2,)), keras.Input((2,), name="features")
    assert upstream.input_layer_name(unnamed).startswith("input_layer") and unnamed.name.startswith("keras_tensor")
    assert upstream.input_layer_name(named) == "features"
    assert upstream.input_layer_name(keras.layers.Dense(1)(unnamed)) is None


def _convert_common(converted) -> None:
    from tf2onnx import convert, tfonnx

    # _convert_common takes these itself and passes the rest (**kwargs) to process_tf_graph
    assert {"name", "custom_op_handlers", "optimizers", "kwargs"} <= set(_parameters(convert._convert_common))
    assert {"continue_on_error", "opset", "custom_rewriter", "input_names", "output_names", "tensors_to_rename"} <= set(
        _parameters(tfonnx.process_tf_graph)
    )
    model, x, expected = converted
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-5)


def _tensor_renames(converted) -> None:
    from tf2onnx import convert

    assert _parameters(convert.tensor_names_from_structed)[:3] == ["concrete_func", "input_names", "output_names"]
    assert len(converted[0].graph.output) == 1


def _from_function(converted) -> None:
    from tf2onnx import tf_loader

    assert _parameters(tf_loader.from_function)[:3] == ["func", "input_names", "output_names"]
    assert "large_model" in _parameters(tf_loader.from_function)


def _tf_optimize(converted) -> None:
    from tf2onnx import tf_loader

    assert _parameters(tf_loader.tf_optimize)[:3] == ["input_names", "output_names", "graph_def"]


def _get_optimizers(converted) -> None:
    factories = upstream.default_optimizers()
    assert {"einsum_optimizer", "merge_duplication"} <= set(factories)
    assert all(hasattr(factory(), "optimize") for factory in factories.values())


def _merge_duplicates(converted) -> None:
    from tf2onnx.optimizer.merge_duplicated_nodes_optimizer import MergeDuplicatedNodesOptimizer

    method = MergeDuplicatedNodesOptimizer._merge_nodes_that_are_duplicated
    assert _parameters(method) == ["self", "nodes_to_process", "graph"]
    assert isinstance(upstream.stable_merge_duplicates(str), MergeDuplicatedNodesOptimizer)


def _graph_api(converted) -> None:
    from tf2onnx.graph import Graph

    for name in ("get_dtype", "make_const", "insert_new_node_on_output"):
        assert callable(getattr(Graph, name))
    ops = [node.op_type for node in converted[0].graph.node]
    assert "Erf" in ops and "Sub" in ops and "Erfc" not in ops  # the Erfc handler ran


def _node_api(converted) -> None:
    from tf2onnx.graph import Node

    assert isinstance(Node.type, property) and Node.type.fset is not None and callable(Node.get_attr_value)
    assert "attr" in inspect.getsource(Node.__init__)
    einsums = [node for node in converted[0].graph.node if node.op_type == "Einsum"]
    for node in einsums:  # relabelled before tf2onnx lower-cased it: no diagonal
        equation = next(a.s.decode() for a in node.attribute if a.name == "equation")
        inputs = equation.split("->")[0].split(",")
        assert all(len(set(term)) == len(term) for term in inputs), equation


def _utils(converted) -> None:
    from onnx import TensorProto
    from tf2onnx import utils

    assert utils.map_onnx_to_numpy_type(TensorProto.FLOAT) == np.float32
    assert utils.make_name("a") != utils.make_name("a")


def _keras_model():
    import keras

    class Embedder(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.table = keras.layers.Embedding(7, 2)

        def call(self, ids):
            return self.table(ids)

    ids = keras.Input((3,), dtype="int32", name="ids")
    inner_in = keras.Input((3,), dtype="int32")
    inner = keras.Model(inner_in, Embedder()(inner_in), name="inner")
    mask = keras.Input((3,), name="mask")
    out = keras.layers.Multiply()([inner(ids), keras.layers.Reshape((3, 1))(mask)])
    return keras.Model([ids, mask], out), inner


def _operations(converted) -> None:
    model, inner = _keras_model()
    operations = upstream.functional_operations(model)
    assert inner in operations and upstream.is_functional(inner)
    assert not upstream.is_functional(operations[-1]) and upstream.functional_operations(object()) == []


def _inbound_nodes(converted) -> None:
    import keras

    _, inner = _keras_model()
    (call,) = list(upstream.inbound_calls(inner))
    args, kwargs, outputs = call
    assert isinstance(args[0], keras.KerasTensor) and isinstance(kwargs, dict)
    assert isinstance(outputs[0], keras.KerasTensor)


def _node_arguments(converted) -> None:
    from lambda_export.loading import input_value_ranges

    model, _ = _keras_model()
    assert input_value_ranges(model) == {0: (0, 7)}  # through the nested model and the custom layer's Embedding


def _flatten_layers(converted) -> None:
    _, inner = _keras_model()
    assert "Embedding" in {type(layer).__name__ for layer in upstream.sublayers(inner.layers[-1])}


def _nodes_by_depth(converted) -> None:
    import keras

    model, _ = _keras_model()
    assert isinstance(upstream.nodes_by_depth(model), dict)
    sequential = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert isinstance(upstream.nodes_by_depth(sequential), dict)


def _xla_attrs(converted) -> None:
    ops = {node.op_type for node in converted[0].graph.node}
    assert "StatefulPartitionedCall" not in ops and "Mul" in ops  # the XLA-compiled function was inlined


CONTRACTS: dict[str, Callable[..., None]] = {
    "tf2onnx.convert._convert_common": _convert_common,
    "tf2onnx.convert.tensor_names_from_structed": _tensor_renames,
    "tf2onnx.tf_loader.from_function": _from_function,
    "tf2onnx.tf_loader.tf_optimize": _tf_optimize,
    "tf2onnx.optimizer._get_optimizers": _get_optimizers,
    "tf2onnx.optimizer.merge_duplicated_nodes_optimizer.MergeDuplicatedNodesOptimizer"
    "._merge_nodes_that_are_duplicated": _merge_duplicates,
    "tf2onnx.graph.Graph.get_dtype/make_const/insert_new_node_on_output": _graph_api,
    "tf2onnx.graph.Node.type/get_attr_value/attr": _node_api,
    "tf2onnx.utils.make_name/map_onnx_to_numpy_type": _utils,
    "tf2onnx.graph.Graph.remove_node/make_node/get_shape/find_output_consumers, Node.inputs/is_const/"
    "get_tensor_value": _table_lookup_handler,
    "tf2onnx.graph.Graph.make_node(skip_conversion)/get_nodes/remove_node, Node.output_shapes/output_dtypes": (
        _rewriter_api
    ),
    "tf2onnx.graph.Graph.get_nodes/make_const/make_node(skip_conversion)/remove_node/outputs, Node.type/input/"
    "output/output_dtypes/output_shapes/get_tensor_value": _ops_replacer,
    "keras KerasTensor._keras_history.operation": _keras_history,
    "keras Functional._operations": _operations,
    "keras Operation._inbound_nodes": _inbound_nodes,
    "keras Node.arguments.args/kwargs, Node.outputs": _node_arguments,
    "keras Layer._flatten_layers": _flatten_layers,
    "keras Functional._nodes_by_depth, Sequential._functional": _nodes_by_depth,
    "tensorflow FunctionDef attrs _XlaMustCompile/_noinline": _xla_attrs,
}


def test_every_private_symbol_has_a_contract() -> None:
    assert set(CONTRACTS) == set(upstream.PRIVATE_SYMBOLS)


@pytest.mark.parametrize("symbol", sorted(upstream.PRIVATE_SYMBOLS))
def test_contract(symbol: str, converted, request) -> None:
    check = CONTRACTS[symbol]
    if "converted_lookups" in inspect.signature(check).parameters:
        check(converted, request.getfixturevalue("converted_lookups"))
    else:
        check(converted)


def test_installed_versions_are_the_tested_ones() -> None:
    assert upstream.check_versions(warn=False) == ()


def test_another_version_warns_naming_what_was_tested(monkeypatch) -> None:
    real = env.distribution_version
    monkeypatch.setattr(env, "distribution_version", lambda *n: "1.18.0" if n == ("tf2onnx",) else real(*n))
    with pytest.warns(
        upstream.UpstreamVersionWarning, match=r"tf2onnx 1\.18\.0 is installed.*tested with tf2onnx 1\.17\.x"
    ):
        upstream.check_versions()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(upstream.check_versions(warn=False)) == 1


def test_a_missing_symbol_is_a_conversion_error_naming_it() -> None:
    import tf2onnx

    with pytest.raises(ConversionError, match=r"tf2onnx\.convert\._gone is missing .* tested with tf2onnx 1\.17\.x"):
        upstream._symbol(tf2onnx.convert, "_gone", "tf2onnx.convert")
