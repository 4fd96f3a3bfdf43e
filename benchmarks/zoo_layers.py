"""Serializable pieces that the conformance zoo's models use and Keras 3 does not register itself.

``lambda-export`` loads them with ``--import benchmarks/zoo_layers.py`` (``benchmarks/zoo_models.py`` lists, per
model, which files a load needs). Only registered functions and layers here: no ``Lambda`` layers, so the models load
with Keras' ``safe_mode`` on.
"""

from __future__ import annotations

import keras

__all__ = ["gelu_tanh"]


@keras.saving.register_keras_serializable(package="zoo")
def gelu_tanh(x):
    """GELU with the tanh approximation (``keras.activations.gelu(x, approximate=True)``); the registered name is
    ``zoo>gelu_tanh``. The built-in ``"gelu"`` activation is the exact one (erf)."""
    return keras.activations.gelu(x, approximate=True)
