"""ROI extraction, phase alignment, normalisation and heatmap placement of cmir_trt.data.preprocess.

Independent references: analytic images (a linear ramp in physical millimetres, whose bilinear resampling is exact),
landmarks placed in physical space, numpy float64 statistics, a brute-force Feret diameter, Dice against the
original mask. Tolerances are stated at each assertion.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("SimpleITK")
pytest.importorskip("scipy")

from _data_helpers import OBLIQUE, ball, dice, files_in, make_image, phantom, sitk, write_case  # noqa: E402

from cmir_trt.cli import main as cli_main  # noqa: E402
from cmir_trt.data import (  # noqa: E402
    CaseFiles,
    DataError,
    GeometryError,
    MaskError,
    PreprocessParams,
    place_back,
    prepare_case,
    prepare_images,
    resample_onto,
    write_heatmap,
)

SP = (0.9, 1.1, 2.5)


def _phys(img, idx) -> np.ndarray:
    return np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


def _ramp_images(direction, shape=(13, 40, 46), centre=(6, 19, 23), radius=8.0, stretch_i=1.0):
    """ART = 3 + 0.7 x - 0.4 y + 0.2 z (physical mm) on the given grid, PV = 2 * ART, mask a (stretched) ball."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    ref = make_image(np.zeros(shape, np.float32), SP, direction=direction)
    d = np.array(ref.GetDirection()).reshape(3, 3)
    idx = np.stack([i, j, k], -1) * np.array(SP)
    phys = np.array(ref.GetOrigin()) + idx @ d.T
    ramp = 3.0 + 0.7 * phys[..., 0] - 0.4 * phys[..., 1] + 0.2 * phys[..., 2]
    kk, jj, ii = np.ogrid[:shape[0], :shape[1], :shape[2]]
    m = (((ii - centre[2]) * SP[0] / stretch_i) ** 2 + ((jj - centre[1]) * SP[1]) ** 2
         + ((kk - centre[0]) * SP[2]) ** 2) <= radius ** 2
    return (make_image(ramp, SP, direction=direction), make_image(2 * ramp, SP, direction=direction),
            make_image(m.astype(np.uint8), SP, direction=direction), m)


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_roi_samples_the_right_physical_points(direction) -> None:
    direction = direction or (1, 0, 0, 0, 1, 0, 0, 0, 1)
    art, pv, mask, m = _ramp_images(direction)
    s = 33  # odd output size
    params = PreprocessParams(image_size=s, margin_mm=4.0, clip_percentiles=(0.0, 100.0))
    p = prepare_images("ramp", art, pv, mask, params)
    assert p.slices == (5, 6, 7)  # the ball's centre slice (largest area) and its neighbours
    # Expected square: the component's bounding box (voxel edges) + 4 mm, its longer side in mm.
    ks, js, is_ = np.nonzero(m)
    i0, i1 = is_.min() - 0.5 - 4.0 / SP[0], is_.max() + 0.5 + 4.0 / SP[0]
    j0, j1 = js.min() - 0.5 - 4.0 / SP[1], js.max() + 0.5 + 4.0 / SP[1]
    side = max((i1 - i0) * SP[0], (j1 - j0) * SP[1])
    d = np.array(art.GetDirection()).reshape(3, 3)
    for ch, k in enumerate(p.slices):
        centre = _phys(art, ((i0 + i1) / 2, (j0 + j1) / 2, k))
        t = (np.arange(s) + 0.5 - s / 2) * side / s
        pts = centre + t[None, :, None] * d[:, 0] + t[:, None, None] * d[:, 1]  # [row, col, xyz]
        want = 3.0 + 0.7 * pts[..., 0] - 0.4 * pts[..., 1] + 0.2 * pts[..., 2]
        for name, scale in (("art", 1.0), ("pv", 2.0)):
            st = p.stats[name]
            got = getattr(p, name)[ch].astype(np.float64) * st["std"] + st["mean"]
            # pixels of the square outside the crop rectangle hold the pad value in "pad" mode
            rr, cc = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
            ii = (i0 + i1) / 2 + (cc + 0.5 - s / 2) * side / s / SP[0]
            jj = (j0 + j1) / 2 + (rr + 0.5 - s / 2) * side / s / SP[1]
            inside = (ii >= i0) & (ii <= i1) & (jj >= j0) & (jj <= j1)
            # the clip range is the crop's 0/100 percentiles: a rectangle pixel between the outermost voxel centres
            # and the rectangle's edge can extrapolate past them, so the expected value is clipped the same way
            expect = np.clip(scale * want, st["p_lo"], st["p_hi"])
            np.testing.assert_allclose(got[inside], expect[inside], rtol=0, atol=2e-4 * abs(expect).max())
    # statistics: numpy float64 over the native crop voxels of the three slices (no clipping at 0/100 %)
    # (volumes are read as float32: relative tolerance 1e-6)
    crop = sitk().GetArrayFromImage(art)[5:8, math.ceil(j0):math.floor(j1) + 1, math.ceil(i0):math.floor(i1) + 1]
    assert p.stats["art"]["mean"] == pytest.approx(crop.mean(), rel=1e-6, abs=1e-6)
    assert p.stats["art"]["std"] == pytest.approx(crop.std(), rel=1e-6)
    assert p.stats["pv"]["mean"] == pytest.approx(2 * crop.mean(), rel=1e-6, abs=1e-6)


def test_pad_and_extend_modes_keep_aspect_ratio() -> None:
    # Tumour twice as long along i as along j: the square is padded above/below (pad) or filled from the image.
    art, pv, mask, _ = _ramp_images(OBLIQUE, stretch_i=2.0, radius=7.0)
    s = 40
    p_pad = prepare_images("e", art, pv, mask, PreprocessParams(image_size=s, margin_mm=2.0))
    p_ext = prepare_images("e", art, pv, mask, PreprocessParams(image_size=s, margin_mm=2.0, square="extend"))
    pad = (p_pad.stats["art"]["p_lo"] - p_pad.stats["art"]["mean"]) / p_pad.stats["art"]["std"]
    assert np.all(p_pad.art[:, 0, :] == np.float32(pad)) and np.all(p_pad.art[:, -1, :] == np.float32(pad))
    assert np.ptp(p_ext.art[1, 0, :]) > 0.1  # real (ramp) content, not a constant
    assert np.ptp(p_pad.art[1, s // 2, :]) > 0.1
    # The mask's aspect ratio is kept: extent along columns ~2x the extent along rows (10 % tolerance).
    rows = np.flatnonzero(p_pad.mask[1].any(1))
    cols = np.flatnonzero(p_pad.mask[1].any(0))
    assert (np.ptp(cols) + 1) / (np.ptp(rows) + 1) == pytest.approx(2.0, rel=0.1)


def test_pv_on_another_grid_lands_on_the_same_voxel() -> None:
    shape = (12, 36, 40)
    art0 = make_image(np.zeros(shape, np.float32), SP, origin=(-20.0, 5.0, 3.0), direction=OBLIQUE)
    target = (23, 14, 7)  # (i, j, k) of the landmark in ART
    p = _phys(art0, target)
    # PV: identity direction, finer spacing, other origin and size; a Gaussian landmark (sigma 1.5 mm) at p.
    pv_sp, pv_shape = (0.6, 0.7, 1.5), (30, 70, 80)
    pv_origin = np.array(p) - np.array([0.6 * 37.3, 0.7 * 33.1, 1.5 * 14.6])
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in pv_shape), indexing="ij")
    pos = pv_origin + np.stack([i * pv_sp[0], j * pv_sp[1], k * pv_sp[2]], -1)
    blob = 100.0 * np.exp(-0.5 * ((pos - p) ** 2).sum(-1) / 1.5 ** 2) + 10.0
    pv = make_image(blob.astype(np.float32), pv_sp, origin=tuple(pv_origin))
    on_art = sitk().GetArrayFromImage(resample_onto(pv, art0, what="PV"))
    assert np.unravel_index(np.nanargmax(on_art), on_art.shape) == (target[2], target[1], target[0])
    # the same landmark in ART (on its own grid) and PV end up on the same ROI pixel
    kk, jj, ii = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    d = np.array(OBLIQUE).reshape(3, 3)
    ppos = np.array(art0.GetOrigin()) + (np.stack([ii, jj, kk], -1) * np.array(SP)) @ d.T
    art_arr = 100.0 * np.exp(-0.5 * ((ppos - p) ** 2).sum(-1) / 1.5 ** 2) + 10.0
    art = make_image(art_arr.astype(np.float32), SP, origin=art0.GetOrigin(), direction=OBLIQUE)
    mask = make_image(ball(shape, (7, 14, 23), 6.0, SP).astype(np.uint8), SP, origin=art0.GetOrigin(),
                      direction=OBLIQUE)
    prep = prepare_images("lm", art, pv, mask, PreprocessParams(image_size=48))
    assert prep.info["pv_resampled"] and prep.slices == (6, 7, 8)
    a = np.unravel_index(np.argmax(prep.art[1]), prep.art[1].shape)
    b = np.unravel_index(np.argmax(prep.pv[1]), prep.pv[1].shape)
    assert abs(a[0] - b[0]) <= 1 and abs(a[1] - b[1]) <= 1  # within one output pixel


def test_non_overlapping_phases_are_refused_with_extents() -> None:
    art, pv, mask = phantom()
    far = make_image(sitk().GetArrayFromImage(pv), SP, origin=(500.0, 12.5, 30.0))
    with pytest.raises(GeometryError, match=r"case 'far': PV does not overlap ART.*ART extent \[.*\] mm, "
                                            r"PV extent \[.*\] mm"):
        prepare_images("far", art, far, mask)


def test_mask_on_another_grid_is_resampled_nearest() -> None:
    art, pv, mask = phantom(direction=OBLIQUE)
    m2 = sitk().Resample(mask, [s * 2 for s in mask.GetSize()], sitk().Transform(), sitk().sitkNearestNeighbor,
                         mask.GetOrigin(), [s / 2 for s in mask.GetSpacing()], mask.GetDirection(), 0,
                         sitk().sitkUInt8)
    a = prepare_images("m", art, pv, mask)
    b = prepare_images("m", art, pv, m2)
    assert b.info["mask_resampled"] and not a.info["mask_resampled"]
    assert dice(a.mask, b.mask) >= 0.95


def test_component_selection_and_mask_errors() -> None:
    shape = (20, 40, 40)
    big = ball(shape, (6, 20, 12), 8.0, SP)
    small = ball(shape, (14, 20, 30), 4.0, SP)
    art, pv, _ = phantom(shape=shape, centre=(6, 20, 12), radius_mm=8.0)
    mask = make_image((big | small).astype(np.uint8), SP, origin=art.GetOrigin())
    p1 = prepare_images("two", art, pv, mask, PreprocessParams(image_size=32))
    p2 = prepare_images("two", art, pv, mask, PreprocessParams(image_size=32, component=2))
    assert p1.info["components"] == 2 and p1.slices == (5, 6, 7) and p2.slices == (13, 14, 15)
    assert p1.info["component_voxels"] == int(big.sum()) and p2.info["component_voxels"] == int(small.sum())
    with pytest.raises(MaskError, match=r"component 3 requested but the mask has only 2"):
        prepare_images("two", art, pv, mask, PreprocessParams(component=3))
    empty = make_image(np.zeros(shape, np.uint8), SP, origin=art.GetOrigin())
    with pytest.raises(MaskError, match=r"case 'e': the tumour mask is empty"):
        prepare_images("e", art, pv, empty)
    flat = make_image(np.full(shape, 7.0, np.float32), SP, origin=art.GetOrigin())
    with pytest.raises(DataError, match=r"PV is constant in the tumour ROI"):
        prepare_images("f", art, flat, mask)


def test_channels_clamped_at_volume_ends() -> None:
    shape = (6, 30, 30)
    art, pv, _ = phantom(shape=shape, centre=(0, 15, 15), radius_mm=5.0)
    m = ball(shape, (0, 15, 15), 5.0, SP)
    p = prepare_images("edge", art, pv, make_image(m.astype(np.uint8), SP, origin=art.GetOrigin()),
                       PreprocessParams(image_size=16))
    assert p.slices == (0, 0, 1)


def _brute_feret(comp: np.ndarray, sx: float, sy: float) -> float:
    best = 0.0
    for sl in comp:
        jj, ii = np.nonzero(sl)
        corners = [((i + a) * sx, (j + b) * sy) for i, j in zip(ii, jj, strict=True) for a in (-.5, .5)
                   for b in (-.5, .5)]
        for x1, y1 in corners:
            for x2, y2 in corners:
                best = max(best, math.hypot(x1 - x2, y1 - y2))
    return best


def test_diameter_matches_brute_force_and_geometry() -> None:
    shape = (9, 24, 24)
    m = ball(shape, (4, 11, 12), 6.0, SP)
    art, pv, _ = phantom(shape=shape, centre=(4, 11, 12), radius_mm=6.0)
    p = prepare_images("d", art, pv, make_image(m.astype(np.uint8), SP, origin=art.GetOrigin()),
                       PreprocessParams(image_size=16))
    assert p.diameter_mm == pytest.approx(_brute_feret(m, SP[0], SP[1]), rel=1e-9)
    assert 12.0 - SP[1] <= p.diameter_mm <= 12.0 + 2 * SP[1]  # true diameter 12 mm, within a voxel or two


def test_heatmap_back_in_image_space_dice(tmp_path: Path) -> None:
    shape = (14, 44, 50)
    m = ball(shape, (7, 22, 24), 9.0, SP) | ball(shape, (7, 15, 31), 4.0, SP)  # a ball with a bump
    art, pv, _ = phantom(shape=shape, centre=(7, 22, 24), radius_mm=9.0, direction=OBLIQUE)
    mask = make_image(m.astype(np.uint8), SP, origin=art.GetOrigin(), direction=OBLIQUE)
    for s in (64, 29):
        p = prepare_images("h", art, pv, mask, PreprocessParams(image_size=s, margin_mm=6.0))
        nii, png = tmp_path / f"h{s}.nii.gz", tmp_path / f"h{s}.png"
        write_heatmap(p, p.mask[1].astype(np.float32), nii, png)
        back = sitk().ReadImage(str(nii))
        assert back.GetSize() == art.GetSize()
        np.testing.assert_allclose(back.GetSpacing(), art.GetSpacing(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(back.GetOrigin(), art.GetOrigin(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(back.GetDirection(), art.GetDirection(), rtol=0, atol=1e-6)
        vol = sitk().GetArrayFromImage(back)
        k = p.slices[1]
        assert dice(vol[k] >= 0.5, m[k]) >= 0.9
        others = [z for z in range(shape[0]) if z not in p.slices]
        assert not vol[others].any()  # zeros outside the ROI slices
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(not f.name.startswith(".") for f in files_in(tmp_path))
    # place_back agrees with the file, and a bad map writes nothing
    np.testing.assert_array_equal(place_back(p, p.mask[1]), vol)
    for bad in (np.zeros((28, 29)), np.full((29, 29), np.nan)):
        with pytest.raises(DataError, match="heatmap"):
            write_heatmap(p, bad, tmp_path / "bad.nii.gz", tmp_path / "bad.png")
    assert not (tmp_path / "bad.nii.gz").exists() and not (tmp_path / "bad.png").exists()


def test_prepare_case_missing_pv() -> None:
    with pytest.raises(DataError, match=r"case 'x': missing PV input"):
        prepare_case(CaseFiles("x", Path("a.nii.gz"), None, Path("m.nii.gz")))


def test_params_round_trip_and_validation() -> None:
    p = PreprocessParams(image_size=96, margin_mm=7.5, clip_percentiles=(1, 99), component=2, square="extend")
    assert PreprocessParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    for bad in ({"image_size": 4}, {"margin_mm": -1.0}, {"clip_percentiles": (50, 10)}, {"component": 0},
                {"square": "crop"}):
        with pytest.raises(ValueError):
            PreprocessParams(**bad)
    with pytest.raises(ValueError, match="unknown"):
        PreprocessParams.from_dict({"size": 3})


def _clinical_csv(path: Path, ids: list[str]) -> None:
    rows = ["case_id,age,sex,log10_afp,log10_pivka,hbv,cirrhosis,albi"]
    rows += [f"{cid},{50 + i},1,{1.5 + i / 10},2.0,1,0,-2.5" for i, cid in enumerate(ids)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_preprocess_command(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_case(src, "K1", phantom(seed=1, direction=OBLIQUE))
    write_case(src, "K2", phantom(seed=2), ext=".nrrd", subfolder=True)
    _clinical_csv(src / "clinical.csv", ["K1", "K2"])
    schema = {"clinical_schema": {"features": ["age", "sex", "log10_afp", "log10_pivka", "hbv", "cirrhosis",
                                               "diameter_mm", "albi"],
                                  "mean": [55, 0.5, 2, 2, 0.5, 0.5, 20, -2.6], "std": [10, 0.5, 1, 1, 0.5, 0.5, 5,
                                                                                       0.5]},
              "preprocess": {"image_size": 48}}
    (tmp_path / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    assert cli_main(["preprocess", "--input", str(src), "--out", str(out), "--schema",
                     str(tmp_path / "schema.json")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["K1.npz", "K1.png", "K2.npz", "K2.png"]
    with np.load(out / "K1.npz") as z:
        assert z["art"].shape == (3, 48, 48) and z["pv"].dtype == np.float32
        meta = json.loads(str(z["meta"]))
        raw = np.array([50, 1, 1.5, 2.0, 1, 0, meta["diameter_mm"], -2.5])
        np.testing.assert_allclose(z["clinical_raw"], raw, rtol=0, atol=1e-12)
        want = (raw - np.array(schema["clinical_schema"]["mean"])) / np.array(schema["clinical_schema"]["std"])
        np.testing.assert_allclose(z["clinical"], want, rtol=1e-6, atol=1e-6)
        assert meta["clinical_normalised"] and meta["preprocess"]["image_size"] == 48


def test_preprocess_command_bad_input_writes_nothing(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    art, pv, mask = phantom()
    empty = make_image(np.zeros(sitk().GetArrayFromImage(mask).shape, np.uint8), SP, origin=art.GetOrigin())
    write_case(src, "E1", (art, pv, empty))
    _clinical_csv(src / "clinical.csv", ["E1"])
    assert cli_main(["preprocess", "--input", str(src), "--out", str(out)]) == 1
    assert "case 'E1': the tumour mask is empty" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    # bad CSV: a non-numeric value, named by case and column
    (src / "clinical.csv").write_text("case_id,age,sex,log10_afp,log10_pivka,hbv,cirrhosis,albi\n"
                                      "E1,fifty,1,1,1,1,1,-2\n", encoding="utf-8")
    assert cli_main(["preprocess", "--input", str(src), "--out", str(out)]) == 1
    assert "case 'E1', column 'age': 'fifty' is not a number" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_preprocess_keep_going_writes_only_good_cases(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_case(src, "G1", phantom(seed=4))
    art, pv, _ = phantom(seed=5)
    far = make_image(sitk().GetArrayFromImage(pv), SP, origin=(0.0, 900.0, 0.0))
    write_case(src, "G2", (art, far, phantom(seed=5)[2]))
    _clinical_csv(src / "clinical.csv", ["G1", "G2"])
    assert cli_main(["preprocess", "--input", str(src), "--out", str(out), "--keep-going", "--no-png",
                     "--image-size", "32"]) == 1
    assert "G2: FAILED: case 'G2': PV does not overlap ART" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["G1.npz"]
