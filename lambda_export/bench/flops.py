"""FLOP counts: analytic for one lambda layer (:func:`layer_flops`), counted from an ONNX graph (:func:`onnx_flops`).

The benchmark divides them by the median latency for the achieved GFLOP/s; for layers the two counts are checked
equal (the exported graph computes exactly the products the analytic count names).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lambda_export.bench.configs import LayerConfig

__all__ = ["layer_flops", "onnx_flops"]


def layer_flops(config: LayerConfig) -> dict[str, int]:
    """Analytic FLOP count (2 per multiply-add) of one lambda layer as implemented in ``lambda_layers.layers``.

    b batch, n = m positions, c input channels, k key depth, u intra-depth, h heads, v = d / h, r receptive field:

    * ``projections``      2·b·n·c·(h·k + u·k + u·v)   queries, keys, values (1×1 convolutions; BN folds away)
    * ``content_lambda``   2·b·m·u·k·v                 λc = Σ_{m,u} softmax_m(K) V
    * ``content_output``   2·b·n·h·k·v                 q·λc
    * ``position_lambda``  global: 2·b·n·m·k·u·v       λp[n] = Σ_{m,u} E[n,m] V
                           local:  2·b·n·k·u·v·r^D     the lambda convolution (D = 1 or 2 spatial dims, 'same' padding)
    * ``position_output``  2·b·n·h·k·v                 q·λp (computed as a second product, then added)

    Not counted: the key softmax (~3·b·m·u·k exp/add/div), the output add (b·n·h·v) and data movement.
    """
    b, n, m, c = config.batch, config.n, config.n, config.channels
    k, u, h, v = config.k, config.u, config.h, config.v
    position = 2 * b * n * m * k * u * v if config.is_global else 2 * b * n * k * u * v * config.r**config.rank
    terms = {
        "projections": 2 * b * n * c * (h * k + u * k + u * v),
        "content_lambda": 2 * b * m * u * k * v,
        "content_output": 2 * b * n * h * k * v,
        "position_lambda": position,
        "position_output": 2 * b * n * h * k * v,
    }
    terms["total"] = sum(terms.values())
    return terms


def onnx_flops(model: Any, batch: int) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of the MatMul, Gemm and Conv nodes of an ONNX graph at ``batch``.

    Shapes come from ``onnx.shape_inference`` with the batch dim of every input set to ``batch``; nodes whose shapes
    stay unknown are counted in ``unknown_nodes``.
    """
    import onnx
    from onnx import helper

    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.output.extend(model.graph.output)
    initializer_names = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        dims = copy.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
        graph.input.append(copy)
    for init in model.graph.initializer:
        small_int = init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and np.prod(init.dims) <= 64
        if small_int:
            graph.initializer.append(init)
        else:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    shapes: dict[str, list[int | None]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    counts = {"matmul": 0, "conv": 0, "unknown_nodes": 0}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        out = shapes.get(node.output[0])
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[1])
        if not out or any(d is None for d in out) or a is None or b is None:
            counts["unknown_nodes"] += 1
            continue
        if node.op_type == "Conv":
            kernel = b[1:]  # (C_in / group, *kernel): the group count is already in the weight's shape
            if any(d is None for d in kernel):
                counts["unknown_nodes"] += 1
                continue
            counts["conv"] += 2 * math.prod(out) * math.prod(kernel)
        else:
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            depth = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
            if depth is None:
                counts["unknown_nodes"] += 1
                continue
            counts["matmul"] += 2 * math.prod(out) * depth
    counts["total"] = counts["matmul"] + counts["conv"]
    return counts
