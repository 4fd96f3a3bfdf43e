"""What can be benchmarked, and how a fresh process rebuilds it.

* :class:`LayerConfig`: one lambda layer in a one-layer Keras model (the grid of ``benchmarks/suite.py``; the tests
  build small layers with it too).
* :data:`BUILTIN_MODELS` / :func:`build_builtin`: the two LambdaResNets of ``lambda_layers.models`` by name.
* :func:`build_from_spec`: the Keras model of a JSON-able spec (``{"kind": "layer" | "builtin" | "path", ...}``),
  which is how the memory subprocesses rebuild the model the parent process measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["BUILTIN_MODELS", "LayerConfig", "build_builtin", "build_from_spec"]


@dataclass(frozen=True)
class LayerConfig:
    """One lambda layer in a one-layer Keras model: (b, *spatial, c) -> (b, *spatial, d).

    ``mode`` is ``absolute`` (global, learned (n, n, k, u) embedding), ``relative`` (global, relative table gathered
    to (n, n, k, u)) or ``local`` (lambda convolution with receptive field ``r``); ``spatial`` is (H, W) for a 2D
    layer (:class:`~lambda_layers.layers.LambdaNetwork2DConv`) and (T,) for a 1D layer
    (:class:`~lambda_layers.layers.LambdaNetwork1DConv`).
    """

    mode: str
    spatial: tuple[int, ...]
    channels: int
    batch: int = 1
    d: int = 64
    k: int = 16
    h: int = 4
    u: int = 1
    r: int = 7

    @property
    def rank(self) -> int:
        return len(self.spatial)

    @property
    def n(self) -> int:
        return math.prod(self.spatial)

    @property
    def v(self) -> int:
        return self.d // self.h

    @property
    def is_global(self) -> bool:
        return self.mode in ("absolute", "relative")

    @property
    def name(self) -> str:
        size = "x".join(map(str, self.spatial))
        mode = "global" if self.rank == 1 and self.mode == "absolute" else self.mode
        mode = f"local r={self.r}" if self.mode == "local" else mode
        return f"{self.rank}D {mode} {size}x{self.channels} u={self.u} b={self.batch}"

    @property
    def embedding_bytes(self) -> int:
        """Bytes of the (n, m, k, u) float32 position embedding a global layer multiplies with (0 for local)."""
        return self.n * self.n * self.k * self.u * 4 if self.is_global else 0

    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, *self.spatial, self.channels)

    def build(self) -> Any:
        """The one-layer Keras model (weights seeded)."""
        import keras

        from lambda_layers.layers import LambdaNetwork1DConv, LambdaNetwork2DConv

        keras.utils.set_random_seed(0)
        layer_cls = LambdaNetwork2DConv if self.rank == 2 else LambdaNetwork1DConv
        kwargs: dict[str, Any] = {"absolute": {"size": self.n}, "relative": {"relative": True}}.get(self.mode, {})
        if self.mode == "local":
            kwargs = {"receptive_kernel": self.r}
        inputs = keras.Input((*self.spatial, self.channels), name="x")
        outputs = layer_cls(self.d, key_depth=self.k, intra_depth=self.u, heads=self.h, name="lambda", **kwargs)(inputs)
        return keras.Model(inputs, outputs, name="lambda_layer")


BUILTIN_MODELS = {
    "demo": "the demo LambdaResNet (lambda_layers.models.build_demo_model): 32×32×3 → 10, local lambda r=7",
    "lambda_resnet26_128": "LambdaResNet-26 (lambda_layers.models.lambda_resnet26) at 128×128×3 → 1000, local r=23",
}


def build_builtin(name: str) -> Any:
    """The Keras model of the built-in model ``name`` (a key of :data:`BUILTIN_MODELS`), weights seeded."""
    import keras

    from lambda_layers import models

    keras.utils.set_random_seed(0)
    if name == "demo":
        return models.build_demo_model(seed=0)
    if name == "lambda_resnet26_128":
        return models.lambda_resnet26((128, 128, 3), 1000)
    raise ValueError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTIN_MODELS)}")


def build_from_spec(spec: dict[str, Any]) -> Any:
    """The Keras model a spec describes: a :class:`LayerConfig` (``kind`` ``layer``, its fields under ``config``), a
    built-in model (``builtin``, ``name``) or a user's model file (``path``, with ``trust_code`` and ``imports``)."""
    kind = spec["kind"]
    if kind == "layer":
        return LayerConfig(**{**spec["config"], "spatial": tuple(spec["config"]["spatial"])}).build()
    if kind == "builtin":
        return build_builtin(spec["name"])
    if kind == "path":
        from lambda_export.loading import load_model

        return load_model(spec["path"], trust_code=spec.get("trust_code", False), imports=spec.get("imports", ())).model
    raise ValueError(f"unknown model spec {spec!r}")
