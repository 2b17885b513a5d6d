"""The PyTorch reference CMIR model (imports torch)."""

from .cmam import CMAM, CrossAttention
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .cmir import CMIR, VARIANTS, CMIRConfig, CMIROutput, build_model, count_parameters
from .involution import Involution2d, involution_aggregate, involution_output_size
from .resnet import InvResNet, scaled_channels
from .spatial import SpatialAttention

__all__ = [
    "CMAM", "CMIR", "CMIRConfig", "CMIROutput", "CrossAttention", "InvResNet", "Involution2d", "SpatialAttention",
    "CheckpointError", "VARIANTS", "build_model", "load_checkpoint", "read_checkpoint", "save_checkpoint", "count_parameters", "involution_aggregate", "involution_output_size",
    "scaled_channels",
]
