"""The "sentencepiece" kind: a checkpoint's sentencepiece model with transformers' T5Tokenizer settings.

rinna's Japanese GPT-2s and GPT-NeoX (japanese-gpt-neox-3.6b and its instruction-tuned versions) ship
their vocabulary this way: spiece.model, "</s>" as end of text, T5's extra ids, and do_lower_case
(true for the GPT-2s, false for the GPT-NeoX). Encoding goes through sentencepiece itself, as the model
was trained, with the special tokens and added ids laid out as transformers lays them out, so the
GPT-NeoX's model settings hold too: no dummy prefix before a text, spaces kept as they are, byte
fallback for characters outside the vocabulary.

rinna's instruction-tuned GPT-NeoX models write a newline in their prompts as the text "<NL>" (their
sentencepiece model turns a newline into a space). That is a convention of the prompt, not of the
tokenizer: "<NL>" is encoded as the characters it is, and nothing here translates newlines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece

from minigpt.files import atomic_write
from minigpt.tokenizers.base import HF_CONFIG_FILE, TOKENIZER_FILE, Tokenizer, first_line, write_json
from minigpt.tokenizers.hf_config import HFConfig

SPIECE_UNDERLINE = "▁"  # sentencepiece's visible space


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

    Decoding keeps that first space where the model has neither a dummy prefix nor extra-whitespace
    removal (rinna's GPT-NeoX), as sentencepiece does.

    transformers 5 loads its T5Tokenizer for this layout whatever use_fast says, rebuilt as a
    `tokenizers` Unigram. It gives these ids and this text wherever the vocabulary holds every
    character (of the lowercased text: it ignores do_lower_case), but it has no byte fallback and
    its unknown id is T5's 2 (rinna's "<s>"): a character outside the vocabulary becomes id 2, and
    byte pieces decode as the text "<0xNN>". Here such a character is what sentencepiece, which
    the model was trained with, makes of it (its bytes, or <unk>). It also always splits the text at
    whitespace and puts "▁" before it, which rinna's GPT-NeoX model was not trained with: for that model
    the ids here are sentencepiece's, which are those of transformers 4's T5Tokenizer with use_fast=False
    (what its model card asks for), not transformers 5's. (That T5Tokenizer's decode also strips the
    text's ends and puts a space before a special token that follows text; this one keeps the text's spaces.)
    """

    kind = "sentencepiece"

    def __init__(self, model_file: Path, config: HFConfig):
        self.model_file = model_file
        self.config = config
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(model_file))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{model_file}: not a readable sentencepiece model ({first_line(e)})") from None
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
        self.drops_leading_space = self._drops_leading_space()
        named = {key: self._piece_id(text) for key, text in config.special_tokens().items()}
        self.bos_id, self.eos_id = named.get("bos_token"), named.get("eos_token")
        self.pad_id, self.unk_id = named.get("pad_token"), named.get("unk_token")
        self.eot_id = self.eos_id
        specials = {text: self._piece_id(text) for text in [*config.all_special(), *self.added]}
        self.special_tokens = {text: i for text, i in specials.items() if i is not None}
        self.special_ids = set(self.special_tokens.values())
        self.special_ids |= {
            i for i in range(self.sp.get_piece_size()) if self.sp.is_control(i) or self.sp.is_unknown(i)
        }
        # longest first, so that a special token that begins another never splits it
        self.special_pattern = re.compile("|".join(map(re.escape, sorted(self.special_tokens, key=len, reverse=True))))
        add_bos, add_eos = config.get("add_bos_token", False), config.get("add_eos_token", t5)
        self.special_prefix = (self.bos_id,) if add_bos and self.bos_id is not None else ()
        self.special_suffix = (self.eos_id,) if add_eos and self.eos_id is not None else ()

    def _drops_leading_space(self) -> bool:
        """Whether decoding drops the space of a text's first piece: sentencepiece does where its model adds
        a dummy prefix or removes extra whitespace (GPT-2 rinna's), not where it does neither (rinna's
        GPT-NeoX). Asked of sentencepiece itself, on a piece that starts with "▁"."""
        first = self.sp.piece_to_id(SPIECE_UNDERLINE)
        candidates = [first] if self.sp.id_to_piece(first) == SPIECE_UNDERLINE else []
        candidates += range(self.sp.get_piece_size())
        for i in candidates:
            piece = self.sp.id_to_piece(i)
            if piece.startswith(SPIECE_UNDERLINE) and not (self.sp.is_control(i) or self.sp.is_unknown(i)):
                return not self.sp.decode([i]).startswith(" ")
        return True

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
                if not pieces and self.drops_leading_space and piece.startswith(SPIECE_UNDERLINE):
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
            write_json(
                directory / HF_CONFIG_FILE, {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, **self.config.settings}
            )
        self._write_description(directory, model_file=self.model_file.name)


def model_file_in(directory: Path) -> Path | None:
    """spiece.model (T5's name), else tokenizer.model, else the one *.model file; None if there is none."""
    for name in ("spiece.model", "tokenizer.model"):
        if (directory / name).is_file():
            return directory / name
    models = sorted(path.name for path in directory.glob("*.model"))
    if len(models) > 1:
        raise ValueError(f"{directory}: several sentencepiece models ({', '.join(models)}); keep the tokenizer's one")
    return directory / models[0] if models else None


def from_model_file(directory: Path) -> SentencePieceTokenizer | None:
    """The tokenizer of a directory's sentencepiece model (see model_file_in); None if it has none."""
    model_file = model_file_in(directory)
    return None if model_file is None else SentencePieceTokenizer(model_file, HFConfig(directory))


def from_description(directory: Path, data: dict) -> SentencePieceTokenizer:
    """The tokenizer a minigpt_tokenizer.json of kind "sentencepiece" describes: it names the model file."""
    name = data.get("model_file")
    if not isinstance(name, str) or Path(name).name != name or not (directory / name).is_file():
        raise ValueError(
            f"{directory / TOKENIZER_FILE}: a sentencepiece tokenizer needs its model_file, a file in {directory}"
        )
    return SentencePieceTokenizer(directory / name, HFConfig(directory))
