"""Small file helpers shared by every writer: atomic writes (no half-written output after an interrupt) and hashing.

No heavy imports: the native engine path uses these too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def public_file_mode() -> int:
    # What open() would have given the file: 0666 minus the umask (mkstemp makes 0600, too private for results).
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def public_dir_mode() -> int:
    # What mkdir() would have given the folder: 0777 minus the umask (mkdtemp makes 0700, too private for outputs).
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, then rename it over `path`: readers never see a partial file."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A temp path beside `path` (ending in `suffix`, for writers that pick the format from it) to write to; when
    the block ends without an error the file gets ordinary (umask-respecting) permissions and is renamed over
    `path`. Nothing is left behind when the block fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, public_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_via(path: str | os.PathLike[str], write: Callable[[str], object], suffix: str = "") -> Path:
    """atomic_target for libraries that want a file name (SimpleITK, matplotlib, numpy, torch): `write(tmp)`."""
    with atomic_target(path, suffix) as tmp:
        write(str(tmp))
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """atomic_write_bytes of UTF-8 text (newlines written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataclass_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """cls(**d) for a dataclass, refusing unknown keys by name (configs read back from checkpoints, plans, JSON)."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} must be given a dict, got {type(d).__name__}")
    unknown = set(d) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**d)
