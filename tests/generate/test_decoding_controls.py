"""repetition_penalty, no_repeat_ngram_size and min_new_tokens: each equals transformers' logits
processor on random logits and histories, both decoding paths and the serving engine apply them
alike, and bad values are one-line errors on the command line."""

from __future__ import annotations

import pytest
import torch
from tiny_run import ROOT, load_script
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from minigpt.generate.sampling import SamplingSettings, apply_processors, sample_next
from minigpt.generate.simple import generate
from minigpt.model.config import GPTConfig
from minigpt.model.load import save_pretrained
from minigpt.model.model import GPT
from minigpt.serve.engine import Engine, GenerationRequest
from minigpt.tokenizers import GPT2Tokenizer

sample = load_script(ROOT / "sample.py")


def random_case(seed: int, B: int, V: int, L: int, alphabet: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g) * 3
    logits[logits.abs() < 0.3] = 0.0  # some exact zeros, where the two branches of the penalty meet
    history = torch.randint(0, min(alphabet, V), (B, L), generator=g)  # a small alphabet: many repeats
    return logits, history


SHAPES = [(1, 7, 1, 3), (3, 37, 12, 5), (4, 101, 40, 9), (2, 1023, 25, 1023), (5, 13, 3, 2)]


@pytest.mark.parametrize("B, V, L, alphabet", SHAPES)
@pytest.mark.parametrize("penalty", [0.3, 1.0, 1.2, 2.5])
def test_repetition_penalty_equals_transformers(B, V, L, alphabet, penalty):
    logits, history = random_case(B * V + L, B, V, L, alphabet)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(history, logits.clone())
    ours = apply_processors(logits, history, repetition_penalty=penalty)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    if penalty != 1.0:
        assert not torch.equal(ours, logits)


@pytest.mark.parametrize("B, V, L, alphabet", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 13])
def test_no_repeat_ngram_equals_transformers(B, V, L, alphabet, n):
    logits, history = random_case(B * V + L + n, B, V, L, alphabet)
    expected = NoRepeatNGramLogitsProcessor(n)(history, logits.clone())
    ours = apply_processors(logits, history, no_repeat_ngram_size=n)
    assert torch.equal(ours, expected)
    if n <= 2 and L > n and alphabet < V:
        assert torch.isinf(ours).any()  # with this many repeats something is banned: the check is not idle


@pytest.mark.parametrize("B, V, L, alphabet", SHAPES)
@pytest.mark.parametrize("prompt_len, minimum", [(0, 0), (0, 5), (1, 3), (2, 50)])
def test_min_new_tokens_equals_transformers(B, V, L, alphabet, prompt_len, minimum):
    logits, history = random_case(B + V + L, B, V, L, alphabet)
    eos = V // 2
    expected = MinNewTokensLengthLogitsProcessor(prompt_len, minimum, eos)(history, logits.clone())
    ours = apply_processors(logits, history, prompt_len=prompt_len, eos_id=eos, min_new_tokens=minimum)
    assert torch.equal(ours, expected)
    assert bool(torch.isinf(ours[:, eos]).all()) == (L - prompt_len < minimum)


def test_processors_together_equal_transformers_in_order():
    logits, history = random_case(7, 3, 61, 20, 6)
    expected = logits.clone()
    for p in (
        MinNewTokensLengthLogitsProcessor(4, 30, 5),
        RepetitionPenaltyLogitsProcessor(1.7),
        NoRepeatNGramLogitsProcessor(2),
    ):
        expected = p(history, expected)
    settings = dict(prompt_len=4, eos_id=5, repetition_penalty=1.7, no_repeat_ngram_size=2, min_new_tokens=30)
    assert torch.equal(apply_processors(logits, history, **settings), expected)
    assert torch.equal(sample_next(logits, 0, history=history, **settings), expected.argmax(-1))


def reference_greedy(model, idx, steps, penalty, n, minimum, eos):
    """Greedy decoding that recomputes the whole context each step, with transformers' processors."""
    T = idx.size(1)
    processors = [
        MinNewTokensLengthLogitsProcessor(T, minimum, eos),
        RepetitionPenaltyLogitsProcessor(penalty),
        NoRepeatNGramLogitsProcessor(n),
    ]
    for _ in range(steps):
        scores = model(idx)[:, -1].float()
        for p in processors:
            scores = p(idx, scores)
        idx = torch.cat([idx, scores.argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("decoder_mode", [None, "eager", "static"])
def test_both_decoding_paths_apply_them(decoder_mode):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=29, n_layer=1, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 29, (3, 5))
    with torch.no_grad():
        plain = generate(model, idx, 30, temperature=0)
        expected = reference_greedy(model, idx, 30, 1.5, 2, 10, eos=3)
    settings = SamplingSettings(temperature=0, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=10)
    # no eos_id here: min_new_tokens would have nothing to hold back, so hold it back by hand in the reference
    ours = generate(model, idx, 30, settings, eos_id=None, decoder_mode=decoder_mode)
    expected_no_eos = reference_greedy(model, idx, 30, 1.5, 2, 0, eos=3)
    assert torch.equal(ours, expected_no_eos)
    assert not torch.equal(ours, plain)  # the controls changed the greedy text
    # with an eos: rows that end are padded with it, so compare up to each row's first eos
    ours = generate(model, idx, 30, settings, eos_id=3, decoder_mode=decoder_mode)
    for row, ref in zip(ours.tolist(), expected.tolist(), strict=True):
        new = row[5:]
        cut = new.index(3) + 1 if 3 in new else len(new)
        assert new[:cut] == ref[5 : 5 + cut]
        assert 3 not in new[:10]


@pytest.mark.parametrize(
    "settings",
    [
        dict(repetition_penalty=1.5),
        dict(no_repeat_ngram_size=2),
        dict(min_new_tokens=8),
        dict(repetition_penalty=0.7, no_repeat_ngram_size=3, min_new_tokens=4),
    ],
)
def test_the_serving_engine_applies_them_as_generate_does(settings):
    """Rows of odd prompt lengths decoded together by the engine get, token for token, what
    generate gives each alone with the same controls (greedy; GPT-2's end-of-text as eos)."""
    torch.manual_seed(3)
    eot = GPT2Tokenizer().eot_id
    model = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, eot, (n,), generator=g).tolist() for n in (3, 7, 1)]
    with torch.no_grad():  # end-of-text outscores the first row's third greedy token: min_new_tokens holds it back
        third = int(generate(model, torch.tensor([prompts[0]]), 3, temperature=0)[0, -1])
        model.transformer.wte.weight[eot] = 1.05 * model.transformer.wte.weight[third]
    sampling = SamplingSettings(temperature=0, **settings)
    engine = Engine(model, GPT2Tokenizer(), max_batch=3)
    try:
        jobs = engine.submit(*(GenerationRequest(p, 16, sampling) for p in prompts))
        got = [job.result(timeout=60).tokens for job in jobs]
    finally:
        engine.close()

    def new_tokens(prompt, sampling):  # up to the end-of-text token
        ids = generate(model, torch.tensor([prompt]), 16, sampling, eos_id=eot)[0, len(prompt) :].tolist()
        return ids[: ids.index(eot)] if eot in ids else ids

    differs = False
    for prompt, tokens in zip(prompts, got, strict=True):
        assert tokens == new_tokens(prompt, sampling)
        differs |= tokens != new_tokens(prompt, SamplingSettings(temperature=0))
    assert differs  # the controls changed some row's greedy tokens: the comparison is not idle


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_pretrained(GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16)), path)
    return path


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--repetition-penalty", "0"], "repetition_penalty must be a finite number > 0"),
        (["--repetition-penalty", "-1.5"], "repetition_penalty must be a finite number > 0"),
        (["--repetition-penalty", "nan"], "repetition_penalty must be a finite number > 0"),
        (["--no-repeat-ngram-size", "-1"], "no_repeat_ngram_size must be an integer >= 0"),
        (["--min-new-tokens", "-2"], "min_new_tokens must be an integer >= 0"),
        (["--min-new-tokens", "two"], "invalid int value"),
        (["--temperature", "-1"], "temperature must be"),
    ],
)
def test_sample_py_bad_values_one_line(checkpoint, capsys, flags, message):
    try:
        code = sample.main(["--init", str(checkpoint), "--device", "cpu", "--max-new-tokens", "3", *flags])
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err


def test_sample_py_takes_the_controls(checkpoint, capsys):
    argv = ["--init", str(checkpoint), "--device", "cpu", "--max-new-tokens", "12", "--temperature", "0"]
    assert sample.main(argv) == 0
    plain = capsys.readouterr().out
    assert sample.main([*argv, "--no-repeat-ngram-size", "1", "--decode", "simple"]) == 0
    banned = capsys.readouterr().out
    assert sample.main([*argv, "--no-repeat-ngram-size", "1", "--decode", "fast"]) == 0
    assert capsys.readouterr().out == banned != plain
