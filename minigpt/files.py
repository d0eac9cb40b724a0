"""Writing files and directories atomically: a reader sees the old version or the new one, never half.

Both helpers write into a temporary name in the destination's own directory (a rename is
atomic only within one file system), flush it to disk, then `os.replace` it into place.

What atomic_write renames over is only ever a regular file or a new name: a symlink keeps being
a link (the file it points to is replaced), and a device or a FIFO (/dev/null, /dev/stdout, a
named pipe) is written through, never replaced by a file. `check_not_input` refuses an output
path that is one of a command's inputs (the same file, however it is spelled), so that a
command never overwrites what it reads: every command-line option that writes a file calls it.

    atomic_write(path, "text")                          # str: UTF-8 text
    atomic_write(path, b"bytes")
    atomic_write(path, lambda f: np.save(f, array))     # a callable given the open binary file
    with atomic_directory(out / "ckpt_00001000") as tmp:
        ...  # fill tmp; on a clean exit it becomes out/ckpt_00001000
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
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


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether a and b name the same file: os.path.samefile where both exist, else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def check_not_input(output: str | Path, inputs: Iterable[str | Path | None], flag: str = "--output") -> None:
    """A ValueError of one line if the output path is one of the inputs: the same existing file or
    directory, however spelled (a symlink, ../x). Inputs that are not paths on disk (a preset name,
    None) are skipped."""
    for given in inputs:
        if given is not None and str(given) != "" and os.path.lexists(given) and same_file(output, given):
            raise ValueError(
                f"{flag} {output} is also an input ({given}) and would be overwritten; write to another path"
            )


def _write(f: BinaryIO, data: bytes | str | Callable[[BinaryIO], object]) -> None:
    if isinstance(data, str):
        f.write(data.encode("utf-8"))
    elif isinstance(data, (bytes, bytearray, memoryview)):
        f.write(data)
    else:
        data(f)
    f.flush()


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write data to path atomically; data is bytes, text (UTF-8) or write(f) for an open binary file.

    write(f) may also write to the file by name (`f.name`), for libraries that take a filename.
    The temporary file is removed if anything fails. A symlink is followed (the link stays, the
    file it names is replaced); a device or FIFO is written through (there is nothing to make
    atomic); a directory is an IsADirectoryError. Returns the path written.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    if path.exists() and not path.is_file():  # /dev/null, /dev/full, a named pipe, ...
        with open(path, "wb") as f:
            _write(f, data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, ".tmp")
    try:
        with open(tmp, "xb") as f:
            _write(f, data)
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
