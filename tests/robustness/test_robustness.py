"""Bad inputs through the real `lambda-export` command line (a subprocess per case), plus in-process checks.

The corpus lives in ``tests/robustness/robustness_cases.py``. Every case asserts its exit code; for an error, that stderr holds
exactly one line, ``lambda-export: error: ...``, which names the problem (no ``Traceback`` unless ``-v``); and
that no partial output or temporary file is left behind and a previous output keeps its bytes. The cases run in a
small thread pool (the machine has 2 cores; most cases fail before TensorFlow is imported and take well under a
second, the others about 5 s each).
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import re
import stat
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import robustness_cases as rc  # tests/robustness/robustness_cases.py (pytest puts each test folder on sys.path)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_export.errors import InputError
from lambda_export.loading import TensorInfo

WORKERS = 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> rc.Workspace:
    ws = rc.build_workspace(tmp_path_factory.mktemp("robustness"))
    yield ws
    rc.unmount_all(ws)


@pytest.fixture(scope="module")
def corpus(workspace: rc.Workspace) -> dict[str, concurrent.futures.Future]:
    """Start every case at once (WORKERS at a time); each test waits for its own."""
    started = time.perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="corpus")
    futures: dict[str, concurrent.futures.Future] = {}
    # the slow ones (TensorFlow import) first, so that the fast ones fill the gaps
    for name, factory in CASES_BY_COST:
        item = factory(workspace)
        futures[name] = pool.submit(lambda item=item: (item, rc.run_case(item)))
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    timings = sorted(
        ((f.result()[1].seconds, n) for n, f in futures.items() if f.done() and not f.exception()), reverse=True
    )
    print(f"\ncorpus: {len(futures)} cases in {time.perf_counter() - started:.1f}s wall; slowest:")
    for seconds, name in timings[:8]:
        print(f"  {seconds:5.1f}s {name}")


# cases that import TensorFlow (about 5 s each) are started first
_FAST = {
    "missing_path", "folder_not_savedmodel", "empty_file", "truncated_h5", "random_bytes_h5", "random_bytes_keras",
    "weights_only_h5", "unsupported_suffix", "fifo_as_model", "keras_missing_weights", "keras_missing_config",
    "keras_corrupted_weights_crc", "keras_corrupted_weights_deflate", "keras_huge_declared_size",
    "lambda_layer_refused_keras", "lambda_layer_refused_h5", "input_shape_malformed",
    "opset_out_of_range", "inspect_random_bytes_onnx", "inspect_empty_onnx", "verify_random_bytes_onnx",
    "inspect_external_data_outside", "verify_external_data_absolute", "inspect_external_data_missing",
    "inspect_external_data_bad_offset", "inspect_external_data_past_end", "export_bad_tolerance",
    "export_unknown_provider", "empty_output_path",
    "existing_output_without_force", "force_with_broken_model_keeps_previous", "output_is_a_folder",
    "output_is_a_fifo", "output_parent_is_a_file", "output_folder_missing", "output_in_proc",
    "output_readonly_folder", "report_bad_suffix", "npz_random_bytes", "npz_wrong_names", "npz_wrong_shape",
    "npz_wrong_dtype", "npz_nan_input", "npz_inf_input", "npy_object_array", "npz_object_array",
}  # fmt: skip
CASES_BY_COST = sorted(rc.CASES.items(), key=lambda item: item[0] in _FAST)


def test_corpus_is_large_enough() -> None:
    assert len(rc.CASES) >= 25
    assert set(_FAST) <= set(rc.CASES), set(_FAST) - set(rc.CASES)


@pytest.mark.parametrize("name", list(rc.CASES))
def test_bad_input(name: str, corpus: dict[str, concurrent.futures.Future]) -> None:
    item, result = corpus[name].result(timeout=rc.CASE_TIMEOUT * 3)
    where = (
        f"\n$ lambda-export {' '.join(item.argv)}\nexit {result.code} after {result.seconds:.1f}s"
        f"\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"
    )
    assert result.code == item.code, where
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if not item.verbose:
        assert "Traceback" not in result.stderr, where
    if item.code != 0:
        errors = [line for line in lines if line.startswith("lambda-export: error: ")]
        assert len(errors) == 1, where
        if not item.verbose:
            assert lines == errors, "stderr must hold the one error line only" + where
        for pattern in item.patterns:
            assert re.search(pattern, errors[0], re.IGNORECASE), f"{pattern!r} not in the message" + where
    else:
        noise = [line for line in lines if not line.startswith(("warning: ", "… "))]
        assert not noise, where
        for pattern in item.patterns:
            assert re.search(pattern, result.stdout, re.IGNORECASE), f"{pattern!r} not on stdout" + where

    if item.output is not None:
        if item.code == 0:
            model = onnx.load(str(item.output))
            assert model.graph.node, where
        elif item.previous is not None:
            assert item.output.read_bytes() == item.previous, "the previous output was changed" + where
        else:
            assert not os.path.lexists(item.output), "an output was left behind" + where
    if item.watch is not None:
        expected_new = {item.output.name} if item.output is not None and item.code == 0 else set()
        assert result.after - result.before <= expected_new, f"files left behind: {result.after - result.before}"
        assert not [name for name in result.after if ".tmp" in name], result.after
    if item.check is not None:
        item.check()


# -- in-process: what cannot be provoked from outside on every machine --------------------------------------------


def _tiny_onnx() -> onnx.ModelProto:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_disk_full_during_write_leaves_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC simulated at the Python level (fsync fails), for machines where no tmpfs can be mounted."""
    from lambda_export import io as lambda_io

    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lambda_io.os, "fsync", full)
    with pytest.raises(InputError, match=r"cannot write .*model\.onnx.*No space left"):
        lambda_io.save_model_atomic(_tiny_onnx(), out, overwrite=True)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_interrupt_during_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lambda_export import io as lambda_io

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lambda_io.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lambda_io.save_model_atomic(_tiny_onnx(), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_output_mode_follows_umask_or_replaced_file(tmp_path: Path) -> None:
    """mkstemp creates 0600 files; the renamed output must not keep that mode (a server may run as another user)."""
    from lambda_export.io import save_model_atomic

    old = os.umask(0o022)
    try:
        save_model_atomic(_tiny_onnx(), tmp_path / "a.onnx")
        (tmp_path / "b.onnx").write_bytes(b"old")
        os.chmod(tmp_path / "b.onnx", 0o640)
        save_model_atomic(_tiny_onnx(), tmp_path / "b.onnx", overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.onnx").stat().st_mode) == 0o640


def test_save_refuses_to_replace_special_files(tmp_path: Path) -> None:
    from lambda_export.io import save_model_atomic

    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        save_model_atomic(_tiny_onnx(), fifo, overwrite=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        save_model_atomic(_tiny_onnx(), tmp_path / "file" / "out.onnx")


# -- allow_pickle=False: object arrays are refused, never unpickled ---------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_object_arrays_are_refused_not_unpickled(tmp_path: Path, suffix: str) -> None:
    from lambda_export.parity import load_inputs

    marker = tmp_path / "EXECUTED"
    payload = np.empty(1, dtype=object)
    payload[0] = rc._PickleBomb(str(marker))
    path = tmp_path / f"inputs{suffix}"
    if suffix == ".npy":
        np.save(path, payload, allow_pickle=True)
    else:
        np.savez(path, images=payload, allow_pickle=True)
    with pytest.raises(InputError, match=r"pickle|object"):
        load_inputs(path, [TensorInfo("images", (None, 8, 8, 3), "float32")])
    assert not marker.exists()


# -- fuzzing: mutated files only ever give InputError ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_files(workspace: rc.Workspace) -> dict[str, bytes]:
    return {
        "keras": workspace.tiny_keras.read_bytes(),
        "h5": workspace.tiny_h5.read_bytes(),
        "onnx": workspace.tiny_onnx.read_bytes(),
    }


def _mutate(blob: bytes, data: st.DataObject) -> bytes:
    out = bytearray(blob)
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if kind == "truncate":
        return bytes(out[: data.draw(st.integers(0, len(out) - 1))])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[position] ^= data.draw(st.integers(1, 255))
        else:
            out[position : position + 16] = data.draw(st.binary(min_size=16, max_size=16))
    return bytes(out)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from(["keras", "h5", "onnx"]))
def test_mutated_files_give_input_error_or_load(
    data: st.DataObject, kind: str, sample_files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from lambda_export.io import load_onnx
    from lambda_export.loading import load_model

    path = tmp_path_factory.mktemp("fuzz") / f"model.{kind}"
    path.write_bytes(_mutate(sample_files[kind], data))
    try:
        if kind == "onnx":
            load_onnx(path)
        else:
            load_model(path)
    except InputError:
        pass  # refused with a message: fine; anything else is a bug


def test_library_errors_become_one_line() -> None:
    """lambda_export.errors.first_line / described: how every library exception enters a one-line error (the
    conversion, loading, ORT, pass-undo and internal-error paths all use them): the first line only, a bounded
    length, and the type name where the message is empty (an IndexError here used to hide the real error)."""
    from lambda_export.errors import described, first_line

    multi = ValueError("  first line\nsecond line\n")
    assert first_line(multi) == "first line" and described(multi) == "ValueError: first line"
    assert first_line(RuntimeError("")) == "RuntimeError" and described(RuntimeError("")) == "RuntimeError"
    assert described(KeyError("x")) == "KeyError: 'x'"
    long = OSError("y" * 1000)
    assert len(first_line(long)) == 300 and len(first_line(long, 200)) == 200 and len(first_line(long, None)) == 1000
