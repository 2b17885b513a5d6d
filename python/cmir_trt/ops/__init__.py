"""GPU ops of cmir_trt over the CUDA kernels in cuda/: torch tensors (as torch custom ops ``torch.ops.cmir_trt.*``)
or cupy arrays, no copies, on the caller's current stream.

- ``involution(x, kernel, kernel_size, stride=1, scale=None, shift=None, relu=False)``
- ``involution_fused(x, w1, b1, w2, b2, kernel_size, stride=1, group_channels=16, ...)`` and ``fold_generator``
- ``cmam(art, pv, weights_art, weights_pv, heads, dim=None, eps=1e-5)`` and ``pack_cmam_module``
- ``pointwise_conv(x, weight, bias, residual=None, relu=False, workspace=None, shortcut=None, shortcut_stride=1)``
  (1x1 convolution + bias [+ residual] [+ ReLU]; a projection shortcut in the same GEMM) and
  ``pointwise_workspace`` (its split-K workspace)
- ``conv2d(x, weight, bias, residual=None, relu=False, stride=1, padding=0, workspace=None)`` (implicit-GEMM
  convolution + bias [+ residual] [+ ReLU]) and ``conv2d_workspace``
- ``spatial_attention(a, p, weight, bias)`` (CMIR's SA over [a; p]: both maps multiplied, and the attention map)

Importing this package needs neither torch nor cupy; the first call with a torch tensor registers the custom ops
(``register_torch_ops()`` does it explicitly, e.g. before torch.compile).
"""

from __future__ import annotations

from .cmam import cmam, pack_cmam_module, pack_cmam_weights, packed_weights_size
from .conv2d import conv2d, conv2d_workspace, conv2d_workspace_size
from .involution import fold_generator, involution, involution_fused, output_size
from .pointwise import pointwise_conv, pointwise_workspace, pointwise_workspace_size
from .spatial_attention import spatial_attention

__all__ = ["cmam", "conv2d", "conv2d_workspace", "conv2d_workspace_size", "fold_generator", "involution",
           "involution_fused", "output_size", "pack_cmam_module", "pack_cmam_weights", "packed_weights_size",
           "pointwise_conv", "pointwise_workspace", "pointwise_workspace_size", "register_torch_ops",
           "spatial_attention"]


def register_torch_ops() -> None:
    """Register torch.ops.cmir_trt.{involution, involution_fused, cmam, pointwise_conv, conv2d, spatial_attention}
    (imports torch)."""
    from . import _torch_ops  # noqa: F401
