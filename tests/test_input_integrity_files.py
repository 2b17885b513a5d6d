"""Every image reader refuses a file that holds less data than its header promises (issue 15, "Files").

Real-format files are written by SimpleITK (NIfTI .nii/.nii.gz, NRRD attached/detached, raw and gzip, MetaImage
.mha/.mhd raw and compressed), then cut short, corrupted or stripped of their data file. The reference is
SimpleITK itself: it reads every one of the damaged files below without complaint (checked here, so the test
shows the hole it closes), while read_image must refuse each with one line naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import make_image

sitk = pytest.importorskip("SimpleITK")

from cmir_trt.data import ImageReadError, read_image  # noqa: E402
from cmir_trt.data.integrity import verify_image_file  # noqa: E402


def _volume(seed: int = 0) -> object:
    rng = np.random.default_rng(seed)
    # odd sizes, float32, random content: compression cannot hide a short stream behind long runs of zeros
    return make_image(rng.standard_normal((7, 11, 13)).astype(np.float32))


def _roundtrip_ok(path: Path, img: object) -> None:
    got = read_image(path, what="ART")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(img))


def _refused(path: Path, pattern: str) -> str:
    with pytest.raises(ImageReadError, match=pattern) as ei:
        read_image(path, what="case 'X' ART")
    msg = str(ei.value)
    assert msg.startswith("case 'X' ART: ") and "\n" not in msg and path.name in msg
    return msg


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_nii_cut_short(tmp_path: Path, cut: float) -> None:
    img = _volume()
    p = tmp_path / "a.nii"
    sitk.WriteImage(img, str(p), False)
    _roundtrip_ok(p, img)
    data = p.read_bytes()
    q = tmp_path / "cut.nii"
    q.write_bytes(data[:int(len(data) * cut)])
    need = 7 * 11 * 13 * 4
    msg = _refused(q, r"truncated")
    assert f"promises {need}" in msg and f"holds {int(len(data) * cut) - 352} bytes" in msg


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.95])
def test_nii_gz_cut_or_corrupted(tmp_path: Path, cut: float) -> None:
    img = _volume(1)
    p = tmp_path / "a.nii.gz"
    sitk.WriteImage(img, str(p), True)
    _roundtrip_ok(p, img)
    data = p.read_bytes()
    q = tmp_path / "cut.nii.gz"
    q.write_bytes(data[:int(len(data) * cut)])
    _refused(q, r"truncated|ends before")


def test_uncompressed_nifti_named_nii_gz(tmp_path: Path) -> None:
    """A plain .nii saved as .nii.gz (it happens): ITK reads it, so it is checked as an uncompressed file."""
    img = _volume(8)
    sitk.WriteImage(img, str(tmp_path / "a.nii"), False)
    data = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "plain.nii.gz").write_bytes(data)
    _roundtrip_ok(tmp_path / "plain.nii.gz", img)
    (tmp_path / "plain.nii.gz").write_bytes(data[:len(data) - 64])
    _refused(tmp_path / "plain.nii.gz", r"holds 3940 bytes of voxel data but its header promises 4004")


def test_nii_gz_bad_crc_and_short_payload(tmp_path: Path) -> None:
    img = _volume(2)
    p = tmp_path / "a.nii.gz"
    sitk.WriteImage(img, str(p), True)
    data = bytearray(p.read_bytes())
    data[-8] ^= 0xFF  # CRC32 of the trailer
    bad = tmp_path / "crc.nii.gz"
    bad.write_bytes(bytes(data))
    _refused(bad, r"damaged gzip data|CRC")
    # a complete, valid gzip stream whose payload is a NIfTI cut short (re-compressed): the length check catches it
    raw = gzip.decompress(p.read_bytes())
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[:len(raw) - 100]))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(short))).shape == (7, 11, 13)  # ITK reads it silently
    _refused(short, r"holds \d+ bytes of voxel data but its header promises 4004")
    # two gzip members (what `cat a.gz b.gz` or some writers produce) are one valid stream; a cut in the second is not
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    verify_image_file(multi)
    multi.write_bytes(multi.read_bytes()[:-30])
    _refused(multi, r"truncated")


@pytest.mark.parametrize("compress", [False, True])
def test_nrrd_attached(tmp_path: Path, compress: bool) -> None:
    img = _volume(3)
    p = tmp_path / "a.nrrd"
    sitk.WriteImage(img, str(p), compress)
    _roundtrip_ok(p, img)
    data = p.read_bytes()
    q = tmp_path / "cut.nrrd"
    q.write_bytes(data[:len(data) - 200])
    _refused(q, r"truncated|damaged")


@pytest.mark.parametrize("compress", [False, True])
def test_nhdr_detached_data_file(tmp_path: Path, compress: bool) -> None:
    img = _volume(4)
    p = tmp_path / "a.nhdr"
    sitk.WriteImage(img, str(p), compress)
    _roundtrip_ok(p, img)
    data_files = [f for f in tmp_path.iterdir() if f.name != "a.nhdr"]
    assert len(data_files) == 1
    blob = data_files[0].read_bytes()
    data_files[0].write_bytes(blob[:len(blob) // 2])
    _refused(p, r"truncated|damaged")
    data_files[0].unlink()
    _refused(p, r"data file .* is missing")


@pytest.mark.parametrize("name, compress", [("a.mha", False), ("a.mha", True), ("a.mhd", False), ("a.mhd", True)])
def test_metaimage(tmp_path: Path, name: str, compress: bool) -> None:
    img = _volume(5)
    p = tmp_path / name
    sitk.WriteImage(img, str(p), compress)
    _roundtrip_ok(p, img)
    if name.endswith(".mha"):
        data = p.read_bytes()
        p.write_bytes(data[:len(data) - 300])
        _refused(p, r"truncated|damaged")
        return
    (data_file,) = [f for f in tmp_path.iterdir() if f.name != name]
    blob = data_file.read_bytes()
    data_file.write_bytes(blob[:len(blob) - 300])
    _refused(p, r"truncated|damaged")
    data_file.unlink()
    _refused(p, r"data file .* is missing")


def test_itk_reads_the_damaged_files_silently(tmp_path: Path) -> None:
    """The hole: without the check, ITK returns a full-size volume from a file cut in half (the rest zeros)."""
    img = _volume(6)
    p = tmp_path / "a.nii"
    sitk.WriteImage(img, str(p), False)
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])
    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
    except RuntimeError:
        pytest.skip("this SimpleITK refuses truncated .nii itself")
    assert arr.shape == (7, 11, 13) and (arr == 0).mean() > 0.3


def test_single_slice_and_2d_refused(tmp_path: Path) -> None:
    one = make_image(np.ones((1, 9, 10), np.float32))
    sitk.WriteImage(one, str(tmp_path / "one.nii.gz"))
    _refused(tmp_path / "one.nii.gz", r"single-slice volume \(size \(10, 9, 1\)\)")
    flat = sitk.GetImageFromArray(np.ones((9, 10), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    _refused(tmp_path / "flat.nii.gz", r"2-D image")


def test_header_garbage_is_bounded(tmp_path: Path) -> None:
    """Headers that lie about sizes are refused with one line, never read into memory beyond the file."""
    img = _volume(7)
    p = tmp_path / "a.nii"
    sitk.WriteImage(img, str(p), False)
    data = bytearray(p.read_bytes())
    data[42:44] = (30000).to_bytes(2, "little")  # dim[1] = 30000 voxels
    p.write_bytes(bytes(data))
    _refused(p, r"promises 9240000 ")  # 30000 x 11 x 7 float32
    data[40:42] = (12).to_bytes(2, "little")  # dim[0] = 12: not a NIfTI dimension count
    p.write_bytes(bytes(data))
    _refused(p, r"malformed NIfTI header")
    m = tmp_path / "b.mha"
    m.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_FLOAT\n"
                  b"CompressedData = True\nElementDataFile = LOCAL\n" + zlib.compress(b"\x00" * 64))
    _refused(m, r"promises 4000000000000000")
    verify_image_file(tmp_path / "unknown.xyz")  # unknown formats are left to the reader
