"""The table of tokenizer kinds, and the choosing, training and loading that it drives.

`KINDS` is the one place that knows every kind: its name, whether it trains from text, how it is
built, which files identify it in a checkpoint directory, and a line of help. `parse_tokenizer_kind`,
`train_tokenizer`, `load_tokenizer` and the help strings are all read from it, so a new kind is a
module with its Tokenizer class and one entry here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from minigpt.tokenizers import abeja, bpe, char, gpt2, hf, sentencepiece
from minigpt.tokenizers.base import BYTE_FALLBACK, HF_TOKENIZER_FILE, TOKENIZER_FILE, Tokenizer


@dataclass(frozen=True)
class Files:
    """Files in a checkpoint directory that identify a kind (when it has no minigpt_tokenizer.json)."""

    order: int  # load_tokenizer tries the Files of every kind in increasing order
    names: str  # what it looks for, as the error of a directory without a tokenizer names it
    load: Callable[[Path], Tokenizer | None]  # the tokenizer, or None when the directory lacks the files
    fallback: bool = False  # not a tokenizer's file: what a directory without any of them is taken for


@dataclass(frozen=True)
class TokenizerKind:
    """One kind of tokenizer, as the table lists it."""

    name: str  # the --tokenizer value, and the "kind" in minigpt_tokenizer.json ("bpe" stands for "bpe:N")
    description: str  # a few words for help texts
    from_description: Callable[[Path, dict], Tokenizer]  # (directory, minigpt_tokenizer.json's data) -> tokenizer
    train: Callable[[Iterable[str], int | None], Tokenizer] | None = None  # (texts, N); None: load-only
    parse_size: Callable[[str], int] | None = None  # a kind written name:N: N from the --tokenizer value
    files: tuple[Files, ...] = ()  # how load_tokenizer finds it in a directory without minigpt_tokenizer.json

    @property
    def trainable(self) -> bool:
        return self.train is not None

    @property
    def spelling(self) -> str:
        """How it is written: "gpt2", "bpe:N"."""
        return f"{self.name}:N" if self.parse_size is not None else self.name


KINDS: dict[str, TokenizerKind] = {
    kind.name: kind
    for kind in (
        TokenizerKind(
            name="gpt2",
            description="GPT-2's BPE",
            train=lambda texts, size: gpt2.GPT2Tokenizer(),
            from_description=gpt2.from_description,
            files=(Files(5, "a config.json with vocab_size 50257", gpt2.from_model_config, fallback=True),),
        ),
        TokenizerKind(
            name="char",
            description="the characters of the training text, with byte fallback",
            train=lambda texts, size: char.CharTokenizer.train(texts),
            from_description=char.from_description,
        ),
        TokenizerKind(
            name="bpe",
            description=f"a byte-level BPE of N tokens, N > {BYTE_FALLBACK}, trained on the training text",
            train=lambda texts, size: bpe.BPETokenizer.train(texts, size),
            parse_size=bpe.parse_size,
            from_description=bpe.from_description,
        ),
        TokenizerKind(
            name="hf",
            description="a tokenizer.json, or GPT-2-style vocab.json + merges.txt, with transformers' settings",
            from_description=hf.from_description,
            files=(
                Files(1, HF_TOKENIZER_FILE, hf.from_tokenizer_json),
                Files(3, "vocab.json + merges.txt", hf.from_vocab_and_merges),
            ),
        ),
        TokenizerKind(
            name="sentencepiece",
            description="a spiece.model with transformers' T5Tokenizer settings",
            from_description=sentencepiece.from_description,
            files=(Files(2, "spiece.model (or another *.model)", sentencepiece.from_model_file),),
        ),
        TokenizerKind(
            name="abeja",
            description="ABEJA's GPT-NeoX-Japanese vocab.txt + emoji.json, as transformers' GPTNeoXJapaneseTokenizer",
            from_description=abeja.from_description,
            files=(Files(4, "vocab.txt + emoji.json", abeja.from_vocab_and_emoji),),
        ),
    )
}


def _one_of(words: list[str]) -> str:
    """The words as "a, b or c"."""
    return " or ".join(filter(None, [", ".join(words[:-1]), *words[-1:]]))


def trainable_kinds() -> list[TokenizerKind]:
    """The kinds --tokenizer takes, in the table's order."""
    return [kind for kind in KINDS.values() if kind.trainable]


def load_only_kinds() -> list[TokenizerKind]:
    """The kinds only read from a checkpoint's files."""
    return [kind for kind in KINDS.values() if not kind.trainable]


def files_in_order() -> list[Files]:
    """Every kind's Files, in the order load_tokenizer tries them."""
    return sorted((files for kind in KINDS.values() for files in kind.files), key=lambda files: files.order)


def tokenizer_kinds() -> str:
    """What --tokenizer takes: "gpt2, char or bpe:N"."""
    return _one_of([kind.spelling for kind in trainable_kinds()])


def looked_for() -> str:
    """The files load_tokenizer looks for, in its order (the fallbacks left out)."""
    return ", ".join([TOKENIZER_FILE, *(files.names for files in files_in_order() if not files.fallback)])


# the two help strings of the table as it is at import (the functions above read it when called)
TOKENIZER_KINDS = tokenizer_kinds()
LOOKED_FOR = looked_for()


def kinds_help(load_only: bool = False) -> str:
    """A help line: each kind --tokenizer takes, with its description; with load_only, then the kinds
    that are only read from a checkpoint's files."""
    text = _one_of([f"{kind.spelling} ({kind.description})" for kind in trainable_kinds()])
    if load_only:
        read = _one_of([f"{kind.name} ({kind.description})" for kind in load_only_kinds()])
        text += f"; read from a checkpoint's files: {read}"
    return text


def parse_tokenizer_kind(spec: str) -> tuple[str, int | None]:
    """("gpt2", None), ("char", None) or ("bpe", N) from a --tokenizer value."""
    name, colon, _ = spec.partition(":")
    kind = KINDS.get(name)
    if kind is not None and kind.trainable:
        if kind.parse_size is not None:
            return name, kind.parse_size(spec)
        if not colon:
            return name, None
    raise ValueError(f"unknown tokenizer {spec!r}; choose {tokenizer_kinds()}")


def train_tokenizer(spec: str, texts: Iterable[str]) -> Tokenizer:
    """The tokenizer a --tokenizer value names, trained on texts where it learns from data."""
    name, size = parse_tokenizer_kind(spec)
    return KINDS[name].train(texts, size)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint directory, from the first of these that it holds (minigpt_tokenizer.json,
    then the table's Files in their order):

    minigpt_tokenizer.json (ours), tokenizer.json, spiece.model (or another *.model),
    vocab.json + merges.txt, vocab.txt + emoji.json. A directory with none of them is GPT-2's when its config.json
    says vocab_size 50257 (train.py outputs that predate tokenizer files); otherwise a ValueError.
    """
    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return _load_described(directory)
    for files in files_in_order():
        tokenizer = files.load(directory)
        if tokenizer is not None:
            return tokenizer
    fallbacks = "".join(f", or {files.names}" for files in files_in_order() if files.fallback)
    raise ValueError(f"{directory}: no tokenizer found (looked for {looked_for()}{fallbacks})")


def _described_kind(kind) -> TokenizerKind | None:
    """The table's entry for minigpt_tokenizer.json's "kind" ("gpt2", "bpe:300", ...); None if it names none."""
    if not isinstance(kind, str):
        return None
    name, colon, _ = kind.partition(":")
    entry = KINDS.get(name)
    if entry is None or bool(colon) != (entry.parse_size is not None):
        return None
    return entry


def _load_described(directory: Path) -> Tokenizer:
    path = directory / TOKENIZER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable tokenizer description ({e})") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    entry = _described_kind(kind)
    if entry is None:
        expected = _one_of([tokenizer_kinds(), *(other.name for other in load_only_kinds())])
        raise ValueError(f"{path}: unknown tokenizer kind {kind!r}; expected {expected}")
    return entry.from_description(directory, data)
