"""Static int8 quantization through ONNX Runtime's quantizer (``onnxruntime.quantization.quantize_static``).

We do not write a quantizer: this module configures ONNX Runtime's and groups the graph's nodes for the sensitivity
measurement.

* :data:`SETTINGS`: QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops: ONNX Runtime, OpenVINO,
  OpenCV 5 and onnxruntime-web read it), int8 weights quantized per output channel (symmetric), uint8 activations
  per tensor (asymmetric, ranges from the calibration set), 7-bit weights (``reduce_range``: see the note there).
* :class:`Quantizer`: calibrates once (the ranges are cached in a JSON file) and then quantizes any subset of the
  nodes without running the calibration again, so the one-group-at-a-time measurement costs one quantization per group.
* :func:`node_groups`: the graph's compute nodes by kind (op type, and for MatMul whether it multiplies by a weight or
  two computed tensors; a node that produces a graph output is a group of its own): what the sensitivity measurement
  quantizes one at a time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lambda_export.errors import ConversionError, InputError, described
from lambda_export.graph import GraphIndex
from lambda_export.quantization.calibration import batches, equal_batch

__all__ = [
    "CALIBRATION_METHODS",
    "COMPUTE_OPS",
    "DEFAULT_CALIBRATION_METHOD",
    "FLOAT_FOR_SPEED",
    "ONE_CHANNEL_CONV_REASON",
    "OUTPUT_REASON",
    "SETTINGS",
    "Quantizer",
    "float_for_speed",
    "int8_macs",
    "node_groups",
    "node_macs",
    "quantizer_version",
]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
"""``--calibration-method``: ``minmax`` (each tensor's range over the calibration set), ``entropy`` (ONNX Runtime's
KL-divergence calibrator with its defaults) or ``percentile`` (the 0.001st to 99.999th percentiles, asymmetric).

Measured (cosine of the logits against the float32 export, every group but the output softmax quantized, held-out
samples): percentile 0.99924 (the demo model) and 0.99868 (LambdaResNet-26 at 128², trained 100 steps on the demo
task with a 1000-class head) against minmax 0.99873 and 0.99668, so percentile is the default. ONNX Runtime 1.32's entropy calibrator, with its defaults (128 histogram bins for 128
quantized bins), has a single candidate threshold and gives minmax's ranges exactly; with 2048 bins it clips these
models' activations to nothing (top-1 agreement 0.10–0.31 on the demo), so its defaults are kept."""
DEFAULT_CALIBRATION_METHOD = "percentile"

SETTINGS: dict[str, Any] = {
    "format": "QDQ",
    "weights": "int8, per output channel, symmetric",
    "activations": "uint8, per tensor, asymmetric",
    # 7-bit weights: without VNNI (AVX2 only, like this repository's benchmark machine) ONNX Runtime's u8×s8 kernels
    # add pairs of products in 16 bits (vpmaddubsw), which saturates with full-range weights; 7 bits cannot saturate
    # and cost little accuracy. The file must give the same answers on every CPU, so it is not chosen per machine.
    "reduce_range": True,
}

COMPUTE_OPS = (
    "Add",
    "AveragePool",
    "Conv",
    "ConvTranspose",
    "Gemm",
    "GlobalAveragePool",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Resize",
    "Sigmoid",
    "Softmax",
    "Where",
)
"""Op types that compute on values (their int8 form rounds): the sensitivity measurement quantizes them one kind at a
time. Data movement (Reshape, Transpose, Squeeze, ...), Relu and Clip are quantized with their neighbours: they only
pass the int8 values on (ONNX Runtime folds the QDQ pairs around them)."""

_FOLLOWERS = (
    "Clip",
    "Concat",
    "Flatten",
    "Pad",
    "Relu",
    "Reshape",
    "Slice",
    "Split",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
)

FLOAT_FOR_SPEED = {
    "AveragePool": "ONNX Runtime's QLinearAveragePool is slower than its float AveragePool (LambdaResNet-26 at "
    "128², batch 8: 8.9 ms against 0.2 ms per run), and OpenVINO gains nothing from it",
}
"""Op types kept in float whatever the measurement says, and why (measured speed, not accuracy)."""

ONE_CHANNEL_CONV_REASON = (
    "ONNX Runtime's QLinearConv on a convolution with one input channel (the lambda layers' position convolution, "
    "batch × values maps convolved by an r×r kernel) runs slower than its float Conv (the demo model, 8 maps of 16×16 "
    "by 7×7 per sample, batch 8, AVX2, profiled: 8.1 ms against 3.0 ms; with it in float the int8 convolutions took "
    "3.2 ms instead of 13.8 ms per batch)"
)
"""Why a Conv with one input channel per group stays in float (measured speed, not accuracy): its int8 GEMM has a
depth of only r² and no channel reduction, where the float NCHWc kernel is fast."""


def float_for_speed(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes kept in float for speed whatever the accuracy measurement says, and why: the op types of
    :data:`FLOAT_FOR_SPEED` and convolutions with one input channel per group (:data:`ONE_CHANNEL_CONV_REASON`)."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in FLOAT_FOR_SPEED:
            found[node.name] = FLOAT_FOR_SPEED[node.op_type]
        elif node.op_type == "Conv" and len(node.input) > 1:
            kernel = weights.get(node.input[1])
            if kernel is not None and len(kernel) > 2 and kernel[1] == 1:
                group = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
                if group == 1:  # a depthwise convolution (group = channels) is another kernel: not measured here
                    found[node.name] = ONE_CHANNEL_CONV_REASON
    return found


OUTPUT_REASON = (
    "it computes a graph output: int8 would round the model's answer itself to 256 levels (measured on the demo: "
    "its softmax probabilities below 1/510 became exactly 0, so the logits could no longer be recovered)"
)
"""Why the nodes that produce graph outputs stay in float (their groups are ``<op> (output)``)."""


def quantizer_version() -> str:
    """``onnxruntime.quantization`` and its version, as recorded in the model's metadata."""
    import onnxruntime

    return f"onnxruntime.quantization {onnxruntime.__version__}"


def _owner(names: list[str], layers: dict[str, str]) -> str | None:
    """The first Keras layer named by a "/"-separated segment of ``names`` (TensorFlow's ``_1`` scope suffix allowed)."""
    for name in names:
        for segment in name.split("/"):
            if segment in layers:
                return segment
            match = re.fullmatch(r"(.+)_\d+", segment)
            if match and match.group(1) in layers:
                return match.group(1)
    return None


def _idle_followers(graph: onnx.GraphProto, quantized: set[str]) -> set[str]:
    """The data-movement nodes (:data:`_FOLLOWERS`) that no quantized compute node reaches: connected, through other
    followers only, to no node of ``quantized`` on either side. ONNX Runtime's quantizer would still put a QDQ pair
    on their tensors (a Pad between a float Relu and a float MaxPool), so a model with every compute node kept in
    float rounded its activations to 8 bits there: larger, slower and less exact than the float file (seen on timm's
    LambdaResNets: the stem's reflect Pad, 0.88-0.95x the float32 speed, near-tied top-1 classes flipped)."""
    index = GraphIndex(graph)

    def neighbours(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        found = [index.producer[name] for name in node.input if name in index.producer]
        return found + [user for name in node.output for user in index.consumers.get(name, [])]

    reached: set[str] = set()
    pending = [node for node in graph.node if node.name in quantized]
    while pending:
        for other in neighbours(pending.pop()):
            if other.op_type in _FOLLOWERS and other.name not in reached:
                reached.add(other.name)
                pending.append(other)
    return {node.name for node in graph.node if node.op_type in _FOLLOWERS and node.name and node.name not in reached}


def _answer_tensors(graph: onnx.GraphProto) -> set[str]:
    """The graph outputs and the tensors they are moved from (through Transpose, Reshape, Relu, ...): a compute node
    that writes one of these computes the model's answer."""
    producer = {name: node for node in graph.node for name in node.output}
    found: set[str] = set()
    pending = [value.name for value in graph.output]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        node = producer.get(name)
        if node is not None and node.op_type in _FOLLOWERS and node.input:
            pending.append(node.input[0])
    return found


def node_groups(model: onnx.ModelProto, layers: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The compute nodes of ``model`` (op types of :data:`COMPUTE_OPS`) grouped by kind; group → node names.

    Kinds: the op type (``Conv``, ``Softmax``, ...); a MatMul is ``MatMul (weights)`` when one operand is a constant
    and ``MatMul (activations)`` when both are computed (the lambda layers' content and position lambdas and their
    application to the queries); a node whose output is a graph output, or is moved into one (Transpose, Reshape,
    ...), is ``<op> (output)`` (quantizing it rounds the model's answer itself).

    Args:
        layers: Keras layer name → class name. Given, a node is attributed to the layer its name, its outputs' or its
            weights' names mention (``model_1/stage2_block0_lambda_1/MatMul_3`` → ``stage2_block0_lambda``) and the
            group is ``<class>: <kind>`` (``LambdaNetwork2DConv: Softmax`` is the keys' softmax over positions); in a
            lambda layer, the nodes of the position lambdas (``position`` in a name: the position embedding, the
            lambda convolution) are ``<class>: <kind> (position)``.

    Groups are in order of first appearance.
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer} | {
        output for node in graph.node if node.op_type == "Constant" for output in node.output
    }
    outputs = _answer_tensors(graph)
    groups: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        weights = [name for name in node.input if name in constants]
        if any(name in outputs for name in node.output):
            kind = f"{node.op_type} (output)"
        elif node.op_type == "MatMul":
            kind = "MatMul (weights)" if weights else "MatMul (activations)"
        else:
            kind = node.op_type
        owner = _owner([node.name, *node.output, *weights], layers) if layers else None
        if owner is not None:
            cls = layers[owner] if layers else ""
            named = [node.name, *weights]
            if cls.startswith("LambdaNetwork") and any("position" in name for name in named):
                kind = kind[:-1] + ", position)" if kind.endswith(")") else kind + " (position)"
            kind = f"{cls}: {kind}"
        groups.setdefault(kind, []).append(node.name)
    return groups


def _per_sample_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Tensor shapes with every input's dynamic batch set to 1 (shape inference with data propagation): a tensor whose
    first dimension is the batch folded with another (the lambda layers' position convolution runs on batch × values
    maps) then has its real size, not the size of one map. Falls back to :func:`lambda_export.graph.static_shapes`."""
    from lambda_export.graph import skeleton, static_shapes

    copy = skeleton(model)
    for value in copy.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:
        return static_shapes(model)
    shapes: dict[str, tuple[int | None, ...]] = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes


def node_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-adds per sample of each Conv, ConvTranspose, MatMul and Gemm node (by name), from shapes inferred at
    batch 1 (:func:`_per_sample_shapes`): what int8 kernels speed up. A node whose shapes are unknown counts its
    weights' elements; other ops 0."""
    shapes = _per_sample_shapes(model)
    weights = {init.name: math.prod(init.dims) for init in model.graph.initializer}
    macs: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        out = shapes.get(node.output[0])
        kernel = shapes.get(node.input[1]) if len(node.input) > 1 else None
        first = shapes.get(node.input[0])
        fallback = sum(weights.get(name, 0) for name in node.input)
        if not out or not kernel or first is None or any(d is None for d in out[1:]):
            macs[node.name] = fallback
            continue
        size = math.prod(d or 1 for d in out)
        if node.op_type in ("Conv", "ConvTranspose"):
            depth = math.prod(d or 1 for d in kernel[1:]) if node.op_type == "Conv" else (kernel[0] or 1)
        else:
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            depth = (first[-2] if node.op_type == "Gemm" and trans_a else first[-1]) or 1
        macs[node.name] = int(size * depth)
    return macs


def int8_macs(float_model: onnx.ModelProto, int8_model: onnx.ModelProto) -> tuple[int, int]:
    """(multiply-adds per sample that run in int8, all of them): the Conv, ConvTranspose, MatMul and Gemm nodes of
    ``float_model`` counted by their shapes (:func:`node_macs`); one runs in int8 when, in ``int8_model`` (the
    quantizer keeps node names), its data and weight inputs both come from a ``DequantizeLinear`` (ONNX Runtime then
    fuses it into an int8 kernel), else it was kept in float."""
    macs = node_macs(_named(float_model))
    dequantized = {out for node in int8_model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    quantized = {
        node.name
        for node in int8_model.graph.node
        if node.name in macs and len(node.input) > 1 and all(name in dequantized for name in node.input[:2])
    }
    return sum(count for name, count in macs.items() if name in quantized), sum(macs.values())


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a name on every node (the quantizer selects and excludes nodes by name); a copy when needed."""
    if all(node.name for node in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    taken = {node.name for node in copy.graph.node if node.name}
    for index, node in enumerate(copy.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return copy


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs on the root logger ("consider pre-processing") and its calibrators print their
    progress on stdout: neither is the user's business (stdout may carry the JSON verdict)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _tool_errors(tool: str, scratch: Path) -> Iterator[None]:
    """Around a call into ONNX Runtime's quantization tooling: any error but MemoryError becomes a one-line
    ``ConversionError`` ("ONNX Runtime's ``tool`` failed: ..."), and the ``scratch`` file it wrote is removed either
    way."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:
        raise ConversionError(f"ONNX Runtime's {tool} failed: {described(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()


class _Reader:
    """A ``CalibrationDataReader`` over the calibration arrays, in batches (built by :meth:`Quantizer.reader`)."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int) -> None:
        self._batches = list(batches(arrays, batch))
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._batches):
            return None
        self._index += 1
        return self._batches[self._index - 1]

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = self._batches[start_index:end_index]
        self._index = 0


class Quantizer:
    """ONNX Runtime's static QDQ quantizer on one float model, calibrated once.

    Args:
        model: the float32 ONNX model (unnamed nodes get names: the quantizer selects nodes by name).
        calibration: the calibration arrays by input name, batch first.
        method: one of :data:`CALIBRATION_METHODS`.
        batch: samples per calibration run (the model's fixed batch when it has one).

    Use as a context manager (its temporary folder holds the calibration cache) or call :meth:`close`.

    Raises:
        InputError: an unknown calibration method, a model over 2 GiB.
    """

    def __init__(self, model: onnx.ModelProto, calibration: dict[str, np.ndarray], method: str, batch: int) -> None:
        if method not in CALIBRATION_METHODS:
            raise InputError(
                f"calibration_method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}",
                argument="calibration_method",
            )
        from lambda_export.io import too_large_for_protobuf, write_model_file

        if too_large_for_protobuf(model):
            raise InputError(
                "int8 quantization of a model over 2 GiB is not supported (its float32 graph needs external data)"
            )
        self.model = _named(model)
        self.calibration = calibration
        self.method = method
        self.batch = batch
        self._folder = tempfile.TemporaryDirectory(prefix="lambda-export-int8-")
        self._cache = Path(self._folder.name) / "ranges.json"
        # a path, not the proto: quantize_static saves a ModelProto with external data, which empties its tensors
        self._source = Path(self._folder.name) / "float32.onnx"
        write_model_file(self.model, self._source)
        self._count = 0
        self._full: onnx.ModelProto | None = None

    def __enter__(self) -> Quantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary folder (the calibration cache and the quantized files)."""
        self._folder.cleanup()

    def _method(self) -> Any:
        from onnxruntime.quantization import CalibrationMethod

        return {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.method]

    def _run(self, path: Path, op_types: list[str], nodes: list[str] | None, exclude: list[str]) -> onnx.ModelProto:
        """One ``quantize_static`` call into ``path``, with the ranges of the cache (:meth:`_collect_ranges`).

        Raises:
            ConversionError: ONNX Runtime's quantizer failed (its message, one line).
        """
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        with _tool_errors("quantizer", path), _quiet_quantizer():
            quantize_static(
                str(self._source),
                str(path),
                None,  # the ranges come from the cache that _collect_ranges wrote
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=True,
                reduce_range=SETTINGS["reduce_range"],
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                nodes_to_exclude=exclude,
                calibrate_method=self._method(),
                extra_options=extra,
                calibration_cache_path=str(self._cache),
            )
            model = onnx.load(str(path))
        return model

    def _collect_ranges(self) -> None:
        """Run the calibrator on the calibration set and write the ranges where ``quantize_static`` reads them.

        The calibrator is ONNX Runtime's (``create_calibrator``), configured here rather than through
        ``quantize_static``: percentile ranges are asymmetric (uint8 activations; its default, symmetric ranges,
        wastes half of them after a ReLU). Entropy runs with ONNX Runtime's defaults (see :data:`CALIBRATION_METHODS`).

        Raises:
            ConversionError: the calibrator failed (its message, one line).
        """
        from onnxruntime.quantization import create_calibrator, save_tensors_data

        options: dict[str, Any] = {}
        if self.method == "minmax":
            options.update(symmetric=False, max_intermediate_outputs=16)  # bounds the memory of a large model
        elif self.method == "percentile":
            options.update(symmetric=False, num_bins=2048, percentile=99.999)
        augmented = Path(self._folder.name) / "augmented.onnx"
        size = self.batch
        if self.method != "minmax":
            # the histogram calibrators (entropy, percentile) stack the batches' activations into one array: a last,
            # shorter batch breaks them ("inhomogeneous shape"); equal batches keep every sample (see equal_batch).
            # MinMax reduces each batch on its own, so any last batch is fine there. A fixed batch divides the count
            # already (calibration_data cuts the set to whole batches), so it is kept.
            size = equal_batch(len(next(iter(self.calibration.values()))), self.batch)
        with _tool_errors("calibrator", augmented), _quiet_quantizer():
            calibrator = create_calibrator(
                self._source,
                sorted({*COMPUTE_OPS, *_FOLLOWERS}),
                augmented_model_path=str(augmented),
                calibrate_method=self._method(),
                extra_options=options,
            )
            calibrator.collect_data(_Reader(self.calibration, size))
            save_tensors_data(calibrator.compute_data(), self._cache)
            del calibrator

    def calibrate(self) -> onnx.ModelProto:
        """Calibrate on every tensor the quantizer could quantize (once; the ranges are cached) and return the model
        with every compute node quantized."""
        if self._full is None:
            if not self._cache.exists():
                self._collect_ranges()
            self._full = self._run(self._path(), sorted({*COMPUTE_OPS, *_FOLLOWERS}), None, [])
        return self._full

    def _path(self) -> Path:
        self._count += 1
        return Path(self._folder.name) / f"int8_{self._count}.onnx"

    def quantize(
        self, *, exclude: Iterable[str] = (), only: Iterable[str] | None = None, float_ops: Iterable[str] = ()
    ) -> onnx.ModelProto:
        """The int8 QDQ model: every compute node quantized except ``exclude`` (node names) and ``float_ops`` (op
        types); with ``only``, just those compute nodes (and the data movement between them).

        The ranges come from :meth:`calibrate` (run first if it has not been).

        Raises:
            ConversionError: ONNX Runtime's quantizer failed (its message, one line).
        """
        self.calibrate()
        float_ops = set(float_ops)
        op_types = sorted({*COMPUTE_OPS, *_FOLLOWERS} - float_ops)
        excluded = set(exclude)
        chosen = set(only) if only is not None else None
        quantized = {
            node.name
            for node in self.model.graph.node
            if node.op_type in COMPUTE_OPS
            and node.op_type not in float_ops
            and node.name not in excluded
            and (chosen is None or node.name in chosen)
        }
        idle = _idle_followers(self.model.graph, quantized)
        nodes = None
        if chosen is not None:
            nodes = [
                node.name
                for node in self.model.graph.node
                if node.name in chosen
                or (node.op_type in _FOLLOWERS and node.op_type not in float_ops and node.name not in idle)
            ]
        return self._run(self._path(), op_types, nodes, sorted(excluded | idle))
