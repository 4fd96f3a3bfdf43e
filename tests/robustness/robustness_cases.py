"""A corpus of bad inputs for the `lambda-export` command line, run as a real subprocess by tests/robustness/test_robustness.py.

Each case is a function ``(Workspace) -> Case`` registered with :func:`case`; the function prepares what it needs in
its own output folder and returns the command line, the expected exit code and the patterns the one-line error
message must match. :func:`run_case` runs it and snapshots the output folder before and after.

How the hard-to-provoke conditions are made (tests run as root in CI, where ``chmod 555`` does not stop writes):

* unwritable output folder: a path whose parent is a regular file (ENOTDIR, any user), ``/proc`` (no file can be
  created there, even by root), and a read-only tmpfs when ``mount`` works (root with CAP_SYS_ADMIN; otherwise the
  ``/proc/sys`` folder, read-only for root too, stands in);
* full disk: a 64 KiB tmpfs filled up completely when ``mount`` works, so the ONNX file cannot be written although
  the pre-flight check (an empty temporary file: a full tmpfs still has inodes) passes; otherwise ``RLIMIT_FSIZE`` (Python ignores
  SIGXFSZ, so the write fails with EFBIG: the same clean-up path). ``tests/robustness/test_robustness.py`` also has an in-process
  test that makes ``fsync`` fail with ENOSPC. ``-o /dev/full`` is no disk-full test: the output is written to a
  temporary file beside it and renamed, which as root would replace the device node; the tool refuses to replace
  anything but a regular file, and a FIFO stands in for the device in that case;
* Ctrl-C: SIGINT sent after the ``… converting`` progress line of ``-v`` (SIGTERM likewise).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EXE = Path(sys.executable).parent / "lambda-export"
CASE_TIMEOUT = 240

CUSTOM_LAYER_SOURCE = '''"""A custom layer for the robustness corpus (what --import loads)."""

import keras


@keras.saving.register_keras_serializable(package="corpus")
class ScaleByTwo(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0
'''


# -- the workspace: model files built once per session --------------------------------------------------------------


@dataclass
class Workspace:
    """Model files shared by all cases, and the special folders (mounts) some cases write into."""

    root: Path
    tiny_h5: Path  # Input(8,8,3) -> LambdaNetwork2DConv(receptive_kernel=3) -> pool -> Dense(3); input "images"
    tiny_keras: Path
    tiny_onnx: Path  # tiny_h5 converted with the Python API
    lambda_h5: Path  # Dense -> keras.layers.Lambda(lambda t: t * 2.0 + 1.0)
    lambda_keras: Path
    dyn_h5: Path  # Input(None, None, 3) -> LambdaNetwork2DConv(receptive_kernel=3)
    custom_h5: Path  # uses corpus>ScaleByTwo, defined in custom_module
    custom_module: Path
    weights_h5: Path  # a weights-only file (model.save_weights)
    mounts: list[Path] = field(default_factory=list)
    readonly_dir: Path | None = None  # a read-only tmpfs, when mount works
    full_dir: Path | None = None  # a tmpfs filled to its last page, when mount works
    notes: list[str] = field(default_factory=list)

    def folder(self, name: str) -> Path:
        """A fresh folder for one case (its output goes there)."""
        path = self.root / "cases" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def bad(self, name: str) -> Path:
        return self.root / "bad" / name


def build_workspace(root: Path) -> Workspace:
    """Build the small models (in this process) and the broken files derived from them."""
    import importlib.util

    import keras

    from lambda_export.conversion import convert
    from lambda_layers import LambdaNetwork2DConv

    root.mkdir(parents=True, exist_ok=True)
    (root / "bad").mkdir(exist_ok=True)
    keras.utils.set_random_seed(0)

    x = keras.Input((8, 8, 3), name="images")
    y = LambdaNetwork2DConv(8, key_depth=4, heads=2, receptive_kernel=3, name="lam")(x)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    tiny = keras.Model(x, keras.layers.Dense(3, name="logits")(y), name="tiny")
    tiny.save(root / "tiny.h5")
    tiny.save(root / "tiny.keras")
    tiny.save_weights(root / "tiny.weights.h5")
    convert(str(root / "tiny.h5"), root / "tiny.onnx")

    x = keras.Input((4,), name="x")
    y = keras.layers.Dense(4, name="dense")(x)
    y = keras.layers.Lambda(lambda t: t * 2.0 + 1.0, name="affine")(y)
    lam = keras.Model(x, y, name="with_lambda")
    lam.save(root / "lambda.h5")
    lam.save(root / "lambda.keras")

    x = keras.Input((None, None, 3), name="images")
    y = LambdaNetwork2DConv(8, key_depth=4, heads=2, receptive_kernel=3, name="lam")(x)
    keras.Model(x, y, name="dynamic").save(root / "dyn.h5")

    module_path = root / "corpus_layers.py"
    module_path.write_text(CUSTOM_LAYER_SOURCE)
    spec = importlib.util.spec_from_file_location("corpus_layers_for_saving", module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = keras.Input((4,), name="x")
    y = module.ScaleByTwo(name="scale")(keras.layers.Dense(4, name="dense")(x))
    keras.Model(x, y, name="custom").save(root / "custom.h5")

    ws = Workspace(
        root=root,
        tiny_h5=root / "tiny.h5",
        tiny_keras=root / "tiny.keras",
        tiny_onnx=root / "tiny.onnx",
        lambda_h5=root / "lambda.h5",
        lambda_keras=root / "lambda.keras",
        dyn_h5=root / "dyn.h5",
        custom_h5=root / "custom.h5",
        custom_module=module_path,
        weights_h5=root / "tiny.weights.h5",
    )
    _make_bad_files(ws)
    _make_mounts(ws)
    return ws


def _random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _rezip(source: Path, target: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Copy a .keras archive entry by entry; ``change`` returns new bytes, or None to drop the entry."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info.filename))
            if data is not None:
                dst.writestr(info, data)


def _patch_declared_size(path: Path, entry: str, size: int) -> None:
    """Make the zip's local and central directory headers of ``entry`` declare ``size`` bytes uncompressed."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(entry)
        central = archive.start_dir
    blob = bytearray(path.read_bytes())
    struct.pack_into("<I", blob, info.header_offset + 22, size)  # local file header: uncompressed size
    offset = central
    while blob[offset : offset + 4] == b"PK\x01\x02":  # central directory entries
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", blob, offset + 28)
        if blob[offset + 46 : offset + 46 + name_len].decode() == entry:
            struct.pack_into("<I", blob, offset + 24, size)
        offset += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(blob))


def _make_bad_files(ws: Workspace) -> None:
    bad = ws.bad
    bad("empty.h5").write_bytes(b"")
    bad("empty.onnx").write_bytes(b"")
    h5 = ws.tiny_h5.read_bytes()
    bad("truncated.h5").write_bytes(h5[: len(h5) // 3])
    bad("random.h5").write_bytes(_random_bytes(4096, 1))
    bad("random.keras").write_bytes(_random_bytes(4096, 2))
    bad("random.onnx").write_bytes(_random_bytes(4096, 3))
    bad("random.npz").write_bytes(_random_bytes(4096, 4))
    bad("model.pt").write_bytes(_random_bytes(64, 5))
    (ws.root / "not_a_savedmodel").mkdir(exist_ok=True)
    (ws.root / "not_a_savedmodel" / "README.txt").write_text("just a folder\n")
    broken_sm = ws.root / "broken_savedmodel"
    (broken_sm / "variables").mkdir(parents=True, exist_ok=True)
    (broken_sm / "saved_model.pb").write_bytes(_random_bytes(2048, 6))
    os.mkfifo(bad("fifo.h5"))

    _rezip(ws.tiny_keras, bad("no_weights.keras"), lambda n, d: None if n.startswith("model.weights") else d)
    _rezip(ws.tiny_keras, bad("no_config.keras"), lambda n, d: None if n == "config.json" else d)
    _rezip(ws.tiny_keras, bad("weights_not_hdf5.keras"), lambda n, d: _random_bytes(len(d), 7) if "weights" in n else d)
    # a flipped byte in the middle of the (stored) weights entry: the CRC no longer matches
    shutil.copy(ws.tiny_keras, bad("corrupt_weights.keras"))
    with zipfile.ZipFile(ws.tiny_keras) as archive:
        info = archive.getinfo("model.weights.h5")
    blob = bytearray(bad("corrupt_weights.keras").read_bytes())
    header_len = 30 + len(info.filename.encode()) + len(info.extra)
    middle = info.header_offset + header_len + info.compress_size // 2
    blob[middle] ^= 0xFF
    bad("corrupt_weights.keras").write_bytes(bytes(blob))
    # the same, deflate-compressed: the corruption breaks the compressed stream itself (zlib.error, not a CRC error)
    deflated = bad("corrupt_deflate.keras")
    with zipfile.ZipFile(ws.tiny_keras) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    with zipfile.ZipFile(deflated) as archive:
        info = archive.getinfo("model.weights.h5")
    blob = bytearray(deflated.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start + 16, start + min(info.compress_size - 8, 400)):
        blob[offset] = 0xA5
    deflated.write_bytes(bytes(blob))
    # a zip bomb's signature: the weights entry declares ~4 GB uncompressed (32 KB stored)
    shutil.copy(ws.tiny_keras, bad("bomb.keras"))
    _patch_declared_size(bad("bomb.keras"), "model.weights.h5", 0xF000_0000)

    # ONNX files whose external data points outside their folder (and one whose data file is missing)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (ws.root / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    variants = {
        "outside": ("../secret.bin", "0", "16"),
        "absolute": (str(ws.root / "secret.bin"), "0", "16"),
        "missing": ("w.bin", "0", "16"),
        "bad_offset": ("w.bin", "abc", "16"),
        "past_end": ("w.bin", "0", str(10**12)),
    }
    for name, (location, offset, length) in variants.items():
        folder = ws.root / f"ext_{name}"
        folder.mkdir(exist_ok=True)
        if name != "missing":
            (folder / "w.bin").write_bytes(np.ones(4, np.float32).tobytes())
        weight = numpy_helper.from_array(np.ones(4, np.float32), "W")
        weight.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset), ("length", length)):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
        weight.ClearField("raw_data")
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "W"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
            [weight],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        (folder / "model.onnx").write_bytes(model.SerializeToString())
    # a valid ONNX model whose input does not match tiny.h5's
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), ws.root / "other.onnx")

    # inputs for the parity check (tiny.onnx: input "images", (batch, 8, 8, 3) float32)
    rng = np.random.default_rng(0)
    good = rng.random((2, 8, 8, 3), dtype=np.float32)
    np.savez(bad("wrong_name.npz"), pixels=good)
    np.savez(bad("wrong_shape.npz"), images=rng.random((2, 9, 9, 3), dtype=np.float32))
    np.savez(bad("wrong_dtype.npz"), images=np.full((2, 8, 8, 3), "a", dtype="<U1"))
    with_nan = good.copy()
    with_nan[1, 2, 3, 0] = np.nan
    np.savez(bad("nan.npz"), images=with_nan)
    with_inf = good.copy()
    with_inf[0, 0, 0, 1] = np.inf
    np.savez(bad("inf.npz"), images=with_inf)
    # an object array whose unpickling would create a marker file: loading it must be refused, not executed
    payload = np.empty(1, dtype=object)
    payload[0] = _PickleBomb(str(ws.root / "PICKLE_EXECUTED"))
    np.save(bad("object.npy"), payload, allow_pickle=True)
    np.savez(bad("object.npz"), images=payload, allow_pickle=True)


class _PickleBomb:
    """Unpickling this object opens (creates) ``marker`` for writing: proof that a pickle was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _mount(target: Path, options: str) -> bool:
    """Mount a tmpfs on ``target`` (root with CAP_SYS_ADMIN only); False when that is not possible here."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True, timeout=30
    )
    return result.returncode == 0


def _make_mounts(ws: Workspace) -> None:
    readonly = ws.root / "mnt_readonly"
    if _mount(readonly, "ro,size=16k"):
        ws.mounts.append(readonly)
        ws.readonly_dir = readonly
    else:
        ws.notes.append("no tmpfs mount here: /proc/sys stands in for the read-only folder")
    full = ws.root / "mnt_full"
    if _mount(full, "size=64k"):
        ws.mounts.append(full)
        ws.full_dir = full
    else:
        ws.notes.append("no tmpfs mount here: RLIMIT_FSIZE (EFBIG) stands in for the full disk")


def unmount_all(ws: Workspace) -> None:
    for mount in reversed(ws.mounts):
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
    ws.mounts.clear()


def fill_up(folder: Path, keep_free: int = 0) -> None:
    """Fill the file system of ``folder`` completely, then free ``keep_free`` bytes.

    A full tmpfs still has inodes: creating an empty (temporary) file works, writing its first byte fails.
    """
    filler = folder / "filler.bin"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(chunk)
    if keep_free:
        os.truncate(filler, max(0, filler.stat().st_size - keep_free))


# -- cases --------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One run of the command line and what must come of it.

    Attributes:
        argv: the arguments after ``lambda-export``.
        code: the expected exit code.
        patterns: regular expressions (case-insensitive) the one-line error message must all match (stdout for 0).
        output: the output file the run may write: it must exist after a success and otherwise be absent, or hold
            ``previous`` unchanged.
        previous: the bytes ``output`` held before the run.
        watch: a folder that must not gain any file except ``output`` (no temporary files left behind).
        interrupt: a signal sent once the ``… converting`` progress line appears (needs ``-v`` in argv).
        check: extra assertions, run after the common ones.
        limits: (RLIMIT_FSIZE bytes) for the child, to make writes fail.
    """

    argv: list[str]
    code: int
    patterns: list[str]
    output: Path | None = None
    previous: bytes | None = None
    watch: Path | None = None
    interrupt: int | None = None
    check: Callable[[], None] | None = None
    fsize_limit: int | None = None

    @property
    def verbose(self) -> bool:
        return "-v" in self.argv


CASES: dict[str, Callable[[Workspace], Case]] = {}


def case(fn: Callable[[Workspace], Case]) -> Callable[[Workspace], Case]:
    CASES[fn.__name__] = fn
    return fn


def _export(ws: Workspace, name: str, model: Path | str, *extra: str, code: int, patterns: list[str]) -> Case:
    """``lambda-export MODEL -o <case folder>/model.onnx --skip-verify EXTRA``."""
    folder = ws.folder(name)
    out = folder / "model.onnx"
    return Case([str(model), "-o", str(out), *extra], code, patterns, output=out, watch=folder)


def _with_previous(ws: Workspace, name: str) -> tuple[Path, bytes]:
    out = ws.folder(name) / "model.onnx"
    previous = b"previous model bytes " + name.encode()
    out.write_bytes(previous)
    return out, previous


# files that are not models


@case
def missing_path(ws: Workspace) -> Case:
    return _export(ws, "missing_path", ws.root / "nope.h5", code=2, patterns=[r"nope\.h5", r"no such file"])


@case
def folder_not_savedmodel(ws: Workspace) -> Case:
    return _export(ws, "folder_not_savedmodel", ws.root / "not_a_savedmodel", code=2, patterns=[r"not a SavedModel"])


@case
def broken_savedmodel(ws: Workspace) -> Case:
    return _export(
        ws, "broken_savedmodel", ws.root / "broken_savedmodel", code=2, patterns=[r"cannot load the SavedModel"]
    )


@case
def empty_file(ws: Workspace) -> Case:
    return _export(ws, "empty_file", ws.bad("empty.h5"), code=2, patterns=[r"empty\.h5", r"is empty"])


@case
def truncated_h5(ws: Workspace) -> Case:
    return _export(
        ws, "truncated_h5", ws.bad("truncated.h5"), code=2, patterns=[r"truncated\.h5", r"truncated|corrupt"]
    )


@case
def random_bytes_h5(ws: Workspace) -> Case:
    return _export(ws, "random_bytes_h5", ws.bad("random.h5"), code=2, patterns=[r"not a valid \.h5", r"HDF5"])


@case
def random_bytes_keras(ws: Workspace) -> Case:
    return _export(ws, "random_bytes_keras", ws.bad("random.keras"), code=2, patterns=[r"not a valid \.keras", r"zip"])


@case
def weights_only_h5(ws: Workspace) -> Case:
    return _export(ws, "weights_only_h5", ws.weights_h5, code=2, patterns=[r"no model_config", r"weights-only"])


@case
def unsupported_suffix(ws: Workspace) -> Case:
    return _export(
        ws, "unsupported_suffix", ws.bad("model.pt"), code=2, patterns=[r"unsupported model file type '\.pt'"]
    )


@case
def fifo_as_model(ws: Workspace) -> Case:
    return _export(ws, "fifo_as_model", ws.bad("fifo.h5"), code=2, patterns=[r"fifo\.h5", r"not a regular file"])


# .keras archives


@case
def keras_missing_weights(ws: Workspace) -> Case:
    return _export(ws, "keras_missing_weights", ws.bad("no_weights.keras"), code=2, patterns=[r"no weights entry"])


@case
def keras_missing_config(ws: Workspace) -> Case:
    return _export(ws, "keras_missing_config", ws.bad("no_config.keras"), code=2, patterns=[r"no config\.json"])


@case
def keras_corrupted_weights_crc(ws: Workspace) -> Case:
    return _export(
        ws,
        "keras_corrupted_weights_crc",
        ws.bad("corrupt_weights.keras"),
        code=2,
        patterns=[r"model\.weights\.h5", r"corrupted"],
    )


@case
def keras_corrupted_weights_deflate(ws: Workspace) -> Case:
    return _export(
        ws, "keras_corrupted_weights_deflate", ws.bad("corrupt_deflate.keras"), code=2, patterns=[r"corrupted"]
    )


@case
def keras_weights_not_hdf5(ws: Workspace) -> Case:
    return _export(
        ws,
        "keras_weights_not_hdf5",
        ws.bad("weights_not_hdf5.keras"),
        code=2,
        patterns=[r"cannot load the Keras model"],
    )


@case
def keras_huge_declared_size(ws: Workspace) -> Case:
    return _export(
        ws,
        "keras_huge_declared_size",
        ws.bad("bomb.keras"),
        code=2,
        patterns=[r"model\.weights\.h5", r"4026531840 bytes", r"zip bomb"],
    )


# code in model files


@case
def lambda_layer_refused_keras(ws: Workspace) -> Case:
    return _export(
        ws,
        "lambda_layer_refused_keras",
        ws.lambda_keras,
        code=2,
        patterns=[r"Lambda layer\(s\) affine", r"executes Python code", r"--trust-code"],
    )


@case
def lambda_layer_refused_h5(ws: Workspace) -> Case:
    return _export(
        ws, "lambda_layer_refused_h5", ws.lambda_h5, code=2, patterns=[r"Lambda layer\(s\) affine", r"--trust-code"]
    )


@case
def lambda_layer_trusted(ws: Workspace) -> Case:
    """With --trust-code the simple-expression Lambda converts and passes the parity check."""
    return _export(ws, "lambda_layer_trusted", ws.lambda_keras, "--trust-code", code=0, patterns=[r"PASS|pass"])


@case
def lambda_layer_trusted_h5(ws: Workspace) -> Case:
    return _export(
        ws, "lambda_layer_trusted_h5", ws.lambda_h5, "--trust-code", "--skip-verify", code=0, patterns=[r"converted"]
    )


@case
def unknown_custom_layer(ws: Workspace) -> Case:
    return _export(ws, "unknown_custom_layer", ws.custom_h5, code=2, patterns=[r"ScaleByTwo", r"--import", r"register"])


@case
def custom_layer_imported(ws: Workspace) -> Case:
    return _export(
        ws,
        "custom_layer_imported",
        ws.custom_h5,
        "--import",
        str(ws.custom_module),
        "--skip-verify",
        code=0,
        patterns=[r"converted"],
    )


@case
def import_missing_module(ws: Workspace) -> Case:
    return _export(
        ws,
        "import_missing_module",
        ws.tiny_h5,
        "--import",
        "no_such_module_xyz",
        code=2,
        patterns=[r"--import no_such_module_xyz", r"ModuleNotFoundError"],
    )


# shapes


@case
def unknown_dims_without_input_shape(ws: Workspace) -> Case:
    return _export(
        ws,
        "unknown_dims_without_input_shape",
        ws.dyn_h5,
        code=2,
        patterns=[r"unknown dims", r"--input-shape images=\?,\?,\?,3"],
    )


@case
def unknown_dims_with_input_shape(ws: Workspace) -> Case:
    return _export(
        ws,
        "unknown_dims_with_input_shape",
        ws.dyn_h5,
        "--input-shape",
        "images=?,16,16,3",
        "--skip-verify",
        code=0,
        patterns=[r"converted"],
    )


@case
def input_shape_unknown_input(ws: Workspace) -> Case:
    return _export(
        ws,
        "input_shape_unknown_input",
        ws.dyn_h5,
        "--input-shape",
        "pixels=?,16,16,3",
        code=2,
        patterns=[r"unknown input\(s\) pixels", r"inputs are images"],
    )


@case
def input_shape_malformed(ws: Workspace) -> Case:
    return _export(
        ws,
        "input_shape_malformed",
        ws.dyn_h5,
        "--input-shape",
        "images=?,sixteen,16,3",
        code=2,
        patterns=[r"--input-shape", r"'sixteen' is not a positive integer"],
    )


@case
def opset_out_of_range(ws: Workspace) -> Case:
    return _export(ws, "opset_out_of_range", ws.tiny_h5, "--opset", "99", code=2, patterns=[r"--opset", r"99"])


# inputs for the parity check (verify tiny.h5 tiny.onnx --inputs FILE)


def _verify_inputs(ws: Workspace, name: str, inputs: Path, patterns: list[str], code: int = 2) -> Case:
    folder = ws.folder(name)
    argv = ["verify", str(ws.tiny_h5), str(ws.tiny_onnx), "--inputs", str(inputs), "--report", str(folder / "r.json")]
    return Case(argv, code, patterns, watch=folder)


@case
def npz_random_bytes(ws: Workspace) -> Case:
    return _verify_inputs(ws, "npz_random_bytes", ws.bad("random.npz"), [r"random\.npz"])


@case
def npz_wrong_names(ws: Workspace) -> Case:
    return _verify_inputs(ws, "npz_wrong_names", ws.bad("wrong_name.npz"), [r"missing input\(s\) images"])


@case
def npz_wrong_shape(ws: Workspace) -> Case:
    return _verify_inputs(ws, "npz_wrong_shape", ws.bad("wrong_shape.npz"), [r"images", r"shape|\(2, 9, 9, 3\)"])


@case
def npz_wrong_dtype(ws: Workspace) -> Case:
    return _verify_inputs(ws, "npz_wrong_dtype", ws.bad("wrong_dtype.npz"), [r"images", r"dtype|<U1|str"])


@case
def npz_nan_input(ws: Workspace) -> Case:
    return _verify_inputs(ws, "npz_nan_input", ws.bad("nan.npz"), [r"images", r"NaN"])


@case
def npz_inf_input(ws: Workspace) -> Case:
    return _verify_inputs(ws, "npz_inf_input", ws.bad("inf.npz"), [r"images", r"inf"])


def _no_pickle_executed(ws: Workspace) -> Callable[[], None]:
    def check() -> None:
        assert not (ws.root / "PICKLE_EXECUTED").exists(), "the pickled payload was executed"

    return check


@case
def npy_object_array(ws: Workspace) -> Case:
    result = _verify_inputs(ws, "npy_object_array", ws.bad("object.npy"), [r"object\.npy", r"pickle|object"])
    result.check = _no_pickle_executed(ws)
    return result


@case
def npz_object_array(ws: Workspace) -> Case:
    result = _verify_inputs(ws, "npz_object_array", ws.bad("object.npz"), [r"object\.npz", r"pickle|object"])
    result.check = _no_pickle_executed(ws)
    return result


@case
def export_npz_wrong_names(ws: Workspace) -> Case:
    """Bad --inputs for an export are refused after loading, before the conversion writes anything."""
    return _export(
        ws,
        "export_npz_wrong_names",
        ws.tiny_h5,
        "--inputs",
        str(ws.bad("wrong_name.npz")),
        code=2,
        patterns=[r"wrong_name\.npz", r"missing input\(s\) images"],
    )


@case
def export_bad_tolerance(ws: Workspace) -> Case:
    return _export(ws, "export_bad_tolerance", ws.tiny_h5, "--atol", "nan", code=2, patterns=[r"--atol nan", r"finite"])


@case
def export_unknown_provider(ws: Workspace) -> Case:
    return _export(
        ws, "export_unknown_provider", ws.tiny_h5, "--providers", "gpu9", code=2, patterns=[r"--providers 'gpu9'"]
    )


@case
def empty_output_path(ws: Workspace) -> Case:
    return _export(ws, "empty_output_path", ws.tiny_h5, "-o", "", code=2, patterns=[r"--output is an empty path"])


# ONNX files for verify / inspect


@case
def inspect_random_bytes_onnx(ws: Workspace) -> Case:
    return Case(["inspect", str(ws.bad("random.onnx"))], 2, [r"random\.onnx", r"not a valid ONNX"])


@case
def inspect_empty_onnx(ws: Workspace) -> Case:
    return Case(["inspect", str(ws.bad("empty.onnx"))], 2, [r"empty\.onnx", r"is empty"])


@case
def verify_random_bytes_onnx(ws: Workspace) -> Case:
    return Case(["verify", str(ws.tiny_h5), str(ws.bad("random.onnx"))], 2, [r"random\.onnx", r"not a valid ONNX"])


@case
def inspect_external_data_outside(ws: Workspace) -> Case:
    model = ws.root / "ext_outside" / "model.onnx"
    return Case(["inspect", str(model)], 2, [r"external data outside", r"\.\./secret\.bin", r"refusing"])


@case
def verify_external_data_absolute(ws: Workspace) -> Case:
    model = ws.root / "ext_absolute" / "model.onnx"
    return Case(["verify", str(ws.tiny_h5), str(model)], 2, [r"external data outside", r"secret\.bin", r"refusing"])


@case
def inspect_external_data_missing(ws: Workspace) -> Case:
    model = ws.root / "ext_missing" / "model.onnx"
    return Case(["inspect", str(model)], 2, [r"external data file 'w\.bin'", r"missing"])


@case
def inspect_external_data_bad_offset(ws: Workspace) -> Case:
    model = ws.root / "ext_bad_offset" / "model.onnx"
    return Case(["inspect", str(model)], 2, [r"tensor 'W' has an invalid external data entry", r"abc"])


@case
def inspect_external_data_past_end(ws: Workspace) -> Case:
    """A declared length of 1 TB must be refused from the file size, not read (MemoryError)."""
    model = ws.root / "ext_past_end" / "model.onnx"
    return Case(["inspect", str(model)], 2, [r"length 1000000000000", r"lies outside 'w\.bin' \(16 bytes\)"])


@case
def verify_mismatched_onnx(ws: Workspace) -> Case:
    return Case(["verify", str(ws.tiny_h5), str(ws.root / "other.onnx")], 2, [r"inputs \['x'\]", r"do not match"])


# the output


@case
def existing_output_without_force(ws: Workspace) -> Case:
    out, previous = _with_previous(ws, "existing_output_without_force")
    return Case(
        [str(ws.tiny_h5), "-o", str(out)],
        2,
        [r"model\.onnx exists", r"--force"],
        output=out,
        previous=previous,
        watch=out.parent,
    )


@case
def force_with_broken_model_keeps_previous(ws: Workspace) -> Case:
    out, previous = _with_previous(ws, "force_with_broken_model_keeps_previous")
    return Case(
        [str(ws.bad("truncated.h5")), "-o", str(out), "--force"],
        2,
        [r"truncated"],
        output=out,
        previous=previous,
        watch=out.parent,
    )


@case
def output_is_a_folder(ws: Workspace) -> Case:
    folder = ws.folder("output_is_a_folder")
    target = folder / "model.onnx"
    target.mkdir(exist_ok=True)
    return Case([str(ws.tiny_h5), "-o", str(target)], 2, [r"model\.onnx", r"directory|folder"], watch=folder)


@case
def output_is_a_fifo(ws: Workspace) -> Case:
    """Stands in for ``-o /dev/full --force``: the rename would replace the special file; it is refused."""
    folder = ws.folder("output_is_a_fifo")
    target = folder / "model.onnx"
    if not target.exists():
        os.mkfifo(target)

    def still_fifo() -> None:
        import stat

        assert stat.S_ISFIFO(os.lstat(target).st_mode), "the FIFO was replaced"

    return Case(
        [str(ws.tiny_h5), "-o", str(target), "--force", "--skip-verify"],
        2,
        [r"not a regular file", r"refusing"],
        watch=folder,
        check=still_fifo,
    )


@case
def output_parent_is_a_file(ws: Workspace) -> Case:
    folder = ws.folder("output_parent_is_a_file")
    (folder / "plain.txt").write_text("a file, not a folder\n")
    return Case(
        [str(ws.tiny_h5), "-o", str(folder / "plain.txt" / "model.onnx")],
        2,
        [r"plain\.txt is not a folder"],
        watch=folder,
    )


@case
def output_folder_missing(ws: Workspace) -> Case:
    folder = ws.folder("output_folder_missing")
    return Case(
        [str(ws.tiny_h5), "-o", str(folder / "no" / "such" / "model.onnx")], 2, [r"does not exist"], watch=folder
    )


@case
def output_in_proc(ws: Workspace) -> Case:
    return Case([str(ws.tiny_h5), "-o", "/proc/lambda_export_model.onnx"], 2, [r"cannot write to the output folder"])


@case
def output_readonly_folder(ws: Workspace) -> Case:
    if ws.readonly_dir is not None:
        return Case(
            [str(ws.tiny_h5), "-o", str(ws.readonly_dir / "model.onnx")],
            2,
            [r"cannot write", r"read-only file system"],
            output=ws.readonly_dir / "model.onnx",
            watch=ws.readonly_dir,
        )
    return Case(
        [str(ws.tiny_h5), "-o", "/proc/sys/lambda_export_model.onnx"],
        2,
        [r"cannot write", r"read-only|permission denied|does not accept"],
    )


@case
def output_disk_full(ws: Workspace) -> Case:
    """The pre-flight check passes, the conversion runs, the write fails: no temp file, previous output intact."""
    if ws.full_dir is not None:
        out = ws.full_dir / "model.onnx"
        previous = b"previous model bytes on the full disk"
        out.write_bytes(previous)
        fill_up(ws.full_dir)
        return Case(
            [str(ws.tiny_h5), "-o", str(out), "--force", "--skip-verify"],
            2,
            [r"cannot write", r"model\.onnx", r"no space left"],
            output=out,
            previous=previous,
            watch=ws.full_dir,
        )
    out, previous = _with_previous(ws, "output_disk_full")
    return Case(
        [str(ws.tiny_h5), "-o", str(out), "--force", "--skip-verify"],
        2,
        [r"cannot write", r"model\.onnx", r"too large"],
        output=out,
        previous=previous,
        watch=out.parent,
        fsize_limit=1024,
    )


@case
def report_bad_suffix(ws: Workspace) -> Case:
    folder = ws.folder("report_bad_suffix")
    return _export(
        ws, "report_bad_suffix", ws.tiny_h5, "--report", str(folder / "r.txt"), code=2, patterns=[r"\.json or \.html"]
    )


# interruptions


@case
def sigint_during_conversion(ws: Workspace) -> Case:
    folder = ws.folder("sigint_during_conversion")
    out = folder / "model.onnx"
    return Case(
        [str(ws.tiny_h5), "-o", str(out), "-v", "--skip-verify"],
        130,
        [r"interrupted", r"no output file was written"],
        output=out,
        watch=folder,
        interrupt=signal.SIGINT,
    )


@case
def sigterm_during_conversion(ws: Workspace) -> Case:
    folder = ws.folder("sigterm_during_conversion")
    out, previous = _with_previous(ws, "sigterm_during_conversion")
    return Case(
        [str(ws.tiny_h5), "-o", str(out), "--force", "-v", "--skip-verify"],
        143,
        [r"terminated"],
        output=out,
        previous=previous,
        watch=folder,
        interrupt=signal.SIGTERM,
    )


# -- running ------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float
    before: set[str]
    after: set[str]


def child_env() -> dict[str, str]:
    """The environment of a CI job: no TF_CPP_MIN_LOG_LEVEL (the tool must keep stderr clean by itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _listing(folder: Path | None) -> set[str]:
    if folder is None or not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir()}


def run_case(item: Case) -> Result:
    before = _listing(item.watch)
    started = time.perf_counter()
    preexec = None
    if item.fsize_limit is not None:
        limit = item.fsize_limit

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [str(EXE), *item.argv]
    if item.interrupt is None:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
        )
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        code, stdout, stderr = _run_interrupted(command, item.interrupt)
    return Result(code, stdout, stderr, time.perf_counter() - started, before, _listing(item.watch))


def _run_interrupted(command: list[str], signum: int) -> tuple[int, str, str]:
    """Start the command, wait for its ``… converting`` progress line, send ``signum``, collect the rest."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )
    seen: list[str] = []
    assert proc.stderr is not None
    deadline = time.monotonic() + CASE_TIMEOUT
    try:
        for line in proc.stderr:
            seen.append(line)
            if re.match(r"… converting", line):
                proc.send_signal(signum)
                break
            if time.monotonic() > deadline:
                break
        stdout, rest = proc.communicate(timeout=CASE_TIMEOUT)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc.returncode, stdout, "".join(seen) + rest
