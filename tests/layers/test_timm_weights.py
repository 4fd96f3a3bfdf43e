"""from_timm's checkpoint handling and the byobnet models, with NumPy and safetensors only (no torch, no timm).

The checkpoints here are written from NumPy arrays in timm's naming (``timm_state_dict`` of a Keras model gives the
keys and shapes); tests/layers/test_timm_port.py checks the same mapping against timm itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

from lambda_layers import PaddedMaxPooling2D, TimmCheckpointError, byobnet, from_timm, timm_state_dict
from lambda_layers.timm_weights import TIMM_PRETRAINED, load_timm_checkpoint, timm_model_name


def random_state(model: keras.Model, seed: int) -> dict[str, np.ndarray]:
    """A timm state dict for ``model`` with random values (positive variances) and timm's batch counters."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in timm_state_dict(model).items():
        array = rng.normal(size=value.shape).astype(np.float32)
        state[key] = np.abs(array) + 0.5 if key.endswith("running_var") else array
        if key.endswith("running_var"):
            state[key.removesuffix("running_var") + "num_batches_tracked"] = np.array(7, dtype=np.int64)
    return state


@pytest.fixture(scope="module")
def resnet26t() -> keras.Model:
    return from_timm("lambda_resnet26t")


@pytest.fixture(scope="module")
def checkpoint26t(resnet26t: keras.Model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    state = random_state(resnet26t, 0)
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file(state, str(path))
    return path, state


# -- names and arguments -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    ["lambda_resnet26t", "lambda_resnet26t.c1_in1k", "timm/lambda_resnet26t.c1_in1k", "hf-hub:timm/lambda_resnet26t"],
)
def test_hub_tags_name_the_network(given: str) -> None:
    assert timm_model_name(given) == "lambda_resnet26t"


def test_unknown_network_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="unknown timm LambdaResNet 'resnet50'") as e:
        from_timm("resnet50")
    for name in ("lambda_resnet26t", "lambda_resnet26rpt_256", "lambda_resnet50ts"):
        assert name in str(e.value)


def test_pretrained_table_covers_every_network() -> None:
    assert set(TIMM_PRETRAINED) == set(byobnet.TIMM_CONFIGS)
    for name, cfg in TIMM_PRETRAINED.items():
        assert cfg.hub_id.startswith(f"timm/{name}.") and cfg.input_size == (256, 256)
        assert cfg.interpolation == "bicubic" and cfg.mean == (0.485, 0.456, 0.406)
    assert TIMM_PRETRAINED["lambda_resnet26rpt_256"].fixed_input_size


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("lambda_resnet26rpt_256", (224, 224, 3), "sized for 256x256 inputs"),
        ("lambda_resnet26t", (250, 250, 3), "multiples of 32"),
        ("lambda_resnet26t", (256, 256), r"must be \(H, W, C\)"),
        ("lambda_resnet26t", (None, 256, 3), "three positive integers"),
    ],
)
def test_bad_input_shapes_are_refused(name: str, shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        from_timm(name, input_shape=shape)


def test_bad_num_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="`num_classes` must be a non-negative integer"):
        from_timm("lambda_resnet26t", num_classes=-1)


def test_model_interface(resnet26t: keras.Model) -> None:
    assert resnet26t.input_shape == (None, 256, 256, 3) and resnet26t.inputs[0].name == "image"
    assert resnet26t.output_shape == (None, 1000) and resnet26t.layers[-1].name == "logits"
    # timm's parameter count (10,958,272) plus the batch norms' running statistics, which Keras counts as weights
    bn_stats = sum(2 * w.shape[0] for w in resnet26t.weights if "moving_mean" in w.path)
    assert resnet26t.count_params() - bn_stats == 10_958_272


# -- loading -------------------------------------------------------------------------------------------------------


def test_checkpoint_round_trips_bit_for_bit(checkpoint26t: tuple[Path, dict]) -> None:
    path, state = checkpoint26t
    model = from_timm("lambda_resnet26t", checkpoint=path)
    got = timm_state_dict(model)
    want = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert list(got) == list(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_layouts_in_keras(checkpoint26t: tuple[Path, dict]) -> None:
    """Where each timm tensor lands, read from the Keras layers themselves (not through timm_state_dict)."""
    path, state = checkpoint26t
    model = from_timm("lambda_resnet26t", checkpoint=path)

    def value(layer: str, attr: str) -> np.ndarray:
        obj: Any = model.get_layer(layer)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return keras.ops.convert_to_numpy(obj)

    conv = state["stages.0.0.conv2_kxk.conv.weight"]  # O, I, kh, kw
    np.testing.assert_array_equal(value("stages.0.0.conv2_kxk.conv", "kernel"), conv.transpose(2, 3, 1, 0))
    bn = "stages.3.1.post_attn"
    np.testing.assert_array_equal(value(bn, "moving_variance"), state[f"{bn}.running_var"])
    qkv = state["stages.3.1.self_attn.qkv.weight"][:, :, 0, 0]  # (4*16 + 16 + 128), 512: rows q | k | v
    assert qkv.shape == (208, 512)
    for sub, rows in (("query", qkv[:64]), ("key", qkv[64:80]), ("value", qkv[80:])):
        np.testing.assert_array_equal(value("stages.3.1.self_attn", f"{sub}.kernel")[0, 0], rows.T)
    np.testing.assert_array_equal(
        value("stages.3.1.self_attn", "query_norm.gamma"), state["stages.3.1.self_attn.norm_q.weight"]
    )
    lam = state["stages.3.1.self_attn.conv_lambda.weight"]  # k, 1, r, r, 1
    np.testing.assert_array_equal(
        value("stages.3.1.self_attn", "position_conv.kernel")[:, :, 0, :], lam[:, 0, :, :, 0].transpose(1, 2, 0)
    )
    np.testing.assert_array_equal(
        value("stages.3.1.self_attn", "position_conv.bias"), state["stages.3.1.self_attn.conv_lambda.bias"]
    )
    np.testing.assert_array_equal(value("logits", "kernel"), state["head.fc.weight"].T)


def test_relative_tables_load(tmp_path: Path) -> None:
    model = from_timm("timm/lambda_resnet26rpt_256.c1_in1k")
    state = random_state(model, 1)
    assert state["stages.2.1.self_attn.pos_emb"].shape == (31, 31, 16)
    assert state["stages.3.1.self_attn.pos_emb"].shape == (15, 15, 16)
    assert not any("conv_lambda" in key for key in state)
    load_timm_checkpoint(model, state)  # an in-memory state dict of NumPy arrays
    table = model.get_layer("stages.3.0.self_attn").position_embedding  # 2H-1, 2W-1, k, u = 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(table)[..., 0], state["stages.3.0.self_attn.pos_emb"])


def mismatch(state: dict[str, np.ndarray], kind: str) -> tuple[dict[str, np.ndarray], str]:
    """The state dict spoiled one way, and the tensor the error must name."""
    state = dict(state)
    if kind == "missing":
        key = "stages.2.1.self_attn.conv_lambda.bias"
        del state[key]
    elif kind == "shape":
        key = "stages.3.0.self_attn.qkv.weight"
        state[key] = np.zeros((144, 512, 1, 1), np.float32)
    else:
        key = "stages.3.1.self_attn.pos_emb"
        state[key] = np.zeros((15, 15, 16), np.float32)
    return state, key


@pytest.mark.parametrize("kind", ["missing", "shape", "unexpected"])
def test_a_checkpoint_that_does_not_fit_names_the_tensor(
    kind: str, resnet26t: keras.Model, checkpoint26t: tuple[Path, dict], tmp_path: Path
) -> None:
    state, key = mismatch(checkpoint26t[1], kind)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    before = timm_state_dict(resnet26t)
    with pytest.raises(TimmCheckpointError) as e:
        load_timm_checkpoint(resnet26t, path)
    assert isinstance(e.value, ValueError)
    assert e.value.tensor == key and e.value.reason == kind
    message = str(e.value)
    assert f"`{key}`" in message and str(path) in message
    expected = {
        "missing": "(16,) is missing from the checkpoint",
        "shape": "has shape (144, 512, 1, 1) in the checkpoint, the model needs (208, 512, 1, 1)",
        "unexpected": "the checkpoint has tensor `stages.3.1.self_attn.pos_emb` (15, 15, 16), which the model does not",
    }[kind]
    assert expected in message
    after = timm_state_dict(resnet26t)  # refused before anything is assigned
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_classifier_of_another_size_is_refused(checkpoint26t: tuple[Path, dict]) -> None:
    with pytest.raises(TimmCheckpointError, match=r"`head\.fc\.weight` has shape \(1000, 2048\)"):
        from_timm("lambda_resnet26t", checkpoint=checkpoint26t[0], num_classes=10)


def test_pth_without_torch_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, torch installed or not
    with pytest.raises(ImportError, match=r"needs torch \(pip install 'lambda-export\[torch\]'\).*safetensors"):
        from_timm("lambda_resnet26t", checkpoint=path)


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_timm("lambda_resnet26t", checkpoint=tmp_path / "nothing.safetensors")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown checkpoint format '\.onnx'"):
        from_timm("lambda_resnet26t", checkpoint=other)


# -- saving and layers ---------------------------------------------------------------------------------------------


def test_saved_models_reload_without_custom_objects(tmp_path: Path) -> None:
    """.keras and .h5 files reload in a fresh process that only imports lambda_layers, with the same outputs.

    Small ByobNets of the same layers (PaddedMaxPooling2D, LambdaNetwork2DConv with a local lambda convolution or a
    relative table, named as timm's modules) keep the files and the child process small.
    """
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    want = {}
    for mode, receptive_kernel in (("local", 3), ("relative", None)):
        config = byobnet.ByobLambdaConfig(
            stages=(("bottle",), ("self_attn", "self_attn")),
            channels=(32, 64),
            strides=(1, 2),
            stem_channels=16,
            activation="silu",
            receptive_kernel=receptive_kernel,
        )
        model = byobnet.byob_lambda_resnet(config, input_shape=(64, 64, 3), num_classes=5)
        load_timm_checkpoint(model, random_state(model, 2))
        want[mode] = model.predict(x, verbose=0)
        for suffix in ("keras", "h5"):
            model.save(tmp_path / f"{mode}.{suffix}")
    code = textwrap.dedent(
        f"""
        import keras, numpy as np
        import lambda_layers
        x = np.load({str(tmp_path / "x.npy")!r})
        for name in ("local.keras", "local.h5", "relative.keras", "relative.h5"):
            model = keras.saving.load_model({str(tmp_path)!r} + "/" + name)
            np.save({str(tmp_path)!r} + "/got_" + name + ".npy", model.predict(x, verbose=0))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    for mode in want:
        for suffix in ("keras", "h5"):
            np.testing.assert_array_equal(np.load(tmp_path / f"got_{mode}.{suffix}.npy"), want[mode])


def torch_max_pool(x: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    """torch.nn.MaxPool2d(k, s, p) on NHWC, in NumPy: -inf padding, floor output size."""
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-np.inf)
    hh = (padded.shape[1] - k) // s + 1
    ww = (padded.shape[2] - k) // s + 1
    out = np.full((x.shape[0], hh, ww, x.shape[3]), -np.inf, x.dtype)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, padded[:, i : i + s * (hh - 1) + 1 : s, j : j + s * (ww - 1) + 1 : s])
    return out


@pytest.mark.parametrize(
    ("k", "s", "p", "size"), [(3, 2, 1, 8), (3, 2, 1, 9), (5, 2, 2, 10), (3, 1, 1, 5), (2, 2, 0, 6)]
)
def test_padded_max_pooling_is_torchs(k: int, s: int, p: int, size: int) -> None:
    x = np.random.default_rng(size).normal(size=(2, size, size + 1, 3)).astype(np.float32) - 1.0  # mostly negative
    layer = PaddedMaxPooling2D(k, s, p)
    got = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_array_equal(got, torch_max_pool(x, k, s, p))
    assert layer.compute_output_shape(x.shape) == got.shape


def test_padded_max_pooling_config_round_trips() -> None:
    layer = PaddedMaxPooling2D(5, 3, 2, name="pool", dtype="float64")
    clone = PaddedMaxPooling2D.from_config(layer.get_config())
    assert (clone.pool_size, clone.strides, clone.padding, clone.name) == (5, 3, 2, "pool")
    assert clone.dtype_policy.name == "float64" and clone.get_config() == layer.get_config()
    assert keras.saving.get_registered_object("lambda_layers>PaddedMaxPooling2D") is PaddedMaxPooling2D


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool_size": 3, "padding": 2}, "less than half"),
        ({"pool_size": 2, "padding": 1}, "less than half"),
        ({"pool_size": 0}, "`pool_size` must be an integer >= 1"),
        ({"strides": 1.5}, "`strides` must be an integer >= 1"),
        ({"padding": -1}, "`padding` must be an integer >= 0"),
    ],
)
def test_padded_max_pooling_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PaddedMaxPooling2D(**kwargs)


def test_float64_models() -> None:
    model = byobnet.lambda_resnet26t(input_shape=(64, 64, 3), num_classes=5, dtype="float64")
    assert {w.dtype for w in model.weights} == {"float64"} and model.inputs[0].dtype == "float64"
    assert model.output_shape == (None, 5)
