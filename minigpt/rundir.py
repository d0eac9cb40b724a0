"""A train.py output directory: its `ckpt_<step>` checkpoints and the `latest` pointer.

`out_dir/latest` names the newest checkpoint of the run's own line; the latest checkpoint is the
one of the highest step not above it (the pointed-to one, or the one before it if a kill came
between the pointer and the rename). Without the file it is the highest step. Loading a run
directory, --resume and the run's summary all use latest_checkpoint(); minigpt.train.checkpoint
writes and reads the checkpoints themselves.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from minigpt.files import atomic_write

CHECKPOINT_PREFIX = "ckpt_"
LATEST = "latest"  # out_dir/latest: the name of the run's newest checkpoint


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read, written or matched to the model."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (e.g. the disk is full); the previous ones are intact."""

    exit_code = 1


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _step_of(name: str, prefix: str = CHECKPOINT_PREFIX) -> int | None:
    suffix = name[len(prefix) :]
    return int(suffix) if name.startswith(prefix) and suffix.isdigit() else None


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint directory in out_dir, by step."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(_step_of(p.name), p) for p in out_dir.glob(CHECKPOINT_PREFIX + "*") if p.is_dir()]
    return sorted((step, p) for step, p in found if step is not None)


def read_latest(out_dir: str | Path) -> int | None:
    """The step out_dir/latest names, or None if there is no such file."""
    path = Path(out_dir) / LATEST
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    step = _step_of(text)
    if step is None:
        raise CheckpointError(
            f"{path} should name a {CHECKPOINT_PREFIX}<step> directory, it holds {text[:40]!r}; "
            "delete it to use the highest step"
        )
    return step


def write_latest(out_dir: str | Path, step: int) -> None:
    atomic_write(Path(out_dir) / LATEST, (checkpoint_name(step) + "\n").encode())


def run_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints of the run's own line (not above `latest`), by step."""
    found = checkpoints(out_dir)
    pointer = read_latest(out_dir) if found else None
    return found if pointer is None else [(step, p) for step, p in found if step <= pointer]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The run's newest complete checkpoint in out_dir, if any (see the module doc)."""
    found = run_checkpoints(out_dir)
    return found[-1][1] if found else None


LOCK = ".lock"  # out_dir/.lock: flock'ed by the train.py run writing into out_dir, holding its PID


class RunDirLocked(CheckpointError):
    """Another live process holds the out dir's lock (a run is writing into it)."""

    exit_code = 2


def _locked_message(out_dir: Path, f) -> str:
    f.seek(0)
    pid = f.read().strip()
    holder = f"process {pid}" if pid.isdigit() else "another process"
    return (
        f"{out_dir} is in use by another train.py run ({holder} holds {out_dir / LOCK}); "
        "wait for it to end, or choose another --out-dir"
    )


def check_unlocked(out_dir: str | Path) -> None:
    """RunDirLocked if a live process holds out_dir's lock; writes nothing (a lock file left by a
    dead process is not held: the OS released it with the process)."""
    out_dir = Path(out_dir)
    try:
        f = open(out_dir / LOCK, encoding="utf-8", errors="replace")
    except OSError:  # no lock file (or none readable): nobody can hold it
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLocked(_locked_message(out_dir, f)) from None
        except OSError:  # a file system without flock: nothing to check
            return
        fcntl.flock(f, fcntl.LOCK_UN)


def lock_run_dir(out_dir: str | Path):
    """Take out_dir's lock for this process's life (out_dir must exist) and write our PID into it.

    Returns the open lock file: the lock holds until it is closed (release_run_dir) or the
    process ends, however it ends. RunDirLocked, naming the holder's PID, if a live process
    holds it; the lock file is then left as it is.
    """
    out_dir = Path(out_dir)
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    f = os.fdopen(fd, "r+", encoding="utf-8", errors="replace")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        message = _locked_message(out_dir, f)
        f.close()
        raise RunDirLocked(message) from None
    except OSError:  # a file system without flock (some network mounts): run unlocked
        pass
    except BaseException:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def release_run_dir(lock) -> None:
    """Give up a lock lock_run_dir took (the file stays: removing it could race a new holder)."""
    if lock is not None and not lock.closed:
        lock.close()
