"""The "char" kind: one id per character of a training text, then 256 byte ids, then <|endoftext|>.

Small vocabularies for small runs. A character the training text lacks is written as the ids of
its UTF-8 bytes, so every text round-trips (Japanese and emoji included). Saved as a `tokenizers`
tokenizer.json with byte fallback, which transformers reads with the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers

from minigpt.tokenizers.base import (
    BYTE_FALLBACK,
    EOT_TOKEN,
    HF_CONFIG_FILE,
    HF_TOKENIZER_FILE,
    TOKENIZER_FILE,
    Tokenizer,
    eot_only,
    fast_config,
    write_json,
)


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
        eot_only(self)

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
        write_json(directory / HF_CONFIG_FILE, fast_config())
        self._write_description(directory, alphabet=self.alphabet)


def from_description(directory: Path, data: dict) -> CharTokenizer:
    """The tokenizer its minigpt_tokenizer.json describes: the alphabet is written there."""
    if not isinstance(data.get("alphabet"), str):
        raise ValueError(f"{directory / TOKENIZER_FILE}: a char tokenizer needs its alphabet as a string")
    return CharTokenizer(data["alphabet"])
