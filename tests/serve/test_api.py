"""The OpenAI API through the official `openai` client: what it returns equals sample.py's path
(minigpt.generate.simple.complete with sample.py's settings) for the same prompt, settings and seed."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import torch
import torch.nn.functional as F
from conftest import running, served_models

from minigpt.generate.simple import complete, prompt_ids

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def reference(served, prompt: str, max_tokens: int, stop=(), seed=None, **sampling):
    """What sample.py --prompt PROMPT --max-new-tokens N --stop ... --seed S gives: one sample, CPU decoding."""
    m = served.engine.model
    [c] = complete(m, served.tokenizer, [prompt], max_tokens, seed=seed, stop=stop, decoder_mode="auto", **sampling)
    return c


def test_models_are_listed(server):
    url, models = server
    ids = [m.id for m in client(url).models.list().data]
    assert ids == list(models)


@pytest.mark.parametrize("stop", [None, "e", ["\n", "the"]])
def test_greedy_completion_equals_sample_py(server, stop):
    url, models = server
    served = models["tiny-a"]
    prompt = "The meaning of life is"
    r = client(url).completions.create(model="tiny-a", prompt=prompt, max_tokens=30, temperature=0, stop=stop)
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    ref = reference(served, prompt, 30, stop=stops, temperature=0)
    assert r.choices[0].text == ref.text
    assert r.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == len(prompt_ids(served.tokenizer, prompt))
    assert r.usage.completion_tokens == len(ref.tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if stop is not None:
        assert not any(s in r.choices[0].text for s in stops)


def test_decoding_controls_equal_sample_py(server):
    """repetition_penalty, no_repeat_ngram_size and min_tokens (vLLM's names for sample.py's flags)."""
    url, models = server
    prompt = "The meaning of life is"
    controls = dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_tokens=5)
    r = client(url).completions.create(
        model="tiny-a", prompt=prompt, max_tokens=30, temperature=0, seed=3, extra_body=controls
    )
    ref = reference(
        models["tiny-a"], prompt, 30, temperature=0, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=5
    )
    plain = reference(models["tiny-a"], prompt, 30, temperature=0)
    assert r.choices[0].text == ref.text and ref.tokens != plain.tokens  # the controls change the greedy text


def test_a_stop_string_ends_the_completion(server):
    url, models = server
    r = client(url).completions.create(model="tiny-b", prompt="Hello", max_tokens=40, temperature=0)
    text = r.choices[0].text
    cut = text[3:6]  # a stop string the unstopped completion holds
    r = client(url).completions.create(model="tiny-b", prompt="Hello", max_tokens=40, temperature=0, stop=[cut])
    assert r.choices[0].text == text[: text.index(cut)]
    assert r.choices[0].finish_reason == "stop"


def test_seeded_samples_equal_sample_py_and_repeat(server):
    url, models = server
    prompt = "Once upon a time"
    settings = dict(temperature=0.9, top_p=0.8)
    r = client(url).completions.create(model="tiny-a", prompt=prompt, max_tokens=25, seed=1234, n=3, **settings)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    # sample i is sample.py --stream --num-samples 3 --seed 1234's sample i: seed 1234 + i
    assert texts == [reference(models["tiny-a"], prompt, 25, seed=1234 + i, **settings).text for i in range(3)]
    assert len(set(texts)) > 1
    again = client(url).completions.create(model="tiny-a", prompt=prompt, max_tokens=25, seed=1234, n=3, **settings)
    assert [c.text for c in sorted(again.choices, key=lambda c: c.index)] == texts


def test_streaming_equals_the_whole_answer(server):
    url, _ = server
    args = dict(model="tiny-a", prompt=["Hi there", "A much longer prompt than the other one"], max_tokens=20, n=2)
    whole = client(url).completions.create(**args, seed=7)
    pieces: dict[int, str] = {}
    reasons = {}
    for chunk in client(url).completions.create(**args, seed=7, stream=True):
        for c in chunk.choices:
            pieces[c.index] = pieces.get(c.index, "") + c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert [pieces[i] for i in range(4)] == [c.text for c in whole.choices]
    assert [reasons[i] for i in range(4)] == [c.finish_reason for c in whole.choices]


def test_chat_equals_the_rendered_prompt_completed(server):
    url, models = server
    served = models["tiny-b"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "こんにちは 👋 how are you?"}]
    r = client(url).chat.completions.create(model="tiny-b", messages=messages, max_tokens=30, temperature=0)
    text = served.chat.render(messages)
    ref = reference(served, text, 30, stop=served.chat.stop_strings, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == served.chat.reply_text(ref.text)
    assert r.usage.prompt_tokens == len(prompt_ids(served.tokenizer, text))

    streamed, first = "", None
    for chunk in client(url).chat.completions.create(
        model="tiny-b", messages=messages, max_tokens=30, temperature=0, stream=True
    ):
        delta = chunk.choices[0].delta
        first = first or delta.role
        streamed += delta.content or ""
    assert first == "assistant"
    assert streamed == r.choices[0].message.content


def test_logprobs_are_the_models(server):
    url, models = server
    served = models["tiny-a"]
    prompt = "Logprobs of"
    r = client(url).completions.create(model="tiny-a", prompt=prompt, max_tokens=3, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(lp.tokens) == 3 and all(len(t) == 2 for t in lp.top_logprobs)
    ids = torch.tensor([prompt_ids(served.tokenizer, prompt)])
    with torch.no_grad():
        expected = F.log_softmax(served.engine.model(ids)[0, -1].float(), dim=-1)
    assert lp.token_logprobs[0] == pytest.approx(float(expected.max()), abs=1e-5)
    assert max(lp.top_logprobs[0].values()) == pytest.approx(lp.token_logprobs[0], abs=1e-6)

    chat = client(url).chat.completions.create(
        model="tiny-a",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=1,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) >= 1 and all(len(c.top_logprobs) == 1 for c in content)


def test_concurrent_greedy_clients_get_what_each_gets_alone(server):
    url, models = server
    served = models["tiny-a"]
    prompts = [("x" * (i + 1)) + " and then" for i in range(6)] + ["日本語のテキスト", "🙂🙃"]
    lengths = [12, 30, 7, 25, 18, 40, 9, 33]
    alone = [reference(served, p, n, temperature=0).text for p, n in zip(prompts, lengths, strict=True)]
    got: dict[int, str] = {}
    start = threading.Barrier(len(prompts))

    def ask(i: int) -> None:
        start.wait()
        text = ""
        for chunk in client(url).completions.create(
            model="tiny-a", prompt=prompts[i], max_tokens=lengths[i], temperature=0, stream=True
        ):
            text += chunk.choices[0].text if chunk.choices else ""
        got[i] = text

    served.engine.peak_rows = 0
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [got[i] for i in range(len(prompts))] == alone
    assert served.engine.peak_rows > 1  # the requests were decoded together


# ----------------------------------------------------------------------------------------------
# A slow server (a sleep in every forward): disconnects and the bounded queue


@pytest.fixture(scope="module")
def slow_server(checkpoints):
    models = served_models({"tiny-a": checkpoints["tiny-a"]}, max_batch=1, max_queue=1)
    models["tiny-a"].engine.model.register_forward_pre_hook(lambda module, args: time.sleep(0.03))
    with running(models) as (url, _):
        yield url, models["tiny-a"].engine


def wait_idle(engine, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while engine.load() != (0, 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_client_gone_mid_stream_frees_its_row(slow_server):
    url, engine = slow_server
    body = {"model": "tiny-a", "prompt": "Hello", "max_tokens": 60, "stream": True}
    steps = engine.steps
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first chunk arrived: the request holds the row
        assert engine.load()[0] == 1
    t0 = time.monotonic()
    assert wait_idle(engine, 1.0), "the row was not freed"
    assert engine.steps - steps < 40  # 60 steps at 30 ms would take 1.8 s
    # the row is usable again at once
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny-a", "prompt": "x", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200 and time.monotonic() - t0 < 2


def test_a_client_gone_before_a_whole_answer_frees_its_row(slow_server):
    url, engine = slow_server
    assert wait_idle(engine, 5)
    body = {"model": "tiny-a", "prompt": "Hello", "max_tokens": 60}  # not streamed: 1.8 s of decoding
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.4))
    assert wait_idle(engine, 1.2), "the row was not freed"


def test_the_bounded_queue_refuses_and_the_rest_finish(slow_server):
    url, engine = slow_server
    assert wait_idle(engine, 5)
    body = {"model": "tiny-a", "prompt": "Hello", "max_tokens": 40}
    results = []

    def ask():
        results.append(httpx.post(f"{url}/v1/completions", json=body, timeout=30))

    threads = [threading.Thread(target=ask) for _ in range(2)]  # one decoding, one waiting
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while engine.load() != (1, 1) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.load() == (1, 1)
    with pytest.raises(openai.APIStatusError) as refused:
        client(url).completions.create(**body)
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "queue_full"
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200, 200]


# ----------------------------------------------------------------------------------------------
# --api-key


def test_the_api_key_is_required(checkpoints):
    with running(served_models({"tiny-a": checkpoints["tiny-a"]}), api_key="s3cret") as (url, _):
        assert [m.id for m in client(url, "s3cret").models.list().data] == ["tiny-a"]
        for key in ("wrong", "s3cre", "s3cret2"):
            with pytest.raises(openai.AuthenticationError) as e:
                client(url, key).completions.create(model="tiny-a", prompt="x", max_tokens=1)
            assert e.value.body["code"] == "invalid_api_key"
        r = httpx.get(f"{url}/v1/models")  # no Authorization header
        assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert httpx.get(f"{url}/").status_code == 200  # the page itself loads; it asks for the key
