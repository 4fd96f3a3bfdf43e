"""lambda_export.timing.IsolatedRunners: each runner in a worker process of its own, the same rounds as
measure_interleaved, errors as one-line messages (a runner that fails to build or to run, a worker that dies)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lambda_export.timing import IsolatedRunners, WorkerError, WorkerRunner, paired_ratio


def pid_runner(work: int):
    """A runner that sums ``work`` integers and answers with its process id and the sum of its inputs."""

    def run(inputs):
        sum(range(work))
        return os.getpid(), float(np.sum(inputs[0])) if inputs is not None else None

    return run


def broken_factory(message: str):
    raise ValueError(message)


def failing_runner():
    def run(inputs):
        raise RuntimeError("no kernel for this input")

    return run


def dying_runner():
    def run(inputs):
        os._exit(3)

    return run


def test_runners_live_in_their_own_processes_and_take_turns() -> None:
    with IsolatedRunners({"a": WorkerRunner(pid_runner, (2000,)), "b": WorkerRunner(pid_runner, (8000,))}) as pool:
        assert pool.names == ["a", "b"] and pool.errors == {}
        pool.feed({"a": [np.ones(3)], "b": [np.full(2, 2.0)]})
        pid_a, sum_a = pool.output("a")
        pid_b, sum_b = pool.output("b")
        assert len({pid_a, pid_b, os.getpid()}) == 3  # two workers, neither is this process
        assert (sum_a, sum_b) == (3.0, 4.0)  # each runs on its own inputs
        measured = pool.measure(budget_s=0.0, min_rounds=4, max_rounds=4, block_s=0.001, settle_s=0.0)
    assert len(measured["rounds"]) == 4 and all(set(r) == {"a", "b"} for r in measured["rounds"])
    for name in ("a", "b"):
        assert len(measured["samples"][name]) == 4 * measured["block_runs"][name]
        assert len(measured["cpu_samples"][name]) == len(measured["samples"][name])
        assert all(value >= 0 for value in measured["cpu_samples"][name])
    ratio = paired_ratio(measured["rounds"], "a", "b")
    assert ratio is not None and ratio["n"] == 4


def test_only_the_named_runners_are_timed() -> None:
    with IsolatedRunners({"a": WorkerRunner(pid_runner, (100,)), "b": WorkerRunner(pid_runner, (100,))}) as pool:
        measured = pool.measure(budget_s=0.0, min_rounds=2, max_rounds=2, block_s=0.001, settle_s=0.0, names=["b"])
    assert set(measured["samples"]) == {"b"}


def test_a_runner_that_fails_to_build_is_left_out_with_its_error() -> None:
    runners = {"ok": WorkerRunner(pid_runner, (10,)), "broken": WorkerRunner(broken_factory, ("openvino missing",))}
    with IsolatedRunners(runners) as pool:
        assert pool.names == ["ok"]
        assert pool.errors == {"broken": "ValueError: openvino missing"}
        assert pool.output("ok")[0] != os.getpid()


def test_a_runner_that_raises_or_dies_says_so_in_one_line() -> None:
    with IsolatedRunners({"fails": WorkerRunner(failing_runner), "dies": WorkerRunner(dying_runner)}) as pool:
        with pytest.raises(WorkerError, match=r"^fails: RuntimeError: no kernel for this input$"):
            pool.output("fails")
        pool.feed({"fails": [np.zeros(1)]})  # the worker is still there after its runner raised
        with pytest.raises(WorkerError, match=r"^dies: the worker exited with code 3$"):
            pool.output("dies")
