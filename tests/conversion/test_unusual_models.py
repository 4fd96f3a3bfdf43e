"""Valid but unusual Keras models that must convert: Python API with ONNX Runtime parity, and some through the CLI.

Multiple inputs and outputs, integer token ids into an ``Embedding`` then 1D lambda layers, a lambda layer inside a
nested functional sub-model, a ``Sequential`` model, channels-first data, and a batch size fixed by the model
(``keras.Input(batch_size=2)``). Every model is saved as ``.keras``, converted from the file, and ONNX Runtime's
outputs are compared with TensorFlow's (the in-memory model): max |onnx − tf| ≤ 1e-4. Weights (and batch-norm
statistics) are randomised so that the comparison is not between near-zero outputs.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lambda_export.conversion import convert
from lambda_layers import LambdaNetwork1DConv, LambdaNetwork1Dense, LambdaNetwork2DConv

ATOL = 1e-4
VOCABULARY = 50
EXE = Path(sys.executable).parent / "lambda-export"


def _lambda2d(name: str, **kwargs: Any) -> LambdaNetwork2DConv:
    return LambdaNetwork2DConv(8, key_depth=4, heads=2, receptive_kernel=3, name=name, **kwargs)


def multi_io() -> keras.Model:
    image = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((5,), name="meta")
    features = keras.layers.GlobalAveragePooling2D(name="pool")(_lambda2d("lam")(image))
    joined = keras.layers.Concatenate(name="join")([features, keras.layers.Dense(4, name="meta_dense")(meta)])
    logits = keras.layers.Dense(3, name="logits")(joined)
    score = keras.layers.Dense(1, name="score")(joined)
    return keras.Model([image, meta], [logits, score], name="multi_io")


def int_tokens() -> keras.Model:
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCABULARY, 16, name="embed")(tokens)
    x = LambdaNetwork1DConv(16, key_depth=4, heads=4, receptive_kernel=3, name="lam_conv")(x)
    x = LambdaNetwork1Dense(16, key_depth=4, heads=4, relative=True, name="lam_dense")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(tokens, keras.layers.Dense(4, name="logits")(x), name="int_tokens")


def nested() -> keras.Model:
    inner_input = keras.Input((8, 8, 8), name="inner_input")
    inner = keras.Model(inner_input, _lambda2d("inner_lam")(inner_input), name="inner")
    images = keras.Input((8, 8, 3), name="images")
    x = inner(keras.layers.Conv2D(8, 1, name="stem")(images))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(images, keras.layers.Dense(3, name="logits")(x), name="nested")


def sequential() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 3), name="images"),
            _lambda2d("lam"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="sequential",
    )


def channels_first() -> keras.Model:
    images = keras.Input((3, 8, 8), name="nchw")
    x = _lambda2d("lam", data_format="channels_first")(images)
    x = LambdaNetwork2DConv(8, key_depth=4, heads=2, relative=True, data_format="channels_first", name="lam_rel")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="pool")(x)
    return keras.Model(images, keras.layers.Dense(3, name="logits")(x), name="channels_first")


def fixed_batch() -> keras.Model:
    images = keras.Input((8, 8, 3), batch_size=2, name="images")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(_lambda2d("lam")(images))
    return keras.Model(images, keras.layers.Dense(3, name="logits")(x), name="fixed_batch")


BUILDERS: dict[str, Callable[[], keras.Model]] = {
    fn.__name__: fn for fn in (multi_io, int_tokens, nested, sequential, channels_first, fixed_batch)
}
CLI_MODELS = ["multi_io", "int_tokens", "fixed_batch"]


def _randomize(model: keras.Model, seed: int) -> None:
    """Weights ~ N(0, 0.5²), batch-norm variances in [0.5, 1.5]: outputs of order 1, not the near-zero defaults."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        variance = "variance" in variable.path
        value = rng.uniform(0.5, 1.5, shape) if variance else rng.normal(0.0, 0.5, shape)
        variable.assign(value.astype(variable.dtype))


def _inputs(model: keras.Model, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in model.inputs:
        shape = tuple(batch if d is None else int(d) for d in tensor.shape)
        name = tensor.name
        if "int" in str(tensor.dtype):
            feeds[name] = rng.integers(0, VOCABULARY, shape).astype(str(tensor.dtype))
        else:
            feeds[name] = rng.standard_normal(shape).astype("float32")
    return feeds


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[keras.Model, Path]]:
    folder = tmp_path_factory.mktemp("unusual")
    out = {}
    for index, (name, build) in enumerate(BUILDERS.items()):
        keras.utils.set_random_seed(index)
        model = build()
        _randomize(model, seed=100 + index)
        path = folder / f"{name}.keras"
        model.save(path)
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", list(BUILDERS))
def test_python_api_conversion_matches_tensorflow(name: str, saved: dict, tmp_path: Path) -> None:
    model, path = saved[name]
    result = convert(str(path), tmp_path / f"{name}.onnx")
    onnx_model = onnx.load(str(tmp_path / f"{name}.onnx"))
    onnx.checker.check_model(onnx_model, full_check=True)
    assert [i.name for i in onnx_model.graph.input] == result.input_names
    assert [o.name for o in onnx_model.graph.output] == result.output_names
    assert len(result.inputs) == len(model.inputs) and len(result.outputs) == len(model.outputs)

    session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    batches = [2] if name == "fixed_batch" else [1, 3]
    for batch in batches:
        feeds = _inputs(model, batch, seed=batch)
        by_position = list(feeds.values())
        onnx_feeds = dict(zip(result.input_names, by_position, strict=True))
        got = session.run(None, onnx_feeds)
        expected = keras.tree.flatten(model(by_position[0] if len(by_position) == 1 else by_position, training=False))
        assert len(got) == len(expected)
        for output, reference, candidate in zip(result.output_names, expected, got, strict=True):
            reference = np.asarray(reference)
            assert candidate.shape == reference.shape, output
            assert np.abs(reference).max() > 1e-2, f"{output}: outputs too close to zero for a meaningful check"
            error = float(np.abs(candidate - reference).max())
            assert error <= ATOL, f"{name}/{output} batch {batch}: max |onnx - tf| = {error:.2e}"


def test_shapes_and_dtypes_survive(saved: dict, tmp_path: Path) -> None:
    """What makes each model unusual is visible in the exported graph."""

    def io(name: str) -> tuple[list, list]:
        result = convert(str(saved[name][1]))
        return result.inputs, result.outputs

    inputs, outputs = io("multi_io")
    assert [i.name for i in inputs] == ["image", "meta"] and len(outputs) == 2
    inputs, _ = io("int_tokens")
    assert inputs[0].dtype == "int32" and inputs[0].shape == (None, 12)
    inputs, _ = io("channels_first")
    assert inputs[0].shape == (None, 3, 8, 8)
    inputs, _ = io("fixed_batch")
    assert inputs[0].shape == (2, 8, 8, 3)


# -- through the command line (subprocess, parity checked by the tool itself) ----------------------------------------


@pytest.fixture(scope="module")
def cli_runs(saved: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, concurrent.futures.Future]:
    folder = tmp_path_factory.mktemp("unusual_cli")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def run(name: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        out = folder / f"{name}.onnx"
        argv = [str(EXE), str(saved[name][1]), "-o", str(out), "--json", "--samples", "1"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env), out

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(run, name) for name in CLI_MODELS}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", CLI_MODELS)
def test_cli_exports_and_verifies(name: str, cli_runs: dict) -> None:
    proc, out = cli_runs[name].result(timeout=600)
    where = f"\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, where
    assert "Traceback" not in proc.stderr, where
    assert all(line.startswith("warning: ") for line in proc.stderr.splitlines() if line.strip()), where
    result = json.loads(proc.stdout)
    assert result["verdict"] == "pass" and result["exit_code"] == 0, where
    assert result["parity"]["passed"] is True
    assert out.exists() and onnx.load(str(out)).graph.node


# -- the model's own input names, and why a file does not load -------------------------------------------------------


class HubStyleBackbone(keras.Model):
    """Built the way keras-hub builds its backbones (DeiT, ViT...): an unnamed ``keras.Input`` inside the constructor
    of a ``keras.Model`` subclass that calls the functional constructor. The input's layer is ``input_layer``, its
    tensor ``keras_tensor``: the export used to be named after the tensor."""

    def __init__(self, **kwargs: Any) -> None:
        images = keras.Input(shape=(8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="patches")(images)
        super().__init__(inputs=images, outputs=keras.layers.GlobalAveragePooling2D(name="pool")(x), **kwargs)


@pytest.mark.parametrize("style", ["hub_backbone", "functional"])
def test_unnamed_inputs_keep_the_input_layer_name(style: str) -> None:
    if style == "hub_backbone":
        model = HubStyleBackbone()
    else:
        images = keras.Input((8, 8, 3))
        model = keras.Model(images, keras.layers.Dense(2, name="dense")(images))
    (input_layer,) = [layer for layer in model.layers if type(layer).__name__ == "InputLayer"]
    assert input_layer.name.startswith("input_layer") and model.inputs[0].name != input_layer.name
    result = convert(model)
    assert result.input_names == [input_layer.name]
    assert [value.name for value in result.model.graph.input] == [input_layer.name]


def test_a_file_keras_cannot_reload_says_why(tmp_path: Path) -> None:
    """A ``.keras`` file whose config says 128 filters and whose weights hold 1280: Keras' first line only introduces
    the cause ("... Example error message for object <Conv2D name=top_conv, built=True>:"); the error keeps it."""
    import zipfile

    from lambda_export.errors import InputError
    from lambda_export.loading import load_model

    images = keras.Input((4, 4, 40), name="images")
    good, bad = tmp_path / "good.keras", tmp_path / "bad.keras"
    keras.Model(images, keras.layers.Conv2D(1280, 1, name="top_conv")(images)).save(good)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"filters": 1280', b'"filters": 128')
            target.writestr(item, data)
    with pytest.raises(InputError) as caught:
        load_model(bad)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500, message
    assert "Example error message for object <Conv2D name=top_conv, built=True>: — " in message, message
    cause = message.split(" — ", 1)[1]  # Keras' next line: the cause, in the words of the installed Keras
    assert (
        "variable.shape=(1, 1, 40, 128), Received: value.shape=(1, 1, 40, 1280)" in cause  # Keras 3.15.1
        or "Layer 'top_conv' expected 2 variables, but received 0 variables during loading" in cause  # 3.15.0
    ), message
