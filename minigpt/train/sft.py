"""Supervised fine-tuning data: conversations in JSONL, rendered, tokenized, masked and packed.

    train.py --init gpt2 --sft chats.jsonl --out-dir out-sft     # chat.py --init out-sft then needs no flag

Each line of the file is one conversation, {"messages": [{"role": ..., "content": ...}, ...]}, or
the instruction form {"instruction": ..., "input": ..., "output": ...} (a user message, the input
after the instruction, and the assistant's reply). Each conversation is written in the model's chat
format (minigpt.chat.formats: its own template, else the format its tokenizer config names, else
"minigpt"), cut into segments and tokenized segment by segment, so the tokens of a prompt are those
chat.py feeds the model. The loss is on the assistant's tokens only (each reply and its end-of-turn
marker): every other target is -100, which the model's cross-entropy ignores.

Short conversations are packed side by side into rows of block_size tokens with doc_ids, so that
attention stays inside each conversation and positions restart at its start (GPT.forward's doc_ids):
a packed row gives each conversation exactly the logits it gets alone. With packing off each row
holds one conversation, padded. A held-out share of the conversations is scored with the same loss.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from minigpt.chat.formats import (
    CHAT_FORMAT_KEY,
    FORMATS,
    MINIGPT,
    ChatFormat,
    TemplateFormat,
    chat_format,
    read_chat_template,
)
from minigpt.chat.formats import check_messages as check_chat_messages
from minigpt.data.corpus import DataError
from minigpt.tokenizers import Tokenizer
from minigpt.tokenizers.base import HF_CONFIG_FILE, read_json, write_json
from minigpt.tokenizers.hf_config import HFConfig

IGNORE = -100  # the target of a token the loss leaves out (F.cross_entropy's ignore_index)


class SFTError(DataError):
    """A conversations file that cannot be used; the message names the file and line."""


# ----------------------------------------------------------------------------------------------
# Reading the file


def conversation(obj, where: str) -> list[dict]:
    """The messages of one parsed line (either form), checked; SFTError naming `where` (file:line)."""
    if not isinstance(obj, dict):
        raise SFTError(f"{where}: expected a JSON object, got a {type(obj).__name__}")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list):
            raise SFTError(f"{where}: 'messages' must be a list of {{'role', 'content'}} objects")
        try:
            check_chat_messages(messages)
        except ValueError as e:
            raise SFTError(f"{where}: {e}") from None
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif "instruction" in obj and "output" in obj:
        for key in ("instruction", "input", "output"):
            if key in obj and obj[key] is not None and not isinstance(obj[key], str):
                raise SFTError(f"{where}: '{key}' must be a string, got a {type(obj[key]).__name__}")
        prompt = obj["instruction"] + (f"\n\n{obj['input']}" if obj.get("input") else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}]
    else:
        raise SFTError(f"{where}: expected 'messages' (a conversation) or 'instruction' and 'output'")
    if not messages:
        raise SFTError(f"{where}: the conversation has no messages")
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise SFTError(f"{where}: the conversation has no assistant reply to learn")
    return messages


def read_conversations(path: str | Path) -> list[list[dict]]:
    """Every conversation of a JSONL file (blank lines skipped); SFTError (one line, file:line) at the first bad one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SFTError(f"--sft {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SFTError(f"--sft {path}: cannot read it ({e})") from None
    conversations = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SFTError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        conversations.append(conversation(obj, where))
    if not conversations:
        raise SFTError(f"--sft {path}: the file holds no conversations")
    return conversations


# ----------------------------------------------------------------------------------------------
# Tokens and masks


def sft_format(directory: str | Path | None, name: str | None = None) -> ChatFormat:
    """The format a fine-tuning run writes its conversations in: `name`, else the model's own template or
    the built-in format its tokenizer config names, else "minigpt" (not chat_format's "dialogue",
    which is for base models that were never fine-tuned)."""
    if name is not None or directory is None:
        return chat_format(None, name) if name is not None else MINIGPT
    if read_chat_template(Path(directory)) is None and HFConfig(Path(directory)).get(CHAT_FORMAT_KEY) is None:
        return MINIGPT
    return chat_format(directory)


def encode(messages: list[dict], fmt: ChatFormat, tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """(ids, learn): the conversation's tokens, segment by segment, and for each whether the model learns it."""
    ids, learn = [], []
    for text, trained in fmt.segments(messages):
        piece = tokenizer.encode(text, allow_special=True)
        ids += piece
        learn += [trained] * len(piece)
    return ids, learn


@dataclass
class Example:
    """One conversation as a training row's part: inputs, next-token targets (IGNORE where not learned)."""

    inputs: list[int]
    targets: list[int]


def example(ids: list[int], learn: list[bool], block_size: int) -> Example | None:
    """Inputs ids[:-1] and targets ids[1:] where the target token is learned, cut to block_size;
    None if no learned target is left."""
    inputs = ids[:-1][:block_size]
    targets = [t if keep else IGNORE for t, keep in zip(ids[1:], learn[1:], strict=True)][:block_size]
    if all(t == IGNORE for t in targets):
        return None
    return Example(inputs, targets)


def pack(examples: list[Example], block_size: int, pad_id: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Rows (inputs, targets, doc_ids) of block_size tokens: examples placed one after another, in order,
    a row closed when the next does not fit; the rest of a row is padding (targets IGNORE, a doc id of its own)."""
    rows, current = [], ([], [], [])
    for ex in examples:
        if len(current[0]) + len(ex.inputs) > block_size:
            rows.append(current)
            current = ([], [], [])
        doc = current[2][-1] + 1 if current[2] else 0
        current[0].extend(ex.inputs)
        current[1].extend(ex.targets)
        current[2].extend([doc] * len(ex.inputs))
    if current[0]:
        rows.append(current)
    return [pad(row, block_size, pad_id) for row in rows]


def pad(row, block_size: int, pad_id: int):
    inputs, targets, docs = row
    n = block_size - len(inputs)
    doc = (docs[-1] + 1) if docs else 0
    return inputs + [pad_id] * n, targets + [IGNORE] * n, docs + [doc] * n


# ----------------------------------------------------------------------------------------------
# Loading rows in batches


class SFTLoader:
    """Batches (x, y, doc_ids) of rows: each process takes its batch_size rows of every step's
    batch_size x world_size, in an order shuffled each epoch from the seed (the train split) or in
    file order (val). The position is one number, so a checkpoint resumes exactly."""

    def __init__(self, rows, split: str, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.inputs = torch.tensor([r[0] for r in rows], dtype=torch.long)
        self.targets = torch.tensor([r[1] for r in rows], dtype=torch.long)
        self.docs = torch.tensor([r[2] for r in rows], dtype=torch.long)
        self.split, self.B, self.rank, self.world_size, self.seed = split, batch_size, rank, world_size, seed
        self.shuffle = split == "train"
        self.position = 0  # rows taken so far, by all processes
        self._order: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def reset(self) -> None:
        self.position = 0

    def _row(self, i: int) -> int:
        epoch, k = divmod(i, len(self))
        if not self.shuffle:
            return k
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self), generator=g))
        return int(self._order[1][k])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start = self.position + self.rank * self.B
        index = torch.tensor([self._row(i) for i in range(start, start + self.B)])
        self.position += self.B * self.world_size
        return self.inputs[index], self.targets[index], self.docs[index]

    def state_dict(self) -> dict:
        return {
            "split": self.split,
            "rows": len(self),
            "batch_size": self.B,
            "world_size": self.world_size,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        different = [k for k in ("split", "rows", "batch_size", "world_size") if state.get(k) != mine[k]]
        if different:
            saved = ", ".join(f"{k}={state.get(k)!r}" for k in different)
            now = ", ".join(f"{k}={mine[k]!r}" for k in different)
            raise DataError(f"the SFT loader state was saved for {saved}, this run has {now} (was the file changed?)")
        if not isinstance(state.get("position"), int) or state["position"] < 0:
            raise DataError(f"the SFT loader state has position {state.get('position')!r}")
        self.position = state["position"]


class PaddedLoader(SFTLoader):
    """--no-pack: one conversation per row, padded at its end (causal attention never looks ahead at
    the padding), so no doc_ids are needed."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = super().next_batch()
        return x, y


# ----------------------------------------------------------------------------------------------
# A run's data


class SFTData:
    """The train and val loaders of a conversations file, and the figures the trainer reports
    (a meta dict shaped like a prepared corpus's: tokens and bytes of the learned targets)."""

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer,
        fmt: ChatFormat,
        block_size: int,
        batch_size: int,
        packed: bool = True,
        val_fraction: float = 0.1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.format, self.tokenizer = fmt, tokenizer
        conversations = read_conversations(path)
        examples, self.truncated, self.dropped = [], 0, 0
        for i, messages in enumerate(conversations):
            try:
                ids, learn = encode(messages, fmt, tokenizer)
            except ValueError as e:  # a role the format has no place for
                raise SFTError(f"{path}: conversation {i + 1}: {e}") from None
            self.truncated += len(ids) - 1 > block_size
            ex = example(ids, learn, block_size)
            if ex is None:
                self.dropped += 1
            else:
                examples.append(ex)
        if len(examples) < 2:
            raise SFTError(f"--sft {path}: {len(examples)} usable conversation(s); a train and a val split need 2")
        random.Random(seed).shuffle(examples)
        n_val = min(len(examples) - 1, max(1, round(val_fraction * len(examples))))
        splits = {"val": examples[:n_val], "train": examples[n_val:]}
        pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        loader = SFTLoader if packed else PaddedLoader
        self.loaders = {}
        self.meta = {"vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.kind, "splits": {}}
        for split, part in splits.items():
            rows = pack(part, block_size, pad_id) if packed else [pad(_unpacked(ex), block_size, pad_id) for ex in part]
            self.loaders[split] = loader(rows, split, batch_size, rank, world_size, seed)
            learned = [t for ex in part for t in ex.targets if t != IGNORE]
            self.meta["splits"][split] = {
                "conversations": len(part),
                "rows": len(rows),
                "tokens": len(learned),
                "bytes": len(tokenizer.decode(learned).encode("utf-8")),
                "shards": [],
            }
        self._train_targets = [t for ex in splits["train"] for t in ex.targets if t != IGNORE]

    @property
    def train_loader(self) -> SFTLoader:
        return self.loaders["train"]

    @property
    def val_loader(self) -> SFTLoader:
        return self.loaders["val"]

    def unigram_entropy(self) -> tuple[float, int]:
        """(entropy in nats of the learned train tokens' frequencies, tokens counted): what a model
        that ignores the conversation scores."""
        counts = Counter(self._train_targets)
        n = len(self._train_targets)
        return -sum(c / n * math.log(c / n) for c in counts.values()), n

    def describe(self) -> str:
        s = self.meta["splits"]
        notes = f"; {self.truncated} cut to the context" if self.truncated else ""
        notes += f"; {self.dropped} left out (no reply within the context)" if self.dropped else ""
        return (
            f"{s['train']['conversations']} train / {s['val']['conversations']} val conversations in "
            f"{s['train']['rows']} / {s['val']['rows']} rows, {self.format.name} chat format, loss on "
            f"{s['train']['tokens']:,} / {s['val']['tokens']:,} reply tokens{notes}"
        )


def _unpacked(ex: Example):
    return ex.inputs, ex.targets, [0] * len(ex.inputs)


def write_chat_format(directory: str | Path, fmt: ChatFormat) -> None:
    """Record the run's format in directory/tokenizer_config.json (which chat_format reads), so a
    model fine-tuned in it chats in it without a flag: a built-in format by name, a template as itself."""
    path = Path(directory) / HF_CONFIG_FILE
    config = read_json(path) if path.is_file() else {}
    if isinstance(fmt, TemplateFormat):
        if read_chat_template(Path(directory)) == fmt.template_text:
            return
        config["chat_template"] = fmt.template_text
    elif fmt.name in FORMATS:
        config[CHAT_FORMAT_KEY] = fmt.name
    write_json(path, config)
