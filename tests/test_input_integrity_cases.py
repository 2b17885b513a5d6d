"""Inputs real sites send (issue 15): multi-label masks, masks folders, stored orientation, non-finite voxels,
re-runs into the same output folder, bad clinical rows. Files are real NIfTI/NRRD written by SimpleITK; each
refusal is one line naming the case, leaves no file for that case, and the other cases are still predicted."""

from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import CLINICAL_HEADER, ball, clinical_row, make_image, phantom, small_models, write_case

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("torch")

from cmir_trt.cli import main  # noqa: E402
from cmir_trt.data import MaskError, PreprocessParams, prepare_images  # noqa: E402

PARAMS = PreprocessParams(image_size=32, margin_mm=8.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    ckpt, plan = small_models(tmp_path_factory.mktemp("models"))
    return plan if plan is not None else ckpt


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", encoding="utf-8") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _clinical(root: Path, ids, bad: dict[str, tuple[str, str]] | None = None) -> None:
    rows = [CLINICAL_HEADER]
    cols = CLINICAL_HEADER.split(",")
    for n, cid in enumerate(ids):
        vals = clinical_row(cid, n).split(",")
        if bad and cid in bad:
            vals[cols.index(bad[cid][0])] = bad[cid][1]
        rows.append(",".join(vals))
    (root / "clinical.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------------ masks
def _liver_tumour_mask(mask_img) -> object:
    """label 1 = liver (a big ball around the tumour), label 2 = tumour (the phantom's mask)."""
    tum = sitk.GetArrayFromImage(mask_img).astype(bool)
    liver = ball(tum.shape, (8, 24, 28), 26.0, mask_img.GetSpacing())
    lab = np.where(tum, 2, np.where(liver, 1, 0)).astype(np.uint8)
    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(mask_img)
    return out


def test_multilabel_mask_refused_unless_label_picked() -> None:
    art, pv, mask = phantom(seed=1)
    lm = _liver_tumour_mask(mask)
    n1, n2 = (int((sitk.GetArrayFromImage(lm) == v).sum()) for v in (1, 2))
    with pytest.raises(MaskError, match=rf"case 'L': the mask has 2 labels \(label 1: {n1} voxels, label 2: {n2} "
                                        r"voxels\); pick the tumour's label with --mask-label N"):
        prepare_images("L", art, pv, lm, PARAMS)
    ref = prepare_images("L", art, pv, mask, PARAMS)
    got = prepare_images("L", art, pv, lm, PreprocessParams(image_size=32, margin_mm=8.0, mask_label=2))
    np.testing.assert_array_equal(got.art, ref.art)
    assert got.diameter_mm == ref.diameter_mm < 25.0  # the tumour's diameter, not the liver's
    with pytest.raises(MaskError, match=r"no voxel with the tumour label 3 \(label 1: \d+ voxels, label 2"):
        prepare_images("L", art, pv, lm, PreprocessParams(image_size=32, mask_label=3))
    soft = sitk.Cast(mask, sitk.sitkFloat32) * 0.7
    with pytest.raises(MaskError, match=r"non-integer values \(e.g. 0.7\).*not a probability map"):
        prepare_images("L", art, pv, soft, PARAMS)
    assert PreprocessParams().to_dict() == PreprocessParams.from_dict(PreprocessParams().to_dict()).to_dict()
    assert "mask_label" not in PreprocessParams().to_dict()  # params stored before the field read back equal


def test_predict_mask_label_and_masks_folder(model, tmp_path, capsys) -> None:
    """CLI: a liver/tumour mask fails its case only; --mask-label 2 predicts it like the tumour-only mask;
    --masks DIR (nnU-Net output naming CASE.nii.gz) is the same as CASE_mask.nii.gz beside the images."""
    a = tmp_path / "a"
    imgs = {f"C{i}": phantom(seed=20 + i) for i in range(2)}
    for cid, (art, pv, mask) in imgs.items():
        write_case(a, cid, (art, pv, _liver_tumour_mask(mask) if cid == "C1" else mask))
    _clinical(a, imgs)
    rc = main(["predict", "--model", str(model), "-i", str(a), "-o", str(tmp_path / "o1"), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "C1: FAILED: case 'C1': the mask has 2 labels" in err and "C0: FAILED" not in err
    assert not list((tmp_path / "o1").glob("C1*")) and (tmp_path / "o1" / "C0.json").is_file()
    sitk.WriteImage(_liver_tumour_mask(imgs["C0"][2]), str(a / "C0_mask.nii.gz"))  # now both liver=1/tumour=2
    assert main(["predict", "--model", str(model), "-i", str(a), "-o", str(tmp_path / "o2"), "--no-progress",
                 "--mask-label", "2"]) == 0
    b, masks = tmp_path / "b", tmp_path / "masks"
    masks.mkdir()
    for cid, (art, pv, mask) in imgs.items():
        write_case(b, cid, (art, pv, mask))
        (b / f"{cid}_mask.nii.gz").unlink()
        sitk.WriteImage(mask, str(masks / f"{cid}.nii.gz"))
    _clinical(b, imgs)
    assert main(["predict", "--model", str(model), "-i", str(b), "-o", str(tmp_path / "o3"), "--no-progress",
                 "--masks", str(masks)]) == 0
    capsys.readouterr()
    for cid in imgs:
        p2 = json.loads((tmp_path / "o2" / f"{cid}.json").read_text(encoding="utf-8"))
        p3 = json.loads((tmp_path / "o3" / f"{cid}.json").read_text(encoding="utf-8"))
        assert abs(p2["probability"] - p3["probability"]) <= 1e-7
        assert p2["preprocessing"]["params"]["mask_label"] == 2


# ------------------------------------------------------------------------------------------------ orientation
def _stored(img, perm, flip):
    """The same physical image stored with permuted/flipped voxel axes (and the matching direction matrix)."""
    out = sitk.PermuteAxes(img, list(perm))
    return sitk.Flip(out, list(flip), flipAboutOrigin=False)


def test_permuted_and_flipped_storage_gives_the_same_input_and_heatmap_grid(model) -> None:
    from cmir_trt import Predictor

    art, pv, mask = phantom(seed=3, shape=(14, 40, 46), centre=(7, 19, 24))
    p = Predictor(model, threads=1)
    clin = dict(zip(CLINICAL_HEADER.split(",")[1:], clinical_row("O", 3).split(",")[1:], strict=True))
    base = p.predict_images("O", art, pv, mask, clin)
    variants = [(perm, flip) for perm in itertools.permutations(range(3))
                for flip in itertools.product((False, True), repeat=3)]
    rng = np.random.default_rng(0)
    for n in rng.choice(len(variants), size=8, replace=False):
        perm, flip = variants[n]
        # ART/PV/mask each stored its own way: a PV exported flipped relative to ART is the same case
        pv_perm, pv_flip = variants[(n + 5) % len(variants)]
        r = p.predict_images("O", _stored(art, perm, flip), _stored(pv, pv_perm, pv_flip), _stored(mask, perm, flip),
                             clin)
        np.testing.assert_allclose(r.prepared.art, base.prepared.art, atol=1e-5)
        np.testing.assert_allclose(r.prepared.pv, base.prepared.pv, atol=1e-5)
        assert abs(r.probability - base.probability) <= 1e-5
        assert r.prepared.info["reoriented"] == (perm != (0, 1, 2) or any(flip))
        # the heatmap comes back on the stored grid: equal to the reference heatmap resampled onto it (nearest:
        # the voxel centres coincide exactly)
        stored = _stored(art, perm, flip)
        assert r.heatmap.GetSize() == stored.GetSize()
        np.testing.assert_allclose(r.heatmap.GetDirection(), stored.GetDirection(), atol=1e-12)
        np.testing.assert_allclose(r.heatmap.GetOrigin(), stored.GetOrigin(), atol=1e-9)
        expect = sitk.Resample(base.heatmap, stored, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0)
        np.testing.assert_allclose(sitk.GetArrayFromImage(r.heatmap), sitk.GetArrayFromImage(expect), atol=1e-5)


def test_ras_stored_nifti_on_disk(model, tmp_path) -> None:
    """The nibabel habit: a NIfTI stored RAS (i towards the patient's right) — same prediction as LPS storage."""
    art, pv, mask = phantom(seed=4)
    write_case(tmp_path / "lps", "R", (art, pv, mask))
    write_case(tmp_path / "ras", "R", tuple(_stored(x, (0, 1, 2), (True, True, False)) for x in (art, pv, mask)))
    d = sitk.ReadImage(str(tmp_path / "ras" / "R_0000.nii.gz")).GetDirection()
    assert d[0] == pytest.approx(-1.0) and d[4] == pytest.approx(-1.0)
    for f in ("lps", "ras"):
        _clinical(tmp_path / f, ["R"])
        assert main(["predict", "--model", str(model), "-i", str(tmp_path / f), "-o", str(tmp_path / f"o_{f}"),
                     "--no-progress", "--no-png"]) == 0
    a, b = (json.loads((tmp_path / f"o_{f}" / "R.json").read_text(encoding="utf-8")) for f in ("lps", "ras"))
    assert abs(a["probability"] - b["probability"]) <= 1e-5 and b["preprocessing"]["reoriented"] is True
    ha = sitk.ReadImage(str(tmp_path / "o_lps" / "R_heatmap.nii.gz"))
    hb = sitk.ReadImage(str(tmp_path / "o_ras" / "R_heatmap.nii.gz"))
    np.testing.assert_allclose(hb.GetDirection(), d, atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(hb), sitk.GetArrayFromImage(ha)[:, ::-1, ::-1], atol=1e-6)


# --------------------------------------------------------------------------------------------- non-finite voxels
def test_non_finite_voxels_in_the_roi_refused_elsewhere_ignored() -> None:
    art, pv, mask = phantom(seed=5)
    ref = prepare_images("N", art, pv, mask, PARAMS)
    k, j, i = 8, 22, 30  # inside the tumour
    for phase in ("ART", "PV"):
        imgs = {"ART": art, "PV": pv}
        arr = sitk.GetArrayFromImage(imgs[phase]).copy()
        arr[k, j, i] = np.nan
        arr[k, j + 1, i] = np.inf
        bad = sitk.GetImageFromArray(arr)
        bad.CopyInformation(imgs[phase])
        imgs[phase] = bad
        with pytest.raises(Exception, match=rf"case 'N': {phase} has 2 non-finite \(NaN/inf\) voxel\(s\) inside "
                                            r"the tumour ROI"):
            prepare_images("N", imgs["ART"], imgs["PV"], mask, PARAMS)
        far = sitk.GetArrayFromImage({"ART": art, "PV": pv}[phase]).copy()
        far[0, 0, 0] = np.nan  # a corner far from the tumour and its slices
        fimg = sitk.GetImageFromArray(far)
        fimg.CopyInformation(art)
        args = (fimg, pv) if phase == "ART" else (art, fimg)
        got = prepare_images("N", *args, mask, PARAMS)
        np.testing.assert_array_equal(got.art, ref.art)
        np.testing.assert_array_equal(got.pv, ref.pv)
    # PV on its own grid (resampled onto ART): its NaN voxels are followed onto the ART grid
    parr = sitk.GetArrayFromImage(pv).copy()
    parr[k, j, i] = np.nan
    own = make_image(parr, spacing=(0.9, 1.1, 2.5), origin=(-40.3, 12.2, 30.0))
    with pytest.raises(Exception, match=r"PV has \d+ non-finite"):
        prepare_images("N", art, own, mask, PARAMS)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_non_finite_voxels_survive_every_file_format(tmp_path, ext: str) -> None:
    """ITK's NIfTI reader turns NaN into 0 without a word; read_image must hand the NaN/inf voxels on in every
    format so that the ROI check above can refuse them (reference: the array written, voxel for voxel)."""
    from cmir_trt.data import read_image

    art = phantom(seed=6)[0]
    arr = sitk.GetArrayFromImage(sitk.Cast(art, sitk.sitkFloat32)).copy()
    arr[8, 22, 30] = np.nan
    arr[3, 5, 7] = np.inf
    arr[9, 1, 2] = -np.inf
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(art)
    sitk.WriteImage(img, str(tmp_path / f"x{ext}"))
    got = sitk.GetArrayFromImage(read_image(tmp_path / f"x{ext}", what="ART"))
    np.testing.assert_array_equal(got, arr)  # NaN == NaN and inf == inf for assert_array_equal


def test_predict_refuses_nan_in_the_roi_of_a_nifti_file(model, tmp_path, capsys) -> None:
    src, out = tmp_path / "cases", tmp_path / "out"
    for cid, seed in (("OK", 50), ("NAN", 51)):
        art, pv, mask = phantom(seed=seed)
        if cid == "NAN":  # the tumour's voxels of ART become NaN in a float32 NIfTI, as a failed resampling leaves
            arr = sitk.GetArrayFromImage(sitk.Cast(art, sitk.sitkFloat32))
            arr[sitk.GetArrayFromImage(mask) > 0] = np.nan
            bad = sitk.GetImageFromArray(arr)
            bad.CopyInformation(art)
            art = bad
        write_case(src, cid, (art, pv, mask))
    _clinical(src, ["NAN", "OK"])
    assert main(["predict", "--model", str(model), "-i", str(src), "-o", str(out), "--no-progress", "--no-png"]) == 1
    rows = _summary(out)
    assert rows["OK"]["status"] == "ok"
    assert rows["NAN"]["status"] == "error" and "ART has" in rows["NAN"]["error"]
    assert "non-finite (NaN/inf) voxel(s) inside the tumour ROI" in rows["NAN"]["error"]
    assert not list(out.glob("NAN*")), "nothing is written for a refused case"
    assert "NAN: FAILED" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- outputs
def test_rerun_leaves_nothing_that_contradicts(model, tmp_path, capsys) -> None:
    src, out = tmp_path / "cases", tmp_path / "out"
    ids = ["A", "B", "C"]
    for n, cid in enumerate(ids):
        write_case(src, cid, phantom(seed=40 + n))
    _clinical(src, ids)
    (out).mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # a user's file: never touched
    assert main(["predict", "--model", str(model), "-i", str(src), "-o", str(out), "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} >= {"A.json", "A_heatmap.nii.gz", "A_heatmap.png", "summary.csv"}
    # B now fails (its ART truncated), C leaves the input folder; re-run with --no-png
    data = (src / "B_0000.nii.gz").read_bytes()
    (src / "B_0000.nii.gz").write_bytes(data[:len(data) // 2])
    for f in src.glob("C_*"):
        f.unlink()
    assert main(["predict", "--model", str(model), "-i", str(src), "-o", str(out), "--no-progress", "--no-png"]) == 1
    assert "B: FAILED: case 'B' ART: B_0000.nii.gz:" in capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert names == {"A.json", "A_heatmap.nii.gz", "summary.csv", "notes.txt"}, names
    assert _summary(out)["B"]["status"] == "error" and "truncated" in _summary(out)["B"]["error"]
    assert set(_summary(out)) == {"A", "B"}
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_output_permissions_and_unwritable_output(model, tmp_path, capsys) -> None:
    src = tmp_path / "cases"
    write_case(src, "A", phantom(seed=50))
    _clinical(src, ["A"])
    old = os.umask(0o022)
    try:
        assert main(["predict", "--model", str(model), "-i", str(src), "-o", str(tmp_path / "o"),
                     "--no-progress"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "o").iterdir()}
    assert set(modes.values()) == {0o644}, modes
    (tmp_path / "file").write_text("x", encoding="utf-8")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert main(["predict", "--model", str(model), "-i", str(src), "-o", str(bad), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("not a folder" in err or "not writable" in err), err


# ---------------------------------------------------------------------------------------------- clinical CSV
@pytest.mark.parametrize("explicit", [False, True])
def test_bad_clinical_value_fails_only_its_case(model, tmp_path, capsys, explicit: bool) -> None:
    src = tmp_path / "cases"
    ids = ["A", "B", "C"]
    for n, cid in enumerate(ids):
        write_case(src, cid, phantom(seed=60 + n))
    _clinical(src, ids, bad={"B": ("log10_pivka", "12,5")})  # a decimal comma splits the row
    _clinical(src, ids, bad={"B": ("albi", "grade 2")})
    argv = ["predict", "--model", str(model), "-i", str(src), "-o", str(tmp_path / "o"), "--no-progress"]
    if explicit:
        (src / "clinical.csv").rename(tmp_path / "clin.csv")
        argv += ["--clinical", str(tmp_path / "clin.csv")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    s = _summary(tmp_path / "o")
    assert s["A"]["status"] == s["C"]["status"] == "ok"
    assert s["B"]["error"].endswith("case 'B', column 'albi': 'grade 2' is not a number"), s["B"]["error"]
    assert "B: FAILED:" in err and not list((tmp_path / "o").glob("B*"))
