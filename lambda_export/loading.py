"""Load a saved Keras model (``.h5``, ``.keras``, SavedModel folder) safely, first step of the pipeline.

Safety defaults: Keras' ``safe_mode`` stays on, a model whose config contains a ``Lambda`` layer (whose
deserialisation runs Python code stored in the file) is refused unless the caller passes ``trust_code=True``, and
``.keras`` archives are checked for implausible uncompressed sizes before Keras opens them. User code that registers
custom layers is imported only when asked (``imports``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambda_export import upstream
from lambda_export.errors import InputError, UnsafeModelError, described, first_line
from lambda_export.graph import TensorInfo, UniqueNames

MAX_ARCHIVE_BYTES = 16 * 1024**3  # a .keras entry declaring more than this uncompressed is refused
MAX_COMPRESSION_RATIO = 2000  # ... and so is one that would expand more than this (zip bomb)

__all__ = [
    "LoadedModel",
    "TensorInfo",
    "import_user_code",
    "input_value_ranges",
    "load_model",
    "sha256_of",
    "walk_layers",
]


@dataclass
class LoadedModel:
    """A Keras model ready for conversion, with its inputs/outputs and where it came from."""

    model: Any  # keras.Model
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    source: str | None = None  # path, or None for an in-memory model
    sha256: str | None = None
    warnings: list[str] = field(default_factory=list)
    # input name -> [low, high) of the values it may take: an Embedding's vocabulary, {0, 1} for a mask
    input_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, or of all files of a folder (sorted by relative path)."""
    digest = hashlib.sha256()
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        if root.is_dir():
            digest.update(str(file.relative_to(root)).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def import_user_code(items: list[str] | tuple[str, ...]) -> None:
    """Import modules (dotted names) or Python files that register custom Keras layers.

    Raises:
        InputError: a module cannot be found or raises while importing.
    """
    for item in items:
        try:
            if item.endswith(".py") or os.sep in item:
                path = Path(item)
                if not path.is_file():
                    raise InputError(f"imports {item}: no such file", argument="imports")
                name = f"lambda_export_user_{path.stem}_{abs(hash(str(path.resolve())))}"
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise InputError(f"imports {item}: not a Python file", argument="imports")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except InputError:
            raise
        except Exception as exc:  # user code can raise anything
            raise InputError(f"imports {item}: {described(exc, None)}", argument="imports") from exc


def _find_lambda_layers(config: Any) -> list[str]:
    """Names of ``Lambda`` layers anywhere in a (nested) Keras model config."""
    found: list[str] = []
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            inner = config.get("config", {})
            found.append(str(inner.get("name", "?")) if isinstance(inner, dict) else "?")
        for value in config.values():
            found.extend(_find_lambda_layers(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_find_lambda_layers(value))
    return found


def _check_keras_archive(path: Path) -> dict[str, Any]:
    """Validate a ``.keras`` zip archive without extracting it and return its parsed config."""
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a valid .keras file (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = {info.filename for info in infos}
            for info in infos:
                if info.file_size > MAX_ARCHIVE_BYTES or (
                    info.compress_size > 0 and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO
                ):
                    raise InputError(
                        f"{path}: entry {info.filename!r} declares {info.file_size} bytes uncompressed "
                        f"({info.compress_size} compressed); refusing a possible zip bomb"
                    )
            if "config.json" not in names:
                raise InputError(f"{path}: not a valid .keras file (no config.json entry)")
            if not any(name.startswith("model.weights") for name in names):
                raise InputError(f"{path}: .keras archive has no weights entry (model.weights.h5)")
            config = json.loads(archive.read("config.json"))
            bad = archive.testzip()
            if bad is not None:
                raise InputError(f"{path}: .keras archive entry {bad!r} is corrupted (CRC mismatch)")
    except InputError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, RuntimeError, EOFError) as exc:
        raise InputError(f"{path}: cannot read .keras archive (corrupted?): {first_line(exc, None)}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path}: config.json is not a Keras model config")
    return config


def _h5_config(path: Path) -> dict[str, Any]:
    """The ``model_config`` JSON of a Keras ``.h5`` file."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            raise InputError(f"{path}: not a valid .h5 file (no HDF5 signature)")
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
            if raw is None:
                raise InputError(f"{path}: .h5 file has no model_config (weights-only files are not models)")
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            return json.loads(raw)
    except InputError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/... on truncated files
        raise InputError(f"{path}: cannot read .h5 file (truncated or corrupt?): {first_line(exc, None)}") from exc


_UNKNOWN_CLASS = re.compile(r"(?:Could not locate (?:class|function) |Unknown layer: |Unknown \w+: )'?([\w.>]+)'?")


def _explain_load_error(path: Path, exc: BaseException) -> InputError:
    text = str(exc)
    match = _UNKNOWN_CLASS.search(text)
    if match:
        name = match.group(1)
        return InputError(
            f"{path}: unknown custom class {name!r}: import the code that defines and registers it with "
            f"imports=[MODULE_OR_FILE]; the class must be decorated with @keras.saving.register_keras_serializable()",
            argument="imports=[MODULE_OR_FILE]",
        )
    return InputError(f"{path}: cannot load the Keras model: {_load_error_line(exc)}")


_VALUE_DUMP = re.compile(r",? value=[\[(<].*$")
"""A variable's repr from its values on (Keras' ``<Variable path=..., value=[[[...`` runs over many lines)."""


def _load_error_line(exc: BaseException, limit: int = 400) -> str:
    """``TypeName: first line`` of a load error, and, when that line only introduces the cause ("... Example error
    message for object <Conv2D name=top_conv, built=True>:"), the cause's line joined with " — " (a variable's values
    left out): one line that says why."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = described(exc, None)
    if len(lines) > 1 and lines[0].endswith(":"):
        cause = _VALUE_DUMP.sub("", lines[1]).rstrip(" :")
        text = f"{text} — {cause}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tensor_infos(tensors: list[Any], names: list[str]) -> list[TensorInfo]:
    import keras

    infos = []
    for tensor, name in zip(tensors, names, strict=True):
        shape = tuple(None if d is None else int(d) for d in tensor.shape)
        infos.append(TensorInfo(name=name, shape=shape, dtype=keras.backend.standardize_dtype(tensor.dtype)))
    return infos


def describe(model: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Input and output descriptions of a built Keras model."""
    try:
        inputs = list(model.inputs)
        outputs = list(model.outputs)
    except (AttributeError, ValueError) as exc:
        raise InputError(
            "the model has no defined inputs (a Sequential model built without an Input layer?): "
            "build it with keras.Input(shape=...) before saving"
        ) from exc
    if not inputs or not outputs:
        raise InputError("the model has no defined inputs or outputs")
    input_names = _input_names(model, inputs)
    output_names = list(getattr(model, "output_names", None) or [])
    if len(output_names) != len(outputs):
        output_names = [f"output_{i}" for i in range(len(outputs))]
    output_names = _unique([_sanitize(name) for name in output_names])
    input_names = _unique([_sanitize(name) for name in input_names])
    return _tensor_infos(inputs, input_names), _tensor_infos(outputs, output_names)


def _input_names(model: Any, inputs: list[Any]) -> list[str]:
    """The model's own name of each input: its key for a model called with a dict (how Keras matches the call's
    arguments), else the name of the ``InputLayer`` that made it (``keras.Input(shape)`` without a name: the layer is
    ``input_layer``, its tensor ``keras_tensor``), else the tensor's name."""
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = None
    if isinstance(structure, dict):
        import keras

        keys = keras.tree.flatten({key: key for key in structure})
        if len(keys) == len(inputs):
            return [str(key) for key in keys]
    return [
        upstream.input_layer_name(tensor) or getattr(tensor, "name", None) or f"input_{index}"
        for index, tensor in enumerate(inputs)
    ]


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0])
    return name or "tensor"


def _unique(names: list[str]) -> list[str]:
    """The names in order, a repeat getting ``_1``, ``_2`` … (never one used already)."""
    taken = UniqueNames()
    return [taken.new(name) for name in names]


def load_model(
    source: Any,
    *,
    trust_code: bool = False,
    imports: list[str] | tuple[str, ...] = (),
) -> LoadedModel:
    """Load a Keras model from a path (``.h5``, ``.keras``, SavedModel folder) or accept an in-memory model.

    Args:
        source: a path or a ``keras.Model``.
        trust_code: allow ``Lambda`` layers, whose deserialisation executes code from the file.
        imports: modules or ``.py`` files to import first (they register custom layers).

    Raises:
        InputError: missing/unreadable/invalid file, unknown custom class.
        UnsafeModelError: the model contains ``Lambda`` layers and ``trust_code`` is False.
    """
    if imports:
        import_keras()  # user code imports Keras itself: do it here, with TensorFlow's start-up lines kept off stderr
    import_user_code(list(imports))
    if not _is_keras_model(source):
        # Cheap checks first: a missing, empty or malformed file is reported without starting TensorFlow.
        if not str(os.fspath(source)).strip():
            raise InputError("the model path is empty")
        path = Path(os.fspath(source))
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
                raise InputError(f"{path}: a folder, but not a SavedModel (no saved_model.pb)")
        else:
            config = _file_config(path)
            lambdas = _find_lambda_layers(config)
            if lambdas and not trust_code:
                raise UnsafeModelError(_lambda_message(str(path), lambdas), argument="trust_code=True")
    keras = import_keras()

    import lambda_layers  # noqa: F401  (registers the lambda layers for deserialisation)

    if isinstance(source, keras.Model):
        if not trust_code:
            lambdas = [layer.name for layer in walk_layers(source) if type(layer).__name__ == "Lambda"]
            if lambdas:
                raise UnsafeModelError(_lambda_message("the model", lambdas), argument="trust_code=True")
        inputs, outputs = describe(source)
        return LoadedModel(model=source, inputs=inputs, outputs=outputs, input_ranges=_ranges(source, inputs))

    if path.is_dir():
        return _load_saved_model(path, trust_code=trust_code)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as exc:
        raise _explain_load_error(path, exc) from exc
    inputs, outputs = describe(model)
    return LoadedModel(
        model=model,
        inputs=inputs,
        outputs=outputs,
        source=str(path),
        sha256=sha256_of(path),
        input_ranges=_ranges(model, inputs),
    )


def _file_config(path: Path) -> dict[str, Any]:
    """The model config stored in a ``.keras`` or ``.h5`` file, after checking the file is plausible."""
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise InputError(
            f"{path}: unsupported model file type {suffix!r} (expected .h5, .keras or a SavedModel folder)"
        )
    if not path.is_file():  # a FIFO or device would block or never end
        raise InputError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if size == 0:
        raise InputError(f"{path}: the file is empty")
    if suffix == ".keras":
        return _check_keras_archive(path)
    return _h5_config(path)


def _is_keras_model(source: Any) -> bool:
    """True for an in-memory Keras model (checked without importing Keras when it is not loaded yet)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(source, keras.Model)


def import_keras() -> Any:
    """Import Keras (and TensorFlow), keeping TensorFlow's native start-up log lines off stderr.

    TensorFlow's C++ libraries print INFO lines (oneDNN, CUDA stubs, CPU features) and, on a machine without a GPU,
    a ``cuInit`` error straight to file descriptor 2 while they load and first look for devices, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says (they come before its logging is set up); a command line that promises one-line
    errors cannot let them through. They are captured while the import and the device discovery run and written out
    only if the import fails. When this is the process's first import of TensorFlow and ``TF_CPP_MIN_LOG_LEVEL`` is
    unset, it is set to 1, which keeps TensorFlow's later INFO lines (its graph optimizer's ``devices.cc`` and
    ``single_machine.cc`` at each conversion) off stderr as well; warnings and errors still show. A process that
    imported TensorFlow itself keeps its own settings.
    """
    if "keras" in sys.modules:
        import keras

        return keras
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # read once, when TensorFlow's logging starts
    with _native_stderr_captured() as captured:
        try:
            import keras
        except BaseException:
            captured.replay = True
            raise
        with contextlib.suppress(Exception):  # device discovery (cuInit) now, while its log lines are captured
            import tensorflow as tf

            tf.config.list_physical_devices()
    return keras


class _Capture:
    replay = False


@contextlib.contextmanager
def _native_stderr_captured() -> Any:
    """Point file descriptor 2 at a temporary file for the duration; replay its text if ``replay`` is set."""
    import tempfile

    capture = _Capture()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield capture  # no usable descriptor 2 (embedded interpreter): nothing to hide
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield capture
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if capture.replay:
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    sys.stderr.write(text)
                    sys.stderr.flush()


def _lambda_message(what: str, names: list[str]) -> str:
    return (
        f"{what} contains Lambda layer(s) {', '.join(sorted(set(names)))}: loading them executes Python code stored "
        "in the file; pass trust_code=True only if you trust its origin"
    )


def walk_layers(model: Any) -> list[Any]:
    """Every layer of a Keras model, nested sub-models' layers included (depth first, in layer order)."""
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out.extend(walk_layers(layer))
    return out


_Call = tuple[tuple[Any, ...], dict[str, Any], list[Any]]
"""One call of an operation in a functional graph: (positional arguments, keyword arguments, outputs)."""

# operations whose outputs hold their inputs' values (moved, sliced, joined, cast): an id or a mask stays one
_VALUE_PRESERVING = frozenset(
    {
        "InputLayer", "Identity", "Reshape", "Flatten", "Permute", "RepeatVector", "Cropping1D", "Cropping2D",
        "Cropping3D", "GetItem", "Slice", "Concatenate", "Stack", "Squeeze", "ExpandDims", "Transpose", "Cast",
        "Tile", "BroadcastTo", "Repeat", "Take", "TakeAlongAxis", "LogicalAnd", "LogicalOr", "LogicalNot",
        "LogicalXor",
    }
)  # fmt: skip


def input_value_ranges(model: Any) -> dict[int, tuple[int, int]]:
    """[low, high) of the values each input of a functional Keras model may take, by position in ``model.inputs``.

    An input that feeds ``Embedding`` layers (directly or through operations that only move, slice, join or cast
    values, or a custom layer holding an ``Embedding``) takes ids below the smallest of their ``input_dim``; one
    that a layer receives as a mask (a call argument whose name contains "mask": ``mask=``, ``attention_mask=``,
    ``query_mask=``...) takes 0 and 1; both: the narrower. Nested functional models are followed into. Inputs with
    neither use are left out (any value of their dtype is valid as far as the model's structure tells).
    """
    consumers = _consumers(model)
    ranges: dict[int, tuple[int, int]] = {}
    for position, tensor in enumerate(getattr(model, "inputs", None) or []):
        highs = _value_limits(tensor, consumers, set())
        if highs:
            ranges[position] = (0, min(highs))
    return ranges


def _consumers(model: Any) -> dict[int, list[tuple[Any, _Call, bool]]]:
    """id(KerasTensor) → (operation, call, used as a mask) for every call in ``model`` and the models nested in it."""
    found: dict[int, list[tuple[Any, _Call, bool]]] = {}
    for operation, args, kwargs, outputs in upstream.all_calls(model):
        call = (args, kwargs, outputs)
        for value in _keras_tensors(args):
            found.setdefault(id(value), []).append((operation, call, False))
        for key, argument in kwargs.items():
            for value in _keras_tensors(argument):
                found.setdefault(id(value), []).append((operation, call, "mask" in key.lower()))
    return found


def _keras_tensors(structure: Any) -> list[Any]:
    import keras

    return [value for value in keras.tree.flatten(structure) if isinstance(value, keras.KerasTensor)]


def _value_limits(tensor: Any, consumers: dict[int, list[tuple[Any, _Call, bool]]], visited: set[int]) -> list[int]:
    """The exclusive upper bounds that the uses of ``tensor`` put on its values (see :func:`input_value_ranges`)."""
    if id(tensor) in visited:
        return []
    visited.add(id(tensor))
    limits: list[int] = []
    for operation, (args, kwargs, outputs), as_mask in consumers.get(id(tensor), []):
        name = type(operation).__name__
        if as_mask:
            limits.append(2)
        elif name == "Embedding" and getattr(operation, "input_dim", None):
            limits.append(int(operation.input_dim))
        elif upstream.is_functional(operation) and getattr(operation, "inputs", None):
            # a nested functional model: follow the tensor to the inner input at the same position
            flat = _keras_tensors((args, kwargs))
            inner = list(operation.inputs)
            for index, value in enumerate(flat):
                if value is tensor and index < len(inner):
                    limits += _value_limits(inner[index], consumers, visited)
        elif name in _VALUE_PRESERVING:
            for output in outputs:
                limits += _value_limits(output, consumers, visited)
        else:
            sizes = [
                int(layer.input_dim)
                for layer in upstream.sublayers(operation)
                if type(layer).__name__ == "Embedding" and getattr(layer, "input_dim", None)
            ]
            if sizes:  # a custom layer that embeds its input (token + position embeddings)
                limits.append(min(sizes))
    return limits


def _ranges(model: Any, inputs: list[TensorInfo]) -> dict[str, tuple[int, int]]:
    """:func:`input_value_ranges` by input name (empty when the model's graph cannot be walked)."""
    try:
        by_position = input_value_ranges(model)
    except Exception:  # a subclassed or unusual model: no structure to read, no ranges
        return {}
    return {inputs[position].name: bounds for position, bounds in by_position.items() if position < len(inputs)}


def _load_saved_model(path: Path, *, trust_code: bool) -> LoadedModel:
    """Wrap a TensorFlow SavedModel's ``serving_default`` signature in a Keras model."""
    keras = import_keras()

    try:
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    except Exception as exc:
        raise InputError(f"{path}: cannot load the SavedModel: {first_line(exc, None)}") from exc
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise InputError(f"{path}: the SavedModel has no serving_default signature")
    specs = signature.structured_input_signature[1]
    inputs = {
        name: keras.Input(shape=tuple(spec.shape[1:]), batch_size=spec.shape[0], dtype=spec.dtype.name, name=name)
        for name, spec in sorted(specs.items())
    }
    outputs = layer(inputs)
    if not isinstance(outputs, dict):
        outputs = {"output_0": outputs}
    model = keras.Model(inputs=inputs, outputs=outputs, name=path.name or "saved_model")
    infos_in = _tensor_infos([inputs[n] for n in sorted(inputs)], sorted(inputs))
    out_names = sorted(outputs)
    infos_out = _tensor_infos([outputs[n] for n in out_names], out_names)
    return LoadedModel(model=model, inputs=infos_in, outputs=infos_out, source=str(path), sha256=sha256_of(path))
