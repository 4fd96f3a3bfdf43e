"""Independent NumPy implementation of the lambda layer (Bello, ICLR 2021), used as the oracle of the layer tests.

Written from the paper's equations (Bello, ICLR 2021, section 3) with ``np.einsum`` (the layer itself uses reshapes and
matrix products), in float64. Only the *weights* are read from a built Keras layer (:func:`extract_params`); everything
else -- batch norm, the key softmax over positions, the relative-position gather, the local convolution, the head
layout -- is recomputed here.

Notation: b batch, n query positions, m context positions, c input channels, k key depth, u intra depth, h heads,
v value depth = d / h. Channel layouts of the projections (as in the layer and the PyTorch ``lambda-networks`` layer):
queries (h, k) head-major, keys (u, k) u-major, values (u, v) u-major; the output is (h, v) head-major.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LambdaParams", "batch_norm", "extract_params", "lambda_forward", "reference_forward", "relative_embedding"]


@dataclass
class LambdaParams:
    """Everything the forward pass needs, as float64 NumPy arrays.

    ``wq`` (c, h*k), ``wk`` (c, u*k), ``wv`` (c, u*v); ``bn_q`` / ``bn_v`` / ``bn_k`` are (gamma, beta, mean, var)
    tuples (``bn_k`` None without key normalisation); ``embedding`` is (n, m, k, u) absolute, (2H-1, 2W-1, k, u) or
    (2T-1, k, u) relative; ``conv_kernel`` is (r, r, u, k) (1D: (r, u, k)) and ``conv_bias`` (k,) or None.
    """

    rank: int
    mode: str  # "absolute", "relative", "local" or "content"
    data_format: str
    key_depth: int
    intra_depth: int
    heads: int
    value_depth: int
    eps: float
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    bn_q: tuple[np.ndarray, ...]
    bn_v: tuple[np.ndarray, ...]
    bn_k: tuple[np.ndarray, ...] | None = None
    embedding: np.ndarray | None = None
    conv_kernel: np.ndarray | None = None
    conv_bias: np.ndarray | None = None


def _np(variable: Any) -> np.ndarray:
    return np.asarray(variable, dtype=np.float64)


def _bn_params(norm: Any) -> tuple[np.ndarray, ...]:
    return tuple(_np(w) for w in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance))


def extract_params(layer: Any) -> LambdaParams:
    """Read the weights of a built lambda layer (any of the three classes) into :class:`LambdaParams`."""

    def matrix(projection: Any) -> np.ndarray:
        kernel = _np(projection.kernel)
        return kernel.reshape(kernel.shape[-2], kernel.shape[-1])  # 1x1 conv / 1-wide conv / dense -> (c, units)

    rank = 2 if type(layer).__name__ == "LambdaNetwork2DConv" else 1
    if layer.receptive_kernel is not None:
        mode = "local"
    elif layer.relative:
        mode = "relative"
    elif layer.size is not None:
        mode = "absolute"
    else:
        mode = "content"
    params = LambdaParams(
        rank=rank,
        mode=mode,
        data_format=layer.data_format,
        key_depth=layer.key_depth,
        intra_depth=layer.intra_depth,
        heads=layer.heads,
        value_depth=layer.kernel_out // layer.heads,
        eps=float(layer.query_norm.epsilon),
        wq=matrix(layer.query),
        wk=matrix(layer.key),
        wv=matrix(layer.value),
        bn_q=_bn_params(layer.query_norm),
        bn_v=_bn_params(layer.value_norm),
        bn_k=_bn_params(layer.key_norm) if layer.norm_keys else None,
    )
    if mode in ("absolute", "relative"):
        params.embedding = _np(layer.position_embedding)
    if mode == "local":
        kernel = _np(layer.position_conv.kernel)  # (r, r, u, k); 1D layers store (r, 1, u, k)
        params.conv_kernel = kernel if rank == 2 else kernel[:, 0]
        params.conv_bias = _np(layer.position_conv.bias) if layer.position_bias else None
    return params


def batch_norm(z: np.ndarray, bn: tuple[np.ndarray, ...], eps: float) -> np.ndarray:
    """Inference-mode batch norm over the last axis: gamma (z - mean) / sqrt(var + eps) + beta."""
    gamma, beta, mean, var = bn
    return gamma * (z - mean) / np.sqrt(var + eps) + beta


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def relative_embedding(table: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """Gather a relative table into the (n, m, k, u) embedding E[n, m] = R[pos(m) - pos(n) + offset].

    Positions are enumerated row-major (the order of a (H, W) -> H*W reshape); offset = (H-1, W-1) or T-1.
    """
    positions = np.stack(np.unravel_index(np.arange(int(np.prod(spatial))), spatial), axis=-1)  # n, rank
    n = len(positions)
    emb = np.empty((n, n, *table.shape[len(spatial) :]), dtype=table.dtype)
    for i in range(n):
        for j in range(n):
            offset = positions[j] - positions[i] + np.asarray(spatial) - 1  # pos(m) - pos(n) + (size - 1)
            emb[i, j] = table[tuple(offset)]
    return emb


def _local_position_lambda(values: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """lambda_p[b, *pos, k, v] = sum_{offset, u} kernel[offset, u, k] * V[b, pos + offset - r//2, u, v] (+ bias[k]).

    ``values`` is (b, *spatial, u, v); zero padding outside the grid ('same' convolution, cross-correlation like
    Keras and PyTorch). The same kernel is applied to every value channel v.
    """
    spatial = values.shape[1:-2]
    r = kernel.shape[0]
    half = r // 2
    pad = [(0, 0)] + [(half, half)] * len(spatial) + [(0, 0), (0, 0)]
    padded = np.pad(values, pad)
    out = np.zeros((values.shape[0], *spatial, kernel.shape[-1], values.shape[-1]))
    for offset in np.ndindex(*kernel.shape[:-2]):
        window = padded[(slice(None), *(slice(o, o + s) for o, s in zip(offset, spatial, strict=True)))]
        out += np.einsum("b...uv,uk->b...kv", window, kernel[offset])
    if bias is not None:
        out += bias[:, None]
    return out


def lambda_forward(x: np.ndarray, p: LambdaParams) -> np.ndarray:
    """The lambda layer on ``x`` ((b, *spatial, c), or (b, c, *spatial) for channels first), inference mode."""
    x = np.asarray(x, dtype=np.float64)
    if p.data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    b, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    n = int(np.prod(spatial))
    k, u, h, v = p.key_depth, p.intra_depth, p.heads, p.value_depth
    x = x.reshape(b, n, c)

    q = batch_norm(np.einsum("bnc,cj->bnj", x, p.wq), p.bn_q, p.eps).reshape(b, n, h, k)
    keys = np.einsum("bmc,cj->bmj", x, p.wk)
    if p.bn_k is not None:
        keys = batch_norm(keys, p.bn_k, p.eps)
    keys = _softmax(keys.reshape(b, n, u, k), axis=1)  # normalised over the context positions m
    vals = batch_norm(np.einsum("bmc,cj->bmj", x, p.wv), p.bn_v, p.eps).reshape(b, n, u, v)

    lam = np.einsum("bmuk,bmuv->bkv", keys, vals)[:, None]  # content lambda, b, 1, k, v
    if p.mode == "absolute":
        lam = lam + np.einsum("nmku,bmuv->bnkv", p.embedding, vals)
    elif p.mode == "relative":
        lam = lam + np.einsum("nmku,bmuv->bnkv", relative_embedding(p.embedding, spatial), vals)
    elif p.mode == "local":
        local = _local_position_lambda(vals.reshape(b, *spatial, u, v), p.conv_kernel, p.conv_bias)
        lam = lam + local.reshape(b, n, k, v)
    y = np.einsum("bnhk,bnkv->bnhv", q, np.broadcast_to(lam, (b, n, k, v)))
    out = y.reshape(b, *spatial, h * v)  # channels head-major (h, v)
    if p.data_format == "channels_first":
        out = np.moveaxis(out, -1, 1)
    return out


def reference_forward(layer: Any, x: np.ndarray) -> np.ndarray:
    """:func:`lambda_forward` with the weights of ``layer`` (which must be built)."""
    return lambda_forward(x, extract_params(layer))
