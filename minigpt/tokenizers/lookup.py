"""The tokenizer that belongs to a model given by name or path (as GPT.from_pretrained takes it).

A train.py checkpoint, or a directory written from one, carries its tokenizer
(`minigpt_tokenizer.json`); a hub checkpoint or a transformers directory has its own files
(tokenizer.json, spiece.model, vocab.json + merges.txt: minigpt.tokenizers.load_tokenizer picks
one); OpenAI's presets and a bare .safetensors file use GPT-2's. `check_vocab` refuses a tokenizer whose ids are not the
model's, so a mismatched pair fails in one line instead of decoding garbage.
"""

from __future__ import annotations

from pathlib import Path

from minigpt.model.weights import resolve_directory
from minigpt.tokenizers import GPT2Tokenizer, Tokenizer, load_tokenizer


def tokenizer_for(init: str | Path) -> Tokenizer:
    """The tokenizer of the model `init` names: a preset, a hub id, a directory, a .safetensors file
    or a train.py out_dir (its latest checkpoint). ValueError (one line) if the saved one is unreadable."""
    directory = resolve_directory(init)
    return GPT2Tokenizer() if directory is None else load_tokenizer(directory)


def check_vocab(tokenizer: Tokenizer, vocab_size: int, where: str | Path) -> None:
    """ValueError unless the tokenizer has exactly the model's vocab_size ids."""
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"{where}: its {tokenizer.kind} tokenizer has {tokenizer.vocab_size} ids but the model "
            f"{vocab_size}; the tokenizer saved with it does not belong to these weights"
        )
