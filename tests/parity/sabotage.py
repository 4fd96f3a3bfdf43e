"""Deep models with calibrated batch norms, and sabotaged copies of their ONNX exports (tests/parity).

The sabotages edit the exported ``onnx.ModelProto`` the way a converter bug would: an initializer or node changed, the
rest of the graph left as it is. tf2onnx names weights after the Keras layer that owns them
(``<model>_1/<layer>_1/...``), which is how each one finds its target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


def calibrate(model: Any, x: np.ndarray) -> Any:
    """Set every batch norm's moving statistics to those of one training batch ``x`` (in place) and return ``model``.

    Random weights with the initial statistics (mean 0, variance 1) make deep networks' activations explode or
    vanish, and their outputs constant; statistics of one batch make each batch norm normalise, as after training.
    """
    import keras

    norms = []
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            norms.append(layer)
        stack.extend(getattr(layer, "layers", []) if isinstance(layer, keras.Model) else [])
        stack.extend(
            norm for norm in (getattr(layer, a, None) for a in ("query_norm", "key_norm", "value_norm")) if norm
        )
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    model(x, training=True)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model


def damp_residual_branches(model: Any, gamma: float) -> Any:
    """Multiply the scale of each residual branch's last batch norm (``*_bn3``) of a LambdaResNet by ``gamma``.

    Lambda layers multiply two normalised quantities (queries by lambdas), so a small shift of their input statistics
    grows quadratically; through the 6 lambda blocks of a LambdaResNet-50's c4 stage, calibrated statistics of one
    batch let activations reach 1e18 and overflow on other inputs. Branches at half scale (the paper trains with the
    branches' last scale at zero) keep activations of order 10 and the outputs finite and varied.
    """
    for layer in model.layers:
        if layer.name.endswith("_bn3"):
            layer.gamma.assign(layer.gamma.numpy() * gamma)
    return model


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def replace(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """Replace initializer ``name`` of ``model`` (in place) by ``array`` in its dtype."""
    init = next(i for i in model.graph.initializer if i.name == name)
    dtype = numpy_helper.to_array(init).dtype
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))


def _named(model: onnx.ModelProto, needle: str) -> list[str]:
    return [i.name for i in model.graph.initializer if needle in i.name]


def weight_of(model: onnx.ModelProto, layer: str, op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")) -> str:
    """The largest weight initializer an ``op_types`` node reads that is named after Keras layer ``layer`` (ties: the
    first name in sorted order). Not the first in node order: the canonical order changes with the graph's content
    (picking the first made a lambda layer's key projection, 15x less sensitive than its queries, the sabotaged
    weight once the order changed)."""
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    found = {
        name
        for node in model.graph.node
        if node.op_type in op_types
        for name in node.input
        if name in sizes and f"/{layer}_1/" in name
    }
    if not found:
        raise AssertionError(f"no {'/'.join(op_types)} weight of {layer}")
    return min(found, key=lambda name: (-sizes[name], name))


# -- sabotages -----------------------------------------------------------------------------------------------------


def scale_weight(model: onnx.ModelProto, layer: str, factor: float) -> onnx.ModelProto:
    """A copy with the (convolution/matmul) weight of ``layer`` multiplied by ``factor`` (e.g. 1.001: off by 1e-3)."""
    out = copy(model)
    name = weight_of(out, layer)
    replace(out, name, initializer(out, name) * factor)
    return out


def drop_bn_epsilon(model: onnx.ModelProto, keras_model: Any, bn: str, conv: str | None = None) -> onnx.ModelProto:
    """A copy that normalises with ``gamma / sqrt(var)`` instead of ``gamma / sqrt(var + epsilon)`` in batch norm ``bn``.

    The export computes the batch norm as a scale (its own ``batchnorm/mul`` initializer, or folded into the weights
    of the preceding convolution ``conv``, output channels first) and a bias ``beta − mean·scale``
    (``batchnorm/sub``); both are multiplied by r = sqrt((var + eps) / var): scale·r, beta − (beta − bias)·r.
    """
    layer = keras_model.get_layer(bn)
    weights = {w.path.split("/")[-1]: np.asarray(w.numpy(), np.float64) for w in layer.weights}
    beta, var = weights.get("beta", 0.0), weights["moving_variance"]
    r = np.sqrt((var + layer.epsilon) / var)
    out = copy(model)
    bias = _operand(out, f"/{bn}_1/batchnorm/sub", f"/{bn}_1/batchnorm/add_1", r.size)
    scale = _operand(out, f"/{bn}_1/batchnorm/mul", f"/{bn}_1/batchnorm/mul_1", r.size) or weight_of(out, conv or bn)
    assert bias is not None, f"no bias of {bn}"
    w = initializer(out, scale).astype(np.float64)
    replace(out, scale, w * r.reshape(-1, *([1] * (w.ndim - 1))))
    b = initializer(out, bias).astype(np.float64)
    shape = b.shape
    replace(out, bias, (beta - (beta - b.reshape(-1)) * r).reshape(shape))
    return out


def _operand(model: onnx.ModelProto, needle: str, node_name: str, size: int) -> str | None:
    """The initializer of ``size`` elements named with ``needle``, else the one read by a node named ``node_name``."""
    names = [n for n in _named(model, needle) if initializer(model, n).size == size]
    if names:
        return names[0]
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name.endswith(node_name):
            for name in node.input:
                if name in inits and initializer(model, name).size == size:
                    return name
    return None


def _lambda_initializers(model: onnx.ModelProto, layer: str) -> dict[str, np.ndarray]:
    return {name: initializer(model, name) for name in _named(model, f"/{layer}_1/")}


def shift_position_embedding(model: onnx.ModelProto, keras_layer: Any) -> onnx.ModelProto:
    """A copy in which lambda layer ``keras_layer``'s position embedding is off by one query position.

    Global embeddings (absolute or relative, exported as one (m·u, n·k) matrix): the query axis n rolled by one. The
    local lambda convolution: its kernel rolled by one row.
    """
    out = copy(model)
    k, u = keras_layer.key_depth, keras_layer.intra_depth
    found = _lambda_initializers(out, keras_layer.name)
    if keras_layer.mode == "local":
        name = weight_of(out, keras_layer.name, ("Conv",))
        replace(out, name, np.roll(initializer(out, name), 1, axis=2))
        return out
    n = int(np.prod(keras_layer.input.shape[1:-1]))  # channels last: (b, H, W, c)
    (name,) = [name for name, array in found.items() if array.shape == (n * u, n * k)]
    table = initializer(out, name).reshape(n * u, n, k)
    replace(out, name, np.roll(table, 1, axis=1).reshape(n * u, n * k))
    return out


def transpose_heads(model: onnx.ModelProto, keras_layer: Any) -> onnx.ModelProto:
    """A copy in which lambda layer ``keras_layer`` reads its query channels as (k, h) instead of (h, k).

    The query projection's weight (c, h·k) and its batch norm's bias (h·k) get their columns transposed: the layout
    mistake of a converter that swaps the heads and key depth axes of a reshape.
    """
    out = copy(model)
    h, k = keras_layer.heads, keras_layer.key_depth
    (bias,) = _named(out, f"/{keras_layer.name}_1/query_norm_1/batchnorm/sub")
    add = next(node for node in out.graph.node if bias in node.input)
    data = next(name for name in add.input if name != bias)
    matmul = next(node for node in out.graph.node if data in node.output)
    assert matmul.op_type == "MatMul", matmul.op_type
    weight = next(name for name in matmul.input if name in {i.name for i in out.graph.initializer})
    w = initializer(out, weight)
    assert w.shape[-1] == h * k, (w.shape, h, k)
    replace(out, weight, w.reshape(-1, h, k).transpose(0, 2, 1).reshape(w.shape))
    b = initializer(out, bias)
    replace(out, bias, b.reshape(h, k).T.reshape(b.shape))
    return out
