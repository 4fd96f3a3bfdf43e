"""PyTorch ``lambda-networks`` 0.4.0 ``LambdaLayer`` weights loaded into ``LambdaNetwork2DConv`` give its outputs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional dependency: pip install -e '.[torch]'")
lambda_networks = pytest.importorskip(
    "lambda_networks", reason="lambda-networks is an optional dependency: pip install -e '.[torch]'"
)

from lambda_layers import LambdaNetwork1DConv, LambdaNetwork2DConv, load_torch_weights  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # inside lambda_networks

# Both sides compute in float32 on inputs and weights of magnitude ~1 (outputs up to ~20); the residual difference is
# float32 rounding in different summation orders. With torch's own randn init of rel_pos_emb (std 1) outputs reach
# ~60 and both float32 implementations are then ~1e-5 away from a float64 computation, torch as much as Keras (2 ulp):
# hence the std 0.25 table below. test_outputs_match_float64 shows the mapping itself is exact (~1e-14).
ATOL = 1e-5


def torch_layer(seed: int, **kwargs: Any) -> Any:
    """A torch LambdaLayer in eval mode with random weights and random batch-norm statistics."""
    torch.manual_seed(seed)
    module = lambda_networks.LambdaLayer(**kwargs)
    with torch.no_grad():
        for norm in (module.norm_q, module.norm_v):
            size = norm.weight.shape[0]
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.5)
            norm.running_mean.normal_(0.0, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.num_batches_tracked.fill_(10)
            assert size == norm.running_var.shape[0]
        if hasattr(module, "pos_conv"):
            module.pos_conv.bias.normal_(0.0, 0.5)
        else:
            module.rel_pos_emb.normal_(0.0, 0.25)
    return module.eval()


def keras_layer(torch_kwargs: dict[str, Any], data_format: str, **kwargs: Any) -> LambdaNetwork2DConv:
    position = (
        {"relative": True} if "n" in torch_kwargs else {"receptive_kernel": torch_kwargs["r"], "position_bias": True}
    )
    return LambdaNetwork2DConv(
        kernel_out=torch_kwargs.get("dim_out", torch_kwargs["dim"]),
        key_depth=torch_kwargs["dim_k"],
        intra_depth=torch_kwargs.get("dim_u", 1),
        heads=torch_kwargs.get("heads", 4),
        data_format=data_format,
        **position,
        **kwargs,
    )


def compare(module: Any, layer: LambdaNetwork2DConv, spatial: tuple[int, int], dtype: str = "float32") -> float:
    """Max abs difference of the two layers' outputs on a random NCHW input."""
    dim = module.to_q.weight.shape[1]
    x = np.random.default_rng(0).normal(size=(2, dim, *spatial)).astype(dtype)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    if layer.data_format == "channels_last":
        got = np.transpose(
            keras.ops.convert_to_numpy(layer(np.transpose(x, (0, 2, 3, 1)), training=False)), (0, 3, 1, 2)
        )
    else:
        got = keras.ops.convert_to_numpy(layer(x, training=False))
    assert got.shape == want.shape
    assert np.abs(want).max() > 0.5
    return float(np.abs(got - want).max())


CONFIGS = [
    pytest.param({"dim": 8, "dim_k": 4, "n": 5, "heads": 2}, "channels_last", True, id="rel-u1-h2-last"),
    pytest.param(
        {"dim": 6, "dim_k": 4, "n": 4, "heads": 4, "dim_u": 4, "dim_out": 8},
        "channels_first",
        False,
        id="rel-u4-h4-first",
    ),
    pytest.param({"dim": 8, "dim_k": 8, "n": 3, "heads": 1, "dim_u": 4}, "channels_last", False, id="rel-u4-h1-last"),
    pytest.param({"dim": 8, "dim_k": 4, "r": 3, "heads": 1}, "channels_first", True, id="local-r3-u1-h1-first"),
    pytest.param(
        {"dim": 6, "dim_k": 8, "r": 5, "heads": 2, "dim_u": 4, "dim_out": 12},
        "channels_last",
        False,
        id="local-r5-u4-h2-last",
    ),
    pytest.param(
        {"dim": 8, "dim_k": 4, "r": 3, "heads": 4, "dim_u": 4, "dim_out": 16},
        "channels_first",
        True,
        id="local-r3-u4-h4-first",
    ),
]


def spatial_of(torch_kwargs: dict[str, Any]) -> tuple[int, int]:
    return (torch_kwargs["n"],) * 2 if "n" in torch_kwargs else (6, 5)  # relative mode: the input must be n x n


@pytest.mark.parametrize(("torch_kwargs", "data_format", "prebuild"), CONFIGS)
def test_outputs_match(torch_kwargs: dict[str, Any], data_format: str, prebuild: bool) -> None:
    module = torch_layer(0, **torch_kwargs)
    layer = keras_layer(torch_kwargs, data_format)
    spatial = spatial_of(torch_kwargs)
    if prebuild:
        dim = torch_kwargs["dim"]
        layer.build((None, *spatial, dim) if data_format == "channels_last" else (None, dim, *spatial))
    load_torch_weights(layer, module.state_dict())  # otherwise built from the state dict
    assert layer.built
    assert compare(module, layer, spatial) <= ATOL


@pytest.mark.parametrize(("torch_kwargs", "data_format", "prebuild"), CONFIGS)
def test_outputs_match_float64(torch_kwargs: dict[str, Any], data_format: str, prebuild: bool) -> None:
    """In float64 on both sides the outputs agree to ~1e-14: the weight mapping is exact, not just close."""
    module = torch_layer(0, **torch_kwargs).double()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")  # the layer's sublayers (convs, batch norms) take the global policy
    try:
        layer = keras_layer(torch_kwargs, data_format)
        load_torch_weights(layer, module.state_dict())
        assert {w.dtype for w in layer.weights} == {"float64"}
        assert compare(module, layer, spatial_of(torch_kwargs), dtype="float64") <= 1e-12
    finally:
        keras.config.set_dtype_policy(previous)


def test_numpy_state_dict_and_prefix() -> None:
    kwargs = {"dim": 8, "dim_k": 4, "r": 3, "heads": 2, "dim_u": 4}
    module = torch_layer(1, **kwargs)
    parent = torch.nn.Sequential(torch.nn.Identity(), module)
    state = {key: value.numpy() for key, value in parent.state_dict().items()}
    layer = keras_layer(kwargs, "channels_last")
    load_torch_weights(layer, state, prefix="1.")
    assert compare(module, layer, (5, 7)) <= ATOL


def test_weights_are_copied_exactly() -> None:
    kwargs = {"dim": 6, "dim_k": 4, "r": 3, "heads": 2, "dim_u": 4}
    module = torch_layer(2, **kwargs)
    layer = keras_layer(kwargs, "channels_first")
    load_torch_weights(layer, module.state_dict())
    state = {key: value.numpy() for key, value in module.state_dict().items()}

    def np_(variable: Any) -> np.ndarray:
        return keras.ops.convert_to_numpy(variable)

    np.testing.assert_array_equal(np_(layer.query.kernel)[0, 0], state["to_q.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(np_(layer.value_norm.moving_variance), state["norm_v.running_var"])
    conv = np_(layer.position_conv.kernel)  # (r, r, u, k)
    for i, j, uu, kk in [(0, 0, 0, 0), (0, 2, 1, 3), (2, 1, 3, 2)]:
        assert conv[i, j, uu, kk] == state["pos_conv.weight"][kk, uu, 0, i, j]
    np.testing.assert_array_equal(np_(layer.position_conv.bias), state["pos_conv.bias"])


# -- validation --------------------------------------------------------------------------------------------------

LOCAL = {"dim": 8, "dim_k": 4, "r": 3, "heads": 2}
RELATIVE = {"dim": 8, "dim_k": 4, "n": 4, "heads": 2}


@pytest.fixture(scope="module")
def local_state() -> dict[str, Any]:
    return torch_layer(3, **LOCAL).state_dict()


@pytest.fixture(scope="module")
def relative_state() -> dict[str, Any]:
    return torch_layer(4, **RELATIVE).state_dict()


def test_missing_key(local_state: dict[str, Any]) -> None:
    state = {key: value for key, value in local_state.items() if key != "norm_q.running_var"}
    with pytest.raises(ValueError, match=r"missing \['norm_q.running_var'\]"):
        load_torch_weights(keras_layer(LOCAL, "channels_last"), state)


def test_unexpected_key(local_state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"unexpected \['norm_k.weight'\]"):
        load_torch_weights(keras_layer(LOCAL, "channels_last"), {**local_state, "norm_k.weight": np.ones(8)})


@pytest.mark.parametrize(
    ("overrides", "input_channels", "key"),
    [
        ({"key_depth": 8}, 8, "to_q.weight"),  # dim_k differs
        ({"intra_depth": 4}, 8, "to_k.weight"),  # dim_u differs
        ({"kernel_out": 16}, 8, "to_v.weight"),  # dim_out differs
        ({}, 6, "to_q.weight"),  # built for other input channels
        ({"receptive_kernel": 5}, 8, "pos_conv.weight"),  # r differs
    ],
)
def test_shape_mismatch(local_state: dict[str, Any], overrides: dict, input_channels: int, key: str) -> None:
    args = {"kernel_out": 8, "key_depth": 4, "heads": 2, "receptive_kernel": 3, "position_bias": True, **overrides}
    layer = LambdaNetwork2DConv(**args)
    layer.build((None, 6, 6, input_channels))
    before = [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]
    with pytest.raises(ValueError, match=f"shape mismatch for `{key}`"):
        load_torch_weights(layer, local_state)
    for old, new in zip(before, layer.weights, strict=True):  # nothing was assigned
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_relative_size_mismatch(relative_state: dict[str, Any]) -> None:
    layer = keras_layer(RELATIVE, "channels_last")
    layer.build((None, 5, 5, 8))  # torch n = 4
    with pytest.raises(ValueError, match="shape mismatch for `rel_pos_emb`"):
        load_torch_weights(layer, relative_state)


def test_mode_mismatch(local_state: dict[str, Any], relative_state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"mode mismatch.*'local'.*'relative'"):
        load_torch_weights(keras_layer(RELATIVE, "channels_last"), local_state)
    with pytest.raises(ValueError, match=r"mode mismatch.*'relative'.*'local'"):
        load_torch_weights(keras_layer(LOCAL, "channels_last"), relative_state)
    absolute = LambdaNetwork2DConv(kernel_out=8, key_depth=4, heads=2, size=16)
    with pytest.raises(ValueError, match=r"mode mismatch.*'absolute'"):
        load_torch_weights(absolute, relative_state)
    no_bias = LambdaNetwork2DConv(kernel_out=8, key_depth=4, heads=2, receptive_kernel=3)
    with pytest.raises(ValueError, match="`position_bias=True`"):
        load_torch_weights(no_bias, local_state)
    with pytest.raises(ValueError, match="`norm_keys"):
        load_torch_weights(keras_layer(LOCAL, "channels_last", norm_keys=True), local_state)
    both = {**local_state, "rel_pos_emb": relative_state["rel_pos_emb"]}
    with pytest.raises(ValueError, match="either `pos_conv"):
        load_torch_weights(keras_layer(LOCAL, "channels_last"), both)


def test_epsilon_mismatch(local_state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="`norm_epsilon`"):
        load_torch_weights(keras_layer(LOCAL, "channels_last", norm_epsilon=1e-3), local_state)


def test_wrong_layer_class(local_state: dict[str, Any]) -> None:
    layer = LambdaNetwork1DConv(kernel_out=8, key_depth=4, heads=2, receptive_kernel=3, position_bias=True)
    with pytest.raises(TypeError, match="LambdaNetwork2DConv"):
        load_torch_weights(layer, local_state)


def test_empty_prefix_match(local_state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="prefix"):
        load_torch_weights(keras_layer(LOCAL, "channels_last"), local_state, prefix="encoder.")


def test_torch_not_imported_by_the_package() -> None:
    code = "import sys, lambda_layers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
