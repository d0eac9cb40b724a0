"""The "hf" kind: a checkpoint's HF `tokenizers` tokenizer, encoding and decoding as transformers does.

GPT-2-architecture checkpoints on the hub ship a tokenizer.json, or GPT-2-style vocab.json +
merges.txt (distilgpt2 and fine-tunes), with transformers' settings files beside them. This reads
them the way transformers' AutoTokenizer does, so ids and text equal transformers' for the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import tokenizers

from minigpt.files import atomic_write
from minigpt.tokenizers.base import (
    EOT_TOKEN,
    HF_CONFIG_FILE,
    HF_TOKENIZER_FILE,
    Tokenizer,
    first_line,
    write_json,
)
from minigpt.tokenizers.hf_config import HFConfig

BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # a byte-fallback token of tokenizers / sentencepiece
# GPT-NeoX's class (Pythia, gpt-neox-20b and their fine-tunes): transformers builds its pipeline around the
# tokenizer.json's vocabulary, with these special tokens where the settings name none
GPT_NEOX_CLASSES = ("GPTNeoXTokenizer", "GPTNeoXTokenizerFast")
GPT_NEOX_DEFAULTS = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN, "pad_token": "<|padding|>"}


def clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization: the spaces a word-level tokenizer left before punctuation."""
    for spaced, joined in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
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
    - "tokenizer_class": "GPTNeoXTokenizer" (Pythia, gpt-neox-20b) rebuilds the pipeline around the
      tokenizer.json's BPE as transformers does (NFC, byte-level, the config's add_prefix_space, nothing
      added around a text) and names <|endoftext|> bos, eos and unk, <|padding|> pad, unless the config
      names others;
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
        says = "add_bos_token" in config.settings or "add_eos_token" in config.settings
        if HF_TOKENIZER_FILE not in files and says:
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
            raise ValueError(f"{path}: not a readable tokenizers file ({first_line(e)})") from None
        config = HFConfig(directory)
        if config.get("tokenizer_class") in GPT_NEOX_CLASSES:
            config = HFConfig(directory, GPT_NEOX_DEFAULTS)
            _as_gpt_neox(tok, config)
        return cls(tok, config, {HF_TOKENIZER_FILE: path})

    @classmethod
    def from_bpe_files(cls, directory: Path) -> HFTokenizer:
        """GPT-2's byte-level BPE from vocab.json + merges.txt, as transformers' GPT2Tokenizer builds it
        (bos, eos and unk default to <|endoftext|>, add_prefix_space to False)."""
        from tokenizers import decoders, models, pre_tokenizers, processors

        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        try:
            model = models.BPE.from_file(str(vocab), str(merges))
        except Exception as e:  # a malformed vocab.json or merges.txt: a bare Exception from tokenizers
            raise ValueError(f"{vocab} / {merges}: not a readable GPT-2 BPE vocabulary ({first_line(e)})") from None
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
        return clean_up_tokenization(text) if self.clean_up else text

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
            write_json(directory / HF_CONFIG_FILE, {"tokenizer_class": cls, **self.config.settings})
        self._write_description(directory)


def _as_gpt_neox(tok: tokenizers.Tokenizer, config: HFConfig) -> None:
    """The pipeline transformers' GPTNeoXTokenizer puts around a tokenizer.json's BPE: NFC, byte-level
    pieces with the settings' add_prefix_space and trim_offsets, and nothing added around a text
    (transformers 5 drops the settings' add_bos_token / add_eos_token beside a tokenizer.json)."""
    from tokenizers import decoders, normalizers, pre_tokenizers, processors

    trim_offsets = bool(config.get("trim_offsets", True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=bool(config.get("add_prefix_space", False)), trim_offsets=trim_offsets
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)


def from_tokenizer_json(directory: Path) -> HFTokenizer | None:
    """The tokenizer of a directory's tokenizer.json; None if it has none."""
    return HFTokenizer.from_directory(directory) if (directory / HF_TOKENIZER_FILE).is_file() else None


def from_vocab_and_merges(directory: Path) -> HFTokenizer | None:
    """The tokenizer of a directory's vocab.json + merges.txt; None unless it has both."""
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return HFTokenizer.from_bpe_files(directory)
    return None


def from_description(directory: Path, data: dict) -> HFTokenizer:
    """The tokenizer a minigpt_tokenizer.json of kind "hf" describes: the vocabulary files beside it."""
    if (directory / HF_TOKENIZER_FILE).is_file():
        return HFTokenizer.from_directory(directory)
    return HFTokenizer.from_bpe_files(directory)
