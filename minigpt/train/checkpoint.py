"""Training checkpoints: writing, pruning and reading them back, never leaving a partial one.

A checkpoint `out_dir/ckpt_<step:08d>/` holds the weights as save_pretrained writes them (so
from_pretrained(out_dir) loads the latest one) and the training state: train_state.safetensors
(optimizer moments, each rank's RNG states) and train_state.json (step, TrainConfig, data-loader
position, the rest). It is written into `.tmp_ckpt_<step>/` and renamed when complete; a pruned one
is renamed to `.trash_ckpt_<step>` before it is deleted. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minigpt.model.load import save_pretrained
from minigpt.rundir import (
    CHECKPOINT_PREFIX,
    CheckpointError,
    CheckpointWriteError,
    checkpoint_name,
    checkpoints,
    latest_checkpoint,
    write_latest,
)

STATE_FORMAT_VERSION = 1
TMP_PREFIX = ".tmp_" + CHECKPOINT_PREFIX  # a checkpoint being written; never loaded
OLD_PREFIX = ".old_" + CHECKPOINT_PREFIX  # a checkpoint being replaced by one of the same step
TRASH_PREFIX = ".trash_" + CHECKPOINT_PREFIX  # a pruned checkpoint being deleted
SUPERSEDED = "superseded"  # out_dir/superseded/: what a branch moved out of the way
SHARDED = "sharded"  # ckpt_<step>/sharded/: an FSDP run's per-rank shards


def _remove_tree(path: Path) -> None:
    """Delete a directory so that no kill can leave a partial ckpt_<step>: rename, then delete."""
    if path.name.startswith(CHECKPOINT_PREFIX):
        trash = path.with_name(TRASH_PREFIX + path.name[len(CHECKPOINT_PREFIX) :])
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(path, trash)
        path = trash
    shutil.rmtree(path)


def remove_leftovers(out_dir: str | Path) -> list[Path]:
    """Delete what killed writes and prunes left behind (never a complete checkpoint)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    stale = [p for prefix in (TMP_PREFIX, OLD_PREFIX, TRASH_PREFIX) for p in out_dir.glob(prefix + "*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p)
    return stale


def temp_dir(out_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` is written before it is renamed into place."""
    return Path(out_dir) / (TMP_PREFIX + checkpoint_name(step)[len(CHECKPOINT_PREFIX) :])


def start_checkpoint(out_dir: str | Path, step: int) -> Path:
    """An empty temp_dir(out_dir, step) (what a run killed while writing this step left is removed),
    for other processes to write their parts into before save_checkpoint(..., started=True)."""
    tmp = temp_dir(out_dir, step)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise write_failed(out_dir, step, e) from None
    return tmp


def write_failed(out_dir: str | Path, step: int, e: Exception) -> CheckpointWriteError:
    """The one-line error of a checkpoint that could not be written; its temporary directory is removed."""
    shutil.rmtree(temp_dir(out_dir, step), ignore_errors=True)
    previous = latest_checkpoint(out_dir)
    kept = f"the last checkpoint is still {previous}" if previous else "no earlier checkpoint exists"
    return CheckpointWriteError(f"cannot write the checkpoint of step {step} in {out_dir} ({_reason(e)}); {kept}")


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model,
    optimizer_state: dict,
    state: dict,
    rng: list[tuple[dict, dict]],
    started: bool = False,
) -> Path:
    """Write out_dir/ckpt_<step>/ atomically and return its path.

    model.safetensors, config.json   the weights, as save_pretrained writes them
    train_state.safetensors          tensors: AdamW moments ("optimizer.<param>.<name>")
                                     and each rank's torch RNG states ("rng.<rank>.<name>")
    train_state.json                 the rest: step, TrainConfig, data-loader position,
                                     optimizer hyper-parameters, python/numpy RNG states

    An FSDP run writes the same files, rank 0 gathering the full weights, and also `sharded/`:
    every rank's shard of the weights and AdamW moments ("model.<name>", "optimizer.<name>.<moment>"),
    one safetensors file per rank through torch.distributed.checkpoint, which a resume on the same
    number of processes reads; train_state.safetensors then holds only the RNG states.

    `optimizer_state` is optimizer.state_dict() (or, for FSDP, its param_groups with an empty
    "state": the moments are in the shards); `state` holds the JSON-able rest (TrainConfig,
    data-loader state, the step's loss, ...); `rng` is each rank's rng_state(), in rank order.
    With `started`, the temporary directory from start_checkpoint() already holds what the
    other processes wrote. If writing fails (a full disk), the temporary directory is removed
    and CheckpointWriteError says so in one line; the checkpoints already there are untouched.
    """
    out_dir = Path(out_dir)
    final = out_dir / checkpoint_name(step)
    tmp = temp_dir(out_dir, step)
    try:
        if tmp.exists() and not started:  # left by a run killed while writing this step
            shutil.rmtree(tmp)
        _write_contents(tmp, step, model, optimizer_state, state, rng)
        write_latest(out_dir, step)  # names a directory that is complete: only the rename is left
    except (OSError, SafetensorError) as e:
        raise write_failed(out_dir, step, e) from None
    if final.exists():  # cannot happen after start_branch(), kept as a safe replace
        old = out_dir / (OLD_PREFIX + final.name[len(CHECKPOINT_PREFIX) :])
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _write_contents(tmp: Path, step: int, model, opt: dict, state: dict, rng: list[tuple[dict, dict]]) -> None:
    save_pretrained(model, tmp, transformers_only=False)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, entries in opt["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in opt["param_groups"]]
    for rank, (rng_tensors, _) in enumerate(rng):
        for key, value in rng_tensors.items():
            tensors[f"rng.{rank}.{key}"] = value.cpu().contiguous()
    save_file(tensors, str(tmp / "train_state.safetensors"))
    payload = {
        "format_version": STATE_FORMAT_VERSION,
        "step": step,
        **state,
        "optimizer": {"param_groups": groups, "state": scalars},
        "rng": [plain for _, plain in rng],
    }
    (tmp / "train_state.json").write_text(json.dumps(payload, indent=1) + "\n")  # inside tmp: atomic with it


def prune_checkpoints(out_dir: str | Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (0 keeps all), never `protect` (the one
    this run resumed from), and remove leftovers of killed writes and prunes."""
    out_dir = Path(out_dir)
    found = checkpoints(out_dir)
    doomed = [p for _, p in found[:-keep]] if keep > 0 else []
    if protect is not None:
        doomed = [p for p in doomed if p.resolve() != Path(protect).resolve()]
    for p in doomed:
        _remove_tree(p)
    return doomed + remove_leftovers(out_dir)


def start_branch(out_dir: str | Path, step: int) -> tuple[list[Path], Path | None]:
    """Make out_dir continue from its checkpoint of `step`: a new branch of the run.

    Checkpoints of later steps (a line this run leaves) are moved, with the log.jsonl and
    run.json that describe them, into out_dir/superseded/<time>-after-ckpt_<step>/; nothing is
    deleted. `latest` is pointed at `step` first, so a kill part-way still resumes from there.
    Returns (the checkpoints moved, where to), or ([], None) if there were none.
    """
    out_dir = Path(out_dir)
    later = [p for s, p in checkpoints(out_dir) if s > step]
    if not later:
        return [], None
    write_latest(out_dir, step)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = out_dir / SUPERSEDED / f"{stamp}-after-{checkpoint_name(step)}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{stamp}.{n}-after-{checkpoint_name(step)}")
    dest.mkdir(parents=True)
    for name in ("log.jsonl", "run.json"):
        if (out_dir / name).is_file():
            shutil.copy2(out_dir / name, dest / name)
    for p in later:
        os.replace(p, dest / p.name)
    return later, dest


@dataclass
class Checkpoint:
    """A checkpoint's training state read back and checked; the trainer applies its parts and
    loads the weights with from_pretrained(path)."""

    path: Path
    state: dict  # train_state.json
    tensors: dict[str, torch.Tensor]  # train_state.safetensors

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def train_config(self) -> dict:
        return self.state["train_config"]

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer state, checked against `optimizer`'s parameters."""
        saved = self.state["optimizer"]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state: dict[int, dict] = {}
        for key, value in self.tensors.items():
            if key.startswith("optimizer."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        for pid, entries in saved["state"].items():
            state.setdefault(int(pid), {}).update(entries)
        for pid, entries in state.items():
            if not 0 <= pid < len(params):
                raise CheckpointError(f"{self.path}: optimizer state for parameter {pid}, the model has {len(params)}")
            for name in ("exp_avg", "exp_avg_sq"):
                if name in entries and entries[name].shape != params[pid].shape:
                    raise CheckpointError(
                        f"{self.path}: optimizer {name} of parameter {pid} has shape {tuple(entries[name].shape)}, "
                        f"the parameter {tuple(params[pid].shape)}"
                    )
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in saved["param_groups"]]
        return {"state": state, "param_groups": groups}

    def rng_state(self, rank: int) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The RNG states rank `rank` saved, or None if the saving run had fewer ranks."""
        if rank >= len(self.state["rng"]):
            return None
        prefix = f"rng.{rank}."
        tensors = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        return tensors, self.state["rng"][rank]


def read_train_state(path: str | Path) -> dict:
    """train_state.json of a checkpoint directory, checked for the keys a resume needs."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    missing = [
        f
        for f in ("model.safetensors", "config.json", "train_state.json", "train_state.safetensors")
        if not (path / f).is_file()
    ]
    if missing:
        raise CheckpointError(f"{path} is not a complete training checkpoint: missing {', '.join(missing)}")
    try:
        state = json.loads((path / "train_state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / 'train_state.json'}: {e}") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path / 'train_state.json'} is not training-state format {STATE_FORMAT_VERSION}")
    expected = {
        "step": int,
        "train_config": dict,
        "world_size": int,
        "data_loader": dict,
        "optimizer": dict,
        "rng": list,
    }
    for key, kind in expected.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path / 'train_state.json'}: '{key}' is missing or not a {kind.__name__}")
    if not all(k in state["optimizer"] for k in ("param_groups", "state")):
        raise CheckpointError(f"{path / 'train_state.json'}: the optimizer entry is incomplete")
    return state


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint's training state; CheckpointError (one line) if it is not usable."""
    path = Path(path)
    state = read_train_state(path)
    try:
        tensors = load_file(str(path / "train_state.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / 'train_state.safetensors'} is not readable: {e}") from None
    return Checkpoint(path=path, state=state, tensors=tensors)


# --- RNG states ----------------------------------------------------------------------------------


def rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: (torch ones as uint8 tensors, python/numpy ones as JSON)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict, device: torch.device) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
