"""Writing files and directories atomically: a reader sees the old version or the new one, never half.

Both helpers write into a temporary name in the destination's own directory (a rename is
atomic only within one file system), flush it to disk, then `os.replace` it into place.

    atomic_write(path, "text")                          # str: UTF-8 text
    atomic_write(path, b"bytes")
    atomic_write(path, lambda f: np.save(f, array))     # a callable given the open binary file
    with atomic_directory(out / "ckpt_00001000") as tmp:
        ...  # fill tmp; on a clean exit it becomes out/ckpt_00001000
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _temporary_name(path: Path, suffix: str) -> Path:
    """A fresh hidden name beside path. Made by hand rather than by tempfile, whose files and
    directories are private to their owner: the result should get the usual permissions."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside directory durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write data to path atomically; data is bytes, text (UTF-8) or write(f) for an open binary file.

    write(f) may also write to the file by name (`f.name`), for libraries that take a filename.
    The temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, ".tmp")
    try:
        with open(tmp, "xb") as f:
            if isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty temporary directory beside path; on a clean exit it replaces path.

    An existing path is moved aside first and deleted after the new one is in place, so a
    crash leaves either the old directory or the new one under path (plus, at worst, a
    leftover temporary). On an exception the temporary directory is deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, ".tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = _temporary_name(path, ".old")
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_directory(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
