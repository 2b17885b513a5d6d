"""Training loop: bit-reproducible checkpoints, resume == uninterrupted, checkpoint contents, threshold, early
stopping and augmentation. Toy arrays at S = 32, width 0.125 (a few seconds per run)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _train_helpers import toy_arrays
from sklearn.metrics import roc_curve

from cmir_trt.model import VARIANTS, load_checkpoint
from cmir_trt.model.checkpoint import file_sha256
from cmir_trt.train import TrainConfig, TrainData, fit, predict_proba, resume_path
from cmir_trt.train.augment import augment_batch
from cmir_trt.train.config import VARIANTS as TRAIN_VARIANTS

CFG = dict(batch_size=8, image_size=32, width=0.125, cmam_dim=32, cmam_heads=2, threads=1)


def _data(seed: int = 0) -> TrainData:
    art, pv, cl, y, sp = toy_arrays(seed=seed)
    return TrainData(art, pv, cl, y, sp)


def _quiet(_: str) -> None:
    pass


def test_variants_agree_with_model():
    assert TRAIN_VARIANTS == VARIANTS


def test_same_seed_same_checkpoint_bytes(tmp_path):
    cfg = TrainConfig(epochs=2, **CFG)
    data = _data()
    a = fit(data, cfg, tmp_path / "a" / "m.pt", {"note": "x"}, progress=False, log=_quiet)
    b = fit(data, cfg, tmp_path / "b" / "m.pt", {"note": "x"}, progress=False, log=_quiet)
    assert file_sha256(tmp_path / "a" / "m.pt") == file_sha256(tmp_path / "b" / "m.pt")
    assert a.threshold == b.threshold and a.history == b.history
    c = fit(data, TrainConfig(epochs=1, seed=1, **CFG), tmp_path / "c" / "m.pt", {"note": "x"}, progress=False,
            log=_quiet)
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_resume_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(epochs=3, patience=10, **CFG)
    data = _data(1)
    fit(data, cfg, tmp_path / "full" / "m.pt", {}, progress=False, log=_quiet)

    class Stop(Exception):
        pass

    def interrupt_at_epoch_2(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise Stop  # raised after epoch 2's update, before its resume state is saved

    out = tmp_path / "resumed" / "m.pt"
    with pytest.raises(Stop):
        fit(data, cfg, out, {}, progress=False, log=interrupt_at_epoch_2)
    assert not out.exists() and resume_path(out).is_file()
    lines: list[str] = []
    fit(data, cfg, out, {}, resume=True, progress=False, log=lines.append)
    assert lines[0].startswith("resuming") and "after epoch 1" in lines[0]
    assert file_sha256(out) == file_sha256(tmp_path / "full" / "m.pt")
    # a resume file from other settings is refused, not silently mixed in
    with pytest.raises(ValueError, match="different settings"):
        fit(data, TrainConfig(epochs=4, **CFG), out, {}, resume=True, progress=False, log=_quiet)


def test_checkpoint_contents_and_threshold(tmp_path):
    cfg = TrainConfig(epochs=2, **CFG)
    data = _data(2)
    out = tmp_path / "m.pt"
    r = fit(data, cfg, out, {"training_data": {"synthetic": True}}, progress=False, log=_quiet)
    raw = torch.load(out, map_location="cpu", weights_only=True)  # plain data and tensors only
    meta = raw["metadata"]
    for key in ("threshold", "seed", "versions", "train_config", "epoch", "history", "training_data"):
        assert key in meta, key
    assert meta["seed"] == 0 and meta["training_data"]["synthetic"] is True
    assert all(isinstance(v, str) for v in meta["versions"].values())
    model = load_checkpoint(out)
    assert not model.training and model.config.variant == "full" and model.config.image_size == 32
    # the stored threshold is Youden's J of the saved model on the internal split (brute force over cut-offs)
    iv = data.splits == "internal"
    with torch.no_grad():
        prob = predict_proba(model, data.art[iv], data.pv[iv], data.clinical[iv])
    y = data.labels[iv]
    fpr, tpr, thr = roc_curve(y, prob)
    best_j = np.max(tpr - fpr)
    pred = prob >= meta["threshold"]
    j = pred[y == 1].mean() - pred[y == 0].mean()
    assert j == pytest.approx(best_j, abs=1e-12)
    assert meta["threshold"] == r.threshold
    assert 1 <= meta["epoch"] <= 2 and math.isfinite(meta["internal_auc"])


def test_early_stopping(tmp_path):
    # min_delta = 1: no AUC gain can count as an improvement after epoch 1 -> stop after `patience` more epochs
    cfg = TrainConfig(epochs=6, patience=2, min_delta=1.0, **CFG)
    r = fit(_data(3), cfg, tmp_path / "m.pt", {}, progress=False, log=_quiet)
    assert r.stopped_early and r.epochs_run == 3 and r.best_epoch == 1


def test_zero_init_residual_makes_blocks_identities():
    from cmir_trt.model import CMIRConfig, build_model
    from cmir_trt.model.resnet import Bottleneck
    from cmir_trt.train.loop import zero_init_residual

    torch.manual_seed(0)
    model = build_model(CMIRConfig(image_size=32, width=0.125, cmam_dim=32, cmam_heads=2)).eval()
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert zero_init_residual(model) == len(blocks) == 2 * 8  # two backbones, depth 26 = 1+2+4+1 blocks
    x = torch.randn(2, blocks[1].conv1[0].in_channels, 5, 5)
    with torch.no_grad():
        ref = torch.relu(x if blocks[1].downsample is None else blocks[1].downsample(x))
        assert torch.allclose(blocks[1](x), ref, atol=0)


def test_bad_training_data():
    art, pv, cl, y, sp = toy_arrays()
    art[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TrainData(art, pv, cl, y, sp)
    art, pv, cl, y, sp = toy_arrays()
    y[sp == "internal"] = 0
    with pytest.raises(ValueError, match="internal"):
        TrainData(art, pv, cl, y, sp)
    with pytest.raises(ValueError, match="art"):
        TrainData(art[:, :, :30], pv, cl, y, sp)
    with pytest.raises(ValueError, match="variant"):
        TrainConfig(variant="M9")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)


def test_augment_same_geometry_both_phases_and_jitter_bounds():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 17, 17)
    # flips only: each case is one of the 4 flip combinations, and ART and PV get the same one
    a, p = augment_batch(x, x.clone(), g, flip=True, rotate_deg=0.0, intensity_jitter=0.0)
    assert torch.equal(a, p)
    for i in range(6):
        options = [x[i], x[i].flip(-1), x[i].flip(-2), x[i].flip(-1).flip(-2)]
        assert any(torch.equal(a[i], o) for o in options)
    # rotation only: identical for both phases, preserves a constant image, changes a textured one only a little
    a, p = augment_batch(x, x.clone(), g, flip=False, rotate_deg=10.0, intensity_jitter=0.0)
    assert torch.allclose(a, p)
    const = torch.full((2, 3, 17, 17), 0.7)
    c, _ = augment_batch(const, const, g, flip=False, rotate_deg=10.0, intensity_jitter=0.0)
    assert torch.allclose(c, const, atol=1e-6)
    # jitter only: per case and phase an affine map a*x+b with |a-1| <= j and |b| <= j (fit by least squares)
    a, p = augment_batch(x, x.clone(), g, flip=False, rotate_deg=0.0, intensity_jitter=0.1)
    for out in (a, p):
        for i in range(6):
            xs, ys = x[i].flatten().double().numpy(), out[i].flatten().double().numpy()
            slope, icpt = np.polyfit(xs, ys, 1)
            assert abs(slope - 1) <= 0.1 + 1e-6 and abs(icpt) <= 0.1 + 1e-6
            assert np.allclose(ys, slope * xs + icpt, atol=1e-5)
    assert not torch.equal(a, p)  # intensity jitter is drawn per phase
    # the same generator state gives the same augmentation
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(augment_batch(x, x, g1)[0], augment_batch(x, x, g2)[0])
