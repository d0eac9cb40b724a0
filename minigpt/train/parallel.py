"""Scaling a run out: activation checkpointing, FSDP2 sharding, and an FSDP run's checkpoint shards.

FSDP2 (`torch.distributed.fsdp.fully_shard`) turns every parameter into a DTensor sharded
along its first dimension across the processes: each rank keeps 1/N of the fp32 weights, of
their gradients and (since AdamW is built on the sharded parameters) of the two moments.
Every Block is its own unit: its weights are all-gathered just before its forward (and again
before its backward) and freed after, and its gradients are reduce-scattered as soon as its
backward is done, so at most a block or two is ever whole. The embeddings and ln_f, in the
root unit, are gathered for the whole forward (wte is also the tied lm_head).

An FSDP checkpoint's shards go through torch.distributed.checkpoint with its safetensors
storage: every rank writes one file of its pieces, and a resume on the same number of
processes reads its pieces back. No pickle is involved (the default DCP format pickles its
metadata).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from minigpt.model.load import build_on_meta
from minigpt.model.model import GPT


def checkpoint_activations(model: GPT) -> None:
    """Make every block recompute its activations in the backward pass instead of storing them
    (in place). Only each block's input is kept: B x T x C per block instead of ~34 x that.

    The wrapper keeps the parameter names of state_dict() (and so of checkpoints) unchanged.
    """
    blocks = model.transformer.h
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block)  # torch.utils.checkpoint, non-reentrant


def shard(model: GPT, device: torch.device, world_size: int, bf16: bool) -> None:
    """fully_shard every block, then the model (in place); with `bf16`, the gathered weights are
    bf16 copies of the fp32 shards and gradients are reduced in fp32.

    Every rank first takes rank 0's weights, as DDP does when it wraps a model: each rank drew
    its own random init (the seed differs per rank, for dropout) and each keeps its shard of it.
    """
    with torch.no_grad():
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
    mesh = init_device_mesh(device.type, (world_size,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (e.g. clip_grad_norm_'s total norm) as a plain tensor."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_copy(model: torch.nn.Module) -> GPT | None:
    """On rank 0, an ordinary GPT on the CPU holding the sharded model's full weights; None on
    the others. Every rank must call it (the weights are gathered)."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:  # cpu_offload leaves the full state on rank 0 only
        return None
    copy = build_on_meta(model.config)
    copy.load_state_dict(full, assign=True)
    return copy


def _flat_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    """(this rank's pieces of the weights and AdamW state by name, the optimizer's param_groups)."""
    flat = {f"model.{k}": v for k, v in get_model_state_dict(model).items()}
    opt = get_optimizer_state_dict(model, optimizer)
    for name, entries in opt["state"].items():
        for key, value in entries.items():
            flat[f"optimizer.{name}.{key}"] = value
    return flat, opt["param_groups"]


def save_shards(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[dict]:
    """Every rank writes its shards to `directory`; returns the optimizer's param_groups (by
    parameter name, JSON-able) for rank 0 to record. Every rank must call it."""
    flat, groups = _flat_state(model, optimizer)
    try:
        dcp.save(flat, storage_writer=dcp.HuggingFaceStorageWriter(str(directory), save_distributed=True))
    except CheckpointException as e:  # raised on every rank: what went wrong first (a full disk, ...)
        raise _first_failure(e) from None
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]


def load_shards(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, param_groups: list[dict]
) -> None:
    """Read this rank's shards of the weights and AdamW state from `directory` into the model and
    optimizer. Every rank must call it. KeyError/ValueError/RuntimeError if they do not fit."""
    flat, _ = _flat_state(model, optimizer)  # the names, shapes and placements to fill
    try:
        dcp.load(flat, storage_reader=dcp.HuggingFaceStorageReader(str(directory)))
    except CheckpointException as e:
        raise _first_failure(e) from None
    weights = {k[len("model.") :]: v for k, v in flat.items() if k.startswith("model.")}
    state: dict[str, dict] = {}
    for key, value in flat.items():
        if key.startswith("optimizer."):
            name, moment = key[len("optimizer.") :].rsplit(".", 1)
            state.setdefault(name, {})[moment] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in param_groups]
    set_model_state_dict(model, weights)
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups})


def _first_failure(e: CheckpointException) -> BaseException:
    """The exception of the lowest rank that failed (DCP gathers them into one BaseException)."""
    failure = e.failures[min(e.failures)][0]
    return failure if isinstance(failure, Exception) else RuntimeError(str(failure))
