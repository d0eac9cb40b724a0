"""The tokenizer that belongs to a model given by name or path (as from_pretrained takes it).

A train.py checkpoint carries its tokenizer (`minigpt_tokenizer.json`) and, in train_state.json,
the sha1 of its files, checked on load so that a swapped tokenizer file is refused; a hub
checkpoint or a transformers directory has its own files (load_tokenizer picks one); OpenAI's
presets and a bare .safetensors file use GPT-2's. `check_vocab` refuses a tokenizer with more ids
than the model has rows, so a mismatched pair fails in one line instead of indexing past the embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

from minigpt.model.weights import resolve_directory
from minigpt.tokenizers import GPT2Tokenizer, Tokenizer, load_tokenizer, tokenizer_hash


def tokenizer_for(init: str | Path) -> Tokenizer:
    """The tokenizer of the model `init` names: a preset, a hub id, a directory, a .safetensors file
    or a train.py out_dir (its latest checkpoint). ValueError (one line) if the saved one is unreadable."""
    directory = resolve_directory(init)
    if directory is None:
        return GPT2Tokenizer()
    tokenizer = load_tokenizer(directory)
    check_recorded_hash(tokenizer, directory)
    return tokenizer


def check_recorded_hash(tokenizer: Tokenizer, directory: Path) -> None:
    """ValueError unless the tokenizer's files are those a train.py checkpoint recorded (its
    train_state.json's tokenizer_sha1); a directory that recorded none passes."""
    try:
        recorded = json.loads((directory / "train_state.json").read_text()).get("tokenizer_sha1")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return  # no training state (or an unreadable one, which --resume reports): nothing recorded
    if isinstance(recorded, str) and tokenizer_hash(tokenizer) != recorded:
        raise ValueError(
            f"{directory}: its {tokenizer.kind} tokenizer files are not the ones the model was trained with "
            "(their sha1 differs from the one train_state.json records); restore them from the run's data directory"
        )


def check_vocab(tokenizer: Tokenizer, vocab_size: int, where: str | Path) -> None:
    """ValueError if the tokenizer has more ids than the model has rows. Fewer is fine: a model's
    vocabulary is often padded past its tokenizer's to a multiple of 64 or 128 (Pythia: 50304 or
    50432 rows for 50277 ids); the rows past the tokenizer's ids are padding that training never made likely."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"{where}: its {tokenizer.kind} tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{vocab_size}; the tokenizer saved with it does not belong to these weights"
        )
