"""minigpt.files: atomic writes of files and directories."""

import os
import stat

import pytest

from minigpt.files import atomic_directory, atomic_write


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_write_bytes_text_and_callable(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "sub" / "b.txt", "héllo")  # parents are made
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"xyz"))
    atomic_write(tmp_path / "d.bin", lambda f: open(f.name, "wb").write(b"by name"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "c.bin").read_bytes() == b"xyz"
    assert (tmp_path / "d.bin").read_bytes() == b"by name"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~umask  # not tempfile's private 0600
    assert leftovers(tmp_path) == []


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write(path, "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_atomic_directory_replaces_and_cleans_up(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_directory(final) as tmp:
        (tmp / "x").write_text("1")
        assert not final.exists()
    with atomic_directory(final) as tmp:  # replaces the old directory as a whole
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["y"]
    with pytest.raises(ValueError):
        with atomic_directory(final) as tmp:
            (tmp / "z").write_text("3")
            raise ValueError("stop")
    assert sorted(p.name for p in final.iterdir()) == ["y"] and leftovers(tmp_path) == []
