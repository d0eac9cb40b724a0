"""The `Tokenizer` interface every kind implements, and what the kinds share: file names, JSON helpers.

Everything in minigpt that turns text into ids goes through this small interface (encode, decode,
vocab_size, eot_id, save_pretrained, ...), so the model, the data pipeline and the decoders never
need to know which kind of tokenizer a run or checkpoint uses.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from minigpt.files import atomic_write

EOT_TOKEN = "<|endoftext|>"

TOKENIZER_FILE = "minigpt_tokenizer.json"  # which kind a checkpoint's tokenizer is, and its data
HF_TOKENIZER_FILE = "tokenizer.json"  # HF tokenizers' own format (read by transformers too)
HF_CONFIG_FILE = "tokenizer_config.json"  # transformers' settings: special tokens, what tokenizer(text) adds
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
# every file save_pretrained of a gpt2, char or bpe tokenizer writes (a data dir removes them all)
OWN_TOKENIZER_FILES = (TOKENIZER_FILE, HF_TOKENIZER_FILE, HF_CONFIG_FILE, "vocab.json", "merges.txt")
BYTE_FALLBACK = 256  # ids kept for the 256 UTF-8 bytes: a "char" tokenizer's fallback, a "bpe" one's alphabet


class TokenizerUnavailable(RuntimeError):
    pass


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


def eot_only(tokenizer: Tokenizer) -> None:
    """The special ids of a tokenizer whose one special token is <|endoftext|> (GPT-2's layout)."""
    tokenizer.bos_id = tokenizer.eos_id = tokenizer.unk_id = tokenizer.eot_id


def fast_config() -> dict:
    """transformers' settings for a tokenizer.json of ours: <|endoftext|> is bos, eos and unk,
    nothing is added around a text, decoding leaves spaces as they are."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT_TOKEN,
        "eos_token": EOT_TOKEN,
        "unk_token": EOT_TOKEN,
        "clean_up_tokenization_spaces": False,
    }


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def read_json(path: Path) -> dict:
    """A JSON object from a tokenizer file; a one-line ValueError if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (tokenizers' and sentencepiece's run long)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha1 of the files tokenizer.save writes: equal for the same tokenizer, whatever its object."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        h = hashlib.sha1()
        for path in sorted(Path(tmp).iterdir()):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
