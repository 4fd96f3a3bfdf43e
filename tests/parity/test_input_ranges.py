"""Random parity inputs stay within what each model input may take: ids within the vocabulary of every Embedding they
feed, masks within {0, 1} (``LoadedModel.input_ranges`` → ``make_inputs(ranges=...)``).

TensorFlow raises on an id outside an Embedding's vocabulary (ONNX Runtime's Gather too), so one range for every
integer input would either break the small vocabulary or leave most of the large one unexercised.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lambda_export.conversion import convert
from lambda_export.loading import input_value_ranges, load_model
from lambda_export.parity import DISTRIBUTIONS, make_inputs, verify


def _two_vocabularies() -> keras.Model:
    """Two integer inputs, Embeddings of 7 and 1000 ids; the large one read through a slice and a concatenation."""
    keras.utils.set_random_seed(11)
    small = keras.Input((6,), dtype="int32", name="small_ids")
    large = keras.Input((6,), dtype="int32", name="large_ids")
    a = keras.layers.Embedding(7, 8, name="small_table")(small)
    b = keras.layers.Embedding(1000, 8, name="large_table")(keras.layers.Concatenate()([large[:, :3], large[:, 3:]]))
    x = keras.layers.Concatenate()([a, b])
    return keras.Model([small, large], keras.layers.Dense(3)(keras.layers.Flatten()(x)), name="two_vocabularies")


def _masked() -> keras.Model:
    """Token ids, a boolean attention mask and an integer pooling mask (``mask=``)."""
    keras.utils.set_random_seed(12)
    ids = keras.Input((5,), dtype="int32", name="ids")
    attention = keras.Input((5,), dtype="bool", name="attention")
    keep = keras.Input((5,), dtype="int32", name="keep")
    x = keras.layers.Embedding(40, 8)(ids)
    pair = keras.ops.logical_and(keras.ops.expand_dims(attention, 1), keras.ops.expand_dims(attention, 2))
    x = keras.layers.MultiHeadAttention(2, 4)(x, x, attention_mask=pair)
    pooled = keras.layers.GlobalAveragePooling1D()(x, mask=keep)
    return keras.Model([ids, attention, keep], keras.layers.Dense(2)(pooled), name="masked")


def test_ranges_follow_each_input_to_its_embeddings_and_masks():
    assert load_model(_two_vocabularies()).input_ranges == {"small_ids": (0, 7), "large_ids": (0, 1000)}
    assert load_model(_masked()).input_ranges == {"ids": (0, 40), "attention": (0, 2), "keep": (0, 2)}


def test_nested_model_and_unconstrained_inputs():
    inner_ids = keras.Input((4,), dtype="int32")
    inner = keras.Model(inner_ids, keras.layers.Embedding(9, 2)(inner_ids), name="inner")
    ids = keras.Input((4,), dtype="int32", name="ids")
    count = keras.Input((4,), dtype="int32", name="count")  # arithmetic only: no range
    y = keras.layers.Flatten()(inner(ids))
    model = keras.Model([ids, count], [y, keras.ops.cast(count * 2, "float32")])
    assert input_value_ranges(model) == {0: (0, 9)}


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_generated_values_stay_in_each_range(distribution: str):
    loaded = load_model(_two_vocabularies())
    seen = {name: set() for name in loaded.input_ranges}
    for seed in range(20):
        feed = make_inputs(loaded.inputs, 16, distribution, seed, ranges=loaded.input_ranges)
        for name, (low, high) in loaded.input_ranges.items():
            values = feed[name]
            assert values.dtype == np.int32
            assert low <= values.min() and values.max() < high, (name, values.min(), values.max())
            seen[name].update(np.unique(values).tolist())
    if distribution != "zeros":
        assert seen["small_ids"] == set(range(7))  # the whole small vocabulary
        assert max(seen["large_ids"]) > 900  # not the small one's range (nor the default [0, 100))
    masked = load_model(_masked())
    feed = make_inputs(masked.inputs, 8, distribution, 3, ranges=masked.input_ranges)
    assert feed["attention"].dtype == np.bool_
    assert set(np.unique(feed["keep"]).tolist()) <= {0, 1}
    assert feed["ids"].max() < 40


@pytest.mark.parametrize("build", [_two_vocabularies, _masked])
def test_parity_passes_with_per_input_ranges(build):
    model = build()
    result = convert(model)
    report = verify(model, result.model, loaded=result.loaded, batch_sizes=(1, 4))
    assert report.results and report.passed, report.to_dict()["results"][:3]
