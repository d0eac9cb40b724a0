"""The table of tokenizer kinds drives choosing, training, loading and the help texts.

Every trainable kind in KINDS round-trips through save_pretrained and load_tokenizer; every entry
shows up in the help strings and error messages; and a kind added to the table (a made-up one
here) is parsed, trained, saved, found in a directory and loaded back with no other change.
"""

import re
from pathlib import Path

import pytest

from minigpt.tokenizers import (
    KINDS,
    LOOKED_FOR,
    TOKENIZER_FILE,
    TOKENIZER_KINDS,
    CharTokenizer,
    TokenizerKind,
    kinds_help,
    load_tokenizer,
    parse_tokenizer_kind,
    train_tokenizer,
)
from minigpt.tokenizers import kinds as kinds_module
from minigpt.tokenizers.kinds import Files

TEXTS = ["To be, or not to be: that is the question.\n" * 10, "吾輩は猫である。名前はまだ無い。\n" * 5]
PROBES = ["to be or not", "名前は猫", "unseen 😀 Ünïcödé", "a<|endoftext|>b", ""]
TRAINABLE = [kind for kind in KINDS.values() if kind.trainable]


def spec_of(kind: TokenizerKind) -> str:
    """A --tokenizer value for the kind: its name, or name:300 for a sized kind."""
    return f"{kind.name}:300" if kind.parse_size is not None else kind.name


def test_the_table_holds_the_kinds():
    assert list(KINDS) == ["gpt2", "char", "bpe", "hf", "sentencepiece", "abeja"]
    assert [kind.spelling for kind in TRAINABLE] == ["gpt2", "char", "bpe:N"]
    assert all(name == kind.name and kind.description for name, kind in KINDS.items())


@pytest.mark.parametrize("kind", TRAINABLE, ids=lambda kind: kind.name)
def test_every_trainable_kind_round_trips(kind, tmp_path):
    spec = spec_of(kind)
    assert parse_tokenizer_kind(spec)[0] == kind.name
    trained = train_tokenizer(spec, TEXTS)
    assert trained.kind.partition(":")[0] == kind.name
    trained.save_pretrained(tmp_path)
    assert (tmp_path / TOKENIZER_FILE).is_file()
    loaded = load_tokenizer(tmp_path)
    assert (type(loaded), loaded.kind, loaded.vocab_size, loaded.eot_id) == (
        type(trained),
        trained.kind,
        trained.vocab_size,
        trained.eot_id,
    )
    for text in PROBES:
        assert loaded.encode(text) == trained.encode(text)
        assert loaded.encode(text, allow_special=True) == trained.encode(text, allow_special=True)
        assert loaded.decode(trained.encode(text)) == text


def test_help_lists_every_kind():
    short, full = kinds_help(), kinds_help(load_only=True)
    assert full.startswith(short)
    for kind in KINDS.values():
        assert f"{kind.spelling} ({kind.description})" in full
        assert (f"{kind.spelling} ({kind.description})" in short) == kind.trainable
        assert (re.search(rf"\b{re.escape(kind.spelling)}\b", TOKENIZER_KINDS) is not None) == kind.trainable
    assert TOKENIZER_KINDS == "gpt2, char or bpe:N"


def test_looked_for_is_every_kinds_files_in_load_order():
    assert LOOKED_FOR == (
        "minigpt_tokenizer.json, tokenizer.json, spiece.model (or another *.model), vocab.json + merges.txt, "
        "vocab.txt + emoji.json"
    )
    files = [files for kind in KINDS.values() for files in kind.files]
    for found in files:
        assert (found.names in LOOKED_FOR) != found.fallback
    assert len({found.order for found in files}) == len(files)  # the order is never a tie


def test_errors_name_every_kind(tmp_path):
    with pytest.raises(ValueError) as e:
        parse_tokenizer_kind("word")
    assert str(e.value) == "unknown tokenizer 'word'; choose gpt2, char or bpe:N"
    (tmp_path / TOKENIZER_FILE).write_text('{"kind": "word"}')
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value).endswith(
        "unknown tokenizer kind 'word'; expected gpt2, char or bpe:N, hf, sentencepiece or abeja"
    )
    (tmp_path / TOKENIZER_FILE).unlink()
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: no tokenizer found (looked for {LOOKED_FOR}, or a config.json with vocab_size 50257)"
    )


@pytest.mark.parametrize("kind", [kind for kind in KINDS.values() if not kind.trainable], ids=lambda kind: kind.name)
def test_a_load_only_kind_is_not_a_tokenizer_value(kind):
    with pytest.raises(ValueError, match="unknown tokenizer"):
        parse_tokenizer_kind(kind.name)


# ----------------------------------------------------------------------------------------------
# A new kind is one table entry


class ShoutTokenizer(CharTokenizer):
    """A made-up kind: a char tokenizer that also writes its alphabet to shout.txt."""

    kind = "shout"

    def save_pretrained(self, directory):
        super().save_pretrained(directory)
        (Path(directory) / "shout.txt").write_text(self.alphabet, encoding="utf-8")


def shout_files(directory: Path):
    path = directory / "shout.txt"
    return ShoutTokenizer(path.read_text(encoding="utf-8")) if path.is_file() else None


SHOUT = TokenizerKind(
    name="shout",
    description="a made-up kind for this test",
    train=lambda texts, size: ShoutTokenizer.train(texts),
    from_description=lambda directory, data: ShoutTokenizer(data["alphabet"]),
    files=(Files(0, "shout.txt", shout_files),),  # looked for before every other kind's files
)


@pytest.fixture
def with_shout(monkeypatch):
    monkeypatch.setitem(KINDS, "shout", SHOUT)


def test_a_kind_added_to_the_table_is_parsed_trained_and_loaded(with_shout, tmp_path):
    assert parse_tokenizer_kind("shout") == ("shout", None)
    assert kinds_module.tokenizer_kinds() == "gpt2, char, bpe:N or shout"
    assert "shout (a made-up kind for this test)" in kinds_help()
    trained = train_tokenizer("shout", TEXTS)
    assert isinstance(trained, ShoutTokenizer)
    trained.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)  # through minigpt_tokenizer.json's "kind"
    assert isinstance(loaded, ShoutTokenizer) and loaded.encode(PROBES[2]) == trained.encode(PROBES[2])
    (tmp_path / TOKENIZER_FILE).unlink()  # then by its own file, ahead of the tokenizer.json beside it
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ShoutTokenizer) and loaded.encode(PROBES[2]) == trained.encode(PROBES[2])
    assert kinds_module.looked_for().startswith("minigpt_tokenizer.json, shout.txt, tokenizer.json")
    with pytest.raises(ValueError, match="choose gpt2, char, bpe:N or shout"):
        parse_tokenizer_kind("shout:5")
