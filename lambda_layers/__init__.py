"""Lambda layers (Bello, ICLR 2021) as Keras 3 layers on TensorFlow; importing registers them for deserialization."""

from lambda_layers import models
from lambda_layers.layers import (
    LambdaNetwork1DConv,
    LambdaNetwork1Dense,
    LambdaNetwork2DConv,
    relative_position_index,
)
from lambda_layers.torch_port import load_torch_weights

__all__ = [
    "LambdaNetwork1DConv",
    "LambdaNetwork1Dense",
    "LambdaNetwork2DConv",
    "load_torch_weights",
    "models",
    "relative_position_index",
]
