"""The PyTorch reference CMIR model (imports torch)."""

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .cmam import CMAM, CrossAttention
from .cmir import CMIR, VARIANTS, CMIRConfig, CMIROutput, build_model, count_parameters
from .involution import Involution2d, involution_aggregate, involution_output_size
from .resnet import InvResNet, scaled_channels
from .spatial import SpatialAttention

__all__ = [
    "CMAM", "CMIR", "CMIRConfig", "CMIROutput", "CheckpointError", "CrossAttention", "InvResNet", "Involution2d",
    "SpatialAttention", "VARIANTS", "build_model", "count_parameters", "involution_aggregate",
    "involution_output_size", "load_checkpoint", "read_checkpoint", "save_checkpoint", "scaled_channels",
]
