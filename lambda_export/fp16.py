"""float32 → float16 conversion of ONNX graphs, written with ``onnx`` helpers only (no onnxconverter-common, and not
onnxruntime's converter: see the end of this docstring).

:func:`to_float16` stores float32 initializers and constants as float16 and makes every op that ONNX allows in float16
compute in float16. Which input of which op may be float16 is read from the ONNX op schemas (an input typed by a type
variable whose constraint includes ``tensor(float16)``), so inputs that ONNX types as ``tensor(float)`` only (e.g.
``Resize`` scales) stay float32 and get a ``Cast`` where needed. Ops in :data:`DEFAULT_OP_BLOCK_LIST` stay float32
(``Cast`` to float32 before them and back to float16 after them): they either lose too much in float16 (index
arithmetic of ``Range``/``CumSum``, box coordinates, sampling) or are commonly missing from float16 kernels.

What ONNX Runtime's CPU provider does with a float16 graph (measured with onnxruntime 1.32 on x86-64): it has **no**
float16 kernel for Add, Mul, Sub, Div, Relu, Sigmoid, Tanh, Exp, Sqrt, MatMul, Gemm, Conv, AveragePool, MaxPool,
GlobalAveragePool, ReduceSum, ReduceMean, Softmax or BatchNormalization, and does not need one: its mandatory
``InsertCastTransformer`` wraps each such node in ``Cast`` nodes at session creation and then removes the
float16→float32→float16 round trips between consecutive nodes (even with graph optimisations disabled). Data-movement
ops (Transpose, Reshape, Concat, ...) run in float16 directly. So a float16 model *runs* on the CPU provider without
extra Casts from us, but computes in float32 there: only the float16 rounding of weights and of the graph inputs is
visible. GPUs (CUDA/TensorRT providers) compute in float16 for real. :func:`emulate_fp16_rounding` builds a float32
graph that rounds every float16 op output to float16, so a CPU can measure the error float16 storage between ops causes.

Why not ``onnxruntime.transformers.float16.convert_float_to_float16`` (shipped inside our dependency onnxruntime):
measured side by side with onnxruntime 1.32 (``keep_io_types=True``, default block lists) on exports of
``lambda_export.convert``, batch 4 at 32×32 (LambdaResNet-26: batch 2 at 64×64), float16 graph on ORT CPU against
TensorFlow float32, max abs error (and with :func:`emulate_fp16_rounding`):

* demo, ``build_demo_model(seed=0)``: 3.07e-5 (1.42e-4) both; 47 nodes, 2 Casts both; 58.2 kB vs 62.0 kB
* demo trained 8 steps (the tests' ``lightly_trained_demo``): 1.29e-4 (4.40e-4) both; 51 nodes, 2 Casts both;
  60.4 kB vs 64.2 kB
* LambdaResNet-26: 1.53e-5 (5.68e-5) both; 160 nodes, 2 Casts both; 20.93 MB vs 20.94 MB

Same numbers, same Casts, latency equal within the noise of a shared 2-core CPU (1.4-1.9 ms, 38-43 ms), but
onnxruntime's graph fails ``onnx.checker`` on every one of them (it appends the Casts of the graph inputs after
their readers: "Nodes in a graph must be topologically sorted"; ONNX Runtime itself accepts it, stricter consumers
do not), keeps the value_info of its shape inference (the larger files; the weights are the same bytes), and turns
a weight of 1e-9 into 5.96e-8 (its min_positive_val) where float16 rounds it to 0. It does convert If/Loop bodies,
which :func:`to_float16` refuses (a Keras GRU exports as a Loop): the one case where it would be the better tool,
after a topological sort. :func:`emulate_fp16_rounding` and :func:`tensor_elem_types` have no counterpart there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lambda_export.errors import ConversionError, first_line
from lambda_export.graph import UniqueNames, graph_names

__all__ = ["DEFAULT_OP_BLOCK_LIST", "FP16_MAX", "emulate_fp16_rounding", "tensor_elem_types", "to_float16"]

FP16_MAX = 65504.0
"""Largest finite float16; float32 constants beyond it are clamped to it (an Inf weight would poison the graph)."""

DEFAULT_OP_BLOCK_LIST: frozenset[str] = frozenset(
    {
        "Range",
        "CumSum",
        "TopK",
        "NonMaxSuppression",
        "RoiAlign",
        "Resize",
        "Upsample",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
    }
)
"""Ops kept in float32 by :func:`to_float16` unless the caller passes another ``op_block_list``."""

# Ops whose output is exactly representable in float16 when their inputs are (they move, select or compare values):
# rounding their output again changes nothing.
_ROUNDING_EXACT = frozenset(
    {
        "Transpose",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "Expand",
        "Tile",
        "Pad",
        "DepthToSpace",
        "SpaceToDepth",
        "MaxPool",
        "Relu",
        "ReduceMax",
        "ReduceMin",
        "Max",
        "Min",
        "Neg",
        "Abs",
    }
)

_F32 = TensorProto.FLOAT
_F16 = TensorProto.FLOAT16
_FP16_TYPE = "tensor(float16)"


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ConversionError("the model imports no default-domain (ai.onnx) opset")


def tensor_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inputs, initializers, node outputs), from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference can fail on exotic graphs: fall back to what the file declares
        inferred = model
    types: dict[str, int] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = attr.t.data_type
    return types


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute)


def _formal(params: list[Any], index: int) -> Any | None:
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


class _Plan:
    """Per-node decision, computed from the original types only: which inputs must be float16 / float32 and which
    outputs become float16."""

    def __init__(self, wants: list[int | None], out_fp16: list[bool]) -> None:
        self.wants = wants  # per input: _F16, _F32 or None (not a float32 tensor: leave alone)
        self.out_fp16 = out_fp16


def _plan_node(node: onnx.NodeProto, types: dict[str, int], opset: int, block: Iterable[str]) -> _Plan:
    in_types = [types.get(name) if name else None for name in node.input]
    keep = _Plan([_F32 if t == _F32 else None for t in in_types], [False] * len(node.output))
    if node.op_type in block or node.domain not in ("", "ai.onnx"):
        return keep
    if any(name and types.get(name) is None for name in [*node.input, *node.output]):
        return keep  # an unknown type: do not guess
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except Exception:
        return keep
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    fp16_vars: set[str] = set()
    for index, t in enumerate(in_types):
        formal = _formal(list(schema.inputs), index)
        if t == _F32 and formal is not None and _FP16_TYPE in constraints.get(formal.type_str, set()):
            fp16_vars.add(formal.type_str)
    if node.op_type == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        # Cast reads any type: its input stays as produced (a float16 producer is already rounded)
        return _Plan([None] * len(node.input), [to == _F32])
    if node.op_type in ("Constant", "ConstantOfShape"):
        out = [types.get(node.output[0]) == _F32]
        return _Plan([None] * len(node.input), out)
    wants: list[int | None] = []
    for index, t in enumerate(in_types):
        if t != _F32:
            wants.append(None)
            continue
        formal = _formal(list(schema.inputs), index)
        wants.append(_F16 if formal is not None and formal.type_str in fp16_vars else _F32)
    out_fp16 = []
    for index, name in enumerate(node.output):
        formal = _formal(list(schema.outputs), index)
        out_fp16.append(bool(name) and types.get(name) == _F32 and formal is not None and formal.type_str in fp16_vars)
    return _Plan(wants, out_fp16)


def _to_fp16_array(array: np.ndarray) -> np.ndarray:
    return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)


def to_float16(
    model: onnx.ModelProto,
    keep_io_types: bool = True,
    *,
    op_block_list: Iterable[str] | None = None,
) -> onnx.ModelProto:
    """A float16 copy of ``model``: float32 weights stored as float16, float32 compute in float16 where ONNX allows it.

    Args:
        model: a float32 ONNX model (not modified).
        keep_io_types: keep float32 graph inputs/outputs, with a ``Cast`` after each input and before each output;
            False makes float32 graph inputs/outputs float16.
        op_block_list: op types to keep in float32 (default :data:`DEFAULT_OP_BLOCK_LIST`).

    Float32 constants beyond ±65504 are clamped to ±65504. ``Cast(to=FLOAT)`` nodes become ``Cast(to=FLOAT16)``.

    Steps: refuse control flow → plan each node from the original types (:func:`_plan_node`) → what the readers of
    each float32 tensor want (:func:`_wishes`) → graph inputs and initializers (:func:`_convert_inputs`,
    :func:`_convert_initializers`) → the nodes, with the Casts their plans ask for (:class:`_Rewrite`) → graph outputs
    (:func:`_convert_outputs`) → ``onnx.checker``.

    Raises:
        ConversionError: the graph has control flow (If/Loop/Scan subgraphs), which this converter does not handle,
            or the result fails ``onnx.checker``.
    """
    block = frozenset(DEFAULT_OP_BLOCK_LIST if op_block_list is None else op_block_list)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for node in graph.node:
        if _has_subgraph(node):
            raise ConversionError(f"to_float16 does not convert control flow: node {node.name!r} ({node.op_type})")
    opset = _opset(out)
    types = tensor_elem_types(out)
    plans = [_plan_node(node, types, opset, block) for node in graph.node]
    wishes = _wishes(graph, plans, types, keep_io_types)
    rewrite = _Rewrite(fresh=UniqueNames(graph_names(graph)).new)
    _convert_inputs(graph, keep_io_types, rewrite)
    _convert_initializers(graph, wishes, rewrite)
    for node, plan in zip(list(graph.node), plans, strict=True):
        rewrite.add(node, plan, wishes, types)
    _convert_outputs(graph, types, keep_io_types, rewrite)
    del graph.node[:]
    graph.node.extend(rewrite.nodes)
    del graph.value_info[:]
    _set_meta(out, "precision", "float16")
    try:
        onnx.checker.check_model(out)
    except Exception as exc:
        raise ConversionError(f"the float16 graph is invalid: {first_line(exc, None)}") from exc
    return out


def _wishes(
    graph: onnx.GraphProto, plans: list[_Plan], types: dict[str, int], keep_io_types: bool
) -> dict[str, set[int]]:
    """Tensor name → the element types its readers want (float32 graph outputs are read "as float32" when kept)."""
    wishes: dict[str, set[int]] = {}
    for node, plan in zip(graph.node, plans, strict=True):
        for name, want in zip(node.input, plan.wants, strict=True):
            if want is not None:
                wishes.setdefault(name, set()).add(want)
    output_names = {value.name for value in graph.output}
    for name in output_names:
        if types.get(name) == _F32 and keep_io_types:
            wishes.setdefault(name, set()).add(_F32)
    return wishes


@dataclass
class _Rewrite:
    """The float16 graph being built: the element type each tensor has in it, the float16 copies of initializers
    whose readers disagree, one Cast per (tensor, type), and the new node list in order."""

    fresh: Callable[[str], str]
    current: dict[str, int] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)
    casts: dict[tuple[str, int], str] = field(default_factory=dict)
    nodes: list[onnx.NodeProto] = field(default_factory=list)

    def cast(self, name: str, to: int) -> str:
        """``name`` as type ``to``: itself, its float16 initializer copy, or the output of a (shared) Cast."""
        if self.current.get(name) == to:
            return name
        if to == _F16 and name in self.copies:
            return self.copies[name]
        key = (name, to)
        if key not in self.casts:
            target = self.fresh(f"{name}_{'fp16' if to == _F16 else 'fp32'}")
            self.nodes.append(helper.make_node("Cast", [name], [target], to=to, name=self.fresh(f"{target}_cast")))
            self.current[target] = to
            self.casts[key] = target
        return self.casts[key]

    def add(self, node: onnx.NodeProto, plan: _Plan, wishes: dict[str, set[int]], types: dict[str, int]) -> None:
        """``node`` after the Casts of its inputs, a float16 ``Cast``/constant where its plan says so."""
        for index, (name, want) in enumerate(zip(node.input, plan.wants, strict=True)):
            if want is not None and name:
                node.input[index] = self.cast(name, want)
        if node.op_type == "Cast" and plan.out_fp16[0]:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = _F16
        elif node.op_type in ("Constant", "ConstantOfShape") and plan.out_fp16[0]:
            if wishes.get(node.output[0], set()) == {_F16}:
                _constant_to_fp16(node)
            else:
                plan.out_fp16[0] = False
        self.nodes.append(node)
        for name, half in zip(node.output, plan.out_fp16, strict=True):
            if name:
                self.current[name] = _F16 if half else types.get(name, 0)


def _constant_to_fp16(node: onnx.NodeProto) -> None:
    """A ``Constant``/``ConstantOfShape`` whose float32 value becomes float16 (ConstantOfShape's default value too)."""
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _F32:
            attr.t.CopyFrom(numpy_helper.from_array(_to_fp16_array(numpy_helper.to_array(attr.t)), attr.t.name))
    if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))


def _convert_inputs(graph: onnx.GraphProto, keep_io_types: bool, rewrite: _Rewrite) -> None:
    """Graph inputs: float16 unless ``keep_io_types``; their types recorded."""
    for value in graph.input:
        elem = value.type.tensor_type.elem_type
        if elem == _F32 and not keep_io_types:
            value.type.tensor_type.elem_type = _F16
            elem = _F16
        rewrite.current[value.name] = elem


def _convert_initializers(graph: onnx.GraphProto, wishes: dict[str, set[int]], rewrite: _Rewrite) -> None:
    """Initializers: converted in place when every reader wants float16, a float16 copy added when readers
    disagree."""
    new_inits = []
    for init in graph.initializer:
        rewrite.current[init.name] = init.data_type
        if init.data_type != _F32 or _F16 not in wishes.get(init.name, set()):
            continue
        half = numpy_helper.from_array(_to_fp16_array(numpy_helper.to_array(init)), init.name)
        if wishes[init.name] == {_F16}:
            init.CopyFrom(half)
            rewrite.current[init.name] = _F16
        else:
            half.name = rewrite.fresh(f"{init.name}_fp16")
            new_inits.append(half)
            rewrite.copies[init.name] = half.name
            rewrite.current[half.name] = _F16
    graph.initializer.extend(new_inits)


def _convert_outputs(graph: onnx.GraphProto, types: dict[str, int], keep_io_types: bool, rewrite: _Rewrite) -> None:
    """Graph outputs that became float16: typed float16, or (``keep_io_types``) computed under a new name and cast
    back to float32 under their own."""
    for value in graph.output:
        if rewrite.current.get(value.name) != _F16 or types.get(value.name) != _F32:
            continue
        if not keep_io_types:
            value.type.tensor_type.elem_type = _F16
            continue
        inner = rewrite.fresh(f"{value.name}_fp16")
        for node in rewrite.nodes:
            for i, name in enumerate(node.output):
                if name == value.name:
                    node.output[i] = inner
            for i, name in enumerate(node.input):
                if name == value.name:
                    node.input[i] = inner
        cast = helper.make_node("Cast", [inner], [value.name], to=_F32, name=rewrite.fresh(f"{value.name}_cast"))
        rewrite.nodes.append(cast)


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def emulate_fp16_rounding(fp16_model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 graph that computes each op in float32 but rounds every float16 result to float16, as stored.

    Built from a :func:`to_float16` model: float16 initializers/constants become the same values in float32, and each
    node whose output was float16 gets a ``Cast`` to float16 and back after it (data-movement ops are skipped: their
    input is already rounded). ONNX Runtime keeps such explicit float32→float16→float32 pairs in a float32 graph, so on
    a CPU this reproduces the rounding that real float16 execution applies between ops (the accumulation inside an op
    stays float32, as float16 GEMM/convolution kernels on GPUs accumulate in float32 too).
    """
    model = onnx.ModelProto()
    model.CopyFrom(fp16_model)
    graph = model.graph
    types = tensor_elem_types(model)
    for init in graph.initializer:
        if init.data_type == _F16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == _F16:
            value.type.tensor_type.elem_type = _F32
    used = {name for node in graph.node for name in [*node.input, *node.output]}
    counter = 0
    new_nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _F16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
        rounding = []
        is_cast_to_half = node.op_type == "Cast" and any(a.name == "to" and a.i == _F16 for a in node.attribute)
        for i, name in enumerate(node.output):
            if not name or types.get(name) != _F16:
                continue
            if node.op_type in _ROUNDING_EXACT and not is_cast_to_half:
                continue
            counter += 1
            raw, half = f"{name}__raw{counter}", f"{name}__half{counter}"
            while raw in used or half in used:
                counter += 1
                raw, half = f"{name}__raw{counter}", f"{name}__half{counter}"
            used.update((raw, half))
            node.output[i] = raw
            if is_cast_to_half:
                rounding.append(helper.make_node("Cast", [raw], [name], to=_F32, name=f"{raw}_to_fp32"))
            else:
                rounding.append(helper.make_node("Cast", [raw], [half], to=_F16, name=f"{raw}_round"))
                rounding.append(helper.make_node("Cast", [half], [name], to=_F32, name=f"{half}_to_fp32"))
        new_nodes.append(node)
        new_nodes.extend(rounding)
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    _set_meta(model, "precision", "float32 with float16 rounding (emulation)")
    return model
