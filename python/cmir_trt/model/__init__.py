"""The PyTorch reference CMIR model (imports torch)."""

from .cmam import CMAM, CrossAttention
from .cmir import CMIR, VARIANTS, CMIRConfig, CMIROutput, build_model, count_parameters
from .involution import Involution2d, involution_aggregate, involution_output_size
from .resnet import InvResNet, scaled_channels
from .spatial import SpatialAttention

__all__ = [
    "CMAM", "CMIR", "CMIRConfig", "CMIROutput", "CrossAttention", "InvResNet", "Involution2d", "SpatialAttention",
    "VARIANTS", "build_model", "count_parameters", "involution_aggregate", "involution_output_size",
    "scaled_channels",
]
