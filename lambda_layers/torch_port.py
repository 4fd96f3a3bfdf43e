"""Copy the weights of a PyTorch ``lambda_networks.LambdaLayer`` into a :class:`~lambda_layers.LambdaNetwork2DConv`.

The PyPI package ``lambda-networks`` 0.4.0 (lucidrains) implements the same layer with the same channel layouts
(queries (h, k), keys (u, k), values (u, v), output (h, v)); only the weight layouts differ. PyTorch is not needed:
the state dict may hold NumPy arrays, and tensors are converted through ``.detach().cpu().numpy()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lambda_layers.layers import LambdaNetwork2DConv

__all__ = ["TORCH_BATCH_NORM_EPSILON", "load_torch_weights"]

TORCH_BATCH_NORM_EPSILON = 1e-5  # torch.nn.BatchNorm2d default, the one lambda-networks uses
_NORM_PARTS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (torch is imported only by whoever made it)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _conv_1x1(key: str, weight: np.ndarray) -> np.ndarray:
    """(out, in, 1, 1) -> (1, 1, in, out)."""
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(
            f"shape mismatch for `{key}`: expected a 1x1 convolution weight (out, in, 1, 1), got {weight.shape}"
        )
    return weight[:, :, 0, 0].T[None, None]


def _pos_conv(weight: np.ndarray) -> np.ndarray:
    """(k, u, 1, r, r) -> (r, r, u, k)."""
    if weight.ndim != 5 or weight.shape[2] != 1:
        raise ValueError(f"shape mismatch for `pos_conv.weight`: expected (k, u, 1, r, r), got {weight.shape}")
    return weight[:, :, 0].transpose(2, 3, 1, 0)


def _infer_input_shape(layer: LambdaNetwork2DConv, state: Mapping[str, np.ndarray], mode: str) -> tuple:
    """The input shape to build an unbuilt layer with: channels from ``to_q.weight``, n from ``rel_pos_emb``."""
    if state["to_q.weight"].ndim != 4:
        raise ValueError(f"shape mismatch for `to_q.weight`: expected (h*k, c, 1, 1), got {state['to_q.weight'].shape}")
    channels = state["to_q.weight"].shape[1]
    if mode == "relative":
        table = state["rel_pos_emb"].shape
        if len(table) != 4 or table[0] != table[1] or table[0] % 2 == 0:
            raise ValueError(f"`rel_pos_emb` must have shape (2n-1, 2n-1, k, u), got {table}")
        spatial: tuple = ((table[0] + 1) // 2,) * 2
    else:
        spatial = (None, None)
    if layer.data_format == "channels_last":
        return (None, *spatial, channels)
    return (None, channels, *spatial)


def load_torch_weights(layer: LambdaNetwork2DConv, state_dict: Mapping[str, Any], prefix: str = "") -> None:
    """Copy a PyTorch ``lambda_networks.LambdaLayer`` state dict into ``layer``, exactly.

    The Keras layer must compute the same function: ``LambdaNetwork2DConv(kernel_out=dim_out, key_depth=dim_k,
    intra_depth=dim_u, heads=heads, ...)`` with ``relative=True`` for a torch layer built with ``n`` (global relative
    embedding; the input must then be n x n) or ``receptive_kernel=r, position_bias=True`` for one built with ``r``
    (the torch ``pos_conv`` has a bias), ``norm_keys=False`` and ``norm_epsilon=1e-5`` (torch's BatchNorm2d eps).
    ``data_format`` may be either; the torch layer itself is NCHW.

    Mapping (torch key -> Keras weight; c input channels, k key depth, u intra depth, h heads, v = dim_out / h):

    =========================  ==================  ==============================  ================================
    torch key                  torch shape         Keras weight                    conversion
    =========================  ==================  ==============================  ================================
    ``to_q.weight``            (h*k, c, 1, 1)      ``query.kernel`` (1,1,c,h*k)    ``w[:, :, 0, 0].T``
    ``to_k.weight``            (u*k, c, 1, 1)      ``key.kernel`` (1,1,c,u*k)      ``w[:, :, 0, 0].T``
    ``to_v.weight``            (u*v, c, 1, 1)      ``value.kernel`` (1,1,c,u*v)    ``w[:, :, 0, 0].T``
    ``norm_q.weight``/``bias`` (h*k,)              ``query_norm.gamma``/``beta``   copy
    ``norm_q.running_mean``    (h*k,)              ``query_norm.moving_mean``      copy
    ``norm_q.running_var``     (h*k,)              ``query_norm.moving_variance``  copy
    ``norm_v.*``               (u*v,)              ``value_norm.*``                as ``norm_q``
    ``rel_pos_emb``            (2n-1,2n-1,k,u)     ``position_embedding``          copy (same relative indexing)
    ``pos_conv.weight``        (k, u, 1, r, r)     ``position_conv.kernel``        ``w[:, :, 0].transpose(2,3,1,0)``
    ``pos_conv.bias``          (k,)                ``position_conv.bias``          copy
    ``norm_*.num_batches_...`` ()                  (none)                          ignored
    =========================  ==================  ==============================  ================================

    Channel orders need no permutation: both implementations split queries as (h, k), keys as (u, k), values as
    (u, v) and emit outputs as (h, v), and both index the relative table at pos(m) - pos(n) + (n - 1).

    Args:
        layer: the Keras layer. If it is not built yet it is built from the state dict (input channels from
            ``to_q.weight``; the n x n spatial size from ``rel_pos_emb`` in relative mode, unknown in local mode).
        state_dict: ``module.state_dict()``, or any mapping of the same keys to tensors or NumPy arrays.
        prefix: prefix of the lambda layer's keys in a larger model's state dict (e.g. ``"layer3.0.attn."``); only
            keys starting with it are read.

    Raises:
        TypeError: ``layer`` is not a :class:`LambdaNetwork2DConv`.
        ValueError: missing or unexpected keys, a shape mismatch, a mode mismatch (local vs relative, no
            ``position_bias``, ``norm_keys``, absolute or content-only layers), or a batch-norm epsilon other than
            1e-5. Nothing is assigned unless every check passes.
    """
    if not isinstance(layer, LambdaNetwork2DConv):
        raise TypeError(f"`layer` must be a LambdaNetwork2DConv (the torch layer is 2D), got {type(layer).__name__}")
    state = {key[len(prefix) :]: _to_numpy(value) for key, value in state_dict.items() if key.startswith(prefix)}
    if not state:
        raise ValueError(f"`state_dict` has no keys starting with prefix {prefix!r}")

    torch_mode = {(True, False): "local", (False, True): "relative"}.get(
        (any(key.startswith("pos_conv.") for key in state), "rel_pos_emb" in state)
    )
    if torch_mode is None:
        raise ValueError(
            "`state_dict` must hold either `pos_conv.*` (torch layer built with r: local) or `rel_pos_emb` (built "
            f"with n: global relative), got keys {sorted(state)}"
        )
    if layer.mode != torch_mode:
        option = "receptive_kernel=r, position_bias=True" if torch_mode == "local" else "relative=True"
        raise ValueError(
            f"mode mismatch: the torch layer is {torch_mode!r} but the Keras layer's mode is {layer.mode!r}; build "
            f"the Keras layer with {option}"
        )
    if torch_mode == "local" and not layer.position_bias:
        raise ValueError(
            "mode mismatch: the torch `pos_conv` has a bias; build the Keras layer with `position_bias=True`"
        )
    if layer.norm_keys:
        raise ValueError(
            "mode mismatch: the torch layer does not normalise keys; build the Keras layer with `norm_keys=False`"
        )
    epsilons = {layer.norm_epsilon, layer.query_norm.epsilon, layer.value_norm.epsilon}
    if any(not np.isclose(eps, TORCH_BATCH_NORM_EPSILON, rtol=1e-6, atol=0) for eps in epsilons):
        raise ValueError(
            f"`norm_epsilon` is {layer.norm_epsilon} but torch's BatchNorm2d uses eps={TORCH_BATCH_NORM_EPSILON}: the "
            "outputs would differ; build the Keras layer with norm_epsilon=1e-5"
        )

    expected = {"to_q.weight", "to_k.weight", "to_v.weight"}
    expected |= {f"norm_{which}.{part}" for which in "qv" for part in _NORM_PARTS}
    expected |= {"pos_conv.weight", "pos_conv.bias"} if torch_mode == "local" else {"rel_pos_emb"}
    optional = {"norm_q.num_batches_tracked", "norm_v.num_batches_tracked"}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - optional)
    if missing or unexpected:
        raise ValueError(
            f"state dict keys do not match a {torch_mode} LambdaLayer: missing {missing}, unexpected {unexpected}"
        )

    if not layer.built:
        layer.build(_infer_input_shape(layer, state, torch_mode))

    assignments: list[tuple[str, Any, np.ndarray]] = [
        (key, projection.kernel, _conv_1x1(key, state[key]))
        for key, projection in (("to_q.weight", layer.query), ("to_k.weight", layer.key), ("to_v.weight", layer.value))
    ]
    for which, norm in (("q", layer.query_norm), ("v", layer.value_norm)):
        for part, attribute in _NORM_PARTS.items():
            key = f"norm_{which}.{part}"
            assignments.append((key, getattr(norm, attribute), state[key]))
    if torch_mode == "local":
        assignments.append(("pos_conv.weight", layer.position_conv.kernel, _pos_conv(state["pos_conv.weight"])))
        assignments.append(("pos_conv.bias", layer.position_conv.bias, state["pos_conv.bias"]))
    else:
        assignments.append(("rel_pos_emb", layer.position_embedding, state["rel_pos_emb"]))

    for key, variable, value in assignments:
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"shape mismatch for `{key}`: torch {tuple(state[key].shape)} converts to {tuple(value.shape)} but the "
                f"Keras weight `{variable.path}` is {tuple(variable.shape)} (check dim, dim_k, dim_u, heads, dim_out, "
                "n / r against the Keras layer's input channels, key_depth, intra_depth, heads, kernel_out, input size "
                "/ receptive_kernel)"
            )
    for _, variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
