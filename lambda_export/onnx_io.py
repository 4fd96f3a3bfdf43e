"""Reading ``.onnx`` files safely (for ``verify`` and ``inspect``).

External data (tensors stored beside the model) is resolved only inside the model's own folder: a location that is
absolute or climbs out with ``..`` is refused, so a crafted model cannot make the tool read arbitrary files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx
from onnx import external_data_helper

from lambda_export.errors import InputError

__all__ = ["load_onnx"]


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
    for tensor in external_data_helper._get_all_tensors(model):
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
