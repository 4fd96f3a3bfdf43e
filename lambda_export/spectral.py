"""Complex-valued FFT pipelines (``tf.signal`` / ``keras.ops`` FFTs) → real ONNX graphs.

tf2onnx 1.17 leaves ``Complex``, ``FFT2D`` and ``Real`` unconverted (FNet's token mixing,
``real(fft2d(complex(x, 0)))``) and its own ``RFFT``/``ComplexAbs`` handlers fail on Keras models (a dynamic batch, a
``Real`` consumer). ONNX tensors here carry no complex type, so a complex tensor of shape ``S`` is represented as a
float tensor of shape ``S + [2]`` (real, imaginary), as ONNX's ``DFT`` does, or, while its imaginary part is known to
be zero (``complex(x, 0)``, ``cast(x, complex64)``), as the real tensor ``x`` itself. A pipeline is lowered when every
op that reads or writes a complex tensor is one of :data:`HANDLED` and it starts from real tensors and ends in real
ones (``Real``, ``Imag``, ``ComplexAbs``, ``IRFFT``, a cast to a real type); a complex graph input or output, or any
other op on complex values (a complex ``Mul``...), is a one-line :class:`ConversionError` naming the op, and nothing
of the pipeline is rewritten.

How a transform is computed. Each transformed axis is a product with the DFT matrix of that axis, its coefficients
computed in float64 (``exp(∓2πi·(nk mod L)/L)``, exactly reduced angles) and rounded once to float32: ``MatMul`` with a
``[N, 2K]`` matrix for a real input, ``[2N, 2K]`` for an interleaved complex one, ``[2N, K]`` when only the real result
is needed (``IRFFT``'s last axis, Hermitian weights folded in). Cropping or zero-padding to ``fft_length`` is folded
into the matrix (rows beyond ``fft_length`` are zero, missing rows are absent), ``RFFT``'s one-sided output is its
first ``L//2 + 1`` columns. Measured against NumPy's float64 FFT (64 rows of N(0, 1), ONNX Runtime 1.32 CPU), the
product's max error is 0.8–3.3× TensorFlow's own float32 FFT error for N = 8…4096, its RMS 1.0–2.8×: rounding grows
like ``eps·√N·|x|`` for both. ONNX's ``DFT`` (opset 17) is used only where the matrix would be large (more than
:data:`MATRIX_LIMIT` coefficients for one axis, e.g. an ``rfft`` of length 2048): ONNX Runtime 1.32 computes a DFT of
a power-of-two length by radix-2 FFT (max error 3–6× TensorFlow's) but any other length naively, with float32 angles
(N = 100: 160× TensorFlow's error, N = 500: 750×), which would fail FNet's parity (hidden size 768). Below opset 17
such a transform is refused, naming the op and the opset it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lambda_export import upstream
from lambda_export.errors import ConversionError

__all__ = ["HANDLED", "MATRIX_LIMIT", "SpectralLowering"]

FLOAT, DOUBLE, COMPLEX64, COMPLEX128, INT64 = 1, 11, 14, 15, 7
"""ONNX element types (``onnx.TensorProto``)."""
_PART = {COMPLEX64: FLOAT, COMPLEX128: DOUBLE}
_NUMPY = {FLOAT: np.float32, DOUBLE: np.float64}

MATRIX_LIMIT = 1 << 20
"""The most DFT coefficients (input length × output length) one axis is lowered to as a MatMul; beyond, ONNX DFT."""

_TRANSFORMS = {"FFT": (1, False), "FFT2D": (2, False), "FFT3D": (3, False)}
_TRANSFORMS |= {"IFFT": (1, True), "IFFT2D": (2, True), "IFFT3D": (3, True)}
_REAL_TRANSFORMS = {"RFFT": 1, "RFFT2D": 2, "RFFT3D": 3}
_INVERSE_REAL = {"IRFFT": 1, "IRFFT2D": 2, "IRFFT3D": 3}
_PASS_THROUGH = frozenset({"Identity", "StopGradient", "Snapshot", "PreventGradient", "EnsureShape"})
_PARTS = frozenset({"Complex", "Cast", "Real", "Imag", "ComplexAbs", "Conj"})
HANDLED = frozenset({*_TRANSFORMS, *_REAL_TRANSFORMS, *_INVERSE_REAL, *_PASS_THROUGH, *_PARTS})
"""The TensorFlow ops on complex values that are lowered."""

_SUPPORTED = "FFT/IFFT/RFFT/IRFFT (1-3D), Complex, Cast, Real, Imag, ComplexAbs and Conj of real inputs"


@dataclass(frozen=True)
class _Value:
    """A lowered complex (or real) tensor: its ONNX name, whether it has the trailing (real, imag) axis, the complex
    tensor's shape (-1: unknown) and the ONNX type of its parts."""

    name: str
    paired: bool
    shape: tuple[int, ...]
    dtype: int


class _RefusedError(Exception):
    """A pipeline that cannot be lowered (the message names the op)."""


class SpectralLowering:
    """The lowering of one conversion's complex pipelines: a tf2onnx custom rewriter, and the problems it met."""

    def __init__(self, opset: int, input_shapes: dict[str, list[int | None]] | None = None) -> None:
        self.opset = opset
        self.input_shapes = dict(input_shapes or {})
        self.problems: list[str] = []

    @classmethod
    def of(cls, concrete: Any, opset: int) -> SpectralLowering:
        """The lowering for ``concrete`` (a concrete function): the static shape of each transform's input, which
        TensorFlow knows while tracing (a Dense layer on a sequence: ``(None, 16, 12)``) and loses in the frozen graph
        (its ``Tensordot`` reshape: ``(None, None, 12)``), while a transform needs the lengths of its axes."""
        transforms = {*_TRANSFORMS, *_REAL_TRANSFORMS, *_INVERSE_REAL}
        shapes = {
            op.name: op.inputs[0].shape.as_list()
            for op in concrete.graph.get_operations()
            if op.type in transforms and op.inputs[0].shape.rank is not None
        }
        return cls(opset, shapes)

    def pin_shapes(self, graph_def: Any) -> None:
        """Give each transform's input its traced shape in the frozen ``graph_def``: an ``EnsureShape`` before it
        (tf2onnx converts it to nothing; on complex values it is passed through here)."""
        import tensorflow as tf

        nodes = {node.name: node for node in graph_def.node}
        for name, shape in self.input_shapes.items():
            node = nodes.get(name)
            if node is None or not node.input:
                continue
            source = node.input[0]
            kind = "Tcomplex" if node.op in _TRANSFORMS or node.op in _INVERSE_REAL else "Treal"
            pinned = graph_def.node.add()
            pinned.name = f"{name}/input_shape"
            pinned.op = "EnsureShape"
            pinned.input.append(source)
            pinned.attr["T"].type = node.attr[kind].type
            pinned.attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())
            node.input[0] = pinned.name

    def rewriters(self) -> list[object]:
        """tf2onnx ``custom_rewriter``s lowering the complex pipelines (before tf2onnx's own FFT handlers run)."""
        return [upstream.ops_replacer(self.plan)]

    def check(self) -> None:
        """Raise the first problem met (one line naming the op).

        Raises:
            ConversionError: a complex pipeline that was not lowered.
        """
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise ConversionError(self.problems[0] + more)

    def plan(self, ops: list[upstream.GraphOp], graph_outputs: list[str]) -> upstream.Replacement | None:
        """The replacement of every op on complex values, or None (nothing complex, or a problem recorded)."""
        producers = {tensor: (op, index) for op in ops for index, tensor in enumerate(op.outputs)}
        complex_tensors = {t for op in ops for t, d in zip(op.outputs, op.dtypes, strict=True) if d in _PART}
        involved = [
            op
            for op in ops
            if op.type in _REAL_TRANSFORMS or any(t in complex_tensors for t in (*op.outputs, *op.inputs))
        ]
        if not involved:
            return None
        problems = []
        for op in sorted(involved, key=lambda op: op.type == "Const"):  # the op using a complex constant first
            if op.type == "Placeholder":
                problems.append(f"graph input {op.name} is complex: lambda-export exports real tensors only")
            elif op.type not in HANDLED:
                problems.append(
                    f"{op.type} ({op.name}) on complex values has no ONNX conversion (converted: {_SUPPORTED})"
                )
        for tensor in graph_outputs:
            if tensor in complex_tensors:
                problems.append(
                    f"graph output {tensor} is complex ({producers[tensor][0].type}): take tf.math.real/imag/abs of it"
                )
        if problems:
            self.problems.extend(problems)
            return None
        builder = _Builder(self.opset, producers)
        try:
            for op in involved:
                builder.lower(op)
        except _RefusedError as exc:
            self.problems.append(str(exc))
            return None
        return upstream.Replacement(
            removed=[op.name for op in involved], constants=builder.constants, nodes=builder.nodes
        )


def _dims(shape: tuple[int, ...] | None, op: upstream.GraphOp) -> tuple[int, ...]:
    if shape is None:
        raise _RefusedError(f"{op.type} ({op.name}): the rank of its complex values is unknown")
    return tuple(-1 if d is None else int(d) for d in shape)


def _coefficients(rows: int, length: int, columns: int, *, inverse: bool) -> np.ndarray:
    """``[rows, columns]`` DFT coefficients of length ``length`` in float64: ``exp(∓2πi·nk/L)`` (``/L`` inverse),
    rows at or beyond ``length`` zero (TensorFlow crops the signal to ``fft_length``)."""
    n = np.arange(rows)[:, None]
    k = np.arange(columns)[None, :]
    angle = 2 * np.pi * ((n * k) % length) / length
    matrix = np.exp((1j if inverse else -1j) * angle)
    matrix[n[:, 0] >= length, :] = 0
    return matrix / length if inverse else matrix


class _Builder:
    """Emits the ONNX nodes of the lowered ops, in dependency order."""

    def __init__(self, opset: int, producers: dict[str, tuple[upstream.GraphOp, int]]) -> None:
        self.opset = opset
        self.producers = producers
        self.values: dict[str, _Value] = {}
        self.done: set[str] = set()
        self.nodes: list[upstream.NewOp] = []
        self.constants: dict[str, np.ndarray] = {}
        self.shared: dict[tuple[object, ...], str] = {}
        self.count = 0
        self.prefix = ""

    # -- emission ---------------------------------------------------------------------------------------------------

    def _name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}/spectral/{what}_{self.count}"

    def const(self, what: str, value: np.ndarray) -> str:
        """A constant's name; one constant for equal values (every FNet layer shares its two DFT matrices)."""
        key = (what, value.dtype.str, value.shape, value.tobytes())
        if key not in self.shared:
            self.shared[key] = name = f"lambda_export/spectral/{what}_{len(self.shared)}"
            self.constants[name] = value
        return self.shared[key]

    def node(
        self,
        op_type: str,
        inputs: list[str],
        dtype: int,
        shape: tuple[int, ...] | None,
        output: str | None = None,
        **attrs: object,
    ) -> str:
        output = output or f"{self._name(op_type)}:0"
        self.nodes.append(upstream.NewOp(op_type, tuple(inputs), output, dtype, shape, dict(attrs)))
        return output

    # -- values -----------------------------------------------------------------------------------------------------

    def real_input(self, tensor: str) -> tuple[tuple[int, ...], int]:
        op, index = self.producers[tensor]
        return _dims(op.shapes[index], op), op.dtypes[index]

    def value(self, tensor: str) -> _Value:
        if tensor not in self.values:
            op, _ = self.producers[tensor]
            self.lower(op)
        return self.values[tensor]

    def paired(self, value: _Value) -> _Value:
        """``value`` with its (real, imag) axis: a zero imaginary part padded on."""
        if value.paired:
            return value
        rank = len(value.shape)
        unsqueezed = self.node(
            "Unsqueeze", [value.name, self.const("last", np.array([-1], np.int64))], value.dtype, None
        )
        pads = np.zeros(2 * (rank + 1), np.int64)
        pads[-1] = 1
        padded = self.node("Pad", [unsqueezed, self.const("pads", pads)], value.dtype, (*value.shape, 2))
        return _Value(padded, True, value.shape, value.dtype)

    def part(self, value: _Value, index: int, output: str, shape: tuple[int, ...]) -> str:
        """The real (0) or imaginary (1) part of ``value`` as ``output``."""
        if not value.paired:
            if index == 0:
                return self.node("Identity", [value.name], value.dtype, shape, output)
            zero = self.const("zero", np.array(0, _NUMPY[value.dtype]))
            return self.node("Mul", [value.name, zero], value.dtype, shape, output)
        starts, ends = np.array([index], np.int64), np.array([index + 1], np.int64)
        axes = np.array([-1], np.int64)
        sliced = self.node(
            "Slice",
            [value.name, self.const("start", starts), self.const("end", ends), self.const("axis", axes)],
            value.dtype,
            (*value.shape, 1),
        )
        return self.node("Squeeze", [sliced, self.const("axis", axes)], value.dtype, shape, output)

    # -- one transformed axis ---------------------------------------------------------------------------------------

    def axis_transform(
        self, value: _Value, axis: int, length: int, columns: int, *, inverse: bool, op: upstream.GraphOp
    ) -> _Value:
        """The DFT of ``value`` along ``axis`` (length ``length``: cropped or zero-padded), its first ``columns``
        outputs, complex (paired)."""
        rows = value.shape[axis]
        if rows < 0:
            raise _RefusedError(f"{op.type} ({op.name}): the transformed dimension {axis} has an unknown length")
        shape = tuple(columns if i == axis else d for i, d in enumerate(value.shape))
        if rows * columns > MATRIX_LIMIT:
            return self.dft(value, axis, length, columns, inverse=inverse, op=op, shape=shape)
        coefficients = _coefficients(rows, length, columns, inverse=inverse)
        if value.paired:
            weight = np.empty((rows, 2, columns, 2))
            weight[:, 0, :, 0], weight[:, 1, :, 0] = coefficients.real, -coefficients.imag
            weight[:, 0, :, 1], weight[:, 1, :, 1] = coefficients.imag, coefficients.real
            weight = weight.reshape(2 * rows, 2 * columns)
        else:
            weight = np.stack([coefficients.real, coefficients.imag], axis=-1).reshape(rows, 2 * columns)
        product = self.product(value, axis, weight.astype(_NUMPY[value.dtype]), 2 * columns, paired_out=True)
        return _Value(product, True, shape, value.dtype)

    def product(self, value: _Value, axis: int, weight: np.ndarray, width: int, *, paired_out: bool) -> str:
        """``value`` (its ``axis`` moved last, interleaved with the complex axis when paired) times ``weight``, the
        ``width`` results reshaped to (columns, 2) when ``paired_out``, and ``axis`` moved back."""
        rank = len(value.shape)
        name, dtype = value.name, value.dtype
        moved = axis != rank - 1
        core = [i for i in range(rank) if i != axis] + [axis]
        if moved:
            name = self.node("Transpose", [name], dtype, None, perm=core + ([rank] if value.paired else []))
        keep = [0] * (rank - 1)
        if value.paired:
            flat = np.array([*keep, weight.shape[0]], np.int64)
            name = self.node("Reshape", [name, self.const("shape", flat)], dtype, None)
        name = self.node("MatMul", [name, self.const("dft", weight)], dtype, None)
        if paired_out:
            split = np.array([*keep, width // 2, 2], np.int64)
            name = self.node("Reshape", [name, self.const("shape", split)], dtype, None)
        if moved:
            back = [int(i) for i in np.argsort(core)] + ([rank] if paired_out else [])
            name = self.node("Transpose", [name], dtype, None, perm=back)
        return name

    def dft(
        self,
        value: _Value,
        axis: int,
        length: int,
        columns: int,
        *,
        inverse: bool,
        op: upstream.GraphOp,
        shape: tuple[int, ...],
    ) -> _Value:
        """ONNX ``DFT`` (opset 17) along ``axis``: for transforms whose matrix would be too large."""
        if self.opset < 17:
            raise _RefusedError(
                f"{op.type} ({op.name}): a length-{length} transform needs ONNX DFT, opset 17 or later (this export "
                f"uses opset {self.opset}; pass --opset 17)"
            )
        onesided = int(not value.paired and columns == length // 2 + 1 and columns != length)
        if columns not in (length, length // 2 + 1) or (columns != length and not onesided) or axis == 0:
            raise _RefusedError(f"{op.type} ({op.name}): a length-{length} transform is too large to lower")
        source = value.name
        if not value.paired:
            source = self.node("Unsqueeze", [source, self.const("last", np.array([-1], np.int64))], value.dtype, None)
        size = self.const("length", np.array(length, np.int64))
        name = self.node(
            "DFT", [source, size], value.dtype, (*shape, 2), axis=axis, inverse=int(inverse), onesided=onesided
        )
        return _Value(name, True, shape, value.dtype)

    # -- ops --------------------------------------------------------------------------------------------------------

    def lower(self, op: upstream.GraphOp) -> None:
        if op.name in self.done:
            return
        self.done.add(op.name)
        self.prefix = op.name
        kind = op.type
        out = op.outputs[0]
        shape = _dims(op.shapes[0], op)
        dtype = op.dtypes[0]
        if kind in _PASS_THROUGH:  # EnsureShape: its shape is the pinned one
            value = self.value(op.inputs[0])
            self.values[out] = _Value(value.name, value.paired, shape, value.dtype)
        elif kind == "Complex":
            self.values[out] = self.complex(op, shape)
        elif kind == "Cast":
            self.cast(op, shape, dtype)
        elif kind in ("Real", "Imag"):
            self.part(self.value(op.inputs[0]), int(kind == "Imag"), out, shape)
        elif kind == "ComplexAbs":
            self.magnitude(self.value(op.inputs[0]), out, shape)
        elif kind == "Conj":
            value = self.value(op.inputs[0])
            if value.paired:
                signs = self.const("conj", np.array([1, -1], _NUMPY[value.dtype]))
                value = _Value(self.node("Mul", [value.name, signs], value.dtype, None), True, value.shape, value.dtype)
            self.values[out] = value
        elif kind in _TRANSFORMS:
            dims, inverse = _TRANSFORMS[kind]
            value = self.value(op.inputs[0])
            for axis in range(len(value.shape) - 1, len(value.shape) - 1 - dims, -1):
                size = value.shape[axis]
                value = self.axis_transform(value, axis, size, size, inverse=inverse, op=op)
            self.values[out] = value
        elif kind in _REAL_TRANSFORMS:
            self.rfft(op, _REAL_TRANSFORMS[kind])
        else:  # _INVERSE_REAL
            self.irfft(op, _INVERSE_REAL[kind], out, shape)

    def lengths(self, op: upstream.GraphOp, dims: int) -> list[int]:
        source, _ = self.producers[op.inputs[1]]
        if source.type != "Const" or source.value is None or np.size(source.value) != dims:
            raise _RefusedError(f"{op.type} ({op.name}): its fft_length is not a constant")
        return [int(v) for v in np.asarray(source.value).reshape(-1)]

    def complex(self, op: upstream.GraphOp, shape: tuple[int, ...]) -> _Value:
        real_shape, part_type = self.real_input(op.inputs[0])
        imag_op, _ = self.producers[op.inputs[1]]
        zero = imag_op.type == "ZerosLike" or (
            imag_op.type == "Const" and imag_op.value is not None and not np.any(imag_op.value)
        )
        if zero and real_shape == shape:
            return _Value(op.inputs[0], False, shape, part_type)
        imag_shape, _ = self.real_input(op.inputs[1])
        if real_shape != shape or imag_shape != shape:
            raise _RefusedError(
                f"Complex ({op.name}): its real and imaginary parts broadcast ({real_shape}, {imag_shape})"
            )
        last = self.const("last", np.array([-1], np.int64))
        parts = [self.node("Unsqueeze", [t, last], part_type, (*shape, 1)) for t in op.inputs[:2]]
        return _Value(self.node("Concat", parts, part_type, (*shape, 2), axis=-1), True, shape, part_type)

    def cast(self, op: upstream.GraphOp, shape: tuple[int, ...], dtype: int) -> None:
        source, index = self.producers[op.inputs[0]]
        source_type = source.dtypes[index]
        if dtype in _PART:  # real → complex (a zero imaginary part), or complex64 ↔ complex128
            part = _PART[dtype]
            if source_type in _PART:
                value = self.value(op.inputs[0])
                name = value.name if value.dtype == part else self.node("Cast", [value.name], part, None, to=part)
                self.values[op.outputs[0]] = _Value(name, value.paired, shape, part)
                return
            name = op.inputs[0] if source_type == part else self.node("Cast", [op.inputs[0]], part, shape, to=part)
            self.values[op.outputs[0]] = _Value(name, False, shape, part)
            return
        value = self.value(op.inputs[0])  # complex → real: TensorFlow keeps the real part
        if dtype == value.dtype:
            self.part(value, 0, op.outputs[0], shape)
        else:
            real = self.part(value, 0, f"{self._name('real')}:0", shape)
            self.node("Cast", [real], dtype, shape, op.outputs[0], to=dtype)

    def magnitude(self, value: _Value, output: str, shape: tuple[int, ...]) -> None:
        if not value.paired:
            self.node("Abs", [value.name], value.dtype, shape, output)
            return
        squares = self.node("Mul", [value.name, value.name], value.dtype, None)
        total = self.node(
            "ReduceSum", [squares, self.const("axis", np.array([-1], np.int64))], value.dtype, shape, keepdims=0
        )
        self.node("Sqrt", [total], value.dtype, shape, output)

    def rfft(self, op: upstream.GraphOp, dims: int) -> None:
        lengths = self.lengths(op, dims)
        shape, part = self.real_input(op.inputs[0])
        value = _Value(op.inputs[0], False, shape, part)
        rank = len(shape)
        for offset, length in enumerate(reversed(lengths)):
            axis = rank - 1 - offset
            columns = length // 2 + 1 if offset == 0 else length
            value = self.axis_transform(value, axis, length, columns, inverse=False, op=op)
        self.values[op.outputs[0]] = value

    def irfft(self, op: upstream.GraphOp, dims: int, output: str, shape: tuple[int, ...]) -> None:
        lengths = self.lengths(op, dims)
        value = self.paired(self.value(op.inputs[0]))
        rank = len(value.shape)
        for offset, length in enumerate(lengths[:-1]):
            axis = rank - dims + offset
            value = self.axis_transform(value, axis, length, length, inverse=True, op=op)
        length, axis = lengths[-1], rank - 1
        rows = value.shape[axis]
        if rows < 0 or rows * length > MATRIX_LIMIT:
            raise _RefusedError(
                f"{op.type} ({op.name}): an inverse real transform of length {length} is too large to lower"
            )
        used = min(rows, length // 2 + 1)
        coefficients = np.zeros((rows, length), complex)
        coefficients[:used] = _coefficients(used, length, length, inverse=True)
        weights = np.full(used, 2.0)
        weights[0] = 1.0
        if length % 2 == 0 and used == length // 2 + 1:
            weights[-1] = 1.0
        coefficients[:used] *= weights[:, None]
        weight = np.empty((rows, 2, length))
        weight[:, 0, :], weight[:, 1, :] = coefficients.real, -coefficients.imag
        weight = weight.reshape(2 * rows, length).astype(_NUMPY[value.dtype])
        name = self.product(value, axis, weight, length, paired_out=False)
        self.node("Identity", [name], value.dtype, shape, output)
