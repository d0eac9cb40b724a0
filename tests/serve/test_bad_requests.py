"""Every bad request gets a 4xx answer in OpenAI's error shape, naming the bad field, and the server goes on."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

C, CHAT = "/v1/completions", "/v1/chat/completions"
OK = {"model": "tiny-a", "prompt": "Hello", "max_tokens": 2}
OK_CHAT = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def with_(base: dict, **fields) -> dict:
    out = {**base, **fields}
    return {k: v for k, v in out.items() if v is not ...}


CASES = [
    # (id, path, body (a str is sent as it is), status, param)
    ("malformed-json", C, '{"model": "tiny-a", "prompt": ', 400, None),
    ("not-an-object", C, "[1, 2]", 400, None),
    ("empty-body", C, "", 400, None),
    ("missing-model", C, with_(OK, model=...), 400, "model"),
    ("missing-prompt", C, with_(OK, prompt=...), 400, "prompt"),
    ("model-not-a-string", C, with_(OK, model=123), 400, "model"),
    ("unknown-model", C, with_(OK, model="nope"), 404, "model"),
    ("prompt-a-number", C, with_(OK, prompt=5), 400, "prompt"),
    ("prompt-list-of-numbers", C, with_(OK, prompt=[1, "a"]), 400, "prompt"),
    ("prompt-empty-list", C, with_(OK, prompt=[]), 400, "prompt"),
    ("prompt-empty", C, with_(OK, prompt=""), 400, "prompt"),
    ("prompt-over-the-context", C, with_(OK, prompt="word " * 100), 400, "prompt"),
    ("max-tokens-over-what-fits", C, with_(OK, max_tokens=100), 400, "max_tokens"),
    ("max-tokens-negative", C, with_(OK, max_tokens=-1), 400, "max_tokens"),
    ("max-tokens-a-string", C, with_(OK, max_tokens="10"), 400, "max_tokens"),
    ("max-tokens-a-float", C, with_(OK, max_tokens=1.5), 400, "max_tokens"),
    ("max-tokens-a-bool", C, with_(OK, max_tokens=True), 400, "max_tokens"),
    ("temperature-a-string", C, with_(OK, temperature="hot"), 400, "temperature"),
    ("temperature-negative", C, with_(OK, temperature=-1), 400, "temperature"),
    ("temperature-too-high", C, with_(OK, temperature=3), 400, "temperature"),
    ("top-p-zero", C, with_(OK, top_p=0), 400, "top_p"),
    ("top-p-over-one", C, with_(OK, top_p=1.5), 400, "top_p"),
    ("top-k-zero", C, with_(OK, top_k=0), 400, "top_k"),
    ("n-zero", C, with_(OK, n=0), 400, "n"),
    ("n-too-many", C, with_(OK, n=17), 400, "n"),
    ("n-a-string", C, with_(OK, n="2"), 400, "n"),
    ("stop-too-many", C, with_(OK, stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("stop-empty-string", C, with_(OK, stop=""), 400, "stop"),
    ("stop-list-with-empty", C, with_(OK, stop=["a", ""]), 400, "stop"),
    ("stop-list-of-numbers", C, with_(OK, stop=[1]), 400, "stop"),
    ("stop-an-object", C, with_(OK, stop={"a": 1}), 400, "stop"),
    ("seed-negative", C, with_(OK, seed=-1), 400, "seed"),
    ("seed-a-string", C, with_(OK, seed="x"), 400, "seed"),
    ("logprobs-too-many", C, with_(OK, logprobs=6), 400, "logprobs"),
    ("stream-a-string", C, with_(OK, stream="yes"), 400, "stream"),
    ("penalty-unsupported", C, with_(OK, presence_penalty=1.0), 400, "presence_penalty"),
    ("repetition-penalty-zero", C, with_(OK, repetition_penalty=0), 400, "repetition_penalty"),
    ("repetition-penalty-a-string", C, with_(OK, repetition_penalty="high"), 400, "repetition_penalty"),
    ("no-repeat-ngram-negative", C, with_(OK, no_repeat_ngram_size=-2), 400, "no_repeat_ngram_size"),
    ("no-repeat-ngram-a-float", C, with_(OK, no_repeat_ngram_size=2.5), 400, "no_repeat_ngram_size"),
    ("min-tokens-negative", C, with_(OK, min_tokens=-1), 400, "min_tokens"),
    ("chat-malformed-json", CHAT, "{", 400, None),
    ("chat-missing-messages", CHAT, with_(OK_CHAT, messages=...), 400, "messages"),
    ("chat-messages-a-string", CHAT, with_(OK_CHAT, messages="hi"), 400, "messages"),
    ("chat-messages-empty", CHAT, with_(OK_CHAT, messages=[]), 400, "messages"),
    ("chat-unknown-role", CHAT, with_(OK_CHAT, messages=[{"role": "robot", "content": "x"}]), 400, "messages"),
    ("chat-content-not-a-string", CHAT, with_(OK_CHAT, messages=[{"role": "user", "content": 5}]), 400, "messages"),
    ("chat-message-not-an-object", CHAT, with_(OK_CHAT, messages=["hi"]), 400, "messages"),
    ("chat-unknown-model", CHAT, with_(OK_CHAT, model="gpt-4"), 404, "model"),
    (
        "chat-over-the-context",
        CHAT,
        with_(OK_CHAT, messages=[{"role": "user", "content": "word " * 100}]),
        400,
        "messages",
    ),
    ("chat-max-tokens-over", CHAT, with_(OK_CHAT, max_tokens=1000), 400, "max_tokens"),
    ("chat-top-logprobs-alone", CHAT, with_(OK_CHAT, top_logprobs=2), 400, "top_logprobs"),
    ("chat-top-logprobs-too-many", CHAT, with_(OK_CHAT, logprobs=True, top_logprobs=9), 400, "top_logprobs"),
    ("chat-n-too-many", CHAT, with_(OK_CHAT, n=100), 400, "n"),
]


def check_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "\n" not in error["message"]
    assert error["param"] == param, error
    return error


# each case as it is, and (a JSON object) asking for a stream too: the answer is the same error, not a stream
STREAMED = [(f"{c[0]}-stream", c[1], {"stream": True, **c[2]}, *c[3:]) for c in CASES if isinstance(c[2], dict)]


@pytest.mark.parametrize(
    "path, body, status, param", [c[1:] for c in CASES + STREAMED], ids=[c[0] for c in CASES + STREAMED]
)
def test_bad_request_is_an_openai_error(server, path, body, status, param):
    url, _ = server
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=30)
    check_error(r, status, param)
    # and the server goes on serving
    good = httpx.post(url + path, json=OK if path == C else OK_CHAT, timeout=30)
    assert good.status_code == 200, good.text


@pytest.mark.parametrize(
    "method, path, status",
    [("GET", "/v1/nothing", 404), ("GET", C, 405), ("GET", "/v1/models/nope", 404), ("POST", "/v1/models", 405)],
)
def test_unknown_routes_are_openai_errors(server, method, path, status):
    url, _ = server
    r = httpx.request(method, url + path, timeout=30)
    assert r.status_code == status
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
