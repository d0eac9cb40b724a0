"""The tokenizers of the GPT-NeoX family's checkpoints, against transformers.

Every directory is written here, offline, in the layout its model ships:

- Pythia / gpt-neox-20b: a byte-level BPE tokenizer.json (NFC, <|endoftext|> and <|padding|> as
  added tokens, runs of spaces as added tokens) with "tokenizer_class": "GPTNeoXTokenizer", read by
  the "hf" kind and compared with transformers' GPTNeoXTokenizer;
- rinna/japanese-gpt-neox-3.6b: a sentencepiece model without sentencepiece's dummy prefix and with
  its whitespace kept (what rinna's model card says), with rinna's T5Tokenizer settings
  (do_lower_case false), read by the "sentencepiece" kind and compared with sentencepiece itself;
- abeja/gpt-neox-japanese-2.7b: vocab.txt + emoji.json, read by minigpt's own "abeja" kind and
  compared with transformers' GPTNeoXJapaneseTokenizer.

Then the bad inputs of these layouts, and check_vocab with a model vocabulary padded past the tokenizer's.
"""

import functools
import io
import json
import random
from pathlib import Path

import pytest

from minigpt.tokenizers import TextStream, load_tokenizer
from minigpt.tokenizers.lookup import check_vocab, tokenizer_for

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

TEXTS = [
    "吾輩は猫である。名前はまだ無い。",
    "The quick brown fox jumps over the lazy dog.",
    "emoji 😀😃👍🏽🇯🇵 and a crab 🦀",
    "日本語とEnglishと😀が混ざった文。",
    "  leading\tand\r\ntrailing  \n\nlines\n",
    "全角　スペース—ダッシュ−マイナス",
    "未知の漢字、鬱と薔薇",
    "Ａｂｃ and e\u0301 (NFC joins them)",
    "",
]
SPECIAL_TEXTS = ["a<|endoftext|>b<|padding|>c", "<|endoftext|>吾輩<|endoftext|>"]


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@functools.cache
def auto(directory: Path):
    """transformers' tokenizer for a directory (each directory here is written once and never changed)."""
    return transformers.AutoTokenizer.from_pretrained(str(directory))


# ----------------------------------------------------------------------------------------------
# Pythia / gpt-neox-20b: tokenizer.json with tokenizer_class GPTNeoXTokenizer

NEOX_CORPUS = [*TEXTS[:5], "    def f(x):\n        return x  # indented code", "東京は晴れ Tokyo is sunny?"] * 5
NEOX_CONFIG = {  # EleutherAI/pythia's tokenizer_config.json (pad_token is the class's default, <|padding|>)
    "tokenizer_class": "GPTNeoXTokenizer",
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "add_prefix_space": False,
}


def neox_tokenizer(directory: Path, config: dict | None = None, template: bool = False) -> Path:
    """A byte-level BPE in gpt-neox-20b's layout: <|endoftext|> = 0 and <|padding|> = 1 (special),
    then the learned pieces, then runs of spaces as (normalized, not special) added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=450,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(NEOX_CORPUS, trainer=trainer)
    tok.add_tokens([AddedToken(" " * n, normalized=True) for n in (24, 8, 4, 2)])
    if template:  # a post-processor that GPTNeoXTokenizer replaces by its own (which adds nothing)
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    tok.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", {**NEOX_CONFIG, **(config or {})})
    write_json(directory / "config.json", {"model_type": "gpt_neox", "vocab_size": 512})
    return directory


NEOX_VARIANTS = {
    "pythia": {},
    "prefix-space": {"config": {"add_prefix_space": True}},  # the settings' word wins over tokenizer.json's
    "add-bos-eos": {"config": {"add_bos_token": True, "add_eos_token": True}},  # transformers drops both
    "template": {"template": True},
    "clean-up": {"config": {"clean_up_tokenization_spaces": True}},  # skipped for a BPE, as transformers does
    "pad-named": {"config": {"pad_token": "<|endoftext|>"}},
}


@pytest.fixture(scope="module", params=sorted(NEOX_VARIANTS))
def neox_dir(request, tmp_path_factory) -> Path:
    return neox_tokenizer(tmp_path_factory.mktemp(request.param), **NEOX_VARIANTS[request.param])


@pytest.fixture(scope="module")
def pythia_dir(tmp_path_factory) -> Path:
    return neox_tokenizer(tmp_path_factory.mktemp("pythia-only"))


@pytest.mark.parametrize(
    "text", TEXTS + SPECIAL_TEXTS + ["    def f(x):\n        return x", "it 's a dog , is n't it ?"]
)
def test_neox_tokenizer_equals_gpt_neox_tokenizer(neox_dir, text):
    ours, hf = load_tokenizer(neox_dir), auto(neox_dir)
    assert ours.kind == "hf" and type(hf).__name__ == "GPTNeoXTokenizer"
    ids = ours.encode(text, allow_special=True, add_special_tokens=True)
    assert ids == hf(text)["input_ids"] == hf.encode(text) == ours.encode(text, allow_special=True)
    assert ours.decode(ids) == hf.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    if "<|" not in text and not neox_dir.name.startswith("prefix-space"):
        assert ours.decode(ids) == text.replace("e\u0301", "é")  # byte-level: every text comes back (NFC'd)


def test_neox_special_ids_equal_gpt_neox_tokenizer(neox_dir):
    ours, hf = load_tokenizer(neox_dir), auto(neox_dir)
    assert ours.vocab_size == len(hf)
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
        hf.unk_token_id,
    )
    assert ours.eot_id == 0 and ours.special_prefix == ours.special_suffix == ()
    assert ours.encode("a<|endoftext|>b") != ours.encode("a<|endoftext|>b", allow_special=True)  # plain text stays text


def test_neox_partial_characters_decode_as_transformers_does(pythia_dir):
    ours, hf = load_tokenizer(pythia_dir), auto(pythia_dir)
    ids = ours.encode("猫😀👍🏽")
    for end in range(len(ids) + 1):  # every prefix, most of them ending inside a character
        assert ours.decode(ids[:end]) == hf.decode(ids[:end])
    stream = TextStream(ours)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "猫😀👍🏽" and not any("\ufffd" in p for p in pieces)


def test_pythia_saves_what_transformers_reads(tmp_path):
    (tmp_path / "source").mkdir()
    source = neox_tokenizer(tmp_path / "source")
    ours = load_tokenizer(source)
    ours.save_pretrained(tmp_path / "saved")
    hf, loaded = auto(tmp_path / "saved"), load_tokenizer(tmp_path / "saved")
    assert type(hf).__name__ == "GPTNeoXTokenizer" and loaded.vocab_size == ours.vocab_size == len(hf)
    for text in TEXTS + SPECIAL_TEXTS:
        ids = ours.encode(text, allow_special=True, add_special_tokens=True)
        assert loaded.encode(text, allow_special=True, add_special_tokens=True) == ids == hf(text)["input_ids"]


# ----------------------------------------------------------------------------------------------
# rinna/japanese-gpt-neox-3.6b: spiece.model without a dummy prefix, T5Tokenizer settings

RINNA_NEOX_CONFIG = {  # rinna/japanese-gpt-neox-3.6b's tokenizer_config.json
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
    "do_lower_case": False,
    "tokenizer_class": "T5Tokenizer",
}
RINNA_TEXTS = [
    *TEXTS,
    "ユーザー: 日本のおすすめの観光地を教えてください。<NL>システム: ",
    " a leading space, and  two  spaces ",
    "猫[CLS]犬[SEP]the dog</s>end",
]


def rinna_neox_spiece(directory: Path, texts: list[str], normalization: str) -> None:
    """A unigram model trained on `texts` as rinna's GPT-NeoX tokenizer was: byte fallback, no dummy
    prefix, whitespace kept; [PAD]=0, <unk>=1, <s>=2, </s>=3, then [CLS], [SEP], [MASK], the byte pieces
    and the learned ones; with rinna's tokenizer_config.json."""
    shuffle = random.Random(0)
    corpus = [t.replace("<NL>", "\n") for t in texts] * 4
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(shuffle.sample(corpus, 5)) for _ in range(200)),
        model_writer=model,
        vocab_size=600,
        model_type="unigram",
        character_coverage=0.98,
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name=normalization,
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
    write_json(directory / "tokenizer_config.json", RINNA_NEOX_CONFIG)


@pytest.fixture(scope="module", params=["nmt_nfkc", "identity"])
def rinna_neox_dir(request, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp(f"rinna-neox-{request.param}")
    rinna_neox_spiece(directory, RINNA_TEXTS[:2] + RINNA_TEXTS[3:6] + RINNA_TEXTS[9:10], request.param)
    return directory


@pytest.mark.parametrize("text", RINNA_TEXTS)
def test_rinna_neox_equals_sentencepiece(rinna_neox_dir, text):
    ours = load_tokenizer(rinna_neox_dir)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(rinna_neox_dir / "spiece.model"))
    assert ours.kind == "sentencepiece"
    ids = ours.encode(text)  # what rinna's model card runs: encode(text, add_special_tokens=False)
    assert ids == sp.encode(text)  # no lowercasing (do_lower_case false), no dummy prefix
    assert ours.decode(ids) == sp.decode(ids)  # the leading space kept, bytes joined
    assert ours.encode(text, add_special_tokens=True) == ids + [3]  # T5Tokenizer appends </s>
    if "identity" in rinna_neox_dir.name:  # without NFKC (which makes a newline a space) nothing is lost
        assert ours.decode(ids) == text


def test_rinna_neox_special_tokens_are_transformers(rinna_neox_dir):
    ours, hf = load_tokenizer(rinna_neox_dir), auto(rinna_neox_dir)
    assert type(hf).__name__ == "T5Tokenizer" and ours.vocab_size == len(hf)
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == (2, 3, 0, 1)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (2, 3, 0, 1)
    assert ours.special_prefix == () and ours.special_suffix == (3,) == tuple(hf("")["input_ids"])
    text = "猫[CLS]犬[SEP]the dog</s>end"
    ids = ours.encode(text, allow_special=True)
    hf_ids = hf(text, add_special_tokens=False)["input_ids"]
    assert [i for i in ids if i in (3, 4, 5)] == [4, 5, 3] == [i for i in hf_ids if i in (3, 4, 5)]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(rinna_neox_dir / "spiece.model"))
    assert ids == sp.encode("猫") + [4] + sp.encode("犬") + [5] + sp.encode("the dog") + [3] + sp.encode("end")
    assert ours.decode(ids, skip_special_tokens=True) == "猫犬the dogend"


@pytest.mark.parametrize("text", ["吾輩は猫である。名前はまだ無い。", "The quick brown fox jumps over the lazy dog."])
def test_rinna_neox_decodes_as_transformers_where_its_unigram_has_the_pieces(rinna_neox_dir, text):
    ours, hf = load_tokenizer(rinna_neox_dir), auto(rinna_neox_dir)
    ids = ours.encode(text, add_special_tokens=True)
    assert not any(i in ours.byte_ids for i in ids)
    assert ours.decode(ids) == hf.decode(ids) == text + "</s>"
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True) == text


def test_transformers_5_puts_a_dummy_prefix_before_rinna_neox_texts(rinna_neox_dir):
    """Why the ids above are compared with sentencepiece: transformers 5's T5Tokenizer splits at
    whitespace and puts "▁" before every word, which this model's sentencepiece does not."""
    ours, hf = load_tokenizer(rinna_neox_dir), auto(rinna_neox_dir)
    text = "The quick brown fox"
    assert hf.tokenize(text)[0].startswith("▁") and not ours.sp.encode(text, out_type=str)[0].startswith("▁")
    assert ours.encode(text) != hf(text, add_special_tokens=False)["input_ids"]


def test_rinna_neox_stream_adds_up_to_decode(rinna_neox_dir):
    ours = load_tokenizer(rinna_neox_dir)
    for text in RINNA_TEXTS:
        ids = ours.encode(text, allow_special=True, add_special_tokens=True)
        stream = TextStream(ours)
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == ours.decode(ids) and not any("\ufffd" in p for p in pieces)


# ----------------------------------------------------------------------------------------------
# abeja/gpt-neox-japanese-2.7b: vocab.txt + emoji.json, minigpt's own reader

ABEJA_TAGS = ["<SP>", "<BR>", "<TAB>", "<BLOCK>", "<KIGOU>", "<U2000U2BFF>", "<URL>", "<EMAIL>", "<TEL>", "<DATE>"]
ABEJA_TAGS += ["<PRICE>", "<|emoji1|>", "<|emoji2|>", "<|emoji3|>", "<|emoji4|>"]
# pieces of up to three characters, several spellings of one id, and longer words that the matcher
# never reaches (it looks three characters ahead outside a tag); "ab" comes before "abc", so the smaller id wins
ABEJA_PIECES = [
    "<|endoftext|>",
    "慶応,慶應",
    "猫,ねこ,ネコ",
    "吾輩",
    "である",
    "ab",
    "abc",
    "the",
    "The",
    "he",
    "qu",
    "ick",
    "Eng",
    "lish",
    "English",
    "名前",
    "まだ",
    "無い",
    "実は",
    "大学",
    "出身",
    "東京",
    ",",  # a comma line in the middle of the file: read as two empty spellings, as the model's encoder reads it
    "ー",
    "2024",
    "14",
]
ABEJA_EMOJI = {
    "emoji": {"😀": "<|emoji1|>", "😃": "<|emoji1|>", "👍": "<|emoji2|>", "🐯": "<|emoji3|>", ":)": "<|emoji4|>"},
    "emoji_inv": {"<|emoji1|>": "😀", "<|emoji2|>": "👍", "<|emoji3|>": "🐯", "<|emoji4|>": ":)"},
}
ABEJA_CONFIG = {  # abeja/gpt-neox-japanese-2.7b's tokenizer_config.json
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "do_clean_text": False,
    "tokenizer_class": "GPTNeoXJapaneseTokenizer",
}
ABEJA_TEXTS = [
    *TEXTS,
    "吾輩は猫である🐯。実は慶応(慶應)大学出身",  # transformers' own example
    "ねこ and ネコ are 猫 :) abc",
    "Mixed日本語Englishと絵文字😀👍",
    "\ttabs\tand\r\nCRLF\rCR\n",
    "see https://example.com/a?b=1&c=%20 or write to me.you@example.co.jp",
    "call 03-1234-5678 or (090)1234-5678",
    "2024年3月14日(木)12時30分, 令和6年3月14日, 2024/3/14 and 3月14日",
    "years in a row: 2023/2024/3/14, 2023年2024年3月14日",
    "1,000円(税込), 3億5000万円, 10ドル+tax and 2千万ユーロ",
    "┌─┐│█▀░ boxes ════ and blocks",
    "symbols ¡¿ ǀǃ ʹˆ̀͢ and U+2000s “quotes” → ★ …",
    "<SP><BR> tags written as text",
    "a<|endoftext|>b<|startoftext|>c",
]


def abeja_tokenizer(directory: Path, config: dict | None = None, last_line: str | None = None) -> Path:
    chars = sorted({ch for text in ABEJA_TEXTS[:4] + ABEJA_TEXTS[9:11] for ch in text} - set("鬱薔薇,\n\r\t 　"))
    pieces = [piece for piece in ABEJA_PIECES if piece != last_line]  # every line once
    lines = ABEJA_TAGS + pieces + chars + [f"<|byte{b}|>" for b in range(256)]
    vocab = "\n".join(lines) + ("\n" + last_line if last_line is not None else "\n")
    (directory / "vocab.txt").write_text(vocab, encoding="utf-8")
    write_json(directory / "emoji.json", ABEJA_EMOJI)
    write_json(directory / "tokenizer_config.json", {**ABEJA_CONFIG, **(config or {})})
    write_json(directory / "special_tokens_map.json", {k: v for k, v in ABEJA_CONFIG.items() if k.endswith("_token")})
    write_json(directory / "config.json", {"model_type": "gpt_neox_japanese", "vocab_size": 1024})
    return directory


@pytest.fixture(scope="module", params=["plain", "clean"])
def abeja_dir(request, tmp_path_factory) -> Path:
    config = {"do_clean_text": request.param == "clean"}
    return abeja_tokenizer(tmp_path_factory.mktemp(f"abeja-{request.param}"), config)


def transformers_decode(hf, ids: list[int], join_bytes: bool) -> str:
    """transformers' decode, token by token; with join_bytes, a run of byte pieces decoded as one UTF-8
    string (minigpt's one difference) instead of each byte alone."""
    words, run = [], bytearray()
    for i in ids:
        spelling = hf.ids_to_tokens[i][0] if i in hf.ids_to_tokens else None
        if join_bytes and spelling is not None and spelling.startswith("<|byte"):
            run.append(int(spelling[6:-2]))
            continue
        words.append(run.decode("utf-8", errors="replace"))
        run.clear()
        words.append(hf.convert_ids_to_tokens(i))
    return ("".join(words) + run.decode("utf-8", errors="replace")).strip()


@pytest.mark.parametrize("text", ABEJA_TEXTS)
def test_abeja_equals_gpt_neox_japanese_tokenizer(abeja_dir, text):
    ours, hf = load_tokenizer(abeja_dir), auto(abeja_dir)
    assert ours.kind == "abeja" and type(hf).__name__ == "GPTNeoXJapaneseTokenizer"
    ids = ours.encode(text, allow_special=True, add_special_tokens=True)
    assert ids == hf(text)["input_ids"] == hf.encode(text) == ours.encode(text, allow_special=True)
    assert transformers_decode(hf, ids, join_bytes=False) == hf.decode(ids)  # the reference below is transformers'
    assert ours.decode(ids) == transformers_decode(hf, ids, join_bytes=True)
    if not any(i in ours.byte_ids for i in ids):
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


# fragments random texts are made of: pieces, tags and their parts, digits and the date/price/URL
# characters do_clean_text looks for, characters outside the vocabulary, emoji and whitespace
FRAGMENTS = [
    *"0123456789年月日時分/-:()円万億千,.@+ドルユーロ税込抜tax<>|",
    *["http://", "https://a.jp/", "ftp://x", "me@a.b", "2024年", "令和6年", "(木)", "㈪", "3月", "1,000"],
    *["<SP>", "<BR", "<|emoji1|>", "<|byte", "<|endoftext|>", "慶應", "ねこ", "abc", "The", "English", "吾輩"],
    *[" ", "\u3000", "\n", "\r\n", "\t", "—", "−", "😀", "😃", "🐯", ":)", ":", "🦀", "鬱"],
    *["¿", "ǂ", "ˆ", "→", "─", "▀"],
]


def test_abeja_equals_gpt_neox_japanese_tokenizer_on_random_text(abeja_dir):
    ours, hf = load_tokenizer(abeja_dir), auto(abeja_dir)
    rng = random.Random(abeja_dir.name)
    for _ in range(300):
        text = "".join(rng.choices(FRAGMENTS, k=rng.randint(1, 30)))
        ids = ours.encode(text, allow_special=True)
        assert ids == hf(text)["input_ids"], text
        assert ours.decode(ids) == transformers_decode(hf, ids, join_bytes=True), text


# code points on either side of each range written as <KIGOU> or <U2000U2BFF>
EDGES = [0xA0, 0xA1, 0xBF, 0xC0, 0x1BF, 0x1C0, 0x1C3, 0x1C4, 0x2B8, 0x2B9, 0x2FF, 0x300, 0x362, 0x363]
EDGES += [0x1FFF, 0x2000, 0x2BFF, 0x2C00]


@pytest.mark.parametrize("code", EDGES, ids=hex)
def test_abeja_symbol_tags_cover_the_ranges_transformers_does(abeja_dir, code):
    ours, hf = load_tokenizer(abeja_dir), auto(abeja_dir)
    assert ours.encode(chr(code)) == hf(chr(code))["input_ids"]


# what each text is written with, beyond its characters: (text, tags without do_clean_text, tags with it)
TAGGED = [
    ("see https://example.com/a?b=1 me.you@example.co.jp", ["<SP>"], ["<URL>", "<EMAIL>"]),
    ("call 03-1234-5678", ["<SP>"], ["<TEL>"]),
    ("2024年3月14日(木)12時30分", [], ["<DATE>"]),
    ("令和6年3月14日", [], ["<DATE>"]),
    ("3億5000万円(税込)", [], ["<PRICE>"]),
    ("┌─┐│█▀░", ["<U2000U2BFF>"], ["<BLOCK>"]),
    ("¡ ǀ ʹ ̀", ["<KIGOU>", "<SP>"], ["<KIGOU>"]),
    ("“→★…", ["<U2000U2BFF>"], ["<U2000U2BFF>"]),
    ("a\tb\r\nc\rd\ne", ["<TAB>", "<BR>"], ["<TAB>", "<BR>"]),
    ("😀😃 :) 🐯", ["<|emoji1|>", "<|emoji4|>", "<|emoji3|>"], ["<|emoji1|>", "<|emoji4|>", "<|emoji3|>"]),
]


@pytest.mark.parametrize("text, plain, cleaned", TAGGED)
def test_abeja_writes_tags(abeja_dir, text, plain, cleaned):
    ours = load_tokenizer(abeja_dir)
    ids = ours.encode(text)
    for tag in cleaned if ours.do_clean_text else plain:
        assert ours.ids[tag] in ids, tag


def test_abeja_layout_loads_as_transformers_does(abeja_dir):
    ours, hf = load_tokenizer(abeja_dir), auto(abeja_dir)
    assert ours.vocab_size == len(hf)
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
        hf.unk_token_id,
    )
    assert ours.eot_id == ours.eos_id == ABEJA_TAGS.__len__()  # <|endoftext|>, the first piece
    assert ours.bos_id == ours.vocab_size - 1  # <|startoftext|> is not in vocab.txt: added after its lines
    assert ours.special_prefix == ours.special_suffix == ()
    assert ours.encode("慶應") == ours.encode("慶応") and ours.decode(ours.encode("慶應")) == "慶応"


def test_abeja_round_trips_what_its_tags_do_not_change(abeja_dir):
    ours = load_tokenizer(abeja_dir)
    for text in ["吾輩は猫である。", "未知の漢字、鬱と薔薇 and a crab 🦀", "a\tb\nc d", "English, 2024"]:
        assert ours.decode(ours.encode(text)) == text
    ids = ours.encode("鬱")
    assert len(ids) == 3 and set(ids) <= ours.byte_ids  # three UTF-8 bytes, decoded together
    plain = ours.encode("a<|endoftext|>b")
    assert ours.eot_id not in plain and ours.decode(plain) == "a<|endoftext|>b"  # special text stays text


@pytest.mark.parametrize("last_line", [",", "<|padding|>"])
def test_abeja_last_line_without_newline(tmp_path, last_line):
    abeja_tokenizer(tmp_path, last_line=last_line)
    ours, hf = load_tokenizer(tmp_path), auto(tmp_path)
    text = "a,b<|padding|>c"
    assert ours.encode(text) == hf(text)["input_ids"]
    assert ours.vocab_size == len(hf)
    if last_line == ",":
        assert ours.encode(",") == [ours.vocab_size - 2]  # the comma's own id (the last line; <|startoftext|> after)


def test_abeja_stream_adds_up_to_decode(abeja_dir):
    ours = load_tokenizer(abeja_dir)
    for text in ABEJA_TEXTS:
        ids = ours.encode(text, allow_special=True)
        stream = TextStream(ours)
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == ours.decode(ids) and not any("\ufffd" in p for p in pieces)


def test_abeja_saves_what_transformers_reads(abeja_dir, tmp_path):
    ours = load_tokenizer(abeja_dir)
    ours.save_pretrained(tmp_path)
    loaded, hf = load_tokenizer(tmp_path), auto(tmp_path)
    assert (tmp_path / "minigpt_tokenizer.json").is_file() and loaded.kind == "abeja"
    for text in ABEJA_TEXTS:
        ids = ours.encode(text, allow_special=True)
        assert loaded.encode(text, allow_special=True) == ids == hf(text)["input_ids"]


def test_tokenizer_for_finds_abeja_in_a_model_directory(abeja_dir):
    tok = tokenizer_for(abeja_dir)
    assert tok.kind == "abeja" and tok.encode("吾輩は猫") == auto(abeja_dir).encode("吾輩は猫")


# ----------------------------------------------------------------------------------------------
# Bad inputs: one line each

GOOD_EMOJI = json.dumps(ABEJA_EMOJI).encode()
GOOD_VOCAB = "\n".join([*ABEJA_TAGS, "<|endoftext|>", "a", *(f"<|byte{b}|>" for b in range(256))]).encode()
CLASS_CONFIG = json.dumps({"tokenizer_class": "GPTNeoXJapaneseTokenizer"}).encode()


@pytest.mark.parametrize(
    "files, message",
    [
        ({"vocab.txt": b"\xff\xfebad", "emoji.json": GOOD_EMOJI}, "vocab.txt: not a readable vocabulary"),
        ({"vocab.txt": b"", "emoji.json": GOOD_EMOJI}, "vocab.txt: an empty vocabulary"),
        ({"vocab.txt": GOOD_VOCAB, "emoji.json": b"{broken"}, "emoji.json: not a readable JSON file"),
        ({"vocab.txt": GOOD_VOCAB, "emoji.json": b"[1]"}, 'emoji.json: expected an object with "emoji"'),
        ({"vocab.txt": GOOD_VOCAB, "emoji.json": b'{"emoji": {"x": 1}, "emoji_inv": {}}'}, "tables of strings"),
        ({"vocab.txt": GOOD_VOCAB, "emoji.json": b'{"emoji": {}}'}, 'expected an object with "emoji" and "emoji_inv"'),
        ({"emoji.json": GOOD_EMOJI}, "emoji.json without vocab.txt"),
        ({"vocab.txt": GOOD_VOCAB, "tokenizer_config.json": CLASS_CONFIG}, "vocab.txt without emoji.json"),
        (
            {"vocab.txt": GOOD_VOCAB, "emoji.json": b'{"emoji": {"x": "<|emoji9|>"}, "emoji_inv": {}}'},
            "its tag <|emoji9|> is not in vocab.txt; the two files do not belong together",
        ),
        ({"vocab.txt": b"a\nb\n", "emoji.json": b'{"emoji": {}, "emoji_inv": {}}'}, "no <|byte0|> and no unknown"),
        ({"vocab.txt": GOOD_VOCAB, "emoji.json": GOOD_EMOJI, "tokenizer_config.json": b"{x"}, "not a readable JSON"),
        ({"minigpt_tokenizer.json": b'{"kind": "abeja"}'}, "an abeja tokenizer needs vocab.txt and emoji.json"),
        ({"vocab.txt": GOOD_VOCAB}, "no tokenizer found"),  # a vocab.txt alone is not known to be abeja's
    ],
)
def test_bad_abeja_files_are_one_line_errors(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("(", r"\(")) as e:
        load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)


def test_abeja_decode_refuses_an_id_outside_its_vocabulary(abeja_dir):
    ours = load_tokenizer(abeja_dir)
    with pytest.raises(ValueError, match=f"token id {ours.vocab_size} is outside this tokenizer's"):
        ours.decode([0, ours.vocab_size])


@pytest.mark.parametrize(
    "extra_rows, refused",
    [(0, False), (1, False), (27, False), (155, False), (-1, True), (-100, True)],  # Pythia: 50277 ids, 50304 rows
)
def test_check_vocab_refuses_only_a_tokenizer_larger_than_the_model(pythia_dir, extra_rows, refused):
    tok = load_tokenizer(pythia_dir)
    rows = tok.vocab_size + extra_rows
    if not refused:
        check_vocab(tok, rows, pythia_dir)
        return
    with pytest.raises(ValueError, match=f"has {tok.vocab_size} ids but the model only {rows}") as e:
        check_vocab(tok, rows, pythia_dir)
    assert "\n" not in str(e.value)
