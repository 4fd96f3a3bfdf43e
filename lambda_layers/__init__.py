"""Lambda layers (Bello, ICLR 2021) as Keras 3 layers on TensorFlow; importing registers them for deserialization."""

from lambda_layers import byobnet, models
from lambda_layers.byobnet import PaddedMaxPooling2D
from lambda_layers.layers import (
    LambdaNetwork1DConv,
    LambdaNetwork1Dense,
    LambdaNetwork2DConv,
    relative_position_index,
)
from lambda_layers.timm_weights import TIMM_PRETRAINED, TimmCheckpointError, from_timm, timm_state_dict
from lambda_layers.torch_port import load_torch_weights

__all__ = [
    "TIMM_PRETRAINED",
    "LambdaNetwork1DConv",
    "LambdaNetwork1Dense",
    "LambdaNetwork2DConv",
    "PaddedMaxPooling2D",
    "TimmCheckpointError",
    "byobnet",
    "from_timm",
    "load_torch_weights",
    "models",
    "relative_position_index",
    "timm_state_dict",
]
