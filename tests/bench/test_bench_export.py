"""The benchmark times the graph ``convert`` ships: what it writes and times is ``convert(optimize="speed")``'s output,
byte for byte, and its ``--optimize size`` runner is ``convert(optimize="size")``'s."""

from __future__ import annotations

from pathlib import Path

SMALL = {"mode": "local", "spatial": (8, 8), "channels": 8, "d": 16, "k": 8, "h": 4, "u": 1, "r": 3}


def test_the_timed_graph_is_what_convert_returns(tmp_path: Path) -> None:
    from lambda_export.bench import BenchSettings, LayerConfig
    from lambda_export.bench.runners import portable_export, serialize_model
    from lambda_export.conversion import convert
    from lambda_export.io import model_bytes

    model = LayerConfig(**SMALL).build()
    exported = portable_export(model, BenchSettings(verbose=False))
    shipped = convert(model, tmp_path / "shipped.onnx", optimize="speed")
    assert model_bytes(exported.model) == model_bytes(shipped.model)
    assert exported.performance_passes and set(exported.performance_passes) <= set(shipped.passes)
    # the file the benchmark writes (and OpenVINO and the memory worker load) is the file the command writes
    path, size = serialize_model(exported.model, tmp_path, "timed.onnx")
    assert Path(path).read_bytes() == Path(shipped.path).read_bytes() and size == Path(path).stat().st_size
    # the performance passes changed the graph here, so the size graph is timed too: convert's own
    assert exported.size_model is not None
    assert model_bytes(exported.size_model) == model_bytes(convert(model, optimize="size").model)
    # without compare_raw (and for the GPU table) there is one conversion
    assert portable_export(model, BenchSettings(verbose=False, compare_raw=False)).size_model is None
