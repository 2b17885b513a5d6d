"""TorchCudaBackend: the CMIR reference model on the GPU with cmir_trt's CUDA kernels and CUDA graphs."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..prediction import Prediction
from . import PRECISIONS, require_cuda

_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, _TORCH_DTYPES[precision])


class _ReferenceOps:
    """cmir_trt.ops' signatures over the float64 references (cast back to the input dtype): lets the model rewrite
    be checked end to end on a machine without a GPU. Each call is one profiler range ``cmir_trt::<op>`` (what
    benchmarks/gpu/predict.py counts as the op's kernels; the reference's own aten calls are nested under it)."""

    @staticmethod
    def involution(x: Any, kernel: Any, *args: Any) -> Any:
        from torch.profiler import record_function

        from ..ops.reference import involution_ref

        with record_function("cmir_trt::involution"):
            return involution_ref(x, kernel, *args).to(x.dtype)

    @staticmethod
    def involution_fused(x: Any, *args: Any) -> Any:
        from torch.profiler import record_function

        from ..ops.reference import involution_fused_ref

        with record_function("cmir_trt::involution_fused"):
            return involution_fused_ref(x, *args).to(x.dtype)

    @staticmethod
    def cmam(art: Any, pv: Any, *args: Any) -> tuple[Any, Any]:
        from torch.profiler import record_function

        from ..ops.reference import cmam_ref

        with record_function("cmir_trt::cmam"):
            a, p = cmam_ref(art, pv, *args)
            return a.to(art.dtype), p.to(pv.dtype)

    @staticmethod
    def pointwise_conv(x: Any, weight: Any, bias: Any, residual: Any = None, relu: bool = False,
                       workspace: Any = None, shortcut: Any = None, shortcut_stride: int = 1) -> Any:
        del workspace  # split-K changes only the GPU's summation order
        from torch.profiler import record_function

        from ..ops.reference import pointwise_conv_ref

        with record_function("cmir_trt::pointwise_conv"):
            return pointwise_conv_ref(x, weight, bias, residual, relu, shortcut, shortcut_stride).to(x.dtype)

    @staticmethod
    def spatial_attention(a: Any, p: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any]:
        from torch.profiler import record_function

        from ..ops.reference import spatial_attention_ref

        with record_function("cmir_trt::spatial_attention"):
            ya, yp, att = spatial_attention_ref(a, p, weight, bias)
            return ya.to(a.dtype), None if yp is None else yp.to(p.dtype), att.to(a.dtype)

    @staticmethod
    def conv2d(x: Any, weight: Any, bias: Any, residual: Any = None, relu: bool = False, stride: int = 1,
               padding: int = 0, workspace: Any = None) -> Any:
        del workspace
        from torch.profiler import record_function

        from ..ops.reference import conv2d_ref

        with record_function("cmir_trt::conv2d"):
            return conv2d_ref(x, weight, bias, residual, relu, stride, padding).to(x.dtype)


def _build_wrappers(impl: str = "cuda") -> dict[str, type]:
    """nn.Module replacements, defined lazily so that importing this file needs no torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from .. import ops as cuda_ops
    from ..ops import fold_generator, pack_cmam_module
    from ..ops.pointwise import zeroed_workspace
    from ..ops.spatial_attention import MAX_PIXELS as cuda_ops_sa_max_pixels

    if impl not in ("cuda", "reference"):
        raise ValueError(f"impl must be 'cuda' or 'reference', got {impl!r}")
    ops: Any = cuda_ops if impl == "cuda" else _ReferenceOps

    class SplitWorkspace:
        """The split-K workspace of every pointwise_conv / conv2d launch of one prepared model (they run one after
        another on one stream): grown to the largest size a call needs, allocated zeroed by the eager warm-up before
        a CUDA graph captures the calls. Every buffer ever handed out stays alive: a graph captured earlier still
        uses it."""

        def __init__(self) -> None:
            self.buffers: list[torch.Tensor] = []

        def _get(self, x: torch.Tensor, need: int) -> torch.Tensor | None:
            if need == 0:
                return None
            last = self.buffers[-1] if self.buffers else None
            if last is None or last.numel() < need or last.device != x.device:
                self.buffers.append(zeroed_workspace(x, max(need, 0 if last is None else last.numel())))
            return self.buffers[-1]

        def pointwise(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
            if impl != "cuda":
                return None
            b, _, h, w = x.shape  # the GEMM's K is weight's second dimension (Cin + shortcut channels)
            return self._get(x, cuda_ops.pointwise_workspace_size(b, weight.shape[1], weight.shape[0], h, w))

        def conv(self, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor | None:
            if impl != "cuda":
                return None
            b, cin, h, w = x.shape
            cout, _, kh, kw = weight.shape
            return self._get(x, cuda_ops.conv2d_workspace_size(b, cin, cout, h, w, kh, kw, stride, padding))

    split_ws = SplitWorkspace()

    class CudaInvolution(nn.Module):
        """Involution2d [+ BN + ReLU] with the BN folded into the kernel's epilogue. Parameters are plain
        attributes (not buffers) so that model.to(dtype) leaves the fp32 ones fp32."""

        def __init__(self, inv: nn.Module, bn: nn.Module | None, relu: bool, fused: bool, device: Any,
                     dtype: Any, pointwise: bool = True) -> None:
            super().__init__()
            gen = fold_generator(inv)
            self.k = gen["kernel_size"]
            self.stride = gen["stride"]
            self.gc = gen["group_channels"]
            self.groups = inv.groups
            self.fused = fused
            self.relu = relu
            self.pointwise = pointwise
            f32 = {"device": device, "dtype": torch.float32}
            self.w1_f32 = gen["w1"].to(**f32)
            self.b1_f32 = gen["b1"].to(**f32)
            self.w2_f32 = gen["w2"].to(**f32)
            self.b2_f32 = gen["b2"].to(**f32)
            # The separate generation: two pointwise_conv launches in the model's dtype (bias and the hidden ReLU
            # in their epilogues). Buffers, so that model.to(dtype) casts them with the activations.
            for n in ("w1", "b1", "w2", "b2"):
                self.register_buffer(n, gen[n].to(device=device, dtype=dtype).contiguous())
            # Strided: the s x s average pool of the generation's input folded into its first 1x1 convolution — an
            # s x s convolution at stride s with w1 / s^2 at every tap (exact when s divides H and W: no partial
            # window), one conv2d launch instead of a pool and a pointwise_conv.
            s = self.stride
            if s > 1:
                pooled = (gen["w1"].double() / (s * s))[:, :, None, None].expand(-1, -1, s, s)
                self.register_buffer("w1_pool", pooled.to(device=device, dtype=dtype).contiguous())
            self.scale = self.shift = None
            if bn is not None:
                with torch.no_grad():
                    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
                    s = bn.weight.double() * inv_std
                    self.scale = s.to(**f32).contiguous()
                    self.shift = (bn.bias.double() - bn.running_mean.double() * s).to(**f32).contiguous()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.contiguous()
            if self.fused:
                return ops.involution_fused(x, self.w1_f32, self.b1_f32, self.w2_f32, self.b2_f32, self.k,
                                            self.stride, self.gc, self.scale, self.shift, self.relu)
            s = self.stride
            if self.pointwise and s > 1 and x.shape[2] % s == 0 and x.shape[3] % s == 0:
                hid = ops.conv2d(x, self.w1_pool, self.b1, None, True, s, 0, split_ws.conv(x, self.w1_pool, s, 0))
                wgt = ops.pointwise_conv(hid, self.w2, self.b2, None, False, split_ws.pointwise(hid, self.w2))
                b, _, h, w = wgt.shape
                kernel = wgt.view(b, self.groups, self.k, self.k, h, w)
                return ops.involution(x, kernel, self.k, self.stride, self.scale, self.shift, self.relu)
            t = x if s == 1 else F.avg_pool2d(x, s, s, ceil_mode=True)
            if self.pointwise:
                hid = ops.pointwise_conv(t, self.w1, self.b1, None, True, split_ws.pointwise(t, self.w1))
                wgt = ops.pointwise_conv(hid, self.w2, self.b2, None, False, split_ws.pointwise(hid, self.w2))
            else:  # cuDNN (each convolution + its bias add) and a ReLU: the backend before issue 13's third round
                wgt = F.conv2d(F.relu(F.conv2d(t, self.w1[:, :, None, None], self.b1)), self.w2[:, :, None, None],
                               self.b2)
            b, _, h, w = wgt.shape
            kernel = wgt.view(b, self.groups, self.k, self.k, h, w)
            return ops.involution(x, kernel, self.k, self.stride, self.scale, self.shift, self.relu)

    class CudaCMAM(nn.Module):
        def __init__(self, cmam: nn.Module, device: Any, dtype: Any) -> None:
            super().__init__()
            wa, wp = pack_cmam_module(cmam)
            self.wa = wa.to(device=device, dtype=dtype)
            self.wp = wp.to(device=device, dtype=dtype)
            self.heads = cmam.art_from_pv.heads
            self.dim = cmam.art_from_pv.dim
            eps = {float(cmam.norm_art.eps), float(cmam.norm_pv.eps)}
            if len(eps) != 1:
                raise ValueError(f"the CUDA CMAM kernel takes one LayerNorm eps, the model has {sorted(eps)}")
            self.eps = eps.pop()

        def forward(self, art: torch.Tensor, pv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return ops.cmam(art.contiguous(), pv.contiguous(), self.wa, self.wp, self.heads, self.dim, self.eps)

    class CudaPointwise(nn.Module):
        """A stride-1 1x1 Conv2d (BN folded in) [+ ReLU] as one pointwise_conv launch; forward(x, residual) also adds
        a residual before the ReLU (a bottleneck's conv3 + identity + ReLU). K is split over blocks where the map is
        small (the model's shared SplitWorkspace)."""

        def __init__(self, weight: torch.Tensor, bias: torch.Tensor, relu: bool, shortcut_stride: int = 0) -> None:
            super().__init__()
            self.register_buffer("weight", weight.detach().reshape(weight.shape[0], -1).contiguous())
            self.register_buffer("bias", bias.detach().contiguous())
            self.relu = relu
            self.shortcut_stride = shortcut_stride  # > 0: forward takes a projection shortcut at this stride

        def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                    shortcut: torch.Tensor | None = None) -> torch.Tensor:
            r = None if residual is None else residual.contiguous()
            sc = None if shortcut is None else shortcut.contiguous()
            x = x.contiguous()
            return ops.pointwise_conv(x, self.weight, self.bias, r, self.relu, split_ws.pointwise(x, self.weight), sc,
                                      max(1, self.shortcut_stride))

        def extra_repr(self) -> str:
            sc = f", shortcut_stride={self.shortcut_stride}" if self.shortcut_stride else ""
            return f"{self.weight.shape[1]}, {self.weight.shape[0]}, relu={self.relu}{sc}"

    class CudaConv(nn.Module):
        """A Conv2d (BN folded in) [+ ReLU] of any kernel size as one conv2d launch (implicit GEMM on the shared
        tensor-core GEMM; cuDNN runs it as the convolution, its bias add and the ReLU)."""

        def __init__(self, weight: torch.Tensor, bias: torch.Tensor, relu: bool, stride: int, padding: int) -> None:
            super().__init__()
            self.register_buffer("weight", weight.detach().contiguous())
            self.register_buffer("bias", bias.detach().contiguous())
            self.relu, self.stride, self.padding = relu, stride, padding

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.contiguous()
            return ops.conv2d(x, self.weight, self.bias, None, self.relu, self.stride, self.padding,
                              split_ws.conv(x, self.weight, self.stride, self.padding))

        def extra_repr(self) -> str:
            cout, cin, kh, kw = self.weight.shape
            return f"{cin}, {cout}, kernel={kh}x{kw}, stride={self.stride}, padding={self.padding}, relu={self.relu}"

    class CudaSpatialAttention(nn.Module):
        """SpatialAttention on the spatial_attention op: apply_pair(a, p) — the concatenation, the statistics, the
        conv, the sigmoid and both multiplies — in two launches (PyTorch: nine kernels). The conv's weight and bias
        stay fp32 (plain attributes: model.to(dtype) leaves them). Maps over the op's pixel limit take the original
        module's path."""

        def __init__(self, sa: nn.Module, device: Any) -> None:
            super().__init__()
            self.kernel_size = sa.kernel_size
            self.torch_sa = sa  # PyTorch's path for maps over the op's limit (cast with the model)
            self.w_f32 = sa.conv.weight.detach().to(device=device, dtype=torch.float32).contiguous()
            self.b_f32 = sa.conv.bias.detach().to(device=device, dtype=torch.float32).contiguous()

        def _fits(self, x: torch.Tensor) -> bool:
            return x.shape[2] * x.shape[3] <= cuda_ops_sa_max_pixels

        def attention(self, x: torch.Tensor) -> torch.Tensor:
            if not self._fits(x):
                return self.torch_sa.attention(x)
            return ops.spatial_attention(x.contiguous(), None, self.w_f32, self.b_f32)[2]

        def apply_pair(self, a: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if not self._fits(a):
                return self.torch_sa.apply_pair(a, p)
            return ops.spatial_attention(a.contiguous(), p.contiguous(), self.w_f32, self.b_f32)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            att = self.attention(x)
            return x * att, att

    class CudaBottleneck(nn.Module):
        """Bottleneck with conv3 + identity + ReLU in one pointwise_conv launch (conv3's residual epilogue); with a
        projection shortcut folded into conv3 (its weights appended to conv3's, read at the downsample's stride),
        conv3 + downsample + add + ReLU are that one launch."""

        def __init__(self, conv1: nn.Module, conv2: nn.Module, conv3: nn.Module, downsample: nn.Module | None) -> None:
            super().__init__()
            self.conv1, self.conv2, self.conv3, self.downsample = conv1, conv2, conv3, downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv2(self.conv1(x))
            if getattr(self.conv3, "shortcut_stride", 0):
                return self.conv3(h, shortcut=x)
            identity = x if self.downsample is None else self.downsample(x)
            return self.conv3(h, identity)

    return {"CudaInvolution": CudaInvolution, "CudaCMAM": CudaCMAM, "CudaPointwise": CudaPointwise,
            "CudaConv": CudaConv, "CudaSpatialAttention": CudaSpatialAttention, "CudaBottleneck": CudaBottleneck}


def _is_pointwise(conv: Any) -> bool:
    """A Conv2d the pointwise op computes: 1x1 kernel, stride 1, no padding, dilation 1, one group.
    Strided 1x1 convolutions stay on cuDNN: subsampling into a dense tensor first would cost the same two kernels
    (a copy + the op) as cuDNN's convolution + its separate bias add."""
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (0, 0)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1)


def _is_gemm_conv(conv: Any) -> bool:
    """A Conv2d the conv2d op computes: one group, dilation 1, a square stride, the same padding on both sides of
    each axis (ints, smaller than the kernel)."""
    pad = conv.padding
    return (conv.groups == 1 and tuple(conv.dilation) == (1, 1) and conv.stride[0] == conv.stride[1]
            and isinstance(pad, tuple) and pad[0] == pad[1] and pad[0] < min(conv.kernel_size)
            and conv.padding_mode == "zeros")


def fusable_shortcut(conv3: Any, downsample: Any) -> bool:
    """A bottleneck's downsample the pointwise op can take as conv3's projection shortcut: Sequential(1x1 Conv2d at
    any (square) stride, no padding/dilation/groups, BatchNorm2d), and conv3's input channels a multiple of 32 (the
    GEMM's k-step: cuda/pointwise.cuh, pointwise_shortcut_unsupported)."""
    from torch import nn

    if not (isinstance(downsample, nn.Sequential) and len(downsample) == 2 and isinstance(downsample[0], nn.Conv2d)
            and isinstance(downsample[1], nn.BatchNorm2d)):
        return False
    ds = downsample[0]
    return (tuple(ds.kernel_size) == (1, 1) and tuple(ds.padding) == (0, 0) and tuple(ds.dilation) == (1, 1)
            and ds.groups == 1 and ds.stride[0] == ds.stride[1] and conv3[0].in_channels % 32 == 0)


def prepare_model(model: Any, precision: str = "fp32", device: Any = "cuda", fused_involution: bool = False,
                  impl: str = "cuda", pointwise_conv: bool = True) -> Any:
    """A copy of a CMIR model for the GPU: conv+BN folded, involution blocks and CMAM on cmir_trt's kernels, every
    stride-1 1x1 convolution (with its ReLU, and a bottleneck's conv3 with the residual add, the block's ReLU and —
    where it has one of the right form — its 1x1 downsample as a projection shortcut) on the pointwise_conv kernel,
    the other convolution + BN [+ ReLU] sequences (the stems' 3x3) and the strided involutions' pooled generation
    input on the conv2d kernel, the SA modules on the spatial_attention kernels, moved to `device` in `precision`.
    The input model is not modified.
    impl="reference" puts the float64 reference ops in place of the CUDA kernels (any device; for checking the
    rewrite without a GPU). pointwise_conv=False keeps every convolution on cuDNN and the SA modules on PyTorch
    (the backend before the pointwise, conv2d and spatial_attention ops; for launch counts and A/B timing)."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from ..model.cmam import CMAM
    from ..model.involution import Involution2d
    from ..model.resnet import Bottleneck
    from ..model.spatial import SpatialAttention

    dtype = _torch_dtype(precision)
    wrappers = _build_wrappers(impl)
    m = copy.deepcopy(model).eval().float().cpu()

    def conv_seq(seq: nn.Sequential, relu_after: bool | None = None) -> nn.Module:
        """Sequential(Conv2d, BatchNorm2d, [ReLU], ...) with the BN folded: one CudaPointwise (the ReLU fused) for a
        pointwise conv, one CudaConv for another conv the conv2d op takes, else the folded Conv2d (cuDNN).
        relu_after overrides the ReLU (a bottleneck's conv3 takes the block's final ReLU, applied after its
        residual)."""
        kids = list(seq.children())
        fused = fuse_conv_bn_eval(kids[0], kids[1])
        if not pointwise_conv or not (_is_pointwise(fused) or _is_gemm_conv(fused)):
            return nn.Sequential(fused, *kids[2:])
        has_relu = len(kids) > 2 and isinstance(kids[2], nn.ReLU)
        relu = has_relu if relu_after is None else relu_after
        if _is_pointwise(fused):
            new = wrappers["CudaPointwise"](fused.weight, fused.bias, relu)
        else:
            new = wrappers["CudaConv"](fused.weight, fused.bias, relu, int(fused.stride[0]), int(fused.padding[0]))
        rest = kids[2 + has_relu:]
        return nn.Sequential(new, *rest) if rest else new

    def is_conv_bn(mod: Any) -> bool:
        kids = list(mod.children()) if isinstance(mod, nn.Sequential) else []
        return len(kids) > 1 and isinstance(kids[0], nn.Conv2d) and isinstance(kids[1], nn.BatchNorm2d)

    def shortcut_conv3(conv3: nn.Sequential, downsample: Any) -> nn.Module | None:
        """conv3 (+ BN) and a Sequential(1x1 conv at any stride, BN) downsample as one CudaPointwise: the BN-folded
        weights side by side ([Cout, mid + Cin]), the biases summed, ReLU after the add; None when the op cannot
        take it (the downsample of another form, or mid not a multiple of 32)."""
        if not fusable_shortcut(conv3, downsample):
            return None
        ds = downsample[0]
        f3, fd = fuse_conv_bn_eval(conv3[0], conv3[1]), fuse_conv_bn_eval(ds, downsample[1])
        weight = torch.cat([f3.weight.reshape(f3.out_channels, -1), fd.weight.reshape(fd.out_channels, -1)], dim=1)
        return wrappers["CudaPointwise"](weight, f3.bias + fd.bias, True, shortcut_stride=int(ds.stride[0]))

    def bottleneck(block: Bottleneck) -> nn.Module | None:
        """The CudaBottleneck of a block whose conv3 is Sequential(1x1 conv, BN) (None: keep the generic rewrite)."""
        if (not pointwise_conv or not is_conv_bn(block.conv3) or len(block.conv3) != 2
                or not _is_pointwise(block.conv3[0])):
            return None
        if not isinstance(block.relu, nn.ReLU):
            return None
        holder = nn.Module()
        holder.conv1, holder.conv2 = block.conv1, block.conv2
        fused3 = None if block.downsample is None else shortcut_conv3(block.conv3, block.downsample)
        if block.downsample is not None and fused3 is None:
            holder.downsample = block.downsample
        rewrite(holder)
        ds = getattr(holder, "downsample", None)
        conv3 = fused3 if fused3 is not None else conv_seq(block.conv3, relu_after=True)
        return wrappers["CudaBottleneck"](holder.conv1, holder.conv2, conv3, ds)

    def rewrite(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            kids = list(child.children()) if isinstance(child, nn.Sequential) else []
            new_block = bottleneck(child) if isinstance(child, Bottleneck) else None
            if new_block is not None:
                setattr(parent, name, new_block)
            elif kids and isinstance(kids[0], Involution2d):
                bn = kids[1] if len(kids) > 1 and isinstance(kids[1], nn.BatchNorm2d) else None
                relu = bn is not None and len(kids) > 2 and isinstance(kids[2], nn.ReLU)
                used = 1 + (bn is not None) + relu
                new = wrappers["CudaInvolution"](kids[0], bn, relu, fused_involution, device, dtype,
                                                 pointwise_conv)
                setattr(parent, name, nn.Sequential(new, *kids[used:]) if used < len(kids) else new)
            elif isinstance(child, Involution2d):
                setattr(parent, name, wrappers["CudaInvolution"](child, None, False, fused_involution, device,
                                                                  dtype, pointwise_conv))
            elif isinstance(child, CMAM):
                setattr(parent, name, wrappers["CudaCMAM"](child, device, dtype))
            elif isinstance(child, SpatialAttention) and pointwise_conv:
                setattr(parent, name, wrappers["CudaSpatialAttention"](child, device))
            elif is_conv_bn(child):
                setattr(parent, name, conv_seq(child))
            else:
                rewrite(child)

    with torch.no_grad():
        rewrite(m)
    return m.to(device=device, dtype=dtype)


class TorchCudaBackend:
    """CMIR on one CUDA GPU with cmir_trt's kernels.

    path_or_model: a checkpoint path (``load_checkpoint``) or a CMIR module (copied, not modified).
    precision: fp32 | fp16 | bf16 (activations and weights; kernels accumulate in fp32; outputs are float32).
    cuda_graph: capture one CUDA graph per batch size on first use and replay it (static shapes).
    fused_involution: use the single-kernel generation+aggregation instead of the pointwise-op generation + our
        aggregation.
    pointwise_conv: run stride-1 1x1 convolutions (with their bias, ReLU and a bottleneck's residual add) on
        cmir_trt's pointwise_conv kernel (default); False keeps them on cuDNN (A/B timing of the launch count).
    allow_tf32: let cuDNN run fp32 convolutions in TF32 (PyTorch's default, faster, ~1e-3 relative error per conv).
        Off by default so that fp32 reproduces the CPU reference; the setting is applied around this backend's own
        runs (and graph captures) only and restored afterwards.
    """

    def __init__(self, path_or_model: Any, precision: str = "fp32", cuda_graph: bool = True, device: int = 0,
                 fused_involution: bool = False, allow_tf32: bool = False, pointwise_conv: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not isinstance(device, int) or isinstance(device, bool) or device < 0:
            raise ValueError(f"device must be a CUDA device index (int >= 0), got {device!r}")
        require_cuda(device)
        import torch

        from ..model.checkpoint import load_checkpoint

        if isinstance(path_or_model, (str, os.PathLike)):
            model = load_checkpoint(Path(path_or_model))
            source = str(path_or_model)
        elif isinstance(path_or_model, torch.nn.Module):
            model = path_or_model
            source = type(path_or_model).__name__
        else:
            raise TypeError(f"path_or_model must be a checkpoint path or a CMIR module, got {type(path_or_model)}")
        self.config = model.config
        self.precision = precision
        self.cuda_graph = bool(cuda_graph)
        self.fused_involution = bool(fused_involution)
        self.allow_tf32 = bool(allow_tf32)
        self.pointwise_conv = bool(pointwise_conv)
        self.device = torch.device("cuda", device)
        self.dtype = _torch_dtype(precision)
        self.model = prepare_model(model, precision, self.device, self.fused_involution,
                                   pointwise_conv=self.pointwise_conv)
        self._graphs: dict[int, tuple[Any, tuple[Any, Any, Any], Any]] = {}
        props = torch.cuda.get_device_properties(self.device)
        self.metadata: dict[str, Any] = dict(getattr(model, "metadata", {}) or {})
        self.metadata.update({
            "backend": "torch-cuda", "precision": precision, "cuda_graph": self.cuda_graph,
            "fused_involution": self.fused_involution, "allow_tf32": self.allow_tf32,
            "pointwise_conv": self.pointwise_conv, "device_name": props.name,
            "source": source,
            "checkpoint_sha256": getattr(model, "checkpoint_sha256", None), "config": self.config.to_dict(),
        })

    # ------------------------------------------------------------------ inputs
    def _as_device_tensor(self, a: Any, name: str, shape_tail: tuple[int, ...]) -> Any:
        import torch

        if isinstance(a, np.ndarray):
            if a.dtype.kind not in "fiu":
                raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
            a32 = np.ascontiguousarray(a, dtype=np.float32)
            if not np.isfinite(a32).all():
                raise ValueError(f"{name} contains NaN or infinite values")
            t = torch.from_numpy(a32)
        elif isinstance(a, torch.Tensor):
            t = a
        elif hasattr(a, "__cuda_array_interface__") or hasattr(a, "__dlpack__"):
            t = torch.from_dlpack(a)  # cupy & co: zero copy on the device
        else:
            raise TypeError(f"{name} must be a numpy array, torch tensor or cupy array, got {type(a).__name__}")
        if t.dim() != 1 + len(shape_tail) or tuple(t.shape[1:]) != shape_tail or t.shape[0] < 1:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, shape_tail))}], got {tuple(t.shape)}")
        if t.is_complex():
            raise TypeError(f"{name} must be real-valued, got {t.dtype}")
        return t.to(device=self.device, dtype=self.dtype, non_blocking=True).contiguous()

    def _inputs(self, art: Any, pv: Any, clinical: Any) -> tuple[Any, Any, Any]:
        import torch

        cfg = self.config
        img = (cfg.in_channels, cfg.image_size, cfg.image_size)
        a = self._as_device_tensor(art, "art", img)
        if pv is None and not cfg.two_phase:
            p = a  # single-phase variant (S1): the model ignores pv
        else:
            if pv is None:
                raise ValueError(f"pv is required by the two-phase variant {cfg.variant!r}")
            p = self._as_device_tensor(pv, "pv", img)
        b = a.shape[0]
        if p.shape[0] != b:
            raise ValueError(f"art and pv batch sizes differ: {a.shape[0]} vs {p.shape[0]}")
        if clinical is None and cfg.num_clinical == 0:
            c = torch.zeros((b, 0), device=self.device, dtype=self.dtype)
        else:
            if clinical is None:
                raise ValueError(f"clinical [B, {cfg.num_clinical}] is required by this model")
            c = self._as_device_tensor(clinical, "clinical", (cfg.num_clinical,))
            if c.shape[0] != b:
                raise ValueError(f"clinical batch size {c.shape[0]} differs from the images' {b}")
        # One device-side check for the three (a sync, but cheap next to the model; NaN must never pass silently).
        if not bool(torch.isfinite(a).all() & torch.isfinite(p).all() & torch.isfinite(c).all()):
            raise ValueError("inputs contain NaN or infinite values (or values out of range for "
                             f"{self.precision})")
        return a, p, c

    # ------------------------------------------------------------------ run
    @contextlib.contextmanager
    def _tf32(self) -> Iterator[None]:
        import torch

        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = self.allow_tf32
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = old

    def _eager(self, a: Any, p: Any, c: Any) -> Any:
        import torch

        with torch.inference_mode(), self._tf32():
            return self.model(a, p, c)

    def _graph_run(self, a: Any, p: Any, c: Any) -> Any:
        import torch

        b = a.shape[0]
        entry = self._graphs.get(b)
        if entry is None:
            static = (a.clone(), p.clone(), c.clone())
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode(), self._tf32():
                for _ in range(2):  # warm-up outside capture (cuDNN/cuBLAS handles, allocator)
                    self.model(*static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), self._tf32(), torch.cuda.graph(graph):
                out = self.model(*static)
            entry = (graph, static, out)
            self._graphs[b] = entry
        graph, static, out = entry
        with torch.inference_mode():
            static[0].copy_(a)
            static[1].copy_(p)
            static[2].copy_(c)
            graph.replay()
        return out

    def forward_device(self, art: Any, pv: Any, clinical: Any, check_finite: bool = True) -> Any:
        """Model outputs as CUDA tensors in the backend's precision (CMIROutput); for benchmarks and chaining.
        With CUDA graphs, the returned tensors are overwritten by the next call of the same batch size.
        check_finite=False skips the NaN/inf check of device inputs (a host sync); benchmarks use it."""
        import torch

        with torch.cuda.device(self.device):
            if check_finite:
                a, p, c = self._inputs(art, pv, clinical)
            else:
                a, p, c = (t.contiguous() for t in (art, pv, clinical))
            return self._graph_run(a, p, c) if self.cuda_graph else self._eager(a, p, c)

    def predict(self, art: Any, pv: Any = None, clinical: Any = None) -> Prediction:
        """Prediction(probability, logit, heatmap) as float32 numpy arrays."""
        out = self.forward_device(art, pv, clinical)
        logit = out.logit.float().cpu().numpy()
        prob = out.probability.float().cpu().numpy()
        heat = out.heatmap.float().cpu().numpy()
        return Prediction(probability=prob, logit=logit, heatmap=heat)

    def __repr__(self) -> str:
        return (f"TorchCudaBackend(variant={self.config.variant!r}, precision={self.precision!r}, "
                f"cuda_graph={self.cuda_graph}, device={self.device})")
