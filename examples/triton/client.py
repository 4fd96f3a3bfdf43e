"""Send the arrays of an ``.npz`` file to a model served by Triton Inference Server and print or check the outputs.

    python examples/triton/client.py --url localhost:8001 --model demo --inputs inputs.npz \
        [--reference reference.npz | --onnx model.onnx] [--save outputs.npz]

The ``.npz`` keys are the model's input names (``lambda-export`` writes them that way). Requests go over gRPC with
``tritonclient[grpc]``; inputs larger than the model's ``max_batch_size`` are split into several requests and the
outputs concatenated. With ``--reference`` (or ``--onnx``: the same inputs through ONNX Runtime on this machine) the
outputs are compared with ``|out − ref| ≤ atol + rtol·|ref|`` and the
exit code is 1 when they differ (0 otherwise, 2 for bad usage or an unreachable server).

Only :func:`main` talks to a server; :func:`build_infer_inputs` and :func:`split_batches` are plain functions (the
test suite checks them offline).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# numpy dtype → Triton wire datatype (tritonclient.utils.np_to_triton_dtype, kept here so the mapping is visible)
NP_TO_TRITON = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (no pickles), keyed by input name."""
    with np.load(path, allow_pickle=False) as data:
        return {name: np.asarray(data[name]) for name in data.files}


def check_against_metadata(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``arrays`` has exactly the model's inputs, with its datatypes and ranks.

    ``metadata`` is Triton's model metadata as JSON (``get_model_metadata(..., as_json=True)``): ``inputs`` is a list of
    ``{"name", "datatype", "shape"}`` where the shape includes the batch dim (-1) of a batching model.
    """
    expected = {item["name"]: item for item in metadata["inputs"]}
    if set(arrays) != set(expected):
        raise ValueError(f"the inputs file has {sorted(arrays)}, the model wants {sorted(expected)}")
    for name, item in expected.items():
        array = arrays[name]
        datatype = NP_TO_TRITON.get(array.dtype)
        if datatype != item["datatype"]:
            raise ValueError(f"input {name!r}: {array.dtype} ({datatype}) but the model wants {item['datatype']}")
        shape = [int(d) for d in item["shape"]]
        if len(shape) != array.ndim or any(d not in (-1, s) for d, s in zip(shape, array.shape, strict=True)):
            raise ValueError(f"input {name!r}: shape {list(array.shape)} does not fit the model's {shape}")


def build_infer_inputs(arrays: Mapping[str, np.ndarray]) -> list[Any]:
    """One ``tritonclient.grpc.InferInput`` per array, in the file's order, data attached (binary, no copy to JSON)."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, array in arrays.items():
        datatype = NP_TO_TRITON.get(array.dtype)
        if datatype is None:
            raise ValueError(f"input {name!r}: dtype {array.dtype} has no Triton datatype")
        array = np.ascontiguousarray(array)
        infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def split_batches(arrays: Mapping[str, np.ndarray], max_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of at most ``max_batch_size`` rows (all arrays split alike); the whole thing when the model doesn't batch."""
    if max_batch_size <= 0:
        yield dict(arrays)
        return
    sizes = {array.shape[0] for array in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs disagree on the batch size: { {k: v.shape for k, v in arrays.items()} }")
    total = sizes.pop()
    for start in range(0, total, max_batch_size):
        yield {name: array[start : start + max_batch_size] for name, array in arrays.items()}


def infer(
    client: Any, model: str, arrays: Mapping[str, np.ndarray], *, version: str = "", timeout_s: float | None = 60.0
) -> dict[str, np.ndarray]:
    """Run ``arrays`` through ``model`` on a connected ``tritonclient.grpc.InferenceServerClient``."""
    import tritonclient.grpc as grpcclient

    metadata = client.get_model_metadata(model, model_version=version, as_json=True)
    config = client.get_model_config(model, model_version=version, as_json=True)["config"]
    check_against_metadata(arrays, metadata)
    output_names = [item["name"] for item in metadata["outputs"]]
    max_batch_size = int(config.get("max_batch_size", 0))
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for chunk in split_batches(arrays, max_batch_size):
        result = client.infer(
            model,
            build_infer_inputs(chunk),
            model_version=version,
            outputs=[grpcclient.InferRequestedOutput(name) for name in output_names],
            client_timeout=timeout_s,
        )
        for name in output_names:
            pieces[name].append(result.as_numpy(name))
    if max_batch_size <= 0:
        return {name: parts[0] for name, parts in pieces.items()}
    return {name: np.concatenate(parts, axis=0) for name, parts in pieces.items()}


def compare(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], atol: float, rtol: float) -> bool:
    """Print one line per output and return True when all are within ``atol + rtol·|ref|``."""
    ok = True
    for name, expected in reference.items():
        got = outputs.get(name)
        if got is None or got.shape != expected.shape:
            print(f"{name}: missing or shape {None if got is None else got.shape} != {expected.shape}")
            ok = False
            continue
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        within = bool(np.all(diff <= atol + rtol * np.abs(expected.astype(np.float64))))
        print(f"{name}: max |diff| {diff.max():.3g} ({'ok' if within else 'DIFFERS'})")
        ok = ok and within
    return ok


def run_onnxruntime(onnx_path: str | Path, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same inputs through ONNX Runtime (CPU) in this process: the reference Triton's outputs should match."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(arrays)), strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC endpoint (default: localhost:8001)")
    parser.add_argument("--model", required=True, help="model name in the repository")
    parser.add_argument("--version", default="", help="model version (default: the server's latest)")
    parser.add_argument("--inputs", required=True, help=".npz whose keys are the model's input names")
    parser.add_argument("--reference", help=".npz of expected outputs (keys = output names)")
    parser.add_argument("--onnx", help="compare with this ONNX file run locally by onnxruntime")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--save", help="write the outputs to this .npz")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        arrays = load_inputs(args.inputs)
        client = grpcclient.InferenceServerClient(url=args.url)
        if not client.is_model_ready(args.model, args.version):
            print(f"error: model {args.model!r} is not ready on {args.url}", file=sys.stderr)
            return 2
        outputs = infer(client, args.model, arrays, version=args.version, timeout_s=args.timeout)
    except (OSError, ValueError, InferenceServerException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)}")
    if args.save:
        np.savez(args.save, **outputs)
    reference = load_inputs(args.reference) if args.reference else None
    if args.onnx:
        reference = run_onnxruntime(args.onnx, arrays)
    if reference is not None:
        return 0 if compare(outputs, reference, args.atol, args.rtol) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
