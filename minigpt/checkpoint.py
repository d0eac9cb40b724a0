"""Training checkpoints: writing, finding, pruning and reading them back.

A checkpoint is a directory `out_dir/ckpt_<step:08d>/`:

    model.safetensors, config.json   the weights, as GPT.save_pretrained writes them, so
                                     GPT.from_pretrained(out_dir) loads the latest one
    train_state.safetensors          tensors: AdamW moments ("optimizer.<param>.<name>")
                                     and each rank's torch RNG states ("rng.<rank>.<name>")
    train_state.json                 the rest: step, TrainConfig, data-loader position,
                                     optimizer hyper-parameters, python/numpy RNG states

It is written into `out_dir/.tmp_ckpt_<step>/` and renamed to `ckpt_<step>` only when
complete, so every `ckpt_*` directory is whole even if the process is killed mid-write.
Nothing is ever unpickled: tensors go through safetensors and the rest through JSON.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minigpt.weights import CheckpointError

CHECKPOINT_PREFIX = "ckpt_"
STATE_FORMAT_VERSION = 1
TMP_PREFIX = ".tmp_" + CHECKPOINT_PREFIX  # a checkpoint being written; never loaded
OLD_PREFIX = ".old_" + CHECKPOINT_PREFIX  # a checkpoint being replaced by one of the same step


def atomic_write(path: str | Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write `content` (bytes, or a function that writes to the open file) to path.tmp, then
    rename it to `path`: a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        if isinstance(content, bytes):
            f.write(content)
        else:
            content(f)
    os.replace(tmp, path)


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint directory in out_dir, by step."""
    found = []
    for p in out_dir.glob(CHECKPOINT_PREFIX + "*"):
        suffix = p.name[len(CHECKPOINT_PREFIX):]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in out_dir, if any (every ckpt_<step> is complete)."""
    found = _checkpoints(Path(out_dir))
    return found[-1][1] if found else None


def save_checkpoint(out_dir: str | Path, step: int, model, optimizer: torch.optim.Optimizer,
                    state: dict, rng: list[tuple[dict, dict]]) -> Path:
    """Write out_dir/ckpt_<step>/ atomically (see the module doc) and return its path.

    `state` holds the JSON-able rest (TrainConfig, data-loader state, ...); `rng` is each
    rank's rng_state(), in rank order.
    """
    out_dir = Path(out_dir)
    final = out_dir / checkpoint_name(step)
    tmp = out_dir / (TMP_PREFIX + final.name[len(CHECKPOINT_PREFIX):])
    if tmp.exists():  # left by a run killed while writing this step
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    opt = optimizer.state_dict()
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

    if final.exists():  # e.g. resumed from an older checkpoint and reached this step again
        old = out_dir / (OLD_PREFIX + final.name[len(CHECKPOINT_PREFIX):])
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (0 keeps all) and stale temporaries."""
    out_dir = Path(out_dir)
    doomed = [p for _, p in _checkpoints(out_dir)[:-keep]] if keep > 0 else []
    doomed += [p for prefix in (TMP_PREFIX, OLD_PREFIX) for p in out_dir.glob(prefix + "*") if p.is_dir()]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


@dataclass
class Checkpoint:
    """A checkpoint's training state read back and checked; the trainer applies its parts and
    loads the weights with GPT.from_pretrained(path)."""

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
        tensors = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        return tensors, self.state["rng"][rank]


def read_train_state(path: str | Path) -> dict:
    """train_state.json of a checkpoint directory, checked for the keys a resume needs."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    missing = [f for f in ("model.safetensors", "config.json", "train_state.json", "train_state.safetensors")
               if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a complete training checkpoint: missing {', '.join(missing)}")
    try:
        state = json.loads((path / "train_state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / 'train_state.json'}: {e}") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path / 'train_state.json'} is not training-state format {STATE_FORMAT_VERSION}")
    expected = {"step": int, "train_config": dict, "world_size": int, "data_loader": dict,
                "optimizer": dict, "rng": list}
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
