"""Which ONNX graphs each deployment target accepts, kept as data, and a checker (step "check").

``check_target(model, "opencv4")`` returns the offending nodes (empty list: the target should load the graph).
The tables are what we verified on each runtime (the tests in ``tests/passes/test_targets.py`` and
``tests/conversion/test_runtimes.py`` load graphs in them):

* ``ort``      – ONNX Runtime (CPU/CUDA): every standard op.
* ``openvino`` – OpenVINO: every standard op we use; checked in tests with f32 inference precision.
* ``opencv5``  – OpenCV DNN 5 (PyPI ``opencv-python-headless``): no dynamic shape computation.
* ``opencv4``  – OpenCV DNN 4.6 (Debian 12): additionally no broadcasting MatMul / elementwise ops between two
  computed tensors, constant MatMul operands must be the second input and 2D, and no Einsum.
* ``portable`` – what all of the above accept: the ``opencv4`` rules (the strictest).

int8 QDQ models (``--quantize int8``, :mod:`lambda_export.quantization`) are not accepted everywhere:
:func:`quantization_problem` says where not, before anything is exported (:data:`QDQ_SUPPORT`, measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from lambda_export.graph import GraphIndex, static_shapes

__all__ = ["QDQ_SUPPORT", "TARGETS", "Offense", "Target", "check_target", "quantization_problem"]

# Ops OpenCV 4.6's ONNX importer maps to layers (subset relevant to exported Keras models).
_OPENCV4_OPS = frozenset(
    [
        "Abs",
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Clip",
        "Concat",
        "Constant",
        "Conv",
        "ConvTranspose",
        "Div",
        "Dropout",
        "Elu",
        "Erf",
        "Exp",
        "Flatten",
        "Floor",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "HardSigmoid",
        "Identity",
        "InstanceNormalization",
        "LRN",
        "LeakyRelu",
        "Log",
        "LogSoftmax",
        "MatMul",
        "Max",
        "MaxPool",
        "Min",
        "Mul",
        "Neg",
        "PRelu",
        "Pad",
        "Pow",
        "ReduceMax",
        "ReduceMean",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Resize",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "Upsample",
    ]
)
# Ops that compute shapes at run time: they make a graph depend on dynamic shape inference.
_DYNAMIC_SHAPE_OPS = frozenset(
    ["Shape", "Size", "ConstantOfShape", "NonZero", "Range", "Loop", "If", "Scan", "Expand", "Tile"]
)
_ELEMENTWISE = frozenset(["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum"])


@dataclass(frozen=True)
class Target:
    """A deployment target: the ops it accepts (None = all standard ops) and the structural rules it needs."""

    name: str
    description: str
    ops: frozenset[str] | None
    no_dynamic_shapes: bool = False
    no_broadcast: bool = False
    no_einsum: bool = False
    # ops of the official ``ai.onnx.ml`` domain it runs: the lookup tables of StringLookup / IntegerLookup
    # (lambda_export.lookups writes CategoryMapper and LabelEncoder); ONNX Runtime implements the whole domain
    ml_ops: frozenset[str] = frozenset()


_LOOKUP_OPS = frozenset(["CategoryMapper", "LabelEncoder"])

TARGETS: dict[str, Target] = {
    "ort": Target("ort", "ONNX Runtime CPU/CUDA", None, ml_ops=_LOOKUP_OPS),
    "openvino": Target("openvino", "OpenVINO (f32 inference precision)", None),
    "opencv5": Target("opencv5", "OpenCV DNN 5.x", None, no_dynamic_shapes=True),
    "opencv4": Target(
        "opencv4", "OpenCV DNN 4.6 (Debian 12)", _OPENCV4_OPS, no_dynamic_shapes=True, no_broadcast=True, no_einsum=True
    ),
    "portable": Target(
        "portable",
        "every runtime above (OpenCV 4.6 rules)",
        _OPENCV4_OPS,
        no_dynamic_shapes=True,
        no_broadcast=True,
        no_einsum=True,
    ),
}


@dataclass(frozen=True)
class Offense:
    """A node a target would refuse, and why."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.reason}"


def check_target(model: onnx.ModelProto, target: str) -> list[Offense]:
    """List the nodes of ``model`` that ``target`` (a key of :data:`TARGETS`) would refuse.

    Raises:
        ValueError: unknown target name.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    spec = TARGETS[target]
    index = GraphIndex(model.graph)
    shapes = static_shapes(model)
    offenses: list[Offense] = []
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.domain == "ai.onnx.ml":
            if node.op_type not in spec.ml_ops:
                offenses.append(Offense(name, node.op_type, f"ai.onnx.ml op not supported by {spec.description}"))
            continue
        if node.domain not in ("", "ai.onnx"):
            offenses.append(Offense(name, node.op_type, f"non-standard domain {node.domain!r}"))
            continue
        if spec.no_einsum and node.op_type == "Einsum":
            offenses.append(Offense(name, node.op_type, "Einsum is not supported"))
            continue
        if spec.no_dynamic_shapes and node.op_type in _DYNAMIC_SHAPE_OPS:
            offenses.append(Offense(name, node.op_type, "computes shapes at run time"))
            continue
        if spec.no_dynamic_shapes and node.op_type == "Gather" and index.const(node.input[0]) is None:
            offenses.append(Offense(name, node.op_type, "Gather on a computed tensor (shape computation)"))
            continue
        if spec.ops is not None and node.op_type not in spec.ops:
            offenses.append(Offense(name, node.op_type, f"op not supported by {spec.description}"))
            continue
        if spec.no_broadcast:
            reason = _broadcast_problem(node, index, shapes)
            if reason:
                offenses.append(Offense(name, node.op_type, reason))
        if spec.no_broadcast and node.op_type == "Split" and len(node.input) > 1 and node.input[1]:
            sizes = index.const(node.input[1])
            if sizes is None or len(set(sizes.tolist())) > 1:
                offenses.append(Offense(name, node.op_type, "Split with unequal sizes (OpenCV 4.6 splits evenly)"))
        if spec.no_dynamic_shapes and node.op_type == "Reshape" and index.const(node.input[1]) is None:
            offenses.append(Offense(name, node.op_type, "Reshape to a shape computed at run time"))
    return offenses


def _broadcast_problem(node: onnx.NodeProto, index: GraphIndex, shapes: dict) -> str | None:
    if node.op_type == "MatMul":
        a_const = index.const(node.input[0]) is not None
        b_const = index.const(node.input[1])
        if a_const:
            return "constant first MatMul operand"
        if b_const is not None:
            return None if b_const.ndim == 2 else f"constant MatMul operand of rank {b_const.ndim} (must be 2)"
        sa, sb = shapes.get(node.input[0]), shapes.get(node.input[1])
        if sa is None or sb is None:
            return "MatMul operand shapes unknown"
        if len(sa) != len(sb) or list(sa[:-2]) != list(sb[:-2]):
            return f"broadcasting MatMul {sa} @ {sb}"
        return None
    if node.op_type in _ELEMENTWISE and len(node.input) == 2:
        if any(index.const(name) is not None for name in node.input):
            return None
        sa, sb = shapes.get(node.input[0]), shapes.get(node.input[1])
        if sa is not None and sb is not None and sa != sb:
            return f"broadcasting {node.op_type} {sa} with {sb}"
    return None


QDQ_SUPPORT: dict[str, str | None] = {
    "ort": None,
    "openvino": None,
    "opencv5": None,
    "opencv4": "OpenCV DNN 4.6 cannot load int8 QDQ models: its ONNX importer refuses DequantizeLinear on a constant "
    "(every quantized weight) with 'inputs.size() == 1' (measured with Debian 12's OpenCV 4.6.0)",
    "portable": "the portable target includes OpenCV DNN 4.6, which cannot load int8 QDQ models (its importer refuses "
    "DequantizeLinear on a constant weight); ONNX Runtime (CPU, and onnxruntime-web's WASM backend), OpenVINO and "
    "OpenCV 5 load them",
}
"""Target → why it cannot run an int8 QDQ model (None: it runs them). Measured on the demo model quantized with
``onnxruntime.quantization`` (QDQ, per-channel int8 weights, uint8 activations): ONNX Runtime 1.32 CPU, OpenVINO
2026.4 (f32 inference precision), OpenCV 5.0 (``opencv-python-headless``) and onnxruntime-web 1.30 (WASM, the browser
example's backend) load and run it within the int8 verdict; OpenCV 4.6 refuses it."""


def quantization_problem(target: str) -> str | None:
    """Why ``target`` (a key of :data:`TARGETS`) cannot load an int8 QDQ model, or None when it can.

    Raises:
        ValueError: unknown target name.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return QDQ_SUPPORT.get(target)
