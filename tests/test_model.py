"""The PyTorch reference CMIR: every variant's outputs, determinism, gradients; CMAM and SA against float64 numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmir_trt.model import (
    CMAM,
    CMIR,
    VARIANTS,
    CheckpointError,
    CMIRConfig,
    InvResNet,
    SpatialAttention,
    build_model,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)

SMALL = dict(width=0.25, image_size=64)


def _inputs(cfg: CMIRConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    return (torch.randn(batch, 3, s, s, generator=g), torch.randn(batch, 3, s, s, generator=g),
            torch.randn(batch, cfg.num_clinical, generator=g))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_variant_outputs(variant: str, num_classes: int) -> None:
    torch.manual_seed(1)
    cfg = CMIRConfig(variant=variant, num_classes=num_classes, **SMALL)
    model = build_model(cfg).eval()
    art, pv, clin = _inputs(cfg, 3)
    with torch.no_grad():
        out = model(art, pv, clin)
        again = model(art, pv, clin)
    assert out.logit.shape == (3, num_classes)
    assert out.probability.shape == (3, num_classes)
    assert out.heatmap.shape == (3, 1, cfg.image_size, cfg.image_size)
    if num_classes == 1:
        torch.testing.assert_close(out.probability, torch.sigmoid(out.logit), rtol=0, atol=1e-7)
    else:
        torch.testing.assert_close(out.probability, torch.softmax(out.logit, 1), rtol=0, atol=1e-7)
        torch.testing.assert_close(out.probability.sum(1), torch.ones(3), rtol=0, atol=1e-6)
    assert torch.isfinite(out.heatmap).all()
    assert out.heatmap.min() >= 0.0 and out.heatmap.max() <= 1.0
    for a, b in zip(out, again, strict=True):  # eval mode is deterministic, bit for bit
        assert torch.equal(a, b)


def test_default_full_model_shapes() -> None:
    cfg = CMIRConfig()
    model = build_model(cfg).eval()
    assert model.art_backbone.stage_channels == [256, 512, 1024, 2048]
    art, pv, clin = _inputs(cfg, 1)
    with torch.no_grad():
        out = model(art, pv, clin)
        a = model.art_backbone(art)
    assert a.shape == (1, 2048, 4, 4)  # 16 tokens x 2048 channels at S=128
    assert out.heatmap.shape == (1, 1, 128, 128)


def test_variants_differ_in_parts() -> None:
    parts = {v: build_model(CMIRConfig(variant=v, **SMALL)) for v in VARIANTS}
    assert parts["S1"].pv_backbone is None and parts["M1"].pv_backbone is not None
    assert not parts["M1"].art_backbone.involution and parts["M2"].art_backbone.involution
    assert parts["M2"].cmam is None and parts["M3"].cmam is not None
    assert parts["M3"].sa3 is None and parts["full"].sa3 is not None
    counts = [count_parameters(parts[v]) for v in ("M2", "M3", "full")]
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_every_parameter(variant: str) -> None:
    torch.manual_seed(2)
    cfg = CMIRConfig(variant=variant, dropout=0.0, **SMALL)
    model = build_model(cfg).train()
    art, pv, clin = _inputs(cfg, 4, seed=3)
    out = model(art, pv, clin)
    out.logit.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_s1_ignores_pv() -> None:
    cfg = CMIRConfig(variant="S1", **SMALL)
    model = build_model(cfg).eval()
    art, pv, clin = _inputs(cfg, 2)
    with torch.no_grad():
        a = model(art, pv, clin)
        b = model(art, torch.zeros_like(pv), clin)
    assert torch.equal(a.logit, b.logit)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _cross_attention_np(att: torch.nn.Module, xq: np.ndarray, xkv: np.ndarray) -> np.ndarray:
    def lin(layer: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
        return x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()

    b, n, _ = xq.shape
    h, dh = att.heads, att.head_dim
    q = lin(att.q, xq).reshape(b, n, h, dh)
    k = lin(att.k, xkv).reshape(b, -1, h, dh)
    v = lin(att.v, xkv).reshape(b, -1, h, dh)
    out = np.zeros((b, n, h, dh))
    for bi in range(b):
        for hi in range(h):
            s = q[bi, :, hi] @ k[bi, :, hi].T / math.sqrt(dh)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[bi, :, hi] = s @ v[bi, :, hi]
    return lin(att.o, out.reshape(b, n, h * dh))


@pytest.mark.parametrize("channels,heads,dim,hw", [(48, 4, 32, (4, 4)), (64, 8, 64, (7, 7)), (32, 2, 16, (3, 5))])
def test_cmam_matches_float64(channels: int, heads: int, dim: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(channels)
    m = CMAM(channels, heads, dim).eval()
    with torch.no_grad():
        for norm in (m.norm_art, m.norm_pv):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    a, p = torch.randn(2, channels, *hw), torch.randn(2, channels, *hw)
    with torch.no_grad():
        ya, yp = m(a, p)
    ta = a.double().flatten(2).transpose(1, 2).numpy()
    tp = p.double().flatten(2).transpose(1, 2).numpy()

    def ln(norm: torch.nn.LayerNorm, x: np.ndarray) -> np.ndarray:
        return _layer_norm(x, norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy(), norm.eps)

    ra = ln(m.norm_art, ta + _cross_attention_np(m.art_from_pv, ta, tp))
    rp = ln(m.norm_pv, tp + _cross_attention_np(m.pv_from_art, tp, ta))
    np.testing.assert_allclose(ya.flatten(2).transpose(1, 2).numpy(), ra, atol=2e-5, rtol=0)
    np.testing.assert_allclose(yp.flatten(2).transpose(1, 2).numpy(), rp, atol=2e-5, rtol=0)


def test_spatial_attention_matches_float64() -> None:
    torch.manual_seed(5)
    sa = SpatialAttention(7).eval()
    x = torch.randn(2, 40, 9, 11)
    with torch.no_grad():
        y, a = sa(x)
    xd = x.double().numpy()
    stats = np.stack([xd.mean(1), xd.max(1)], 1)
    w = sa.conv.weight.detach().double().numpy()
    padded = np.pad(stats, ((0, 0), (0, 0), (3, 3), (3, 3)))
    logits = np.full((2, 9, 11), float(sa.conv.bias.item()))
    for i in range(7):
        for j in range(7):
            logits += np.einsum("bchw,c->bhw", padded[:, :, i:i + 9, j:j + 11], w[0, :, i, j])
    ref = 1.0 / (1.0 + np.exp(-logits))
    np.testing.assert_allclose(a[:, 0].numpy(), ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(y.numpy(), xd * ref[:, None], atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [dict(variant="M4"), dict(depth=34), dict(num_classes=2), dict(image_size=16),
                                 dict(dropout=1.0)])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        CMIRConfig(**bad)


def test_config_round_trip_and_unknown_fields() -> None:
    cfg = CMIRConfig(variant="M3", width=0.5, depth=38)
    assert CMIRConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        CMIRConfig.from_dict({**cfg.to_dict(), "colour": "red"})


@pytest.mark.parametrize("depth,blocks", [(26, 8), (38, 12), (50, 16)])
def test_backbone_depths(depth: int, blocks: int) -> None:
    net = InvResNet(depth=depth, width=0.25)
    assert sum(len(s) for s in net.stages) == blocks
    # 3 stem convs, 3 convs per block, classifier counted by the name depth (ResNet convention) -> 3*blocks + 2
    assert 3 * blocks + 2 == depth


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(7)
    cfg = CMIRConfig(variant="full", **SMALL)
    model = CMIR(cfg).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {"threshold": 0.42, "training_data": {"synthetic": True}})
    loaded = load_checkpoint(path)
    assert loaded.config == cfg and not loaded.training
    assert loaded.metadata["threshold"] == 0.42
    art, pv, clin = _inputs(cfg, 2)
    with torch.no_grad():
        assert torch.equal(model(art, pv, clin).logit, loaded(art, pv, clin).logit)
    # A file that is not a checkpoint, a truncated one, and a pickle with code are refused with a clear error.
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable cmir checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cmir checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
