"""The pass pipeline is never worse than tf2onnx alone: a pass that raises, or whose result fails the conversion's
checks, is skipped with a warning that names it, and the export still computes what the Keras model computes."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from lambda_export import convert
from lambda_export.bench import LayerConfig
from lambda_export.passes import pipelines
from lambda_export.passes.base import GraphPass, PassContext


def _model():
    return LayerConfig("local", (6, 6), 4, d=8, k=4, h=2, u=1, r=3).build()


def _outputs(model_proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _raises(ctx: PassContext) -> bool:
    ctx.model.graph.node.pop()  # half-done work before the failure: must be undone
    raise RuntimeError("injected failure")


def _corrupts(ctx: PassContext) -> bool:
    if not ctx.model.graph.node or ctx.model.graph.node[-1].op_type == "Identity":
        return False
    last = ctx.model.graph.node[-1]
    last.input[0] = "no_such_tensor"  # an invalid graph: reads a tensor nothing defines
    return True


@pytest.mark.parametrize(
    ("impl", "why"), [(_raises, "it failed (RuntimeError: injected failure)"), (_corrupts, "failed the checks")]
)
def test_a_failing_pass_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch, impl, why: str) -> None:
    keras_model = _model()
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 4)).astype(np.float32)
    expected = np.asarray(keras_model(x))
    clean = convert(keras_model)
    bad = GraphPass(impl, name="injected_pass")
    monkeypatch.setattr(pipelines, "CLEANUP", (*pipelines.CLEANUP, bad))
    result = convert(keras_model)
    skipped = [w for w in result.warnings if "pass injected_pass was skipped" in w]
    assert skipped and why in skipped[0], result.warnings
    assert "injected_pass" not in result.passes
    np.testing.assert_allclose(_outputs(result.model, x), expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(_outputs(result.model, x), _outputs(clean.model, x))  # the same graph as without it


def test_the_cli_reports_the_skipped_pass(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    from lambda_export import cli

    path = tmp_path / "layer.keras"
    _model().save(path)
    monkeypatch.setattr(pipelines, "CLEANUP", (*pipelines.CLEANUP, GraphPass(_raises, name="injected_pass")))
    cli.STATE.verbose, cli.STATE.quiet, cli.STATE.json = 0, False, False
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(path), "-o", str(tmp_path / "layer.onnx"), "--json", "--providers", "cpu"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    warnings = json.loads(out)["conversion"]["warnings"]
    assert any("pass injected_pass was skipped" in w for w in warnings), warnings
