"""The "abeja" kind: ABEJA's GPT-NeoX-Japanese tokenizer (vocab.txt + emoji.json), read by minigpt itself.

abeja/gpt-neox-japanese-2.7b tokenizes with a Japanese sub-word encoder that no tokenizer library
implements: a vocabulary of short pieces matched greedily, never more than three characters at a
time outside a tag, with the smallest id winning among the pieces that fit. This module follows the
behaviour transformers' GPTNeoXJapaneseTokenizer documents, so ids equal transformers' ids:

- vocab.txt: one id per line; a line with commas lists several spellings of that id ("慶応,慶應"),
  and decoding writes the first. A line that is only "," is the comma itself when it is the last
  line of the file with no newline after it; anywhere else it is split like the others (into two
  empty spellings), as the model's own encoder reads the file.
- Before matching: " " and U+3000 become <SP>, line breaks (\\r\\n, \\n, \\r) <BR>, tabs <TAB>, the
  dashes U+2014 and U+2212 "ー"; then every emoji.json "emoji" key becomes its tag (<|emoji1|>, ...),
  in the file's order. With do_clean_text, URLs, e-mail addresses, phone numbers, Japanese dates and
  prices become <URL>, <EMAIL>, <TEL>, <DATE>, <PRICE>, and box-drawing or block characters one <BLOCK>.
- A character no piece covers is <KIGOU> (U+00A1-U+00BF, U+01C0-U+01C3, U+02B9-U+02FF, U+0300-U+0362),
  <U2000U2BFF> (U+2000-U+2BFF) or its UTF-8 bytes as <|byte0|>..<|byte255|>.

Decoding turns tags back into text (<SP> a space, <BR> a newline, an emoji tag emoji.json's
"emoji_inv" character, <BLOCK> "▀", <KIGOU> "ǀ", <U2000U2BFF> "‖") and strips the ends of the result,
as transformers does. One difference: a run of byte pieces decodes as one UTF-8 string (so a character
outside the vocabulary comes back), where transformers decodes each byte alone (U+FFFD for each).
Special tokens missing from vocab.txt get the ids after its last line; transformers counts distinct
lines instead, which differs only for a file that repeats a line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from minigpt.files import atomic_write
from minigpt.tokenizers.base import HF_CONFIG_FILE, TOKENIZER_FILE, Tokenizer, write_json
from minigpt.tokenizers.hf import clean_up_tokenization
from minigpt.tokenizers.hf_config import HFConfig

VOCAB_FILE = "vocab.txt"
EMOJI_FILE = "emoji.json"
TOKENIZER_CLASS = "GPTNeoXJapaneseTokenizer"
# transformers' defaults for this tokenizer's special tokens
DEFAULT_SPECIAL = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}

BYTE_PIECE = re.compile(r"<\|byte(\d{1,3})\|>")
EMOJI_TAG = re.compile(r"<\|emoji.*\|>")
TAG_TEXT = {"<SP>": " ", "<BR>": "\n", "<TAB>": "\t", "<BLOCK>": "▀", "<KIGOU>": "ǀ", "<U2000U2BFF>": "‖"}
# (text, tag) replaced before matching, in this order
SPELLED_AS = (
    (" ", "<SP>"),
    ("\u3000", "<SP>"),
    ("\r\n", "<BR>"),
    ("\n", "<BR>"),
    ("\r", "<BR>"),
    ("\t", "<TAB>"),
    ("\u2014", "ー"),
    ("\u2212", "ー"),
)
# the characters a piece-less character is written as a tag for: (first, last code point, tag)
SYMBOL_RANGES = (
    (0x00A1, 0x00BF, "<KIGOU>"),
    (0x01C0, 0x01C3, "<KIGOU>"),
    (0x02B9, 0x02FF, "<KIGOU>"),
    (0x0300, 0x0362, "<KIGOU>"),
    (0x2000, 0x2BFF, "<U2000U2BFF>"),
)
LONGEST_PLAIN_PIECE = 3  # outside a tag ("<..."), matching looks at most this many characters ahead


def _without_giving_back(name: str, pattern: str) -> str:
    """pattern repeated as often as it matches, never giving any back (a possessive `(?:pattern)*+`,
    which Python's re has only from 3.11): a lookahead captures the longest run, a backreference takes it."""
    return rf"(?=(?P<{name}>(?:{pattern})*))(?P={name})"


WEEKDAY = r"\((?:日|月|火|水|木|金|土)\)|[㈰㈪㈫㈬㈭㈮㈯]"
TIME_TAIL = rf"(?:\d{{1,2}}|:|\d{{1,2}}時|\d{{1,2}}分|{WEEKDAY})*"
MONTH = r"(?:0?[1-9]|1[0-2])"
DAY = r"(?:0?[1-9]|[12][0-9]|3[01])"
# do_clean_text: (pattern, tag), applied in this order (the text has <SP>/<BR> tags in place of spaces by then)
CLEAN = (
    (re.compile(r"(?:https?|ftp)://[-_.!~*'()a-zA-Z0-9;/?:@&=+$,%#]+"), "<URL>"),
    (re.compile(r"[A-Za-z0-9._+]*@[-_0-9A-Za-z]+(?:\.[A-Za-z]+)*"), "<EMAIL>"),
    (re.compile(r"\(?[0-9]{2,4}[)\-(]?[0-9]{2,4}[)\-]?[0-9]{3,4}"), "<TEL>"),
    # 2024年3月14日, 2024/3/14 12:30, 3月14日(木): an optional year, a month, days, then times and weekdays
    (re.compile(rf"(?:[12]\d{{3}}[/\-年])*{MONTH}[/\-月](?:{DAY}日?)*{TIME_TAIL}"), "<DATE>"),
    # 令和6年3月14日: an era, a year, a month and a day
    (re.compile(rf"(?:明治|大正|昭和|平成|令和|㍾|㍽|㍼|㍻|\u32ff)\d{{1,2}}年{MONTH}月{DAY}日{TIME_TAIL}"), "<DATE>"),
    # 1,000円, 3億5000万円(税込), 10ドル+tax: digits with their 億/万/千 and a currency, then tax notes
    (
        re.compile(
            _without_giving_back("oku", r"\d,\d{3}|[\d億]")
            + _without_giving_back("man", r"\d,\d{3}|[\d万]")
            + _without_giving_back("sen", r"\d,\d{3}|[\d千]")
            + r"(?:千円|万円|千万円|円|千ドル|万ドル|千万ドル|ドル|千ユーロ|万ユーロ|千万ユーロ|ユーロ)+"
            + r"(?:\(税込\)|\(税抜\)|\+tax)*"
        ),
        "<PRICE>",
    ),
)
BOX_DRAWING = "".join(map(chr, range(0x2500, 0x2580)))  # ─ ━ │ ... ╿
BLOCKS = "".join(map(chr, range(0x2580, 0x25A0)))  # ▀ ▁ ... ▟
TO_BLOCK = str.maketrans(dict.fromkeys(BOX_DRAWING + BLOCKS, "<BLOCK>"))
RUN_OF_BLOCKS = re.compile(r"(?:<BLOCK>)+")


def read_vocab(path: Path) -> list[list[str]]:
    """The spellings of each id in a vocab.txt (see the module's docstring); a one-line ValueError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")  # universal newlines, as Python's open() reads it
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable vocabulary ({e})") from None
    lines = text.split("\n")
    last = lines.pop()  # what follows the last newline: the last line unless the file ends with one
    spellings = [line.split(",") if "," in line else [line] for line in lines]
    if last:
        spellings.append([last] if last == "," or "," not in last else last.split(","))
    if not spellings:
        raise ValueError(f"{path}: an empty vocabulary")
    return spellings


def read_emoji(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """emoji.json's ("emoji": character -> tag, "emoji_inv": tag -> character); a one-line ValueError if malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    tables = []
    for key in ("emoji", "emoji_inv"):
        table = data.get(key) if isinstance(data, dict) else None
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise ValueError(f'{path}: expected an object with "emoji" and "emoji_inv" tables of strings')
        tables.append(table)
    return tables[0], tables[1]


class AbejaTokenizer(Tokenizer):
    """ABEJA's GPT-NeoX-Japanese tokenizer from vocab.txt + emoji.json and transformers' settings
    (special tokens, do_clean_text, clean_up_tokenization_spaces); see the module's docstring.

    tokenizer(text) adds nothing around a text. Special tokens the vocabulary lacks get the ids after
    its lines, as transformers adds them. With allow_special, a special token written in the text
    ("<|endoftext|>") is its id; without it, that spelling is never matched whole, so it stays text.
    """

    kind = "abeja"

    def __init__(self, vocab_file: Path, emoji_file: Path, config: HFConfig):
        self.vocab_file, self.emoji_file, self.config = vocab_file, emoji_file, config
        self.spellings = read_vocab(vocab_file)
        self.emoji, self.emoji_inv = read_emoji(emoji_file)
        self.ids = {text: i for i, line in enumerate(self.spellings) for text in line}  # a later line wins
        for tag in dict.fromkeys(self.emoji.values()):
            if tag not in self.ids:
                raise ValueError(
                    f"{emoji_file}: its tag {tag} is not in {vocab_file.name}; the two files do not belong together"
                )
        self.longest = max(len(text) for text in self.ids)
        # the keys that can occur in a text whose characters are `chars`: a key's first character must be
        # there or come from a tag put in by an earlier key
        self.tag_chars = frozenset("".join(self.emoji.values()))
        self.do_clean_text = bool(config.get("do_clean_text", False))
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False))

        # special tokens: the vocabulary's own id when one line is exactly that spelling, else a new id
        self.added: dict[str, int] = {}
        whole_lines = {",".join(line): i for i, line in enumerate(self.spellings)}
        self.special_tokens: dict[str, int] = {}
        for text in config.all_special():
            if text not in whole_lines and text not in self.added:
                self.added[text] = len(self.spellings) + len(self.added)
            self.special_tokens[text] = self.added.get(text, whole_lines.get(text))
        self.added_text = {i: text for text, i in self.added.items()}
        self.vocab_size = len(self.spellings) + len(self.added)
        named = {key: self.special_tokens[text] for key, text in config.special_tokens().items()}
        self.bos_id, self.eos_id = named.get("bos_token"), named.get("eos_token")
        self.pad_id, self.unk_id = named.get("pad_token"), named.get("unk_token")
        self.eot_id = self.eos_id
        self.special_ids = set(self.special_tokens.values())
        self.special_pattern = re.compile("|".join(map(re.escape, sorted(self.special_tokens, key=len, reverse=True))))
        self.byte_ids = frozenset(i for i, line in enumerate(self.spellings) if self._byte(line[0]) is not None)
        self.fallback: dict[str, int] = {}  # <KIGOU>, <U2000U2BFF> and byte pieces: their id, else unk's
        for piece in [f"<|byte{b}|>" for b in range(256)] + ["<KIGOU>", "<U2000U2BFF>"]:
            i = self.ids.get(piece, self.ids.get(config.special_tokens().get("unk_token")))
            if i is None:
                raise ValueError(f"{vocab_file}: it has no {piece} and no unknown token to stand for it")
            self.fallback[piece] = i

    @staticmethod
    def _byte(text: str) -> int | None:
        match = BYTE_PIECE.fullmatch(text)
        return int(match.group(1)) if match and int(match.group(1)) < 256 else None

    def _prepare(self, text: str) -> str:
        """The text as the pieces spell it: tags for spaces, line breaks, tabs, emoji (and cleaned)."""
        for plain, tag in SPELLED_AS:
            text = text.replace(plain, tag)
        chars = set(text) | self.tag_chars
        for key, tag in self.emoji.items():
            if key and key[0] in chars and key in text:
                text = text.replace(key, tag)
        if self.do_clean_text:
            for pattern, tag in CLEAN:
                text = pattern.sub(tag, text)
            text = RUN_OF_BLOCKS.sub("<BLOCK>", text.translate(TO_BLOCK))
        return text

    def _pieces(self, text: str, allow_special: bool) -> list[int]:
        """Greedy matching: at each position, of the pieces that fit (a tag of 3+ characters wins outright,
        the longest one; otherwise any piece of up to 3 characters) the one with the smallest id."""
        text = self._prepare(text)
        never = () if allow_special else self.special_tokens  # special spellings stay text
        out: list[int] = []
        at = 0
        while at < len(text):
            reach = self.longest if text[at] == "<" else LONGEST_PLAIN_PIECE
            best: int | None = None
            for end in range(min(len(text), at + reach), at, -1):
                piece = text[at:end]
                i = self.ids.get(piece)
                if i is None or piece in never:
                    continue
                if piece[0] == "<" and len(piece) > 2:
                    best, best_end = i, end
                    break
                if best is None or i < best:
                    best, best_end = i, end
            if best is not None:
                out.append(best)
                at = best_end
                continue
            out += self._unmatched(text[at])
            at += 1
        return out

    def _unmatched(self, char: str) -> list[int]:
        code = ord(char)
        for first, last, tag in SYMBOL_RANGES:
            if first <= code <= last:
                return [self.fallback[tag]]
        return [self.fallback[f"<|byte{b}|>"] for b in char.encode("utf-8")]

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        if not allow_special or not self.special_tokens:
            return self._pieces(text, allow_special)
        out: list[int] = []
        at = 0
        for match in self.special_pattern.finditer(text):
            out += self._pieces(text[at : match.start()], allow_special)
            out.append(self.special_tokens[match.group()])
            at = match.end()
        return out + self._pieces(text[at:], allow_special)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        words: list[str] = []
        run = bytearray()  # consecutive byte pieces, decoded together
        for i in map(int, ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside this tokenizer's {self.vocab_size} ids")
            if skip_special_tokens and i in self.special_ids:
                continue
            word = self.added_text.get(i) or self.spellings[i][0]
            byte = None if i in self.added_text else self._byte(word)
            if byte is not None:
                run.append(byte)
                continue
            if run:
                words.append(run.decode("utf-8", errors="replace"))
                run.clear()
            if i not in self.added_text and EMOJI_TAG.fullmatch(word):
                word = self.emoji_inv.get(word, word)
            words.append(TAG_TEXT.get(word, word))
        if run:
            words.append(run.decode("utf-8", errors="replace"))
        text = "".join(words).strip()
        return clean_up_tokenization(text) if self.clean_up else text

    def save_pretrained(self, directory: str | Path) -> None:
        """vocab.txt, emoji.json and transformers' settings, copied, and our description."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for source, name in ((self.vocab_file, VOCAB_FILE), (self.emoji_file, EMOJI_FILE)):
            if source.resolve() != (directory / name).resolve():
                atomic_write(directory / name, source.read_bytes())
        self.config.copy_to(directory)
        if HF_CONFIG_FILE not in self.config.files:
            write_json(directory / HF_CONFIG_FILE, {"tokenizer_class": TOKENIZER_CLASS, **self.config.settings})
        self._write_description(directory)


def _load(directory: Path) -> AbejaTokenizer:
    vocab, emoji = directory / VOCAB_FILE, directory / EMOJI_FILE
    for path, other in ((vocab, emoji), (emoji, vocab)):
        if not path.is_file():
            raise ValueError(
                f"{directory}: {other.name} without {path.name}; an abeja tokenizer needs both "
                f"{VOCAB_FILE} and {EMOJI_FILE}"
            )
    return AbejaTokenizer(vocab, emoji, HFConfig(directory, DEFAULT_SPECIAL))


def from_vocab_and_emoji(directory: Path) -> AbejaTokenizer | None:
    """The tokenizer of a directory's vocab.txt + emoji.json; None unless it has one of them and (for a
    vocab.txt alone, which other tokenizers use too) a tokenizer_config.json naming GPTNeoXJapaneseTokenizer.
    A ValueError (one line) when only one of the two files is there."""
    if (directory / EMOJI_FILE).is_file():
        return _load(directory)
    if (directory / VOCAB_FILE).is_file() and (directory / HF_CONFIG_FILE).is_file():
        named = str(HFConfig(directory).get("tokenizer_class", ""))
        if named.removesuffix("Fast") == TOKENIZER_CLASS:
            return _load(directory)
    return None


def from_description(directory: Path, data: dict) -> AbejaTokenizer:
    """The tokenizer a minigpt_tokenizer.json of kind "abeja" describes: the files beside it."""
    if not (directory / VOCAB_FILE).is_file() and not (directory / EMOJI_FILE).is_file():
        raise ValueError(
            f"{directory / TOKENIZER_FILE}: an abeja tokenizer needs {VOCAB_FILE} and {EMOJI_FILE} beside it"
        )
    return _load(directory)
