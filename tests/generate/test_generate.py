"""Generation: greedy equals transformers and uncached decoding; sampling options behave."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import hf_model, save_hf

from minigpt import GPT, GPTConfig
from minigpt.generate.sampling import sample_next
from minigpt.generate.simple import complete, generate, generate_uncached, stream
from minigpt.model.backends import set_backends
from minigpt.model.load import from_pretrained
from minigpt.tokenizers import GPT2Tokenizer, Tokenizer

ROOT = Path(__file__).resolve().parents[2]
GPT2_VOCAB = dict(n_positions=96, vocab_size=50257, n_layer=2, n_head=4, n_embd=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = hf_model(seed=3, **GPT2_VOCAB)
    # Sharpen the random model so its greedy choices are far apart from ties.
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(8)
    path = save_hf(hf, tmp_path_factory.mktemp("ckpt"))
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 50256
    return hf, path


def test_greedy_equals_transformers(checkpoint):
    hf, path = checkpoint
    model = from_pretrained(path)
    idx = torch.randint(0, 50257, (3, 11))
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=30, do_sample=False)
    for backend in ("math", "sdpa"):
        set_backends(model, attn=backend)
        out = generate(model, idx, 30, temperature=0)
        assert torch.equal(out, ref), backend


def test_cached_equals_uncached(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path)
    idx = torch.randint(0, 50257, (2, 7))
    assert torch.equal(generate(model, idx, 40, temperature=0), generate_uncached(model, idx, 40))


def test_sample_py_greedy_equals_transformers(checkpoint):
    hf, path = checkpoint
    enc = GPT2Tokenizer()
    prompt = "The capital of France is"
    idx = torch.tensor([enc.encode(prompt)])
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=20, do_sample=False)
    expected = prompt + enc.decode(ref[0, idx.size(1) :].tolist())
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sample.py"),
            "--init",
            str(path),
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-new-tokens",
            "20",
            "--ignore-eot",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == expected


def test_sample_next_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -1.0]]).repeat(2000, 1)
    assert sample_next(logits[:1], temperature=0).item() == 1
    k2 = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(k2.tolist()) == {1, 2}
    # probs ~ [.03, .64, .24, .09, .01]: the top-p=0.8 nucleus is {1, 2}
    p = sample_next(logits, temperature=1.0, top_p=0.8, generator=g)
    assert set(p.tolist()) == {1, 2}
    assert set(sample_next(logits[:50], top_p=1e-6, generator=g).tolist()) == {1}
    full = sample_next(logits, temperature=1.0, generator=g)
    assert set(full.tolist()) == {0, 1, 2, 3, 4}
    freq1 = (full == 1).float().mean().item()
    assert 0.58 < freq1 < 0.70  # softmax([0,3,2,1,-1])[1] = 0.636
    with pytest.raises(ValueError):
        sample_next(logits, temperature=-1)
    with pytest.raises(ValueError):
        sample_next(logits, top_p=0)


def test_seeded_sampling_is_repeatable(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path)
    idx = torch.randint(0, 50257, (2, 5))
    a = generate(model, idx, 15, temperature=1.0, top_k=50, generator=torch.Generator().manual_seed(7))
    b = generate(model, idx, 15, temperature=1.0, top_k=50, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("decoder_mode", [None, "auto"])
def test_stops_at_eos(decoder_mode):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=10, n_layer=1, n_head=1, n_embd=8)).eval()
    with torch.no_grad():  # the final LayerNorm outputs all ones, and token 3's embedding is all fives
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[3] = 5.0
    idx = torch.zeros(2, 4, dtype=torch.long)
    steps = list(stream(model, idx, 20, temperature=0, eos_id=3, decoder_mode=decoder_mode))
    assert len(steps) == 1 and steps[0].tolist() == [3, 3]


def test_complete_batches_ragged_prompts_and_samples(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path)
    enc = GPT2Tokenizer()
    prompts = ["Hello", "A longer prompt here", "World"]
    out = complete(model, enc, prompts, 12, num_samples=2, temperature=0, stop_at_eot=False)
    assert [(c.prompt_index, c.sample_index) for c in out] == [(p, s) for p in range(3) for s in range(2)]
    for c in out:
        single = complete(model, enc, [prompts[c.prompt_index]], 12, temperature=0, stop_at_eot=False)[0]
        assert c.text == single.text and c.tokens == single.tokens and len(c.tokens) == 12


def test_stop_strings_and_streaming(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path)
    enc = GPT2Tokenizer()
    full = complete(model, enc, ["Once upon"], 30, temperature=0, stop_at_eot=False)[0].text
    stop = full[5:9]
    pieces = []
    c = complete(
        model,
        enc,
        ["Once upon"],
        30,
        temperature=0,
        stop=[stop],
        stop_at_eot=False,
        on_text=lambda c, t: pieces.append(t),
    )[0]
    assert c.finish_reason == "stop"
    assert c.text == full[: full.find(stop)]
    assert "".join(pieces) == c.text


def test_too_long_prompt_is_a_clear_error(checkpoint):
    _, path = checkpoint
    model = from_pretrained(path)
    with pytest.raises(ValueError, match="longer than the context window of 96"):
        generate(model, torch.zeros(1, 97, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="at most 6 new tokens"):
        generate(model, torch.zeros(1, 90, dtype=torch.long), 7)
    out = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--init", str(path), "--prompt", "word " * 200, "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    last = out.stderr.splitlines()[-1]
    assert last.startswith("error:") and "context window" in last


@pytest.mark.slow
def test_sample_py_stream_seed_stdin_and_bad_init(checkpoint, tmp_path):
    _, path = checkpoint
    cmd = [
        sys.executable,
        str(ROOT / "sample.py"),
        "--init",
        str(path),
        "--device",
        "cpu",
        "--max-new-tokens",
        "10",
        "--seed",
        "1",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
    ]
    a = subprocess.run(cmd + ["--prompt", "abc", "--stream"], capture_output=True, text=True, check=True)
    b = subprocess.run(cmd + ["--prompt-file", "-"], input="abc", capture_output=True, text=True, check=True)
    assert a.stdout == b.stdout and a.stdout.startswith("abc") and len(a.stdout) > 3
    bad = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--init", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
    help_ = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--help"], capture_output=True, text=True, check=True
    )
    for flag in (
        "--init",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--num-samples",
        "--device",
        "--dtype",
        "--prompt-file",
        "--stream",
        "--decode",
    ):
        assert flag in help_.stdout


@pytest.mark.slow
def test_sample_py_simple_and_fast_decoding_agree(checkpoint):
    _, path = checkpoint
    cmd = [
        sys.executable,
        str(ROOT / "sample.py"),
        "--init",
        str(path),
        "--device",
        "cpu",
        "--max-new-tokens",
        "12",
        "--prompt",
        "Once upon",
        "--num-samples",
        "2",
        "--ignore-eot",
    ]
    for sampling in (["--temperature", "0"], ["--seed", "3", "--top-k", "40"]):
        simple, fast, auto = (
            subprocess.run(cmd + sampling + ["--decode", d], capture_output=True, text=True, check=True).stdout
            for d in ("simple", "fast", "auto")
        )
        assert simple == fast == auto and simple.startswith("Once upon") and len(simple) > len("Once upon") * 2


def test_bfloat16_cpu_sampling(checkpoint):
    _, path = checkpoint
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sample.py"),
            "--init",
            str(path),
            "--device",
            "cpu",
            "--dtype",
            "bfloat16",
            "--prompt",
            "x",
            "--max-new-tokens",
            "5",
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("x")


# ----------------------------------------------------------------------------------------------
# Text out of any tokenizer: whole characters, stop strings over full-width text and newlines

BPE_TRAINING_TEXT = "the cat sat on the mat. " * 40  # ASCII only: Japanese is spelled in bytes


def _tokenizers():
    from minigpt.tokenizers import BPETokenizer, CharTokenizer

    return {
        "gpt2": GPT2Tokenizer(),
        "char": CharTokenizer("abc 。"),  # 「」 and the kana: byte fallback
        "bpe": BPETokenizer.train([BPE_TRAINING_TEXT], 300),
    }


REPLY = "答えは「はい」。\n次の行 😀 end"
# (stop strings, the text complete() keeps, finish reason)
STOP_CASES = [
    ((), REPLY, "length"),
    (("「",), "答えは", "stop"),
    (("。",), "答えは「はい」", "stop"),
    (("\n",), "答えは「はい」。", "stop"),
    (("。\n次",), "答えは「はい」", "stop"),
    (("😀",), "答えは「はい」。\n次の行 ", "stop"),
    (("」", "は"), "答え", "stop"),  # the earliest of several
    (("ＥＮＤ",), REPLY, "length"),  # full-width, never produced
]


@pytest.mark.parametrize("stop, kept, reason", STOP_CASES, ids=[repr(c[0]) for c in STOP_CASES])
@pytest.mark.parametrize("kind", ["gpt2", "char", "bpe"])
def test_complete_streams_whole_characters_and_stops_on_them(kind, stop, kept, reason, monkeypatch):
    """The model is replaced by the tokens of REPLY, so the stop matching and the decoding are
    checked exactly: split characters (several byte tokens each) are handed out whole, never as U+FFFD."""
    tokenizer = _tokenizers()[kind]
    tokens = tokenizer.encode(REPLY)
    assert len(tokens) > len(REPLY) // 2 and tokenizer.decode(tokens) == REPLY

    def fake_stream(model, idx, max_new_tokens, *args, **kwargs):
        for t in tokens[:max_new_tokens]:
            yield torch.full((idx.size(0),), t)

    monkeypatch.setattr("minigpt.generate.simple.stream", fake_stream)
    model = GPT(GPTConfig(block_size=256, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=1, n_embd=8))
    pieces = []
    [c] = complete(model, tokenizer, ["Q:"], len(tokens), stop=list(stop), on_text=lambda c, t: pieces.append(t))
    assert (c.text, c.finish_reason) == (kept, reason)
    assert "".join(pieces) == kept and not any("\ufffd" in p for p in pieces)


class NoEndOfText(Tokenizer):
    """A tokenizer's ids and text, without an end-of-text id (as some tokenizers have none)."""

    def __init__(self, inner: Tokenizer):
        self.inner, self.kind, self.vocab_size, self.eot_id = inner, inner.kind, inner.vocab_size, None

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return self.inner.encode(text)

    def decode(self, ids) -> str:
        return self.inner.decode(ids)


def test_eot_id_none_never_stops_early(monkeypatch):
    tokenizer = _tokenizers()["char"]
    tokens = tokenizer.encode("abc") + [tokenizer.eot_id] + tokenizer.encode("cab")
    monkeypatch.setattr(
        "minigpt.generate.simple.stream", lambda model, idx, n, *a, **k: (torch.full((1,), t) for t in tokens[:n])
    )
    model = GPT(GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=1, n_embd=8))
    [stopped] = complete(model, tokenizer, ["a"], len(tokens))
    assert (stopped.text, stopped.finish_reason) == ("abc", "eot")
    [kept] = complete(model, NoEndOfText(tokenizer), ["a"], len(tokens))
    assert (kept.text, kept.finish_reason) == ("abc<|endoftext|>cab", "length")


def test_many_samples_are_decoded_in_bounded_batches(checkpoint, monkeypatch):
    """--num-samples 10000 went into one batch of 10000 rows (memory grew ~1 MB a
    sample, for no speed-up). complete() now decodes at most DEFAULT_BATCH_SIZE rows at a time."""
    import minigpt.generate.simple as simple

    _, path = checkpoint
    model = from_pretrained(path)
    enc = GPT2Tokenizer()
    rows = []
    real_stream = simple.stream

    def recording_stream(model, idx, *args, **kwargs):
        rows.append(idx.size(0))
        return real_stream(model, idx, *args, **kwargs)

    monkeypatch.setattr(simple, "stream", recording_stream)
    n = 2 * simple.DEFAULT_BATCH_SIZE + 5
    out = complete(model, enc, ["Hello"], 4, num_samples=n, temperature=0, stop_at_eot=False)
    assert rows == [simple.DEFAULT_BATCH_SIZE, simple.DEFAULT_BATCH_SIZE, 5]
    assert [c.sample_index for c in out] == list(range(n))
    single = complete(model, enc, ["Hello"], 4, temperature=0, stop_at_eot=False, batch_size=1)[0]
    assert all(c.tokens == single.tokens and len(c.tokens) == 4 for c in out)  # greedy: every sample alike
    rows.clear()
    complete(model, enc, ["Hello"], 2, num_samples=7, temperature=0, batch_size=3)
    assert rows == [3, 3, 1]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            complete(model, enc, ["Hello"], 2, batch_size=bad)


@pytest.mark.parametrize("decoder_mode", [None, "auto"])
def test_nested_or_sparse_ids_are_a_clear_error(decoder_mode):
    """A nested tensor to generate() ended in torch's NotImplementedError."""
    model = GPT(GPTConfig(block_size=16, vocab_size=101, n_layer=1, n_head=1, n_embd=16)).eval()
    ragged = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    cases = [
        (torch.nested.nested_tensor(ragged), "got a nested tensor; pad the prompts"),
        (torch.nested.nested_tensor(ragged, layout=torch.jagged), "got a nested tensor; pad the prompts"),
        (torch.tensor([[1, 2, 3]]).to_sparse(), "got a sparse_coo tensor"),
    ]
    for idx, message in cases:
        for call in (
            lambda idx=idx: generate(model, idx, 3, decoder_mode=decoder_mode),
            lambda idx=idx: list(stream(model, idx, 3, decoder_mode=decoder_mode)),
        ):
            with pytest.raises(ValueError, match=message) as e:
                call()
            assert "\n" not in str(e.value)
