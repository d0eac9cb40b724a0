"""Tokenizers: one interface over GPT-2's, a run's own and a checkpoint's tokenizer files."""
from minigpt.tokenizers.tokenizer import (
    EOT_TOKEN,
    OWN_TOKENIZER_FILES,
    TOKENIZER_FILE,
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    TextStream,
    Tokenizer,
    TokenizerUnavailable,
    get_encoding,
    load_tokenizer,
    local_vocab_files,
    parse_tokenizer_kind,
    train_tokenizer,
)

__all__ = ["EOT_TOKEN", "OWN_TOKENIZER_FILES", "TOKENIZER_FILE", "BPETokenizer", "CharTokenizer", "GPT2Tokenizer",
           "TextStream", "Tokenizer", "TokenizerUnavailable", "get_encoding", "load_tokenizer", "local_vocab_files",
           "parse_tokenizer_kind", "train_tokenizer"]
