"""Keras lookup layers (``StringLookup``, ``IntegerLookup``) and their neighbours (``CategoryEncoding``, ``Hashing``).

Before lambda_export resolved tables itself, a ``StringLookup`` model exited 3 with an internal error (``zip()
argument 2 is shorter than argument 1``): tf2onnx left the captured table's handle as a second graph input. Now a
string↔int64 table becomes ``CategoryMapper``, an int64→int64 one ``LabelEncoder`` (``ai.onnx.ml``), and ONNX
Runtime's outputs equal Keras' exactly (integers: max |ORT − Keras| = 0), out-of-vocabulary values and the mask
token included. What has no ONNX equivalent (FarmHash of strings: ``Hashing``, ``StringLookup(num_oov_indices=2)``)
and a table the exporter cannot read are one-line ConversionErrors naming the layer or the op.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import run_main

from lambda_export.conversion import _rename_io, convert
from lambda_export.errors import ConversionError
from lambda_export.graph import TensorInfo

EXE = Path(sys.executable).parent / "lambda-export"
WORDS = ["a", "b", "c", "d"]
IDS = [10, 20, 30, 40]
# in-vocabulary values, unknown ones (OOV), the empty string / a negative id, and the mask token ("[M]" / 0)
WORD_BATCH = np.array([["a", "b", "zz", "[M]", "", "d"], ["c", "q", "a", "a", "b", "[M]"]], dtype=object)
ID_BATCH = np.array([[10, 20, 7, 0, 40, -3], [30, 5, 10, 10, -8, 0]], dtype=np.int64)


def _model(layer: keras.layers.Layer, dtype: str, width: int = 6) -> keras.Model:
    inputs = keras.Input((width,), dtype=dtype, name="tokens")
    return keras.Model(inputs, layer(inputs), name="lookup_model")


def _in_vocabulary(batch: np.ndarray, vocabulary: list, mask: object) -> np.ndarray:
    """``batch`` with every out-of-vocabulary value replaced (num_oov_indices=0 refuses them)."""
    keep = np.isin(batch, [*vocabulary, mask])
    return np.where(keep, batch, vocabulary[0]).astype(batch.dtype)


def _ort_outputs(result, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {result.input_names[0]: feed})
    return output


def _max_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())


LOOKUP_CASES = [
    # (kind, num_oov_indices, mask token?, output_mode)
    ("string", 1, False, "int"),
    ("string", 0, False, "int"),
    ("string", 1, True, "int"),
    ("string", 0, True, "multi_hot"),
    ("string", 1, True, "count"),
    ("string", 1, False, "one_hot"),
    ("integer", 1, False, "int"),
    ("integer", 0, True, "int"),
    ("integer", 2, False, "int"),
    ("integer", 2, True, "multi_hot"),
    ("integer", 1, True, "count"),
    ("integer", 2, False, "one_hot"),
]


@pytest.mark.parametrize(("kind", "oov", "masked", "mode"), LOOKUP_CASES, ids=lambda v: str(v))
def test_lookup_layers_match_keras(kind: str, oov: int, masked: bool, mode: str) -> None:
    width = 1 if mode == "one_hot" else 6
    if kind == "string":
        mask = "[M]" if masked else None
        layer = keras.layers.StringLookup(vocabulary=WORDS, num_oov_indices=oov, mask_token=mask, output_mode=mode)
        batch, vocabulary, op = WORD_BATCH, WORDS, "CategoryMapper"
    else:
        mask = 0 if masked else None
        layer = keras.layers.IntegerLookup(vocabulary=IDS, num_oov_indices=oov, mask_token=mask, output_mode=mode)
        batch, vocabulary, op = ID_BATCH, IDS, "LabelEncoder"
    model = _model(layer, "string" if kind == "string" else "int64", width)
    if oov == 0:
        batch = _in_vocabulary(batch, vocabulary, mask)
    feed = batch[:, :width]
    result = convert(model)

    ops = {node.op_type for node in result.model.graph.node}
    assert op in ops and not any(o.startswith("LookupTable") or o == "HashTableV2" for o in ops)
    assert result.input_names == ["tokens"] and len(result.model.graph.input) == 1
    onnx.checker.check_model(result.model, full_check=True)
    assert _max_error(_ort_outputs(result, feed), np.asarray(model(feed))) == 0.0


def test_inverted_lookups_map_indices_back_to_tokens() -> None:
    indices = np.array([[0, 1, 2, 3, 4, 9]], dtype=np.int64)
    words = _model(keras.layers.StringLookup(vocabulary=WORDS, invert=True), "int64")
    result = convert(words)
    assert [n.op_type for n in result.model.graph.node] == ["CategoryMapper"]
    want = np.vectorize(lambda v: v.decode())(np.asarray(words(indices)))
    assert (_ort_outputs(result, indices).astype(str) == want.astype(str)).all()

    ids = _model(keras.layers.IntegerLookup(vocabulary=IDS, invert=True), "int64")
    result = convert(ids)
    assert _max_error(_ort_outputs(result, indices), np.asarray(ids(indices))) == 0.0


@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
def test_category_encoding_matches_keras(mode: str) -> None:
    width = 1 if mode == "one_hot" else 6
    model = _model(keras.layers.CategoryEncoding(num_tokens=50, output_mode=mode), "int64", width)
    feed = (np.abs(ID_BATCH) % 50)[:, :width]
    result = convert(model)
    assert _max_error(_ort_outputs(result, feed), np.asarray(model(feed))) == 0.0


def test_the_exported_lookup_is_deterministic() -> None:
    """The table's keys in sorted order, not the hash table's order: the same attributes from two conversions."""

    def mappers(model: keras.Model) -> list[dict[str, list]]:
        nodes = convert(model).model.graph.node
        return [
            {a.name: list(a.strings or a.ints) or [a.i] for a in node.attribute}
            for node in nodes
            if node.op_type == "CategoryMapper"
        ]

    model = _model(keras.layers.StringLookup(vocabulary=["d", "b", "c", "a"], mask_token="[M]"), "string")
    first = mappers(model)
    assert first == mappers(model)
    table, mask = sorted(first, key=lambda attributes: -len(attributes["cats_strings"]))
    assert table["cats_strings"] == [b"a", b"b", b"c", b"d"] and table["cats_int64s"] == [5, 3, 4, 2]
    assert mask["cats_strings"] == [b"[M]"] and mask["cats_int64s"] == [1]


@pytest.mark.parametrize(
    ("layer", "dtype"),
    [
        (lambda: keras.layers.Hashing(num_bins=5, name="hash_me"), "string"),
        (lambda: keras.layers.StringLookup(vocabulary=WORDS, num_oov_indices=2, name="two_oov"), "string"),
    ],
    ids=["Hashing", "StringLookup-two-oov"],
)
def test_string_hashing_is_a_one_line_conversion_error(layer, dtype: str) -> None:
    built = layer()
    with pytest.raises(ConversionError) as caught:
        convert(_model(built, dtype))
    message = str(caught.value)
    assert "\n" not in message and "FarmHash64" in message and built.name in message


@keras.saving.register_keras_serializable(package="test_lookups")
class Int32Table(keras.layers.Layer):
    """A custom layer with an int64→int32 table: ONNX's ai.onnx.ml maps int64, float and string values only."""

    def build(self, input_shape):
        import tensorflow as tf

        keys, values = tf.constant([3, 5], tf.int64), tf.constant([1, 2], tf.int32)
        self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), -1)

    def call(self, inputs):
        return self.table.lookup(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def test_an_unconvertible_table_names_its_layer() -> None:
    model = _model(Int32Table(name="int32_table"), "int64")
    with pytest.raises(ConversionError, match=r"^layer 'int32_table': cannot convert its lookup table: a int64→int32"):
        convert(model)


def test_extra_graph_inputs_are_named_not_an_internal_error() -> None:
    """What the StringLookup export used to hit: a table handle left as a second graph input."""
    x = onnx.helper.make_tensor_value_info("x:0", onnx.TensorProto.STRING, [None, 3])
    handle = onnx.helper.make_tensor_value_info("lookup/LookupTableFindV2/table_handle:0", onnx.TensorProto.INT64, [])
    y = onnx.helper.make_tensor_value_info("y:0", onnx.TensorProto.STRING, [None, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x:0"], ["y:0"])], "g", [x, handle], [y])
    model = onnx.helper.make_model(graph)
    with pytest.raises(ConversionError, match=r"extra graph input\(s\): lookup/LookupTableFindV2/table_handle:0"):
        _rename_io(model, [TensorInfo("words", (None, 3), "string")], [TensorInfo("ids", (None, 3), "int64")])


def test_cli_exports_a_string_lookup_model(tmp_path: Path) -> None:
    """The reported command: exit 3 with an internal error before; now the file is written (here --skip-verify; the
    parity check of string inputs: test_cli_verifies_a_lookup_model)."""
    keras_path, out = tmp_path / "words.keras", tmp_path / "words.onnx"
    _model(keras.layers.StringLookup(vocabulary=WORDS, mask_token="[M]"), "string").save(keras_path)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    argv = [str(EXE), str(keras_path), "-o", str(out), "--skip-verify"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["tokens"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"tokens": WORD_BATCH})
    assert got.tolist() == [[2, 3, 1, 0, 1, 5], [4, 1, 2, 2, 3, 0]]


@pytest.mark.parametrize(
    ("kind", "oov"), [("string", 1), ("string", 0), ("integer", 1)], ids=["string", "string-no-oov", "integer"]
)
def test_cli_verifies_a_lookup_model(kind: str, oov: int, tmp_path: Path, capsys) -> None:
    """Without --skip-verify: random string inputs come from the layer's vocabulary (plus unknown tokens where the
    layer takes them); the integer output is judged on the relative rule against the float64 reference (the lookup
    tables fed to it), where TensorFlow's own error is 0: any wrong id fails."""
    keras_path, out = tmp_path / f"{kind}.keras", tmp_path / f"{kind}.onnx"
    if kind == "string":
        layer = keras.layers.StringLookup(vocabulary=WORDS, mask_token="[M]", num_oov_indices=oov)
    else:
        layer = keras.layers.IntegerLookup(vocabulary=IDS, mask_token=0, num_oov_indices=oov)
    _model(layer, "string" if kind == "string" else "int64").save(keras_path)
    code, stdout, stderr = run_main([str(keras_path), "-o", str(out), "--providers", "cpu"], capsys)
    assert code == 0, stderr
    assert "PASS" in stdout and "FAIL" not in stdout and "relative rule" in stdout
    assert "internal error" not in stderr and "no float64 reference" not in stdout


def test_cli_verifies_a_string_lookup_model_on_user_strings(tmp_path: Path, capsys) -> None:
    keras_path, out = tmp_path / "words.keras", tmp_path / "words.onnx"
    _model(keras.layers.StringLookup(vocabulary=WORDS, mask_token="[M]"), "string").save(keras_path)
    samples = tmp_path / "words.npz"
    np.savez(samples, tokens=WORD_BATCH.astype(str))  # <U: .npz files hold no object arrays
    argv = [str(keras_path), "-o", str(out), "--providers", "cpu", "--inputs", str(samples)]
    code, stdout, stderr = run_main(argv, capsys)
    assert code == 0, stderr
    assert "PASS" in stdout and "your inputs" in stdout and "FAIL" not in stdout
