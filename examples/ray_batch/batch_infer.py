"""Offline batch inference of an exported ONNX model with Ray Data and an ONNX Runtime actor pool.

    python examples/ray_batch/batch_infer.py --model M.onnx --inputs DIR --output DIR \
        [--address auto|ray://HEAD:10001] [--actors N] [--batch-size B] [--threads T] [--gpu] [--overwrite]

Pipeline (streaming; nothing is collected on the driver):

1. ``ray.data.read_binary_files(DIR, file_extensions=["npy"])``: one row per ``.npy`` shard;
2. :func:`decode_shards` (Ray tasks): each shard → rows ``sample_id`` (``"<shard>:<row>"``), ``shard``, ``row`` and
   the ``input`` array, in blocks of at most ``--block-rows`` rows;
3. :class:`OnnxPredictor` (``ActorPoolStrategy``: ``--actors`` actors, ``--threads`` CPUs each): one ONNX Runtime session
   per actor, created once from the model bytes that the driver put in the object store;
   ``map_batches(batch_size=B)`` feeds it batches of B samples;
4. ``write_parquet(OUTPUT)``: columns ``sample_id``, ``shard``, ``row`` and one column per model output (a fixed-size
   list per sample, e.g. 10 floats for ``predictions``).

Without ``--address`` Ray starts locally (``--num-cpus``, no dashboard); ``--address auto`` joins the cluster this
machine belongs to, ``--address ray://HEAD:10001`` connects through Ray Client. On a cluster, ``--inputs`` and
``--output`` must be paths every node can read/write (a shared file system, ``s3://...``, ``gs://...``); the model
file only needs to be readable by the driver. See README.md for sizing.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before ray is imported: no usage report leaves the machine

import numpy as np

SAMPLE_ID, SHARD, ROW, INPUT = "sample_id", "shard", "row", "input"
ID_COLUMNS = (SAMPLE_ID, SHARD, ROW)
IO_CPUS = 0.25  # CPUs reserved by a read or write task (I/O bound; the actors do the compute)


def shard_name(path: str, root: str) -> str:
    """``path`` relative to the ``--inputs`` folder (its file name when it is not under it)."""
    root_norm = root.split("://", 1)[-1].rstrip("/")
    path_norm = path.split("://", 1)[-1]
    if root_norm and path_norm.startswith(root_norm + "/"):
        return path_norm[len(root_norm) + 1 :]
    return os.path.basename(path_norm)


def decode_shards(batch: dict[str, np.ndarray], root: str, block_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """``.npy`` file contents → sample rows with ids, yielded in blocks of at most ``block_rows`` rows."""
    for raw, path in zip(batch["bytes"], batch["path"], strict=True):
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        if array.ndim == 0:
            raise ValueError(f"{path}: a 0-d array; shards hold samples along the first axis")
        shard = shard_name(str(path), root)
        for start in range(0, len(array), block_rows):
            chunk = array[start : start + block_rows]
            rows = np.arange(start, start + len(chunk), dtype=np.int64)
            yield {
                SAMPLE_ID: np.array([f"{shard}:{row}" for row in rows]),
                SHARD: np.full(len(chunk), shard),
                ROW: rows,
                INPUT: chunk,
            }


def to_arrow(values: np.ndarray) -> Any:
    """A ``[n, d1, d2, ...]`` array → an Arrow column of n nested fixed-size lists (plain Parquet, no Ray types)."""
    import pyarrow as pa

    column = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def from_arrow(column: Any) -> np.ndarray:
    """Inverse of :func:`to_arrow` for a (chunked) Arrow column: ``[n, d1, ...]`` array."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    shape = [len(column)]
    while pa.types.is_fixed_size_list(column.type):
        shape.append(column.type.list_size)
        column = column.flatten()
    return column.to_numpy(zero_copy_only=False).reshape(shape)


class OnnxPredictor:
    """Ray Data callable class: one ONNX Runtime session per actor, created once, reused for every batch."""

    def __init__(self, model: Any, threads: int = 1, gpu: bool = False) -> None:
        import onnxruntime as ort
        import ray

        if isinstance(model, ray.ObjectRef):  # the driver ships the model bytes through the object store
            model = ray.get(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # = the CPUs Ray reserved for this actor
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if gpu:
            providers = ["CUDAExecutionProvider", *providers]
        self.session = ort.InferenceSession(model, options, providers=providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"the model has {len(inputs)} inputs; .npy shards carry exactly one")
        self.input_name = inputs[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        x = np.ascontiguousarray(batch[INPUT])
        results = self.session.run(self.output_names, {self.input_name: x})
        columns = {name: pa.array(batch[name]) for name in ID_COLUMNS}
        for name, values in zip(self.output_names, results, strict=True):
            if len(values) != len(x):
                raise ValueError(f"output {name!r} has {len(values)} rows for {len(x)} samples (not batch-major)")
            columns[name] = to_arrow(values)
        return pa.table(columns)


def actor_pool(actors: int | tuple[int, int]) -> Any:
    """``ActorPoolStrategy``: fixed size N, or autoscaling between (min, max). (Ray ≥ 2.51 wants ``compute=`` with
    it; the older ``concurrency=`` argument is deprecated there.)"""
    from ray.data import ActorPoolStrategy

    if isinstance(actors, tuple):
        low, high = actors
        if not 1 <= low <= high:
            raise ValueError(f"--actors {low}-{high}: need 1 ≤ min ≤ max")
        return ActorPoolStrategy(min_size=low, max_size=high)
    if actors < 1:
        raise ValueError(f"--actors {actors}: need at least one actor")
    return ActorPoolStrategy(size=actors)


def build_dataset(
    inputs: str | Sequence[str],
    model: Any,
    *,
    actors: int | tuple[int, int] = 2,
    batch_size: int = 256,
    threads: int = 1,
    cpus_per_actor: float | None = None,
    gpu: bool = False,
    block_rows: int = 4096,
) -> Any:
    """The lazy Ray Dataset: read shards → decode with ids → ONNX Runtime actor pool (nothing runs yet).

    Args:
        inputs: a folder (or list of files/folders) of ``.npy`` shards, local or ``s3://``/``gs://``.
        model: ``ray.put(model_bytes)``, the bytes, or a path readable on every node.
        actors: pool size, or ``(min, max)`` to let Ray autoscale the pool.
        threads: ONNX Runtime intra-op threads per actor.
        cpus_per_actor: CPUs Ray reserves per actor (default ``threads``); reading, decoding and writing reserve
            :data:`IO_CPUS` each, so the pool must leave that much free or the job waits forever.
    """
    import ray

    root = inputs if isinstance(inputs, str) else ""
    files = ray.data.read_binary_files(inputs, include_paths=True, file_extensions=["npy"], num_cpus=IO_CPUS)
    rows = files.map_batches(
        decode_shards, batch_size=1, fn_kwargs={"root": root, "block_rows": block_rows}, num_cpus=IO_CPUS
    )
    return rows.map_batches(
        OnnxPredictor,
        fn_constructor_args=(model,),
        fn_constructor_kwargs={"threads": threads, "gpu": gpu},
        batch_size=batch_size,
        batch_format="numpy",
        compute=actor_pool(actors),
        num_cpus=threads if cpus_per_actor is None else cpus_per_actor,
        num_gpus=1 if gpu else 0,
    )


def connect(address: str | None, num_cpus: int | None) -> bool:
    """Join a cluster (``address``) or start Ray locally; True when this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def count_rows(output: str) -> int | None:
    """Rows written under ``output`` (Parquet footers only), or None when pyarrow cannot list it from here."""
    try:
        import pyarrow.dataset as pads

        return int(pads.dataset(output, format="parquet").count_rows())
    except Exception:
        return None


def run(
    model_path: str | Path,
    inputs: str,
    output: str,
    *,
    address: str | None = None,
    actors: int | tuple[int, int] = 2,
    batch_size: int = 256,
    threads: int = 1,
    cpus_per_actor: float | None = None,
    gpu: bool = False,
    num_cpus: int | None = None,
    overwrite: bool = False,
    block_rows: int = 4096,
) -> dict[str, Any]:
    """Run the whole job; returns ``samples``, ``seconds`` (read → predictions on disk) and ``samples_per_s``."""
    import ray
    from ray import cloudpickle

    if not overwrite and "://" not in output and Path(output).is_dir() and any(Path(output).iterdir()):
        raise ValueError(f"{output} already holds files; pass --overwrite to replace them")  # before Ray starts
    model_bytes = Path(model_path).read_bytes()
    started_here = connect(address, num_cpus)
    # imported as a module (user code, tests): ship these functions and classes by value, workers can't import us
    module = sys.modules.get(__name__) if __name__ != "__main__" else None
    if module is not None:
        cloudpickle.register_pickle_by_value(module)
    try:
        check_resources(actors, threads if cpus_per_actor is None else cpus_per_actor, local=address is None)
        dataset = build_dataset(
            inputs,
            ray.put(model_bytes),
            actors=actors,
            batch_size=batch_size,
            threads=threads,
            cpus_per_actor=cpus_per_actor,
            gpu=gpu,
            block_rows=block_rows,
        )
        start = time.perf_counter()
        dataset.write_parquet(
            output, mode="overwrite" if overwrite else "create", ray_remote_args={"num_cpus": IO_CPUS}
        )
        seconds = time.perf_counter() - start
    finally:
        if module is not None:
            cloudpickle.unregister_pickle_by_value(module)
        if started_here:
            ray.shutdown()
    samples = count_rows(output)
    return {
        "output": output,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds if samples else None,
        "actors": actors,
        "batch_size": batch_size,
        "threads": threads,
    }


def check_resources(actors: int | tuple[int, int], cpus_per_actor: float, *, local: bool) -> None:
    """Refuse a pool that takes every CPU: reads and writes could then never be scheduled (Ray would wait forever).

    On a cluster the check uses the CPUs present now, and only warns (an autoscaler may add nodes).
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 0.0))
    largest = actors[1] if isinstance(actors, tuple) else actors
    needed = largest * cpus_per_actor + 2 * IO_CPUS
    if needed <= total + 1e-9:
        return
    message = (
        f"{largest} actors × {cpus_per_actor:g} CPUs + {2 * IO_CPUS:g} for reading/writing = {needed:g} CPUs, "
        f"but Ray has {total:g}: use fewer --actors, a smaller --cpus-per-actor, or more --num-cpus"
    )
    if local:
        raise ValueError(message)
    print(f"warning: {message} (waiting for the autoscaler, if any)", file=sys.stderr)


def _actors(text: str) -> int | tuple[int, int]:
    if "-" in text or "," in text:
        low, high = (int(v) for v in text.replace(",", "-").split("-", 1))
        return (low, high)
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the exported .onnx file (read by the driver)")
    parser.add_argument("--inputs", required=True, help="folder of .npy shards (shared path or s3://, gs://)")
    parser.add_argument("--output", required=True, help="folder for the Parquet predictions")
    parser.add_argument("--address", help="auto, ray://HEAD:10001, or HEAD:6379 (default: start Ray locally)")
    parser.add_argument("--actors", type=_actors, default=2, help="ONNX Runtime actors: N, or MIN-MAX (default 2)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per ONNX Runtime call (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads = CPUs per actor (default 1)")
    parser.add_argument(
        "--cpus-per-actor", type=float, help="CPUs Ray reserves per actor (default: --threads); see README"
    )
    parser.add_argument("--gpu", action="store_true", help="one GPU per actor, CUDA provider (onnxruntime-gpu)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all); ignored with --address")
    parser.add_argument("--block-rows", type=int, default=4096, help="rows per block when shards are split")
    parser.add_argument("--overwrite", action="store_true", help="replace predictions already in --output")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.threads < 1 or args.block_rows < 1:
        parser.error("--batch-size, --threads and --block-rows must be positive")
    try:
        stats = run(
            args.model,
            args.inputs,
            args.output,
            address=args.address,
            actors=args.actors,
            batch_size=args.batch_size,
            threads=args.threads,
            cpus_per_actor=args.cpus_per_actor,
            gpu=args.gpu,
            num_cpus=args.num_cpus,
            overwrite=args.overwrite,
            block_rows=args.block_rows,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rate = f"{stats['samples_per_s']:.0f} samples/s" if stats["samples_per_s"] else "rate unknown"
    print(f"wrote {stats['samples']} predictions to {stats['output']} in {stats['seconds']:.2f} s ({rate})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
