"""The relative rule's verdict both ways on deep models: correct exports pass, sabotaged ones fail at the right layer.

Models (random weights, batch norms calibrated on one training batch, so that activations neither explode nor vanish
and outputs depend on the inputs): keras.applications MobileNetV3Large and ResNet50 at 32×32, and LambdaResNet-50
(lambda_layers.models, global relative position embeddings) at 64×64. Each is exported once; the sabotages edit the
exported graph (tests/parity/sabotage.py): one weight tensor off by 1e-3 relative, a batch norm without its epsilon, a
position embedding shifted by one position, a transposed head order. The measurements behind the rule's factor are in
:class:`lambda_export.parity.ParityConfig`'s docstring.

Each sabotage must fail by a wide margin, at least 10× the allowance on the output and at its layer, since float
kernels (AVX2 or AVX-512, oneDNN, MLAS) move these errors by small factors from one x86 CPU to another. A weight of
MobileNetV3's first blocks is chosen for that: TensorFlow float32's error grows with depth, so a 1e-3 change of
``expanded_conv_6_project`` was only 33× TensorFlow's error at its layer (5.7× the allowance), of
``expanded_conv_project`` 353× (64×); a batch norm without epsilon 62× at ``expanded_conv_3_expand_bn`` (its variances
are large), 2.6e3× at ``expanded_conv_1_expand_bn`` (measured on x86-64 AVX2, batch 2, N(0, 1) inputs).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import sabotage  # tests/parity/sabotage.py (pytest puts each test folder on sys.path)

from lambda_export.conversion import convert
from lambda_export.loading import load_model
from lambda_export.parity import DEFAULT_FACTOR, ParityReport, verify
from lambda_layers import models

pytestmark = pytest.mark.slow

ONE_SET = {"providers": ["cpu"], "batch_sizes": (2,), "distributions": ("normal",)}


def _exported(model: keras.Model, size: int, branches: float | None = None) -> dict:
    sabotage.calibrate(model, np.random.default_rng(1).standard_normal((16, size, size, 3)).astype(np.float32))
    if branches is not None:
        sabotage.damp_residual_branches(model, branches)
    return {"model": model, "loaded": load_model(model), "onnx": convert(model).model}


@pytest.fixture(scope="module")
def mobilenet() -> dict:
    keras.utils.set_random_seed(0)
    return _exported(keras.applications.MobileNetV3Large(weights=None, input_shape=(32, 32, 3), classes=10), 32)


@pytest.fixture(scope="module")
def resnet50() -> dict:
    keras.utils.set_random_seed(0)
    return _exported(keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10), 32)


@pytest.fixture(scope="module")
def lambda_resnet50() -> dict:
    keras.utils.set_random_seed(0)
    model = models.lambda_resnet50((64, 64, 3), 10, receptive_kernel=None, zero_init_residual=False)
    return _exported(model, 64, branches=0.5)  # residual branches at half scale: see damp_residual_branches


def _check(case: dict, onnx_model=None, **options) -> ParityReport:
    return verify(None, case["onnx"] if onnx_model is None else onnx_model, loaded=case["loaded"], **options)


@pytest.mark.parametrize("name", ["mobilenet", "resnet50", "lambda_resnet50"])
def test_correct_deep_models_pass(name, request):
    case = request.getfixturevalue(name)
    report = _check(case, providers=["cpu"], locate="always" if name == "mobilenet" else "never")
    assert report.passed, [(r.batch_size, r.distribution, r.metrics.truth) for r in report.results]
    assert report.float64_available and report.warnings == []
    for row in report.results:
        truth = row.metrics.truth
        assert row.metrics.rule == "relative" and truth.candidate_max <= truth.allowed_max
        assert truth.ratio_max < DEFAULT_FACTOR and truth.ratio_rms < DEFAULT_FACTOR
    if name == "mobilenet":  # every layer within the rule too: the locator blames none
        assert report.first_divergent_layer is None and len(report.divergence) > 100
        assert all(d.passed and d.rule == "relative" for d in report.divergence)


SABOTAGES = {
    "weight off by 1e-3": (
        "mobilenet",
        lambda case: sabotage.scale_weight(case["onnx"], "expanded_conv_project", 1.001),
        {"expanded_conv_project", "expanded_conv_project_bn"},
    ),
    "batch norm without epsilon": (
        "mobilenet",
        lambda case: sabotage.drop_bn_epsilon(
            case["onnx"], case["model"], "expanded_conv_1_expand_bn", "expanded_conv_1_expand"
        ),
        {"expanded_conv_1_expand", "expanded_conv_1_expand_bn"},
    ),
    "position embedding shifted by one": (
        "lambda_resnet50",
        lambda case: sabotage.shift_position_embedding(case["onnx"], case["model"].get_layer("stage3_block2_lambda")),
        {"stage3_block2_lambda"},
    ),
    "transposed head order": (
        "lambda_resnet50",
        lambda case: sabotage.transpose_heads(case["onnx"], case["model"].get_layer("stage2_block3_lambda")),
        {"stage2_block3_lambda"},
    ),
    "lambda projection off by 1e-3": (
        "lambda_resnet50",
        lambda case: sabotage.scale_weight(case["onnx"], "stage2_block4_lambda", 1.001),
        {"stage2_block4_lambda"},
    ),
}


@pytest.mark.parametrize("what", list(SABOTAGES))
def test_sabotaged_exports_fail_at_their_layer(what, request):
    name, sabotaged, expected = SABOTAGES[what]
    case = request.getfixturevalue(name)
    report = _check(case, sabotaged(case), **ONE_SET)
    assert not report.passed
    (row,) = report.results
    # measured (x86-64 AVX2): outputs 35× (weight), 50×, 1.2e4×, 3.8e4×, 42× (lambda projection) the allowance
    assert row.metrics.rule == "relative" and row.metrics.truth.excess > 10, row.metrics.truth
    assert report.first_divergent_layer in expected, report.first_divergent_layer
    culprit = next(i for i, d in enumerate(report.divergence) if expected & {d.layer, *d.fused})
    layer = report.divergence[culprit]
    assert not layer.passed and layer.rule == "relative"
    # measured: 64×, 425×, 7.5e4×, 9.5e4×, 102× the allowance at the layer
    assert layer.truth.excess > 10 and layer.truth.ratio_max > 10 * DEFAULT_FACTOR, layer.truth
    assert all(d.passed for d in report.divergence[:culprit])  # no layer blamed before it


def test_random_mobilenet_outputs_are_constant_and_say_so():
    """keras.applications.MobileNetV3Small(weights=None), uncalibrated: the same probabilities for any input."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=10)
    report = verify(model, convert(model).model, providers=["cpu"])
    (output,) = report.insensitive_outputs
    assert report.insensitive_outputs[output]["samples"] == 10
    assert any(output in w and "inputs=FILE.npz" in w for w in report.warnings)
