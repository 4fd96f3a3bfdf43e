"""Write a Triton Inference Server model repository for an ONNX model (library; ``lambda-export triton`` is
:mod:`lambda_export.cli.triton`).

The repository uses Triton's ``onnxruntime`` backend::

    REPO/
      NAME/
        config.pbtxt        # inputs/outputs, batching, instance groups, optional TensorRT
        1/
          model.onnx

``config.pbtxt`` is generated from Triton's own ``ModelConfig`` protobuf message (shipped by ``tritonclient`` as
``tritonclient.grpc.model_config_pb2``) and printed with ``google.protobuf.text_format`` when ``tritonclient`` is
installed. Without it, the same text is written directly by :func:`render_text_fallback`; both paths produce
byte-identical files (``tests/cli/test_triton.py`` checks this).

Batching rules (Triton's conventions):

* every input and output has a dynamic first dimension → the model batches: ``max_batch_size > 0`` and that
  dimension is left out of ``dims``;
* any tensor with a fixed (or missing) first dimension → ``max_batch_size: 0`` and the full shape in ``dims``;
* every other dynamic dimension is written as ``-1``.

Files are written into a temporary folder inside ``REPO`` and renamed into place, so a failed or interrupted run
never leaves a half-written model version; an existing version folder is only replaced with ``force=True``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambda_export.errors import InputError

if TYPE_CHECKING:  # onnx is imported lazily: `lambda-export triton --help` needs none of it
    import onnx

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "TENSORRT_WORKSPACE_BYTES",
    "TRITON_IMAGE",
    "TensorSpec",
    "TritonOptions",
    "TritonRepository",
    "build_model_config",
    "render_config",
    "render_text_fallback",
    "render_text_protobuf",
    "tensor_specs",
    "write_triton_repository",
]

DEFAULT_MAX_BATCH_SIZE = 16
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.06-py3"  # any recent <yy.mm>-py3 release serves this config
TENSORRT_WORKSPACE_BYTES = 1 << 30  # 1 GiB, the value of Triton's onnxruntime backend documentation
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# ONNX TensorProto element type → Triton DataType (model_config.proto).
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",  # FLOAT
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",  # DOUBLE
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


class Enum(str):
    """A protobuf enum value (written without quotes in the text format)."""

    __slots__ = ()


class Map(dict):
    """A protobuf ``map<string, string>`` field (written as sorted ``key``/``value`` entries in the text format)."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, ONNX element type and dims (``None`` = dynamic)."""

    name: str
    elem_type: int
    dims: tuple[int | None, ...]

    @property
    def triton_type(self) -> str:
        """The Triton ``DataType`` name, e.g. ``TYPE_FP32``."""
        try:
            return _ONNX_TO_TRITON[self.elem_type]
        except KeyError:
            import onnx

            type_name = onnx.TensorProto.DataType.Name(self.elem_type) if self.elem_type else "undefined"
            raise InputError(
                f"tensor {self.name!r} has ONNX type {type_name}, which Triton's onnxruntime backend does not serve"
            ) from None


@dataclass
class TritonOptions:
    """What ``lambda-export triton`` writes besides the tensors (all checked by :func:`build_model_config`)."""

    name: str
    max_batch_size: int | None = None  # None: DEFAULT_MAX_BATCH_SIZE for a batching model, 0 otherwise
    instances: int = 1
    gpu: bool = False
    dynamic_batching: bool | None = None  # None: on when the model batches
    preferred_batch_sizes: Sequence[int] = ()
    max_queue_delay_us: int | None = None
    tensorrt: bool = False
    tensorrt_precision: str | None = None  # FP32 (default with --tensorrt) or FP16
    version: int = 1


@dataclass
class TritonRepository:
    """What :func:`write_triton_repository` wrote."""

    repo: Path
    name: str
    version: int
    model_dir: Path
    model_path: Path
    config_path: Path
    config: dict[str, Any]
    text: str
    max_batch_size: int
    replaced: list[str] = field(default_factory=list)


def tensor_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's real inputs (initializers excluded) and its outputs, with shapes.

    Tensors without type/shape information are filled in by ONNX shape inference; if that fails too, InputError.
    """

    def spec(value: Any) -> TensorSpec | None:
        kind = value.type.WhichOneof("value")
        if kind not in (None, "tensor_type"):
            raise InputError(f"{value.name!r} is a {kind.removesuffix('_type')}, not a tensor; Triton serves tensors")
        tensor = value.type.tensor_type
        if kind is None or not tensor.HasField("shape"):
            return None  # filled in by shape inference below
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        return TensorSpec(value.name, tensor.elem_type, dims)

    initializers = {init.name for init in model.graph.initializer}
    inputs = [spec(value) for value in model.graph.input if value.name not in initializers]
    outputs = [spec(value) for value in model.graph.output]
    if any(item is None for item in inputs + outputs):
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # too large or an op without inference: report below
            inferred = model
        by_name = {v.name: v for v in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]}
        for items, values in ((inputs, model.graph.input), (outputs, model.graph.output)):
            real = [v for v in values if v.name not in initializers] if items is inputs else list(values)
            for index, value in enumerate(real):
                if items[index] is None:
                    items[index] = spec(by_name.get(value.name, value))
                if items[index] is None:
                    raise InputError(
                        f"{value.name!r} has no type/shape information and ONNX shape inference cannot find it; "
                        "Triton needs the rank of every input and output"
                    )
    if not inputs:
        raise InputError("the model has no inputs")
    if not outputs:
        raise InputError("the model has no outputs")
    return [s for s in inputs if s is not None], [s for s in outputs if s is not None]


def _batch_blockers(specs: Iterable[TensorSpec]) -> list[str]:
    """Tensors whose first dimension cannot be Triton's batch dimension (fixed, or a scalar)."""
    blockers = []
    for spec in specs:
        if not spec.dims:
            blockers.append(f"{spec.name} (scalar)")
        elif spec.dims[0] is not None:
            blockers.append(f"{spec.name} (first dim {spec.dims[0]})")
    return blockers


def _tensor_entry(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    """One ``input``/``output`` entry; what Triton's onnxruntime backend would auto-complete for the same tensor."""
    dims = [-1 if d is None else d for d in (spec.dims[1:] if batched else spec.dims)]
    entry: dict[str, Any] = {"name": spec.name, "data_type": Enum(spec.triton_type), "dims": dims or [1]}
    if not dims and batched:  # a [batch] tensor: Triton wants dims [1] reshaped to [] (per request: a scalar)
        entry["reshape"] = {}
    return entry


def build_model_config(model: onnx.ModelProto, options: TritonOptions) -> dict[str, Any]:
    """The ``ModelConfig`` as a plain dict in protobuf field-number order (the order text format prints).

    Keys are ModelConfig field names; enum values are :class:`Enum`, string maps :class:`Map`.

    Raises:
        InputError: an option contradicts the model (e.g. batching a fixed-batch model) or another option.
    """
    if not _NAME_RE.match(options.name):
        raise InputError(
            f"model name {options.name!r}: use letters, digits, '_', '.', '-' (and not a leading '.' or '-'); "
            "pass name=NAME",
            argument="name=NAME",
        )
    if options.version < 1:
        raise InputError(f"version {options.version}: Triton model versions are positive integers", argument="version")
    if options.instances < 1:
        raise InputError(f"instances {options.instances}: need at least one instance", argument="instances")
    inputs, outputs = tensor_specs(model)
    blockers = _batch_blockers([*inputs, *outputs])
    max_batch_size = options.max_batch_size
    if max_batch_size is None:
        max_batch_size = 0 if blockers else DEFAULT_MAX_BATCH_SIZE
    elif max_batch_size < 0:
        raise InputError(
            f"max_batch_size {max_batch_size}: must be 0 (no batching) or positive", argument="max_batch_size"
        )
    elif max_batch_size > 0 and blockers:
        raise InputError(
            f"max_batch_size {max_batch_size}: the model has a fixed batch ({', '.join(blockers)}); Triton can only "
            "batch along a dynamic first dimension of every input and output — use max_batch_size 0 or export "
            "with a dynamic batch",
            argument="max_batch_size",
        )
    batched = max_batch_size > 0

    dynamic = options.dynamic_batching
    preferred = sorted(set(options.preferred_batch_sizes))
    if dynamic is None:
        dynamic = batched
    if dynamic and not batched:
        raise InputError(
            "dynamic_batching=True needs a batching model (max_batch_size > 0); "
            + (f"this model has a fixed batch ({', '.join(blockers)})" if blockers else "max_batch_size is 0"),
            argument=("dynamic_batching=True",) + (() if blockers else ("max_batch_size",)),
        )
    if not dynamic and (preferred or options.max_queue_delay_us is not None):
        raise InputError(
            "preferred_batch_sizes and max_queue_delay_us configure dynamic batching, which is off",
            argument=("preferred_batch_sizes", "max_queue_delay_us"),
        )
    if any(size < 1 or size > max_batch_size for size in preferred):
        raise InputError(
            f"preferred_batch_sizes {preferred}: each must be between 1 and max_batch_size ({max_batch_size})",
            argument="preferred_batch_sizes",
        )
    if options.max_queue_delay_us is not None and options.max_queue_delay_us < 0:
        raise InputError(f"max_queue_delay_us {options.max_queue_delay_us}: must be ≥ 0", argument="max_queue_delay_us")

    precision = (options.tensorrt_precision or "FP32").upper() if options.tensorrt else None
    if options.tensorrt_precision is not None and not options.tensorrt:
        raise InputError(
            "tensorrt_precision only applies with tensorrt=True", argument=("tensorrt_precision", "tensorrt=True")
        )
    if options.tensorrt and not options.gpu:
        raise InputError(
            "tensorrt=True is a GPU execution accelerator; add gpu=True (instances of kind KIND_GPU)",
            argument=("tensorrt=True", "gpu=True"),
        )
    if precision is not None and precision not in ("FP32", "FP16"):
        raise InputError(
            f"tensorrt_precision {options.tensorrt_precision}: expected FP32 or FP16", argument="tensorrt_precision"
        )

    names = [spec.name for spec in [*inputs, *outputs]]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"tensor names used both as input and output: {duplicates}")

    config: dict[str, Any] = {"name": options.name, "max_batch_size": max_batch_size}
    config["input"] = [_tensor_entry(spec, batched) for spec in inputs]
    config["output"] = [_tensor_entry(spec, batched) for spec in outputs]
    config["instance_group"] = [{"count": options.instances, "kind": Enum("KIND_GPU" if options.gpu else "KIND_CPU")}]
    if dynamic:
        batching: dict[str, Any] = {}
        if preferred:
            batching["preferred_batch_size"] = preferred
        if options.max_queue_delay_us is not None:
            batching["max_queue_delay_microseconds"] = options.max_queue_delay_us
        config["dynamic_batching"] = batching
    if precision is not None:
        accelerator = {
            "name": "tensorrt",
            "parameters": Map(precision_mode=precision, max_workspace_size_bytes=str(TENSORRT_WORKSPACE_BYTES)),
        }
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    config["backend"] = "onnxruntime"
    return config


# ---------------------------------------------------------------------------------------------------------------------
# Text format: through the protobuf message (tritonclient installed) or written directly (same bytes).


def model_config_message_class() -> Any | None:
    """Triton's ``inference.ModelConfig`` protobuf class from ``tritonclient``, or None when it is not installed."""
    for module_name in ("tritonclient.grpc.model_config_pb2", "tritonclient.grpc._model_config_pb2"):
        try:
            module = __import__(module_name, fromlist=["ModelConfig"])
        except ImportError:
            continue
        return module.ModelConfig
    return None


def render_text_protobuf(config: Mapping[str, Any]) -> str:
    """Build Triton's ``ModelConfig`` message from ``config`` and print it with ``google.protobuf.text_format``.

    Raises:
        ImportError: tritonclient is not installed.
    """
    from google.protobuf import json_format, text_format

    message_class = model_config_message_class()
    if message_class is None:
        raise ImportError("tritonclient (model_config_pb2) is not installed: pip install 'tritonclient[grpc]'")
    message = json_format.ParseDict(_to_json(config), message_class())
    return text_format.MessageToString(message, as_utf8=True)


def _to_json(value: Any) -> Any:
    if isinstance(value, Map):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Enum):
        return str(value)
    return value


_ESCAPES = {i: f"\\{i:03o}" for i in range(32)} | {127: "\\177"}
_ESCAPES |= {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r", ord('"'): '\\"', ord("'"): "\\'", ord("\\"): "\\\\"}


def _quote(text: str) -> str:
    """A string literal as protobuf's text format prints it with ``as_utf8=True`` (C escapes, UTF-8 kept)."""
    return '"' + text.translate(_ESCAPES) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"unsupported value in a model config: {value!r}")


def _write_fields(config: Mapping[str, Any], indent: int, out: list[str]) -> None:
    pad = " " * indent
    for key, value in config.items():
        if isinstance(value, Map):
            for map_key in sorted(value):
                out.append(
                    f"{pad}{key} {{\n{pad}  key: {_quote(map_key)}\n{pad}  value: {_quote(value[map_key])}\n{pad}}}\n"
                )
        elif isinstance(value, Mapping):
            out.append(f"{pad}{key} {{\n")
            _write_fields(value, indent + 2, out)
            out.append(f"{pad}}}\n")
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, Mapping):
                    out.append(f"{pad}{key} {{\n")
                    _write_fields(item, indent + 2, out)
                    out.append(f"{pad}}}\n")
                else:
                    out.append(f"{pad}{key}: {_scalar(item)}\n")
        elif isinstance(value, int | str) and not isinstance(value, Enum) and value in (0, "", False):
            continue  # proto3 default values are not printed
        else:
            out.append(f"{pad}{key}: {_scalar(value)}\n")


def render_text_fallback(config: Mapping[str, Any]) -> str:
    """Write the text format directly (no tritonclient): same output as :func:`render_text_protobuf`.

    ``config`` must be in field-number order, as :func:`build_model_config` returns it.
    """
    out: list[str] = []
    _write_fields(config, 0, out)
    return "".join(out)


def render_config(config: Mapping[str, Any], use_protobuf: bool | None = None) -> str:
    """``config.pbtxt`` text: via the protobuf message when tritonclient is installed (or ``use_protobuf``)."""
    if use_protobuf is None:
        use_protobuf = model_config_message_class() is not None
    return render_text_protobuf(config) if use_protobuf else render_text_fallback(config)


# ---------------------------------------------------------------------------------------------------------------------
# Writing the repository.


def _serialize_model(model: onnx.ModelProto, folder: Path) -> None:
    """Write ``folder/model.onnx`` (with ``model.onnx.data`` beside it when the model is over protobuf's 2 GiB: Triton's
    onnxruntime backend reads external data)."""
    from lambda_export.io import write_model_file

    write_model_file(model, folder / "model.onnx")


def _check_destination(repo: Path, version_dir: Path, config_path: Path, text: str, force: bool) -> None:
    """Refuse, before writing anything, a destination that is not a folder or would be replaced without ``force``."""
    model_dir = version_dir.parent
    if repo.exists() and not repo.is_dir():
        raise InputError(f"repo {repo}: exists and is not a folder", argument="repo")
    if model_dir.exists() and not model_dir.is_dir():
        raise InputError(f"{model_dir} exists and is not a folder")
    if version_dir.exists() and not force:
        raise InputError(f"{version_dir} exists; pass force=True to replace that model version", argument="force=True")
    if config_path.exists() and not force and config_path.read_text(encoding="utf-8") != text:
        raise InputError(
            f"{config_path} exists with a different configuration; pass force=True to replace it", argument="force=True"
        )


def _publish(
    model: onnx.ModelProto, text: str, repo: Path, options: TritonOptions, version_dir: Path, config_path: Path
) -> list[str]:
    """Stage the version folder and the config beside the model folder, then rename them into place; return what was
    replaced. On any failure the previous version is put back and nothing staged is left behind."""
    model_dir = version_dir.parent
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"repo {repo}: cannot create it ({exc.strerror})", argument="repo") from exc
    replaced: list[str] = []
    # a hidden sibling (same file system, so the renames are atomic); mkdir honours the umask, unlike mkdtemp's 0700
    staging = repo / f".{options.name}.{secrets.token_hex(6)}.tmp"
    try:
        staging.mkdir()
        staged_version = staging / str(options.version)
        staged_version.mkdir()
        _serialize_model(model, staged_version)
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        if not model_dir.exists():
            # a new model: one rename publishes config and version together
            os.rename(staging, model_dir)
        else:
            old_version = staging / "replaced-version"
            if version_dir.exists():
                os.rename(version_dir, old_version)
                replaced.append(str(version_dir))
            try:
                os.rename(staged_version, version_dir)
            except OSError:
                if old_version.exists():
                    os.rename(old_version, version_dir)  # put the previous version back
                raise
            if config_path.exists() and config_path.read_text(encoding="utf-8") != text:
                replaced.append(str(config_path))
            os.replace(staging / "config.pbtxt", config_path)
    except OSError as exc:
        raise InputError(f"cannot write the model repository under {repo}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return replaced


def write_triton_repository(
    onnx_path: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    *,
    name: str | None = None,
    max_batch_size: int | None = None,
    instances: int = 1,
    gpu: bool = False,
    dynamic_batching: bool | None = None,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int | None = None,
    tensorrt: bool = False,
    tensorrt_precision: str | None = None,
    version: int = 1,
    force: bool = False,
    use_protobuf: bool | None = None,
) -> TritonRepository:
    """Write ``repo/<name>/<version>/model.onnx`` and ``repo/<name>/config.pbtxt`` for Triton's onnxruntime backend.

    Args:
        onnx_path: the model (loaded with :func:`lambda_export.io.load_onnx`: external data must stay in its
            folder).
        repo: the model repository folder (created if missing).
        name: the Triton model name (default: the file name without ``.onnx``).
        force: replace an existing version folder, and a ``config.pbtxt`` that differs.
        use_protobuf: render through tritonclient's protobuf (True), directly (False), or whichever is available.
        Other arguments: see :class:`TritonOptions` and ``lambda-export triton --help``.

    Raises:
        InputError: unreadable model, options that contradict it, or an existing version without ``force``.
    """
    from lambda_export.io import load_onnx

    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    options = TritonOptions(
        name=name if name is not None else onnx_path.stem,
        max_batch_size=max_batch_size,
        instances=instances,
        gpu=gpu,
        dynamic_batching=dynamic_batching,
        preferred_batch_sizes=tuple(preferred_batch_sizes),
        max_queue_delay_us=max_queue_delay_us,
        tensorrt=tensorrt,
        tensorrt_precision=tensorrt_precision,
        version=version,
    )
    config = build_model_config(model, options)
    text = render_config(config, use_protobuf)

    repo = Path(repo)
    model_dir = repo / options.name
    version_dir = model_dir / str(options.version)
    config_path = model_dir / "config.pbtxt"
    _check_destination(repo, version_dir, config_path, text, force)
    replaced = _publish(model, text, repo, options, version_dir, config_path)
    return TritonRepository(
        repo=repo,
        name=options.name,
        version=options.version,
        model_dir=model_dir,
        model_path=version_dir / "model.onnx",
        config_path=config_path,
        config=config,
        text=text,
        max_batch_size=config["max_batch_size"],
        replaced=replaced,
    )
