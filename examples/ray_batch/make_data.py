"""Generate a folder of ``.npy`` input shards for an ONNX model (test data for ``batch_infer.py``).

    python examples/ray_batch/make_data.py --model demo_output/demo_model.onnx --out data/inputs \
        --samples 3000 --shards 4

Each shard ``part-00000.npy`` ... holds a slice ``[n, *input_shape]`` of the model's single input in its dtype
(uniform in [0, 1) for floats, small integers otherwise). Dynamic dimensions other than the batch need ``--dim``.
The shards are what ``batch_infer.py --inputs`` reads: one ``.npy`` per file, rows = samples.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def model_input(model_path: str | Path, dims: Sequence[int] = ()) -> tuple[str, tuple[int, ...], np.dtype]:
    """(name, per-sample shape, dtype) of the model's only input; ``dims`` fills dynamic non-batch dimensions."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"{model_path}: {len(inputs)} inputs; .npy shards carry one input per sample")
    info = inputs[0]
    fill = list(dims)
    shape = []
    for dim in info.shape[1:]:
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif fill:
            shape.append(fill.pop(0))
        else:
            raise ValueError(f"{model_path}: input {info.name} {info.shape} has a dynamic dim; pass --dim")
    if info.type not in ORT_TO_NUMPY:
        raise ValueError(f"{model_path}: input type {info.type} is not supported here")
    return info.name, tuple(shape), np.dtype(ORT_TO_NUMPY[info.type])


def make_shards(
    out_dir: str | Path,
    samples: int,
    shards: int,
    shape: Sequence[int],
    dtype: np.dtype | type = np.float32,
    seed: int = 0,
) -> list[Path]:
    """Write ``samples`` random samples of ``shape`` into ``shards`` files ``part-NNNNN.npy`` (sizes differ by ≤ 1)."""
    if samples < 1 or shards < 1 or shards > samples:
        raise ValueError(f"need 1 ≤ shards ({shards}) ≤ samples ({samples})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    paths = []
    for index, rows in enumerate(np.array_split(np.arange(samples), shards)):
        size = (len(rows), *shape)
        if np.issubdtype(dtype, np.floating):
            data = rng.random(size, dtype=np.float32).astype(dtype)
        elif dtype == np.bool_:
            data = rng.random(size) < 0.5
        else:
            data = rng.integers(0, 100, size=size).astype(dtype)
        path = out / f"part-{index:05d}.npy"
        np.save(path, data, allow_pickle=False)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the .onnx model whose input to generate")
    parser.add_argument("--out", required=True, help="folder for the .npy shards (created)")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, action="append", default=[], help="size of a dynamic non-batch dim")
    args = parser.parse_args(argv)
    try:
        name, shape, dtype = model_input(args.model, args.dim)
        paths = make_shards(args.out, args.samples, args.shards, shape, dtype, args.seed)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.samples} samples of {name} {list(shape)} {dtype} in {len(paths)} shards under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
