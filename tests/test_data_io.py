"""Image IO (NIfTI, NRRD, MHA/MHD, DICOM series) and the case-folder convention of cmir_trt.data.

References: the arrays and geometry the test itself wrote (float64 comparison, tolerance 1e-5 mm for files that
store doubles, 1e-4 for DICOM's decimal strings).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from _data_helpers import OBLIQUE, files_in, make_image, phantom, sitk, write_case, write_dicom_series  # noqa: E402

from cmir_trt.data import (  # noqa: E402
    DataError,
    ImageReadError,
    find_cases,
    read_image,
    write_image_atomic,
)


def _assert_same_geometry(a, b, tol=1e-5):
    assert tuple(a.GetSize()) == tuple(b.GetSize())
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tol)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("oblique", [False, True])
def test_round_trip_each_format(tmp_path: Path, ext: str, oblique: bool) -> None:
    rng = np.random.default_rng(11)
    arr = rng.normal(100, 20, size=(7, 13, 11)).astype(np.float32)  # odd, unequal sizes: axis order is checked
    direction = OBLIQUE if oblique else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    img = make_image(arr, spacing=(0.7, 1.3, 3.1), origin=(-12.25, 40.5, -7.0), direction=direction)
    path = tmp_path / f"vol{ext}"
    sitk().WriteImage(img, str(path))
    back = read_image(path)
    _assert_same_geometry(back, img)
    np.testing.assert_array_equal(sitk().GetArrayFromImage(back), arr)


def test_dicom_series_round_trip_oblique(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 2000, size=(6, 10, 12)).astype(np.int16)
    img = make_image(arr, spacing=(0.8, 0.8, 3.0), origin=(-100.0, 50.0, 20.0), direction=OBLIQUE)
    uid = "1.2.826.0.1.3680043.2.1125.77"
    write_dicom_series(img, tmp_path / "CASE_0000", uid)
    back = read_image(tmp_path / "CASE_0000")
    _assert_same_geometry(back, img, tol=1e-4)
    np.testing.assert_array_equal(sitk().GetArrayFromImage(back), arr)


def test_dicom_folder_with_two_series_needs_uid(tmp_path: Path) -> None:
    a = make_image(np.full((4, 8, 8), 10, np.int16), spacing=(1, 1, 2))
    b = make_image(np.full((5, 8, 8), 20, np.int16), spacing=(1, 1, 2), origin=(0.0, 0.0, 0.0))
    ua, ub = "1.2.826.0.1.3680043.2.1125.101", "1.2.826.0.1.3680043.2.1125.202"
    write_dicom_series(a, tmp_path / "s", ua)
    write_dicom_series(b, tmp_path / "s", ub)
    with pytest.raises(ImageReadError, match=r"2 DICOM series; name the one to use in series.csv") as ei:
        read_image(tmp_path / "s")
    assert ua in str(ei.value) and ub in str(ei.value)
    got = read_image(tmp_path / "s", series_uid=ub)
    assert got.GetSize() == (8, 8, 5) and int(sitk().GetArrayFromImage(got).max()) == 20
    with pytest.raises(ImageReadError, match="not in"):
        read_image(tmp_path / "s", series_uid="1.2.3")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(empty)


def test_2d_4d_and_vector_images_are_refused(tmp_path: Path) -> None:
    s = sitk()
    s.WriteImage(s.GetImageFromArray(np.zeros((9, 7), np.float32)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(ImageReadError, match=r"2-D image; a 3-D volume is required"):
        read_image(tmp_path / "flat.nii.gz", what="case 'x' ART")
    four = s.JoinSeries([s.GetImageFromArray(np.zeros((3, 4, 5), np.float32))] * 2)
    s.WriteImage(four, str(tmp_path / "four.nii.gz"))
    with pytest.raises(ImageReadError, match=r"4-D image"):
        read_image(tmp_path / "four.nii.gz")
    vec = s.GetImageFromArray(np.zeros((3, 4, 5, 3), np.float32), isVector=True)
    s.WriteImage(vec, str(tmp_path / "vec.mha"))
    with pytest.raises(ImageReadError, match=r"3 components per voxel"):
        read_image(tmp_path / "vec.mha")


def test_corrupt_truncated_and_missing_files(tmp_path: Path) -> None:
    s = sitk()
    img = make_image(np.ones((5, 6, 7), np.float32))
    s.WriteImage(img, str(tmp_path / "ok.nii.gz"))
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.mha").write_bytes(b"this is not an image\x00\x01\x02" * 10)
    (tmp_path / "plain.nii.gz").write_bytes(gzip.compress(b"\x00" * 40))
    for name in ("trunc.nii.gz", "junk.mha", "plain.nii.gz"):
        with pytest.raises(ImageReadError, match=rf"case 'c1' PV: (cannot read .*|{name}: .*)"
                                                 r"(truncated|corrupt|not a NIfTI|not a MetaImage)"):
            read_image(tmp_path / name, what="case 'c1' PV")
    with pytest.raises(FileNotFoundError, match="ART not found"):
        read_image(tmp_path / "absent.nii.gz", what="ART")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ImageReadError, match="not a supported image file"):
        read_image(tmp_path / "notes.txt")


def test_write_image_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    img = make_image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), direction=OBLIQUE)
    out = write_image_atomic(img, tmp_path / "sub" / "h.nii.gz")
    assert [p.name for p in files_in(tmp_path)] == ["h.nii.gz"]
    np.testing.assert_array_equal(sitk().GetArrayFromImage(read_image(out)), sitk().GetArrayFromImage(img))
    with pytest.raises(DataError, match="unsupported extension"):
        write_image_atomic(img, tmp_path / "h.png")
    with pytest.raises(DataError, match="separate data file"):
        write_image_atomic(img, tmp_path / "h.mhd")


def test_find_cases_side_by_side_subfolders_and_dicom(tmp_path: Path) -> None:
    imgs = phantom(shape=(6, 16, 18), centre=(3, 8, 9), radius_mm=4.0)
    write_case(tmp_path, "A001", imgs)
    write_case(tmp_path, "B002", imgs, ext=".nrrd", subfolder=True)
    # C003: both phases as DICOM series folders, mask as .mha
    write_dicom_series(imgs[0], tmp_path / "C003_0000", "1.2.826.0.1.3680043.2.1125.31")
    write_dicom_series(imgs[1], tmp_path / "C003_0001", "1.2.826.0.1.3680043.2.1125.32")
    sitk().WriteImage(imgs[2], str(tmp_path / "C003_mask.mha"))
    (tmp_path / "clinical.csv").write_text("case_id\n", encoding="utf-8")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["A001", "B002", "C003"]
    a, b, c = cases
    assert a.art == tmp_path / "A001_0000.nii.gz" and a.pv == tmp_path / "A001_0001.nii.gz"
    assert b.mask == tmp_path / "B002" / "B002_mask.nrrd"
    assert c.art.is_dir() and c.pv.is_dir() and c.mask.name == "C003_mask.mha"
    for case in cases:  # every role readable and on the same grid
        for role in ("art", "pv", "mask"):
            assert read_image(getattr(case, role)).GetSize() == (18, 16, 6)


def test_find_cases_errors(tmp_path: Path) -> None:
    imgs = phantom(shape=(6, 16, 18), centre=(3, 8, 9), radius_mm=4.0)
    write_case(tmp_path, "P1", imgs)
    (tmp_path / "P1_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'P1'.*missing PV \(CASE_0001\)"):
        find_cases(tmp_path)
    cases = find_cases(tmp_path, allow_incomplete=True)
    assert cases[0].pv is None and cases[0].missing() == ["pv"]
    sitk().WriteImage(imgs[1], str(tmp_path / "P1_0001.nii.gz"))
    sitk().WriteImage(imgs[1], str(tmp_path / "P1_0001.nrrd"))
    with pytest.raises(DataError, match=r"case 'P1': several PV inputs"):
        find_cases(tmp_path)
    with pytest.raises(FileNotFoundError):
        find_cases(tmp_path / "nope")


def test_series_csv_picks_dicom_series_per_case(tmp_path: Path) -> None:
    # A phase folder with two DICOM series: find_cases takes the UID from series.csv, so predict/preprocess work.
    s = sitk()
    art, pv, mask = phantom(seed=3)
    root = tmp_path / "cases"
    root.mkdir()
    other = make_image(np.zeros((4, 8, 8), np.int16), spacing=(1, 1, 2))
    ua, ub = "1.2.826.0.1.3680043.2.1125.301", "1.2.826.0.1.3680043.2.1125.302"
    write_dicom_series(s.Cast(art, s.sitkInt16), root / "P1_0000", ua)
    write_dicom_series(other, root / "P1_0000", ub)
    s.WriteImage(pv, str(root / "P1_0001.nii.gz"))
    s.WriteImage(mask, str(root / "P1_mask.nii.gz"))
    (case,) = find_cases(root)
    assert case.art_series_uid is None
    with pytest.raises(ImageReadError, match="2 DICOM series; name the one to use in series.csv"):
        read_image(case.art, case.art_series_uid)
    (root / "series.csv").write_text(f"case_id,art_series_uid,pv_series_uid\nP1,{ua},\n", encoding="utf-8")
    (case,) = find_cases(root)
    assert case.art_series_uid == ua and case.pv_series_uid is None
    got = read_image(case.art, case.art_series_uid)
    assert got.GetSize() == art.GetSize()
    np.testing.assert_array_equal(s.GetArrayFromImage(got), s.GetArrayFromImage(s.Cast(art, s.sitkInt16)))
    for text, match in [("case_id,art_series_uid,pv_series_uid\nP9,1.2,\n", "not in the case folder"),
                        ("case_id,art_series_uid,pv_series_uid\nP1,abc,\n", "not a DICOM UID"),
                        ("case_id,art\nP1,1.2\n", "needs a header"),
                        ("case_id,art_series_uid,pv_series_uid\nP1,1.2,\nP1,1.2,\n", "listed twice")]:
        (root / "series.csv").write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=match):
            find_cases(root)
