"""The "bpe:N" kind: a byte-level BPE of up to N tokens trained on a text with HF `tokenizers`.

A vocabulary fitted to the data at hand, for runs on text unlike GPT-2's or with a smaller
vocabulary. Its alphabet is the 256 bytes, so no text is unknown. Saved as a tokenizer.json that
transformers reads with the same ids.
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
    Tokenizer,
    eot_only,
    fast_config,
    first_line,
    write_json,
)


class BPETokenizer(Tokenizer):
    """A byte-level BPE in HF `tokenizers` (what `bpe:N` trains)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = tokenizer.token_to_id(EOT_TOKEN)
        self.kind = f"bpe:{self.vocab_size}"
        eot_only(self)

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
        write_json(directory / HF_CONFIG_FILE, fast_config())
        self._write_description(directory)


def parse_size(spec: str) -> int:
    """N from a "bpe:N" --tokenizer value; a ValueError unless N is above the 256 byte tokens."""
    size = spec.partition(":")[2]
    if not size.isdigit() or int(size) <= BYTE_FALLBACK:
        raise ValueError(
            f"tokenizer bpe:N needs a vocabulary size N above {BYTE_FALLBACK} (its byte alphabet), got {spec!r}"
        )
    return int(size)


def from_description(directory: Path, data: dict) -> BPETokenizer:
    """The tokenizer a minigpt_tokenizer.json of kind "bpe:N" describes: its tokenizer.json beside it."""
    hf_file = directory / HF_TOKENIZER_FILE
    try:
        return BPETokenizer(tokenizers.Tokenizer.from_file(str(hf_file)))
    except Exception as e:  # tokenizers reports a missing or malformed file as a bare Exception
        raise ValueError(f"{hf_file}: not a readable tokenizers file ({first_line(e)})") from None
