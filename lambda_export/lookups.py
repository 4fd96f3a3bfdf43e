"""Table lookups (Keras ``StringLookup`` / ``IntegerLookup``, any ``tf.lookup`` table a model holds) → ``ai.onnx.ml``.

Why tf2onnx's own path does not serve us: a Keras model reads its table through a resource the traced function
captures, which freezing leaves as a ``Placeholder`` (``…/LookupTableFindV2/table_handle``). tf2onnx's
``from_keras`` first takes such resources out of the captures, walks the model's trackables for ``StaticHashTable``
objects, puts a ``HashTableV2`` node with the table's *shared name* in place of the placeholder and exports each
table's contents (``initialized_tables``, keyed by shared name) for its ``LookupTableFindV2`` handler.
``from_function`` (and our conversion, which is ``from_function``'s two halves) does none of this: the handler finds
a placeholder without a shared name ("Could not determine table shared name"), leaves the node, and the placeholder
stays as a second graph input. Its handler also maps only string↔int64 tables (``IntegerLookup``'s int64→int64
table stays a ``HashTableV2`` that ONNX Runtime refuses).

Here each captured table is resolved by its resource: the placeholder that stands for it (its position among the
concrete function's captures), the lookup op that reads it (its key and value dtypes), and the table's contents
exported eagerly before the conversion (``LookupTableExportV2`` on the captured handle, which every hash table
supports). Our ``LookupTableFindV2`` handler (:func:`lambda_export.upstream.table_lookup_handler`) then writes a
``CategoryMapper`` for string↔int64 tables (what tf2onnx writes) and a ``LabelEncoder`` for the other
int64/float/string pairs (``IntegerLookup``: int64→int64), keys in sorted order (the exported file does not depend
on the hash table's order). A table that cannot be resolved is a :class:`ConversionError` naming the Keras layer
that holds it, never an unconverted node or an extra graph input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lambda_export import upstream
from lambda_export.errors import ConversionError, first_line

__all__ = ["HASHING_OPS", "LOOKUP_OPS", "Table", "TableLookups", "layer_of"]

LOOKUP_OPS = frozenset({"LookupTableFindV2", "LookupTableSizeV2", "LookupTableExportV2", "HashTableV2"})
"""TensorFlow table ops: one of them left in the converted graph means a table that was not resolved."""

HASHING_OPS = {
    "StringToHashBucketFast": "FarmHash64",
    "StringToHashBucketStrong": "SipHash64 (a salt)",
    "StringToHashBucket": "FarmHash64",
}
"""TensorFlow string hashing ops → the hash (no ONNX op or ai.onnx.ml op computes either)."""

_KIND = {"O": "string", "S": "string", "U": "string"}
_CATEGORY_MAPPER = {("string", "int64"), ("int64", "string")}
_LABEL_ENCODER = {(k, v) for k in ("string", "int64", "float") for v in ("string", "int64", "float")}


@dataclass(frozen=True)
class Table:
    """One captured table: the frozen graph's node that stands for it, its owner, and its contents (or why not)."""

    node: str
    layer: str
    keys: np.ndarray | None = None
    values: np.ndarray | None = None
    problem: str | None = None


def _kind(array: np.ndarray) -> str | None:
    if array.dtype.kind in _KIND:
        return "string"
    if array.dtype == np.int64:
        return "int64"
    if array.dtype == np.float32:
        return "float"
    return None


def _attribute_values(array: np.ndarray, kind: str) -> list[Any]:
    if kind == "string":
        return [item if isinstance(item, bytes) else str(item).encode() for item in array.tolist()]
    return array.tolist()


def layer_of(name: str, layer_names: Sequence[str]) -> str:
    """The Keras layer whose name scope ``name`` (a TensorFlow op's name) is in: the deepest path component that is
    a layer's name, or that name with the ``_N`` suffix TensorFlow adds to a repeated scope; else the op's scope."""
    known = set(layer_names)
    parts = name.split("/")
    for part in reversed(parts[:-1]):
        if part in known:
            return part
        base = re.sub(r"_\d+$", "", part)
        if base in known:
            return base
    return "/".join(parts[:-1]) or name


def _reader(placeholder: Any) -> Any:
    """The table op that reads ``placeholder`` (through Identity ops), or None."""
    pending = [placeholder]
    while pending:
        tensor = pending.pop()
        for op in tensor.consumers():
            if op.type == "Identity":
                pending.extend(op.outputs)
            elif op.type.startswith("LookupTable"):
                return op
    return None


def _owners(model: Any) -> dict[int, str]:
    """id(resource handle) → the name of the layer that holds that table, for every table a layer of ``model`` holds."""
    if model is None:
        return {}
    from lambda_export.loading import walk_layers

    owners: dict[int, str] = {}
    layers = [model, *walk_layers(model)]
    for layer in list(layers):
        layers.extend(upstream.sublayers(layer))
    for layer in layers:
        for value in list(vars(layer).values()):
            if hasattr(value, "key_dtype") and hasattr(value, "value_dtype"):
                try:
                    owners.setdefault(id(value.resource_handle), layer.name)
                except Exception:  # a table whose resource cannot be created: not one the model captured
                    continue
    return owners


@dataclass
class TableLookups:
    """The tables one traced function captured, by the name of the frozen graph's node that stands for each, and
    what went wrong while converting their lookups."""

    tables: dict[str, Table] = field(default_factory=dict)
    layer_names: tuple[str, ...] = ()
    captured: dict[str, np.ndarray] = field(default_factory=dict)
    key_shapes: dict[str, list[int | None]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, concrete: Any, model: Any = None) -> TableLookups:
        """The tables ``concrete`` (a concrete function) captured, their contents exported now (eagerly)."""
        import tensorflow as tf

        from lambda_export.loading import walk_layers

        captures = list(concrete.captured_inputs)
        placeholders = concrete.inputs[len(concrete.inputs) - len(captures) :]
        owners = _owners(model)
        names = tuple(layer.name for layer in walk_layers(model)) if model is not None else ()
        tables: dict[str, Table] = {}
        captured: dict[str, np.ndarray] = {}
        for placeholder, value in zip(placeholders, captures, strict=True):
            if placeholder.dtype != tf.dtypes.resource:
                if not placeholder.shape.rank:  # a scalar: a lookup's default value is one
                    captured[placeholder.name] = np.asarray(value)
                continue
            reader = _reader(placeholder)
            if reader is None:
                continue  # a variable (frozen into a constant) or a resource no table op reads
            node = placeholder.name.split(":")[0]
            layer = owners.get(id(value)) or layer_of(reader.name, names)
            tables[node] = _exported(node, layer, value, reader)
        key_shapes = {
            op.name: op.inputs[1].shape.as_list()
            for op in concrete.graph.get_operations()
            if op.type == "LookupTableFindV2" and op.inputs[1].shape.rank is not None
        }
        return cls(tables=tables, layer_names=names, captured=captured, key_shapes=key_shapes)

    def pin_shapes(self, graph_def: Any) -> None:
        """Give each lookup's result its keys' shape in the frozen ``graph_def``: an ``EnsureShape`` after it.

        TensorFlow cannot tell the shape of a lookup in a table it sees as a placeholder, so every op after it has
        an unknown shape too, and tf2onnx's handlers then guess (a bincount taken as 1-D: ``multi_hot``/``count``
        outputs of the wrong rank; a ``tf.where`` after the mask token given a scalar's shape). tf2onnx converts
        ``EnsureShape`` to nothing (an Identity its optimizer removes).
        """
        import tensorflow as tf

        for node in list(graph_def.node):
            shape = self.key_shapes.get(node.name)
            if node.op != "LookupTableFindV2" or shape is None:
                continue
            pinned = graph_def.node.add()
            pinned.name = f"{node.name}/keys_shape"
            pinned.op = "EnsureShape"
            pinned.input.append(node.name)
            pinned.attr["T"].type = node.attr["Tout"].type
            pinned.attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())
            for reader in graph_def.node:
                if reader is pinned:
                    continue
                for position, name in enumerate(reader.input):
                    if name in (node.name, f"{node.name}:0"):
                        reader.input[position] = pinned.name

    def handlers(self) -> dict[str, tuple[Any, list[Any]]]:
        """tf2onnx ``custom_op_handlers`` converting this function's table lookups."""
        return {"LookupTableFindV2": (upstream.table_lookup_handler(self.build), [])}

    def rewriters(self) -> list[Any]:
        """tf2onnx ``custom_rewriter``s this function's string comparisons need (a mask token's ``Equal``)."""
        return [upstream.string_equality_rewriter(self.captured.get, self._refuse_equal)]

    def _refuse_equal(self, node: str) -> None:
        self.problems.append(
            f"layer {layer_of(node, self.layer_names)!r}: {node} compares two string tensors; ONNX compares strings "
            "from opset 19 on, beyond tf2onnx's 18 (one known string is converted as a CategoryMapper)"
        )

    def build(self, node: str, lookup: str, default: Any) -> tuple[str, dict[str, Any]] | None:
        """The ``ai.onnx.ml`` node (op type, attributes) for a lookup in the table of ``node``, None on a problem."""
        table = self.tables.get(node)
        if table is None:
            self._problem(layer_of(lookup, self.layer_names), f"the table read by {lookup} is not one the model holds")
            return None
        if table.problem is not None or table.keys is None or table.values is None:
            self._problem(table.layer, table.problem or "its contents are unknown")
            return None
        if isinstance(default, str):  # a captured value: a graph input for tf2onnx
            default = self.captured.get(default)
        if default is None or np.size(default) != 1:
            self._problem(table.layer, "the lookup's default value is not a constant")
            return None
        kinds = (_kind(table.keys), _kind(table.values))
        if kinds[0] is None or kinds[1] is None or kinds not in _LABEL_ENCODER:
            self._problem(
                table.layer,
                f"a {table.keys.dtype}→{table.values.dtype} table: ONNX maps int64, float32 and string keys and values",
            )
            return None
        key_kind, value_kind = kinds
        order = np.argsort(table.keys, kind="stable")
        keys = _attribute_values(table.keys[order], key_kind)
        values = _attribute_values(table.values[order], value_kind)
        fallback = _attribute_values(np.asarray(default).reshape(1).astype(table.values.dtype), value_kind)[0]
        if kinds in _CATEGORY_MAPPER:
            strings, ints = (keys, values) if key_kind == "string" else (values, keys)
            return "CategoryMapper", {"cats_strings": strings, "cats_int64s": ints, f"default_{value_kind}": fallback}
        suffix = {"string": "strings", "int64": "int64s", "float": "floats"}
        return "LabelEncoder", {
            f"keys_{suffix[key_kind]}": keys,
            f"values_{suffix[value_kind]}": values,
            f"default_{value_kind}": fallback,
        }

    def check(self, model: Any) -> None:
        """Raise the first problem met while converting, or name the layer of a table op left in ``model``.

        Raises:
            ConversionError: one line naming the Keras layer.
        """
        if self.problems:
            raise ConversionError(self.problems[0])
        for graph_node in model.graph.node:
            if graph_node.op_type in LOOKUP_OPS:
                layer = layer_of(graph_node.name, self.layer_names)
                raise ConversionError(
                    f"layer {layer!r}: its lookup table could not be resolved ({graph_node.op_type} "
                    f"{graph_node.name} left unconverted)"
                )

    def _problem(self, layer: str, why: str) -> None:
        self.problems.append(f"layer {layer!r}: cannot convert its lookup table: {why}")


def _exported(node: str, layer: str, handle: Any, reader: Any) -> Table:
    """``Table`` with the contents of the captured table ``handle`` (exported eagerly), or the reason it has none."""
    import tensorflow as tf

    try:
        key_dtype, value_dtype = reader.get_attr("Tin"), reader.get_attr("Tout")
    except (ValueError, KeyError):
        return Table(node, layer, problem=f"{reader.type} {reader.name} does not name its key and value types")
    try:
        with tf.device("/cpu:0"):
            keys, values = tf.raw_ops.LookupTableExportV2(table_handle=handle, Tkeys=key_dtype, Tvalues=value_dtype)
    except Exception as exc:  # not a hash table (no export), or uninitialized
        return Table(node, layer, problem=f"its contents cannot be read ({first_line(exc)})")
    return Table(node, layer, keys=np.asarray(keys.numpy()), values=np.asarray(values.numpy()))
