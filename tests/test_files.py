"""minigpt.files: atomic writes of files and directories."""

import os
import stat

import pytest

from minigpt.files import atomic_directory, atomic_write, check_not_input, same_file


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


def test_atomic_write_keeps_a_symlink_and_writes_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write(link, "new")
    assert link.is_symlink() and target.read_text() == "new" and leftovers(tmp_path) == []


def test_atomic_write_writes_through_a_fifo_and_a_device(tmp_path):
    """A FIFO (or /dev/null) is written through: renaming a file over it would replace the node."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    atomic_write(fifo, "through")
    reader.join(timeout=10)
    assert got == [b"through"] and stat.S_ISFIFO(os.lstat(fifo).st_mode) and leftovers(tmp_path) == []
    atomic_write(os.devnull, "gone")  # as root the rename would turn /dev/null into a file
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, "x")


@pytest.mark.parametrize(
    "spelling", [lambda p: p, lambda p: p.parent / ".." / p.parent.name / p.name, lambda p: p.parent / "alias"]
)
def test_check_not_input_refuses_an_input_however_spelled(tmp_path, spelling):
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text("{}")
    (tmp_path / "alias").symlink_to(quiz)
    with pytest.raises(ValueError, match="--output .* is also an input") as e:
        check_not_input(spelling(quiz), ["gpt2", None, quiz])
    assert "\n" not in str(e.value)
    check_not_input(tmp_path / "results.json", ["gpt2", None, quiz, tmp_path / "missing"])  # no error
    assert same_file(quiz, tmp_path / "alias") and not same_file(quiz, tmp_path / "results.json")
