"""``lambda-export triton``: the model repository it writes, checked with Triton's own model-config schema.

``config.pbtxt`` is parsed with ``google.protobuf.text_format`` into ``inference.ModelConfig`` from ``tritonclient``
(the schema Triton itself compiles in), and every field is compared with what the ONNX graph says. A real server
cannot run here; examples/triton/README.md has the ``tritonserver`` command and examples/triton/client.py the request
side, whose request building is checked offline below.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import require
from onnx import TensorProto, helper

from lambda_export import triton
from lambda_export.cli import main

ROOT = Path(__file__).resolve().parents[2]
HAVE_TRITONCLIENT = importlib.util.find_spec("tritonclient") is not None and triton.model_config_message_class()
HOW = "pip install -e '.[triton]'  (tritonclient[grpc])"


def _require_schema() -> Any:
    require(bool(HAVE_TRITONCLIENT), "tritonclient (Triton's model_config_pb2)", HOW)
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``lambda-export ARGS`` in-process through the real entry point (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def parse_config(path: Path) -> Any:
    """config.pbtxt → Triton's ``inference.ModelConfig`` (raises on any field the schema doesn't know)."""
    from google.protobuf import text_format

    model_config_pb2 = _require_schema()
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def onnx_io(model: onnx.ModelProto) -> tuple[list[tuple[str, int, list[int | None]]], list[tuple[str, int, list]]]:
    """(name, elem_type, dims with None for dynamic) of the real inputs and of the outputs, read independently."""

    def describe(value: Any) -> tuple[str, int, list[int | None]]:
        tensor = value.type.tensor_type
        return (
            value.name,
            tensor.elem_type,
            [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim],
        )

    initializers = {init.name for init in model.graph.initializer}
    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [describe(v) for v in model.graph.output]


TRITON_TYPE = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64", TensorProto.BOOL: "TYPE_BOOL"}


def check_tensors(config: Any, model: onnx.ModelProto) -> None:
    """Names, data types and dims of config.input/output against the ONNX graph (Triton's batching convention)."""
    from tritonclient.grpc import model_config_pb2

    inputs, outputs = onnx_io(model)
    batched = config.max_batch_size > 0
    for entries, specs in ((config.input, inputs), (config.output, outputs)):
        assert [e.name for e in entries] == [name for name, _, _ in specs]
        for entry, (name, elem_type, dims) in zip(entries, specs, strict=True):
            assert model_config_pb2.DataType.Name(entry.data_type) == TRITON_TYPE[elem_type], name
            if batched:
                assert dims[0] is None, f"{name}: a batching config needs a dynamic first dim"
                dims = dims[1:]
            assert list(entry.dims) == [-1 if d is None else d for d in dims], name


def multi_io_model(path: Path) -> onnx.ModelProto:
    """Two inputs (int64 tokens [2, seq], float scale [2, 1]), three outputs (float, int64, bool); fixed batch 2."""
    nodes = [
        helper.make_node("Cast", ["tokens"], ["tokens_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["tokens_f", "scale"], ["scaled"]),
        helper.make_node("ArgMax", ["tokens"], ["argmax"], axis=1, keepdims=0),
        helper.make_node("Greater", ["scaled", "zero"], ["positive"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, [2, "seq"]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [2, 1]),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [2, "seq"]),
            helper.make_tensor_value_info("argmax", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, [2, "seq"]),
        ],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def test_demo_model_repository(demo_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dynamic-batch demo model, every option set: each config field matches the ONNX graph and the options."""
    from tritonclient.grpc import model_config_pb2

    _require_schema()
    repo = tmp_path / "repo"
    args = ["triton", str(demo_artifacts["onnx"]), "--repo", str(repo), "--name", "lambda_demo"]
    args += ["--max-batch-size", "8", "--instances", "2", "--gpu", "--preferred-batch-size", "4"]
    args += [
        "--preferred-batch-size",
        "2,8",
        "--max-queue-delay-us",
        "250",
        "--tensorrt",
        "--tensorrt-precision",
        "fp16",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "tritonserver --model-repository=/models" in out

    model = onnx.load(demo_artifacts["onnx"])
    assert (repo / "lambda_demo" / "1" / "model.onnx").read_bytes() == model.SerializeToString()
    assert sorted(p.name for p in repo.iterdir()) == ["lambda_demo"]  # no staging folder left behind
    config = parse_config(repo / "lambda_demo" / "config.pbtxt")
    assert config.name == "lambda_demo"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 8
    check_tensors(config, model)
    assert [e.name for e in config.input] == [demo_artifacts["input_name"]]
    assert [e.name for e in config.output] == [demo_artifacts["output_name"]]
    assert list(config.input[0].dims) == list(demo_artifacts["input_shape"][1:])  # (32, 32, 3)
    assert len(config.instance_group) == 1
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    accelerators = config.optimization.execution_accelerators
    assert len(accelerators.gpu_execution_accelerator) == 1 and not accelerators.cpu_execution_accelerator
    trt = accelerators.gpu_execution_accelerator[0]
    assert trt.name == "tensorrt"
    assert dict(trt.parameters) == {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30)}


def test_demo_model_defaults(demo_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No options: name from the file, batching at the default size, dynamic batching on, one CPU instance."""
    from tritonclient.grpc import model_config_pb2

    _require_schema()
    code, _, err = run_cli(["triton", str(demo_artifacts["onnx"]), "--repo", str(tmp_path), "-q"], capsys)
    assert code == 0, err
    config = parse_config(tmp_path / "demo" / "config.pbtxt")
    assert config.name == "demo"
    assert config.max_batch_size == triton.DEFAULT_MAX_BATCH_SIZE
    check_tensors(config, onnx.load(demo_artifacts["onnx"]))
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert config.HasField("dynamic_batching")
    assert not config.dynamic_batching.preferred_batch_size
    assert not config.HasField("optimization")

    # --max-batch-size 0 on a batching model: no batching, the batch dim stays in dims as -1
    code, _, err = run_cli(
        ["triton", str(demo_artifacts["onnx"]), "--repo", str(tmp_path), "--max-batch-size", "0", "--force"], capsys
    )
    assert code == 0, err
    config = parse_config(tmp_path / "demo" / "config.pbtxt")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, *demo_artifacts["input_shape"][1:]]
    assert not config.HasField("dynamic_batching")


def test_multi_io_fixed_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hand-built model, int64/float inputs, float/int64/bool outputs, fixed batch: max_batch_size 0, full dims."""
    from tritonclient.grpc import model_config_pb2

    _require_schema()
    model = multi_io_model(tmp_path / "multi.onnx")
    repo = tmp_path / "repo"
    code, _, err = run_cli(["triton", str(tmp_path / "multi.onnx"), "--repo", str(repo), "--instances", "3"], capsys)
    assert code == 0, err
    config = parse_config(repo / "multi" / "config.pbtxt")
    assert config.max_batch_size == 0
    check_tensors(config, model)
    assert [(e.name, list(e.dims)) for e in config.input] == [("tokens", [2, -1]), ("scale", [2, 1])]
    assert [model_config_pb2.DataType.Name(e.data_type) for e in config.input] == ["TYPE_INT64", "TYPE_FP32"]
    assert [(e.name, list(e.dims)) for e in config.output] == [
        ("scaled", [2, -1]),
        ("argmax", [2]),
        ("positive", [2, -1]),
    ]
    assert [model_config_pb2.DataType.Name(e.data_type) for e in config.output] == [
        "TYPE_FP32",
        "TYPE_INT64",
        "TYPE_BOOL",
    ]
    assert "zero" not in [e.name for e in config.input]  # an initializer is not an input
    assert not config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert onnx.load(repo / "multi" / "1" / "model.onnx") == model

    # batching options contradict a fixed batch: exit 2 with one line naming the fixed tensors
    for extra in (["--max-batch-size", "4"], ["--dynamic-batching"], ["--preferred-batch-size", "2"]):
        code, _, err = run_cli(["triton", str(tmp_path / "multi.onnx"), "--repo", str(tmp_path / "x"), *extra], capsys)
        assert code == 2, extra
        assert err.startswith("lambda-export: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "x" / "multi").exists()


def test_missing_output_shapes_come_from_shape_inference() -> None:
    """An output declared without type or shape gets both from ONNX shape inference; a sequence is refused."""
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Shape", ["x"], ["s"])]
    graph = helper.make_graph(
        nodes,
        "no_shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_value_info("y", onnx.TypeProto()), helper.make_tensor_value_info("s", TensorProto.INT64, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    config = triton.build_model_config(model, triton.TritonOptions(name="m"))
    assert config["max_batch_size"] == 0  # `s` has shape [2]: a fixed first dim, so no batching
    assert [(o["name"], str(o["data_type"]), o["dims"]) for o in config["output"]] == [
        ("y", "TYPE_FP32", [-1, 8]),
        ("s", "TYPE_INT64", [2]),
    ]
    sequence = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    model.graph.output.append(sequence)
    with pytest.raises(triton.InputError, match="sequence, not a tensor"):
        triton.build_model_config(model, triton.TritonOptions(name="m"))


OPTION_SETS: list[dict[str, Any]] = [
    {},
    {"max_batch_size": 0},
    {"max_batch_size": 4, "dynamic_batching": False, "instances": 2},
    {"gpu": True, "preferred_batch_sizes": [8, 2], "max_queue_delay_us": 0},
    {"gpu": True, "tensorrt": True},
    {"gpu": True, "tensorrt": True, "tensorrt_precision": "FP16", "max_queue_delay_us": 100, "instances": 4},
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(o) or "defaults")
def test_fallback_text_equals_protobuf_text(demo_artifacts: dict, tmp_path: Path, options: dict[str, Any]) -> None:
    """The direct writer (no tritonclient) prints byte for byte what text_format prints from the message."""
    _require_schema()
    model = onnx.load(demo_artifacts["onnx"])
    config = triton.build_model_config(model, triton.TritonOptions(name="demo", **options))
    assert triton.render_text_fallback(config) == triton.render_text_protobuf(config)


def test_fallback_text_multi_io_and_odd_names(tmp_path: Path) -> None:
    """Same equality for the fixed-batch model, and for names that need escaping or are not ASCII."""
    _require_schema()
    model = multi_io_model(tmp_path / "multi.onnx")
    config = triton.build_model_config(model, triton.TritonOptions(name="multi"))
    assert triton.render_text_fallback(config) == triton.render_text_protobuf(config)
    for value in [*model.graph.input[:1], *model.graph.output[:1]]:
        value.name = {"tokens": 'tok"en\\s\t:0', "scaled": "sortie_é/ü:0"}[value.name]
    odd = triton.build_model_config(model, triton.TritonOptions(name="multi"))
    text = triton.render_text_fallback(odd)
    assert text == triton.render_text_protobuf(odd)
    assert parse_text(text).input[0].name == 'tok"en\\s\t:0'
    assert parse_text(text).output[0].name == "sortie_é/ü:0"


def parse_text(text: str) -> Any:
    from google.protobuf import text_format

    return text_format.Parse(text, _require_schema().ModelConfig())


def test_without_tritonclient(
    demo_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tritonclient unimportable the command still writes the repository, with the very same config.pbtxt."""
    _require_schema()
    code, _, err = run_cli(["triton", str(demo_artifacts["onnx"]), "--repo", str(tmp_path / "a"), "--gpu"], capsys)
    assert code == 0, err
    for module in ("tritonclient", "tritonclient.grpc", "tritonclient.grpc.model_config_pb2"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError
    monkeypatch.setitem(sys.modules, "tritonclient.grpc._model_config_pb2", None)
    assert triton.model_config_message_class() is None
    code, _, err = run_cli(["triton", str(demo_artifacts["onnx"]), "--repo", str(tmp_path / "b"), "--gpu"], capsys)
    assert code == 0, err
    first = (tmp_path / "a" / "demo" / "config.pbtxt").read_text(encoding="utf-8")
    assert (tmp_path / "b" / "demo" / "config.pbtxt").read_text(encoding="utf-8") == first


def test_versions_force_and_atomicity(
    demo_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing version is kept without --force; --version adds one; a failed write leaves nothing behind."""
    onnx_path = str(demo_artifacts["onnx"])
    repo = tmp_path / "repo"
    assert run_cli(["triton", onnx_path, "--repo", str(repo)], capsys)[0] == 0
    config_path = repo / "demo" / "config.pbtxt"
    before = config_path.read_text(encoding="utf-8")
    marker = repo / "demo" / "1" / "marker"
    marker.write_text("old version")

    code, _, err = run_cli(["triton", onnx_path, "--repo", str(repo)], capsys)
    assert code == 2 and "--force" in err
    assert marker.exists()
    code, _, err = run_cli(["triton", onnx_path, "--repo", str(repo), "--instances", "2", "--version", "2"], capsys)
    assert code == 2 and "different configuration" in err  # would change version 1's serving config
    assert config_path.read_text(encoding="utf-8") == before

    assert run_cli(["triton", onnx_path, "--repo", str(repo), "--version", "2"], capsys)[0] == 0
    assert sorted(p.name for p in (repo / "demo").iterdir()) == ["1", "2", "config.pbtxt"]
    assert marker.exists()

    code, _, err = run_cli(["triton", onnx_path, "--repo", str(repo), "--force", "--instances", "2"], capsys)
    assert code == 0, err
    assert not marker.exists() and (repo / "demo" / "1" / "model.onnx").exists()
    assert "count: 2" in config_path.read_text(encoding="utf-8")

    def broken(model: Any, folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(triton, "_serialize_model", broken)
    code, _, err = run_cli(["triton", onnx_path, "--repo", str(repo), "--name", "fresh"], capsys)
    assert code == 2 and "No space left" in err
    code, _, err = run_cli(["triton", onnx_path, "--repo", str(repo), "--force"], capsys)
    assert code == 2
    assert sorted(p.name for p in repo.iterdir()) == ["demo"]  # no "fresh", no hidden staging folder
    assert (repo / "demo" / "1" / "model.onnx").read_bytes() == onnx.load(onnx_path).SerializeToString()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tensorrt"], "--gpu"),
        (["--tensorrt-precision", "FP16"], "--tensorrt"),
        (["--name", "../escape"], "model name"),
        (["--preferred-batch-size", "64"], "between 1 and max_batch_size"),
        (["--no-dynamic-batching", "--max-queue-delay-us", "10"], "dynamic batching"),
        (["--preferred-batch-size", "x"], "positive integer"),
        (["--instances", "0"], "--instances"),
    ],
)
def test_bad_options_exit_2(
    demo_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, _, err = run_cli(["triton", str(demo_artifacts["onnx"]), "--repo", str(tmp_path), *extra], capsys)
    assert code == 2
    assert message in err and err.startswith("lambda-export: error:")
    assert list(tmp_path.iterdir()) == []


def test_bad_model_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    for path, message in ((tmp_path / "missing.onnx", "no such file"), (tmp_path / "junk.onnx", "not a valid ONNX")):
        code, _, err = run_cli(["triton", str(path), "--repo", str(tmp_path / "repo")], capsys)
        assert code == 2 and message in err
    code, _, err = run_cli(["triton", str(tmp_path / "junk.onnx")], capsys)  # --repo is required
    assert code == 2 and "--repo" in err
    assert not (tmp_path / "repo").exists()


def test_console_script(demo_artifacts: dict, tmp_path: Path) -> None:
    """`lambda-export triton` as a user types it (the command is registered by lambda_export.cli)."""
    exe = Path(sys.executable).with_name("lambda-export")
    command = [str(exe)] if exe.exists() else [sys.executable, "-c", "from lambda_export.cli import main; main()"]
    done = subprocess.run(
        [*command, "triton", str(demo_artifacts["onnx"]), "--repo", str(tmp_path), "--name", "m"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "1" / "model.onnx").is_file() and (tmp_path / "m" / "config.pbtxt").is_file()
    assert "triton" in subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60).stdout


# ---------------------------------------------------------------------------------------------------------------------
# examples/triton/client.py, offline


def load_client() -> Any:
    spec = importlib.util.spec_from_file_location("triton_client_example", ROOT / "examples" / "triton" / "client.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metadata_from_config(config: Any) -> dict[str, Any]:
    """What Triton's get_model_metadata(as_json=True) reports for this config (batch dim -1 when batching)."""
    from tritonclient.grpc import model_config_pb2

    def entry(item: Any) -> dict[str, Any]:
        prefix = ["-1"] if config.max_batch_size > 0 else []
        datatype = model_config_pb2.DataType.Name(item.data_type).removeprefix("TYPE_")
        return {"name": item.name, "datatype": datatype, "shape": prefix + [str(d) for d in item.dims]}

    return {"inputs": [entry(i) for i in config.input], "outputs": [entry(o) for o in config.output]}


def test_client_builds_requests(demo_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """client.py: InferInputs from the demo npz fit the config lambda-export wrote (names, shapes, dtypes, bytes)."""
    _require_schema()
    client = load_client()
    assert (
        run_cli(["triton", str(demo_artifacts["onnx"]), "--repo", str(tmp_path), "--max-batch-size", "3"], capsys)[0]
        == 0
    )
    config = parse_config(tmp_path / "demo" / "config.pbtxt")
    arrays = client.load_inputs(demo_artifacts["inputs"])
    client.check_against_metadata(arrays, metadata_from_config(config))

    inputs = client.build_infer_inputs(arrays)
    x = arrays[demo_artifacts["input_name"]]
    assert [i.name() for i in inputs] == [demo_artifacts["input_name"]] == [e.name for e in config.input]
    assert inputs[0].shape() == list(x.shape) == [4, 32, 32, 3]
    assert inputs[0].datatype() == "FP32"
    assert inputs[0]._get_content() == x.astype(np.float32).tobytes()  # binary payload, row-major

    chunks = list(client.split_batches(arrays, config.max_batch_size))
    assert [c[demo_artifacts["input_name"]].shape[0] for c in chunks] == [3, 1]
    assert np.array_equal(np.concatenate([c[demo_artifacts["input_name"]] for c in chunks]), x)

    with pytest.raises(ValueError, match="FP64"):
        client.check_against_metadata(
            {demo_artifacts["input_name"]: x.astype(np.float64)}, metadata_from_config(config)
        )
    with pytest.raises(ValueError, match="wants"):
        client.check_against_metadata({"other": x}, metadata_from_config(config))


def test_client_multi_io_requests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two inputs, int64 and float, fixed batch: one request, dtypes INT64/FP32, shapes as the config's full dims."""
    _require_schema()
    client = load_client()
    multi_io_model(tmp_path / "multi.onnx")
    assert run_cli(["triton", str(tmp_path / "multi.onnx"), "--repo", str(tmp_path / "repo")], capsys)[0] == 0
    config = parse_config(tmp_path / "repo" / "multi" / "config.pbtxt")
    arrays = {"tokens": np.arange(14, dtype=np.int64).reshape(2, 7), "scale": np.ones((2, 1), np.float32)}
    np.savez(tmp_path / "in.npz", **arrays)
    loaded = client.load_inputs(tmp_path / "in.npz")
    client.check_against_metadata(loaded, metadata_from_config(config))
    inputs = client.build_infer_inputs(loaded)
    assert [(i.name(), i.shape(), i.datatype()) for i in inputs] == [
        ("tokens", [2, 7], "INT64"),
        ("scale", [2, 1], "FP32"),
    ]
    assert inputs[0]._get_content() == arrays["tokens"].tobytes()
    assert len(list(client.split_batches(loaded, config.max_batch_size))) == 1
    with pytest.raises(ValueError, match="shape"):
        client.check_against_metadata({**arrays, "scale": np.ones((3, 1), np.float32)}, metadata_from_config(config))


def test_readme_commands_match_the_cli() -> None:
    """The README's docker line serves the folder the CLI writes, with the image the CLI prints."""
    readme = (ROOT / "examples" / "triton" / "README.md").read_text(encoding="utf-8")
    assert "tritonserver --model-repository=/models" in readme
    assert triton.TRITON_IMAGE in readme
    assert "lambda-export triton" in readme


class FakeTriton:
    """A loopback gRPC server speaking Triton's protocol for one model: config from config.pbtxt, ONNX Runtime behind.

    Like Triton it rejects requests larger than max_batch_size and shapes that don't fit the config's dims. It is a
    stand-in to exercise client.py's wire path, not a test of Triton itself.
    """

    def __init__(self, repo: Path, name: str) -> None:
        from concurrent import futures

        import grpc
        import onnxruntime as ort
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self.config = parse_config(repo / name / "config.pbtxt")
        self.session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        self.requests: list[list[int]] = []
        outer = self
        pb = service_pb2
        np_types = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}

        def datatype(item: Any) -> str:
            from tritonclient.grpc import model_config_pb2

            return model_config_pb2.DataType.Name(item.data_type).removeprefix("TYPE_")

        class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
            def ServerReady(self, request: Any, context: Any) -> Any:
                return pb.ServerReadyResponse(ready=True)

            def ModelReady(self, request: Any, context: Any) -> Any:
                return pb.ModelReadyResponse(ready=request.name == name)

            def ModelConfig(self, request: Any, context: Any) -> Any:
                return pb.ModelConfigResponse(config=outer.config)

            def ModelMetadata(self, request: Any, context: Any) -> Any:
                meta = metadata_from_config(outer.config)
                tensor = pb.ModelMetadataResponse.TensorMetadata
                return pb.ModelMetadataResponse(
                    name=name,
                    versions=["1"],
                    platform="onnxruntime_onnx",
                    inputs=[
                        tensor(name=i["name"], datatype=i["datatype"], shape=map(int, i["shape"]))
                        for i in meta["inputs"]
                    ],
                    outputs=[
                        tensor(name=o["name"], datatype=o["datatype"], shape=map(int, o["shape"]))
                        for o in meta["outputs"]
                    ],
                )

            def ModelInfer(self, request: Any, context: Any) -> Any:
                import grpc

                config = outer.config
                batched = config.max_batch_size > 0
                feeds = {}
                for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
                    entry = next(e for e in config.input if e.name == tensor.name)
                    shape = list(tensor.shape)
                    dims = shape[1:] if batched else shape
                    fits = len(dims) == len(entry.dims) and all(
                        d in (-1, s) for d, s in zip(entry.dims, dims, strict=True)
                    )
                    if tensor.datatype != datatype(entry) or not fits or (batched and shape[0] > config.max_batch_size):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad input {tensor.name} {shape}")
                    feeds[tensor.name] = np.frombuffer(raw, np_types[tensor.datatype]).reshape(shape)
                outer.requests.append([int(s) for s in request.inputs[0].shape])
                names = [o.name for o in request.outputs] or [o.name for o in config.output]
                results = outer.session.run(names, feeds)
                response = pb.ModelInferResponse(model_name=name, model_version="1")
                for out_name, value in zip(names, results, strict=True):
                    entry = next(e for e in config.output if e.name == out_name)
                    response.outputs.add(name=out_name, datatype=datatype(entry), shape=value.shape)
                    response.raw_output_contents.append(np.ascontiguousarray(value).tobytes())
                return response

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


def test_client_end_to_end_on_a_stand_in_server(
    demo_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """client.py main(): metadata, config, split into max_batch_size requests, outputs equal ORT's (exit 0)."""
    _require_schema()
    client = load_client()
    repo = tmp_path / "repo"
    args = [
        "triton",
        str(demo_artifacts["onnx"]),
        "--repo",
        str(repo),
        "--name",
        "lambda_demo",
        "--max-batch-size",
        "3",
    ]
    assert run_cli(args, capsys)[0] == 0
    server = FakeTriton(repo, "lambda_demo")
    try:
        url = f"127.0.0.1:{server.port}"
        saved = tmp_path / "out.npz"
        argv = ["--url", url, "--model", "lambda_demo", "--inputs", str(demo_artifacts["inputs"]), "--save", str(saved)]
        code = client.main([*argv, "--onnx", str(demo_artifacts["onnx"])])
        out = capsys.readouterr().out
        assert code == 0, out
        assert server.requests == [[3, 32, 32, 3], [1, 32, 32, 3]]  # 4 samples, max_batch_size 3
        assert f"{demo_artifacts['output_name']}: float32 [4, 10]" in out
        with np.load(saved) as got, np.load(demo_artifacts["reference"]) as ref:
            name = demo_artifacts["output_name"]
            # TF reference vs ORT through the wire: the export's parity tolerance
            np.testing.assert_allclose(got[name], ref[name], atol=1e-4, rtol=1e-3)
        assert client.main([*argv, "--reference", str(demo_artifacts["reference"])]) == 0
        assert client.main([*argv, "--model", "other"]) == 2  # not ready → exit 2
    finally:
        server.stop()
