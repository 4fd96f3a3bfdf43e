"""ONNX models as protobuf messages without whole-model copies: sizes, writing, snapshots.

With protobuf's upb backend (the one ``pip install protobuf`` brings), a few innocent-looking calls cost several times
a model's size at once: ``ByteSize()`` encodes the whole message (measured: a peak of 5x the model), and so does
``SerializeToString()``, which keeps one more copy as the result. Memory freed inside a message (a removed or replaced
initializer) returns only when the whole message is destroyed: ``del graph.initializer[:]`` followed by ``extend``
doubles a model. ``append()``/``extend()``/``MergeFrom()`` of a message copy it by serializing and parsing, which
fails on a tensor over 2 GB (``add().CopyFrom()`` does not). For a model whose weights are hundreds of MB or more (a 2.5 GB relative position embedding), these
are the difference between converting and running out of memory. This module does the same work tensor by tensor:

* :func:`serialized_size`: the exact serialized size (what ``ByteSize()`` returns), from the initializers' shapes;
* :func:`write_model`: the serialized model streamed into a file, byte-identical to ``SerializeToString()``, or with
  the large initializers written to a second file as ONNX external data (what ``onnx``'s external data helpers write
  with ``all_tensors_to_one_file=True``); at most one tensor's data is copied at a time;
* :func:`serialize`: the model as ``bytes`` with one copy of it (``write_model`` into a buffer);
* :class:`Snapshot`: what a rewrite pass may change (nodes, inputs, outputs, the list of initializers) without a copy
  of the initializers, whose content passes never change in place (they add new ones);
* :func:`tensor_digest`: a hash of a tensor's content that reads a large tensor's data once.

Only the main graph's initializers are handled one by one; anything else (subgraph bodies, attributes) is serialized
as protobuf does it, which is cheap for what tf2onnx puts there.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import onnx

from lambda_export.errors import ConversionError

__all__ = [
    "DIGEST_STREAMING_BYTES",
    "Snapshot",
    "UnsupportedProtobufError",
    "is_repeated_field",
    "serialize",
    "serialized_size",
    "tensor_digest",
    "write_model",
]

_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_NAME = onnx.TensorProto.DESCRIPTOR.fields_by_name["name"].number
_EXTERNAL_FIELDS = {
    onnx.TensorProto.DESCRIPTOR.fields_by_name[name].number for name in ("external_data", "data_location")
}
_BYTES_OVERHEAD = sys.getsizeof(b"")  # onnx compares sys.getsizeof(raw_data) with its external-data threshold


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_field(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field (the payload follows)."""
    return _varint(number << 3 | 2) + _varint(length)


def is_repeated_field(descriptor: Any) -> bool:
    """Whether a field is repeated, on protobuf 6 and 7 alike.

    protobuf 7 removed ``FieldDescriptor.label``; ``is_repeated`` exists on 6 and 7 (CI runs both: the dev extras
    resolve 6.33, a plain install 7.x). A protobuf that has neither is one this module was never tested with: fail
    loudly rather than misread a field.
    """
    repeated = getattr(descriptor, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    label = getattr(descriptor, "label", None)
    if label is None:
        raise UnsupportedProtobufError(
            f"protobuf {_protobuf_version()}: FieldDescriptor has neither 'is_repeated' nor 'label'; "
            "lambda-export is tested with protobuf 6 and 7 (pip install 'protobuf>=6,<8')"
        )
    return label == descriptor.LABEL_REPEATED


def _protobuf_version() -> str:
    import google.protobuf

    return getattr(google.protobuf, "__version__", "?")


class UnsupportedProtobufError(ConversionError):
    """The installed protobuf lacks the descriptor API this module reads (a major version not supported yet).

    A :class:`~lambda_export.errors.ConversionError`: the command line reports it in one line (exit code 3), with the
    versions that work, rather than as an internal error."""


def _part(message: Any, keep: Callable[[int], bool]) -> Any:
    """A new message of ``message``'s type with the fields whose number ``keep`` accepts (copied).

    Fields left out are not read (``ListFields()`` would return a copy of a tensor's ``raw_data``)."""
    part = type(message)()
    for descriptor in message.DESCRIPTOR.fields:
        if not keep(descriptor.number):
            continue
        if is_repeated_field(descriptor):
            values = getattr(message, descriptor.name)
            if len(values):
                target = getattr(part, descriptor.name)
                if descriptor.type == descriptor.TYPE_MESSAGE:
                    for value in values:
                        target.add().CopyFrom(value)  # extend() copies by serializing: it refuses 2 GB
                else:
                    target.extend(values)
        elif message.HasField(descriptor.name):
            if descriptor.type == descriptor.TYPE_MESSAGE:
                getattr(part, descriptor.name).CopyFrom(getattr(message, descriptor.name))
            else:
                setattr(part, descriptor.name, getattr(message, descriptor.name))
    return part


_ITEM_BYTES = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.UINT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1,
    onnx.TensorProto.COMPLEX64: 8,
    onnx.TensorProto.COMPLEX128: 16,
}


def _raw_length(tensor: onnx.TensorProto) -> int:
    """The length of ``tensor.raw_data`` from its shape and type (reading the field would copy it)."""
    size = _ITEM_BYTES.get(tensor.data_type)
    if size is None:
        return len(tensor.raw_data)
    return int(np.prod(list(tensor.dims), dtype=np.int64)) * size


@dataclass
class _Tensor:
    """How one initializer is written: ``before`` + raw data (inline or external) + ``after``, ``size`` in all."""

    tensor: onnx.TensorProto
    before: bytes = b""
    after: bytes = b""
    raw_length: int = 0
    external: bool = False
    whole: bytes | None = None  # a tensor without raw_data, serialized as protobuf does it

    @property
    def size(self) -> int:
        if self.whole is not None:
            return len(self.whole)
        inline = 0 if self.external else len(_length_field(_RAW, self.raw_length)) + self.raw_length
        return len(self.before) + inline + len(self.after)


def _plan(tensor: onnx.TensorProto, location: str | None, offset: int, threshold: int) -> _Tensor:
    if not tensor.HasField("raw_data"):
        return _Tensor(tensor, whole=tensor.SerializeToString())
    length = _raw_length(tensor)
    before = _part(tensor, lambda number: number < _RAW).SerializeToString()
    external = location is not None and length + _BYTES_OVERHEAD >= threshold
    if not external:
        return _Tensor(tensor, before, _part(tensor, lambda number: number > _RAW).SerializeToString(), length)
    after = _part(tensor, lambda number: number > _RAW and number not in _EXTERNAL_FIELDS)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = after.external_data.add()
        entry.key, entry.value = key, value
    after.data_location = onnx.TensorProto.EXTERNAL
    return _Tensor(tensor, before, after.SerializeToString(), length, external=True)


@dataclass
class _Layout:
    head: bytes
    graph_head: bytes
    tensors: list[_Tensor]
    graph_tail: bytes
    tail: bytes
    has_graph: bool
    data_bytes: int = 0
    graph_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.graph_size = (
            len(self.graph_head)
            + sum(len(_length_field(_INITIALIZER, t.size)) + t.size for t in self.tensors)
            + len(self.graph_tail)
        )

    @property
    def size(self) -> int:
        graph = len(_length_field(_GRAPH, self.graph_size)) + self.graph_size if self.has_graph else 0
        return len(self.head) + graph + len(self.tail)


def _layout(model: onnx.ModelProto, location: str | None = None, threshold: int = 1024) -> _Layout:
    graph = model.graph
    tensors, offset = [], 0
    for tensor in graph.initializer:
        planned = _plan(tensor, location, offset, threshold)
        if planned.external:
            offset += planned.raw_length
        tensors.append(planned)
    return _Layout(
        head=_part(model, lambda number: number < _GRAPH).SerializeToString(),
        graph_head=_part(graph, lambda number: number < _INITIALIZER).SerializeToString(),
        tensors=tensors,
        graph_tail=_part(graph, lambda number: number > _INITIALIZER).SerializeToString(),
        tail=_part(model, lambda number: number > _GRAPH).SerializeToString(),
        has_graph=model.HasField("graph"),
        data_bytes=offset,
    )


def serialized_size(model: onnx.ModelProto) -> int:
    """``model.ByteSize()``, computed without encoding the initializers' data."""
    return _layout(model).size


def write_model(
    model: onnx.ModelProto,
    out: IO[bytes],
    *,
    data: IO[bytes] | None = None,
    location: str | None = None,
    threshold: int = 1024,
) -> int:
    """Write ``model`` serialized to ``out``, one initializer at a time; return the bytes written to ``out``.

    Without ``data`` the bytes are those of ``model.SerializeToString()``. With ``data`` (a file opened for writing,
    empty) and ``location`` (its name relative to the model file), the main graph's initializers of ``threshold``
    bytes and more (as ``onnx.external_data_helper.convert_model_to_external_data`` counts them) are written there one
    after the other instead, and the model refers to them as ONNX external data (``location``, ``offset``, ``length``).

    Raises:
        ValueError: an initializer's data does not have the length its shape and type say.
    """
    layout = _layout(model, location if data is not None else None, threshold)
    written = 0

    def put(chunk: bytes) -> None:
        nonlocal written
        out.write(chunk)
        written += len(chunk)

    put(layout.head)
    if layout.has_graph:
        put(_length_field(_GRAPH, layout.graph_size))
        put(layout.graph_head)
        for planned in layout.tensors:
            put(_length_field(_INITIALIZER, planned.size))
            if planned.whole is not None:
                put(planned.whole)
                continue
            put(planned.before)
            raw = planned.tensor.raw_data  # the one copy of this tensor's data
            if len(raw) != planned.raw_length:
                raise ValueError(f"initializer {planned.tensor.name!r}: {len(raw)} bytes of data for its shape")
            if planned.external:
                data.write(raw)  # type: ignore[union-attr]
            else:
                put(_length_field(_RAW, planned.raw_length))
                put(raw)
            del raw
            put(planned.after)
        put(layout.graph_tail)
    put(layout.tail)
    return written


DIGEST_STREAMING_BYTES = 16 * 1024**2
"""Tensors with this much data or more are hashed by :func:`tensor_digest` without serializing them."""


def tensor_digest(tensor: onnx.TensorProto) -> str:
    """A SHA-1 of ``tensor``'s content (type, shape, data; not its name), for structural keys.

    Small tensors: of their serialization with the name removed. From :data:`DIGEST_STREAMING_BYTES` of data on: of
    the other fields and the data, read once (serializing a 2.5 GB tensor would hold ~5 copies of it at once).
    """
    import hashlib

    if not tensor.HasField("raw_data") or _raw_length(tensor) < DIGEST_STREAMING_BYTES:
        # the name field left out entirely: removing only the name's bytes from the serialization kept its length
        # prefix, so the digest depended on the name's length (Keras' process-global counters, "_1" vs "_12"), which
        # reordered the canonical node order from one conversion to the next in the same process
        return hashlib.sha1(
            _part(tensor, lambda number: number != _NAME).SerializeToString(deterministic=True)
        ).hexdigest()
    digest = hashlib.sha1(b"large tensor\x00")
    digest.update(_part(tensor, lambda number: number not in (_RAW, _NAME)).SerializeToString(deterministic=True))
    raw = tensor.raw_data
    digest.update(raw)
    del raw
    return digest.hexdigest()


def serialize(model: onnx.ModelProto) -> bytes:
    """``model.SerializeToString()`` with one copy of the model at a time (not five)."""
    import io

    buffer = io.BytesIO()
    write_model(model, buffer)
    return buffer.getvalue()  # BytesIO hands over its buffer when nothing else views it


class Snapshot:
    """A model's state to return to (a failed rewrite pass) that copies everything but the initializers' data.

    Passes add, remove and rewire initializers but never change one in place, so holding the initializer messages
    themselves (references stay valid after they leave the model) is enough to put them back.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.rest = _part(model, lambda number: number != _GRAPH)
        self.graph = _part(model.graph, lambda number: number != _INITIALIZER)
        self.initializers = list(model.graph.initializer)
        self.has_graph = model.HasField("graph")

    def restore(self, model: onnx.ModelProto) -> None:
        """Put ``model`` back in the snapshot's state (the initializers not in it are copied back in)."""
        graph = model.graph
        # new initializers get fresh names: the same names in the same order are the same tensors
        if [tensor.name for tensor in graph.initializer] != [tensor.name for tensor in self.initializers]:
            del graph.initializer[:]
            for tensor in self.initializers:
                graph.initializer.add().CopyFrom(tensor)  # extend() copies by serializing: it refuses 2 GB
        for descriptor, _ in graph.ListFields():
            if descriptor.number != _INITIALIZER:
                graph.ClearField(descriptor.name)
        graph.MergeFrom(self.graph)
        for descriptor, _ in model.ListFields():
            if descriptor.number != _GRAPH:
                model.ClearField(descriptor.name)
        model.MergeFrom(self.rest)
        if not self.has_graph and not graph.ListFields():
            model.ClearField("graph")
