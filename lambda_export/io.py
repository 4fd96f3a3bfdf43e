"""Files in and out: safe ONNX loading, atomic writes of models, reports and other text. The one place where a model
becomes bytes or a file (``tests/io/test_one_home.py`` keeps it so):

* :func:`model_bytes`: a model as ``bytes`` (an ONNX Runtime session, a hash), with one serialized copy of it in
  memory, not the several of ``SerializeToString()``;
* :func:`write_model_file` / :func:`save_model_atomic`: a model as a file, with its weights as ONNX external data
  beside it when :func:`too_large_for_protobuf` says one protobuf message cannot hold it (the one threshold);
* :func:`load_onnx` reads an ``.onnx`` file; external data (tensors stored beside the model) is resolved only inside
  the model's own folder: a location that is absolute or climbs out with ``..`` is refused, so a crafted model cannot
  make the tool read arbitrary files.
* :func:`save_model_atomic`, :func:`write_text_atomic` write through a temporary file in the same folder and a rename,
  so a reader never sees half a file and an interrupted write leaves nothing behind. The result gets the mode of the
  file it replaces, or the umask's default (``mkstemp`` alone would leave 0600).
* :func:`check_output_writable` fails before slow work when the output folder cannot take a new file.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper

from lambda_export.errors import InputError
from lambda_export.lean import serialize, serialized_size, write_model

__all__ = [
    "PROTOBUF_LIMIT",
    "check_output_writable",
    "load_onnx",
    "model_bytes",
    "os_reason",
    "save_model_atomic",
    "too_large_for_protobuf",
    "write_model_file",
    "write_text_atomic",
]

PROTOBUF_LIMIT = 2 * 1024**3 - 1024**2  # leave headroom below protobuf's 2 GiB message limit


def too_large_for_protobuf(model: onnx.ModelProto) -> bool:
    """True when ``model`` cannot be serialised as one protobuf message (it needs external data).

    The size is computed without encoding the weights (``ByteSize()`` would, at a peak of several times the model).
    """
    return serialized_size(model) >= PROTOBUF_LIMIT


def model_bytes(model: onnx.ModelProto) -> bytes:
    """``model.SerializeToString()``, with one serialized copy of the model in memory at a time (not five).

    Raises:
        InputError: the model is too large for one protobuf message (:func:`too_large_for_protobuf`): write it with
            :func:`write_model_file` (its weights go to external data) and hand over the path instead.
    """
    if too_large_for_protobuf(model):
        raise InputError("the ONNX model is larger than 2 GiB: it can only be written as a file with external data")
    return serialize(model)


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model file, checking it parses and that external data stays inside its folder.

    Raises:
        InputError: missing/empty/unparsable file, or external data outside the model's folder or missing.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an .onnx file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise InputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path}: not a valid ONNX model (empty graph)")
    folder = path.resolve().parent
    uses_external = False
    for tensor in _all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        uses_external = True
        try:
            with warnings.catch_warnings():  # unknown keys are ignored with a (multi-line) warning
                warnings.simplefilter("ignore")
                info = external_data_helper.ExternalDataInfo(tensor)  # int() of offset/length: ValueError
            location = info.location
            target = (folder / location).resolve()  # an embedded NUL: ValueError
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: tensor {tensor.name!r} has an invalid external data entry: {exc}") from exc
        if os.path.isabs(location) or (target != folder and folder not in target.parents):
            raise InputError(
                f"{path}: tensor {tensor.name!r} points its external data outside the model's folder "
                f"({location!r}); refusing to read it"
            )
        if not target.is_file():
            raise InputError(f"{path}: external data file {location!r} for tensor {tensor.name!r} is missing")
        # a huge declared length would make the reader allocate it before reading (MemoryError)
        size = target.stat().st_size
        offset = int(info.offset or 0)
        length = size - offset if info.length is None else int(info.length)
        if offset < 0 or length < 0 or offset + length > size:
            raise InputError(
                f"{path}: external data of tensor {tensor.name!r} (offset {offset}, length {length}) lies outside "
                f"{location!r} ({size} bytes)"
            )
    if uses_external:
        try:
            external_data_helper.load_external_data_for_model(model, str(folder))
        except Exception as exc:
            raise InputError(f"{path}: cannot read external data: {exc}") from exc
    return model


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``model``: initializers and tensor attributes, in all subgraphs."""
    from lambda_export.graph import iter_graphs

    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def os_reason(exc: OSError) -> str:
    """A short human reason for a failed write ("permission denied", "no space left on device", ...)."""
    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENOTDIR: "not a folder",
        errno.ENOENT: "the folder does not accept new files",
    }
    return reasons.get(exc.errno or 0, exc.strerror or str(exc))


def check_output_writable(output: Path) -> None:
    """Fail before the (slow) conversion when the output folder cannot take a new file.

    Raises:
        InputError: the folder is missing, not a folder, or refuses a new file (the reason is named).
    """
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.exists():
        raise InputError(f"{output}: the output folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{output}: cannot write the output: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{output}: cannot write to the output folder {folder}: {os_reason(exc)}") from exc
    os.close(fd)
    os.unlink(probe)


def _output_folder(path: Path) -> Path:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(
            f"{folder}: output folder does not exist" if not folder.exists() else f"{folder}: not a folder"
        )
    return folder


def _new_file_mode(path: Path) -> int:
    """The mode a replacement of ``path`` gets: the replaced file's, or the umask's default for a new file."""
    mask = os.umask(0o077)
    os.umask(mask)
    return stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~mask


def _write_temporary(folder: Path, name: str, write: Callable[[object], None], mode: int) -> str:
    """Create a temporary file in ``folder``, let ``write(handle)`` fill it, flush it to disk; return its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_text_atomic(path: str | os.PathLike[str], text: str, *, what: str = "file") -> str:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename; return the path.

    Raises:
        InputError: the folder is missing or not writable, or the disk is full (``what`` names the file in the
            message, e.g. "the report").
    """
    path = Path(path)
    try:
        folder = _output_folder(path)
    except InputError as exc:
        raise InputError(f"{path}: the folder {path.parent} does not exist") from exc
    data = text.encode("utf-8")
    tmp = None
    try:
        tmp = _write_temporary(folder, path.name, lambda handle: handle.write(data), _new_file_mode(path))
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise InputError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return str(path)


def save_model_atomic(
    model: onnx.ModelProto, path: str | os.PathLike[str], *, overwrite: bool = False, external_data: bool | None = None
) -> str:
    """Write ``model`` to ``path`` via a temporary file in the same folder and a rename.

    Models too large for one protobuf (> 2 GiB), or any model with ``external_data=True``, are saved with ONNX external
    data next to the file (``<name>.data``, tensors of 1 KiB and more), also written to a temporary name first. The
    data file is renamed into place before the model file; if that last rename fails, a data file this call created is
    removed again. Nothing is left behind under temporary names. Returns the final path. The model is written tensor
    by tensor (:func:`lambda_export.lean.write_model`: the same bytes as protobuf's, without a serialized copy of it
    in memory); ``model`` is not modified.

    Raises:
        InputError: the file exists and ``overwrite`` is False, or the folder is not writable / the disk is full.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass overwrite=True to replace it", argument="overwrite=True")
    if path.exists() and not path.is_file():  # a rename would replace a device node, FIFO, ... (/dev/full as root)
        raise InputError(f"{path} exists and is not a regular file; refusing to replace it")
    folder = _output_folder(path)
    mode = _new_file_mode(path)
    if external_data is None:
        external_data = too_large_for_protobuf(model)
    data_path = folder / (path.name + ".data")
    tmp_model = tmp_data = created_data = None
    try:
        if external_data:
            fd, tmp_data = tempfile.mkstemp(prefix=f".{data_path.name}.", suffix=".tmp", dir=folder)
            os.close(fd)

            def write(handle: object) -> None:
                with open(tmp_data, "wb") as data:  # type: ignore[arg-type]
                    write_model(model, handle, data=data, location=data_path.name, threshold=1024)  # type: ignore[arg-type]
                    data.flush()
                    os.fsync(data.fileno())

            tmp_model = _write_temporary(folder, path.name, write, mode)
        else:
            tmp_model = _write_temporary(folder, path.name, lambda handle: write_model(model, handle), mode)  # type: ignore[arg-type]
        if tmp_data is not None:
            created_data = None if data_path.exists() else data_path
            os.replace(tmp_data, data_path)
            tmp_data = None
        os.replace(tmp_model, path)
        tmp_model = created_data = None
    except PermissionError as exc:
        raise InputError(f"{folder}: cannot write the output here (permission denied)") from exc
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        for leftover in (tmp_model, tmp_data, created_data):
            if leftover and os.path.exists(leftover):
                os.unlink(leftover)
    return str(path)


def write_model_file(model: onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool | None = None) -> int:
    """Write ``model`` to ``path``, replacing a file there: :func:`save_model_atomic` with ``overwrite=True``.

    For files the tool owns (a benchmark's exports, a temporary file for ONNX Runtime, a staged Triton version).
    ``external_data`` as in :func:`save_model_atomic` (None: when the model is too large for protobuf). Returns the
    bytes on disk: the model file and, when one was written, its ``<name>.data`` file.

    Raises:
        InputError: the folder is missing or not writable, or the disk is full.
    """
    if external_data is None:
        external_data = too_large_for_protobuf(model)
    path = Path(save_model_atomic(model, path, overwrite=True, external_data=external_data))
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if external_data else 0)
