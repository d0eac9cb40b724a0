"""Run train.py with fault hooks, for tests/test_faults.py: `python tests/fault_hooks.py TRAIN_ARGS...`.

Environment:
  FAULT_EVENTS   a file; every hook appends its name to it as it is reached
  FAULT_AT       KIND:N - at the N-th event of KIND, append "PAUSED KIND N" and sleep, so the
                 test can SIGKILL the process right there. Kinds:
                   setup    a set-up collective of Trainer (rank 0's checks sent to every rank) begins
                   step     a training forward begins
                   write    a checkpoint's train_state.safetensors is about to be written
                           (its model files are already in the temporary directory)
                   pointer  `latest` names the new checkpoint, which is not yet renamed into place
                   prune    a pruned checkpoint has been renamed aside and one of its files deleted
  FAULT_ENOSPC   N - the N-th train_state.safetensors write fails with "No space left on device"
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minigpt.model.model import GPT  # noqa: E402
from minigpt.train import checkpoint  # noqa: E402

counts: Counter = Counter()
kind_at, _, n_at = os.environ.get("FAULT_AT", "").partition(":")


def event(kind: str) -> None:
    counts[kind] += 1
    with open(os.environ["FAULT_EVENTS"], "a") as f:
        f.write(kind + "\n")
        if kind == kind_at and counts[kind] == int(n_at):
            f.write(f"PAUSED {kind} {n_at}\n")
            f.flush()
            time.sleep(120)  # the test kills the process here


def install() -> None:
    forward, save_file, write_latest, rmtree = GPT.forward, checkpoint.save_file, checkpoint.write_latest, shutil.rmtree

    def hooked_forward(self, idx, targets=None, **kwargs):
        if targets is not None and self.training:
            event("step")
        return forward(self, idx, targets, **kwargs)

    def hooked_save_file(tensors, filename, *args, **kwargs):
        event("write")
        if counts["write"] == int(os.environ.get("FAULT_ENOSPC", 0)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return save_file(tensors, filename, *args, **kwargs)

    def hooked_write_latest(out_dir, step):
        write_latest(out_dir, step)
        event("pointer")

    def hooked_rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith(checkpoint.TRASH_PREFIX):
            files = sorted(path.iterdir())
            if files:
                files[0].unlink()  # half-deleted, as a kill during rmtree leaves it
            event("prune")
        return rmtree(path, *args, **kwargs)

    from minigpt.train.trainer import Trainer

    raise_on_all_ranks = Trainer._raise_on_all_ranks

    def hooked_raise_on_all_ranks(self, *args, **kwargs):
        event("setup")
        return raise_on_all_ranks(self, *args, **kwargs)

    Trainer._raise_on_all_ranks = hooked_raise_on_all_ranks
    GPT.forward = hooked_forward
    checkpoint.save_file = hooked_save_file
    checkpoint.write_latest = hooked_write_latest
    shutil.rmtree = hooked_rmtree


if __name__ == "__main__":
    torch.set_num_threads(1)  # as the in-process reference run: the same float operations
    install()
    import importlib.util

    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    sys.exit(train.main(sys.argv[1:]))
