"""Export-ready copies of a CMIR model (imports torch).

The training model writes involution with `F.unfold`, which the ONNX exporters cannot translate, and pools its
kernel-generation input with `avg_pool2d(ceil_mode=True)`, whose partial border windows runtimes disagree on. The
copies built here compute the same function with exportable operators:

* `standard` form: involution as im2col by a convolution with one-hot weights [K*K, 1, K, K] over x viewed as
  [B*C, 1, H, W] (exact: each output is one input value times 1.0 plus zeros), a reshape, a multiply and a sum over
  the K*K taps; CMAM stays as written
  (Linear / MatMul / Softmax / LayerNorm).
* `custom` form (for TensorRT): the aggregation and the whole CMAM become custom nodes whose op_type, domain,
  attributes and input order come from export/plugin_schema.json; CMAM's weights go in as packed initializers.

Both forms pool the kernel-generation input as zero-pad to a multiple of the stride, plain average pool, then a
constant correction by (stride^2 / number of valid pixels), which is exactly the ceil-mode mean over valid pixels.
Every BatchNorm (eval) becomes a per-channel affine x * scale + shift computed in float64, so an fp16 graph never
evaluates var + eps in half precision.
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.cmam import CMAM
from ..model.cmir import CAM_EPS, CMIR
from ..model.involution import Involution2d, involution_output_size
from ..model.spatial import SpatialAttention
from .schema import CMAM_PLUGIN, INVOLUTION_PLUGIN, load_schema

FORMS = ("standard", "custom")


class ChannelAffine(nn.Module):
    """Eval-mode BatchNorm2d folded to y = x * scale + shift (per channel)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("BatchNorm without running statistics cannot be folded for export")
        var = bn.running_var.detach().double()
        mean = bn.running_mean.detach().double()
        w = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
        b = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
        scale = w / torch.sqrt(var + bn.eps)
        shift = b - mean * scale
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def ceil_avg_pool(x: Tensor, stride: int) -> Tensor:
    """avg_pool2d(x, s, s, ceil_mode=True) in which a partial border window averages its valid pixels."""
    if stride == 1:
        return x
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ho, wo = involution_output_size(h, stride), involution_output_size(w, stride)
    ph, pw = ho * stride - h, wo * stride - w
    if ph == 0 and pw == 0:
        return F.avg_pool2d(x, stride, stride)
    pooled = F.avg_pool2d(F.pad(x, (0, pw, 0, ph)), stride, stride)
    rows = torch.tensor([min(stride, h - i * stride) for i in range(ho)], dtype=torch.float64)
    cols = torch.tensor([min(stride, w - j * stride) for j in range(wo)], dtype=torch.float64)
    correction = (stride * stride) / torch.outer(rows, cols)  # exact in float64, rounded once to x's dtype
    return pooled * correction.to(x.dtype).view(1, 1, ho, wo)


def one_hot_im2col_weight(kernel_size: int, dtype: torch.dtype) -> Tensor:
    """Conv weight [K*K, 1, K, K]: output channel kh*K + kw picks tap (kh, kw) of its single input channel.

    Applied to x viewed as [B*C, 1, H, W], so the initializer holds K^4 values whatever C is."""
    kk = kernel_size * kernel_size
    return torch.eye(kk, dtype=dtype).view(kk, 1, kernel_size, kernel_size)


class ExportInvolution(nn.Module):
    """Involution2d with exportable operators; shares the generation weights of the wrapped module."""

    def __init__(self, inv: Involution2d, form: str) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.form = form
        self.half_sum = False  # set for fp16 export (see forward)
        self.channels = inv.channels
        self.kernel_size = inv.kernel_size
        self.stride = inv.stride
        self.group_channels = inv.group_channels
        self.groups = inv.groups
        self.reduce = inv.reduce
        self.bn = inv.bn
        self.span = inv.span
        if form == "standard":
            self.register_buffer("im2col", one_hot_im2col_weight(inv.kernel_size, torch.float32))
        else:
            spec = load_schema()[INVOLUTION_PLUGIN]
            self.plugin = spec
            self.attrs = spec.node_attributes(kernel_size=inv.kernel_size, stride=inv.stride,
                                              group_channels=inv.group_channels)

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.span(F.relu(self.bn(self.reduce(ceil_avg_pool(x, self.stride)))))  # [B, G*K*K, H', W']
        ho, wo = int(kernel.shape[-2]), int(kernel.shape[-1])
        k, s = self.kernel_size, self.stride
        if self.form == "custom":
            return torch.onnx.ops.symbolic(
                f"{self.plugin.domain}::{self.plugin.name}", [x, kernel], self.attrs, dtype=x.dtype,
                shape=[x.shape[0], self.channels, ho, wo], version=1)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        cols = F.conv2d(x.reshape(-1, 1, h, w), self.im2col, stride=s, padding=(k - 1) // 2)  # [B*C, K*K, H', W']
        cols = cols.view(-1, self.groups, self.group_channels, k * k, ho, wo)
        prod = cols * kernel.view(-1, self.groups, 1, k * k, ho, wo)
        if self.half_sum:
            # sum() of a half tensor exports with an fp32 upcast (Cast, ReduceSum, Cast); mean() stays fp16.
            y = prod.mean(dim=3) * float(k * k)
        else:
            y = prod.sum(dim=3)
        return y.view(-1, self.channels, ho, wo)


def pack_cross_attention(cmam: CMAM, direction: str) -> Tensor:
    """One packed weight buffer in the schema's layout: Wq, bq, Wk, bk, Wv, bv, Wo, bo, ln_gamma, ln_beta."""
    att = cmam.art_from_pv if direction == "art" else cmam.pv_from_art
    norm = cmam.norm_art if direction == "art" else cmam.norm_pv
    parts = [att.q.weight, att.q.bias, att.k.weight, att.k.bias, att.v.weight, att.v.bias, att.o.weight, att.o.bias,
             norm.weight, norm.bias]
    return torch.cat([p.detach().reshape(-1).float() for p in parts])


class ExportCMAM(nn.Module):
    """CMAM as one custom node (both directions), with packed weight initializers."""

    def __init__(self, cmam: CMAM) -> None:
        super().__init__()
        spec = load_schema()[CMAM_PLUGIN]
        eps_a, eps_p = cmam.norm_art.eps, cmam.norm_pv.eps
        if eps_a != eps_p:
            raise ValueError(f"CMAM plugin has one eps; the two LayerNorms use {eps_a} and {eps_p}")
        if cmam.norm_art.weight is None or cmam.norm_pv.weight is None:
            raise ValueError("CMAM plugin needs affine LayerNorms")
        self.plugin = spec
        self.channels = cmam.channels
        self.attrs = spec.node_attributes(heads=cmam.art_from_pv.heads, dim=cmam.art_from_pv.dim, eps=eps_a)
        self.register_buffer("weights_art", pack_cross_attention(cmam, "art"))
        self.register_buffer("weights_pv", pack_cross_attention(cmam, "pv"))
        d, c = cmam.art_from_pv.dim, cmam.channels
        expected = 4 * d * c + 3 * d + 3 * c
        if self.weights_art.numel() != expected:  # pragma: no cover - would be a packing bug
            raise AssertionError(f"packed CMAM weights have {self.weights_art.numel()} elements, expected {expected}")

    def forward(self, art: Tensor, pv: Tensor) -> tuple[Tensor, Tensor]:
        shape = list(art.shape)
        a, p = torch.onnx.ops.symbolic_multi_out(
            f"{self.plugin.domain}::{self.plugin.name}", [art, pv, self.weights_art, self.weights_pv], self.attrs,
            dtypes=[art.dtype, art.dtype], shapes=[shape, shape], version=1)
        return a, p


class ExportSpatialAttention(nn.Module):
    """SpatialAttention with the channel max written as max(dim) (exports as one ReduceMax; `amax` of a half
    tensor is decomposed with an fp32 upcast, which would leave an fp32 island in an fp16 graph)."""

    def __init__(self, sa: SpatialAttention) -> None:
        super().__init__()
        self.kernel_size = sa.kernel_size
        self.conv = sa.conv

    def attention(self, x: Tensor) -> Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), torch.max(x, dim=1, keepdim=True)[0]], dim=1)
        return torch.sigmoid(self.conv(stats))

    # CMIR.forward's step (concatenation, attention, both multiplies), over this module's attention
    apply_pair = SpatialAttention.apply_pair

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attention(x)
        return x * a, a


def _half_friendly_cam(self: CMIR, a: Tensor, p: Tensor | None, logit: Tensor) -> Tensor:
    """CMIR._cam with the per-case peak as max over the flattened map (same value; no fp32 upcast in fp16)."""
    c4 = a.shape[1]
    weight = self.classifier.weight
    if self.config.num_classes == 1:
        w = weight[0].unsqueeze(0).expand(a.shape[0], -1)
    else:
        w = weight[logit.argmax(dim=1)]
    cam = torch.einsum("bc,bchw->bhw", w[:, :c4], a)
    if p is not None:
        cam = cam + torch.einsum("bc,bchw->bhw", w[:, c4:2 * c4], p)
    cam = F.relu(cam).unsqueeze(1)
    peak = torch.max(cam.flatten(2), dim=2, keepdim=True)[0].unsqueeze(-1)
    return cam / (peak + CAM_EPS)


class OutputTuple(nn.Module):
    """(logit, probability, heatmap) as a plain tuple, optionally in fp16 with fp32 inputs/outputs."""

    def __init__(self, model: nn.Module, half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.half_precision = half

    def forward(self, art: Tensor, pv: Tensor, clinical: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.half_precision:
            art, pv, clinical = art.half(), pv.half(), clinical.half()
        out = self.model(art, pv, clinical)
        logit, probability, heatmap = out[0], out[1], out[2]
        if self.half_precision:
            logit, probability, heatmap = logit.float(), probability.float(), heatmap.float()
        return logit, probability, heatmap


def _replace_modules(root: nn.Module, form: str) -> None:
    for name, child in list(root.named_children()):
        if isinstance(child, Involution2d):
            setattr(root, name, ExportInvolution(child, form))
        elif isinstance(child, CMAM) and form == "custom":
            setattr(root, name, ExportCMAM(child))
        elif isinstance(child, SpatialAttention):
            setattr(root, name, ExportSpatialAttention(child))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(root, name, ChannelAffine(child))
        else:
            _replace_modules(child, form)


def exportable_model(model: CMIR, form: str = "standard", precision: str = "fp32") -> OutputTuple:
    """A copy of `model` (eval) that exports to ONNX in `form` at `precision`; the original is left untouched."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    m = copy.deepcopy(model).eval().float()
    _replace_modules(m, form)
    for mod in m.modules():  # the generation BN of each involution is not a direct child of a container
        if isinstance(mod, ExportInvolution) and isinstance(mod.bn, nn.BatchNorm2d):
            mod.bn = ChannelAffine(mod.bn)
    check_finite_parameters(m)
    if precision == "fp16":
        fp16_range_check(m)
        m = m.half()
        m._cam = types.MethodType(_half_friendly_cam, m)  # type: ignore[method-assign]
        for mod in m.modules():
            if isinstance(mod, ExportInvolution):
                mod.half_sum = True
    out = OutputTuple(m, half=precision == "fp16").eval()
    out.requires_grad_(False)
    return out


def reference_model(model: CMIR) -> OutputTuple:
    """The checkpoint model itself, returning a plain (logit, probability, heatmap) tuple (for TorchScript)."""
    m = OutputTuple(copy.deepcopy(model).eval().float(), half=False).eval()
    m.requires_grad_(False)  # a traced module whose outputs require grad would surprise `.numpy()` callers
    return m


def check_finite_parameters(model: nn.Module) -> None:
    """A checkpoint with NaN/inf weights exports to a graph that computes NaN: refuse it with the tensor's name."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"model tensor {name!r} contains NaN or inf; refusing to export")


def fp16_range_check(model: nn.Module) -> None:
    """Weights beyond the fp16 range would become inf in an fp16 graph."""
    limit = 65504.0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and t.numel() and float(t.detach().abs().max()) > limit:
            raise ValueError(f"model tensor {name!r} exceeds the fp16 range (|x| > {limit}); export at fp32")


__all__ = ["FORMS", "ChannelAffine", "ExportCMAM", "ExportInvolution", "ExportSpatialAttention", "OutputTuple",
           "ceil_avg_pool", "check_finite_parameters", "exportable_model", "fp16_range_check", "one_hot_im2col_weight",
           "pack_cross_attention", "reference_model"]
