"""The float64 reference is checked on a probe input with the shapes the parity check will run on.

A model whose input leaves a sequence length unknown and that needs a long one (keras-hub's Moonshine: a Conv1D front
end with a 127-wide kernel and stride 64) cannot run on the old probe, which set every unknown dim to 2: Keras refused
("the convolution operation resulted in an empty output") and the model fell back to the absolute rule.
"""

from __future__ import annotations

import keras
import numpy as np

from lambda_export import convert, verify


def _long_kernel_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, 1), name="audio")
    x = keras.layers.Conv1D(4, 127, strides=64, activation="tanh", name="front")(inputs)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def test_an_unknown_length_is_probed_at_the_inputs_length():
    model = _long_kernel_model()
    exported = convert(model, input_shapes={"audio": (None, 1024, 1)}).model
    audio = np.random.default_rng(0).standard_normal((2, 1024, 1)).astype(np.float32)
    report = verify(model, exported, inputs={"audio": audio}, providers=["cpu"])
    assert report.float64_available, report.float64_reason  # was: "... resulted in an empty output" (length 2)
    assert report.rule == "relative" and report.passed
    assert all(row.metrics.rule == "relative" for row in report.results)


def test_a_model_that_cannot_run_in_float64_says_why_in_one_clean_line():
    """Keras' own message, not the last line of its "Arguments received" list, and without its colour codes."""
    from lambda_export.parity.reference import float64_model

    model = _long_kernel_model()
    clone, reason = float64_model(model, {"audio": (2, 16, 1)})  # too short for the 127-wide kernel
    assert clone is None and reason.startswith("the model's graph cannot run in float64: ")
    assert "127" in reason and "•" not in reason and "\x1b" not in reason and "\n" not in reason


def test_the_probe_calls_the_model_as_the_parity_check_does_so_the_graph_is_traced_once():
    """A model built with ``inputs=[x]`` (as keras.applications builds theirs) is called by the parity check with the
    bare array (``keras_feed``); a probe called with ``[array]`` traced, froze and widened the whole float64 graph a
    second time at the first parity run (ResNet50: twice the time and memory of the float64 reference)."""
    import warnings

    from lambda_export.loading import load_model
    from lambda_export.parity.reference import float64_model, run_float64

    keras.utils.set_random_seed(4)
    images = keras.Input((8, 8, 3), name="images")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(images)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model([images], keras.layers.Dense(3, name="logits")(x))
    loaded = load_model(model)
    feed = {"images": np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "the structure of `inputs` doesn't match" ([x] vs x), both ways
        clone, reason = float64_model(model, {"images": (2, 8, 8, 3)})
        assert clone is not None, reason
        run_float64(clone, loaded, feed)
        run_float64(clone, loaded, {"images": np.concatenate([feed["images"]] * 2)})  # another batch: same graph
    assert len(clone._functions) == 1
