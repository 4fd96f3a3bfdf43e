"""Lambda layers for Keras 3 on TensorFlow.

Implements the lambda layer of *LambdaNetworks: Modeling Long-Range Interactions without Attention*
(Irwan Bello, ICLR 2021, https://arxiv.org/abs/2102.08602) for images (2D) and sequences (1D).

A lambda layer summarises the context into small linear functions (lambdas) and applies them to each query:

    q = BN(x Wq)            -> (b, n, h, k)    queries, h heads of depth k
    K = softmax_m(x Wk)     -> (b, m, u, k)    keys, normalised over the m context positions
    V = BN(x Wv)            -> (b, m, u, v)    values, v = d / h
    lambda_c = sum_{m,u} K V            -> (b, k, v)       content lambda, shared by all queries
    lambda_p[n] = sum_{m,u} E[n,m] V    -> (b, n, k, v)    position lambdas, one per query position
    y[n, h] = q[n, h] (lambda_c + lambda_p[n])  -> (b, n, h, v) -> (b, ..., d) channels head-major (h, v)

Position lambdas come in three kinds, chosen by the constructor arguments:

* global, absolute (``size=n``): a learned embedding ``E`` of shape (n, n, k, u), one per (query, context) pair;
* global, relative (``relative=True``): a learned table ``R`` of shape (2H-1, 2W-1, k, u) (1D: (2T-1, k, u)) read
  at the offset between the two positions, so the layer is translation-equivariant and has far fewer weights;
* local, the *lambda convolution* (``receptive_kernel=r``): an r x r convolution (1D: r) from the u value slices to
  k channels, applied to each value channel independently. Cost grows with n r^2 instead of n^2.

How to choose: use the local lambda convolution for large inputs (it scales linearly with the number of positions);
use a global relative embedding for small feature maps where long-range interactions matter and translation
equivariance is wanted (ResNet stages at 14x14 or 7x7); use the absolute embedding only when positions have a fixed
meaning (aligned images, fixed-length sequences). ``size`` and ``receptive_kernel`` together (as in the usage examples
of the reference TensorFlow implementation) select the local lambda convolution and ``size`` is then checked against
the number of input positions.

The implementation uses reshapes and plain matrix products only (no einsum), so that the exported ONNX graph is made of
``MatMul``/``Reshape``/``Transpose``/``Softmax``/``Conv`` nodes with static shapes apart from the batch, and every
``MatMul`` either multiplies by a constant or has operands of equal rank and equal batch dimensions (which old
runtimes such as OpenCV DNN 4.6 require).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

__all__ = [
    "LambdaNetwork1DConv",
    "LambdaNetwork1Dense",
    "LambdaNetwork2DConv",
    "relative_position_index",
]

_DATA_FORMATS = ("channels_last", "channels_first")
_PROJECTION_KWARGS = ("kernel_initializer", "kernel_regularizer", "kernel_constraint")


def relative_position_index(spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Index into a flattened relative table for every (query, context) pair.

    For a 2D grid (H, W) the table ``R`` has shape (2H-1, 2W-1, ...) and the returned array ``idx`` of shape (n, m),
    n = m = H*W, holds the flat index of ``R[dy + H - 1, dx + W - 1]`` where (dy, dx) = pos(m) - pos(n). For a 1D
    sequence (T,) the table has shape (2T-1, ...) and ``idx[n, m] = m - n + T - 1``.
    """
    if len(spatial_shape) == 1:
        (t,) = spatial_shape
        pos = np.arange(t)
        return (pos[None, :] - pos[:, None] + t - 1).astype(np.int32)  # n, m
    hh, ww = spatial_shape
    rows, cols = np.meshgrid(np.arange(hh), np.arange(ww), indexing="ij")
    pos = np.stack([rows.ravel(), cols.ravel()], axis=-1)  # n, 2
    rel = pos[None, :, :] - pos[:, None, :]  # n, m, 2 : pos(m) - pos(n)
    return ((rel[..., 0] + hh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)).astype(np.int32)  # n, m


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


class _LambdaLayer(layers.Layer):
    """Shared implementation of the 1D and 2D lambda layers (see the module docstring for the equations).

    Subclasses set ``_rank`` (number of spatial dims) and implement ``_make_projection``.
    """

    _rank = 2

    def __init__(
        self,
        kernel_out: int,
        key_depth: int = 16,
        intra_depth: int = 1,
        heads: int = 4,
        size: int | None = None,
        receptive_kernel: int | None = None,
        relative: bool = False,
        content_only: bool = False,
        data_format: str = "channels_last",
        norm_keys: bool = False,
        position_bias: bool = False,
        norm_epsilon: float = 1e-5,
        norm_momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        projection_kwargs = {key: kwargs.pop(key) for key in _PROJECTION_KWARGS if key in kwargs}
        super().__init__(**kwargs)
        _check_positive("kernel_out", kernel_out)
        _check_positive("key_depth", key_depth)
        _check_positive("intra_depth", intra_depth)
        _check_positive("heads", heads)
        _check_positive("size", size, allow_none=True)
        _check_positive("receptive_kernel", receptive_kernel, allow_none=True)
        if kernel_out % heads:
            raise ValueError(
                f"`kernel_out` ({kernel_out}) must be divisible by `heads` ({heads}): each head gets kernel_out / heads "
                "value channels."
            )
        if receptive_kernel is not None and receptive_kernel % 2 == 0:
            raise ValueError(
                f"`receptive_kernel` must be odd so the lambda convolution is centred, got {receptive_kernel}."
            )
        if data_format not in _DATA_FORMATS:
            raise ValueError(f"`data_format` must be one of {_DATA_FORMATS}, got {data_format!r}.")
        if relative and receptive_kernel is not None:
            raise ValueError(
                "`relative=True` selects a global relative position embedding and cannot be combined with "
                "`receptive_kernel` (the lambda convolution is already relative)."
            )
        if content_only and (size is not None or receptive_kernel is not None or relative):
            raise ValueError("`content_only=True` cannot be combined with `size`, `receptive_kernel` or `relative`.")
        if not content_only and size is None and receptive_kernel is None and not relative:
            raise ValueError(
                "No position lambda selected: pass `size` (global absolute embedding), `relative=True` (global relative "
                "embedding), `receptive_kernel` (local lambda convolution), or `content_only=True` explicitly."
            )
        if not float(norm_epsilon) > 0.0:
            raise ValueError(f"`norm_epsilon` must be positive, got {norm_epsilon!r}.")

        self.kernel_out = int(kernel_out)
        self.key_depth = int(key_depth)
        self.intra_depth = int(intra_depth)
        self.heads = int(heads)
        self.size = None if size is None else int(size)
        self.receptive_kernel = None if receptive_kernel is None else int(receptive_kernel)
        self.relative = bool(relative)
        self.content_only = bool(content_only)
        self.data_format = data_format
        self.norm_keys = bool(norm_keys)
        self.position_bias = bool(position_bias)
        self.norm_epsilon = float(norm_epsilon)
        self.norm_momentum = float(norm_momentum)
        self.value_depth = self.kernel_out // self.heads
        self.projection_kwargs = {
            "kernel_initializer": keras.initializers.get(projection_kwargs.get("kernel_initializer", "lecun_normal")),
            "kernel_regularizer": keras.regularizers.get(projection_kwargs.get("kernel_regularizer")),
            "kernel_constraint": keras.constraints.get(projection_kwargs.get("kernel_constraint")),
        }

        k, u, h, v = self.key_depth, self.intra_depth, self.heads, self.value_depth
        self.query = self._make_projection(h * k, "query")
        self.key = self._make_projection(u * k, "key")
        self.value = self._make_projection(u * v, "value")
        # sub-layers share this layer's dtype policy (as keras.layers.MultiHeadAttention's do): with
        # dtype="mixed_float16" they compute in float16 and keep float32 variables
        norm = {"axis": -1, "epsilon": self.norm_epsilon, "momentum": self.norm_momentum, "dtype": self.dtype_policy}
        self.query_norm = layers.BatchNormalization(name="query_norm", **norm)
        self.key_norm = layers.BatchNormalization(name="key_norm", **norm) if self.norm_keys else None
        self.value_norm = layers.BatchNormalization(name="value_norm", **norm)
        self.position_conv = None
        if self.mode == "local":
            kernel = (self.receptive_kernel, self.receptive_kernel) if self._rank == 2 else (self.receptive_kernel, 1)
            # Conv2D over (H, W) (1D: (T, 1)) from u to k channels; the value axis v is folded into the batch. It runs
            # channels last (TensorFlow's CPU Conv2D has no NCHW kernel without oneDNN) between two transposes that
            # tf2onnx cancels against its own: the exported graph keeps one NCHW Conv (see _local_position_lambda).
            self.position_conv = layers.Conv2D(
                k,
                kernel,
                padding="same",
                use_bias=self.position_bias,
                data_format="channels_last",
                name="position_conv",
                dtype=self.dtype_policy,
            )
        self.position_embedding = None
        self._spatial: tuple[int | None, ...] | None = None
        self._relative_index: np.ndarray | None = None

    # -- configuration -------------------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """Which position lambda the layer computes: ``"local"``, ``"relative"``, ``"absolute"`` or ``"content"``."""
        if self.receptive_kernel is not None:
            return "local"
        if self.relative:
            return "relative"
        if self.size is not None:
            return "absolute"
        return "content"

    def _make_projection(self, units: int, name: str) -> layers.Layer:
        raise NotImplementedError

    def _projection_args(self) -> dict[str, Any]:
        """Keyword arguments for one projection, with its own copy of the kernel initializer.

        A Keras 3 initializer instance without a seed draws its seed once, so sharing one instance between the three
        projections would give the query, key and value kernels identical initial values.
        """
        args = dict(self.projection_kwargs, dtype=self.dtype_policy)
        args["kernel_initializer"] = keras.initializers.get(keras.initializers.serialize(args["kernel_initializer"]))
        return args

    def _split_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, tuple[int | None, ...]]:
        """Return (channels, spatial dims) of an input shape in this layer's data format."""
        if len(input_shape) != self._rank + 2:
            layout = "(b, H, W, c)" if self._rank == 2 else "(b, T, c)"
            if self.data_format == "channels_first":
                layout = "(b, c, H, W)" if self._rank == 2 else "(b, c, T)"
            raise ValueError(
                f"{type(self).__name__} expects a rank-{self._rank + 2} input {layout} with "
                f"data_format={self.data_format!r}, got shape {tuple(input_shape)}."
            )
        if self.data_format == "channels_last":
            return input_shape[-1], tuple(input_shape[1:-1])
        return input_shape[1], tuple(input_shape[2:])

    # -- weights -------------------------------------------------------------------------------------------------

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create the weights for an input of shape (b, H, W, c) / (b, T, c) (or channels first).

        Weights (c input channels, k key depth, u intra depth, h heads, v = kernel_out / h):
        ``query`` kernel (1, 1, c, h*k) [2D conv] / (1, c, h*k) [1D conv] / (c, h*k) [dense];
        ``key`` kernel ... (c, u*k); ``value`` kernel ... (c, u*v);
        ``query_norm`` / ``value_norm`` (/ ``key_norm``) batch-norm statistics of size h*k / u*v (/ u*k);
        ``position_embedding``: (n, n, k, u) absolute, (2H-1, 2W-1, k, u) or (2T-1, k, u) relative;
        ``position_conv`` kernel (r, r, u, k) (1D: (r, 1, u, k)) and bias (k,) if ``position_bias``.
        """
        channels, spatial = self._split_shape(tuple(input_shape))
        if channels is None:
            raise ValueError(f"{type(self).__name__} needs a known number of input channels, got shape {input_shape}.")
        known = all(dim is not None for dim in spatial)
        n = math.prod(spatial) if known else None
        if self.size is not None and n is not None and self.size != n:
            raise ValueError(
                f"`size`={self.size} does not match the input: {' x '.join(map(str, spatial))} = {n} positions "
                f"(size is the number of positions, H*W for 2D inputs and T for 1D inputs)."
            )
        if self.mode == "relative" and not known:
            raise ValueError(
                f"`relative=True` needs static spatial dims to size the relative embedding, got shape {input_shape}."
            )
        if self.mode == "absolute" and n is None:
            n = self.size
        self._spatial = spatial

        k, u, h, v = self.key_depth, self.intra_depth, self.heads, self.value_depth
        proj_shape = (None,) * (self._rank + 1) + (channels,)
        for projection in (self.query, self.key, self.value):
            projection.build(proj_shape if not isinstance(projection, layers.Dense) else (None, channels))
        self.query_norm.build((None, None, h * k))
        if self.key_norm is not None:
            self.key_norm.build((None, None, u * k))
        self.value_norm.build((None, None, u * v))
        # std 1/sqrt(m*u): the position lambda sums over the m*u context entries, so this keeps it O(|v|)
        embedding_init = keras.initializers.RandomNormal(stddev=1.0 / math.sqrt((n or 1) * u))
        if self.mode == "absolute":
            self.position_embedding = self.add_weight(
                name="position_embedding", shape=(n, n, k, u), initializer=embedding_init
            )
        elif self.mode == "relative":
            table = tuple(2 * dim - 1 for dim in spatial)
            self.position_embedding = self.add_weight(
                name="position_embedding", shape=(*table, k, u), initializer=embedding_init
            )
            self._relative_index = relative_position_index(spatial)
        elif self.mode == "local":
            self.position_conv.build((None, None, None, u))
        super().build(input_shape)

    # -- forward -------------------------------------------------------------------------------------------------

    def _kernel(self, projection: layers.Layer) -> Any:
        """The projection's kernel as a (1, c, units) matrix in the compute dtype (a 1x1 conv is a matmul).

        The leading 1 makes TensorFlow use a broadcasting batch matmul instead of ``tensordot``, whose dynamic
        reshapes would export as Shape/Gather/Concat subgraphs.
        """
        kernel = projection.kernel
        return ops.cast(ops.reshape(kernel, (1, kernel.shape[-2], kernel.shape[-1])), self.compute_dtype)

    def _project(self, x: Any, projection: layers.Layer, norm: layers.Layer | None, training: Any) -> Any:
        out = ops.matmul(x, self._kernel(projection))  # b, n, units
        return out if norm is None else norm(out, training=training)

    def position_embeddings(self) -> Any:
        """The global embedding E as a (n, m, k, u) tensor (the relative table gathered to every pair)."""
        if self.mode == "absolute":
            return self.position_embedding
        if self.mode != "relative":
            raise ValueError(f"layer in mode {self.mode!r} has no global position embedding")
        k, u = self.key_depth, self.intra_depth
        table = ops.reshape(self.position_embedding, (-1, k, u))  # (2H-1)(2W-1), k, u
        return ops.take(table, self._relative_index, axis=0)  # n, m, k, u

    def _global_position_lambda(self, v_ctx: Any, n: Any) -> Any:
        """lambda_p[b, n, k, v] = sum_{m,u} E[n, m, k, u] V[b, m, u, v]; v_ctx is V as (b, m*u, v).

        Computed as V^T E^T so that the constant embedding is the second MatMul operand (one large GEMM, and the form
        old runtimes accept).
        """
        k, vd = self.key_depth, self.value_depth
        emb = ops.cast(self.position_embeddings(), self.compute_dtype)  # n, m, k, u
        emb = ops.reshape(ops.transpose(emb, (1, 3, 0, 2)), (1, -1, n * k))  # 1, (m u), (n k)
        lam = ops.matmul(ops.transpose(v_ctx, (0, 2, 1)), emb)  # b, v, (n k)
        lam = ops.reshape(lam, (-1, vd, n, k))  # b, v, n, k
        return ops.transpose(lam, (0, 2, 3, 1))  # b, n, k, v

    def _local_position_lambda(self, values: Any, n: Any, spatial: tuple[Any, ...]) -> Any:
        """lambda_p = Conv_r(V) with u input and k output channels, per value channel; values is (b, n, u*v)."""
        k, u, vd = self.key_depth, self.intra_depth, self.value_depth
        grid = tuple(spatial) if self._rank == 2 else (spatial[0], 1)
        if u == 1:
            vol = ops.transpose(values, (0, 2, 1))  # b, v, n
        else:
            vol = ops.reshape(values, (-1, n, u, vd))  # b, n, u, v
            vol = ops.transpose(vol, (0, 3, 2, 1))  # b, v, u, n
        vol = ops.reshape(vol, (-1, u, *grid))  # (b v), u, H, W
        # NCHW -> NHWC -> conv -> NCHW: ONNX Conv is NCHW, so tf2onnx wraps the NHWC conv in the inverse transposes and
        # its optimizer removes both pairs; the ONNX graph has one Conv and no extra Transpose.
        vol = ops.transpose(vol, (0, 2, 3, 1))  # (b v), H, W, u
        lam = ops.transpose(self.position_conv(vol), (0, 3, 1, 2))  # (b v), k, H, W
        lam = ops.reshape(lam, (-1, vd, k, n))  # b, v, k, n
        return ops.transpose(lam, (0, 3, 2, 1))  # b, n, k, v

    def call(self, inputs: Any, training: Any = None) -> Any:
        """Apply the layer to (b, H, W, c) / (b, T, c) inputs (channels first: (b, c, H, W) / (b, c, T)).

        Returns (b, H, W, d) / (b, T, d) (channels first: (b, d, H, W) / (b, d, T)), d = ``kernel_out``, the output
        channels ordered head-major (h, v).
        """
        k, u, h, vd = self.key_depth, self.intra_depth, self.heads, self.value_depth
        x = inputs
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, *range(2, self._rank + 2), 1))  # b, *spatial, c
        static = tuple(x.shape[1:-1])
        dynamic = ops.shape(x)
        spatial = tuple(dim if dim is not None else dynamic[i + 1] for i, dim in enumerate(static))
        n = math.prod(spatial) if all(isinstance(dim, int) for dim in spatial) else ops.prod(ops.stack(spatial))
        channels = x.shape[-1]
        x = ops.reshape(x, (-1, n, channels))  # b, n, c

        queries = self._project(x, self.query, self.query_norm, training)  # b, n, h*k
        keys = self._project(x, self.key, self.key_norm, training)  # b, m, u*k
        values = self._project(x, self.value, self.value_norm, training)  # b, m, u*v

        keys = ops.softmax(keys, axis=1)  # normalised over the m context positions
        if u > 1:
            keys = ops.reshape(keys, (-1, n * u, k))  # b, (m u), k
            v_ctx = ops.reshape(values, (-1, n * u, vd))  # b, (m u), v
        else:
            v_ctx = values  # b, m, v
        content_lambda = ops.matmul(ops.transpose(keys, (0, 2, 1)), v_ctx)  # b, k, v
        y = ops.matmul(ops.reshape(queries, (-1, n * h, k)), content_lambda)  # b, (n h), v

        if self.mode in ("absolute", "relative"):
            position_lambda = self._global_position_lambda(v_ctx, n)  # b, n, k, v
        elif self.mode == "local":
            position_lambda = self._local_position_lambda(values, n, spatial)  # b, n, k, v
        else:
            position_lambda = None
        if position_lambda is not None:
            y_pos = ops.matmul(ops.reshape(queries, (-1, n, h, k)), position_lambda)  # b, n, h, v
            y = y + ops.reshape(y_pos, (-1, n * h, vd))  # b, (n h), v

        out = ops.reshape(y, (-1, *spatial, h * vd))  # b, *spatial, d   (channels head-major: h, v)
        if self.data_format == "channels_first":
            out = ops.transpose(out, (0, self._rank + 1, *range(1, self._rank + 1)))  # b, d, *spatial
        return out

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """(b, *spatial, kernel_out) for channels last, (b, kernel_out, *spatial) for channels first."""
        _, spatial = self._split_shape(tuple(input_shape))
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.kernel_out)
        return (input_shape[0], self.kernel_out, *spatial)

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument, so ``from_config(get_config())`` rebuilds the same layer."""
        config = super().get_config()
        config.update(
            {
                "kernel_out": self.kernel_out,
                "key_depth": self.key_depth,
                "intra_depth": self.intra_depth,
                "heads": self.heads,
                "size": self.size,
                "receptive_kernel": self.receptive_kernel,
                "relative": self.relative,
                "content_only": self.content_only,
                "data_format": self.data_format,
                "norm_keys": self.norm_keys,
                "position_bias": self.position_bias,
                "norm_epsilon": self.norm_epsilon,
                "norm_momentum": self.norm_momentum,
                "kernel_initializer": keras.initializers.serialize(self.projection_kwargs["kernel_initializer"]),
                "kernel_regularizer": keras.regularizers.serialize(self.projection_kwargs["kernel_regularizer"]),
                "kernel_constraint": keras.constraints.serialize(self.projection_kwargs["kernel_constraint"]),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="lambda_layers")
class LambdaNetwork2DConv(_LambdaLayer):
    """Lambda layer for images: (b, H, W, c) -> (b, H, W, kernel_out) (channels first: (b, c, H, W) -> (b, d, H, W)).

    The n = H*W positions are both queries and context. Queries, keys and values are 1x1 convolutions without bias
    (``query``, ``key``, ``value``) producing h*k, u*k and u*v channels (v = kernel_out / heads), followed by batch
    normalisation of queries and values (``query_norm``, ``value_norm``; keys too with ``norm_keys``). Each of the h
    heads shares the same lambdas (multi-query), which is why the value depth is kernel_out / heads.

    Args:
        kernel_out: d, output channels; must be divisible by ``heads``.
        key_depth: k, depth of queries and keys (16 in the paper).
        intra_depth: u, intra-depth (1 in most of the paper's models; 4 improves accuracy at a cost).
        heads: h, number of query heads.
        size: number of positions H*W; selects the global absolute embedding, or is checked against the input.
        receptive_kernel: odd r; selects the local lambda convolution over an r x r neighbourhood.
        relative: use a global relative embedding (2H-1, 2W-1, k, u) (translation-equivariant).
        content_only: no position lambda (must be asked for explicitly).
        data_format: ``"channels_last"`` (default) or ``"channels_first"`` for both input and output.
        norm_keys: batch-normalise the keys before the softmax.
        position_bias: give the local position convolution a bias (as the PyTorch ``lambda-networks`` layer has).
        norm_epsilon, norm_momentum: batch-norm settings (defaults match PyTorch's BatchNorm).
        **kwargs: ``kernel_initializer``, ``kernel_regularizer``, ``kernel_constraint`` go to the projections; the rest
            (``name``, ``dtype``, ``trainable``) to ``keras.layers.Layer``.
    """

    _rank = 2

    def _make_projection(self, units: int, name: str) -> layers.Layer:
        return layers.Conv2D(units, 1, use_bias=False, name=name, **self._projection_args())


@keras.saving.register_keras_serializable(package="lambda_layers")
class LambdaNetwork1DConv(_LambdaLayer):
    """Lambda layer for sequences with 1-wide convolution projections: (b, T, c) -> (b, T, kernel_out).

    Same maths as :class:`LambdaNetwork2DConv` with n = m = T positions: ``size=T`` gives an absolute (T, T, k, u)
    embedding, ``relative=True`` a relative (2T-1, k, u) table, ``receptive_kernel=r`` a local convolution of width r
    along time. Channels first means (b, c, T) in and (b, d, T) out.
    """

    _rank = 1

    def _make_projection(self, units: int, name: str) -> layers.Layer:
        return layers.Conv1D(units, 1, use_bias=False, name=name, **self._projection_args())


@keras.saving.register_keras_serializable(package="lambda_layers")
class LambdaNetwork1Dense(_LambdaLayer):
    """Lambda layer for sequences with dense projections: (b, T, c) -> (b, T, kernel_out).

    Identical to :class:`LambdaNetwork1DConv` except that ``query``, ``key`` and ``value`` are ``Dense`` layers
    (kernels of shape (c, units)) instead of 1-wide convolutions (kernels of shape (1, c, units)).
    """

    _rank = 1

    def _make_projection(self, units: int, name: str) -> layers.Layer:
        return layers.Dense(units, use_bias=False, name=name, **self._projection_args())
