"""Lambda layers (Bello, ICLR 2021) as Keras 3 layers on TensorFlow; importing registers them for deserialization."""

from lambda_layers import models
from lambda_layers.layers import (
    LambdaNetwork1DConv,
    LambdaNetwork1Dense,
    LambdaNetwork2DConv,
    relative_position_index,
)

__all__ = [
    "LambdaNetwork1DConv",
    "LambdaNetwork1Dense",
    "LambdaNetwork2DConv",
    "models",
    "relative_position_index",
]
