"""transformers' tokenizer settings files, read as transformers reads them.

Beside a checkpoint's vocabulary (tokenizer.json, vocab.json + merges.txt or spiece.model) lie
tokenizer_config.json, special_tokens_map.json and added_tokens.json: the special tokens, what
tokenizer(text) adds, how decoding cleans up. The "hf" and "sentencepiece" kinds both need them.
"""

from __future__ import annotations

from pathlib import Path

from minigpt.files import atomic_write
from minigpt.tokenizers.base import ADDED_TOKENS_FILE, HF_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, read_json

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


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
        self.files = [
            name
            for name in (HF_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, ADDED_TOKENS_FILE)
            if (directory / name).is_file()
        ]
        if SPECIAL_TOKENS_MAP_FILE in self.files:
            self.settings.update(read_json(directory / SPECIAL_TOKENS_MAP_FILE))
        if HF_CONFIG_FILE in self.files:
            self.settings.update(read_json(directory / HF_CONFIG_FILE))
        self.added = read_json(directory / ADDED_TOKENS_FILE) if ADDED_TOKENS_FILE in self.files else {}

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
        tokens += [
            t["content"] for t in decoder.values() if isinstance(t, dict) and t.get("special") and "content" in t
        ]
        return list(dict.fromkeys(tokens))

    def copy_to(self, directory: Path) -> None:
        for name in self.files:
            if (self.directory / name).resolve() != (directory / name).resolve():
                atomic_write(directory / name, (self.directory / name).read_bytes())
