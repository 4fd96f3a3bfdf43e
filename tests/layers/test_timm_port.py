"""timm's LambdaResNets and ``lambda_layers.from_timm`` compute the same logits from the same checkpoint.

Each network is built by timm with random weights (``pretrained=False``; no download) and batch-norm statistics far
from the identity (otherwise a wrongly mapped statistic would hardly change the output), saved with
``safetensors.torch.save_file``, and loaded into Keras; both run in eval mode on random and structured 256x256 images.
timm runs in a child process (timm_reference.py): importing it after TensorFlow segfaults here (triton, which
torchvision pulls in through torch._dynamo, clashes with TensorFlow's native libraries), so this module imports torch
(for ``.pth`` files) but never timm.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional dependency: pip install -e '.[torch]'")
if importlib.util.find_spec("timm") is None:  # not importorskip: importing timm here would crash (see above)
    pytest.skip("timm is an optional dependency: pip install -e '.[torch]'", allow_module_level=True)

from safetensors.numpy import load_file  # noqa: E402

from lambda_layers import TimmCheckpointError, from_timm, timm_state_dict  # noqa: E402
from lambda_layers.timm_weights import load_timm_checkpoint  # noqa: E402

# Float32 on both sides, different summation orders (oneDNN vs Eigen convolutions, matmul blockings): logits agree to
# ~1e-5 of their scale (max |timm logits|), so 1e-4 has a 10x margin. Where timm's own float32 logits are further from
# the float64 truth (random networks amplify rounding on smooth images: lambda_resnet50ts on the gradient image, where
# timm float32 is ~2e-4 off float64), two float32 implementations can differ by up to about twice that, hence the
# allowance of 3x timm's own float32 error; test_float64_logits_match shows the mapping itself is exact (~1e-12).
RTOL32 = 1e-4
RTOL64 = 1e-9
REFERENCE = Path(__file__).with_name("timm_reference.py")
KINDS = ("random", "gradient", "checkerboard")

NETWORKS = [
    "lambda_resnet26t",
    "lambda_resnet26rpt_256",
    pytest.param("lambda_resnet50ts", marks=pytest.mark.slow),  # 21.5 M parameters, ~45 s here
]


def timm_reference(name: str, out: Path, *extra: str) -> dict[str, Any]:
    """Run timm_reference.py: the checkpoint files in ``out`` and timm's outputs (see its docstring)."""
    done = subprocess.run(
        [sys.executable, str(REFERENCE), name, str(out), *extra], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(out / "reference.npz") as data:
        return {key: data[key] for key in data.files} | {"name": name, "path": out / "model.safetensors", "dir": out}


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """Each network's port, made once per module on first use (see :func:`port`)."""
    cache: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in cache:
            extra = ("--pth",) if name == "lambda_resnet26t" else ()
            cache[name] = timm_reference(name, tmp_path_factory.mktemp(name), *extra)
            cache[name]["keras"] = from_timm(name, checkpoint=cache[name]["path"])
        return cache[name]

    return get


@pytest.fixture(params=NETWORKS)
def port(request: pytest.FixtureRequest, ports: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """One network: its timm checkpoint (and .pth for lambda_resnet26t), timm's outputs in float32 and float64, and
    ``keras``, the Keras model loaded from the safetensors file."""
    return ports(request.param)


@pytest.fixture
def port26t(ports: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    return ports("lambda_resnet26t")


def test_float32_logits_match(port: dict[str, Any]) -> None:
    got = port["keras"].predict(to_nhwc(port["x"]), verbose=0)
    assert got.shape == port["want32"].shape == (3, 1000)
    for i, kind in enumerate(KINDS):
        want, truth = port["want32"][i], port["want64"][i]
        scale = float(np.abs(want).max())
        assert scale > 0.1 and np.std(want) > 0.01 * scale, "degenerate logits would not test the mapping"
        error = float(np.abs(got[i] - want).max()) / scale
        timm_own = float(np.abs(want - truth).max()) / scale
        assert error <= max(RTOL32, 3 * timm_own), f"{kind}: |keras - timm| = {error:.2e} of the logits' scale"
        assert got[i].argmax() == want.argmax()


def test_float64_logits_match(port: dict[str, Any]) -> None:
    """Both sides in float64 agree to ~1e-12 of the logits' scale on every image: the weight mapping is exact."""
    model = from_timm(port["name"], checkpoint=port["path"], dtype="float64")
    assert {w.dtype for w in model.weights} == {"float64"}
    got = model.predict(to_nhwc(port["x"]).astype(np.float64), verbose=0)
    want = port["want64"]
    assert (np.abs(got - want).max(axis=1) <= RTOL64 * np.abs(want).max(axis=1)).all()


def test_state_dict_round_trips(port: dict[str, Any]) -> None:
    """timm_state_dict gives timm's own state dict back, bit for bit (keys, layouts, values)."""
    want = {k: v for k, v in load_file(port["path"]).items() if not k.endswith("num_batches_tracked")}
    got = timm_state_dict(port["keras"])
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_pth_checkpoint_and_tensor_state_dict(port26t: dict[str, Any]) -> None:
    """A ``.pth`` file (read with weights_only=True) and a state dict of torch tensors load like the safetensors."""
    model = from_timm("timm/lambda_resnet26t.c1_in1k", checkpoint=port26t["dir"] / "model.pth")
    want = timm_state_dict(port26t["keras"])
    for source in ("pth", "tensors"):
        if source == "tensors":
            load_timm_checkpoint(model, {key: np.zeros_like(value) for key, value in want.items()})
            load_timm_checkpoint(model, torch.load(port26t["dir"] / "model.pth", weights_only=True))
        got = timm_state_dict(model)
        assert list(got) == list(want)
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{source}: {key}")


def test_features_without_classifier(port26t: dict[str, Any]) -> None:
    """num_classes=0: the pooled features timm's forward_head(pre_logits=True) gives; the classifier is ignored."""
    model = from_timm(port26t["name"], checkpoint=port26t["path"], num_classes=0)
    assert model.output_shape == (None, 2048)
    got = model.predict(to_nhwc(port26t["x"]), verbose=0)
    want = port26t["features"]
    assert np.abs(got - want).max() <= RTOL32 * np.abs(want).max()


def test_another_networks_checkpoint_is_refused(port26t: dict[str, Any]) -> None:
    """A lambda_resnet26t checkpoint in lambda_resnet26rpt_256: the first difference is the first relative table."""
    with pytest.raises(TimmCheckpointError, match=r"`stages\.2\.1\.self_attn\.pos_emb` \(31, 31, 16\) is missing") as e:
        from_timm("lambda_resnet26rpt_256", checkpoint=port26t["path"])
    assert e.value.tensor == "stages.2.1.self_attn.pos_emb" and e.value.reason == "missing"
