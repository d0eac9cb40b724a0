"""Reading prepared token shards (minigpt.data.corpus writes them): the training batches, and the
unigram baseline of a split."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import random
from pathlib import Path

import numpy as np
import torch

from minigpt.data.corpus import DataError, load_meta

ORDERS = ("random", "sequential")  # how DataLoader visits the training windows
# Each memory map holds a file descriptor. A random order reads rows from every shard, so keep
# enough open that a corpus of up to this many shards is mapped once.
MAX_OPEN_SHARDS = 128


class DataLoader:
    """(x, y) batches of B rows of T tokens, y = x shifted by one, for rank `rank` of `world_size`.

    The split is read as one stream (its shards in order), in one of two orders:

    - "sequential": each step covers B*T*W tokens from a shared position p: rank r takes the
      B*T+1 tokens from p + r*B*T, and p advances by B*T*W. When fewer than B*T*W+1 tokens
      are left the loader starts the next epoch from the beginning.
    - "random": an epoch cuts the stream into windows of T+1 tokens every T tokens (the last
      token of one window is the first of the next) and visits them in a shuffled order drawn
      from (seed, epoch); each step takes the next B*W windows of that order, rank r the B from
      r*B. The windows that do not make a whole step at the end of an epoch wait for the next.

    Either way the W ranks' rows, concatenated in rank order, are exactly the rows one rank
    with a batch of W*B would read. Epoch 0 starts at token 0, each later epoch at an offset
    below T drawn from (seed, epoch), so repeated epochs of a small corpus do not show the same
    windows again. The position, and so state_dict(), is the same on every rank.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        block_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        order: str = "sequential",
    ):
        meta = load_meta(data_dir)
        if order not in ORDERS:
            raise DataError(f"unknown data order {order!r}; choose one of {', '.join(ORDERS)}")
        if split not in meta["splits"]:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(meta['splits'])}")
        if batch_size < 1 or block_size < 1:
            raise DataError(f"batch_size and block_size must be positive, got {batch_size}, {block_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.data_dir, self.split = Path(data_dir), split
        self.vocab_size = meta["vocab_size"]
        self.B, self.T, self.rank, self.world_size, self.seed = batch_size, block_size, rank, world_size, seed
        self.order = order
        shards = meta["splits"][split]["shards"]
        self._files = [self.data_dir / s["file"] for s in shards]
        self._lengths = [s["tokens"] for s in shards]
        self._starts = [0, *itertools.accumulate(self._lengths)][:-1]
        self.num_tokens = sum(self._lengths)
        self.step_tokens = batch_size * block_size * world_size
        if self.num_tokens < self.step_tokens + 1:
            raise DataError(
                f"the {split} split of {data_dir} has {self.num_tokens:,} tokens, too few for one "
                f"step of batch_size*block_size*world_size+1 = {self.step_tokens + 1:,}; "
                f"use a smaller batch or block size, or more data"
            )
        # Identifies the data in state_dict(): the same shard names and lengths of the same source.
        ident = [meta["source_id"], meta["source_fingerprint"], split, shards]
        self._data_check = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        self._open: dict[int, np.ndarray] = {}  # some memory-mapped shards, oldest first
        self._checked: set[int] = set()  # shards whose token ids were checked
        self._windows: tuple[int, np.ndarray] | None = None  # (epoch, its shuffled window starts)
        self.reset()

    def reset(self) -> None:
        """Back to the first batch of epoch 0 (call before each evaluation on val)."""
        self.epoch = 0
        # sequential: where the current step starts in the split's token stream;
        # random: how many windows of the epoch's order the steps so far took.
        self.position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: int64 (B, T) CPU tensors, y being x shifted left by one token."""
        if self.order == "random":
            return self._next_random()
        if self.position + self.step_tokens + 1 > self.num_tokens:
            self.epoch += 1
            self.position = self._epoch_start(self.epoch)
        start = self.position + self.rank * self.B * self.T
        buf = torch.from_numpy(self._read(start, self.B * self.T + 1))
        self.position += self.step_tokens
        x = buf[:-1].view(self.B, self.T)
        y = buf[1:].view(self.B, self.T)
        return x, y

    def _next_random(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.B * self.world_size
        if self.position + rows > len(self._epoch_windows()):
            self.epoch += 1
            self.position = 0
        mine = self._epoch_windows()[self.position + self.rank * self.B :][: self.B]
        self.position += rows
        buf = torch.from_numpy(np.stack([self._read(int(start), self.T + 1) for start in mine]))
        return buf[:, :-1], buf[:, 1:]

    def _epoch_windows(self) -> np.ndarray:
        """The start of every window of the current epoch, in the order the epoch visits them."""
        if self._windows is None or self._windows[0] != self.epoch:
            offset = self._epoch_start(self.epoch)
            n = (self.num_tokens - 1 - offset) // self.T  # at least B*W: see _epoch_start
            # Seeded by (seed, epoch) alone, so a resume replays the order exactly (with the same
            # NumPy: NEP 19 lets a Generator method change its algorithm between releases).
            rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch, 0x6D696E69]))
            self._windows = (self.epoch, offset + self.T * rng.permutation(n))
        return self._windows[1]

    def state_dict(self) -> dict:
        state = {
            "split": self.split,
            "data": self._data_check,
            "batch_size": self.B,
            "block_size": self.T,
            "world_size": self.world_size,
            "order": self.order,
            "epoch": self.epoch,
        }
        if self.order == "random":
            return {**state, "window": self.position}
        shard = max(0, bisect.bisect_right(self._starts, self.position) - 1)
        return {**state, "shard": shard, "position": self.position - self._starts[shard]}  # within that shard

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the loader that saved `state` was."""
        mine = self.state_dict()
        state = {"order": "sequential", **state}  # the only order of older checkpoints
        geometry = ("split", "data", "batch_size", "block_size", "world_size", "order")
        different = [k for k in geometry if state.get(k) != mine[k]]
        if different:
            saved = ", ".join(f"{k}={state.get(k)!r}" for k in different)
            now = ", ".join(f"{k}={mine[k]!r}" for k in different)
            raise DataError(f"data loader state was saved for {saved}, but this loader has {now}")
        if self.order == "random":
            epoch, window = state["epoch"], state["window"]
            if not (isinstance(epoch, int) and epoch >= 0 and isinstance(window, int) and window >= 0):
                raise DataError(f"data loader state has a bad position: epoch {epoch!r}, window {window!r}")
            self.epoch, self.position = epoch, window
            return
        shard, offset = state["shard"], state["position"]
        if not (0 <= shard < len(self._starts) and 0 <= offset <= self._lengths[shard]):
            raise DataError(f"data loader state points outside the data: shard {shard}, position {offset}")
        self.epoch = state["epoch"]
        self.position = self._starts[shard] + offset

    def _epoch_start(self, epoch: int) -> int:
        if epoch == 0:
            return 0
        span = min(self.T, self.num_tokens - self.step_tokens)  # so that a whole step still fits
        # The label is part of every saved run's data order: keep it as it is.
        return random.Random(f"minigpt.data/{self.seed}/{epoch}").randrange(span)

    def _read(self, start: int, n: int) -> np.ndarray:
        """n tokens of the stream from `start`, across shard boundaries, as int64."""
        out = np.empty(n, dtype=np.int64)
        i = bisect.bisect_right(self._starts, start) - 1
        done = 0
        while done < n:
            shard = self._shard(i)
            offset = start + done - self._starts[i]
            take = min(n - done, len(shard) - offset)
            out[done : done + take] = shard[offset : offset + take]
            done += take
            i += 1
        return out

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._open:
            if len(self._open) >= MAX_OPEN_SHARDS:
                del self._open[next(iter(self._open))]
            tokens = np.load(self._files[i], mmap_mode="r")
            if tokens.dtype != np.uint16 or tokens.shape != (self._lengths[i],):
                raise DataError(f"{self._files[i]} changed since meta.json was written; prepare it again")
            if i not in self._checked:  # one pass, the first time the shard is read
                _check_ids(self._files[i], tokens, self.vocab_size)
                self._checked.add(i)
            self._open[i] = tokens
        return self._open[i]


def _check_ids(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    top = int(tokens.max()) if len(tokens) else 0
    if top >= vocab_size:
        raise DataError(f"{path} holds token id {top}, outside the vocabulary of {vocab_size}; prepare it again")


def check_token_ids(data_dir: str | Path, meta: dict) -> None:
    """DataError unless every token id is below meta's vocab_size: the max_id meta.json records
    for each shard, and the ids actually in the first shard of each split (all of a small
    corpus). DataLoader checks every other shard when it first reads it."""
    data_dir = Path(data_dir)
    for split in ("train", "val"):
        for i, shard in enumerate(meta["splits"][split]["shards"]):
            if shard.get("max_id", 0) >= meta["vocab_size"]:
                raise DataError(
                    f"{data_dir / shard['file']} holds token id {shard['max_id']} (meta.json), "
                    f"outside the vocabulary of {meta['vocab_size']}; prepare it again"
                )
            if i == 0:
                _check_ids(
                    data_dir / shard["file"], np.load(data_dir / shard["file"], mmap_mode="r"), meta["vocab_size"]
                )


def unigram_entropy(
    data_dir: str | Path, meta: dict, split: str = "train", max_tokens: int = 2**28
) -> tuple[float, int]:
    """(entropy in nats/token of the split's token frequencies, tokens counted).

    A model that predicts every token from these frequencies alone, ignoring the context,
    has exactly this cross-entropy on the split; learning anything about context goes below
    it. Counts the first max_tokens tokens (all of them for corpora up to 268M tokens).
    """
    counts = np.zeros(meta["vocab_size"], dtype=np.int64)
    seen = 0
    chunk = 2**24  # bincount widens to int64: count a shard in pieces to bound the memory
    for shard in meta["splits"][split]["shards"]:
        tokens = np.load(Path(data_dir) / shard["file"], mmap_mode="r")[: max_tokens - seen]
        for start in range(0, len(tokens), chunk):
            counts += np.bincount(tokens[start : start + chunk], minlength=len(counts))[: len(counts)]
        seen += len(tokens)
        if seen >= max_tokens:
            break
    p = counts[counts > 0] / seen
    return float(-(p * np.log(p)).sum()), seen
