"""CMAM (cross-modality attention, both directions) on the GPU for torch tensors and cupy arrays.

Weights are the packed buffers of export/plugin_schema.json (``pack_cmam_weights`` builds them from the reference
``CMAM`` module): Wq[dim,C], bq, Wk[dim,C], bk, Wv[dim,C], bv, Wo[C,dim], bo, ln_gamma[C], ln_beta[C].
"""

from __future__ import annotations

from typing import Any

from ._arrays import (
    DTYPE_CODES,
    ArrayInfo,
    check_contiguous,
    check_cuda,
    check_float,
    check_same_dtype,
    describe,
    is_torch_tensor,
)

MAX_HEAD_DIM = 256


def packed_weights_size(channels: int, dim: int) -> int:
    """Elements of one packed buffer: 4*dim*C + 3*dim + 3*C."""
    return 4 * dim * channels + 3 * dim + 3 * channels


def check_cmam_args(art: ArrayInfo, pv: ArrayInfo, weights_art: ArrayInfo, weights_pv: ArrayInfo, heads: int,
                    dim: int | None, eps: float) -> tuple[int, int, int, int, int]:
    """Validate; returns (B, C, H, W, dim) (dim derived from the packed size when None)."""
    if len(art.shape) != 4 or min(art.shape) < 1:
        raise ValueError(f"art must be a non-empty [B, C, H, W], got shape {art.shape}")
    if pv.shape != art.shape:
        raise ValueError(f"CMAM needs art and pv of one shape, got {art.shape} and {pv.shape}")
    b, c, h, w = art.shape
    for n, info in (("weights_art", weights_art), ("weights_pv", weights_pv)):
        if len(info.shape) != 1:
            raise ValueError(f"{n} must be a 1-D packed buffer, got shape {info.shape}")
    n_w = weights_art.shape[0]
    if dim is None:
        if (n_w - 3 * c) <= 0 or (n_w - 3 * c) % (4 * c + 3) != 0:
            raise ValueError(f"weights_art has {n_w} elements, which is 4*dim*C + 3*dim + 3*C for no integer dim "
                             f"(C={c})")
        dim = (n_w - 3 * c) // (4 * c + 3)
    if not isinstance(heads, int) or heads < 1 or dim < 1 or dim % heads != 0:
        raise ValueError(f"dim ({dim}) must be a positive multiple of heads ({heads})")
    if dim // heads > MAX_HEAD_DIM:
        raise ValueError(f"head_dim = dim/heads = {dim // heads} exceeds the kernel's limit {MAX_HEAD_DIM}")
    expected = packed_weights_size(c, dim)
    for n, info in (("weights_art", weights_art), ("weights_pv", weights_pv)):
        if info.shape[0] != expected:
            raise ValueError(f"{n} must have 4*dim*C + 3*dim + 3*C = {expected} elements (C={c}, dim={dim}), got "
                             f"{info.shape[0]}")
    if not (isinstance(eps, (int, float)) and 0.0 <= float(eps) <= 1.0):
        raise ValueError(f"eps must be in [0, 1], got {eps!r}")
    infos = {"art": art, "pv": pv, "weights_art": weights_art, "weights_pv": weights_pv}
    for n, i in infos.items():
        check_float(i, n)
    check_same_dtype(infos)
    check_contiguous(infos)
    check_cuda(infos)
    return b, c, h, w, dim


def cmam(art: Any, pv: Any, weights_art: Any, weights_pv: Any, heads: int, dim: int | None = None,
         eps: float = 1e-5) -> tuple[Any, Any]:
    """Both CMAM directions: (LN_a(t_a + O_a(MHA(Q_a t_a, K_a t_p, V_a t_p))), symmetric) as NCHW maps.

    art/pv [B, C, H, W] (tokens = pixels), packed weights of the same dtype (float32/float16/bfloat16), contiguous,
    on one CUDA device; torch tensors or cupy arrays. Runs asynchronously on the current stream.
    """
    if is_torch_tensor(art):
        from ._torch_ops import torch_cmam

        return torch_cmam(art, pv, weights_art, weights_pv, heads, dim, eps)
    from .involution import _to_cupy

    a, p, wa, wp = _to_cupy(art, pv, weights_art, weights_pv)
    infos = [describe(t, n) for t, n in ((a, "art"), (p, "pv"), (wa, "weights_art"), (wp, "weights_pv"))]
    b, c, h, w, dim = check_cmam_args(*infos, heads, dim, eps)
    import cupy

    from .._native import load_cuda

    mod = load_cuda()
    code = DTYPE_CODES[infos[0].dtype]
    with cupy.cuda.Device(a.device.id):
        out_a = cupy.empty_like(a)
        out_p = cupy.empty_like(p)
        nbytes = int(mod.cmam_workspace_size(code, b, c, h, w, dim, heads))
        ws = cupy.empty((nbytes,), dtype=cupy.uint8)
        mod.cmam(code, a.data.ptr, p.data.ptr, wa.data.ptr, wp.data.ptr, out_a.data.ptr, out_p.data.ptr, ws.data.ptr,
                 nbytes, b, c, h, w, dim, heads, float(eps), stream=cupy.cuda.get_current_stream().ptr)
    return out_a, out_p


def pack_cmam_weights(attention: Any, norm: Any) -> Any:
    """The packed buffer (fp32 torch tensor on the module's device) of one direction of a reference ``CMAM``:
    ``attention`` a ``CrossAttention`` (e.g. cmam.art_from_pv), ``norm`` its ``LayerNorm`` (cmam.norm_art)."""
    import torch

    with torch.no_grad():
        parts = [attention.q.weight, attention.q.bias, attention.k.weight, attention.k.bias, attention.v.weight,
                 attention.v.bias, attention.o.weight, attention.o.bias, norm.weight, norm.bias]
        return torch.cat([t.detach().reshape(-1).float() for t in parts]).contiguous()


def pack_cmam_module(module: Any) -> tuple[Any, Any]:
    """(weights_art, weights_pv) of a reference ``CMAM`` module."""
    return (pack_cmam_weights(module.art_from_pv, module.norm_art),
            pack_cmam_weights(module.pv_from_art, module.norm_pv))
