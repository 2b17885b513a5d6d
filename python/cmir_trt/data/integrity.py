"""Does an image file hold all the data its header promises? Checked before SimpleITK reads it.

SimpleITK/ITK read a `.nii` cut short or a `.nii.gz` cut in half without complaint (the missing voxels come back as
zeros), and a `.mhd`/`.nhdr` whose data file is short likewise. Here every header is parsed with bounds checks
(never trusted for more than a size), compressed streams are decompressed to their end (zlib checks each gzip member's
CRC and length field; zlib/bz2 streams must reach their end marker), and the byte count is compared with what
the header's dimensions and voxel type need. A short file raises ImageReadError naming the file and both counts.
"""

from __future__ import annotations

import bz2
import io
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ImageReadError

_CHUNK = 1 << 20
_MAX_HEADER = 1 << 20  # text headers longer than 1 MiB are not plausible


def _fail(path: Path, what: str, msg: str) -> ImageReadError:
    return ImageReadError(f"{what}: {path.name}: {msg}")


def _stream_length(stream: BinaryIO, path: Path, what: str, kind: str) -> int:
    """Bytes a decompressing stream yields, read to its end (python checks gzip CRC/length, bz2 end marker)."""
    n = 0
    try:
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                return n
            n += len(chunk)
    except (EOFError, OSError, zlib.error, ValueError) as exc:  # truncated stream, bad CRC, not compressed at all
        raise _fail(path, what, f"damaged {kind} data after {n} decompressed bytes ({exc}); the file is truncated "
                                 "or corrupt") from None


def _gzip_length(f: BinaryIO, path: Path, what: str, keep: int = 0) -> tuple[int, bytes]:
    """(decompressed length, its first `keep` bytes) of a gzip stream read to its end. zlib checks each member's
    CRC32 and length trailer itself (several times faster than python's gzip module); concatenated members (and
    zero padding between them) are followed. Output is counted, never held: memory stays bounded."""
    n, head = 0, bytearray()
    d, in_member = zlib.decompressobj(16 + zlib.MAX_WBITS), False
    try:
        while True:
            data = f.read(4 * _CHUNK)
            if not data:
                break
            while data:
                if not in_member:
                    data = data.lstrip(b"\x00")
                    if not data:
                        break
                    in_member = True
                out = d.decompress(data, 1 << 26)
                n += len(out)
                if len(head) < keep:
                    head += out[:keep - len(head)]
                if d.eof:
                    data, in_member = d.unused_data, False
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    data = d.unconsumed_tail
    except zlib.error as exc:
        raise _fail(path, what, f"damaged gzip data after {n} decompressed bytes ({exc}); the file is corrupt or "
                                "truncated") from None
    if in_member:
        raise _fail(path, what, f"the gzip stream ends before its end marker (after {n} decompressed bytes); the "
                                "file is truncated")
    return n, bytes(head)


def _zlib_length(f: BinaryIO, path: Path, what: str) -> int:
    """Decompressed length of a zlib (or gzip) stream read to its end marker."""
    d = zlib.decompressobj(32 + zlib.MAX_WBITS)  # accepts a zlib or a gzip header
    n = 0
    try:
        while not d.eof:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            n += len(d.decompress(chunk))
        n += len(d.flush())
    except zlib.error as exc:
        raise _fail(path, what, f"damaged compressed data after {n} bytes ({exc})") from None
    if not d.eof:
        raise _fail(path, what, f"compressed data ends before its end marker (after {n} decompressed bytes); the "
                                "file is truncated")
    return n


def _need(path: Path, what: str, have: int, need: int, detail: str) -> None:
    if have < need:
        raise _fail(path, what, f"holds {have} bytes of voxel data but its header promises {need} ({detail}); the "
                                "file is truncated")


# ----------------------------------------------------------------------------------------------------------- NIfTI
def _nifti_need(head: bytes, path: Path, what: str) -> tuple[int, int]:
    """(voxel data offset, voxel bytes) from a NIfTI-1/2 header."""
    if len(head) < 348:
        raise _fail(path, what, f"only {len(head)} bytes, shorter than a NIfTI header (348); truncated or not NIfTI")
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if size == 540:
            if len(head) < 540:
                raise _fail(path, what, f"only {len(head)} bytes, shorter than a NIfTI-2 header (540)")
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        raise _fail(path, what, "not a NIfTI file (header size field is neither 348 nor 540)")
    nd = dims[0]
    if not 1 <= nd <= 7 or any(d < 0 for d in dims[1:nd + 1]) or bitpix <= 0 or bitpix % 8 or offset < 0:
        raise _fail(path, what, f"malformed NIfTI header (dim {list(dims[:nd + 1])}, bitpix {bitpix}, "
                                f"vox_offset {offset})")
    n = 1
    for d in dims[1:nd + 1]:
        n *= int(d)
    return max(offset, 348 if size == 348 else 540), n * (bitpix // 8)


def _check_nifti(path: Path, what: str, compressed: bool) -> None:
    if compressed:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":  # an uncompressed NIfTI named .nii.gz: ITK reads it, so check it as such
                compressed = False
            else:
                raw.seek(0)
                total, head = _gzip_length(raw, path, what, keep=540)
    if compressed:
        offset, need = _nifti_need(head, path, what)
        _need(path, what, total - offset, need, "uncompressed size from the NIfTI header")
    else:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(540)
        offset, need = _nifti_need(head, path, what)
        _need(path, what, size - offset, need, "from the NIfTI header")


# ------------------------------------------------------------------------------------------------------------ NRRD
_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
_NRRD_SIZE = {name: n for n, names in _NRRD_TYPES.items() for name in names}


def _read_text_header(f: BinaryIO, path: Path, what: str) -> tuple[list[str], int]:
    """Header lines up to the first empty line (or EOF) and the byte offset just after it."""
    lines, pos = [], 0
    while True:
        line = f.readline(_MAX_HEADER)
        if not line:
            return lines, pos
        pos += len(line)
        if pos > _MAX_HEADER:
            raise _fail(path, what, "header longer than 1 MiB; not an image header")
        text = line.rstrip(b"\r\n")
        if not text:
            return lines, pos
        try:
            lines.append(text.decode("latin-1"))
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
            raise _fail(path, what, "header is not text") from None


def _data_files(spec: str, header_lines: list[str], base: Path, path: Path, what: str, key: str) -> list[Path]:
    """Detached data files named by NRRD `data file` / MetaIO `ElementDataFile`: a name, LIST, or a pattern."""
    parts = spec.split()
    if parts and parts[0] == "LIST":
        return [base / ln.strip() for ln in header_lines if ln.strip()]
    if len(parts) >= 4 and "%" in parts[0]:
        try:
            lo, hi, step = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            raise _fail(path, what, f"malformed {key} pattern {spec!r}") from None
        if step == 0 or (hi - lo) // step > 100000:
            raise _fail(path, what, f"implausible {key} pattern {spec!r}")
        try:
            return [base / (parts[0] % i) for i in range(lo, hi + (1 if step > 0 else -1), step)]
        except (TypeError, ValueError):
            raise _fail(path, what, f"malformed {key} pattern {spec!r}") from None
    return [base / spec]


def _open_concat(files: list[Path], path: Path, what: str, skip: int) -> BinaryIO:
    for p in files:
        if not p.is_file():
            raise _fail(path, what, f"its data file {p} is missing")
    if len(files) == 1:
        f = open(files[0], "rb")  # noqa: SIM115 - returned to the caller, closed there
        f.seek(skip)
        return f
    return io.BytesIO(b"".join(p.read_bytes() for p in files)[skip:])


def _check_nrrd(path: Path, what: str) -> None:
    with open(path, "rb") as f:
        magic = f.readline(64)
        if not magic.startswith(b"NRRD000"):
            raise _fail(path, what, "not a NRRD file (no NRRD000x magic line)")
        lines, data_at = _read_text_header(f, path, what)
    data_at += len(magic)
    fields: dict[str, str] = {}
    extra: list[str] = []
    for i, ln in enumerate(lines):
        if ln.startswith("#") or ":=" in ln:  # comments and key:=value pairs carry no layout
            continue
        if ":" not in ln:
            raise _fail(path, what, f"not a valid NRRD header (bad line {ln[:40]!r})")
        k, v = ln.split(":", 1)
        fields[k.strip().lower()] = v.strip()
        if k.strip().lower() in ("data file", "datafile") and v.strip().split()[:1] == ["LIST"]:
            extra = lines[i + 1:]
            break
    try:
        sizes = [int(x) for x in fields["sizes"].split()]
        tsize = _NRRD_SIZE[fields["type"].lower()]
        encoding = fields.get("encoding", "raw").lower()
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
        line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
    except (KeyError, ValueError) as exc:
        raise _fail(path, what, f"malformed or unsupported NRRD header ({exc})") from None
    if any(s < 0 for s in sizes) or line_skip < 0 or byte_skip < -1:
        raise _fail(path, what, f"malformed NRRD header (sizes {sizes}, byte skip {byte_skip})")
    n = 1
    for s in sizes:
        n *= s
    need = n * tsize
    spec = fields.get("data file", fields.get("datafile"))
    files = _data_files(spec, extra, path.parent, path, what, "data file") if spec else [path]
    start = 0 if spec else data_at
    if line_skip:
        with open(files[0] if files[0].is_file() else path, "rb") as f:
            f.seek(start)
            for _ in range(line_skip):
                start += len(f.readline(_MAX_HEADER))
    if encoding == "raw":
        for p in files:
            if not p.is_file():
                raise _fail(path, what, f"its data file {p} is missing")
        avail = sum(p.stat().st_size for p in files) - start
        _need(path, what, avail - max(byte_skip, 0), need, f"sizes {sizes} x {tsize} bytes")
        return
    if encoding in ("gz", "gzip", "bz2", "bzip2"):
        f = _open_concat(files, path, what, start)
        with f:
            if encoding.startswith("gz"):
                total = _gzip_length(f, path, what)[0]
            else:
                total = _stream_length(bz2.BZ2File(f), path, what, encoding)  # type: ignore[arg-type]
        _need(path, what, total - max(byte_skip, 0), need, f"sizes {sizes} x {tsize} bytes, uncompressed")
        return
    if encoding in ("txt", "text", "ascii"):
        f = _open_concat(files, path, what, start)
        with f:
            count = sum(len(chunk.split()) for chunk in _lines(f))
        if count < n:
            raise _fail(path, what, f"holds {count} values but its header promises {n} (sizes {sizes}); the file is "
                                    "truncated")
        return
    if encoding == "hex":
        f = _open_concat(files, path, what, start)
        with f:
            digits = sum(len(re.sub(rb"[^0-9a-fA-F]", b"", chunk)) for chunk in _lines(f))
        _need(path, what, digits // 2, need, f"sizes {sizes} x {tsize} bytes, hex")
        return
    raise _fail(path, what, f"unsupported NRRD encoding {encoding!r}")


def _lines(f: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            return
        yield chunk


# ---------------------------------------------------------------------------------------------------- MetaImage
_MET_SIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
             "MET_DOUBLE": 8}


def _check_meta(path: Path, what: str) -> None:
    fields: dict[str, str] = {}
    extra: list[str] = []
    with open(path, "rb") as f:
        pos = 0
        while True:
            line = f.readline(_MAX_HEADER)
            if not line:
                raise _fail(path, what, "MetaImage header has no ElementDataFile line; not a MetaImage file or "
                                        "truncated")
            pos += len(line)
            if pos > _MAX_HEADER:
                raise _fail(path, what, "header longer than 1 MiB; not a MetaImage file")
            text = line.decode("latin-1").strip()
            if not text:
                continue
            if "=" not in text:
                raise _fail(path, what, f"not a MetaImage file (bad header line {text[:40]!r})")
            k, v = (x.strip() for x in text.split("=", 1))
            fields[k] = v
            if k == "ElementDataFile":
                break
        if fields["ElementDataFile"].split()[:1] == ["LIST"]:
            extra = [ln.decode("latin-1") for ln in f.read().splitlines()]
    try:
        dims = [int(x) for x in fields["DimSize"].split()]
        tsize = _MET_SIZE[fields["ElementType"]]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except (KeyError, ValueError) as exc:
        raise _fail(path, what, f"malformed or unsupported MetaImage header ({exc})") from None
    if any(d < 0 for d in dims) or channels < 1:
        raise _fail(path, what, f"malformed MetaImage header (DimSize {dims}, channels {channels})")
    n = channels
    for d in dims:
        n *= d
    need = n * tsize
    compressed = fields.get("CompressedData", "False").lower() == "true"
    spec = fields["ElementDataFile"]
    local = spec == "LOCAL"
    files = [path] if local else _data_files(spec, extra, path.parent, path, what, "ElementDataFile")
    start = pos if local else max(header_size, 0)
    if not compressed:
        for p in files:
            if not p.is_file():
                raise _fail(path, what, f"its data file {p} is missing")
        avail = sum(p.stat().st_size for p in files) - start
        _need(path, what, avail, need, f"DimSize {dims} x {channels} channel(s) x {tsize} bytes")
        return
    f = _open_concat(files, path, what, start)
    with f:
        total = _zlib_length(f, path, what)
    _need(path, what, total, need, f"DimSize {dims} x {channels} channel(s) x {tsize} bytes, uncompressed")


def verify_image_file(path: str | os.PathLike[str], what: str = "image") -> None:
    """Raise ImageReadError if the file (NIfTI, NRRD/NHDR, MHA/MHD) holds less voxel data than its header promises,
    has a damaged compressed stream, or lacks a detached data file. Unknown extensions are left to the reader."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz"):
            _check_nifti(path, what, compressed=True)
        elif name.endswith(".nii"):
            _check_nifti(path, what, compressed=False)
        elif name.endswith((".nrrd", ".nhdr")):
            _check_nrrd(path, what)
        elif name.endswith((".mha", ".mhd")):
            _check_meta(path, what)
    except OSError as exc:
        raise _fail(path, what, f"cannot be read: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------------------------ DICOM
_DICOM_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)


class _Short(Exception):
    pass


def _dicom_elements(buf: memoryview, pos: int, end: int, explicit: bool, depth: int, stop: tuple[int, int] | None
                    ) -> int:
    """Walk data elements from pos; returns the position after the last one (or after `stop`, a delimiter).
    Raises _Short with the reason when an element claims more bytes than the file has."""
    if depth > 32:
        raise _Short("sequences nested deeper than 32 levels")
    while pos < end:
        if pos + 8 > end:
            raise _Short(f"{end - pos} stray bytes at the end")
        group, elem = struct.unpack_from("<HH", buf, pos)
        if (group, elem) == stop:
            return pos + 8
        if group == 0xFFFE:
            raise _Short(f"unexpected delimiter ({group:04X},{elem:04X}) at byte {pos}")
        vr = bytes(buf[pos + 4:pos + 6]) if explicit else b""
        if explicit and vr in _DICOM_LONG_VRS:
            if pos + 12 > end:
                raise _Short(f"element ({group:04X},{elem:04X}) header cut at byte {pos}")
            length, head = struct.unpack_from("<I", buf, pos + 8)[0], 12
        elif explicit:
            length, head = struct.unpack_from("<H", buf, pos + 6)[0], 8
        else:
            length, head = struct.unpack_from("<I", buf, pos + 4)[0], 8
        pos += head
        if length == _UNDEFINED:  # a sequence or encapsulated pixel data: items until the sequence delimiter
            pos = _dicom_items(buf, pos, end, explicit, depth + 1)
            continue
        if pos + length > end:
            raise _Short(f"element ({group:04X},{elem:04X}) declares {length} bytes but only {end - pos} remain")
        pos += length
    if stop is not None:
        raise _Short("a sequence item ends without its delimiter")
    return pos


def _dicom_items(buf: memoryview, pos: int, end: int, explicit: bool, depth: int) -> int:
    while True:
        if pos + 8 > end:
            raise _Short("a sequence ends without its delimiter")
        tag = struct.unpack_from("<HH", buf, pos)
        length = struct.unpack_from("<I", buf, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Short(f"expected a sequence item at byte {pos - 8}, found ({tag[0]:04X},{tag[1]:04X})")
        if length == _UNDEFINED:
            pos = _dicom_elements(buf, pos, end, explicit, depth, _ITEM_END)
        elif pos + length > end:
            raise _Short(f"a sequence item declares {length} bytes but only {end - pos} remain")
        else:
            pos += length


def dicom_truncation(path: str | os.PathLike[str]) -> str | None:
    """Why a DICOM Part-10 file is incomplete (an element or item claims more bytes than the file holds, or a
    sequence lacks its end), or None when it is complete, not a Part-10 file, or in an encoding not walked here
    (deflated, big endian). Independent of GDCM, which skips files it cannot parse."""
    import mmap

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 132:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                if bytes(buf[128:132]) != b"DICM":
                    return None
                pos, ts = 132, ""
                while pos + 8 <= size and struct.unpack_from("<H", buf, pos)[0] == 0x0002:  # file meta: explicit LE
                    elem = struct.unpack_from("<H", buf, pos + 2)[0]
                    long_vr = bytes(buf[pos + 4:pos + 6]) in _DICOM_LONG_VRS
                    head = 12 if long_vr else 8
                    if pos + head > size:
                        raise _Short(f"file meta element header cut at byte {pos}")
                    length = struct.unpack_from("<I" if long_vr else "<H", buf, pos + (8 if long_vr else 6))[0]
                    if length == _UNDEFINED or pos + head + length > size:
                        raise _Short(f"file meta element (0002,{elem:04X}) runs past the end of the file")
                    if elem == 0x0010:
                        ts = bytes(buf[pos + head:pos + head + length]).strip(b"\x00 ").decode("ascii", "replace")
                    pos += head + length
                if ts in ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"):
                    return None
                _dicom_elements(buf, pos, size, ts != "1.2.840.10008.1.2", 0, None)
                return None
            except _Short as exc:
                return str(exc)
            finally:
                buf.release()


# ------------------------------------------------------------------------------------------- NIfTI non-finite voxels
_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64


def nifti_nonfinite(path: str | os.PathLike[str]) -> Any:
    """(boolean [z, y, x] array of the NaN/inf voxels, their values) of a float NIfTI file, or None when it has none
    (or is not a 3-D float NIfTI). ITK's NIfTI reader turns NaN and inf voxels into 0 without a word, so the
    preprocessing's check for them would never fire; the caller puts them back. Run after verify_image_file."""
    import gzip

    import numpy as np

    path = Path(path)
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        head = f.read(540)
        if len(head) < 348:
            return None
        for endian in "<>":
            size = struct.unpack(endian + "i", head[:4])[0]
            if size == 348:
                dtype = struct.unpack(endian + "h", head[70:72])[0]
                dims = struct.unpack(endian + "8h", head[40:56])
                offset = int(struct.unpack(endian + "f", head[108:112])[0])
                break
            if size == 540 and len(head) >= 540:
                dtype = struct.unpack(endian + "h", head[12:14])[0]
                dims = struct.unpack(endian + "8q", head[16:80])
                offset = struct.unpack(endian + "q", head[168:176])[0]
                break
        else:
            return None
        nd = dims[0]
        if dtype not in _NIFTI_FLOATS or not 3 <= nd <= 7 or any(int(d) != 1 for d in dims[4:nd + 1]):
            return None
        shape = tuple(int(d) for d in dims[1:4])[::-1]
        n = shape[0] * shape[1] * shape[2]
        itemsize = int(_NIFTI_FLOATS[dtype][1])
        offset = max(offset, size)
        f.seek(offset)
        data = np.frombuffer(f.read(n * itemsize), dtype=np.dtype(endian + _NIFTI_FLOATS[dtype]))
    if data.size != n:
        return None  # verify_image_file reports short files; nothing to add here
    bad = ~np.isfinite(data)
    return (bad.reshape(shape), data[bad].astype(np.float64)) if bad.any() else None

