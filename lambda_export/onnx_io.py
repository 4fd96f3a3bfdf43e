"""Reading ``.onnx`` files safely (for ``verify`` and ``inspect``).

External data (tensors stored beside the model) is resolved only inside the model's own folder: a location that is
absolute or climbs out with ``..`` is refused, so a crafted model cannot make the tool read arbitrary files.
"""

from __future__ import annotations

import os
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
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        target = (folder / location).resolve()
        if os.path.isabs(location) or (target != folder and folder not in target.parents):
            raise InputError(
                f"{path}: tensor {tensor.name!r} points its external data outside the model's folder "
                f"({location!r}); refusing to read it"
            )
        if not target.is_file():
            raise InputError(f"{path}: external data file {location!r} for tensor {tensor.name!r} is missing")
    if uses_external:
        try:
            external_data_helper.load_external_data_for_model(model, str(folder))
        except Exception as exc:
            raise InputError(f"{path}: cannot read external data: {exc}") from exc
    return model
