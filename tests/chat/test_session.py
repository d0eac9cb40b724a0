"""ChatSession: the replies of a cached multi-turn conversation are token for token those of generating
from the whole rendered conversation afresh, through overflows, rewinds and interruptions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny_run import ROOT

from minigpt.chat.formats import FORMATS, TemplateFormat
from minigpt.chat.session import ChatSession
from minigpt.generate.sampling import SamplingSettings
from minigpt.generate.simple import generate
from minigpt.model.config import GPTConfig
from minigpt.model.model import GPT
from minigpt.tokenizers import GPT2Tokenizer

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
USER_TURNS = ["Hello there!", "What is 2 + 2?", "Tell me more.", "日本語で話せますか?", "ok", "Why?\nExplain."]

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tokenizer():
    return GPT2Tokenizer()


def tiny_model(block_size: int, position: str = "learned") -> GPT:
    torch.manual_seed(1)
    return GPT(GPTConfig(block_size=block_size, n_layer=2, n_head=2, n_embd=16, position=position)).eval()


def reference(session: ChatSession, messages, sampling) -> list[int]:
    """The tokens generate() gives from the whole rendered conversation, up to (not with) the end of text."""
    ids = session.encode(session.format.render(messages))
    out = generate(
        session.model, torch.tensor([ids]), session.max_new_tokens, sampling, eos_id=session.tokenizer.eot_id
    )
    return out[0, len(ids) :].tolist()


def check_turn(session, text, sampling, log):
    before = [*session.messages, {"role": "user", "content": text}]
    reply = session.say(text, on_overflow=log.append)
    kept = session.messages[:-1]
    assert kept == before[len(before) - len(kept) :] or reply.dropped  # only dropped turns go
    expected = reference(session, kept, sampling)
    assert reply.tokens == expected[: len(reply.tokens)]
    if reply.finish_reason == "length":
        assert len(reply.tokens) == session.max_new_tokens
    elif reply.finish_reason == "eot":
        assert expected[len(reply.tokens)] == session.tokenizer.eot_id
    else:
        assert reply.finish_reason == "stop"
    assert session.messages[-1] == {"role": "assistant", "content": reply.text}
    return reply


@pytest.mark.parametrize(
    "fmt, position, sampling",
    [
        (FORMATS["dialogue"], "learned", SamplingSettings(temperature=0)),
        (FORMATS["minigpt"], "rope", SamplingSettings(temperature=0)),
        (TemplateFormat(CHATML, {"eos_token": "<|endoftext|>"}), "learned", SamplingSettings(temperature=0)),
        (FORMATS["dialogue"], "learned", SamplingSettings(temperature=0, repetition_penalty=1.3, min_new_tokens=3)),
    ],
    ids=["dialogue", "minigpt-rope", "chatml", "dialogue-penalty"],
)
def test_cached_turns_equal_generating_afresh(tokenizer, fmt, position, sampling):
    session = ChatSession(tiny_model(160, position), tokenizer, fmt, sampling, max_new_tokens=10, system="Be brief.")
    log, replies = [], []
    for i in range(16):
        replies.append(check_turn(session, USER_TURNS[i % len(USER_TURNS)], sampling, log))
    assert log and all(n > 0 for n in log), "the conversation outgrew the context: turns were dropped"
    assert session.messages[0] == {"role": "system", "content": "Be brief."}  # the system message stays
    assert any(r.dropped for r in replies) and sum(r.dropped for r in replies) == sum(log)
    # the cache did its job: a turn without an overflow ran only part of the conversation
    assert any(r.prefilled < r.prompt_tokens / 2 for r in replies if not r.dropped)


def test_rewind_when_the_past_changes(tokenizer):
    sampling = SamplingSettings(temperature=0)
    session = ChatSession(tiny_model(256), tokenizer, FORMATS["minigpt"], sampling, max_new_tokens=8)
    for text in USER_TURNS[:3]:
        check_turn(session, text, sampling, [])
    session.set_system("Answer in French.")  # the start of the conversation changes: everything re-runs
    reply = check_turn(session, "Bonjour", sampling, [])
    assert reply.prefilled == reply.prompt_tokens
    session.reset()
    assert session.messages == [{"role": "system", "content": "Answer in French."}]
    check_turn(session, "Again", sampling, [])


def test_interrupted_reply_is_kept_and_the_next_turn_is_exact(tokenizer):
    sampling = SamplingSettings(temperature=0)
    session = ChatSession(tiny_model(256), tokenizer, FORMATS["dialogue"], sampling, max_new_tokens=12)
    pieces = []

    def interrupt(piece):
        pieces.append(piece)
        if len(pieces) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.say("Hello", on_text=interrupt)
    assert session.messages[-1]["role"] == "assistant"
    assert session.messages[-1]["content"] == "".join(pieces).strip()
    check_turn(session, "Go on", sampling, [])


def test_streamed_text_is_the_reply(tokenizer):
    session = ChatSession(tiny_model(256), tokenizer, FORMATS["dialogue"], SamplingSettings(temperature=0.9), seed=3)
    pieces = []
    reply = session.say("Hi", on_text=pieces.append)
    assert "".join(pieces).strip() == reply.text and reply.ttft > 0
    again = ChatSession(tiny_model(256), tokenizer, FORMATS["dialogue"], SamplingSettings(temperature=0.9), seed=3)
    assert again.say("Hi").tokens == reply.tokens  # a seed repeats a sampled reply


def test_bad_input(tokenizer):
    model = tiny_model(64)
    with pytest.raises(ValueError, match="max_new_tokens must be between 1 and 63"):
        ChatSession(model, tokenizer, FORMATS["dialogue"], max_new_tokens=64)
    session = ChatSession(model, tokenizer, FORMATS["dialogue"], max_new_tokens=20)
    with pytest.raises(ValueError, match="does not fit the context of 64"):
        session.say("word " * 60)
    assert session.messages == []  # nothing was added
    with pytest.raises(ValueError, match="message 0 has an unknown role 'tool'"):
        session.load([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="rinna format has no system role"):
        ChatSession(model, tokenizer, FORMATS["rinna"]).load([{"role": "system", "content": "x"}])


def test_latency_bench_tiny_run(tmp_path):
    out = tmp_path / "chat.json"
    proc = subprocess.run(
        [sys.executable, "bench/chat_latency.py", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["median_ttft_s"]) == {"turn_1", "turn_3_cached", "turn_3_uncached"}
    assert all(t > 0 for t in result["median_ttft_s"].values())
    # the cached last turn ran only the new message; from scratch, the whole conversation
    assert max(result["turn_3_prefilled_tokens"]) == result["turn_3_prompt_tokens"]
    assert min(result["turn_3_prefilled_tokens"]) < result["turn_3_prompt_tokens"] / 2
    assert result["environment"]["device_type"] == "cpu" and result["environment"]["commit"]
