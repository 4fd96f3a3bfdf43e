"""String inputs in the parity check (parity/inputs.py, parity/reference.py): random draws from the vocabulary of the
StringLookup layers an input feeds plus unknown tokens (random short strings, with a note, where none is found), user
string arrays checked and passed to ONNX Runtime as object arrays of str, and a float64 reference that feeds the
model's own lookup tables and leaves strings alone."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lambda_export.errors import InputError
from lambda_export.graph import TensorInfo
from lambda_export.parity.inputs import (
    Vocabulary,
    check_arrays,
    describe_inputs,
    make_inputs,
    string_vocabularies,
    vocabulary_notes,
)
from lambda_export.parity.reference import float64_model

WORDS = ["a", "b", "c", "d"]
TOKENS = TensorInfo("tokens", (None, 6), "string")


def _lookup_model(**kwargs) -> keras.Model:
    inputs = keras.Input((6,), dtype="string", name="tokens")
    return keras.Model(inputs, keras.layers.StringLookup(vocabulary=WORDS, **kwargs)(inputs))


def test_random_strings_come_from_the_vocabulary_and_unknown_tokens() -> None:
    vocabulary = string_vocabularies(_lookup_model(mask_token="[M]"), [TOKENS])["tokens"]
    assert set(vocabulary.tokens) == {"[M]", "[UNK]", *WORDS} and vocabulary.unknown
    feed = make_inputs([TOKENS], 50, "normal", 0, vocabularies={"tokens": vocabulary})["tokens"]
    assert feed.dtype == object and feed.shape == (50, 6) and all(isinstance(v, str) for v in feed.flat)
    known = np.isin(feed, list(vocabulary.tokens))
    assert 0.5 < known.mean() < 0.95 and set(feed[known]) >= set(WORDS)  # mostly known, some unknown
    again = make_inputs([TOKENS], 50, "normal", 0, vocabularies={"tokens": vocabulary})["tokens"]
    assert (again == feed).all()  # seeded
    zeros = make_inputs([TOKENS], 2, "zeros", 0, vocabularies={"tokens": vocabulary})["tokens"]
    assert len(set(zeros.flat)) == 1


def test_no_unknown_tokens_for_a_lookup_that_refuses_them() -> None:
    model = _lookup_model(num_oov_indices=0)
    vocabulary = string_vocabularies(model, [TOKENS])["tokens"]
    assert vocabulary.tokens == tuple(WORDS) and not vocabulary.unknown
    feed = make_inputs([TOKENS], 40, "uniform", 1, vocabularies={"tokens": vocabulary})["tokens"]
    assert np.isin(feed, WORDS).all()
    model(feed)  # Keras raises on an unknown token here


def test_each_string_input_gets_the_vocabulary_it_reaches() -> None:
    """Through a layer that keeps strings (Reshape) and into a nested model; the other input its own lookup."""
    words = keras.Input((4,), dtype="string", name="words")
    tags = keras.Input((2,), dtype="string", name="tags")
    inner_input = keras.Input((4,), dtype="string")
    inner = keras.Model(inner_input, keras.layers.StringLookup(vocabulary=["x", "y"])(inner_input))
    reshaped = keras.layers.Reshape((4,))(words)
    tagged = keras.layers.StringLookup(vocabulary=["p", "q", "r"])(tags)
    model = keras.Model([words, tags], [inner(reshaped), tagged])
    infos = [TensorInfo("words", (None, 4), "string"), TensorInfo("tags", (None, 2), "string")]
    found = string_vocabularies(model, infos)
    assert set(found["words"].tokens) == {"[UNK]", "x", "y"}
    assert set(found["tags"].tokens) == {"[UNK]", "p", "q", "r"}


def test_without_a_vocabulary_random_short_strings_and_a_note() -> None:
    inputs = keras.Input((3,), dtype="string", name="text")
    model = keras.Model(inputs, keras.layers.Hashing(num_bins=7)(inputs))
    info = TensorInfo("text", (None, 3), "string")
    found = string_vocabularies(model, [info])
    assert found == {"text": Vocabulary()}
    (note,) = vocabulary_notes(found)
    assert "'text'" in note and "random short strings" in note and "--inputs" in note
    feed = make_inputs([info], 4, "normal", 0, vocabularies=found)["text"]
    assert feed.dtype == object and all(isinstance(v, str) and 1 <= len(v) <= 8 for v in feed.flat)
    assert "'text' (None×3 string)" in describe_inputs([info])


@pytest.mark.parametrize(
    "array",
    [
        np.array([["a", "b", "zz", "[M]", "", "d"]]),  # <U
        np.array([[b"a", b"b", b"zz", b"[M]", b"", b"d"]]),  # S
        np.array([["a", b"b", "zz", "[M]", "", "d"]], dtype=object),
    ],
    ids=["unicode", "bytes", "object"],
)
def test_user_string_arrays_are_accepted_as_object_arrays_of_str(array: np.ndarray) -> None:
    (out,) = check_arrays({"tokens": array}, [TOKENS], "inputs").values()
    assert out.dtype == object and out.tolist() == [["a", "b", "zz", "[M]", "", "d"]]


def test_user_string_arrays_are_checked() -> None:
    floats = TensorInfo("x", (None, 6), "float32")
    with pytest.raises(InputError, match=r"input 'x' has dtype <U1; the model expects float32"):
        check_arrays({"x": np.array([list("abcdef")])}, [floats], "inputs")
    with pytest.raises(InputError, match=r"input 'tokens' has dtype int64; the model expects strings"):
        check_arrays({"tokens": np.zeros((1, 6), np.int64)}, [TOKENS], "inputs")
    with pytest.raises(InputError, match=r"holds a int at item 2; the model expects strings"):
        check_arrays({"tokens": np.array([["a", "b", 3, "c", "d", "e"]], dtype=object)}, [TOKENS], "inputs")
    with pytest.raises(InputError, match=r"input 'tokens' has shape \(6,\)"):
        check_arrays({"tokens": np.array(list("abcdef"))}, [TOKENS], "inputs")


def test_the_float64_reference_feeds_the_tables_and_leaves_strings_alone() -> None:
    """StringLookup → Embedding → Dense: the lookup's table (a captured resource the frozen graph leaves as a
    placeholder) is fed at every call, the strings pass unchanged, the float part computes in float64."""
    inputs = keras.Input((6,), dtype="string", name="tokens")
    ids = keras.layers.StringLookup(vocabulary=WORDS, mask_token="[M]")(inputs)
    vectors = keras.layers.Embedding(7, 5)(ids)
    model = keras.Model(inputs, keras.layers.Dense(3)(vectors))
    clone, reason = float64_model(model)
    assert reason is None and clone is not None
    feed = np.array([["a", "b", "zz", "[M]", "", "d"], ["c", "q", "a", "a", "b", "[M]"]], dtype=object)
    (wide,) = clone(feed)
    narrow = np.asarray(model(feed))
    assert wide.dtype == np.float64 and wide.shape == narrow.shape
    assert 0 < np.abs(wide - narrow).max() < 1e-5  # float64, and the same function (the same ids looked up)
