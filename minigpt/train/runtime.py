"""Where a run executes: its processes, its device and precision, and the CPU/CUDA knobs it sets.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) a process group is started: NCCL on CUDA,
gloo on CPU. One knob cannot live here: OMP_WAIT_POLICY is read when torch loads OpenMP,
so train.py sets it before `import torch`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import platform
import re
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minigpt.device import resolve_device
from minigpt.model.backends import resolve_backends
from minigpt.train.config import ConfigError, TrainError


@dataclass
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    distributed: bool  # a process group was started (under torchrun)
    device: torch.device
    dtype: str  # "float32" or "bfloat16" (autocast)
    backends: tuple[str, str]  # (attention, LayerNorm) as they will run on `device`
    timeout: float = 600.0  # seconds a collective waits for the other processes

    @property
    def master(self) -> bool:
        """Rank 0: the process that writes logs and checkpoints."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """values averaged over the processes (in place; unchanged with one process)."""
        if self.distributed:
            dist.all_reduce(values)
            values /= self.world_size
        return values

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @contextlib.contextmanager
    def collective_timeouts(self):
        """Turn a collective that timed out (a rank that froze, or died without its process group
        noticing) into a TrainError of one line naming the rank(s) that did not answer."""
        try:
            yield
        except RuntimeError as e:  # DistBackendError is one
            if not self.distributed or "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
                raise
            error = CollectiveTimeout(self.rank, self.world_size, self.timeout, str(e))
            if not self.master:  # train.py prints rank 0's errors only; here rank 0 may be the silent one
                print(f"error: {error}", file=sys.stderr, flush=True)
            raise error from None


class CollectiveTimeout(TrainError):
    """A collective waited longer than --dist-timeout for another rank."""

    exit_code = 1

    def __init__(self, rank: int, world_size: int, timeout: float, reason: str):
        others = [r for r in range(world_size) if r != rank]
        named = re.findall(r"\brank[ _:]*(\d+)", reason, flags=re.IGNORECASE)
        silent = sorted({int(r) for r in named if int(r) != rank and int(r) < world_size}) or others
        who = ", ".join(str(r) for r in silent)
        super().__init__(
            f"rank {rank}: rank {who} stopped answering (no reply at a collective within "
            f"--dist-timeout {timeout:g} s); stopping. Resume the run from its last checkpoint with --resume"
            if len(silent) == 1
            else f"rank {rank}: one of ranks {who} stopped answering (no reply at a collective within "
            f"--dist-timeout {timeout:g} s); stopping. Resume the run from its last checkpoint with --resume"
        )


def start_runtime(
    device: str = "auto",
    dtype: str = "auto",
    attn_backend: str = "auto",
    ln_backend: str = "auto",
    timeout: float = 600.0,
) -> Runtime:
    """Pick the device and precision, set the device's knobs, and join the process group if any
    (its collectives give up after `timeout` seconds: see collective_timeouts)."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))

    try:
        where = resolve_device(device, local_rank)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if dtype == "auto":
        dtype = "bfloat16" if where.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    try:
        backends = resolve_backends(attn_backend, ln_backend, where)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None

    if where.type == "cpu":
        keep_freed_memory()
    if where.type == "cuda":
        torch.cuda.set_device(where)
        # TF32 for the fp32 matmuls that autocast leaves (and for --dtype float32).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    runtime = Runtime(rank, local_rank, world_size, distributed, where, dtype, backends, timeout)
    if distributed:
        wait = datetime.timedelta(seconds=timeout)
        with runtime.collective_timeouts():  # a rank that never joins: one line, not a traceback
            if where.type == "cuda":
                dist.init_process_group(backend="nccl", device_id=where, timeout=wait)
            else:
                dist.init_process_group(backend="gloo", timeout=wait)
    return runtime


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A CPU training step allocates and frees several B x T x vocab tensors (logits, their
    log-softmax, their gradients) of ~100 MB each. glibc serves blocks that big with a fresh
    mmap and unmaps them on free, so every step would page-fault and zero them again in the
    kernel (the README gives the step time it saves). The cost is that the process keeps
    its peak memory, as CUDA's caching allocator does. Returns whether the setting took
    (only glibc has it).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    largest = 2**31 - 1  # mallopt takes an int
    return bool(mallopt(M_MMAP_THRESHOLD, largest)) and bool(mallopt(M_TRIM_THRESHOLD, largest))
