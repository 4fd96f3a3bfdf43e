"""TensorFlow float32's own error as the relative rule's baseline: the median of three draws per input set.

A trained classifier's softmax saturates on most N(0, 1) inputs; the few items that do not carry the whole error, so
TensorFlow's error on one set is one heavy-tailed draw (5.5e-7 to 1.7e-5 on the same inputs jittered by 1e-3). A
lucky-small draw failed a right export of the newcomer guide's model (docs/guide.md) on the default inputs (1.23×
allowed on one machine, 0.89× on another); the median of the set's own draw and two jittered ones (0.53× here) does
not, and a weight off by 1e-3 still fails far beyond the limit.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import sabotage  # tests/parity/sabotage.py (pytest puts each test folder on sys.path)

from lambda_export.conversion import convert
from lambda_export.loading import load_model
from lambda_export.parity import verification, verify
from lambda_export.parity.verification import JITTER_DRAWS, _baselines, _InputSet, _jitter_draws


def _set(distribution: str, draws: list[float]) -> _InputSet:
    """A set whose TensorFlow errors (max) on its own inputs and on the jittered ones are ``draws``."""
    truth = [np.zeros(4)]
    item = _InputSet(1, distribution, 0, 0, {"x": np.zeros((1, 4), np.float32)}, [np.full(4, draws[0])], truth)
    item.jitters = [([np.zeros(4)], [np.full(4, d)]) for d in draws[1:]]
    return item


def test_the_baseline_is_the_median_of_three_draws_and_the_largest_over_its_kind():
    lucky = _set("normal", [1e-7, 2e-6, 1.7e-5])  # a lucky-small own draw: the median is 2e-6
    other = _set("normal", [1e-6, 3e-6, 4e-6])
    uniform = _set("uniform", [1e-9, 1e-9, 5e-9])
    _baselines([lucky, other, uniform])
    assert lucky.baseline == other.baseline == [(3e-6, 3e-6)]  # the larger median of the two normal sets
    assert uniform.baseline == [(1e-9, 1e-9)]  # not mixed with the normal inputs' errors
    alone = _set("normal", [5e-7])  # no jittered draw (no float input): its own draw
    _baselines([alone])
    assert alone.baseline == [(5e-7, 5e-7)]


def test_jittered_draws_keep_the_operating_point_and_integer_inputs():
    inputs = keras.Input((6,), name="x")
    tokens = keras.Input((3,), dtype="int32", name="ids")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(10, 2)(tokens))
    model = keras.Model([inputs, tokens], keras.layers.Dense(3)(keras.layers.Concatenate()([inputs, embedded])))
    path_free = load_model(model)
    clone, reason = verification.float64_model(model)
    assert clone is not None, reason
    feed = {"x": np.ones((2, 6), np.float32), "ids": np.arange(6, dtype=np.int32).reshape(2, 3)}
    item = _InputSet(2, "normal", 0, 7, feed)
    draws = _jitter_draws(clone, path_free, item)
    again = _jitter_draws(clone, path_free, item)
    assert len(draws) == JITTER_DRAWS
    for (truth, reference), (truth2, _) in zip(draws, again, strict=True):
        assert truth[0].dtype == np.float64 and reference[0].dtype == np.float32
        np.testing.assert_array_equal(truth[0], truth2[0])  # seeded by the set's seed
    x_effect = np.abs(draws[0][0][0] - clone(feed)[0])
    assert 0 < x_effect.max() < 0.05  # moved by ~1e-3 of the inputs, not redrawn
    ids_only = _InputSet(2, "normal", 0, 7, {"ids": feed["ids"]})
    model_ids = keras.Model(tokens, embedded)
    clone_ids, _ = verification.float64_model(model_ids)
    assert _jitter_draws(clone_ids, load_model(model_ids), ids_only) == []  # nothing to jitter


def _guide_classifier(path) -> str:
    """The newcomer guide's local-lambda image classifier, trained as the guide trains it (3 epochs of 32 steps)."""
    from lambda_layers import LambdaNetwork2DConv
    from lambda_layers.models import make_demo_data

    keras.utils.set_random_seed(0)
    LambdaNetwork2DConv(kernel_out=32, key_depth=8, heads=4, intra_depth=1, receptive_kernel=5)(
        np.zeros((2, 8, 8, 16), "float32")
    )
    inputs = keras.Input((16, 16, 3), name="images")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    x = LambdaNetwork2DConv(kernel_out=32, key_depth=8, heads=4, intra_depth=1, receptive_kernel=5, name="lambda")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="local")
    x_train, y_train = make_demo_data(1024, seed=0, image_size=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, batch_size=32, epochs=3, verbose=0)
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = _guide_classifier(tmp_path_factory.mktemp("guide") / "image_model.h5")
    loaded = load_model(path)
    return loaded, convert(path).model


def test_a_trained_classifier_passes_on_the_default_inputs(classifier):
    loaded, exported = classifier
    report = verify(None, exported, loaded=loaded, providers=["cpu"], locate="never")
    assert report.passed, [(r.batch_size, r.distribution, r.metrics.truth) for r in report.results]
    assert all(row.metrics.rule == "relative" for row in report.results)
    worst = max(row.metrics.truth.excess for row in report.results)
    assert worst < 0.8, worst  # measured 0.53 (0.89 with one draw of TensorFlow's error)


@pytest.mark.parametrize("layer", ["stem", "lambda"])
def test_a_weight_off_by_1e3_in_the_trained_classifier_still_fails(classifier, layer):
    loaded, exported = classifier
    broken = sabotage.scale_weight(exported, layer, 1.001)
    report = verify(None, broken, loaded=loaded, providers=["cpu"], locate="never")
    assert not report.passed
    worst = max(row.metrics.truth.excess for row in report.results)
    assert worst > 10, worst  # measured 424 (stem) and 94 (lambda); 707 and 154 with one draw
