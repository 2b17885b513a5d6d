"""Export-form building blocks against independent float64 references (naive loops from tests/_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _export_helpers import schema_json

from cmir_trt.export.graph import ChannelAffine, ExportInvolution, ceil_avg_pool, pack_cross_attention
from cmir_trt.export.schema import SchemaError, load_schema, parse_schema
from cmir_trt.model import CMAM, Involution2d

from _reference import avg_pool_ceil_loop, involution_loop


@pytest.mark.parametrize("h,w,s", [(13, 13, 2), (13, 10, 2), (7, 11, 3), (8, 8, 2), (5, 5, 1)])
def test_ceil_avg_pool_matches_valid_pixel_mean(h: int, w: int, s: int) -> None:
    x = torch.randn(2, 5, h, w, generator=torch.Generator().manual_seed(h * w + s))
    got = ceil_avg_pool(x, s).numpy()
    ref = avg_pool_ceil_loop(x.numpy(), s)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)  # float32 mean of <= 9 values


@pytest.mark.parametrize("c,hw,k,s", [(48, 13, 3, 1), (48, 13, 7, 2), (32, 9, 7, 1), (16, 6, 3, 2)])
def test_standard_involution_matches_naive_loop(c: int, hw: int, k: int, s: int) -> None:
    torch.manual_seed(c + hw + k + s)
    inv = Involution2d(c, k, s).eval()
    with torch.no_grad():
        inv.bn.running_mean.uniform_(-0.3, 0.3)
        inv.bn.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, c, hw, hw)
        # kernel from the reference module (avg_pool2d ceil_mode), aggregation by the float64 naive loop
        kernel = inv.generate_kernel(x).double().numpy()
        ref = involution_loop(x.double().numpy(), kernel, k, s)
        exp = ExportInvolution(inv, "standard")
        exp.bn = ChannelAffine(inv.bn)
        got = exp(x).numpy()
        ours = inv(x).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(got, ours, atol=2e-5, rtol=0)


def test_channel_affine_equals_batchnorm_eval() -> None:
    bn = torch.nn.BatchNorm2d(17).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.01, 4)
        bn.weight.uniform_(-1, 1)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(3, 17, 5, 4, dtype=torch.float32)
    xd = x.double().numpy()
    rm, rv = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    ref = ((xd - rm[:, None, None]) / np.sqrt(rv[:, None, None] + bn.eps) * bn.weight.detach().double().numpy()[
        :, None, None] + bn.bias.detach().double().numpy()[:, None, None])
    np.testing.assert_allclose(ChannelAffine(bn)(x).detach().numpy(), ref, atol=1e-5, rtol=1e-6)


def test_packed_cmam_weights_follow_schema_layout() -> None:
    torch.manual_seed(3)
    cmam = CMAM(48, heads=4, dim=32)
    buf = pack_cross_attention(cmam, "pv").numpy()
    d, c = 32, 48
    assert buf.size == 4 * d * c + 3 * d + 3 * c
    # Layout as written in export/plugin_schema.json, unpacked here by hand.
    sizes = [d * c, d, d * c, d, d * c, d, c * d, c, c, c]
    parts = np.split(buf, np.cumsum(sizes)[:-1])
    att, norm = cmam.pv_from_art, cmam.norm_pv
    want = [att.q.weight, att.q.bias, att.k.weight, att.k.bias, att.v.weight, att.v.bias, att.o.weight, att.o.bias,
            norm.weight, norm.bias]
    for got, w in zip(parts, want, strict=True):
        np.testing.assert_array_equal(got, w.detach().reshape(-1).numpy())
    assert "Wq[dim,C], bq[dim], Wk[dim,C]" in schema_json()["plugins"][1]["inputs"][2]["layout"]


def test_schema_attributes_are_checked() -> None:
    schema = load_schema()
    inv = schema["CMIRInvolution"]
    attrs = inv.node_attributes(kernel_size=7, stride=2, group_channels=16)
    assert attrs == {"kernel_size": 7, "stride": 2, "group_channels": 16, "plugin_namespace": "cmir",
                     "plugin_version": "1"}
    with pytest.raises(SchemaError, match="odd"):
        inv.node_attributes(kernel_size=4)
    with pytest.raises(SchemaError, match="range"):
        inv.node_attributes(stride=9)
    with pytest.raises(SchemaError, match="not fields"):
        inv.node_attributes(dilation=1)
    with pytest.raises(SchemaError, match="int32"):
        inv.node_attributes(group_channels=2**40)
    with pytest.raises(SchemaError, match="finite"):
        schema["CMIRCrossModalAttention"].node_attributes(eps=float("nan"))
    with pytest.raises(SchemaError, match="not in"):
        schema["NoSuchPlugin"]


def test_schema_parser_rejects_malformed(tmp_path) -> None:  # noqa: ANN001
    data = schema_json()
    data["plugins"][0]["fields"][0]["type"] = "int64"
    with pytest.raises(SchemaError, match="int32 or float32"):
        parse_schema(data, tmp_path / "s.json")
    with pytest.raises(SchemaError, match="namespace"):
        parse_schema({"plugins": []}, tmp_path / "s.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json", encoding="utf-8")
    with pytest.raises(SchemaError, match="cannot read"):
        load_schema(bad)
