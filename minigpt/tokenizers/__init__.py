"""Tokenizers: one interface over GPT-2's, a run's own and a checkpoint's tokenizer files.

One module per kind (gpt2, char, bpe, hf, sentencepiece, abeja) implements the `Tokenizer` interface of
`base`; the table `KINDS` in `kinds` lists them and drives choosing (`parse_tokenizer_kind`),
training (`train_tokenizer`) and loading (`load_tokenizer`). `TextStream` decodes ids as they come.
"""

from minigpt.tokenizers.abeja import AbejaTokenizer
from minigpt.tokenizers.base import (
    EOT_TOKEN,
    OWN_TOKENIZER_FILES,
    TOKENIZER_FILE,
    Tokenizer,
    TokenizerUnavailable,
    tokenizer_hash,
)
from minigpt.tokenizers.bpe import BPETokenizer
from minigpt.tokenizers.char import CharTokenizer
from minigpt.tokenizers.gpt2 import GPT2Tokenizer, get_encoding, local_vocab_files
from minigpt.tokenizers.hf import HFTokenizer
from minigpt.tokenizers.kinds import (
    KINDS,
    LOOKED_FOR,
    TOKENIZER_KINDS,
    TokenizerKind,
    kinds_help,
    load_tokenizer,
    parse_tokenizer_kind,
    train_tokenizer,
)
from minigpt.tokenizers.sentencepiece import SentencePieceTokenizer
from minigpt.tokenizers.stream import TextStream

__all__ = [
    "EOT_TOKEN",
    "KINDS",
    "LOOKED_FOR",
    "OWN_TOKENIZER_FILES",
    "TOKENIZER_FILE",
    "TOKENIZER_KINDS",
    "AbejaTokenizer",
    "BPETokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "TextStream",
    "Tokenizer",
    "TokenizerKind",
    "TokenizerUnavailable",
    "get_encoding",
    "kinds_help",
    "load_tokenizer",
    "local_vocab_files",
    "parse_tokenizer_kind",
    "tokenizer_hash",
    "train_tokenizer",
]
