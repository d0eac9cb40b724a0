"""The continuous-batching engine against the simple paths: its per-row-position cache gives each row
the logits of that row run alone; greedy rows get the tokens they get alone, however they join and
leave; seeded rows draw what sample.py draws; cancelled, refused and failed jobs end cleanly."""

from __future__ import annotations

import time

import pytest
import torch

from minigpt.generate.sampling import SamplingSettings
from minigpt.generate.simple import complete, generate, prompt_ids
from minigpt.model.config import GPTConfig
from minigpt.model.model import GPT
from minigpt.serve.engine import BatchKVCache, Engine, GenerationRequest, QueueFull
from minigpt.tokenizers import GPT2Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

VARIANTS = {
    "learned": dict(block_size=48, n_layer=2, n_head=2, n_embd=24, vocab_size=97),
    "rope-qknorm": dict(block_size=48, n_layer=2, n_head=3, n_embd=24, vocab_size=101, position="rope", qk_norm=True),
}


def fresh_model(variant: str, seed: int, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**VARIANTS[variant], **overrides})).eval()


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_rows_at_their_own_positions_get_the_logits_of_each_row_alone(variant):
    model = fresh_model(variant, 1)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(2)
    lengths = [1, 7, 13, 4]  # odd prompt lengths: every row at its own position
    seqs = [torch.randint(0, V, (n + 9,), generator=g) for n in lengths]
    cache = BatchKVCache(model.config, max_batch=5, capacity=4)  # small: the time dimension grows on the way
    rows = list(range(len(lengths)))  # rows[b]: the sequence in cache row b
    for b, n in enumerate(lengths):
        got = model(seqs[b][None, :n], cache=cache.row(b), last_only=True)[0, -1]
        torch.testing.assert_close(got, model(seqs[b][None, :n])[0, -1], atol=1e-5, rtol=1e-5)
    done = list(lengths)
    for step in range(9):
        if step == 4:  # sequence 1 leaves: the last row moves into its place
            cache.move(len(rows) - 1, 1)
            rows[1] = rows.pop()
        cache.batch = len(rows)
        tokens = torch.stack([seqs[s][done[s]] for s in rows])[:, None]
        logits = model(tokens, cache=cache)[:, -1]
        for b, s in enumerate(rows):
            done[s] += 1
            alone = model(seqs[s][None, : done[s]])[0, -1]
            torch.testing.assert_close(logits[b], alone, atol=1e-5, rtol=1e-5)
    assert cache.capacity >= max(done) and cache.capacity < 2 * max(done)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_rows_joining_and_leaving_get_what_each_gets_alone(variant):
    model = fresh_model(variant, 3, vocab_size=50257)  # GPT-2's tokenizer turns the ids into text
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in (3, 11, 1, 6, 20, 2)]
    budgets = [15, 4, 25, 9, 12, 20]
    engine = Engine(model, GPT2Tokenizer(), max_batch=3, max_queue=8)  # 6 jobs through 3 rows
    try:
        jobs = []
        for p, n in zip(prompts, budgets, strict=True):
            jobs += engine.submit(GenerationRequest(p, n, SamplingSettings(temperature=0), stop_at_eot=False))
            time.sleep(0.002)  # joining at different steps
        got = [job.result(60).tokens for job in jobs]
    finally:
        engine.close()
    alone = [
        generate(model, torch.tensor([p]), n, temperature=0)[0, len(p) :].tolist()
        for p, n in zip(prompts, budgets, strict=True)
    ]
    assert got == alone
    assert engine.peak_rows == 3


@pytest.fixture(scope="module")
def gpt2_sized():
    torch.manual_seed(5)
    return GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=16)).eval(), GPT2Tokenizer()


@pytest.mark.parametrize(
    "settings",
    [dict(temperature=1.0), dict(temperature=0.7, top_k=50), dict(temperature=1.3, top_p=0.9), dict(temperature=0)],
)
def test_seeded_rows_draw_what_sample_py_draws(gpt2_sized, settings):
    model, tok = gpt2_sized
    prompts = ["one", "a longer prompt here", "日本語"]
    engine = Engine(model, tok, max_batch=4)
    try:
        jobs = [
            engine.submit(
                GenerationRequest(
                    prompt_ids(tok, p),
                    20,
                    SamplingSettings(**settings, generator=torch.Generator().manual_seed(100 + i)),
                    stop=["\n\n"],
                )
            )[0]
            for i, p in enumerate(prompts)
        ]
        got = [job.result(60) for job in jobs]
    finally:
        engine.close()
    for i, (p, c) in enumerate(zip(prompts, got, strict=True)):
        [ref] = complete(model, tok, [p], 20, seed=100 + i, stop=["\n\n"], decoder_mode="auto", **settings)
        assert (c.tokens, c.text, c.finish_reason) == (ref.tokens, ref.text, ref.finish_reason)


def test_cancel_queue_full_zero_tokens_and_a_failed_forward(gpt2_sized):
    model, tok = gpt2_sized
    engine = Engine(model, tok, max_batch=1, max_queue=1)
    slow = model.register_forward_pre_hook(lambda m, a: time.sleep(0.02))
    try:
        greedy = SamplingSettings(temperature=0)
        [running] = engine.submit(GenerationRequest([1, 2, 3], 60, greedy))
        [waiting] = engine.submit(GenerationRequest([4], 60, greedy))
        with pytest.raises(QueueFull):
            engine.submit(GenerationRequest([5], 1, greedy))
        with pytest.raises(ValueError, match="context window"):
            engine.submit(GenerationRequest([5] * 60, 10, greedy))
        waiting.cancel()
        running.cancel()
        assert running.result(2).finish_reason == "cancelled" and waiting.result(2).finish_reason == "cancelled"
        assert len(running.completion.tokens) < 60
        [empty] = engine.submit(GenerationRequest([1], 0, greedy))
        assert empty.result(5).tokens == [] and empty.result().finish_reason == "length"
        slow.remove()

        def fail(m, a):
            raise RuntimeError("out of memory")

        broken = model.register_forward_pre_hook(fail)
        [job] = engine.submit(GenerationRequest([1, 2], 5, greedy))
        with pytest.raises(RuntimeError, match="out of memory"):
            job.result(5)
        broken.remove()
        [job] = engine.submit(GenerationRequest([1, 2], 5, greedy))  # the engine goes on
        assert len(job.result(5).tokens) == 5
    finally:
        slow.remove()
        engine.close()


def test_close_lets_running_jobs_finish_then_refuses(gpt2_sized):
    model, tok = gpt2_sized
    engine = Engine(model, tok, max_batch=2)
    jobs = engine.submit(*[GenerationRequest([1, 2, 3], 30, SamplingSettings(temperature=0)) for _ in range(2)])
    engine.close(drain_s=30)
    assert [len(j.result(0).tokens) for j in jobs] == [30, 30]
    assert not engine.thread.is_alive()
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.submit(GenerationRequest([1], 1))
