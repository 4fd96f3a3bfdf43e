"""Timing one function against another on a shared machine: interleaved rounds, latency statistics, paired ratios.

A library service: ``lambda-export MODEL --quantize int8`` times its int8 model against the float32 one with it
(:mod:`lambda_export.quantization.speed`), ``lambda-export bench`` times ONNX Runtime against TensorFlow
(:mod:`lambda_export.bench.harness`, whose docstring describes the method in full), and
``benchmarks/timm_bench.py`` times five runtimes on timm's networks.

* :func:`measure_interleaved`: after warm-up, the runners take turns in rounds; each round runs every runner for a block
  of about ``block_s`` seconds, in an order that rotates every round, so that a change of load hits all of them.
* :class:`IsolatedRunners`: the same rounds, but each runner lives in a worker process of its own and the runners
  take turns with a pause (``settle_s``) between blocks. Runtimes in one process are not independent: their thread
  pools spin after each call and steal the cores from whoever runs next (measured on 2 cores, ``lambda_resnet26t``
  at batch 1: timm's ONNX file on ONNX Runtime took 44 ms interleaved with our file alone, 76 ms once TensorFlow and
  OpenVINO shared its process, and 39 ms in a process of its own), so a comparison of runtimes takes this one.
* :func:`latency_stats`: median, p90, mean and min of the timed runs, in milliseconds.
* :func:`paired_ratio`: the ratio of two runners round by round (block median over block median), summarised by the
  median and p10/p90 of those ratios, which cancels most of the drift of a machine shared with other work.

NumPy only: nothing here imports ONNX, ONNX Runtime or TensorFlow (the workers import what their factory imports).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["IsolatedRunners", "WorkerRunner", "latency_stats", "measure_interleaved", "paired_ratio"]

# a block timer: (runs, discard_first) -> [(wall seconds, CPU seconds of the process)] for each timed run
BlockTimer = Callable[[int, bool], list[tuple[float, float]]]


def latency_stats(samples: Sequence[float]) -> dict[str, float | int | None]:
    """Median, p90, mean and min in milliseconds (4 decimals) and the count of ``samples`` (seconds)."""
    if not samples:
        return {"median_ms": None, "p90_ms": None, "mean_ms": None, "min_ms": None, "n": 0}
    array = np.asarray(samples) * 1e3
    return {
        "median_ms": round(float(np.median(array)), 4),
        "p90_ms": round(float(np.percentile(array, 90)), 4),
        "mean_ms": round(float(array.mean()), 4),
        "min_ms": round(float(array.min()), 4),
        "n": len(samples),
    }


def _time_runs(fn: Callable[[], Any], runs: int, discard: bool) -> list[tuple[float, float]]:
    """``runs`` timed calls of ``fn`` (after one untimed call when ``discard``): wall and process CPU seconds."""
    if discard:
        fn()
    timed = []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        timed.append((time.perf_counter() - wall, time.process_time() - cpu))
    return timed


def _interleave(
    timers: dict[str, BlockTimer],
    *,
    budget_s: float,
    min_rounds: int,
    max_rounds: int,
    block_s: float,
    warmup: int,
    max_block: int,
    settle_s: float,
) -> dict[str, Any]:
    """The rounds behind :func:`measure_interleaved` and :meth:`IsolatedRunners.measure` (see the module docstring)."""
    first_call: dict[str, float] = {}
    estimate: dict[str, float] = {}
    for name, timer in timers.items():
        first_call[name] = timer(1, False)[0][0]
        last = first_call[name]
        if warmup > 1:
            last = timer(warmup - 1, False)[-1][0]
        estimate[name] = max(last, 1e-6)
        time.sleep(settle_s)
    blocks = {name: int(min(max_block, max(1, round(block_s / estimate[name])))) for name in timers}
    discard = {name: estimate[name] < 0.05 for name in timers}
    samples: dict[str, list[float]] = {name: [] for name in timers}
    cpu_samples: dict[str, list[float]] = {name: [] for name in timers}
    rounds: list[dict[str, float]] = []
    names = list(timers)
    started_all = time.perf_counter()
    while len(rounds) < max_rounds:
        if len(rounds) >= min_rounds and time.perf_counter() - started_all >= budget_s:
            break
        offset = len(rounds) % len(names)
        order = names[offset:] + names[:offset]
        medians: dict[str, float] = {}
        for name in order:
            timed = timers[name](blocks[name], discard[name])
            samples[name].extend(wall for wall, _ in timed)
            cpu_samples[name].extend(cpu for _, cpu in timed)
            medians[name] = statistics.median(wall for wall, _ in timed)
            if settle_s:
                time.sleep(settle_s)
        rounds.append(medians)
    return {
        "samples": samples,
        "cpu_samples": cpu_samples,
        "rounds": rounds,
        "first_call_s": {name: round(value, 4) for name, value in first_call.items()},
        "block_runs": blocks,
        "measure_s": round(time.perf_counter() - started_all, 2),
    }


def measure_interleaved(
    runners: dict[str, Callable[[], Any]],
    *,
    budget_s: float,
    min_rounds: int = 5,
    max_rounds: int = 200,
    block_s: float = 0.05,
    warmup: int = 2,
    max_block: int = 25,
    settle_s: float = 0.0,
) -> dict[str, Any]:
    """Run ``runners`` (in this process) in interleaved rounds (see the module docstring); return samples (wall
    seconds), ``cpu_samples`` (CPU seconds of this process per run), per-round block medians, first-call times and the
    block sizes.

    The first run of a block is untimed when runs are short (under 50 ms), so that a runner does not pay for the
    previous one's spinning threads or evicted caches. For runners of different runtimes use
    :class:`IsolatedRunners`: in one process their thread pools interfere.
    """
    timers = {name: (lambda runs, discard, fn=fn: _time_runs(fn, runs, discard)) for name, fn in runners.items()}
    return _interleave(
        timers,
        budget_s=budget_s,
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        block_s=block_s,
        warmup=warmup,
        max_block=max_block,
        settle_s=settle_s,
    )


@dataclass(frozen=True)
class WorkerRunner:
    """How to build one runner in a worker process.

    ``factory(*args)`` runs in the worker and returns the function to time, which takes the current inputs (the
    value given to :meth:`IsolatedRunners.feed`) and returns host arrays. ``factory`` must be importable by name (a
    module-level function: workers are started with ``spawn``, so nothing of the parent's state comes with them).
    """

    factory: Callable[..., Callable[[Any], Any]]
    args: tuple[Any, ...] = ()


def _worker_main(connection: Any, factory: Callable[..., Callable[[Any], Any]], args: tuple[Any, ...]) -> None:
    """A worker's loop: build the runner, then answer ``feed`` / ``output`` / ``time`` / ``stop`` commands."""
    try:
        run = factory(*args)
    except BaseException as exc:  # the parent records it and goes on without this runner
        connection.send(("error", f"{type(exc).__name__}: {exc}"[:500]))
        return
    connection.send(("ok", None))
    inputs: Any = None
    while True:
        command, value = connection.recv()
        if command == "stop":
            return
        try:
            if command == "feed":
                inputs, answer = value, None
            elif command == "output":
                answer = run(inputs)
            else:  # "time": (runs, discard)
                answer = _time_runs(lambda x=inputs: run(x), *value)
        except BaseException as exc:
            connection.send(("error", f"{type(exc).__name__}: {exc}"[:500]))
            continue
        connection.send(("ok", answer))


class WorkerError(RuntimeError):
    """A worker's runner failed (the message is its one-line error)."""


class IsolatedRunners:
    """Runners that each live in a worker process of their own (see the module docstring for why).

    Use as a context manager::

        with IsolatedRunners({"ours": WorkerRunner(ort_runner, (path, 2)), ...}) as pool:
            pool.feed({"ours": [x], ...})
            outputs = {name: pool.output(name) for name in pool.names}
            measured = pool.measure(budget_s=20, min_rounds=8, max_rounds=60, block_s=0.15, warmup=2)

    A runner whose factory fails is left out: :attr:`errors` maps its name to the one-line error and :attr:`names`
    lists the runners that started.
    """

    def __init__(self, runners: dict[str, WorkerRunner], *, start_timeout_s: float = 900.0) -> None:
        self.errors: dict[str, str] = {}
        self._workers: dict[str, tuple[Any, Any]] = {}
        context = multiprocessing.get_context("spawn")
        for name, spec in runners.items():
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child, spec.factory, spec.args), daemon=True)
            process.start()
            child.close()
            self._workers[name] = (process, parent)
        # the workers build their runners in parallel; collect them in order
        for name in list(self._workers):
            process, parent = self._workers[name]
            if not parent.poll(start_timeout_s):
                self._drop(name, f"TimeoutError: the worker did not start within {start_timeout_s:.0f} s")
                continue
            try:
                status, value = parent.recv()
            except EOFError:
                self._drop(name, f"WorkerError: the worker exited with code {process.exitcode} while starting")
                continue
            if status != "ok":
                self._drop(name, value)

    @property
    def names(self) -> list[str]:
        """The runners that started, in the order given."""
        return list(self._workers)

    def _drop(self, name: str, error: str) -> None:
        process, parent = self._workers.pop(name)
        self.errors[name] = error
        parent.close()
        process.join(timeout=5)
        if process.is_alive():
            process.kill()

    def _ask(self, name: str, command: str, value: Any = None) -> Any:
        process, parent = self._workers[name]
        parent.send((command, value))
        try:
            status, answer = parent.recv()
        except EOFError:
            process.join(timeout=5)
            raise WorkerError(f"{name}: the worker exited with code {process.exitcode}") from None
        if status != "ok":
            raise WorkerError(f"{name}: {answer}")
        return answer

    def feed(self, inputs: dict[str, Any]) -> None:
        """Give each named runner its inputs (what its function is called with from now on)."""
        for name, value in inputs.items():
            if name in self._workers:
                self._ask(name, "feed", value)

    def output(self, name: str) -> Any:
        """One untimed call of ``name``'s runner on its inputs: its result (host arrays).

        Raises:
            WorkerError: the runner raised (or its worker died).
        """
        return self._ask(name, "output")

    def measure(
        self,
        *,
        budget_s: float,
        min_rounds: int = 5,
        max_rounds: int = 200,
        block_s: float = 0.05,
        warmup: int = 2,
        max_block: int = 25,
        settle_s: float = 0.05,
        names: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Interleaved rounds over the workers (``names``: these only; default all), as :func:`measure_interleaved`
        (same result keys; ``cpu_samples`` are each worker's process CPU seconds per run, every thread counted), with
        a pause of ``settle_s`` after each block so that the previous runtime's threads stop spinning before the next
        one starts (50 ms: ONNX Runtime's, TensorFlow's and OpenVINO's pools are all parked by then)."""
        chosen = [name for name in self._workers if names is None or name in names]
        timers = {
            name: (lambda runs, discard, name=name: [tuple(t) for t in self._ask(name, "time", (runs, discard))])
            for name in chosen
        }
        return _interleave(
            timers,
            budget_s=budget_s,
            min_rounds=min_rounds,
            max_rounds=max_rounds,
            block_s=block_s,
            warmup=warmup,
            max_block=max_block,
            settle_s=settle_s,
        )

    def close(self) -> None:
        """Stop every worker."""
        for name in list(self._workers):
            process, parent = self._workers.pop(name)
            with contextlib.suppress(BrokenPipeError, OSError):
                parent.send(("stop", None))
            parent.close()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def __enter__(self) -> IsolatedRunners:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def paired_ratio(rounds: Sequence[dict[str, float]], numerator: str, denominator: str) -> dict[str, float | int] | None:
    """Per-round ratio of block medians numerator/denominator, summarised (median, p10, p90, n)."""
    values = [r[numerator] / r[denominator] for r in rounds if numerator in r and denominator in r and r[denominator]]
    if not values:
        return None
    return {
        "median": round(float(np.median(values)), 4),
        "p10": round(float(np.percentile(values, 10)), 4),
        "p90": round(float(np.percentile(values, 90)), 4),
        "n": len(values),
    }
