"""A train.py output directory: its `ckpt_<step>` checkpoints and the `latest` pointer.

`out_dir/latest` names the newest checkpoint of the run's own line; the latest checkpoint is the
one of the highest step not above it (the pointed-to one, or the one before it if a kill came
between the pointer and the rename). Without the file it is the highest step. Loading a run
directory, --resume and the run's summary all use latest_checkpoint(); minigpt.train.checkpoint
writes and reads the checkpoints themselves.
"""

from __future__ import annotations

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
